//! POSIX behaviour of `store mount`, tested on a real FUSE mount over the
//! local backend, over a (one-node) cluster, and, as a check of the tests
//! themselves, on tmpfs: every test body runs three times,
//! `<name>::store`, `<name>::cluster` and `<name>::tmpfs`. Needs root and
//! /dev/fuse; the store variants are skipped with a message otherwise.
//!
//! Every fixture unmounts and kills its mount process on drop (also on
//! panic), and a watchdog kills a mount that outlives the test budget so a
//! hung request fails the test instead of hanging it.

use std::ffi::{CString, OsStr};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod harness;

/// The `store` binary under test; `STORE_TEST_BIN` overrides it (useful when
/// a shared target directory may be rebuilt from another tree meanwhile).
fn store_bin() -> PathBuf {
    std::env::var_os("STORE_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_store")))
}
/// Budget of one test; the watchdog kills the mount after it.
const BUDGET: Duration = Duration::from_secs(55);
/// Budget on a cluster mount: every namespace change is a Raft commit
/// (fsync), which a debug build on a loaded machine makes slow.
const CLUSTER_BUDGET: Duration = Duration::from_secs(150);

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn mounted(dir: &Path) -> bool {
    let want = dir.to_string_lossy().replace(' ', "\\040");
    fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(want.as_str()))
}

/// A running `store mount` over a local backend in a temp dir.
struct Mount {
    child: Option<Child>,
    dir: tempfile::TempDir,
    done: Arc<AtomicBool>,
    /// The servers of a `cluster:` mount (killed after the mount).
    cluster: Option<harness::Cluster>,
}

