//! `store` under failure: a 4-node cluster on loopback (size 3, min_size
//! 2) holding `STORE_RB_GIB` GiB (default 1) of 4 MiB objects.
//!
//! 1. Client load: `STORE_RB_CLIENTS` clients (default 2) each PUT a
//!    4 MiB object then GET another one, for `STORE_RB_WINDOW` seconds
//!    (default 10); overwrites keep the data set bounded. Its healthy
//!    throughput is measured right before each disturbed window.
//! 2. Re-replication: kill -9 one node, let it go out (`--out-after 3s`),
//!    and time until every chunk has 3 copies again, with no client load.
//!    Reported per GiB moved, next to the time one disk needs to write
//!    1 GiB (write + fsync of 4 MiB files, the same pattern).
//! 3. Client throughput during recovery: bring the node back, let it
//!    backfill, kill it again, and run the client load while the survivors
//!    re-replicate (recovery throttles itself for client I/O). Target
//!    ratio to healthy: 0.70.
//! 4. Scrub: `store scrub` of all the data, unloaded (time per GiB read),
//!    then again under the client load (client throughput ratio against a
//!    healthy window measured just before, as the machine may be shared).
//!
//! Knobs: `STORE_BENCH_DIR` (default /var/tmp), `STORE_RB_GIB`,
//! `STORE_RB_CLIENTS`, `STORE_RB_WINDOW`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use b3_benches::{render, Better, Row};

const MIB: f64 = 1024.0 * 1024.0;
const GIB: f64 = 1024.0 * MIB;
const OBJ: usize = 4 << 20;
const IPS: [&str; 4] = ["127.0.92.1", "127.0.92.2", "127.0.92.3", "127.0.92.4"];
const SERVER_FLAGS: &[&str] = &[
    "--down-after",
    "2s",
    "--out-after",
    "3s",
    "--recovery-interval",
    "5s",
];

