//! The `/data` filesystem next to the filesystems it replaces, same run,
//! same machine: our `store mount` (a 3-node cluster on loopback, size 3),
//! GlusterFS replica 3 through its FUSE client, CephFS through ceph-fuse
//! (size 3), and bindfs over the local disk as the FUSE ceiling.
//!
//! Workloads, one system at a time: fio sequential 1 MiB write and read,
//! fio random 4 KiB read and write at iodepth 1 and 16 (O_DIRECT, libaio),
//! small files (create/stat/delete of 10,000 1 KiB files), `git clone` of
//! a bare copy of this repository and `tar x` of a tarball of a real tree.
//! The table gives every system's number and our ratio against each;
//! targets (issue 4): ≥ 2× GlusterFS and ≥ 2× ceph-fuse on every row,
//! sequential read ≥ 50 % of bindfs.
//!
//! GlusterFS and Ceph are set up and torn down by `benches/fs/gluster.sh`
//! and `benches/fs/ceph.sh`; a system that cannot be set up is reported as
//! n/a with the reason. Everything is torn down at the end, also after a
//! failure or Ctrl-C. Knobs (environment):
//!
//! - `FS_BENCH_SYSTEMS` comma list of b3,glusterfs,cephfs,bindfs (all)
//! - `FS_BENCH_STORE_BACKEND` `cluster` (default) or `local`; `cluster`
//!   falls back to `local`, labelled, when the `store` binary has no
//!   cluster backend yet
//! - `FS_BENCH_STORE_MOUNT_ARGS` extra `store mount` flags (space separated)
//! - `FS_BENCH_STORE_BIN` the `store` binary (default: next to this one)
//! - `FS_BENCH_DIR` where everything goes (default /var/tmp)
//! - `FS_BENCH_SEQ_MB` (512), `FS_BENCH_RAND_MB` (256),
//!   `FS_BENCH_RUNTIME` seconds per random fio job (10), `FS_BENCH_FILES`
//!   (10000), `FS_BENCH_REPS` runs of clone and tar, median (3)
//! - `FS_BENCH_TREE` the tree to tar (default /usr/share/doc)
//! - `FS_BENCH_SCRIPTS` the setup scripts' directory (default benches/fs)

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use b3_benches::{median, render_matrix, Better, MatrixRow};

/// Set by SIGINT/SIGTERM: stop measuring, tear everything down, exit.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn stopped() -> anyhow::Result<()> {
    if STOP.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

const MIB: f64 = 1024.0 * 1024.0;

/// One row of the table.
struct Workload {
    id: &'static str,
    label: &'static str,
    unit: &'static str,
    better: Better,
}

const WORKLOADS: &[Workload] = &[
    Workload {
        id: "seq-write",
        label: "seq write 1 MiB",
        unit: "MiB/s",
        better: Better::Higher,
    },
    Workload {
        id: "seq-read",
        label: "seq read 1 MiB",
        unit: "MiB/s",
        better: Better::Higher,
    },
    Workload {
        id: "randread-1",
        label: "rand read 4K qd1",
        unit: "IOPS",
        better: Better::Higher,
    },
    Workload {
        id: "randread-16",
        label: "rand read 4K qd16",
        unit: "IOPS",
        better: Better::Higher,
    },
    Workload {
        id: "randwrite-1",
        label: "rand write 4K qd1",
        unit: "IOPS",
        better: Better::Higher,
    },
    Workload {
        id: "randwrite-16",
        label: "rand write 4K qd16",
        unit: "IOPS",
        better: Better::Higher,
    },
    Workload {
        id: "create",
        label: "create small files",
        unit: "ops/s",
        better: Better::Higher,
    },
    Workload {
        id: "stat",
        label: "stat small files",
        unit: "ops/s",
        better: Better::Higher,
    },
    Workload {
        id: "delete",
        label: "delete small files",
        unit: "ops/s",
        better: Better::Higher,
    },
    Workload {
        id: "git-clone",
        label: "git clone",
        unit: "s",
        better: Better::Lower,
    },
    Workload {
        id: "tar-x",
        label: "tar x",
        unit: "s",
        better: Better::Lower,
    },
];

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What every system's run shares.
struct Ctx {
    root: PathBuf,
    logs: PathBuf,
    scripts: PathBuf,
    store_bin: PathBuf,
    git_src: PathBuf,
    tarball: PathBuf,
    tar_entries: usize,
    seq_mb: u64,
    rand_mb: u64,
    runtime: u64,
    files: u64,
    reps: u64,
}

