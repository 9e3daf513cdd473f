//! Zero-touch bootstrap (`store server --bootstrap` + `store bootstrap`)
//! as separate processes on loopback: three nodes with empty data
//! directories form one cluster by themselves (the smallest node founds
//! it, the others join with tokens their companions fetched), a fourth
//! node started later joins that cluster instead of founding another, and
//! an address that is not a bootstrap peer is refused a token.

mod harness;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use harness::{bin, http};

struct Node {
    dir: PathBuf,
    ip: Ipv4Addr,
    children: Vec<Child>,
}

impl Node {
    fn admin(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.ip), 7401)
    }
}

struct Lab {
    _tmp: tempfile::TempDir,
    nodes: Vec<Node>,
    peers: String,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            for c in &mut n.children {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if std::thread::panicking() {
            for (i, n) in self.nodes.iter().enumerate() {
                for log in ["server.log", "bootstrap.log"] {
                    let text = std::fs::read_to_string(n.dir.join(log)).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(25).collect();
                    eprintln!("--- node {i} {log}");
                    for l in tail.iter().rev() {
                        eprintln!("{l}");
                    }
                }
            }
        }
    }
}

/// A loopback /24 nobody else uses (random, checked by binding).
fn free_base() -> [u8; 3] {
    for attempt in 0u32..1000 {
        let r = std::process::id()
            .wrapping_mul(2_654_435_761)
            .wrapping_add(attempt.wrapping_mul(40_503))
            ^ (Instant::now().elapsed().subsec_nanos());
        let base = [127, 200 + (r % 50) as u8, ((r >> 8) % 250) as u8 + 1];
        let ip = Ipv4Addr::new(base[0], base[1], base[2], 1);
        if std::net::TcpListener::bind((ip, 7402)).is_ok()
            && std::net::TcpListener::bind((ip, 7401)).is_ok()
            && std::net::UdpSocket::bind((ip, 7400)).is_ok()
        {
            return base;
        }
    }
    panic!("no free loopback /24 found");
}

impl Lab {
    /// Specs for `n` nodes; every companion lists all `n` as peers.
    fn new(n: usize) -> Lab {
        let tmp = tempfile::tempdir().unwrap();
        let b = free_base();
        let nodes: Vec<Node> = (1..=n)
            .map(|i| Node {
                dir: tmp.path().join(format!("node{i}")),
                ip: Ipv4Addr::new(b[0], b[1], b[2], i as u8),
                children: Vec::new(),
            })
            .collect();
        let peers = nodes
            .iter()
            .map(|n| format!("{}:7402", n.ip))
            .collect::<Vec<_>>()
            .join(",");
        for node in &nodes {
            std::fs::create_dir_all(&node.dir).unwrap();
        }
        Lab {
            _tmp: tmp,
            nodes,
            peers,
        }
    }

    /// Starts node `i`'s server and companion, both with empty state.
    fn start(&mut self, i: usize, expect: u32) {
        let peers = self.peers.clone();
        let node = &mut self.nodes[i];
        let log = |name: &str| std::fs::File::create(node.dir.join(name)).unwrap();
        let server = Command::new(bin())
            .args(["server", "--bootstrap", "--data-dir"])
            .arg(&node.dir)
            .args(["--listen", &format!("{}:7400", node.ip)])
            .args(["--admin-addr", &format!("{}:7401", node.ip)])
            .args(["--failure-domain", &format!("host{i}"), "--weight", "10"])
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(log("server.log"))
            .stderr(log("server.log"))
            .spawn()
            .unwrap();
        node.children.push(server);
        let companion = Command::new(bin())
            .args(["bootstrap", "--data-dir"])
            .arg(&node.dir)
            .args(["--listen", &format!("{}:7402", node.ip)])
            .args(["--peers", &peers])
            .args(["--node", &format!("node-{i}")])
            .args(["--expect", &expect.to_string(), "--settle", "1s"])
            .args(["--size", "3", "--min-size", "2"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log("bootstrap.log"))
            .stderr(log("bootstrap.log"))
            .spawn()
            .unwrap();
        node.children.push(companion);
    }

    fn status(&self, i: usize) -> Option<serde_json::Value> {
        let (code, _, body) = http(self.nodes[i].admin(), "GET", "/v1/status", &[], b"").ok()?;
        (code == 200).then(|| serde_json::from_slice(&body).ok())?
    }

    fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut(&Lab) -> Option<T>,
    ) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = f(self) {
                return v;
            }
            assert!(
                start.elapsed() < timeout,
                "timed out after {timeout:?} waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn cluster_id(&self, i: usize) -> Option<String> {
        let text = std::fs::read_to_string(self.nodes[i].dir.join("identity/cluster.json")).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        v["cluster_id"].as_str().map(str::to_string)
    }
}