impl Mount {
    fn mnt(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    fn backend(&self) -> PathBuf {
        self.dir.path().join("be")
    }

    fn backend_arg(&self) -> String {
        match &self.cluster {
            Some(c) => format!("cluster:{}", c.nodes[0].dir.display()),
            None => format!("local:{}", self.backend().display()),
        }
    }

    fn start() -> Mount {
        Self::start_on(None)
    }

    /// A mount over a one-node cluster (size 1).
    fn start_cluster() -> Mount {
        let c = harness::Cluster::start(1, &["--size", "1", "--min-size", "1"], &[]);
        Self::start_on(Some(c))
    }

    fn start_on(cluster: Option<harness::Cluster>) -> Mount {
        let dir = tempfile::tempdir().expect("temp dir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        fs::create_dir(dir.path().join("mnt")).expect("mkdir mnt");
        let mut m = Mount {
            child: None,
            dir,
            done: Arc::new(AtomicBool::new(false)),
            cluster,
        };
        m.spawn();
        // Watchdog: a hung request must not hang the test.
        let (done, pid, mnt) = (m.done.clone(), m.pid(), m.mnt());
        let budget = if m.cluster.is_some() {
            CLUSTER_BUDGET
        } else {
            BUDGET
        };
        std::thread::spawn(move || {
            let start = Instant::now();
            while start.elapsed() < budget {
                if done.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            eprintln!("watchdog: test over budget, killing mount {pid}");
            // SAFETY: signalling a process we started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            let _ = Command::new("umount").arg("-l").arg(&mnt).status();
        });
        m
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Starts (or restarts) the mount process and waits until it serves.
    fn spawn(&mut self) {
        let log = File::create(self.dir.path().join("mount.log")).expect("log file");
        let child = Command::new(store_bin())
            .arg("mount")
            .arg(self.mnt())
            .arg("--backend")
            .arg(self.backend_arg())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("starting store mount");
        self.child = Some(child);
        let start = Instant::now();
        // A stale mount point (after kill -9) is listed too: wait until it
        // answers.
        while !(mounted(&self.mnt()) && fs::metadata(self.mnt()).is_ok()) {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("store mount exited with {status}: {}", self.log());
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "mount did not appear: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("mount.log")).unwrap_or_default()
    }

    /// kill -9 the mount process (leaves a stale mount point).
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    fn stop(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        // SAFETY: signalling our own child.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        loop {
            if let Ok(Some(s)) = c.try_wait() {
                return s;
            }
            if start.elapsed() > Duration::from_secs(15) {
                let _ = c.kill();
                panic!("store mount ignored SIGTERM: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if mounted(&self.mnt()) {
            let _ = Command::new("umount").arg("-l").arg(self.mnt()).status();
        }
    }
}

/// Where a test body runs.
enum Root {
    Store(Mount),
    Tmpfs(tempfile::TempDir),
}

impl Root {
    fn store() -> Option<Root> {
        if !is_root() || !Path::new("/dev/fuse").exists() {
            eprintln!("skipped: needs root and /dev/fuse");
            return None;
        }
        Some(Root::Store(Mount::start()))
    }

    fn cluster() -> Option<Root> {
        if !is_root() || !Path::new("/dev/fuse").exists() {
            eprintln!("skipped: needs root and /dev/fuse");
            return None;
        }
        Some(Root::Store(Mount::start_cluster()))
    }

    fn tmpfs() -> Option<Root> {
        let base = if Path::new("/dev/shm").is_dir() {
            "/dev/shm"
        } else {
            "/tmp"
        };
        let d = tempfile::tempdir_in(base).expect("temp dir");
        fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        Some(Root::Tmpfs(d))
    }

    fn path(&self) -> PathBuf {
        match self {
            Root::Store(m) => m.mnt(),
            Root::Tmpfs(d) => d.path().to_path_buf(),
        }
    }

    fn is_store(&self) -> bool {
        matches!(self, Root::Store(_))
    }

    fn is_cluster(&self) -> bool {
        matches!(self, Root::Store(m) if m.cluster.is_some())
    }
}

macro_rules! posix_test {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;
            #[test]
            fn store() {
                if let Some(root) = Root::store() {
                    let f: fn(&Root) = $body;
                    f(&root);
                }
            }
            #[test]
            fn cluster() {
                if let Some(root) = Root::cluster() {
                    let f: fn(&Root) = $body;
                    f(&root);
                }
            }
            #[test]
            fn tmpfs() {
                if let Some(root) = Root::tmpfs() {
                    let f: fn(&Root) = $body;
                    f(&root);
                }
            }
        }
    };
}

fn errno<T: std::fmt::Debug>(r: std::io::Result<T>) -> i32 {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("no NUL")
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn sh_as(uid: u32, script: &str) -> std::process::Output {
    Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .arg("--clear-groups")
        .arg("sh")
        .arg("-c")
        .arg(script)
        .output()
        .expect("running setpriv")
}

fn renameat2(from: &Path, to: &Path, flags: u32) -> std::io::Result<()> {
    let (a, b) = (cstr(from), cstr(to));
    // SAFETY: valid C strings; AT_FDCWD with absolute paths.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

// ---- lifecycle ----------------------------------------------------------

posix_test!(file_lifecycle, |r| {
    let p = r.path().join("f");
    fs::write(&p, b"hello").unwrap();
    assert_eq!(fs::read(&p).unwrap(), b"hello");
    let mut f = OpenOptions::new().append(true).open(&p).unwrap();
    f.write_all(b" world").unwrap();
    drop(f);
    assert_eq!(fs::read(&p).unwrap(), b"hello world");
    let m = fs::metadata(&p).unwrap();
    assert_eq!((m.len(), m.nlink()), (11, 1));
    assert_eq!(
        errno(OpenOptions::new().write(true).create_new(true).open(&p)),
        libc::EEXIST
    );
    // Read and write through one descriptor.
    let mut f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    f.seek(SeekFrom::Start(6)).unwrap();
    f.write_all(b"WORLD").unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "hello WORLD");
    drop(f);
    fs::remove_file(&p).unwrap();
    assert_eq!(errno(fs::metadata(&p)), libc::ENOENT);
    assert_eq!(errno(fs::remove_file(&p)), libc::ENOENT);
});

posix_test!(dir_lifecycle, |r| {
    let d = r.path().join("d");
    fs::create_dir_all(d.join("a/b/c")).unwrap();
    assert_eq!(fs::metadata(&d).unwrap().nlink(), 3);
    assert_eq!(errno(fs::create_dir(&d)), libc::EEXIST);
    assert_eq!(errno(fs::remove_dir(d.join("a"))), libc::ENOTEMPTY);
    fs::write(d.join("file"), b"x").unwrap();
    assert_eq!(errno(fs::remove_dir(d.join("file"))), libc::ENOTDIR);
    assert_eq!(errno(fs::remove_file(d.join("a"))), libc::EISDIR);
    assert_eq!(errno(fs::create_dir(d.join("file/sub"))), libc::ENOTDIR);
    for i in 0..600 {
        fs::write(d.join(format!("n{i:04}")), b"").unwrap();
    }
    let mut names: Vec<String> = fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 602);
    assert_eq!(names[0], "a");
    // rm -r deletes while it lists.
    let st = Command::new("rm").arg("-r").arg(&d).status().unwrap();
    assert!(st.success());
    assert!(!d.exists());
    assert_eq!(fs::metadata(r.path()).unwrap().nlink(), 2);
});

posix_test!(symlinks_and_hard_links, |r| {
    let root = &r.path();
    fs::write(root.join("target"), b"data").unwrap();
    std::os::unix::fs::symlink("target", root.join("link")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/x", root.join("dangling")).unwrap();
    assert_eq!(
        fs::read_link(root.join("link")).unwrap(),
        Path::new("target")
    );
    assert_eq!(fs::read(root.join("link")).unwrap(), b"data");
    assert_eq!(errno(fs::read(root.join("dangling"))), libc::ENOENT);
    let lm = fs::symlink_metadata(root.join("link")).unwrap();
    assert!(lm.file_type().is_symlink());
    assert_eq!(lm.len(), 6);
    fs::hard_link(root.join("target"), root.join("h1")).unwrap();
    fs::hard_link(root.join("h1"), root.join("h2")).unwrap();
    assert_eq!(fs::metadata(root.join("target")).unwrap().nlink(), 3);
    let ino = fs::metadata(root.join("target")).unwrap().ino();
    assert_eq!(fs::metadata(root.join("h2")).unwrap().ino(), ino);
    fs::write(root.join("h2"), b"changed").unwrap();
    assert_eq!(fs::read(root.join("target")).unwrap(), b"changed");
    fs::remove_file(root.join("target")).unwrap();
    assert_eq!(fs::metadata(root.join("h1")).unwrap().nlink(), 2);
    fs::create_dir(root.join("dir")).unwrap();
    assert_eq!(
        errno(fs::hard_link(root.join("dir"), root.join("dl"))),
        libc::EPERM
    );
    assert_eq!(
        errno(fs::hard_link(root.join("h1"), root.join("h2"))),
        libc::EEXIST
    );
});

posix_test!(rename_cases, |r| {
    let root = &r.path();
    let (a, b) = (root.join("a"), root.join("b"));
    fs::create_dir_all(a.join("sub/deep")).unwrap();
    fs::create_dir(&b).unwrap();
    fs::write(a.join("f"), b"f").unwrap();
    fs::write(b.join("g"), b"g").unwrap();
    // Over an existing file, across directories.
    fs::rename(b.join("g"), a.join("f")).unwrap();
    assert_eq!(fs::read(a.join("f")).unwrap(), b"g");
    assert!(!b.join("g").exists());
    // Directory into its own subtree.
    assert_eq!(errno(fs::rename(&a, a.join("sub/x"))), libc::EINVAL);
    // Dir over file, file over dir, dir over non-empty dir.
    fs::write(b.join("file"), b"").unwrap();
    assert_eq!(
        errno(fs::rename(a.join("sub"), b.join("file"))),
        libc::ENOTDIR
    );
    assert_eq!(
        errno(fs::rename(b.join("file"), a.join("sub"))),
        libc::EISDIR
    );
    fs::create_dir(b.join("full")).unwrap();
    fs::write(b.join("full/x"), b"").unwrap();
    assert_eq!(
        errno(fs::rename(a.join("sub"), b.join("full"))),
        libc::ENOTEMPTY
    );
    // Dir over an empty dir, across parents: link counts follow.
    fs::create_dir(b.join("empty")).unwrap();
    fs::rename(a.join("sub"), b.join("empty")).unwrap();
    assert!(b.join("empty/deep").is_dir());
    assert_eq!(fs::metadata(&a).unwrap().nlink(), 2);
    assert_eq!(fs::metadata(&b).unwrap().nlink(), 4);
    // Same name: no-op.
    fs::rename(a.join("f"), a.join("f")).unwrap();
    // renameat2 flags.
    fs::write(a.join("x"), b"x").unwrap();
    fs::write(a.join("y"), b"y").unwrap();
    assert_eq!(
        errno(renameat2(
            &a.join("x"),
            &a.join("y"),
            libc::RENAME_NOREPLACE
        )),
        libc::EEXIST
    );
    renameat2(&a.join("x"), &a.join("y"), libc::RENAME_EXCHANGE).unwrap();
    assert_eq!(fs::read(a.join("x")).unwrap(), b"y");
    assert_eq!(fs::read(a.join("y")).unwrap(), b"x");
    assert_eq!(
        errno(renameat2(
            &a.join("x"),
            &a.join("nope"),
            libc::RENAME_EXCHANGE
        )),
        libc::ENOENT
    );
    assert_eq!(errno(fs::rename(a.join("nope"), a.join("z"))), libc::ENOENT);
});

posix_test!(permissions_and_ownership, |r| {
    let root = &r.path();
    fs::set_permissions(root, fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(root.join("private"), b"secret").unwrap();
    fs::set_permissions(root.join("private"), fs::Permissions::from_mode(0o600)).unwrap();
    let tmp = root.join("tmp");
    fs::create_dir(&tmp).unwrap();
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o1777)).unwrap();
    let q = |p: &Path| p.display().to_string();
    // An unprivileged user cannot read 0600 root files or write to root's dir.
    let o = sh_as(
        1000,
        &format!("cat {} ; touch {}/x", q(&root.join("private")), q(root)),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.matches("Permission denied").count(), 2, "{err}");
    // In a sticky dir, users create files but cannot remove others'.
    let o = sh_as(1000, &format!("echo a > {0}/a && chmod 644 {0}/a", q(&tmp)));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let meta = fs::metadata(tmp.join("a")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (1000, 1000));
    let o = sh_as(1001, &format!("rm -f {0}/a; mv {0}/a {0}/b", q(&tmp)));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.matches("Operation not permitted").count(), 2, "{err}");
    assert!(tmp.join("a").exists());
    // chown is root's; a user may not give files away or chmod others' files.
    let o = sh_as(1000, &format!("chown 1001 {0}/a", q(&tmp)));
    assert!(!o.status.success());
    let o = sh_as(1001, &format!("chmod 777 {0}/a", q(&tmp)));
    assert!(!o.status.success());
    std::os::unix::fs::chown(tmp.join("a"), Some(1001), Some(1001)).unwrap();
    let meta = fs::metadata(tmp.join("a")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (1001, 1001));
    // chown clears set-uid.
    fs::write(root.join("suid"), b"").unwrap();
    fs::set_permissions(root.join("suid"), fs::Permissions::from_mode(0o4755)).unwrap();
    std::os::unix::fs::chown(root.join("suid"), Some(1000), None).unwrap();
    assert_eq!(
        fs::metadata(root.join("suid")).unwrap().mode() & 0o7777,
        0o755
    );
    // Set-gid directories pass their group on.
    let shared = root.join("shared");
    fs::create_dir(&shared).unwrap();
    std::os::unix::fs::chown(&shared, None, Some(50)).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o2777)).unwrap();
    let o = sh_as(1000, &format!("mkdir {0}/d && touch {0}/f", q(&shared)));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let d = fs::metadata(shared.join("d")).unwrap();
    assert_eq!((d.gid(), d.mode() & 0o2000), (50, 0o2000));
    assert_eq!(fs::metadata(shared.join("f")).unwrap().gid(), 50);
    // access(2) agrees.
    let o = sh_as(
        1000,
        &format!("test -r {} || echo no-read", q(&root.join("private"))),
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "no-read");
});

posix_test!(truncate_extend_and_sparse, |r| {
    let p = r.path().join("t");
    fs::write(&p, pattern(10_000, 1)).unwrap();
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(100).unwrap();
    f.set_len(5000).unwrap();
    drop(f);
    let got = fs::read(&p).unwrap();
    assert_eq!(got.len(), 5000);
    assert_eq!(&got[..100], &pattern(10_000, 1)[..100]);
    assert!(
        got[100..].iter().all(|b| *b == 0),
        "extended part reads as zeros"
    );
    // Sparse: a write far out leaves a hole.
    let s = r.path().join("sparse");
    let mut f = File::create(&s).unwrap();
    f.seek(SeekFrom::Start(9 << 20)).unwrap();
    f.write_all(b"end").unwrap();
    drop(f);
    let got = fs::read(&s).unwrap();
    assert_eq!(got.len(), (9 << 20) + 3);
    assert!(got[..9 << 20].iter().all(|b| *b == 0));
    assert_eq!(&got[9 << 20..], b"end");
    // truncate(2) by path, and O_TRUNC.
    let c = cstr(&s);
    // SAFETY: valid path.
    assert_eq!(unsafe { libc::truncate(c.as_ptr(), 1) }, 0);
    assert_eq!(fs::read(&s).unwrap(), vec![0]);
    fs::write(&s, b"ab").unwrap();
    OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&s)
        .unwrap();
    assert_eq!(fs::metadata(&s).unwrap().len(), 0);
});

