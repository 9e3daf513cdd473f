//! `/data` over a real 3-node cluster (separate processes on loopback):
//! two `store mount --backend cluster:` processes on two nodes see each
//! other's writes, renames and locks; caches are invalidated; a killed
//! mount or server never leaves garbage, fsynced data survives a server
//! kill; the admin API serves the same files. Needs root and /dev/fuse.

mod harness;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use harness::{data, http, Cluster};

fn usable() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !Path::new("/dev/fuse").exists() {
        eprintln!("skipped: needs root and /dev/fuse");
        return false;
    }
    true
}

fn mounted(dir: &Path) -> bool {
    let want = dir.to_string_lossy().replace(' ', "\\040");
    fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(want.as_str()))
}

/// A `store mount` process on node `node`'s data dir; killed and
/// unmounted on drop (also on panic).
struct MountProc {
    dir: PathBuf,
    backend: String,
    log: PathBuf,
    child: Option<Child>,
}

impl MountProc {
    fn start(c: &Cluster, node: usize, name: &str) -> MountProc {
        let dir = c.tmp.path().join(format!("mnt-{name}"));
        fs::create_dir_all(&dir).unwrap();
        let mut m = MountProc {
            dir,
            backend: format!("cluster:{}", c.nodes[node].dir.display()),
            log: c.tmp.path().join(format!("mount-{name}.log")),
            child: None,
        };
        m.spawn();
        m
    }

