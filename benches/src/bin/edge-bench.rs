//! `edge` against nginx, HAProxy and Caddy as TLS-terminating reverse
//! proxies, on loopback, same backend (nginx serving static files, one
//! worker), same certificate (edge's generated wildcard), same client
//! load:
//!
//! - wrk, HTTP/1.1 keep-alive, 64 connections, 1 KiB and 100 KiB responses;
//! - h2load, HTTP/2, 64 connections × 10 streams, 1 KiB;
//! - wrk with `Connection: close`: a new TLS connection per request.
//!
//! All four speak TLS 1.3 to the clients (wrk and h2load resume sessions
//! with tickets, so the new-connection test measures TLS 1.3 resumption).
//!
//! Each proxy is pinned to CPU 0 and gets one worker (nginx
//! `worker_processes 1`, HAProxy `nbthread 1`, Caddy and edge see one CPU
//! through the affinity mask); the load generator and the backend share
//! CPU 1. Prints requests/s, p99 latency (wrk) and peak RSS per proxy, then
//! edge's ratio to the best of the others.
//!
//! Each proxy runs every test `EDGE_BENCH_ROUNDS` times (default 2),
//! interleaved with the others, and keeps its best round: the machine is
//! shared, and this keeps a burst of someone else's work from deciding.
//!
//! Knobs: `EDGE_BENCH_SECS` (seconds per run, default 5),
//! `EDGE_BENCH_ROUNDS`, `EDGE_BENCH_ONLY` (comma-separated parts: `1k`,
//! `100k`, `h2`, `close`, `routers`; default all), `EDGE_BENCH_PROXIES`
//! (comma-separated, default `edge,nginx,haproxy,caddy`; edge is always
//! run).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use b3_benches::{render, Better, Row};

struct Proc {
    child: Child,
}

/// Direct children of `pid` (nginx workers, for example).
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            // The field after the state (after the parenthesised name) is the parent pid.
            let ppid = stat
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().nth(1))
                .and_then(|x| x.parse::<u32>().ok());
            if ppid == Some(pid) {
                out.push(p);
            }
        }
    }
    out
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Workers first, so none is orphaned when the master goes.
        for c in children(self.child.id()) {
            let _ = Command::new("kill").args(["-9", &c.to_string()]).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn spawn(name: &str, cpu: &str, cmd: &[&str], dir: &Path) -> anyhow::Result<Proc> {
    let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
    let child = Command::new("taskset")
        .args(["-c", cpu])
        .args(cmd)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {name} ({})", cmd[0]))?;
    Ok(Proc { child })
}

fn wait_port(port: u16, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("{what} did not listen on {port}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Resident memory of a process and its children, in MiB.
fn rss_mib(pid: u32) -> f64 {
    let mut pids = vec![pid];
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            // Field 4 (after the parenthesised name) is the parent pid.
            let ppid = stat
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().nth(1))
                .and_then(|x| x.parse::<u32>().ok());
            if ppid == Some(pid) {
                pids.push(p);
            }
        }
    }
    pids.iter()
        .map(|p| {
            std::fs::read_to_string(format!("/proc/{p}/status"))
                .unwrap_or_default()
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        })
        .sum::<f64>()
        / 1024.0
}

/// CPU time (user + system, in clock ticks of 10 ms) used so far by a
/// process and its direct children.
fn cpu_ticks(pid: u32) -> u64 {
    let mut pids = children(pid);
    pids.push(pid);
    pids.iter()
        .map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            // utime and stime are fields 14 and 15; 12 and 13 after the name.
            let f: Vec<u64> = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            f.get(10).copied().unwrap_or(0) + f.get(11).copied().unwrap_or(0)
        })
        .sum()
}

#[derive(Debug, Default, Clone, Copy)]
struct Result1 {
    rps: f64,
    p99_ms: Option<f64>,
    rss_mib: f64,
    /// Proxy CPU time per request, in microseconds: steadier than requests/s
    /// on a shared machine, where the proxy gets whatever CPU share is left.
    cpu_us: Option<f64>,
    errors: u64,
}

fn parse_latency(s: &str) -> Option<f64> {
    let s = s.trim();
    let (num, mul) = if let Some(v) = s.strip_suffix("us") {
        (v, 0.001)
    } else if let Some(v) = s.strip_suffix("ms") {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1000.0)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|v| v * mul)
}

