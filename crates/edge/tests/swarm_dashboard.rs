//! The dashboard shows the Swarm provider's diagnostics, loaded in headless
//! Chromium against a real dockerd: a routed service and a service whose
//! labels are broken, with the label, the problem and the fix.

use std::process::{Command, Stdio};
use std::time::Duration;

mod common;
use common::chromium_dom;

use b3_tests::dockerd::Dockerd;
use b3_tests::http::{free_port, get};
use b3_tests::process::ChildGuard;
use b3_tests::wait;

const IMAGE: &str = "b3/busybox:test";
const NET: &str = "dashnet";

#[test]
fn swarm_dashboard_shows_routed_and_broken_services() {
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
    for (name, labels) in [
        ("good", vec!["edge.enable=true", "edge.port=8000"]),
        (
            "broken",
            vec![
                "traefik.enable=true",
                "traefik.http.routers.broken.rule=Host(broken.b3.swarm)",
                "traefik.http.services.broken.loadbalancer.server.port=8000",
            ],
        ),
    ] {
        let mut args = vec![
            "service",
            "create",
            "--detach",
            "--name",
            name,
            "--network",
            NET,
        ];
        for l in &labels {
            args.extend(["--label", l]);
        }
        args.extend([IMAGE, "/bin/b3-demo"]);
        d.run(&args).unwrap();
    }

    let admin = free_port().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let log = std::fs::File::create(d.dir().join("edge.log")).unwrap();
    let _edge = ChildGuard::spawn(
        "edge",
        Command::new(env!("CARGO_BIN_EXE_edge"))
            .arg("--web-addr")
            .arg(format!("127.0.0.1:{}", free_port().unwrap()))
            .arg("--websecure-addr")
            .arg(format!("127.0.0.1:{}", free_port().unwrap()))
            .arg("--admin-addr")
            .arg(format!("127.0.0.1:{admin}"))
            .arg("--cert-dir")
            .arg(certs.path())
            .args(["--swarm", "on", "--swarm-network", NET])
            .env("DOCKER_HOST", d.docker_host())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log),
    )
    .unwrap();
    let addr = format!("127.0.0.1:{admin}").parse().unwrap();
    wait::until(
        "both services in the Swarm diagnostics, good with a server",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || {
            let r = get(addr, "/api/swarm/services").ok()?;
            (r.status == 200 && r.body.contains("\"broken\"") && r.body.contains("\"routed\""))
                .then_some(())
        },
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e}\nedge log:\n{}",
            std::fs::read_to_string(d.dir().join("edge.log")).unwrap_or_default()
        )
    });

    let dom = chromium_dom(&format!("http://127.0.0.1:{admin}/dashboard/"));
    assert!(dom.contains("Swarm services"), "no Swarm section:\n{dom}");
    let row = |name: &str| {
        dom.split("<tr")
            .find(|r| r.contains("swarm-service") && r.contains(&format!("<td>{name}</td>")))
            .unwrap_or_else(|| panic!("no Swarm row for {name}:\n{dom}"))
            .to_string()
    };
    let good = row("good");
    assert!(
        good.contains("class=\"up\"") && good.contains("routed"),
        "{good}"
    );
    let broken = row("broken");
    assert!(broken.contains("class=\"down\""), "{broken}");
    assert!(
        broken.contains("traefik.http.routers.broken.rule")
            && broken.contains("write Host(`broken.b3.swarm`)"),
        "the broken row names the label and the fix: {broken}"
    );
}