    fn spawn(&mut self) {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(harness::bin())
            .arg("mount")
            .arg(&self.dir)
            .arg("--backend")
            .arg(&self.backend)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting store mount");
        self.child = Some(child);
        let start = Instant::now();
        while !(mounted(&self.dir) && fs::metadata(&self.dir).is_ok()) {
            if let Some(Ok(Some(s))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("store mount exited with {s}: {}", self.log());
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "mount did not appear: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }
}

impl Drop for MountProc {
    fn drop(&mut self) {
        self.kill9();
        if mounted(&self.dir) {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<_> = log.lines().rev().take(30).collect();
            eprintln!("---- mount {} log ----", self.dir.display());
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// Polls `f` until it returns `Some` (at most `limit`).
fn eventually<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn flock_n(path: &Path) -> bool {
    Command::new("flock")
        .arg("-n")
        .arg(path)
        .arg("true")
        .status()
        .unwrap()
        .success()
}

#[test]
fn two_mounts_on_two_nodes_share_files_renames_locks_and_caches() {
    if !usable() {
        return;
    }
    let c = Cluster::start(3, &[], &[]);
    let a = MountProc::start(&c, 0, "a");
    let b = MountProc::start(&c, 1, "b");

    // Write + close on A, open + read on B: close-to-open.
    let body = data(5 << 20, 1);
    fs::write(a.p("f"), &body).unwrap();
    assert!(fs::read(b.p("f")).unwrap() == body, "B reads what A wrote");
    // The admin API of the third node serves the same bytes.
    let (code, _, got) = http(c.nodes[2].admin, "GET", "/v1/fs/f", &[], b"").unwrap();
    assert_eq!(code, 200);
    assert!(got == body, "GET /v1/fs/f returns the file");
    let (code, _, _) = http(c.nodes[2].admin, "GET", "/v1/fs/missing", &[], b"").unwrap();
    assert_eq!(code, 404);
    fs::create_dir(a.p("dir")).unwrap();
    let (code, _, _) = http(c.nodes[2].admin, "GET", "/v1/fs/dir", &[], b"").unwrap();
    assert_eq!(code, 400);

    // B has the file cached (attributes, pages); A overwrites it: B's next
    // open sees the new content and size.
    let small = b"second version".to_vec();
    let mut f = File::create(a.p("f")).unwrap();
    f.write_all(&small).unwrap();
    drop(f);
    assert_eq!(fs::read(b.p("f")).unwrap(), small);
    assert_eq!(fs::metadata(b.p("f")).unwrap().len(), small.len() as u64);

    // A directory B listed gains an entry on A: B sees it.
    let before: Vec<_> = fs::read_dir(b.p("dir")).unwrap().collect();
    assert!(before.is_empty());
    fs::write(a.p("dir/new"), b"x").unwrap();
    let names: Vec<String> = fs::read_dir(b.p("dir"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["new".to_string()]);

    // Rename on A is visible on B: old name gone, new name has the data.
    fs::rename(a.p("f"), a.p("dir/g")).unwrap();
    assert_eq!(fs::read(b.p("dir/g")).unwrap(), small);
    eventually(Duration::from_secs(3), "old name gone on B", || {
        fs::metadata(b.p("f")).is_err().then_some(())
    });
    // B's cached attributes follow a chmod on A (invalidation, not TTL).
    use std::os::unix::fs::PermissionsExt;
    let _ = fs::metadata(b.p("dir/g")).unwrap();
    fs::set_permissions(a.p("dir/g"), fs::Permissions::from_mode(0o600)).unwrap();
    eventually(Duration::from_millis(900), "B sees the chmod", || {
        (fs::metadata(b.p("dir/g")).unwrap().permissions().mode() & 0o777 == 0o600).then_some(())
    });

    // flock on A excludes B, and B gets it once A lets go.
    fs::write(a.p("lock"), b"").unwrap();
    let holder = Command::new("flock")
        .arg(a.p("lock"))
        .args(["sleep", "2"])
        .spawn()
        .unwrap();
    eventually(Duration::from_secs(5), "A holds the flock", || {
        (!flock_n(&b.p("lock"))).then_some(())
    });
    let start = Instant::now();
    let o = Command::new("flock")
        .args(["-w", "20"])
        .arg(b.p("lock"))
        .arg("true")
        .output()
        .unwrap();
    assert!(o.status.success(), "B got the flock after A released it");
    assert!(
        start.elapsed() > Duration::from_millis(300),
        "B did not wait"
    );
    let mut holder = holder;
    holder.wait().unwrap();

    // fcntl byte-range locks exclude across nodes too.
    let script = |path: &Path, start: u32, len: u32| {
        format!(
            "import fcntl, sys\nf = open({:?}, 'r+')\n\
             try:\n    fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB, {len}, {start})\n    print('granted', flush=True)\n\
             except OSError:\n    print('refused', flush=True)\n    sys.exit(0)\n\
             import time\ntime.sleep(3)\n",
            path.display().to_string()
        )
    };
    let mut hold = Command::new("python3")
        .arg("-c")
        .arg(script(&a.p("lock"), 0, 100))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = [0u8; 8];
    hold.stdout.as_mut().unwrap().read_exact(&mut line).unwrap();
    assert_eq!(&line, b"granted\n");
    let o = Command::new("python3")
        .arg("-c")
        .arg(script(&b.p("lock"), 50, 10))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "refused");
    let o = Command::new("python3")
        .arg("-c")
        .arg(script(&b.p("lock"), 200, 10).replace("time.sleep(3)", ""))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "granted",
        "disjoint range"
    );
    let _ = hold.kill();
    let _ = hold.wait();
}

#[test]
fn a_killed_mount_loses_its_locks_and_never_leaves_garbage() {
    if !usable() {
        return;
    }
    let c = Cluster::start(3, &[], &[]);
    let mut a = MountProc::start(&c, 0, "a");
    let b = MountProc::start(&c, 1, "b");
    let old = data(12 << 20, 11);
    let new = data(12 << 20, 12);
    let mut f = File::create(a.p("c")).unwrap();
    f.write_all(&old).unwrap();
    f.sync_all().unwrap();
    drop(f);
    fs::write(a.p("lock"), b"").unwrap();
    // A holds a lock "forever" and overwrites c when it is killed.
    // (python holds the lock itself: killing it leaves no child behind)
    let mut holder = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import fcntl, time\nf = open({:?})\nfcntl.flock(f, fcntl.LOCK_EX)\ntime.sleep(600)\n",
            a.p("lock").display().to_string()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    eventually(Duration::from_secs(5), "A holds the flock", || {
        (!flock_n(&b.p("lock"))).then_some(())
    });
    let writer = {
        let (p, new) = (a.p("c"), new.clone());
        std::thread::spawn(move || {
            let Ok(mut c) = OpenOptions::new().write(true).open(p) else {
                return;
            };
            for piece in new.chunks(256 << 10) {
                if c.write_all(piece).is_err() {
                    return;
                }
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    a.kill9();
    let _ = writer.join();
    let _ = holder.kill();
    let _ = holder.wait();
    // c on B: old or new bytes, never anything else.
    let got = fs::read(b.p("c")).unwrap();
    assert_eq!(got.len(), old.len());
    let garbage = (0..got.len())
        .filter(|&i| got[i] != old[i] && got[i] != new[i])
        .count();
    assert_eq!(garbage, 0, "bytes that are neither old nor new");
    // The dead mount's lock goes with its lease.
    let start = Instant::now();
    eventually(
        Duration::from_secs(40),
        "the dead mount's flock expires",
        || flock_n(&b.p("lock")).then_some(()),
    );
    eprintln!(
        "lock of the killed mount released after {:?}",
        start.elapsed()
    );
    // A comes back on the stale mount point.
    a.spawn();
    assert_eq!(fs::read(a.p("c")).unwrap().len(), old.len());
}

#[test]
fn fsynced_data_survives_a_server_kill_and_a_write_during_one() {
    if !usable() {
        return;
    }
    let mut c = Cluster::start(3, &[], &[]);
    let b = MountProc::start(&c, 1, "b");
    let body = data(9 << 20, 3);
    let mut f = File::create(b.p("kept")).unwrap();
    f.write_all(&body).unwrap();
    f.sync_all().unwrap();
    drop(f);
    // A large write while another server dies: old or new, never garbage.
    let old = data(12 << 20, 21);
    let new = data(12 << 20, 22);
    let mut f = File::create(b.p("c")).unwrap();
    f.write_all(&old).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let writer = {
        let (p, new) = (b.p("c"), new.clone());
        std::thread::spawn(move || -> std::io::Result<()> {
            let mut c = OpenOptions::new().write(true).open(p)?;
            for piece in new.chunks(256 << 10) {
                c.write_all(piece)?;
            }
            c.sync_all()
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    // Kill the leader if it is not the mount's own server, else node 2.
    let victim = match c.leader_index() {
        Some(l) if l != 1 => l,
        _ => 2,
    };
    c.kill9(victim);
    let wrote = writer.join().unwrap();
    let got = fs::read(b.p("c")).unwrap();
    assert_eq!(got.len(), old.len());
    if wrote.is_ok() {
        assert!(got == new, "an fsync that succeeded keeps the new content");
    } else {
        let garbage = (0..got.len())
            .filter(|&i| got[i] != old[i] && got[i] != new[i])
            .count();
        assert_eq!(garbage, 0, "bytes that are neither old nor new");
    }
    // The file fsynced before the kill is intact, through the mount and
    // through a surviving node's API.
    assert!(fs::read(b.p("kept")).unwrap() == body);
    let other = (0..3).find(|i| *i != victim && *i != 1).unwrap();
    let (code, _, got) = http(c.nodes[other].admin, "GET", "/v1/fs/kept", &[], b"").unwrap();
    assert_eq!(code, 200);
    assert!(got == body);
    // The mount keeps working with one server down.
    fs::write(b.p("after"), b"still writable").unwrap();
    assert_eq!(fs::read(b.p("after")).unwrap(), b"still writable");
}

#[test]
fn a_mount_fails_over_when_its_own_server_dies() {
    if !usable() {
        return;
    }
    let mut c = Cluster::start(3, &[], &[]);
    let a = MountProc::start(&c, 0, "a");
    let body = data(3 << 20, 5);
    let mut f = File::create(a.p("x")).unwrap();
    f.write_all(&body).unwrap();
    f.sync_all().unwrap();
    drop(f);
    c.kill9(0);
    // Reads and writes go on through another node (after an election if
    // node 0 led the group).
    let got = eventually(Duration::from_secs(30), "reading after fail-over", || {
        fs::read(a.p("x")).ok()
    });
    assert!(got == body);
    eventually(Duration::from_secs(30), "writing after fail-over", || {
        fs::write(a.p("y"), b"after").ok()
    });
    assert_eq!(fs::read(a.p("y")).unwrap(), b"after");
}

#[test]
fn garbage_collection_keeps_every_chunk_a_file_references() {
    if !usable() {
        return;
    }
    // GC runs every second and considers any chunk older than a second:
    // only the references it reads keep a file's chunks alive.
    let c = Cluster::start(3, &[], &["--gc-delay", "1s", "--gc-interval", "1s"]);
    let a = MountProc::start(&c, 0, "a");
    let big = data(9 << 20, 41);
    let mut f = File::create(a.p("big")).unwrap();
    f.write_all(&big).unwrap();
    f.sync_all().unwrap();
    drop(f);
    fs::create_dir(a.p("d")).unwrap();
    for i in 0..20 {
        fs::write(a.p(&format!("d/f{i}")), data(100_000 + i, i as u64)).unwrap();
    }
    let before: Vec<usize> = (0..3).map(|i| c.chunk_files(i).len()).collect();
    assert!(before.iter().all(|n| *n >= 3), "{before:?}");
    // A planted chunk nothing references, an hour old: GC must take it,
    // which proves GC ran (and was not blocked) while the files stayed.
    let template = c.chunk_files(1)[0].clone();
    let name = "0123456789abcdef0123456789abcdef";
    let dir = c.nodes[1]
        .dir
        .join("chunks")
        .join(&name[0..2])
        .join(&name[2..4]);
    fs::create_dir_all(&dir).unwrap();
    let planted = dir.join(name);
    fs::copy(&template, &planted).unwrap();
    assert!(Command::new("touch")
        .args(["-d", "1 hour ago"])
        .arg(&planted)
        .status()
        .unwrap()
        .success());
    eventually(
        Duration::from_secs(30),
        "the planted chunk collected",
        || (!planted.exists()).then_some(()),
    );
    // A few more passes over the real chunks.
    std::thread::sleep(Duration::from_secs(3));
    let after: Vec<usize> = (0..3).map(|i| c.chunk_files(i).len()).collect();
    assert_eq!(before, after, "GC removed chunks files reference");
    for node in 0..3 {
        let (code, _, got) = http(c.nodes[node].admin, "GET", "/v1/fs/big", &[], b"").unwrap();
        assert_eq!(code, 200, "node {node}: {}", String::from_utf8_lossy(&got));
        assert!(got == big, "big differs on node {node}");
        let (code, _, got) = http(c.nodes[node].admin, "GET", "/v1/fs/d/f7", &[], b"").unwrap();
        assert_eq!(code, 200);
        assert!(got == data(100_007, 7));
    }
}

#[test]
fn files_survive_a_node_loss_and_get_their_three_copies_back() {
    if !usable() {
        return;
    }
    // Short failure timings: down after 2 s, out 3 s later.
    let mut c = Cluster::start(
        4,
        &[],
        &[
            "--down-after",
            "2s",
            "--out-after",
            "3s",
            "--recovery-interval",
            "3s",
        ],
    );
    let a = MountProc::start(&c, 0, "a");
    let mut files = Vec::new();
    for (i, len) in [(9 << 20) + 17, 3 << 20, 200_000, 70_000]
        .iter()
        .enumerate()
    {
        let name = format!("f{i}");
        let body = data(*len, 70 + i as u64);
        let mut f = File::create(a.p(&name)).unwrap();
        f.write_all(&body).unwrap();
        f.sync_all().unwrap();
        files.push((name, body));
    }
    let all = [0, 1, 2, 3];
    eventually(
        Duration::from_secs(30),
        "three copies of every chunk",
        || {
            let m = c.copies(&all);
            (!m.is_empty() && m.values().all(|n| *n == 3)).then_some(())
        },
    );
    // Lose a node that is not the mount's own server (and holds copies).
    assert!(!c.chunk_files(3).is_empty());
    c.kill9(3);
    eventually(
        Duration::from_secs(90),
        "three copies again on the survivors",
        || {
            let m = c.copies(&[0, 1, 2]);
            (!m.is_empty() && m.values().all(|n| *n == 3)).then_some(())
        },
    );
    for (name, body) in &files {
        // Through the mount (fresh open: close-to-open) and through a
        // surviving node's API, bit-exact.
        let mut got = Vec::new();
        File::open(a.p(name))
            .unwrap()
            .read_to_end(&mut got)
            .unwrap();
        assert!(got == *body, "{name} differs through the mount");
        let (code, _, got) =
            http(c.nodes[2].admin, "GET", &format!("/v1/fs/{name}"), &[], b"").unwrap();
        assert_eq!(code, 200, "{name}");
        assert!(got == *body, "{name} differs through node 2's API");
    }
}

/// The namespace workload of `tar x`, `git` and editors (create, write,
/// close, mkdir, rename over, chmod, chown, utime, unlink) runs while the
/// mount's own server stalls (SIGSTOP longer than the connection timeout,
/// so requests in flight lose their answers; then SIGCONT, so stale copies
/// arrive late) and then the Raft leader is killed: no operation may fail
/// (the mount retries on another node, and a retried operation is applied
/// exactly once), and every file ends with its content.
#[test]
fn namespace_changes_ride_through_a_leader_kill_without_errors() {
    use std::os::unix::fs::PermissionsExt;
    if !usable() {
        return;
    }
    let mut c = Cluster::start(3, &[], &[]);
    let leader = c.leader_index().expect("a leader");
    let node = (leader + 1) % 3;
    let a = MountProc::start(&c, node, "a");
    let root = a.p("");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let worker = {
        let root = root.clone();
        let stop = stop.clone();
        std::thread::spawn(move || -> Result<usize, String> {
            let start = Instant::now();
            let mut i = 0usize;
            // Bounded: at most 3000 rounds or 120 s.
            while i < 3000 && start.elapsed() < Duration::from_secs(120) {
                if stop.load(std::sync::atomic::Ordering::Relaxed) && i >= 40 {
                    break;
                }
                let d = root.join(format!("d{}", i / 20));
                let step = |what: &str, r: std::io::Result<()>| {
                    r.map_err(|e| format!("round {i}: {what}: {e}"))
                };
                if i % 20 == 0 {
                    step("mkdir", fs::create_dir(&d))?;
                }
                let tmp = d.join(format!(".f{i}.tmp"));
                let fin = d.join(format!("f{i}"));
                step("write", fs::write(&tmp, data(3000 + i, i as u64)))?;
                step(
                    "chmod",
                    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o640)),
                )?;
                step(
                    "chown",
                    std::os::unix::fs::chown(&tmp, Some(1000 + i as u32 % 3), Some(100)),
                )?;
                step(
                    "utime",
                    File::options().write(true).open(&tmp).and_then(|f| {
                        f.set_modified(
                            std::time::UNIX_EPOCH + Duration::from_secs(1_000_000 + i as u64),
                        )
                    }),
                )?;
                step("rename", fs::rename(&tmp, &fin))?;
                if i % 5 == 4 {
                    step("unlink", fs::remove_file(d.join(format!("f{}", i - 1))))?;
                }
                i += 1;
            }
            Ok(i)
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    c.signal(node, libc::SIGSTOP);
    std::thread::sleep(Duration::from_secs(8));
    c.signal(node, libc::SIGCONT);
    std::thread::sleep(Duration::from_secs(2));
    c.kill9(leader);
    std::thread::sleep(Duration::from_secs(4));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rounds = match worker.join().unwrap() {
        Ok(n) => n,
        Err(e) => panic!("an operation failed during the leader change: {e}"),
    };
    assert!(rounds >= 40, "only {rounds} rounds");
    for i in 0..rounds {
        let fin = root.join(format!("d{}/f{i}", i / 20));
        let gone = i % 5 == 3 && i + 1 < rounds;
        match fs::metadata(&fin) {
            Ok(m) => {
                assert!(!gone, "f{i} was unlinked but exists");
                assert_eq!(m.permissions().mode() & 0o777, 0o640, "f{i}");
                assert_eq!(std::os::unix::fs::MetadataExt::uid(&m), 1000 + i as u32 % 3);
                assert_eq!(fs::read(&fin).unwrap(), data(3000 + i, i as u64), "f{i}");
            }
            Err(e) => assert!(gone, "f{i}: {e}"),
        }
        assert!(!root.join(format!("d{}/.f{i}.tmp", i / 20)).exists());
    }
}