/// Runs a load generator while sampling the proxy's RSS.
fn load(cmd: &[String], proxy_pid: u32, secs: u64) -> anyhow::Result<(String, f64, u64)> {
    let ticks0 = cpu_ticks(proxy_pid);
    let mut child = Command::new("taskset")
        .args(["-c", "1"])
        .args(cmd)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("running {}", cmd[0]))?;
    let deadline = Instant::now() + Duration::from_secs(secs + 30);
    let mut peak: f64 = 0.0;
    loop {
        peak = peak.max(rss_mib(proxy_pid));
        if child.try_wait()?.is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{} did not finish", cmd[0]);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut out = String::new();
    if let Some(mut o) = child.stdout.take() {
        use std::io::Read;
        o.read_to_string(&mut out)?;
    }
    Ok((out, peak, cpu_ticks(proxy_pid).saturating_sub(ticks0)))
}

fn wrk(
    port: u16,
    path: &str,
    conns: u32,
    close: bool,
    pid: u32,
    secs: u64,
) -> anyhow::Result<Result1> {
    let mut cmd: Vec<String> = [
        "wrk",
        "-t",
        "2",
        "-c",
        &conns.to_string(),
        "-d",
        &format!("{secs}s"),
        "--latency",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    cmd.extend(["-H".into(), "Host: app.b3.swarm".into()]);
    if close {
        cmd.extend(["-H".into(), "Connection: close".into()]);
    }
    cmd.push(format!("https://127.0.0.1:{port}{path}"));
    let (out, rss, ticks) = load(&cmd, pid, secs)?;
    let rps = out
        .lines()
        .find(|l| l.starts_with("Requests/sec:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("wrk output without Requests/sec:\n{out}"))?;
    let p99 = out
        .lines()
        .find(|l| l.trim_start().starts_with("99%"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(parse_latency);
    let errors = out
        .lines()
        .find(|l| l.contains("Non-2xx or 3xx responses:"))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    // "  123456 requests in 5.00s, 150.00MB read"
    let done: Option<f64> = out
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok());
    Ok(Result1 {
        rps,
        p99_ms: p99,
        rss_mib: rss,
        cpu_us: done
            .filter(|d| *d > 0.0)
            .map(|d| ticks as f64 * 10_000.0 / d),
        errors,
    })
}

fn h2load(port: u16, path: &str, pid: u32, secs: u64) -> anyhow::Result<Result1> {
    let cmd: Vec<String> = [
        "h2load",
        "-c",
        "64",
        "-m",
        "10",
        "-t",
        "2",
        "-D",
        &secs.to_string(),
        "--warm-up-time",
        "1",
        &format!("https://127.0.0.1:{port}{path}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (out, rss, ticks) = load(&cmd, pid, secs + 1)?;
    // "finished in 5.00s, 12345.67 req/s, 13.21MB/s"
    let rps = out
        .lines()
        .find(|l| l.starts_with("finished in"))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("h2load output without req/s:\n{out}"))?;
    // "requests: 100 total, 100 started, 100 done, 100 succeeded, 0 failed, 0 errored, 0 timeout"
    let errors = out
        .lines()
        .find(|l| l.starts_with("requests:"))
        .and_then(|l| l.split(", ").find(|p| p.ends_with(" failed")))
        .and_then(|p| p.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // "time for request:  1.2ms  30ms  5.1ms  2.0ms  80%" → mean is the third value.
    let mean = out
        .lines()
        .find(|l| l.trim_start().starts_with("time for request:"))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|r| r.split_whitespace().nth(2))
        .and_then(parse_latency);
    // The CPU time also covers the 1 s warm-up these requests exclude, so
    // h2 figures are ~20% high, for every proxy alike.
    let done: Option<f64> = out
        .lines()
        .find(|l| l.starts_with("requests:"))
        .and_then(|l| l.split(", ").find(|p| p.ends_with(" done")))
        .and_then(|p| p.split_whitespace().next())
        .and_then(|v| v.parse().ok());
    Ok(Result1 {
        rps,
        p99_ms: mean,
        rss_mib: rss,
        cpu_us: done
            .filter(|d| *d > 0.0)
            .map(|d| ticks as f64 * 10_000.0 / d),
        errors,
    })
}

struct Setup {
    dir: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    combined: PathBuf,
    backend_port: u16,
    edge_bin: PathBuf,
}

fn write(p: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))
}

/// edge's configuration for proxy variant `name`: `edge` routes everything
/// to the backend with one host-less router; `edge-1r` with one
/// ``Host(`app.b3.swarm`)`` router; `edge-1000r` with that router among
/// 1,000 (100 services × 10 routers, as Swarm labels would make them).
fn edge_config(name: &str, backend: u16) -> String {
    let service = format!(
        "  services:\n    app: {{ loadBalancer: {{ servers: [ {{ url: \"http://127.0.0.1:{backend}\" }} ] }} }}\n"
    );
    let mut routers = String::from("http:\n  routers:\n");
    match name {
        "edge" => {
            routers.push_str("    app: { rule: \"PathPrefix(`/`)\", service: app, tls: {} }\n")
        }
        _ => {
            routers
                .push_str("    app: { rule: \"Host(`app.b3.swarm`)\", service: app, tls: {} }\n");
            if name == "edge-1000r" {
                for svc in 0..100 {
                    for r in 0..10 {
                        if svc == 0 && r == 0 {
                            continue; // `app` is the 1,000th
                        }
                        routers.push_str(&format!(
                            "    s{svc}-r{r}: {{ rule: \"Host(`s{svc}-r{r}.b3.swarm`) && PathPrefix(`/r{r}`)\", service: app, tls: {{}} }}\n"
                        ));
                    }
                }
            }
        }
    }
    routers + &service
}

fn start_proxy(name: &str, s: &Setup) -> anyhow::Result<(Proc, u16)> {
    let port = free_port()?;
    let d = s.dir.join(name);
    std::fs::create_dir_all(&d)?;
    let (cert, key, b) = (s.cert.display(), s.key.display(), s.backend_port);
    let proc = match name {
        n if n.starts_with("edge") => {
            let cfg = d.join("edge.yml");
            write(&cfg, &edge_config(n, b))?;
            let admin = free_port()?;
            let web = free_port()?;
            spawn(
                name,
                "0",
                &[
                    &s.edge_bin.display().to_string(),
                    "--admin-addr",
                    &format!("127.0.0.1:{admin}"),
                    "--web-addr",
                    &format!("127.0.0.1:{web}"),
                    "--websecure-addr",
                    &format!("127.0.0.1:{port}"),
                    "--cert-dir",
                    &s.dir.join("certs").display().to_string(),
                    "--config-file",
                    &cfg.display().to_string(),
                    "--log-level",
                    "warn",
                ],
                &s.dir,
            )?
        }
        "nginx" => {
            // TLS 1.3 as well, as the others speak it: Debian's nginx 1.22
            // enables only up to TLS 1.2 by default (1.23.4 added 1.3),
            // where resuming a session needs no key exchange at all, so
            // the new-connection test compared different protocols.
            let conf = d.join("nginx.conf");
            let t = d.display();
            write(
                &conf,
                &format!(
                    "worker_processes 1;\ndaemon off;\npid {t}/nginx.pid;\nerror_log {t}/error.log warn;\nevents {{ worker_connections 8192; }}\nhttp {{\n access_log off;\n client_body_temp_path {t}/cb; proxy_temp_path {t}/pt; fastcgi_temp_path {t}/ft; uwsgi_temp_path {t}/ut; scgi_temp_path {t}/st;\n ssl_session_cache shared:SSL:10m;\n ssl_protocols TLSv1.2 TLSv1.3;\n upstream b {{ server 127.0.0.1:{b}; keepalive 128; }}\n server {{\n  listen 127.0.0.1:{port} ssl http2;\n  ssl_certificate {cert};\n  ssl_certificate_key {key};\n  keepalive_requests 100000;\n  location / {{ proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_set_header Host $host; proxy_buffering on; }}\n }}\n}}\n"
                ),
            )?;
            spawn(
                name,
                "0",
                &[
                    "nginx",
                    "-c",
                    &conf.display().to_string(),
                    "-p",
                    &t.to_string(),
                ],
                &s.dir,
            )?
        }
        "haproxy" => {
            let conf = d.join("haproxy.cfg");
            write(
                &conf,
                &format!(
                    "global\n  nbthread 1\n  maxconn 8000\n  tune.ssl.cachesize 20000\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n  option http-keep-alive\nfrontend fe\n  bind 127.0.0.1:{port} ssl crt {} alpn h2,http/1.1\n  default_backend be\nbackend be\n  http-reuse always\n  server s1 127.0.0.1:{b}\n",
                    s.combined.display()
                ),
            )?;
            spawn(
                name,
                "0",
                &["haproxy", "-db", "-f", &conf.display().to_string()],
                &s.dir,
            )?
        }
        "caddy" => {
            let conf = d.join("Caddyfile");
            write(
                &conf,
                &format!(
                    "{{\n  admin off\n  auto_https off\n  log {{\n    level ERROR\n  }}\n}}\n:{port} {{\n  bind 127.0.0.1\n  tls {cert} {key}\n  reverse_proxy 127.0.0.1:{b}\n}}\n"
                ),
            )?;
            spawn(
                name,
                "0",
                &[
                    "caddy",
                    "run",
                    "--config",
                    &conf.display().to_string(),
                    "--adapter",
                    "caddyfile",
                ],
                &s.dir,
            )?
        }
        other => bail!("unknown proxy {other}"),
    };
    wait_port(port, name)?;
    // A request through it must succeed before measuring.
    let ok = Command::new("curl")
        .args([
            "-sk",
            "--max-time",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            // The Host wrk sends (the edge-1r/edge-1000r routers match it).
            "-H",
            "Host: app.b3.swarm",
        ])
        .arg(format!("https://127.0.0.1:{port}/1k.bin"))
        .output()?;
    let code = String::from_utf8_lossy(&ok.stdout).to_string();
    if code != "200" {
        bail!(
            "{name}: test request answered {code:?}; log: {}",
            std::fs::read_to_string(s.dir.join(format!("{name}.log"))).unwrap_or_default()
        );
    }
    Ok((proc, port))
}

fn main() -> anyhow::Result<()> {
    let secs: u64 = std::env::var("EDGE_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    for tool in ["taskset", "wrk", "h2load", "curl", "nginx"] {
        if Command::new("which")
            .arg(tool)
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            bail!("{tool} is not installed (apt-get install wrk nghttp2-client nginx haproxy caddy util-linux curl)");
        }
    }
    let tmp = tempfile::Builder::new()
        .prefix("edge-bench")
        .tempdir_in("/var/tmp")?;
    let dir = tmp.path().to_path_buf();
    // Next to this benchmark (target/release/), else where tests find it.
    let edge_bin = match std::env::current_exe()?.with_file_name("edge") {
        p if p.is_file() => p,
        _ => b3_tests::bins::bin("edge")?,
    };

    // The backend: nginx, one worker, static 1 KiB and 100 KiB files.
    let www = dir.join("www");
    std::fs::create_dir_all(&www)?;
    std::fs::write(www.join("1k.bin"), vec![b'a'; 1024])?;
    std::fs::write(www.join("100k.bin"), vec![b'b'; 100 * 1024])?;
    let backend_port = free_port()?;
    let bd = dir.join("backend");
    std::fs::create_dir_all(&bd)?;
    let t = bd.display();
    write(
        &bd.join("nginx.conf"),
        &format!(
            "worker_processes 1;\ndaemon off;\npid {t}/nginx.pid;\nerror_log {t}/error.log warn;\nevents {{ worker_connections 8192; }}\nhttp {{\n access_log off;\n client_body_temp_path {t}/cb; proxy_temp_path {t}/pt; fastcgi_temp_path {t}/ft; uwsgi_temp_path {t}/ut; scgi_temp_path {t}/st;\n keepalive_requests 1000000;\n server {{ listen 127.0.0.1:{backend_port}; root {}; }}\n}}\n",
            www.display()
        ),
    )?;
    let _backend = spawn(
        "backend",
        "1",
        &[
            "nginx",
            "-c",
            &bd.join("nginx.conf").display().to_string(),
            "-p",
            &t.to_string(),
        ],
        &dir,
    )?;
    wait_port(backend_port, "backend nginx")?;

    // One certificate for all: edge generates it, the others load it.
    let pem_path = dir.join("certs").join("b3.swarm.pem");
    let pem = {
        let _gen = spawn(
            "edge-certgen",
            "0",
            &[
                &edge_bin.display().to_string(),
                "--admin-addr",
                &format!("127.0.0.1:{}", free_port()?),
                "--web-addr",
                &format!("127.0.0.1:{}", free_port()?),
                "--websecure-addr",
                &format!("127.0.0.1:{}", free_port()?),
                "--cert-dir",
                &dir.join("certs").display().to_string(),
            ],
            &dir,
        )?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(p) = std::fs::read_to_string(&pem_path) {
                if p.contains("PRIVATE KEY") {
                    break p;
                }
            }
            if Instant::now() > deadline {
                bail!("edge did not generate {}", pem_path.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let split = pem
        .find("-----BEGIN PRIVATE KEY-----")
        .context("no key in the generated PEM")?;
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    write(&cert, &pem[..split])?;
    write(&key, &pem[split..])?;
    let setup = Setup {
        combined: pem_path,
        dir: dir.clone(),
        cert,
        key,
        backend_port,
        edge_bin,
    };

    let only: Vec<String> = std::env::var("EDGE_BENCH_ONLY")
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let wanted = |part: &str| only.is_empty() || only.iter().any(|o| o == part);
    let all_proxies = ["edge", "nginx", "haproxy", "caddy"];
    let chosen = std::env::var("EDGE_BENCH_PROXIES").unwrap_or_default();
    let proxies: Vec<&str> = all_proxies
        .into_iter()
        .filter(|p| *p == "edge" || chosen.is_empty() || chosen.split(',').any(|c| c.trim() == *p))
        .collect();
    let tests: Vec<(&str, &str)> = [
        ("wrk h1 keep-alive 64c 1KiB", "1k"),
        ("wrk h1 keep-alive 64c 100KiB", "100k"),
        ("h2load h2 64c x 10 streams 1KiB", "h2"),
        ("wrk new TLS conn per request 1KiB", "close"),
    ]
    .into_iter()
    .filter(|(_, kind)| wanted(kind))
    .collect();
    for o in &only {
        if !["1k", "100k", "h2", "close", "routers"].contains(&o.as_str()) {
            bail!("EDGE_BENCH_ONLY: unknown part {o:?} (parts: 1k, 100k, h2, close, routers)");
        }
    }
    let rounds: usize = std::env::var("EDGE_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    if !tests.is_empty() {
        let mut running: Vec<Option<(Proc, u16)>> = Vec::new();
        for &name in &proxies {
            match start_proxy(name, &setup) {
                Ok(x) => running.push(Some(x)),
                Err(e) => {
                    eprintln!("skipping {name}: {e:#}");
                    running.push(None);
                }
            }
        }
        // Rounds interleave the proxies so background load on this shared
        // machine hits them alike; each keeps its best round.
        let mut results: Vec<Vec<Option<Result1>>> = vec![vec![None; proxies.len()]; tests.len()];
        for round in 0..rounds {
            for (ti, (label, kind)) in tests.iter().enumerate() {
                for (pi, name) in proxies.iter().enumerate() {
                    let Some((proc, port)) = &running[pi] else {
                        continue;
                    };
                    let (pid, port) = (proc.child.id(), *port);
                    let r = match *kind {
                        "1k" => wrk(port, "/1k.bin", 64, false, pid, secs),
                        "100k" => wrk(port, "/100k.bin", 64, false, pid, secs),
                        "h2" => h2load(port, "/1k.bin", pid, secs),
                        _ => wrk(port, "/1k.bin", 16, true, pid, secs),
                    };
                    match r {
                        Ok(r) => {
                            eprintln!(
                            "round {round} {name:8} {label:36} {:>10.0} req/s  {:>8} ms  {:>6.1} MiB  {:>6} us CPU/req  {} errors",
                            r.rps,
                            r.p99_ms.map(|v| format!("{v:.2}")).unwrap_or("-".into()),
                            r.rss_mib,
                            r.cpu_us.map(|v| format!("{v:.1}")).unwrap_or("-".into()),
                            r.errors
                        );
                            let slot = &mut results[ti][pi];
                            *slot = Some(match *slot {
                                None => r,
                                Some(old) => Result1 {
                                    rps: old.rps.max(r.rps),
                                    p99_ms: match (old.p99_ms, r.p99_ms) {
                                        (Some(a), Some(b)) => Some(a.min(b)),
                                        (a, b) => a.or(b),
                                    },
                                    rss_mib: old.rss_mib.max(r.rss_mib),
                                    cpu_us: match (old.cpu_us, r.cpu_us) {
                                        (Some(a), Some(b)) => Some(a.min(b)),
                                        (a, b) => a.or(b),
                                    },
                                    errors: old.errors + r.errors,
                                },
                            });
                        }
                        Err(e) => eprintln!("{name}: {label}: {e:#}"),
                    }
                }
            }
        }
        drop(running);

        println!("\nAll proxies (requests/s | p99 ms for wrk, mean ms for h2load | peak RSS MiB | proxy CPU us per request):");
        println!(
            "{:<38} {}",
            "workload",
            proxies
                .iter()
                .map(|p| format!("{p:>34}"))
                .collect::<String>()
        );
        for (ti, (label, _)) in tests.iter().enumerate() {
            let cells: String = results[ti]
                .iter()
                .map(|r| match r {
                    Some(r) => format!(
                        "{:>34}",
                        format!(
                            "{:.0} | {} | {:.0} | {}",
                            r.rps,
                            r.p99_ms.map(|v| format!("{v:.2}")).unwrap_or("-".into()),
                            r.rss_mib,
                            r.cpu_us.map(|v| format!("{v:.1}")).unwrap_or("-".into()),
                        )
                    ),
                    None => format!("{:>34}", "n/a"),
                })
                .collect();
            println!("{label:<38} {cells}");
        }

        let mut rows = Vec::new();
        for (ti, (label, _)) in tests.iter().enumerate() {
            let Some(ours) = results[ti][0] else { continue };
            let best = (1..proxies.len())
                .filter_map(|pi| results[ti][pi].map(|r| (pi, r)))
                .max_by(|a, b| a.1.rps.total_cmp(&b.1.rps));
            rows.push(Row {
                workload: label.to_string(),
                unit: "req/s".into(),
                ours: ours.rps,
                reference_name: best.map(|b| proxies[b.0].to_string()).unwrap_or_default(),
                reference: best.map(|b| b.1.rps),
                better: Better::Higher,
                target: Some(1.0),
            });
            let best_lat = (1..proxies.len())
                .filter_map(|pi| results[ti][pi].and_then(|r| r.p99_ms.map(|l| (pi, l))))
                .min_by(|a, b| a.1.total_cmp(&b.1));
            if let Some(l) = ours.p99_ms {
                rows.push(Row {
                    workload: format!(
                        "{label} {}",
                        if tests[ti].1 == "h2" { "mean" } else { "p99" }
                    ),
                    unit: "ms".into(),
                    ours: l,
                    reference_name: best_lat
                        .map(|b| proxies[b.0].to_string())
                        .unwrap_or_default(),
                    reference: best_lat.map(|b| b.1),
                    better: Better::Lower,
                    target: Some(1.0),
                });
            }
            let best_cpu = (1..proxies.len())
                .filter_map(|pi| results[ti][pi].and_then(|r| r.cpu_us.map(|c| (pi, c))))
                .min_by(|a, b| a.1.total_cmp(&b.1));
            if let Some(c) = ours.cpu_us {
                // Not a target of the issue: shown because it holds still
                // when the machine's other load makes requests/s jump.
                rows.push(Row {
                    workload: format!("{label} CPU/request"),
                    unit: "us".into(),
                    ours: c,
                    reference_name: best_cpu
                        .map(|b| proxies[b.0].to_string())
                        .unwrap_or_default(),
                    reference: best_cpu.map(|b| b.1),
                    better: Better::Lower,
                    target: None,
                });
            }
            rows.push(Row {
                workload: format!("{label} peak RSS"),
                unit: "MiB".into(),
                ours: ours.rss_mib,
                reference_name: "64 MiB cap".into(),
                reference: Some(64.0),
                better: Better::Lower,
                target: Some(1.0),
            });
        }
        print!(
            "{}",
            render(
                "edge vs the best of nginx / HAProxy / Caddy (same machine, loopback, TLS)",
                &rows
            )
        );
    }

    if !wanted("routers") {
        return Ok(());
    }
    // 1,000 routers against 1: the matcher looks hosts up in a map, so the
    // request rate must not drop measurably.
    let variants = ["edge-1r", "edge-1000r"];
    let mut best = [0.0f64; 2];
    let mut started = Vec::new();
    for v in variants {
        started.push(start_proxy(v, &setup)?);
    }
    for round in 0..rounds.max(3) {
        for (i, (proc, port)) in started.iter().enumerate() {
            let r = wrk(*port, "/1k.bin", 64, false, proc.child.id(), secs)?;
            eprintln!("round {round} {:10} {:>10.0} req/s", variants[i], r.rps);
            best[i] = best[i].max(r.rps);
        }
    }
    drop(started);
    print!(
        "{}",
        render(
            "edge with 1,000 routers vs 1 router (wrk h1 keep-alive 64c 1KiB, best round)",
            &[Row {
                workload: "1,000 routers (ratio = 1000r / 1r)".into(),
                unit: "req/s".into(),
                ours: best[1],
                reference_name: "1 router".into(),
                reference: Some(best[0]),
                better: Better::Higher,
                target: Some(0.95),
            }]
        )
    );
    Ok(())
}