posix_test!(times, |r| {
    let p = r.path().join("t");
    fs::write(&p, b"x").unwrap();
    let c = cstr(&p);
    let ts = [
        libc::timespec {
            tv_sec: 1_000_000_000,
            tv_nsec: 5,
        },
        libc::timespec {
            tv_sec: 1_200_000_000,
            tv_nsec: 7,
        },
    ];
    // SAFETY: valid path and two timespecs.
    assert_eq!(
        unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), ts.as_ptr(), 0) },
        0
    );
    let m = fs::metadata(&p).unwrap();
    assert_eq!((m.atime(), m.atime_nsec()), (1_000_000_000, 5));
    assert_eq!((m.mtime(), m.mtime_nsec()), (1_200_000_000, 7));
    let before = m.ctime();
    std::thread::sleep(Duration::from_millis(10));
    fs::write(&p, b"y").unwrap();
    let m = fs::metadata(&p).unwrap();
    assert!(m.mtime() > 1_200_000_000, "write moves mtime");
    assert!(m.ctime() >= before);
    // Creating an entry moves the directory's mtime.
    let d0 = fs::metadata(r.path()).unwrap().mtime_nsec()
        + fs::metadata(r.path()).unwrap().mtime() * 1_000_000_000;
    std::thread::sleep(Duration::from_millis(10));
    fs::write(r.path().join("new"), b"").unwrap();
    let dm = fs::metadata(r.path()).unwrap();
    assert!(dm.mtime() * 1_000_000_000 + dm.mtime_nsec() > d0);
});

