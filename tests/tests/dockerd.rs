//! The dockerd fixture: a real single-node swarm whose service answers HTTP
//! on its task IPs from a container on the same overlay network, and which
//! leaves nothing behind.

use std::time::Duration;

use b3_tests::dockerd::{mounts_under, Dockerd};
use b3_tests::wait;

#[test]
fn swarm_service_answers_on_its_task_ips_and_teardown_is_clean() {
    let docker = Dockerd::start().unwrap();
    docker.swarm_init().unwrap();
    docker.import_busybox("b3/busybox:test").unwrap();
    docker
        .run(&[
            "network",
            "create",
            "--driver",
            "overlay",
            "--attachable",
            "labnet",
        ])
        .unwrap();
    docker
        .run(&[
            "service",
            "create",
            "--detach",
            "--name",
            "demo",
            "--network",
            "labnet",
            "--replicas",
            "2",
            "b3/busybox:test",
            "/bin/b3-demo",
        ])
        .unwrap();
    let ips = wait::until(
        "2 running demo tasks",
        Duration::from_secs(60),
        Duration::from_millis(250),
        || {
            let ips = docker.task_ips("demo", "labnet").ok()?;
            (ips.len() == 2).then_some(ips)
        },
    )
    .unwrap();

    // Ask each task from a container on the same overlay network.
    let script = ips
        .iter()
        .map(|ip| format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {ip} 8000"))
        .collect::<Vec<_>>()
        .join("; ");
    let out = wait::until(
        "both tasks to answer",
        Duration::from_secs(30),
        Duration::from_millis(500),
        || {
            let out = docker
                .run(&[
                    "run",
                    "--rm",
                    "--network",
                    "labnet",
                    "b3/busybox:test",
                    "sh",
                    "-c",
                    &script,
                ])
                .ok()?;
            (out.matches("hello from").count() == 2).then_some(out)
        },
    )
    .unwrap();
    let hosts: std::collections::BTreeSet<&str> = out
        .lines()
        .filter(|l| l.starts_with("hello from"))
        .collect();
    assert_eq!(hosts.len(), 2, "two distinct tasks answered: {out}");

    // Swarm DNS lists every task.
    let dns = docker
        .run(&[
            "run",
            "--rm",
            "--network",
            "labnet",
            "b3/busybox:test",
            "nslookup",
            "tasks.demo",
        ])
        .unwrap();
    for ip in &ips {
        assert!(dns.contains(ip.as_str()), "tasks.demo lists {ip}: {dns}");
    }

    let dir = docker.dir().to_path_buf();
    let pidfile = std::fs::read_to_string(dir.join("docker.pid")).unwrap();
    let pid: u32 = pidfile.trim().parse().unwrap();
    drop(docker);

    assert!(!b3_tests::pid_alive(pid), "dockerd still running");
    assert!(
        mounts_under(&dir).is_empty(),
        "mounts left: {:?}",
        mounts_under(&dir)
    );
    assert!(!dir.exists(), "fixture directory left behind");
    let leftovers: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).into_owned())
        .filter(|c| c.contains(dir.to_string_lossy().as_ref()))
        .collect();
    assert!(leftovers.is_empty(), "processes left: {leftovers:?}");
}
