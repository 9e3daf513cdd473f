//! Test harness: `store` clusters as separate processes on loopback
//! addresses of their own (127.x.y.n), temp data dirs, children killed in
//! Drop (also on panic).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `store` binary under test. `STORE_TEST_BIN` overrides it (useful
/// when several work trees share one target directory and overwrite
/// `target/debug/store` with their own build).
pub fn bin() -> String {
    std::env::var("STORE_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_store").to_string())
}

pub struct Node {
    pub dir: PathBuf,
    pub quic: SocketAddr,
    pub admin: SocketAddr,
    pub domain: String,
    pub child: Option<Child>,
    pub log: PathBuf,
    pub extra: Vec<String>,
}

pub struct Cluster {
    pub tmp: tempfile::TempDir,
    pub nodes: Vec<Node>,
    pub token: String,
    base: [u8; 3],
}

fn free_base() -> [u8; 3] {
    // A /24 of loopback nobody else in this test run uses (probabilistically:
    // random, then checked by binding).
    loop {
        let r: u32 = rand_u32();
        let base = [127, 100 + (r % 100) as u8, ((r >> 8) % 250) as u8 + 1];
        let ip = Ipv4Addr::new(base[0], base[1], base[2], 1);
        if std::net::UdpSocket::bind((ip, 7400)).is_ok()
            && std::net::TcpListener::bind((ip, 7401)).is_ok()
        {
            return base;
        }
    }
}

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut b);
    }
    u32::from_le_bytes(b) ^ std::process::id()
}

/// Runs `store args...` to completion (killed after 30 s).
pub fn run(args: &[&str]) -> std::process::Output {
    let mut child = Command::new(bin())
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running store");
    let start = Instant::now();
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("collecting store output")
}

impl Cluster {
    /// `n` nodes, node 0 founded with `init_args`, the rest joined.
    pub fn start(n: usize, init_args: &[&str], server_args: &[&str]) -> Cluster {
        Self::start_with(n, init_args, server_args, |_, _| {})
    }