fn set_xattr(p: &Path, name: &str, v: &[u8], flags: i32) -> std::io::Result<()> {
    let (c, n) = (cstr(p), CString::new(name).unwrap());
    // SAFETY: valid strings and buffer.
    let rc = unsafe { libc::setxattr(c.as_ptr(), n.as_ptr(), v.as_ptr().cast(), v.len(), flags) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn get_xattr(p: &Path, name: &str) -> std::io::Result<Vec<u8>> {
    let (c, n) = (cstr(p), CString::new(name).unwrap());
    let mut buf = vec![0u8; 70_000];
    // SAFETY: valid strings and buffer.
    let rc = unsafe { libc::getxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(rc as usize);
    Ok(buf)
}

fn list_xattr(p: &Path) -> Vec<String> {
    let c = cstr(p);
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid string and buffer.
    let rc = unsafe { libc::listxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(rc >= 0, "{}", std::io::Error::last_os_error());
    buf.truncate(rc as usize);
    let mut v: Vec<String> = buf
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .filter(|s| s.starts_with("user."))
        .collect();
    v.sort();
    v
}

posix_test!(xattrs, |r| {
    let p = r.path().join("x");
    fs::write(&p, b"").unwrap();
    set_xattr(&p, "user.a", b"1", 0).unwrap();
    set_xattr(&p, "user.b", &[0xff, 0, 1], 0).unwrap();
    assert_eq!(get_xattr(&p, "user.a").unwrap(), b"1");
    assert_eq!(get_xattr(&p, "user.b").unwrap(), [0xff, 0, 1]);
    assert_eq!(list_xattr(&p), ["user.a", "user.b"]);
    assert_eq!(
        errno(set_xattr(&p, "user.a", b"2", libc::XATTR_CREATE)),
        libc::EEXIST
    );
    assert_eq!(
        errno(set_xattr(&p, "user.c", b"2", libc::XATTR_REPLACE)),
        libc::ENODATA
    );
    assert_eq!(errno(get_xattr(&p, "user.none")), libc::ENODATA);
    let (c, n) = (cstr(&p), CString::new("user.a").unwrap());
    // SAFETY: valid strings.
    assert_eq!(unsafe { libc::removexattr(c.as_ptr(), n.as_ptr()) }, 0);
    assert_eq!(list_xattr(&p), ["user.b"]);
    // Too small a buffer: ERANGE.
    let n = CString::new("user.b").unwrap();
    let mut small = [0u8; 1];
    // SAFETY: valid strings and buffer.
    let rc = unsafe { libc::getxattr(c.as_ptr(), n.as_ptr(), small.as_mut_ptr().cast(), 1) };
    assert_eq!(rc, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::ERANGE)
    );
});

// ---- data ---------------------------------------------------------------

posix_test!(large_file_over_many_chunks, |r| {
    let p = r.path().join("big");
    let data = pattern(21 << 20, 7); // > 5 chunks of 4 MiB
    let mut f = File::create(&p).unwrap();
    for piece in data.chunks(1 << 20) {
        f.write_all(piece).unwrap();
    }
    f.sync_all().unwrap();
    drop(f);
    assert_eq!(fs::metadata(&p).unwrap().len(), data.len() as u64);
    assert!(fs::read(&p).unwrap() == data, "content differs");
    // Unaligned reads across chunk borders.
    let mut f = File::open(&p).unwrap();
    for off in [(4 << 20) - 3, (8 << 20) + 12345, (21 << 20) - 10] {
        let mut buf = vec![0u8; 100];
        f.seek(SeekFrom::Start(off as u64)).unwrap();
        let n = f.read(&mut buf).unwrap();
        let end = (off + 100).min(data.len());
        assert_eq!(&buf[..n], &data[off..end]);
    }
    // Overwrite in the middle, across a chunk border.
    let mut f = OpenOptions::new().write(true).open(&p).unwrap();
    f.seek(SeekFrom::Start((4 << 20) - 10)).unwrap();
    f.write_all(&[9u8; 20]).unwrap();
    drop(f);
    let got = fs::read(&p).unwrap();
    assert!(got[(4 << 20) - 10..(4 << 20) + 10].iter().all(|b| *b == 9));
    assert!(got[..(4 << 20) - 10] == data[..(4 << 20) - 10]);
    assert!(got[(4 << 20) + 10..] == data[(4 << 20) + 10..]);
    if r.is_store() {
        let o = Command::new(store_bin())
            .args(["fs", "stat"])
            .arg(&p)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["size"], 21 << 20);
        assert!(v["slices"].as_array().unwrap().len() >= 6);
    }
});

posix_test!(concurrent_writers, |r| {
    let root = &r.path();
    let handles: Vec<_> = (0..4u64)
        .map(|i| {
            let p = root.join(format!("w{i}"));
            std::thread::spawn(move || {
                let data = pattern(6 << 20, i);
                let mut f = File::create(&p).unwrap();
                for piece in data.chunks(64 << 10) {
                    f.write_all(piece).unwrap();
                }
                drop(f);
                data
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let want = h.join().unwrap();
        assert!(
            fs::read(root.join(format!("w{i}"))).unwrap() == want,
            "file {i}"
        );
    }
});

posix_test!(unlinked_open_file_stays_readable, |r| {
    let p = r.path().join("gone");
    fs::write(&p, pattern(100_000, 3)).unwrap();
    let mut f = File::open(&p).unwrap();
    fs::remove_file(&p).unwrap();
    assert!(!p.exists());
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).unwrap();
    assert!(buf == pattern(100_000, 3));
});

posix_test!(git_init_commit_fsck, |r| {
    let repo = r.path().join("repo");
    fs::create_dir(&repo).unwrap();
    let git = |args: &[&str]| {
        let o = Command::new("git")
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@example.invalid",
                "-c",
                "init.defaultBranch=main",
            ])
            .args(args)
            .current_dir(&repo)
            .env("HOME", &repo)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    git(&["init", "-q"]);
    for i in 0..30 {
        fs::write(
            repo.join(format!("f{i}.txt")),
            format!("file {i}\n").repeat(i + 1),
        )
        .unwrap();
    }
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "first"]);
    fs::write(repo.join("f1.txt"), "changed\n").unwrap();
    git(&["commit", "-q", "-am", "second"]);
    git(&["gc", "-q"]);
    git(&["fsck", "--full", "--strict"]);
    assert_eq!(git(&["log", "--oneline"]).lines().count(), 2);
    assert!(git(&["status", "--porcelain"]).is_empty());
    // Clone this project's own repository (pack transfer, not hard links).
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dst = r.path().join("clone");
    let o = Command::new("git")
        .args(["clone", "-q", "--no-hardlinks"])
        .arg(format!("file://{}", src.canonicalize().unwrap().display()))
        .arg(&dst)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "git clone: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = Command::new("git")
        .args(["fsck", "--full"])
        .current_dir(&dst)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "git fsck: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = Command::new("git")
        .args(["status", "--porcelain"])
        .current_dir(&dst)
        .output()
        .unwrap();
    assert!(
        o.stdout.is_empty(),
        "clone checkout differs: {}",
        String::from_utf8_lossy(&o.stdout)
    );
});

fn walk(dir: &Path, base: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        let rel = p.strip_prefix(base).unwrap().to_path_buf();
        let m = fs::symlink_metadata(&p).unwrap();
        if m.is_dir() {
            out.push((rel, b"<dir>".to_vec()));
            walk(&p, base, out);
        } else if m.file_type().is_symlink() {
            out.push((
                rel,
                fs::read_link(&p).unwrap().as_os_str().as_bytes().to_vec(),
            ));
        } else {
            out.push((rel, fs::read(&p).unwrap()));
        }
    }
}

