//! `store` object throughput: a 3-node cluster on loopback (size 3,
//! min_size 2), PUT and GET of 4 MiB objects (MiB/s) and of 4 KiB objects
//! (ops/s), next to the same load written straight to the local filesystem
//! (write + fsync, then read back) in the same directory tree.
//!
//! Three copies on one disk means the physical bar for PUT is 1/3 of the
//! local write bandwidth (target ratio 0.33).
//!
//! Then the same sizes against Ceph: a minimal Pacific cluster (1 mon,
//! 1 mgr, 3 bluestore OSDs on files, pool size 3) set up by
//! `benches/fs/ceph.sh` and measured with `rados bench` (write, then seq
//! read, same number of concurrent ops as our clients). If Ceph cannot be
//! set up the second table says n/a and why.
//!
//! Knobs: `STORE_BENCH_DIR` (where data goes; default a temp dir under
//! /var/tmp), `STORE_BENCH_BIG` (4 MiB objects, default 48),
//! `STORE_BENCH_SMALL` (4 KiB objects, default 1500), `STORE_BENCH_CLIENTS`
//! (concurrent clients, default 4), `STORE_BENCH_CEPH=0` (skip Ceph),
//! `STORE_BENCH_RADOS_SECS` (seconds per `rados bench` run, default 10).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use b3_benches::{render, Better, Row};

const MIB: f64 = 1024.0 * 1024.0;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Servers {
    children: Vec<Child>,
}

impl Drop for Servers {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A keep-alive HTTP/1.1 connection to one admin endpoint.
struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    fn open(addr: SocketAddr) -> anyhow::Result<Conn> {
        let s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        Ok(Conn {
            reader: BufReader::new(s.try_clone()?),
            writer: s,
        })
    }

    fn request(&mut self, method: &str, path: &str, body: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        self.writer.write_all(head.as_bytes())?;
        self.writer.write_all(body)?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let code: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .with_context(|| format!("bad status line {line:?}"))?;
        let mut len = 0usize;
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut out = vec![0u8; len];
        self.reader.read_exact(&mut out)?;
        Ok((code, out))
    }
}

