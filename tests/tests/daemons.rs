//! Every binary behaves like a daemon operators can trust: `--help` and
//! `--version`, flags over environment over defaults, JSON logs on request,
//! `/health` and `/metrics` on its admin port, a clean exit on SIGTERM and
//! SIGINT, and a config mistake that exits 2 naming the bad value.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use b3_tests::bins::bin;
use b3_tests::http::{free_port, get};
use b3_tests::process::ChildGuard;
use b3_tests::wait;

/// The binaries, each with the arguments that run its daemon in a test
/// (fresh loopback ports, no privileged ports, state under `dir`) and the
/// environment variable of its `--admin-addr`.
fn daemons(dir: &std::path::Path) -> Vec<(&'static str, Vec<String>, &'static str)> {
    let port = || free_port().unwrap().to_string();
    let store_dir = dir.join("store");
    if !store_dir.exists() {
        let out = Command::new(bin("store").unwrap())
            .args(["init", "--data-dir"])
            .arg(&store_dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "store init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    vec![
        (
            "store",
            vec![
                "server".into(),
                "--data-dir".into(),
                store_dir.display().to_string(),
                "--listen".into(),
                format!("127.0.0.1:{}", port()),
            ],
            "STORE_ADMIN_ADDR",
        ),
        (
            "edge",
            vec![
                "--web-addr".into(),
                format!("127.0.0.1:{}", port()),
                "--websecure-addr".into(),
                format!("127.0.0.1:{}", port()),
                "--cert-dir".into(),
                dir.join("edge-certs").display().to_string(),
            ],
            "EDGE_ADMIN_ADDR",
        ),
        ("vip", vec![], "VIP_ADMIN_ADDR"),
    ]
}

fn wait_healthy(name: &str, addr: SocketAddr) -> anyhow::Result<()> {
    wait::until(
        &format!("{name} to answer on {addr}/health"),
        Duration::from_secs(20),
        Duration::from_millis(50),
        || get(addr, "/health").ok().filter(|r| r.status == 200),
    )?;
    Ok(())
}

#[test]
fn help_and_version() {
    for name in ["store", "edge", "vip"] {
        let path = bin(name).unwrap();
        let out = Command::new(&path).arg("--version").output().unwrap();
        assert!(out.status.success(), "{name} --version");
        let v = String::from_utf8_lossy(&out.stdout);
        assert!(
            v.starts_with(&format!("{name} ")) && v.contains(env!("CARGO_PKG_VERSION")),
            "{v}"
        );
        let out = Command::new(&path).arg("--help").output().unwrap();
        assert!(out.status.success(), "{name} --help");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            help.contains("--log-level") && help.contains("--log-format"),
            "{name}: {help}"
        );
    }
}

#[test]
fn health_metrics_and_clean_shutdown_on_both_signals() {
    let tmp = tempfile::tempdir().unwrap();
    for signal in [libc::SIGTERM, libc::SIGINT] {
        for (name, args, _) in daemons(tmp.path()) {
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port().unwrap())
                .parse()
                .unwrap();
            let mut child = ChildGuard::spawn(
                name,
                Command::new(bin(name).unwrap())
                    .args(&args)
                    .arg("--admin-addr")
                    .arg(addr.to_string())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null()),
            )
            .unwrap();
            wait_healthy(name, addr).unwrap();
            let health = get(addr, "/health").unwrap();
            assert!(
                health.body.contains(&format!("\"binary\": \"{name}\"")),
                "{}",
                health.body
            );
            let metrics = get(addr, "/metrics").unwrap();
            assert_eq!(metrics.status, 200);
            assert!(
                metrics
                    .body
                    .contains(&format!("b3_build_info{{binary=\"{name}\"")),
                "{name} metrics: {}",
                metrics.body
            );
            child.signal(signal).unwrap();
            let status = child.wait_timeout(Duration::from_secs(10)).unwrap();
            assert!(
                status.success(),
                "{name} exits 0 on signal {signal}: {status}"
            );
            assert!(get(addr, "/health").is_err(), "{name} stopped listening");
        }
    }
}

#[test]
fn flag_beats_environment_beats_default() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, args, env) in daemons(tmp.path()) {
        let from_env: SocketAddr = format!("127.0.0.1:{}", free_port().unwrap())
            .parse()
            .unwrap();
        let from_flag: SocketAddr = format!("127.0.0.1:{}", free_port().unwrap())
            .parse()
            .unwrap();

        // Environment only.
        let mut child = ChildGuard::spawn(
            name,
            Command::new(bin(name).unwrap())
                .args(&args)
                .env(env, from_env.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
        .unwrap();
        wait_healthy(name, from_env).unwrap();
        child.kill();

        // Flag and environment: the flag wins.
        let mut child = ChildGuard::spawn(
            name,
            Command::new(bin(name).unwrap())
                .args(&args)
                .arg("--admin-addr")
                .arg(from_flag.to_string())
                .env(env, from_env.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
        .unwrap();
        wait_healthy(name, from_flag).unwrap();
        assert!(
            get(from_env, "/health").is_err(),
            "{name}: env address must not be used when the flag is given"
        );
        child.kill();
    }
}

#[test]
fn config_mistakes_exit_2_and_name_the_value() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, args, env) in daemons(tmp.path()) {
        let out = Command::new(bin(name).unwrap())
            .args(&args)
            .env(env, "not-an-address")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{name}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("not-an-address") && err.contains("--admin-addr"),
            "{name}: {err}"
        );

        let out = Command::new(bin(name).unwrap())
            .args(&args)
            .args(["--log-level", "store=shouty"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{name}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("store=shouty"), "{name}: {err}");
    }
}

#[test]
fn json_logs_are_one_object_per_line() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, args, _) in daemons(tmp.path()) {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port().unwrap())
            .parse()
            .unwrap();
        let log = tmp.path().join(format!("{name}.log"));
        let mut child = ChildGuard::spawn(
            name,
            Command::new(bin(name).unwrap())
                .args(&args)
                .args([
                    "--log-format",
                    "json",
                    "--log-level",
                    "info",
                    "--admin-addr",
                ])
                .arg(addr.to_string())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap()),
        )
        .unwrap();
        wait_healthy(name, addr).unwrap();
        child.signal(libc::SIGTERM).unwrap();
        child.wait_timeout(Duration::from_secs(10)).unwrap();
        let text = std::fs::read_to_string(&log).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(!lines.is_empty(), "{name} logged nothing");
        for line in lines {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{name}: not JSON ({e}): {line}"));
            assert!(
                v.get("level").is_some() && v.get("timestamp").is_some(),
                "{line}"
            );
        }
    }
}