    /// Like [`Cluster::start`]; `adjust` may change each node's spec
    /// (data dir, extra flags) before it starts.
    pub fn start_with(
        n: usize,
        init_args: &[&str],
        server_args: &[&str],
        mut adjust: impl FnMut(usize, &mut Node),
    ) -> Cluster {
        let tmp = tempfile::tempdir().expect("tempdir");
        let base = free_base();
        let mut c = Cluster {
            tmp,
            nodes: Vec::new(),
            token: String::new(),
            base,
        };
        for i in 0..n {
            c.add_node_spec(i, server_args);
            adjust(i, &mut c.nodes[i]);
        }
        let dir0 = c.nodes[0].dir.display().to_string();
        let mut args = vec!["init", "--data-dir", dir0.as_str()];
        args.extend_from_slice(init_args);
        let out = run(&args);
        assert!(
            out.status.success(),
            "init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = run(&["join-token", "--data-dir", &dir0]);
        assert!(out.status.success());
        c.token = String::from_utf8_lossy(&out.stdout).trim().to_string();
        c.spawn(0);
        c.wait_health(0);
        for i in 1..n {
            c.spawn(i);
        }
        c.wait_for(
            Duration::from_secs(40),
            "all nodes up and voters in place, seen from every node",
            |c| {
                let want = if n >= 5 { 5 } else { n.min(3) };
                for i in 0..n {
                    let s = c.status(i)?;
                    let voters = s["raft"]["voters"].as_array()?.len();
                    let ok = s["nodes_up"].as_u64()? == n as u64
                        && voters == want
                        && s["quorum"].as_bool()?;
                    if !ok {
                        return None;
                    }
                }
                Some(())
            },
        );
        c
    }

    pub fn add_node_spec(&mut self, i: usize, server_args: &[&str]) {
        let ip = IpAddr::V4(Ipv4Addr::new(
            self.base[0],
            self.base[1],
            self.base[2],
            i as u8 + 1,
        ));
        let dir = self.tmp.path().join(format!("node{i}"));
        self.nodes.push(Node {
            log: self.tmp.path().join(format!("node{i}.log")),
            dir,
            quic: SocketAddr::new(ip, 7400),
            admin: SocketAddr::new(ip, 7401),
            domain: format!("host{i}"),
            child: None,
            extra: server_args.iter().map(|s| s.to_string()).collect(),
        });
    }

    pub fn spawn(&mut self, i: usize) {
        let peers = self.nodes[0].quic.to_string();
        let token = self.token.clone();
        let node = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .expect("log file");
        let mut cmd = Command::new(bin());
        cmd.arg("server")
            .arg("--data-dir")
            .arg(&node.dir)
            .arg("--listen")
            .arg(node.quic.to_string())
            .arg("--admin-addr")
            .arg(node.admin.to_string())
            .arg("--failure-domain")
            .arg(&node.domain)
            .arg("--weight")
            .arg("10")
            .args(&node.extra)
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        if i > 0 {
            cmd.arg("--join").arg(&token).arg("--peers").arg(&peers);
        }
        node.child = Some(cmd.spawn().expect("spawning store server"));
    }

    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn signal(&self, i: usize, sig: i32) {
        if let Some(c) = &self.nodes[i].child {
            unsafe {
                libc::kill(c.id() as i32, sig);
            }
        }
    }

    pub fn wait_health(&self, i: usize) {
        self.wait_for(Duration::from_secs(20), "admin endpoint up", |c| {
            http(c.nodes[i].admin, "GET", "/health", &[], b"")
                .ok()
                .map(|_| ())
        });
    }

    pub fn status(&self, i: usize) -> Option<serde_json::Value> {
        let (code, _, body) = http(self.nodes[i].admin, "GET", "/v1/status", &[], b"").ok()?;
        if code != 200 {
            return None;
        }
        serde_json::from_slice(&body).ok()
    }

    pub fn node_id(&self, i: usize) -> Option<u64> {
        let s = self.status(i)?;
        u64::from_str_radix(s["node_id"].as_str()?, 16).ok()
    }

    pub fn leader_index(&self) -> Option<usize> {
        for i in 0..self.nodes.len() {
            if self.nodes[i].child.is_none() {
                continue;
            }
            if let Some(s) = self.status(i) {
                if let Some(l) = s["raft"]["leader"].as_u64() {
                    return (0..self.nodes.len())
                        .find(|j| self.nodes[*j].child.is_some() && self.node_id(*j) == Some(l));
                }
            }
        }
        None
    }

    pub fn wait_for<T>(
        &self,
        limit: Duration,
        what: &str,
        mut f: impl FnMut(&Self) -> Option<T>,
    ) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = f(self) {
                return v;
            }
            if start.elapsed() > limit {
                self.dump_logs();
                panic!("timed out after {limit:?} waiting for: {what}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn dump_logs(&self) {
        for (i, n) in self.nodes.iter().enumerate() {
            let log = std::fs::read_to_string(&n.log).unwrap_or_default();
            let tail: Vec<_> = log.lines().rev().take(25).collect();
            eprintln!("---- node {i} log (last lines) ----");
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        }
    }

    /// Chunk files (ids) stored under node `i`'s data dir.
    /// Chunk file name → number of copies over the nodes `live`.
    #[allow(dead_code)]
    pub fn copies(&self, live: &[usize]) -> std::collections::HashMap<String, usize> {
        let mut m = std::collections::HashMap::new();
        for &i in live {
            for f in self.chunk_files(i) {
                let name = f.file_name().unwrap().to_string_lossy().to_string();
                *m.entry(name).or_default() += 1;
            }
        }
        m
    }

    pub fn chunk_files(&self, i: usize) -> Vec<PathBuf> {
        let mut out = Vec::new();
        walk(&self.nodes[i].dir.join("chunks"), &mut out);
        out.retain(|p| {
            p.parent()
                .and_then(|d| d.file_name())
                .is_some_and(|n| n != "tmp")
        });
        out
    }

    pub fn put(&self, i: usize, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        let (c, _, b) = http(self.nodes[i].admin, "PUT", path, &[], body).unwrap_or((
            0,
            String::new(),
            Vec::new(),
        ));
        (c, b)
    }

    pub fn get(&self, i: usize, path: &str) -> (u16, Vec<u8>) {
        let (c, _, b) = http(self.nodes[i].admin, "GET", path, &[], b"").unwrap_or((
            0,
            String::new(),
            Vec::new(),
        ));
        (c, b)
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            // Resume stopped processes so they can be killed and reaped.
            self.signal(i, libc::SIGCONT);
            self.kill9(i);
        }
        if std::thread::panicking() {
            self.dump_logs();
        }
    }
}

/// A tiny HTTP/1.1 client: one request, `Connection: close`.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, String, Vec<u8>)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no header end"))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("no status"))?;
    Ok((code, head, raw[split + 4..].to_vec()))
}

/// Deterministic pseudo-random bytes.
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