posix_test!(tar_extract_of_a_real_tree, |r| {
    // This crate's sources: a real tree of files and directories.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let tarball = tempfile::NamedTempFile::new().unwrap();
    let st = Command::new("tar")
        .arg("-cf")
        .arg(tarball.path())
        .arg("-C")
        .arg(&src)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    let dst = r.path().join("x");
    fs::create_dir(&dst).unwrap();
    let st = Command::new("tar")
        .arg("-xf")
        .arg(tarball.path())
        .arg("-C")
        .arg(&dst)
        .status()
        .unwrap();
    assert!(st.success());
    let (mut a, mut b) = (Vec::new(), Vec::new());
    walk(&src, &src, &mut a);
    walk(&dst, &dst, &mut b);
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.0, y.0);
        assert!(x.1 == y.1, "{} differs", x.0.display());
    }
});

posix_test!(locks_exclude_other_processes, |r| {
    let p = r.path().join("lockfile");
    fs::write(&p, b"").unwrap();
    let q = p.display().to_string();
    // flock: a second process cannot take the lock while the first holds it.
    let holder = Command::new("flock")
        .arg(&q)
        .args(["sleep", "1.5"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let o = Command::new("flock")
        .args(["-n", &q, "true"])
        .output()
        .unwrap();
    assert!(!o.status.success(), "flock -n got a held lock");
    // A blocking flock waits for the holder, then succeeds.
    let start = Instant::now();
    let o = Command::new("flock")
        .args(["-w", "10", &q, "true"])
        .output()
        .unwrap();
    assert!(o.status.success());
    assert!(start.elapsed() > Duration::from_millis(500), "did not wait");
    let mut holder = holder;
    holder.wait().unwrap();
    // fcntl byte-range locks: exclusive ranges conflict, disjoint ones do not.
    let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
    let set = |fd: i32, kind: i32, start: i64, len: i64, cmd: i32| {
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = kind as i16;
        fl.l_whence = libc::SEEK_SET as i16;
        fl.l_start = start;
        fl.l_len = len;
        // SAFETY: valid fd and flock struct.
        let rc = unsafe { libc::fcntl(fd, cmd, &mut fl) };
        (rc, fl)
    };
    assert_eq!(set(fd, libc::F_WRLCK, 0, 10, libc::F_SETLK).0, 0);
    // F_GETLK from this process sees no conflict with its own lock.
    let (rc, fl) = set(fd, libc::F_WRLCK, 5, 1, libc::F_GETLK);
    assert_eq!((rc, fl.l_type), (0, libc::F_UNLCK as i16));
    // flock and fcntl locks do not interact (locally; on a cluster mount
    // both share the cluster's lock table, see docs/fs.md).
    let o = Command::new("flock")
        .args(["-n", &q, "true"])
        .output()
        .unwrap();
    assert_eq!(
        o.status.success(),
        !r.is_cluster(),
        "flock against another process's fcntl lock"
    );
    // Another process (another owner): disjoint range fine, overlap refused.
    let script = format!(
        "import fcntl\nf = open({q:?}, 'r+')\n\
         fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB, 5, 20)\nprint('disjoint-ok', flush=True)\n\
         fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB, 5, 5)\nprint('overlap-granted')\n"
    );
    let o = Command::new("python3")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(out.contains("disjoint-ok"), "{out} {err}");
    assert!(!out.contains("overlap-granted"), "{out}");
    assert!(err.contains("Resource temporarily unavailable"), "{err}");
    // A blocking request in another process waits until we unlock.
    let mut waiter = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import fcntl\nf = open({q:?}, 'r+')\nfcntl.lockf(f, fcntl.LOCK_EX, 5, 5)\nprint('granted')\n"
        ))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        waiter.try_wait().unwrap().is_none(),
        "did not wait for the lock"
    );
    assert_eq!(set(fd, libc::F_UNLCK, 0, 10, libc::F_SETLK).0, 0);
    let start = Instant::now();
    loop {
        if let Some(st) = waiter.try_wait().unwrap() {
            assert!(st.success());
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "waiter never granted"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut out = String::new();
    waiter
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert_eq!(out.trim(), "granted");
});

posix_test!(mmap_fifo_and_append, |r| {
    let root = r.path();
    // Shared writable mmap: stores reach the file.
    let p = root.join("mapped");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    f.set_len(8192).unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
    // SAFETY: mapping 8192 bytes of a file we just sized; unmapped below.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            8192,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    assert_ne!(
        addr,
        libc::MAP_FAILED,
        "{}",
        std::io::Error::last_os_error()
    );
    // SAFETY: addr points at 8192 mapped bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(b"mapped!".as_ptr(), (addr as *mut u8).add(4096), 7);
        assert_eq!(libc::msync(addr, 8192, libc::MS_SYNC), 0);
        libc::munmap(addr, 8192);
    }
    drop(f);
    let got = fs::read(&p).unwrap();
    assert_eq!(&got[4096..4103], b"mapped!");
    assert!(got[..4096].iter().all(|b| *b == 0));
    // A FIFO is a FIFO.
    let fifo = cstr(&root.join("fifo"));
    // SAFETY: valid path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(
        &fs::metadata(root.join("fifo")).unwrap().file_type()
    ));
    // Two O_APPEND descriptors interleave without overwriting.
    let a = root.join("appended");
    let mut x = OpenOptions::new()
        .append(true)
        .create(true)
        .open(&a)
        .unwrap();
    let mut y = OpenOptions::new().append(true).open(&a).unwrap();
    for _ in 0..50 {
        x.write_all(b"xx").unwrap();
        y.write_all(b"y").unwrap();
    }
    drop((x, y));
    let got = fs::read(&a).unwrap();
    assert_eq!(got.len(), 150);
    assert_eq!(got.iter().filter(|b| **b == b'y').count(), 50);
});