/// A mounted system and how to take it down again (in Drop, so a failed
/// or interrupted run cleans up too).
struct Mounted {
    dir: PathBuf,
    teardown: Teardown,
}

enum Teardown {
    /// `SCRIPT down STATE` with a time limit.
    Script {
        script: PathBuf,
        state: PathBuf,
        log: PathBuf,
    },
    /// A FUSE daemon we run in the foreground (plus, for b3, its cluster).
    Process {
        child: Child,
        servers: Option<Servers>,
    },
}

impl Drop for Mounted {
    fn drop(&mut self) {
        match &mut self.teardown {
            Teardown::Script { script, state, log } => {
                let mut cmd = Command::new(script);
                cmd.arg("down").arg(&*state);
                // Generous: removing a state dir with a few hundred thousand
                // brick files takes minutes on a loaded disk.
                if let Err(e) = run_bounded(&mut cmd, Duration::from_secs(900), log, true) {
                    eprintln!("fs-bench: tearing down {}: {e:#}", state.display());
                }
            }
            Teardown::Process { child, servers } => {
                // SIGTERM = clean unmount for both store and bindfs.
                unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
                let start = Instant::now();
                while start.elapsed() < Duration::from_secs(15) {
                    if let Ok(Some(_)) = child.try_wait() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                let _ = child.kill();
                let _ = child.wait();
                if is_mounted(&self.dir) {
                    let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
                }
                servers.take();
            }
        }
    }
}

/// The 3 `store server` processes, killed on drop.
struct Servers(Vec<Child>);

impl Drop for Servers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
        for c in &mut self.0 {
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `cmd` in a process group of its own with stdout/stderr in
/// `log`(.out/.err); kills the group after `limit` or on Ctrl-C. Returns
/// stdout. `teardown` commands still run after Ctrl-C.
fn run_bounded(
    cmd: &mut Command,
    limit: Duration,
    log: &Path,
    teardown: bool,
) -> anyhow::Result<String> {
    let out_path = log.with_extension("out");
    let err_path = log.with_extension("err");
    let out = std::fs::File::create(&out_path)?;
    let err = std::fs::File::create(&err_path)?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        let interrupted = !teardown && STOP.load(Ordering::SeqCst);
        if interrupted || start.elapsed() > limit {
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            if interrupted {
                bail!("interrupted");
            }
            bail!(
                "{cmd:?} took longer than {} s (killed); log in {}",
                limit.as_secs(),
                err_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    if !status.success() {
        let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
        let tail: Vec<&str> = stderr.lines().rev().take(6).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!("{cmd:?} failed ({status}): {}", tail.join(" | "));
    }
    Ok(stdout)
}

fn is_mounted(dir: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = dir.to_string_lossy();
    info.lines()
        .any(|l| l.split(' ').nth(4).is_some_and(|m| m == want))
}

fn wait_mounted(dir: &Path, child: &mut Child, what: &str, log: &Path) -> anyhow::Result<()> {
    let start = Instant::now();
    while !is_mounted(dir) {
        stopped()?;
        if let Some(s) = child.try_wait()? {
            bail!(
                "{what} exited ({s}) before mounting; log in {}",
                log.display()
            );
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!(
                "{what} did not mount {} within 60 s; log in {}",
                dir.display(),
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

// ---------------------------------------------------------------- systems

/// `GET path` on an admin endpoint; the body when 200.
fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

/// A loopback /24 of our own (127.x.y.0), checked free by binding.
fn free_loopback_base() -> anyhow::Result<[u8; 3]> {
    let mut seed = std::process::id() ^ Instant::now().elapsed().subsec_nanos();
    for _ in 0..200 {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
        let base = [
            127,
            100 + ((seed >> 8) % 100) as u8,
            ((seed >> 16) % 250) as u8 + 1,
        ];
        let ip = Ipv4Addr::new(base[0], base[1], base[2], 1);
        if std::net::UdpSocket::bind((ip, 7400)).is_ok()
            && std::net::TcpListener::bind((ip, 7401)).is_ok()
        {
            return Ok(base);
        }
    }
    bail!("no free loopback /24 for the store cluster")
}

fn start_store_cluster(ctx: &Ctx, base: &Path) -> anyhow::Result<(Servers, PathBuf)> {
    let b = free_loopback_base()?;
    let ip = |i: usize| Ipv4Addr::new(b[0], b[1], b[2], i as u8 + 1);
    let dir = |i: usize| base.join(format!("node{i}"));
    let quiet = |args: &[&str], what: &str| -> anyhow::Result<String> {
        let mut c = Command::new(&ctx.store_bin);
        c.args(args);
        run_bounded(&mut c, Duration::from_secs(30), &ctx.logs.join(what), false)
    };
    let d0 = dir(0).display().to_string();
    quiet(&["init", "--data-dir", &d0], "store-init")?;
    let token = quiet(&["join-token", "--data-dir", &d0], "store-join-token")?
        .trim()
        .to_string();
    let mut servers = Servers(Vec::new());
    let admins: Vec<SocketAddr> = (0..3).map(|i| SocketAddr::from((ip(i), 7401))).collect();
    for i in 0..3 {
        let log = std::fs::File::create(ctx.logs.join(format!("store-node{i}.log")))?;
        let mut cmd = Command::new(&ctx.store_bin);
        cmd.arg("server")
            .arg("--data-dir")
            .arg(dir(i))
            .args(["--listen", &format!("{}:7400", ip(i))])
            .args(["--admin-addr", &admins[i].to_string()])
            .args(["--failure-domain", &format!("host{i}")])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        if i > 0 {
            cmd.args(["--join", &token, "--peers", &format!("{}:7400", ip(0))]);
        }
        servers
            .0
            .push(cmd.spawn().context("starting store server")?);
        if i == 0 {
            let start = Instant::now();
            while http_get(admins[0], "/health").is_none() {
                stopped()?;
                if start.elapsed() > Duration::from_secs(30) {
                    bail!(
                        "store node 0 not healthy within 30 s; see {}",
                        ctx.logs.display()
                    );
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    let start = Instant::now();
    loop {
        stopped()?;
        let ready = admins.iter().all(|a| {
            http_get(*a, "/v1/status")
                .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
                .is_some_and(|s| s["nodes_up"] == 3 && s["quorum"] == true)
        });
        if ready {
            break;
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!(
                "store cluster not up within 60 s; see {}",
                ctx.logs.display()
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    Ok((servers, dir(0)))
}

/// Mounts our filesystem; returns the mount and the column label.
fn setup_b3(ctx: &Ctx, notes: &mut Vec<String>) -> anyhow::Result<(Mounted, String)> {
    let base = ctx.root.join("b3");
    let mnt = ctx.root.join("mnt-b3");
    std::fs::create_dir_all(&mnt)?;
    let help = Command::new(&ctx.store_bin)
        .args(["mount", "--help"])
        .output()
        .context("running store mount --help")?;
    let has_cluster = String::from_utf8_lossy(&help.stdout).contains("cluster:");
    let want = std::env::var("FS_BENCH_STORE_BACKEND").unwrap_or_else(|_| "cluster".into());
    let (servers, spec, label) = match want.as_str() {
        "cluster" if has_cluster => {
            let (servers, dir0) = start_store_cluster(ctx, &base)?;
            (
                Some(servers),
                format!("cluster:{}", dir0.display()),
                "b3".to_string(),
            )
        }
        "cluster" | "local" => {
            if want == "cluster" {
                notes.push(
                    "b3: this `store` binary has no cluster backend (`store mount --help` names no cluster:); \
                     measured the LOCAL backend instead (one node, one copy, no network) — not the 3-node size-3 setup"
                        .into(),
                );
            } else {
                notes.push(
                    "b3: FS_BENCH_STORE_BACKEND=local — one node, one copy, no network".into(),
                );
            }
            (
                None,
                format!("local:{}", base.join("local").display()),
                "b3-LOCAL".to_string(),
            )
        }
        other => bail!("FS_BENCH_STORE_BACKEND={other:?}: use cluster or local"),
    };
    let log_path = ctx.logs.join("store-mount.log");
    let log = std::fs::File::create(&log_path)?;
    let mut cmd = Command::new(&ctx.store_bin);
    cmd.arg("mount").arg(&mnt).args(["--backend", &spec]);
    if let Ok(extra) = std::env::var("FS_BENCH_STORE_MOUNT_ARGS") {
        cmd.args(extra.split_whitespace());
        notes.push(format!("b3: store mount {extra}"));
    }
    cmd.env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0);
    let child = cmd.spawn().context("starting store mount")?;
    let mut m = Mounted {
        dir: mnt.clone(),
        teardown: Teardown::Process { child, servers },
    };
    if let Teardown::Process { child, .. } = &mut m.teardown {
        wait_mounted(&mnt, child, "store mount", &log_path)?;
    }
    notes.push(format!("b3: store mount --backend {spec}"));
    Ok((m, label))
}

fn setup_bindfs(ctx: &Ctx, notes: &mut Vec<String>) -> anyhow::Result<Mounted> {
    let src = ctx.root.join("bindfs-src");
    let mnt = ctx.root.join("mnt-bindfs");
    std::fs::create_dir_all(&src)?;
    std::fs::create_dir_all(&mnt)?;
    let log_path = ctx.logs.join("bindfs.log");
    let log = std::fs::File::create(&log_path)?;
    let child = Command::new("bindfs")
        .args(["-f", "--multithreaded"])
        .arg(&src)
        .arg(&mnt)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting bindfs (Debian package bindfs)")?;
    let mut m = Mounted {
        dir: mnt.clone(),
        teardown: Teardown::Process {
            child,
            servers: None,
        },
    };
    if let Teardown::Process { child, .. } = &mut m.teardown {
        wait_mounted(&mnt, child, "bindfs", &log_path)?;
    }
    notes.push(format!(
        "bindfs: --multithreaded over {} (same disk as everything else)",
        src.display()
    ));
    Ok(m)
}

fn setup_script(ctx: &Ctx, script: &str, name: &str, limit: Duration) -> anyhow::Result<Mounted> {
    let script = ctx.scripts.join(script);
    let state = ctx.root.join(name);
    let mnt = ctx.root.join(format!("mnt-{name}"));
    let m = Mounted {
        dir: mnt.clone(),
        teardown: Teardown::Script {
            script: script.clone(),
            state: state.clone(),
            log: ctx.logs.join(format!("{name}-down")),
        },
    };
    let mut cmd = Command::new(&script);
    cmd.arg("up").arg(&state).arg(&mnt);
    run_bounded(&mut cmd, limit, &ctx.logs.join(format!("{name}-up")), false)?;
    if !is_mounted(&mnt) {
        bail!(
            "{} up returned but {} is not mounted",
            script.display(),
            mnt.display()
        );
    }
    Ok(m)
}

// -------------------------------------------------------------- workloads

/// Runs one fio job; returns (bytes/s, IOPS) of its read or write side.
fn fio(ctx: &Ctx, dir: &Path, tag: &str, args: &[String]) -> anyhow::Result<(f64, f64)> {
    let mut cmd = Command::new("fio");
    cmd.current_dir(dir)
        .arg(format!("--name={tag}"))
        .arg("--output-format=json")
        .args(args);
    let limit = Duration::from_secs(ctx.runtime + 240);
    let out = run_bounded(&mut cmd, limit, &ctx.logs.join(format!("fio-{tag}")), false)?;
    // fio may print warnings before the JSON.
    let json = out.find('{').map(|i| &out[i..]).unwrap_or("");
    let v: serde_json::Value = serde_json::from_str(json).context("fio JSON output")?;
    let job = &v["jobs"][0];
    if job["error"].as_i64().unwrap_or(0) != 0 {
        bail!("fio job {tag}: error {}", job["error"]);
    }
    let side = if args.iter().any(|a| a.contains("read")) {
        "read"
    } else {
        "write"
    };
    let bw = job[side]["bw_bytes"].as_f64().context("fio bw_bytes")?;
    let iops = job[side]["iops"].as_f64().context("fio iops")?;
    if bw == 0.0 {
        bail!("fio job {tag}: no I/O done");
    }
    Ok((bw, iops))
}

type Results = BTreeMap<&'static str, Result<f64, String>>;

fn run_fio(ctx: &Ctx, name: &str, dir: &Path, res: &mut Results, notes: &mut Vec<String>) {
    let seq = [
        format!("--filename={}", dir.join("fio-seq").display()),
        "--bs=1M".into(),
        format!("--size={}M", ctx.seq_mb),
        "--ioengine=psync".into(),
        "--runtime=120".into(),
    ];
    let mut w: Vec<String> = seq.to_vec();
    w.extend(["--rw=write".into(), "--end_fsync=1".into()]);
    res.insert(
        "seq-write",
        fio(ctx, dir, &format!("{name}-seq-write"), &w)
            .map(|r| r.0 / MIB)
            .map_err(|e| format!("{e:#}")),
    );
    let mut r: Vec<String> = seq.to_vec();
    r.extend(["--rw=read".into(), "--invalidate=1".into()]);
    res.insert(
        "seq-read",
        fio(ctx, dir, &format!("{name}-seq-read"), &r)
            .map(|r| r.0 / MIB)
            .map_err(|e| format!("{e:#}")),
    );
    for (id, rw, qd) in [
        ("randread-1", "randread", 1),
        ("randread-16", "randread", 16),
        ("randwrite-1", "randwrite", 1),
        ("randwrite-16", "randwrite", 16),
    ] {
        if stopped().is_err() {
            return;
        }
        let base = vec![
            format!("--filename={}", dir.join("fio-rand").display()),
            format!("--rw={rw}"),
            "--bs=4k".into(),
            format!("--size={}M", ctx.rand_mb),
            format!("--runtime={}", ctx.runtime),
            "--time_based".into(),
            "--ramp_time=1".into(),
            format!("--iodepth={qd}"),
        ];
        let mut direct = base.clone();
        direct.extend(["--direct=1".into(), "--ioengine=libaio".into()]);
        let tag = format!("{name}-{id}");
        let r = match fio(ctx, dir, &tag, &direct) {
            Ok(r) => Ok(r),
            Err(e) if !STOP.load(Ordering::SeqCst) => {
                // Some filesystems refuse O_DIRECT: measure buffered and say so.
                notes.push(format!(
                    "{name}: {id} with O_DIRECT failed ({e:#}); measured buffered (psync)"
                ));
                let mut buffered = base;
                buffered.extend(["--direct=0".into(), "--ioengine=psync".into()]);
                fio(ctx, dir, &format!("{tag}-buffered"), &buffered)
            }
            Err(e) => Err(e),
        };
        res.insert(id, r.map(|r| r.1).map_err(|e| format!("{e:#}")));
    }
}

/// create / stat / delete of `files` 1 KiB files in one directory; each
/// phase bounded (a system too slow reports its rate over what it did).
fn run_small_files(ctx: &Ctx, name: &str, dir: &Path, res: &mut Results, notes: &mut Vec<String>) {
    let d = dir.join("small");
    if let Err(e) = std::fs::create_dir_all(&d) {
        for id in ["create", "stat", "delete"] {
            res.insert(id, Err(format!("mkdir {}: {e}", d.display())));
        }
        return;
    }
    let limit = Duration::from_secs(240);
    let body = [0x5au8; 1024];
    let path = |i: u64| d.join(format!("f{i:05}"));
    let mut phase = |id: &'static str, n: u64, op: &dyn Fn(u64) -> std::io::Result<()>| -> u64 {
        let start = Instant::now();
        let mut done = 0;
        while done < n {
            if STOP.load(Ordering::SeqCst) {
                res.insert(id, Err("interrupted".into()));
                return done;
            }
            if let Err(e) = op(done) {
                res.insert(id, Err(format!("{id} #{done}: {e}")));
                return done;
            }
            done += 1;
            if start.elapsed() > limit {
                notes.push(format!(
                    "{name}: {id} stopped after {} s at {done}/{n} files; rate over those",
                    limit.as_secs()
                ));
                break;
            }
        }
        res.insert(id, Ok(done as f64 / start.elapsed().as_secs_f64()));
        done
    };
    let created = phase("create", ctx.files, &|i| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path(i))?;
        f.write_all(&body)
    });
    phase("stat", created, &|i| {
        let m = std::fs::metadata(path(i))?;
        if m.len() != 1024 {
            return Err(std::io::Error::other(format!(
                "size {} instead of 1024",
                m.len()
            )));
        }
        Ok(())
    });
    phase("delete", created, &|i| std::fs::remove_file(path(i)));
}

fn count_entries(dir: &Path) -> std::io::Result<usize> {
    let mut n = 0;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        n += 1;
        if e.file_type()?.is_dir() {
            n += count_entries(&e.path())?;
        }
    }
    Ok(n)
}

/// Median seconds over `reps` runs of `step(i)`.
fn timed_reps(reps: u64, mut step: impl FnMut(u64) -> anyhow::Result<()>) -> anyhow::Result<f64> {
    let mut times = Vec::new();
    for i in 0..reps {
        stopped()?;
        let start = Instant::now();
        step(i)?;
        times.push(start.elapsed().as_secs_f64());
    }
    median(&times).context("no runs")
}

fn run_git_tar(ctx: &Ctx, name: &str, dir: &Path, res: &mut Results) {
    let clone = timed_reps(ctx.reps, |i| {
        let dest = dir.join(format!("clone{i}"));
        let mut c = Command::new("git");
        c.args(["clone", "-q", "--no-local", "--no-hardlinks"])
            .arg(&ctx.git_src)
            .arg(&dest)
            .env("GIT_CONFIG_NOSYSTEM", "1");
        run_bounded(
            &mut c,
            Duration::from_secs(300),
            &ctx.logs.join(format!("{name}-clone{i}")),
            false,
        )?;
        Ok(())
    })
    .and_then(|t| {
        // The clone must be a sound repository (not timed).
        let mut c = Command::new("git");
        c.arg("-C")
            .arg(dir.join("clone0"))
            .args(["fsck", "--no-progress", "--full"]);
        run_bounded(
            &mut c,
            Duration::from_secs(300),
            &ctx.logs.join(format!("{name}-fsck")),
            false,
        )?;
        Ok(t)
    });
    res.insert("git-clone", clone.map_err(|e| format!("{e:#}")));
    let tar = timed_reps(ctx.reps, |i| {
        let dest = dir.join(format!("tar{i}"));
        std::fs::create_dir_all(&dest)?;
        let mut c = Command::new("tar");
        c.arg("-xf").arg(&ctx.tarball).arg("-C").arg(&dest);
        run_bounded(
            &mut c,
            Duration::from_secs(600),
            &ctx.logs.join(format!("{name}-tar{i}")),
            false,
        )?;
        let n = count_entries(&dest)?;
        if n != ctx.tar_entries {
            bail!(
                "tar x left {n} entries, the tarball has {}",
                ctx.tar_entries
            );
        }
        Ok(())
    });
    res.insert("tar-x", tar.map_err(|e| format!("{e:#}")));
}

fn measure(ctx: &Ctx, name: &str, dir: &Path, notes: &mut Vec<String>) -> Results {
    let mut res = Results::new();
    eprintln!("fs-bench: {name}: fio");
    run_fio(ctx, name, dir, &mut res, notes);
    if stopped().is_ok() {
        eprintln!("fs-bench: {name}: small files");
        run_small_files(ctx, name, dir, &mut res, notes);
    }
    if stopped().is_ok() {
        eprintln!("fs-bench: {name}: git clone, tar x");
        run_git_tar(ctx, name, dir, &mut res);
    }
    res
}

// ------------------------------------------------------------------- main

/// The bench's temp dir. Before it is removed, anything still mounted
/// under it (a teardown that failed) is lazily unmounted, so removal never
/// walks into a live filesystem.
struct Workspace(tempfile::TempDir);

impl Drop for Workspace {
    fn drop(&mut self) {
        let root = self.0.path().to_string_lossy().to_string();
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for l in info.lines() {
            if let Some(m) = l.split(' ').nth(4) {
                if m.starts_with(&root) {
                    eprintln!("fs-bench: {m} still mounted after teardown; unmounting (lazy)");
                    let _ = Command::new("umount").arg("-l").arg(m).status();
                }
            }
        }
    }
}

fn prepare(root: &Path) -> anyhow::Result<Ctx> {
    let logs = root.join("logs");
    std::fs::create_dir_all(&logs)?;
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let scripts = std::env::var_os("FS_BENCH_SCRIPTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join("benches/fs"));
    let sibling = std::env::current_exe()?.with_file_name("store");
    let store_bin = if let Some(b) = std::env::var_os("FS_BENCH_STORE_BIN") {
        PathBuf::from(b)
    } else if sibling.is_file() {
        sibling
    } else {
        b3_tests::bins::bin("store")?
    };
    // A bare copy of this repository: the clone source (local, no network).
    let git_src = root.join("src.git");
    let mut c = Command::new("git");
    c.args(["clone", "-q", "--bare", "--no-local"])
        .arg(&repo)
        .arg(&git_src);
    run_bounded(
        &mut c,
        Duration::from_secs(120),
        &logs.join("git-bare"),
        false,
    )
    .context("making the bare clone of this repository (is it a git checkout?)")?;
    // A tarball of a real tree, uncompressed so tar x measures the filesystem.
    let tree =
        PathBuf::from(std::env::var("FS_BENCH_TREE").unwrap_or_else(|_| "/usr/share/doc".into()));
    let tarball = root.join("tree.tar");
    let parent = tree
        .parent()
        .context("FS_BENCH_TREE has no parent directory")?;
    let leaf = tree.file_name().context("FS_BENCH_TREE has no name")?;
    let mut c = Command::new("tar");
    c.arg("-cf").arg(&tarball).arg("-C").arg(parent).arg(leaf);
    run_bounded(&mut c, Duration::from_secs(300), &logs.join("tar-c"), false)
        .with_context(|| format!("making a tarball of {}", tree.display()))?;
    let mut c = Command::new("tar");
    c.arg("-tf").arg(&tarball);
    let listing = run_bounded(&mut c, Duration::from_secs(120), &logs.join("tar-t"), false)?;
    let tar_entries = listing.lines().filter(|l| !l.is_empty()).count();
    Ok(Ctx {
        root: root.to_path_buf(),
        logs,
        scripts,
        store_bin,
        git_src,
        tarball,
        tar_entries,
        seq_mb: env_num("FS_BENCH_SEQ_MB", 512),
        rand_mb: env_num("FS_BENCH_RAND_MB", 256),
        runtime: env_num("FS_BENCH_RUNTIME", 10),
        files: env_num("FS_BENCH_FILES", 10_000),
        reps: env_num("FS_BENCH_REPS", 3).max(1),
    })
}

fn main() -> anyhow::Result<()> {
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let base = PathBuf::from(std::env::var("FS_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into()));
    std::fs::create_dir_all(&base)?;
    let tmp = Workspace(
        tempfile::Builder::new()
            .prefix("fs-bench")
            .tempdir_in(&base)?,
    );
    let keep_logs = tmp.0.path().join("logs");
    let ctx = prepare(tmp.0.path())?;
    let systems: Vec<String> = std::env::var("FS_BENCH_SYSTEMS")
        .unwrap_or_else(|_| "b3,glusterfs,cephfs,bindfs".into())
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    for s in &systems {
        if !["b3", "glusterfs", "cephfs", "bindfs"].contains(&s.as_str()) {
            bail!("FS_BENCH_SYSTEMS: unknown system {s:?}; use b3,glusterfs,cephfs,bindfs");
        }
    }
    let mut notes = Vec::new();
    let mut results: BTreeMap<String, Result<Results, String>> = BTreeMap::new();
    let mut b3_label = "b3".to_string();
    for name in &systems {
        if stopped().is_err() {
            break;
        }
        eprintln!("fs-bench: setting up {name}");
        let started = Instant::now();
        let mounted = match name.as_str() {
            "b3" => setup_b3(&ctx, &mut notes).map(|(m, label)| {
                b3_label = label;
                m
            }),
            "glusterfs" => setup_script(&ctx, "gluster.sh", "glusterfs", Duration::from_secs(180)),
            "cephfs" => setup_script(&ctx, "ceph.sh", "cephfs", Duration::from_secs(420)),
            "bindfs" => setup_bindfs(&ctx, &mut notes),
            _ => unreachable!("checked above"),
        };
        let r = match mounted {
            Ok(m) => {
                eprintln!(
                    "fs-bench: {name} mounted in {:.1} s",
                    started.elapsed().as_secs_f64()
                );
                let r = measure(&ctx, name, &m.dir, &mut notes);
                eprintln!("fs-bench: tearing down {name}");
                drop(m);
                Ok(r)
            }
            Err(e) => {
                let msg = format!("{e:#}");
                eprintln!("fs-bench: {name} could not be set up: {msg}");
                Err(msg)
            }
        };
        results.insert(name.clone(), r);
    }

    let refs = ["glusterfs", "cephfs", "bindfs"];
    let value = |sys: &str, id: &str| -> Option<f64> {
        results
            .get(sys)?
            .as_ref()
            .ok()?
            .get(id)?
            .as_ref()
            .ok()
            .copied()
    };
    let rows: Vec<MatrixRow> = WORKLOADS
        .iter()
        .map(|w| MatrixRow {
            workload: w.label.into(),
            unit: w.unit.into(),
            better: w.better,
            ours: value("b3", w.id),
            references: refs.iter().map(|r| value(r, w.id)).collect(),
            targets: vec![Some(2.0), Some(2.0), (w.id == "seq-read").then_some(0.5)],
        })
        .collect();
    print!(
        "{}",
        render_matrix(
            &format!(
                "/data filesystem: {b3_label} vs GlusterFS replica 3 (FUSE) vs CephFS size 3 (ceph-fuse) vs bindfs (FUSE ceiling)\n\
                 fio {} MiB seq / {} MiB rand file, {} s per rand job, {} small files, median of {} clone/tar runs",
                ctx.seq_mb, ctx.rand_mb, ctx.runtime, ctx.files, ctx.reps
            ),
            &b3_label,
            &refs,
            &rows
        )
    );
    println!(
        "tar x: {} entries from {}; git clone: bare copy of this repository",
        ctx.tar_entries,
        std::env::var("FS_BENCH_TREE").unwrap_or_else(|_| "/usr/share/doc".into())
    );
    for sys in ["b3", "glusterfs", "cephfs", "bindfs"] {
        if !results.contains_key(sys) {
            println!("{sys}: not run (FS_BENCH_SYSTEMS)");
        }
    }
    for (sys, r) in &results {
        match r {
            Err(e) => println!("{sys}: n/a ({e})"),
            Ok(res) => {
                for (id, v) in res {
                    if let Err(e) = v {
                        println!("{sys}: {id} n/a ({e})");
                    }
                }
            }
        }
    }
    for n in &notes {
        println!("note: {n}");
    }
    if std::env::var_os("FS_BENCH_KEEP_LOGS").is_some() {
        let dest = base.join(format!("fs-bench-logs-{}", std::process::id()));
        let _ = Command::new("cp")
            .arg("-a")
            .arg(&keep_logs)
            .arg(&dest)
            .status();
        println!("logs kept in {}", dest.display());
    }
    stopped()
}