fn store(bin: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(bin).args(args).output()?;
    if !out.status.success() {
        bail!("store {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn start_cluster(bin: &Path, base: &Path) -> anyhow::Result<(Servers, Vec<SocketAddr>)> {
    let ips = ["127.0.91.1", "127.0.91.2", "127.0.91.3"];
    let dir = |i: usize| base.join(format!("node{i}"));
    store(bin, &["init", "--data-dir", &dir(0).display().to_string()])?;
    let token = store(
        bin,
        &["join-token", "--data-dir", &dir(0).display().to_string()],
    )?;
    let mut servers = Servers {
        children: Vec::new(),
    };
    let mut admins = Vec::new();
    for (i, ip) in ips.iter().enumerate() {
        let log = std::fs::File::create(base.join(format!("node{i}.log")))?;
        let mut cmd = Command::new(bin);
        cmd.args(["server", "--data-dir"])
            .arg(dir(i))
            .args(["--listen", &format!("{ip}:7400")])
            .args(["--admin-addr", &format!("{ip}:7401")])
            .args(["--failure-domain", &format!("host{i}")])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log);
        if i > 0 {
            cmd.args(["--join", &token, "--peers", &format!("{}:7400", ips[0])]);
        }
        servers
            .children
            .push(cmd.spawn().context("starting store server")?);
        admins.push(format!("{ip}:7401").parse()?);
        if i == 0 {
            std::thread::sleep(Duration::from_secs(2));
        }
    }
    let start = Instant::now();
    loop {
        let ok = admins.iter().all(|a| {
            Conn::open(*a)
                .and_then(|mut c| c.request("GET", "/v1/status", b""))
                .ok()
                .and_then(|(code, body)| {
                    let s: serde_json::Value = serde_json::from_slice(&body).ok()?;
                    (code == 200 && s["nodes_up"] == 3 && s["pgs_clean"] == 256).then_some(())
                })
                .is_some()
        });
        if ok {
            break;
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!("cluster did not come up; see {}", base.display());
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    Ok((servers, admins))
}

/// Runs `count` operations over `clients` threads; returns seconds.
fn parallel(
    clients: usize,
    count: usize,
    op: Arc<dyn Fn(usize, usize) -> anyhow::Result<()> + Send + Sync>,
) -> anyhow::Result<f64> {
    let start = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|t| {
            let op = op.clone();
            std::thread::spawn(move || -> anyhow::Result<()> {
                let mut i = t;
                while i < count {
                    op(t, i)?;
                    i += clients;
                }
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join()
            .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
    }
    Ok(start.elapsed().as_secs_f64())
}

fn object_bench(
    admins: &[SocketAddr],
    clients: usize,
    count: usize,
    size: usize,
    name: &str,
) -> anyhow::Result<(f64, f64)> {
    let body: Arc<Vec<u8>> = Arc::new((0..size).map(|i| (i * 31 % 251) as u8).collect());
    let conns: Arc<Vec<std::sync::Mutex<Conn>>> = Arc::new(
        (0..clients)
            .map(|t| Conn::open(admins[t % admins.len()]).map(std::sync::Mutex::new))
            .collect::<anyhow::Result<_>>()?,
    );
    let (b, c, n) = (body.clone(), conns.clone(), name.to_string());
    let put = parallel(
        clients,
        count,
        Arc::new(move |t, i| {
            let mut conn = c[t].lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            let (code, resp) = conn.request("PUT", &format!("/objects/bench/{n}/{i}"), &b)?;
            if code != 200 {
                bail!("PUT {i}: {code} {}", String::from_utf8_lossy(&resp));
            }
            Ok(())
        }),
    )?;
    let (c, n) = (conns.clone(), name.to_string());
    let get = parallel(
        clients,
        count,
        Arc::new(move |t, i| {
            let mut conn = c[t].lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            let (code, resp) = conn.request("GET", &format!("/objects/bench/{n}/{i}"), b"")?;
            if code != 200 || resp.len() != size {
                bail!("GET {i}: {code}, {} bytes", resp.len());
            }
            Ok(())
        }),
    )?;
    Ok((put, get))
}

fn local_bench(
    dir: &Path,
    clients: usize,
    count: usize,
    size: usize,
) -> anyhow::Result<(f64, f64)> {
    std::fs::create_dir_all(dir)?;
    let body: Arc<Vec<u8>> = Arc::new((0..size).map(|i| (i * 31 % 251) as u8).collect());
    let d: Arc<PathBuf> = Arc::new(dir.to_path_buf());
    let (b, dd) = (body.clone(), d.clone());
    let write = parallel(
        clients,
        count,
        Arc::new(move |_, i| {
            let mut f = std::fs::File::create(dd.join(i.to_string()))?;
            f.write_all(&b)?;
            f.sync_all()?;
            Ok(())
        }),
    )?;
    let dd = d.clone();
    let read = parallel(
        clients,
        count,
        Arc::new(move |_, i| {
            let v = std::fs::read(dd.join(i.to_string()))?;
            if v.len() != size {
                bail!("short read");
            }
            Ok(())
        }),
    )?;
    Ok((write, read))
}

/// Set by SIGINT/SIGTERM during the Ceph part, so the cluster is torn down.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// The Ceph cluster of `benches/fs/ceph.sh`, torn down on drop.
struct Ceph {
    script: PathBuf,
    state: PathBuf,
}

impl Drop for Ceph {
    fn drop(&mut self) {
        let ok = Command::new("timeout")
            .args(["-k", "5", "180"])
            .arg(&self.script)
            .arg("down")
            .arg(&self.state)
            .stdin(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!(
                "store-bench: tearing down Ceph in {} failed",
                self.state.display()
            );
        }
    }
}

/// Runs `cmd` under `timeout`, returns stdout; stderr goes to `log`.
fn bounded(secs: u64, cmd: &[&str], log: &Path) -> anyhow::Result<String> {
    if STOP.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    let err = std::fs::File::create(log)?;
    let out = Command::new("timeout")
        .args(["-k", "5", &secs.to_string()])
        .args(cmd)
        .stdin(Stdio::null())
        .stderr(err)
        .output()
        .with_context(|| format!("running {}", cmd.join(" ")))?;
    if !out.status.success() {
        let e = std::fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = e.lines().rev().take(4).collect();
        bail!(
            "{} failed ({}): {}",
            cmd.join(" "),
            out.status,
            tail.join(" | ")
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A number after `label` in `rados bench` output ("Bandwidth (MB/sec):").
fn rados_field(out: &str, label: &str) -> anyhow::Result<f64> {
    out.lines()
        .find_map(|l| l.strip_prefix(label)?.trim().parse().ok())
        .with_context(|| format!("no {label:?} in rados bench output"))
}

/// PUT/GET MiB/s of 4 MiB objects and ops/s of 4 KiB objects on Ceph.
fn rados_bench(tmp: &Path, clients: usize) -> anyhow::Result<[f64; 4]> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fs/ceph.sh");
    let state = tmp.join("ceph");
    let s = state.display().to_string();
    let ceph = Ceph {
        script: script.clone(),
        state: state.clone(),
    };
    let log = |n: &str| tmp.join(format!("{n}.log"));
    bounded(
        420,
        &[&script.display().to_string(), "up", &s],
        &log("ceph-up"),
    )?;
    let conf = format!("{s}/ceph.conf");
    let secs = std::env::var("STORE_BENCH_RADOS_SECS").unwrap_or_else(|_| "10".into());
    let t = clients.to_string();
    let mut out = [0.0; 4];
    for (i, (size, name)) in [("4194304", "big"), ("4096", "small")].iter().enumerate() {
        let base = ["rados", "-c", &conf, "-p", "bench", "bench", &secs];
        let mut w: Vec<&str> = base.to_vec();
        w.extend([
            "write",
            "-b",
            size,
            "-t",
            &t,
            "--no-cleanup",
            "--run-name",
            name,
        ]);
        let wo = bounded(300, &w, &log(&format!("rados-{name}-write")))?;
        let mut r: Vec<&str> = base.to_vec();
        r.extend(["seq", "-t", &t, "--run-name", name]);
        let ro = bounded(300, &r, &log(&format!("rados-{name}-seq")))?;
        if i == 0 {
            out[0] = rados_field(&wo, "Bandwidth (MB/sec):")?;
            out[1] = rados_field(&ro, "Bandwidth (MB/sec):")?;
        } else {
            out[2] = rados_field(&wo, "Average IOPS:")?;
            out[3] = rados_field(&ro, "Average IOPS:")?;
        }
    }
    drop(ceph);
    Ok(out)
}

fn main() -> anyhow::Result<()> {
    // Next to this binary (target/release/store), else the test layout.
    let sibling = std::env::current_exe()?.with_file_name("store");
    let bin = if sibling.is_file() {
        sibling
    } else {
        b3_tests::bins::bin("store")?
    };
    let root = match std::env::var_os("STORE_BENCH_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from("/var/tmp"),
    };
    std::fs::create_dir_all(&root)?;
    let tmp = tempfile::Builder::new()
        .prefix("store-bench")
        .tempdir_in(&root)?;
    let big_n = env_usize("STORE_BENCH_BIG", 48);
    let small_n = env_usize("STORE_BENCH_SMALL", 1500);
    let clients = env_usize("STORE_BENCH_CLIENTS", 4).max(1);
    let big = 4 << 20;
    let small = 4096;

    let (lw_big, lr_big) = local_bench(&tmp.path().join("local-big"), clients, big_n, big)?;
    let (lw_small, lr_small) =
        local_bench(&tmp.path().join("local-small"), clients, small_n, small)?;

    let (servers, admins) = start_cluster(&bin, tmp.path())?;
    let (put_big, get_big) = object_bench(&admins, clients, big_n, big, "big")?;
    let (put_small, get_small) = object_bench(&admins, clients, small_n, small, "small")?;
    drop(servers);

    let mibs = |n: usize, secs: f64| n as f64 * big as f64 / MIB / secs;
    let ops = |n: usize, secs: f64| n as f64 / secs;
    let row = |w: &str, unit: &str, ours: f64, reference: f64, target: Option<f64>| Row {
        workload: w.into(),
        unit: unit.into(),
        ours,
        reference_name: "local fs".into(),
        reference: Some(reference),
        better: Better::Higher,
        target,
    };
    let rows = vec![
        row(
            "PUT 4 MiB, size 3",
            "MiB/s",
            mibs(big_n, put_big),
            mibs(big_n, lw_big),
            Some(0.33),
        ),
        row(
            "GET 4 MiB",
            "MiB/s",
            mibs(big_n, get_big),
            mibs(big_n, lr_big),
            None,
        ),
        row(
            "PUT 4 KiB, size 3",
            "ops/s",
            ops(small_n, put_small),
            ops(small_n, lw_small),
            None,
        ),
        row(
            "GET 4 KiB",
            "ops/s",
            ops(small_n, get_small),
            ops(small_n, lr_small),
            None,
        ),
    ];
    print!(
        "{}",
        render(
            &format!(
                "store: 3 nodes on loopback vs local filesystem (write+fsync / read), {clients} clients, {big_n}x4MiB, {small_n}x4KiB"
            ),
            &rows
        )
    );

    if std::env::var("STORE_BENCH_CEPH").as_deref() == Ok("0") {
        return Ok(());
    }
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let ceph = rados_bench(tmp.path(), clients);
    let why = match &ceph {
        Ok(_) => String::new(),
        Err(e) => format!("Ceph n/a: {e:#}"),
    };
    let ceph_row = |w: &str, unit: &str, ours: f64, i: usize| Row {
        workload: w.into(),
        unit: unit.into(),
        ours,
        reference_name: "rados bench".into(),
        reference: ceph.as_ref().ok().map(|c| c[i]),
        better: Better::Higher,
        target: None,
    };
    let rows = vec![
        ceph_row("PUT 4 MiB, size 3", "MiB/s", mibs(big_n, put_big), 0),
        ceph_row("GET 4 MiB", "MiB/s", mibs(big_n, get_big), 1),
        ceph_row("PUT 4 KiB, size 3", "ops/s", ops(small_n, put_small), 2),
        ceph_row("GET 4 KiB", "ops/s", ops(small_n, get_small), 3),
    ];
    print!(
        "{}",
        render(
            &format!(
                "store vs Ceph 16 RADOS (1 mon, 3 bluestore OSDs on files, pool size 3), {clients} concurrent ops, rados bench write + seq"
            ),
            &rows
        )
    );
    if !why.is_empty() {
        println!("{why}");
    }
    if STOP.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}