posix_test!(supplementary_groups_grant_access, |r| {
    let d = r.path().join("team");
    fs::create_dir(&d).unwrap();
    std::os::unix::fs::chown(&d, Some(0), Some(50)).unwrap();
    fs::set_permissions(&d, fs::Permissions::from_mode(0o770)).unwrap();
    let run = |groups: &str| {
        Command::new("setpriv")
            .args([
                "--reuid=1000",
                "--regid=1000",
                &format!("--groups={groups}"),
            ])
            .args([
                "sh",
                "-c",
                &format!(
                    "echo hi > {}/f-{groups} && mkdir {}/d-{groups}",
                    d.display(),
                    d.display()
                ),
            ])
            .output()
            .unwrap()
    };
    let o = run("50");
    assert!(
        o.status.success(),
        "member of group 50: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = run("51");
    assert!(!o.status.success(), "not a member, yet allowed");
    assert_eq!(fs::read(d.join("f-50")).unwrap(), b"hi\n");
    assert_eq!(fs::metadata(d.join("d-50")).unwrap().uid(), 1000);
});

// ---- bad input ----------------------------------------------------------

posix_test!(bad_names_and_removed_directories, |r| {
    let root = &r.path();
    let long = "a".repeat(256);
    assert_eq!(errno(fs::write(root.join(&long), b"")), libc::ENAMETOOLONG);
    assert_eq!(errno(fs::metadata(root.join(&long))), libc::ENAMETOOLONG);
    assert_eq!(errno(fs::create_dir(root.join(&long))), libc::ENAMETOOLONG);
    fs::write(root.join("a".repeat(255)), b"ok").unwrap();
    // Invalid UTF-8 names are bytes and round-trip.
    let raw = OsStr::from_bytes(b"bad-\xff\xfe-name");
    fs::write(root.join(raw), b"bytes").unwrap();
    let found = fs::read_dir(root)
        .unwrap()
        .any(|e| e.unwrap().file_name() == raw);
    assert!(found);
    assert_eq!(fs::read(root.join(raw)).unwrap(), b"bytes");
    // Operations through a removed directory: ENOENT, never a hang.
    let d = root.join("doomed");
    fs::create_dir(&d).unwrap();
    let dfd = File::open(&d).unwrap();
    fs::remove_dir(&d).unwrap();
    let name = CString::new("child").unwrap();
    // SAFETY: valid fd and name.
    let fd = unsafe {
        libc::openat(
            std::os::fd::AsRawFd::as_raw_fd(&dfd),
            name.as_ptr(),
            libc::O_CREAT | libc::O_WRONLY,
            0o644,
        )
    };
    assert_eq!(fd, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::ENOENT)
    );
    // SAFETY: valid fd and name.
    let rc = unsafe { libc::mkdirat(std::os::fd::AsRawFd::as_raw_fd(&dfd), name.as_ptr(), 0o755) };
    assert_eq!(rc, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::ENOENT)
    );
});