fn env_f64(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
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

fn get_json(addr: SocketAddr, path: &str) -> Option<serde_json::Value> {
    let (code, body) = Conn::open(addr).ok()?.request("GET", path, b"").ok()?;
    (code == 200).then(|| serde_json::from_slice(&body).ok())?
}

struct Cluster {
    bin: PathBuf,
    base: PathBuf,
    token: String,
    children: Vec<Option<Child>>,
    admins: Vec<SocketAddr>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in self.children.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Cluster {
    fn store(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(&self.bin).args(args).output()?;
        if !out.status.success() {
            bail!("store {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    fn dir(&self, i: usize) -> PathBuf {
        self.base.join(format!("node{i}"))
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.base.join(format!("node{i}.log")))?;
        let ip = IPS[i];
        let mut cmd = Command::new(&self.bin);
        cmd.args(["server", "--data-dir"])
            .arg(self.dir(i))
            .args(["--listen", &format!("{ip}:7400")])
            .args(["--admin-addr", &format!("{ip}:7401")])
            .args(["--failure-domain", &format!("host{i}")])
            .args(["--weight", "10"])
            .args(SERVER_FLAGS)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log);
        if i > 0 {
            cmd.args([
                "--join",
                &self.token,
                "--peers",
                &format!("{}:7400", IPS[0]),
            ]);
        }
        self.children[i] = Some(cmd.spawn().context("starting store server")?);
        Ok(())
    }

    fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn start(bin: &Path, base: &Path) -> anyhow::Result<Cluster> {
        let mut c = Cluster {
            bin: bin.to_path_buf(),
            base: base.to_path_buf(),
            token: String::new(),
            children: (0..IPS.len()).map(|_| None).collect(),
            admins: IPS
                .iter()
                .map(|ip| format!("{ip}:7401").parse())
                .collect::<Result<_, _>>()?,
        };
        let d0 = c.dir(0).display().to_string();
        c.store(&["init", "--data-dir", &d0])?;
        c.token = c.store(&["join-token", "--data-dir", &d0])?;
        c.spawn(0)?;
        std::thread::sleep(Duration::from_secs(2));
        for i in 1..IPS.len() {
            c.spawn(i)?;
        }
        c.wait("all nodes healthy", Duration::from_secs(90), |c| {
            c.healthy()
        })?;
        Ok(c)
    }

    fn healthy(&self) -> bool {
        get_json(self.admins[0], "/v1/status").is_some_and(|s| s["health"] == "HEALTH_OK")
    }

    fn maint(&self) -> Option<serde_json::Value> {
        get_json(self.admins[0], "/v1/maint")
    }

    fn wait(
        &self,
        what: &str,
        limit: Duration,
        f: impl Fn(&Cluster) -> bool,
    ) -> anyhow::Result<Duration> {
        let start = Instant::now();
        loop {
            if f(self) {
                return Ok(start.elapsed());
            }
            if start.elapsed() > limit {
                bail!(
                    "timed out after {limit:?} waiting for {what}; logs in {}",
                    self.base.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn body(seed: usize) -> Vec<u8> {
    (0..OBJ)
        .map(|i| ((i * 31 + seed * 7) % 251) as u8)
        .collect()
}

/// Fills the cluster with `n` objects of 4 MiB using 4 writers.
fn fill(admins: &[SocketAddr], n: usize) -> anyhow::Result<()> {
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let addr = admins[t % 3];
            std::thread::spawn(move || -> anyhow::Result<()> {
                let mut conn = Conn::open(addr)?;
                let data = body(t);
                let mut i = t;
                while i < n {
                    let (code, resp) = conn.request("PUT", &format!("/objects/data/{i}"), &data)?;
                    if code != 200 {
                        bail!("PUT {i}: {code} {}", String::from_utf8_lossy(&resp));
                    }
                    i += 4;
                }
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
    }
    Ok(())
}

/// Client load for `window`: each client PUTs (overwriting one of 8 own
/// keys) then GETs a data-set object, on nodes 0-2 (never the victim).
/// Returns MiB/s moved by clients.
fn client_load(
    admins: &[SocketAddr],
    clients: usize,
    objects: usize,
    window: Duration,
) -> anyhow::Result<f64> {
    let bytes = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = (0..clients)
        .map(|t| {
            let (addr, bytes, stop) = (admins[t % 3], bytes.clone(), stop.clone());
            std::thread::spawn(move || -> anyhow::Result<()> {
                let mut conn = Conn::open(addr)?;
                let data = body(100 + t);
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let (code, resp) =
                        conn.request("PUT", &format!("/objects/load/{t}-{}", i % 8), &data)?;
                    if code != 200 {
                        bail!("load PUT: {code} {}", String::from_utf8_lossy(&resp));
                    }
                    bytes.fetch_add(OBJ as u64, Ordering::Relaxed);
                    let k = (i * 7919 + t) % objects.max(1);
                    let (code, resp) = conn.request("GET", &format!("/objects/data/{k}"), b"")?;
                    if code != 200 || resp.len() != OBJ {
                        bail!("load GET {k}: {code}, {} bytes", resp.len());
                    }
                    bytes.fetch_add(OBJ as u64, Ordering::Relaxed);
                    i += 1;
                }
                Ok(())
            })
        })
        .collect();
    let start = Instant::now();
    std::thread::sleep(window);
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().map_err(|_| anyhow::anyhow!("client panicked"))??;
    }
    Ok(bytes.load(Ordering::Relaxed) as f64 / MIB / start.elapsed().as_secs_f64())
}

/// Writes `n` 4 MiB files with fsync (one disk's ceiling for this pattern).
fn disk_ceiling(dir: &Path, n: usize) -> anyhow::Result<f64> {
    std::fs::create_dir_all(dir)?;
    let data = body(1);
    let start = Instant::now();
    for i in 0..n {
        let mut f = std::fs::File::create(dir.join(i.to_string()))?;
        f.write_all(&data)?;
        f.sync_all()?;
    }
    let secs = start.elapsed().as_secs_f64();
    std::fs::remove_dir_all(dir)?;
    Ok(n as f64 * OBJ as f64 / MIB / secs)
}

fn settled(c: &Cluster) -> bool {
    c.maint().is_some_and(|m| {
        m["pgs_recovering"] == 0
            && m["chunks_to_move"] == 0
            && m["nodes_peering"].as_array().is_some_and(|a| a.is_empty())
    })
}

fn scrub_wait(c: &Cluster) -> anyhow::Result<()> {
    let out = c.store(&[
        "scrub",
        "--server",
        &c.admins[0].to_string(),
        "--timeout",
        "30m",
    ])?;
    if !out.contains("scrub finished") {
        bail!("scrub did not finish cleanly: {out}");
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let sibling = std::env::current_exe()?.with_file_name("store");
    let bin = if sibling.is_file() {
        sibling
    } else {
        b3_tests::bins::bin("store")?
    };
    let root = std::env::var_os("STORE_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp"));
    std::fs::create_dir_all(&root)?;
    let tmp = tempfile::Builder::new()
        .prefix("store-recovery-bench")
        .tempdir_in(&root)?;
    let gib = env_f64("STORE_RB_GIB", 1.0).clamp(0.05, 16.0);
    let clients = env_f64("STORE_RB_CLIENTS", 2.0).clamp(1.0, 16.0) as usize;
    let window = Duration::from_secs_f64(env_f64("STORE_RB_WINDOW", 10.0).clamp(2.0, 120.0));
    let objects = ((gib * GIB) / OBJ as f64).round() as usize;

    eprintln!("measuring the disk: {objects} x 4 MiB with fsync");
    let disk = disk_ceiling(&tmp.path().join("disk"), objects)?;

    let mut c = Cluster::start(&bin, tmp.path())?;
    eprintln!("filling {gib} GiB");
    fill(&c.admins, objects)?;
    c.wait("clean after fill", Duration::from_secs(120), |c| {
        c.healthy() && settled(c)
    })?;

    // Re-replication without client load.
    let moved_before = c
        .maint()
        .and_then(|m| m["bytes_moved"].as_u64())
        .unwrap_or(0);
    c.kill9(3);
    c.wait("recovery to start", Duration::from_secs(60), |c| {
        c.maint()
            .is_some_and(|m| m["chunks_to_move"].as_u64().unwrap_or(0) > 0)
    })?;
    let t0 = Instant::now();
    c.wait("re-replication", Duration::from_secs(1800), settled)?;
    let rerep_secs = t0.elapsed().as_secs_f64();
    let moved = c
        .maint()
        .and_then(|m| m["bytes_moved"].as_u64())
        .unwrap_or(0)
        - moved_before;
    let rerep_rate = moved as f64 / MIB / rerep_secs;
    eprintln!(
        "re-replicated {:.0} MiB in {rerep_secs:.1}s",
        moved as f64 / MIB
    );

    // Back in, backfill, then lose it again under client load.
    c.spawn(3)?;
    c.wait("backfill", Duration::from_secs(1800), |c| {
        c.healthy() && settled(c)
    })?;
    // Healthy reference right before the loss, so both windows see the
    // same background load on a shared machine.
    eprintln!("healthy client load before the second loss for {window:?}");
    let healthy = client_load(&c.admins, clients, objects, window)?;
    c.wait("clean after load", Duration::from_secs(120), |c| {
        c.healthy() && settled(c)
    })?;
    c.kill9(3);
    c.wait("recovery to start again", Duration::from_secs(60), |c| {
        c.maint()
            .is_some_and(|m| m["chunks_to_move"].as_u64().unwrap_or(0) > 0)
    })?;
    eprintln!("client load during recovery for {window:?}");
    let during = client_load(&c.admins, clients, objects, window)?;
    let still = c
        .maint()
        .map(|m| m["chunks_to_move"].as_u64().unwrap_or(0))
        .unwrap_or(0);
    if still == 0 {
        eprintln!(
            "note: recovery finished inside the window; the ratio includes some healthy time"
        );
    }
    c.wait(
        "re-replication under load",
        Duration::from_secs(1800),
        settled,
    )?;
    c.spawn(3)?;
    c.wait("backfill", Duration::from_secs(1800), |c| {
        c.healthy() && settled(c)
    })?;

    // Scrub: unloaded, then under client load.
    let scrubbed_bytes: u64 = get_json(c.admins[0], "/v1/df")
        .map(|d| d["raw_used"].as_u64().unwrap_or(0))
        .unwrap_or(0);
    let t0 = Instant::now();
    scrub_wait(&c)?;
    let scrub_secs = t0.elapsed().as_secs_f64();
    let per_node_gib = scrubbed_bytes as f64 / GIB / IPS.len() as f64;
    // The machine is shared: take the healthy reference again right next
    // to the scrub window so both see the same background load.
    eprintln!("healthy client load again for {window:?}");
    let healthy_again = client_load(&c.admins, clients, objects, window)?;
    let stop = Arc::new(AtomicBool::new(false));
    let scrubber = {
        let (bin, server) = (c.bin.clone(), c.admins[0].to_string());
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = Command::new(&bin)
                    .args(["scrub", "--server", &server, "--timeout", "30m"])
                    .output();
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    eprintln!("client load during scrub for {window:?}");
    let during_scrub = client_load(&c.admins, clients, objects, window)?;
    stop.store(true, Ordering::Relaxed);
    let _ = scrubber.join();

    let rows = vec![
        Row {
            workload: format!("client PUT+GET during recovery ({clients} clients)"),
            unit: "MiB/s".into(),
            ours: during,
            reference_name: "healthy".into(),
            reference: Some(healthy),
            better: Better::Higher,
            target: Some(0.70),
        },
        Row {
            workload: "re-replicate 1 GiB after a node loss".into(),
            unit: "s".into(),
            ours: rerep_secs * GIB / (moved.max(1) as f64),
            reference_name: "1 disk write".into(),
            reference: Some(1024.0 / disk),
            better: Better::Lower,
            target: None,
        },
        Row {
            workload: "re-replication rate (3 survivors)".into(),
            unit: "MiB/s".into(),
            ours: rerep_rate,
            reference_name: "1 disk write".into(),
            reference: Some(disk),
            better: Better::Higher,
            target: None,
        },
        Row {
            workload: format!("scrub 1 GiB per node ({per_node_gib:.2} GiB each, parallel)"),
            unit: "s".into(),
            ours: scrub_secs / per_node_gib.max(0.001),
            reference_name: "1 disk write".into(),
            reference: Some(1024.0 / disk),
            better: Better::Lower,
            target: None,
        },
        Row {
            workload: format!("client PUT+GET during scrub ({clients} clients)"),
            unit: "MiB/s".into(),
            ours: during_scrub,
            reference_name: "healthy".into(),
            reference: Some(healthy_again),
            better: Better::Higher,
            target: Some(0.70),
        },
    ];
    print!(
        "{}",
        render(
            &format!(
                "store recovery: 4 nodes on loopback, size 3, {gib} GiB of 4 MiB objects, default throttles (recovery 200 MiB/s per node, 5% while clients are busy; scrub 50 MiB/s, 10% while busy)"
            ),
            &rows
        )
    );
    Ok(())
}
