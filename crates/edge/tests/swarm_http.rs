//! HTTP through the real `edge` binary to Swarm tasks it found by itself:
//! the end-to-end check (`curl --resolve demo.b3.swarm:443:…
//! https://demo.b3.swarm/` answers from every task, follows scaling, and
//! gives 404 within a second of `docker service rm`).
//!
//! Task IPs live on an overlay network that the host cannot reach, so edge
//! runs in the network namespace of a container attached to that overlay
//! (`nsenter -n`: only the network namespace changes; the binary, its
//! libraries and the Docker socket are the host's), and curl is run the
//! same way.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use b3_tests::dockerd::Dockerd;
use b3_tests::process::ChildGuard;
use b3_tests::wait;

const IMAGE: &str = "b3/busybox:test";

/// The edge binary: `EDGE_BIN` when set (for a target directory shared with
/// other checkouts, where `target/debug/edge` may be someone else's build),
/// else the one cargo built for this test.
fn edge_bin() -> String {
    std::env::var("EDGE_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_edge").to_string())
}
const NET: &str = "labnet";

/// `curl` in the namespace; returns (status, body) or None if it failed.
fn curl(pid: &str, host: &str) -> Option<(u16, String)> {
    let out = Command::new("nsenter")
        .args(["-t", pid, "-n", "curl", "-sk", "--max-time", "5"])
        .args(["--resolve", &format!("{host}:8443:127.0.0.1")])
        .args(["-w", "\n%{http_code}"])
        .arg(format!("https://{host}:8443/"))
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n')?;
    Some((code.trim().parse().ok()?, body.to_string()))
}

/// Distinct `hello from <host>` answers over `n` requests.
fn answering(pid: &str, host: &str, n: usize) -> BTreeSet<String> {
    (0..n)
        .filter_map(|_| curl(pid, host))
        .filter(|(code, _)| *code == 200)
        .filter_map(|(_, body)| {
            body.lines()
                .find(|l| l.starts_with("hello from"))
                .map(str::to_string)
        })
        .collect()
}

#[test]
fn swarm_edge_serves_https_to_the_tasks_it_discovers() {
    let d = Dockerd::start().unwrap();
    d.swarm_init().unwrap();
    d.import_busybox(IMAGE).unwrap();
    d.run(&[
        "network",
        "create",
        "--driver",
        "overlay",
        "--attachable",
        NET,
    ])
    .unwrap();
    // A container whose network namespace edge and curl borrow.
    d.run(&[
        "run",
        "-d",
        "--name",
        "edge-netns",
        "--network",
        NET,
        IMAGE,
        "sleep",
        "3600",
    ])
    .unwrap();
    let pid = d
        .run(&["inspect", "-f", "{{.State.Pid}}", "edge-netns"])
        .unwrap()
        .trim()
        .to_string();
    let certs = tempfile::tempdir().unwrap();
    let log = std::fs::File::create(d.dir().join("edge.log")).unwrap();
    let _edge = ChildGuard::spawn(
        "edge",
        Command::new("nsenter")
            .args(["-t", &pid, "-n", &edge_bin()])
            .args([
                "--web-addr",
                "127.0.0.1:8081",
                "--websecure-addr",
                "127.0.0.1:8443",
            ])
            .args(["--admin-addr", "127.0.0.1:8090", "--https-port", "8443"])
            .arg("--cert-dir")
            .arg(certs.path())
            .args(["--swarm", "on", "--swarm-network", NET])
            .env("DOCKER_HOST", d.docker_host())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log),
    )
    .unwrap();

    d.run(&[
        "service",
        "create",
        "--detach",
        "--name",
        "demo",
        "--network",
        NET,
        "--replicas",
        "2",
        "--label",
        "edge.enable=true",
        "--label",
        "edge.port=8000",
        IMAGE,
        "/bin/b3-demo",
    ])
    .unwrap();
    let edge_log = || std::fs::read_to_string(d.dir().join("edge.log")).unwrap_or_default();
    let hosts = wait::until(
        "both tasks to answer through edge",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || {
            let h = answering(&pid, "demo.b3.swarm", 8);
            (h.len() == 2).then_some(h)
        },
    )
    .unwrap_or_else(|e| panic!("{e}\nedge log:\n{}", edge_log()));
    assert_eq!(hosts.len(), 2);
    // The admin API explains it too.
    let api = Command::new("nsenter")
        .args(["-t", &pid, "-n", "curl", "-s", "--max-time", "5"])
        .arg("http://127.0.0.1:8090/api/swarm/services/demo")
        .output()
        .unwrap();
    let api = String::from_utf8_lossy(&api.stdout);
    assert!(
        api.contains("\"status\": \"routed\"") && api.contains("routed to 2 servers"),
        "{api}"
    );

    // Scale to 4: four tasks answer; back to 1: one.
    d.run(&["service", "scale", "--detach", "demo=4"]).unwrap();
    wait::until(
        "4 tasks to answer",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || (answering(&pid, "demo.b3.swarm", 16).len() == 4).then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}\nedge log:\n{}", edge_log()));
    d.run(&["service", "scale", "--detach", "demo=1"]).unwrap();
    wait::until(
        "1 task to answer",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || (answering(&pid, "demo.b3.swarm", 6).len() == 1).then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}\nedge log:\n{}", edge_log()));

    // Rolling update under load: every request during the update succeeds.
    d.run(&["service", "scale", "--detach", "demo=2"]).unwrap();
    wait::until(
        "2 tasks to answer",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || (answering(&pid, "demo.b3.swarm", 8).len() == 2).then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}\nedge log:\n{}", edge_log()));
    let before = answering(&pid, "demo.b3.swarm", 8);
    d.run(&[
        "service",
        "update",
        "--detach",
        "--force",
        "--update-order",
        "start-first",
        "--update-parallelism",
        "1",
        "demo",
    ])
    .unwrap();
    let (mut ok, mut failed, mut after) = (0usize, Vec::new(), BTreeSet::new());
    let deadline = Instant::now() + Duration::from_secs(60);
    // Bounded: until both tasks are new ones (plus a few more requests), or 60 s.
    let mut extra = 20;
    while Instant::now() < deadline && extra > 0 {
        match curl(&pid, "demo.b3.swarm") {
            Some((200, body)) => {
                ok += 1;
                if let Some(h) = body.lines().find(|l| l.starts_with("hello from")) {
                    if !before.contains(h) {
                        after.insert(h.to_string());
                    }
                }
            }
            other => failed.push(other),
        }
        if after.len() == 2 {
            extra -= 1;
        }
    }
    assert!(
        failed.is_empty(),
        "{} failed of {}: {failed:?}\nedge log:\n{}",
        failed.len(),
        ok + failed.len(),
        edge_log()
    );
    assert_eq!(after.len(), 2, "the update did not finish: {ok} requests");
    eprintln!("rolling update: {ok} requests through edge, none failed");

    // Remove: 404 within a second.
    let t = Instant::now();
    d.run(&["service", "rm", "demo"]).unwrap();
    wait::until(
        "404 after service rm",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || matches!(curl(&pid, "demo.b3.swarm"), Some((404, _))).then_some(()),
    )
    .unwrap();
    let took = t.elapsed();
    assert!(took < Duration::from_secs(1), "404 after {took:?}");

    // edge explain, as an operator would run it.
    let out = Command::new(edge_bin())
        .args(["--swarm-network", NET, "explain"])
        .env("DOCKER_HOST", d.docker_host())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("no Swarm services"), "{text}");
}