// ---- store only: crash safety and lifecycle ------------------------------

#[test]
fn crash_during_large_write_keeps_old_or_new_content() {
    let Some(Root::Store(mut m)) = Root::store() else {
        return;
    };
    let mnt = m.mnt();
    let old = pattern(12 << 20, 11);
    let new = pattern(12 << 20, 12);
    // A: fsynced, must survive exactly.
    let mut f = File::create(mnt.join("a")).unwrap();
    f.write_all(&old).unwrap();
    f.sync_all().unwrap();
    drop(f);
    // C: fsynced old content, then overwritten in place without fsync.
    let mut f = File::create(mnt.join("c")).unwrap();
    f.write_all(&old).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let writer = {
        let (mnt, new) = (mnt.clone(), new.clone());
        std::thread::spawn(move || {
            let Ok(mut c) = OpenOptions::new().write(true).open(mnt.join("c")) else {
                return;
            };
            let Ok(mut b) = File::create(mnt.join("b")) else {
                return;
            };
            for piece in new.chunks(256 << 10) {
                if c.write_all(piece).is_err() || b.write_all(piece).is_err() {
                    return;
                }
            }
        })
    };
    std::thread::sleep(Duration::from_millis(150));
    m.kill9();
    let _ = writer.join();
    assert!(mounted(&mnt), "kill -9 leaves a stale mount point");
    // The next mount clears the stale mount point itself.
    m.spawn();
    assert!(
        fs::read(mnt.join("a")).unwrap() == old,
        "fsynced file changed"
    );
    let c = fs::read(mnt.join("c")).unwrap();
    assert_eq!(c.len(), old.len());
    let garbage = (0..c.len())
        .filter(|&i| c[i] != old[i] && c[i] != new[i])
        .count();
    assert_eq!(garbage, 0, "bytes that are neither old nor new");
    if let Ok(b) = fs::read(mnt.join("b")) {
        assert!(b.len() <= new.len());
        assert!(b[..] == new[..b.len()], "b is a prefix of what was written");
    }
}