#[test]
fn empty_nodes_form_one_cluster_and_a_late_node_joins_it() {
    let mut lab = Lab::new(4);
    // Two nodes only: with --expect 3 nobody founds anything.
    lab.start(1, 3);
    lab.start(2, 3);
    std::thread::sleep(Duration::from_secs(4));
    for i in [1, 2] {
        assert!(
            !lab.nodes[i].dir.join("identity/node.json").exists(),
            "node {i} has an identity before 3 nodes were visible"
        );
        let (code, _, _) = http(lab.nodes[i].admin(), "GET", "/health", &[], b"").unwrap_or((
            0,
            String::new(),
            Vec::new(),
        ));
        assert_eq!(code, 0, "a server without identity serves nothing yet");
    }
    // The third arrives: node-0 is the smallest name and founds.
    lab.start(0, 3);
    lab.wait_for(
        "3 nodes in one cluster with a quorum",
        Duration::from_secs(60),
        |l| {
            let s = l.status(0)?;
            (s["quorum"] == true && s["nodes_total"] == 3 && s["nodes_up"] == 3).then_some(())
        },
    );
    assert!(
        lab.nodes[0].dir.join("identity/founder").exists(),
        "node-0 founded it"
    );
    for i in [1, 2] {
        assert!(!lab.nodes[i].dir.join("identity/founder").exists());
        assert!(
            !lab.nodes[i].dir.join("bootstrap/join.json").exists(),
            "the used join plan is deleted"
        );
    }
    let cluster = lab.cluster_id(0).unwrap();
    for i in [1, 2] {
        assert_eq!(lab.cluster_id(i).as_deref(), Some(cluster.as_str()));
    }
    let s = lab.status(1).unwrap();
    assert_eq!(s["size"], 3, "the founder used --size");

    // Data written on one node is read on another: it is one cluster.
    let (code, _, body) = http(
        lab.nodes[0].admin(),
        "PUT",
        "/objects/boot/hello",
        &[],
        b"one cluster",
    )
    .unwrap();
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let (code, _, body) =
        http(lab.nodes[2].admin(), "GET", "/objects/boot/hello", &[], b"").unwrap();
    assert_eq!((code, body.as_slice()), (200, &b"one cluster"[..]));

    // A node added later joins, even with --expect 1.
    lab.start(3, 1);
    lab.wait_for(
        "the late node in the cluster map",
        Duration::from_secs(60),
        |l| {
            let s = l.status(3)?;
            (s["quorum"] == true && s["nodes_total"] == 4).then_some(())
        },
    );
    assert_eq!(lab.cluster_id(3).as_deref(), Some(cluster.as_str()));
    assert!(!lab.nodes[3].dir.join("identity/founder").exists());

    // Only bootstrap peers get tokens: ask from an address not listed.
    let node0 = SocketAddr::new(IpAddr::V4(lab.nodes[0].ip), 7402);
    let stranger = Ipv4Addr::new(
        lab.nodes[0].ip.octets()[0],
        lab.nodes[0].ip.octets()[1],
        lab.nodes[0].ip.octets()[2],
        99,
    );
    let answer = ask_token(node0, stranger);
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(
        answer.contains("not one of the bootstrap peers") && !answer.contains("B3S1-"),
        "{answer}"
    );
    // A listed peer does get one.
    let answer = ask_token(node0, lab.nodes[1].ip);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("B3S1-"), "{answer}");
}

/// `POST /v1/bootstrap/join` to `to` from address `from`; the raw answer.
fn ask_token(to: SocketAddr, from: Ipv4Addr) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(SocketAddr::new(IpAddr::V4(from), 0)).unwrap();
        let mut s = sock.connect(to).await.unwrap();
        s.write_all(b"POST /v1/bootstrap/join HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.unwrap();
        String::from_utf8_lossy(&raw).into_owned()
    })
}
