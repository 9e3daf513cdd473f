//! A 3-node cluster in network namespaces (the lab fixture): each node on
//! its own host address, and a real network partition by pulling a cable.

use std::process::Stdio;
use std::time::{Duration, Instant};

use b3_tests::netlab::Lab;
use b3_tests::process::ChildGuard;

fn bin() -> String {
    std::env::var("STORE_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_store").to_string())
}

fn wait_for<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

struct Net {
    lab: Lab,
}

impl Net {
    fn admin(&self, i: usize) -> String {
        format!("{}:7401", self.lab.host(i).ip())
    }

    fn status(&self, i: usize) -> Option<serde_json::Value> {
        let out = self
            .lab
            .host(i)
            .run(&[&bin(), "status", "--server", &self.admin(i), "--json"])
            .ok()?;
        serde_json::from_str(&out).ok()
    }

    /// `curl` inside host `i`; returns the HTTP status code.
    fn curl(&self, i: usize, args: &[&str]) -> u16 {
        let mut argv = vec![
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "30",
        ];
        argv.extend_from_slice(args);
        self.lab
            .host(i)
            .run(&argv)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    fn put(&self, i: usize, key: &str, value: &str) -> u16 {
        let url = format!("http://{}/objects/net/{key}", self.admin(i));
        self.curl(i, &["-X", "PUT", "--data-binary", value, &url])
    }

    fn get(&self, i: usize, key: &str) -> Option<String> {
        let url = format!("http://{}/objects/net/{key}", self.admin(i));
        self.lab
            .host(i)
            .run(&["curl", "-sf", "--max-time", "30", &url])
            .ok()
    }
}

#[test]
fn cluster_in_namespaces_survives_a_partition() {
    let lab = match Lab::new(3) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("SKIP: netns lab unavailable: {e:#}");
            return;
        }
    };
    let net = Net { lab };
    let tmp = tempfile::tempdir().unwrap();
    let dir = |i: usize| tmp.path().join(format!("n{i}")).display().to_string();
    let out = std::process::Command::new(bin())
        .args(["init", "--data-dir", &dir(0)])
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = std::process::Command::new(bin())
        .args(["join-token", "--data-dir", &dir(0)])
        .output()
        .unwrap();
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let first = format!("{}:7400", net.lab.host(0).ip());
    let mut nodes: Vec<ChildGuard> = Vec::new();
    for i in 0..3 {
        let host = net.lab.host(i);
        let log = std::fs::File::create(tmp.path().join(format!("n{i}.log"))).unwrap();
        let mut cmd = host.command(bin());
        cmd.args(["server", "--data-dir", &dir(i)])
            .args(["--listen", &format!("{}:7400", host.ip())])
            .args(["--admin-addr", &format!("{}:7401", host.ip())])
            .args(["--failure-domain", &format!("host{i}")])
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if i > 0 {
            cmd.args(["--join", &token, "--peers", &first]);
        }
        nodes.push(ChildGuard::spawn(format!("store {i}"), &mut cmd).unwrap());
        if i == 0 {
            wait_for(Duration::from_secs(20), "first node up", || net.status(0));
        }
    }
    wait_for(Duration::from_secs(40), "3 nodes up, 3 voters", || {
        let s = net.status(1)?;
        (s["nodes_up"] == 3 && s["raft"]["voters"].as_array()?.len() == 3 && s["pgs_clean"] == 256)
            .then_some(())
    });
    assert_eq!(net.put(1, "a", "alpha"), 200);
    assert_eq!(net.get(2, "a").as_deref(), Some("alpha"));

    // Pull the leader's cable: the other two elect a leader and go on; the
    // isolated node cannot commit.
    let s = net.status(0).unwrap();
    let leader_id = s["raft"]["leader"].as_u64().unwrap();
    let leader = (0..3)
        .find(|i| {
            net.status(*i)
                .and_then(|s| u64::from_str_radix(s["node_id"].as_str()?, 16).ok())
                == Some(leader_id)
        })
        .unwrap();
    let (a, b) = ((leader + 1) % 3, (leader + 2) % 3);
    net.lab.link_down(leader).unwrap();
    wait_for(
        Duration::from_secs(20),
        "majority elects a new leader",
        || {
            let s = net.status(a)?;
            (s["raft"]["leader"].as_u64()? != leader_id).then_some(())
        },
    );
    wait_for(Duration::from_secs(20), "majority accepts writes", || {
        (net.put(a, "b", "beta") == 200).then_some(())
    });
    assert_eq!(net.get(b, "b").as_deref(), Some("beta"));
    let code = net.put(leader, "lost", "never");
    assert_eq!(code, 503, "the isolated node must not acknowledge a write");

    // Heal: the isolated node catches up and serves the majority's write.
    net.lab.link_up(leader).unwrap();
    wait_for(Duration::from_secs(30), "healed node catches up", || {
        net.get(leader, "b").filter(|v| v == "beta")
    });
    assert_eq!(net.get(a, "a").as_deref(), Some("alpha"));
    drop(nodes);
}