#[test]
fn sigterm_unmounts_cleanly_and_data_persists() {
    let Some(Root::Store(mut m)) = Root::store() else {
        return;
    };
    let mnt = m.mnt();
    fs::write(mnt.join("keep"), b"persisted").unwrap();
    let status = m.stop();
    assert!(status.success(), "exit {status}: {}", m.log());
    assert!(!mounted(&mnt), "still mounted after SIGTERM");
    m.spawn();
    assert_eq!(fs::read(mnt.join("keep")).unwrap(), b"persisted");
    // A second mount on the same point is refused with a clear message.
    let o = Command::new(store_bin())
        .arg("mount")
        .arg(&mnt)
        .arg("--backend")
        .arg(format!("local:{}", m.backend().display()))
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("already mounted"), "{err}");
    // An external umount ends the process cleanly.
    let st = Command::new("umount").arg(&mnt).status().unwrap();
    assert!(st.success());
    let mut c = m.child.take().unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = c.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "mount process kept running"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit {status}: {}", m.log());
}

#[test]
fn fstab_helper_mounts_in_the_background() {
    if !is_root() || !Path::new("/dev/fuse").exists() {
        eprintln!("skipped: needs root and /dev/fuse");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let helper = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/mount.fuse.store");
    let o = Command::new(&helper)
        .arg(format!("local:{}", dir.path().join("be").display()))
        .arg(&mnt)
        .args(["-o", "rw,_netdev,threads=2,cache_mb=16"])
        .env("STORE_BIN", store_bin())
        .env("STORE_MOUNT_LOG", dir.path().join("log"))
        .output()
        .unwrap();
    struct Umount(PathBuf);
    impl Drop for Umount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _guard = Umount(mnt.clone());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(mounted(&mnt), "helper returned before the mount was up");
    fs::write(mnt.join("f"), b"via fstab").unwrap();
    assert_eq!(fs::read(mnt.join("f")).unwrap(), b"via fstab");
    // umount ends the background process (it notices within 0.2 s).
    assert!(Command::new("umount").arg(&mnt).status().unwrap().success());
    std::thread::sleep(Duration::from_millis(600));
    let log = fs::read_to_string(dir.path().join("log")).unwrap_or_default();
    assert!(log.contains("unmounted"), "{log}");
    // A bad backend fails with the mount's own message.
    let o = Command::new(&helper)
        .arg("nfs:/x")
        .arg(&mnt)
        .env("STORE_BIN", store_bin())
        .env("STORE_MOUNT_LOG", dir.path().join("log2"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("local:PATH"));
}

#[test]
fn writes_beyond_the_size_limit_fail_with_efbig() {
    let Some(root) = Root::store() else { return };
    efbig(&root);
}

#[test]
fn writes_beyond_the_size_limit_fail_with_efbig_on_a_cluster() {
    let Some(root) = Root::cluster() else { return };
    efbig(&root);
}

fn efbig(root: &Root) {
    let p = root.path().join("huge");
    let f = File::create(&p).unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
    let buf = [1u8; 16];
    // SAFETY: valid fd and buffer.
    let n = unsafe { libc::pwrite(fd, buf.as_ptr().cast(), buf.len(), 1 << 51) };
    assert_eq!(n, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EFBIG)
    );
    assert_eq!(errno(f.set_len(1 << 51)), libc::EFBIG);
    // The mount is still fine.
    drop(f);
    fs::write(&p, b"ok").unwrap();
    assert_eq!(fs::read(&p).unwrap(), b"ok");
}

#[test]
fn a_full_backend_reports_enospc_and_keeps_committed_files() {
    if !is_root() || !Path::new("/dev/fuse").exists() {
        eprintln!("skipped: needs root and /dev/fuse");
        return;
    }
    // The backend on a 24 MiB tmpfs.
    let mut m = Mount::start();
    m.kill9();
    let _ = Command::new("umount").arg("-l").arg(m.mnt()).status();
    let be = m.backend();
    let _ = fs::remove_dir_all(&be);
    fs::create_dir_all(&be).unwrap();
    struct Umount(PathBuf);
    impl Drop for Umount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=24m", "tmpfs"])
        .arg(&be)
        .status()
        .unwrap();
    assert!(st.success());
    let _be_guard = Umount(be.clone());
    m.spawn();
    let mnt = m.mnt();
    fs::write(mnt.join("small"), b"committed").unwrap();
    let mut f = File::create(mnt.join("big")).unwrap();
    let data = pattern(1 << 20, 5);
    let mut failed = None;
    for _ in 0..64 {
        if let Err(e) = f.write_all(&data) {
            failed = Some(e);
            break;
        }
    }
    let failed = failed.or_else(|| f.sync_all().err());
    let e = failed.expect("writing 64 MiB into 24 MiB succeeded");
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
    drop(f);
    // Earlier files are intact, and space comes back after a delete.
    assert_eq!(fs::read(mnt.join("small")).unwrap(), b"committed");
    fs::remove_file(mnt.join("big")).unwrap();
    std::thread::sleep(Duration::from_millis(1200)); // chunk deletion after the metadata sync
    fs::write(mnt.join("after"), pattern(4 << 20, 6)).unwrap();
    assert!(fs::read(mnt.join("after")).unwrap() == pattern(4 << 20, 6));
    drop(m);
}
