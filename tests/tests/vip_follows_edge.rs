//! The stack's promise across binaries: the floating IP sits on a node
//! whose edge works. Two lab hosts each run `edge` on :443 and `vip
//! --check-edge`; when the master's edge dies, its vip goes to FAULT and
//! the other node takes the address; when that edge comes back, so does
//! the address (preemption).

use std::time::Duration;

use b3_tests::bins::bin;
use b3_tests::netlab::{Host, Lab};
use b3_tests::process::ChildGuard;
use b3_tests::wait;

const VIP: &str = "10.77.0.100";

fn holds_vip(host: &Host) -> bool {
    host.run(&["ip", "-4", "addr", "show", "dev", "eth0"])
        .map(|out| out.contains(&format!("inet {VIP}/")))
        .unwrap_or(false)
}

fn start_edge(host: &Host, certs: &std::path::Path) -> ChildGuard {
    let edge = bin("edge").unwrap();
    host.spawn(
        "edge",
        &[
            edge.to_str().unwrap(),
            "--websecure-addr",
            "0.0.0.0:443",
            "--web-addr",
            "0.0.0.0:80",
            "--admin-addr",
            "127.0.0.1:8080",
            "--cert-dir",
            certs.to_str().unwrap(),
            "--log-level",
            "warn",
        ],
    )
    .unwrap()
}

fn holder(lab: &Lab, what: &str, want: usize) {
    wait::until(
        what,
        Duration::from_secs(20),
        Duration::from_millis(50),
        || {
            let held: Vec<usize> = (0..2).filter(|&i| holds_vip(lab.host(i))).collect();
            (held == [want]).then_some(())
        },
    )
    .unwrap();
}

#[test]
fn the_floating_ip_follows_a_working_edge() {
    let lab = Lab::new(2).unwrap();
    let certs = tempfile::tempdir().unwrap();
    let vip = bin("vip").unwrap();
    let mut edges: Vec<ChildGuard> = (0..2)
        .map(|i| start_edge(lab.host(i), certs.path()))
        .collect();
    let _agents: Vec<ChildGuard> = (0..2)
        .map(|i| {
            lab.host(i)
                .spawn(
                    "vip",
                    &[
                        vip.to_str().unwrap(),
                        "--interface",
                        "eth0",
                        "--virtual-ip",
                        &format!("{VIP}/24"),
                        "--priority",
                        if i == 0 { "150" } else { "100" },
                        "--check-edge",
                        "--admin-addr",
                        "127.0.0.1:7410",
                        "--log-level",
                        "warn",
                    ],
                )
                .unwrap()
        })
        .collect();

    holder(&lab, "host 0 (higher priority, edge up) to hold the VIP", 0);

    // Host 0's edge dies: its vip must give the address up.
    edges[0].kill();
    holder(&lab, "host 1 to take the VIP after host 0's edge died", 1);

    // Host 0's edge comes back: preemption returns the address.
    edges[0] = start_edge(lab.host(0), certs.path());
    holder(&lab, "host 0 to take the VIP back once its edge works", 0);
    drop(edges);
}
