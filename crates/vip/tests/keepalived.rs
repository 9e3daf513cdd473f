//! Interop on the wire with the real keepalived (Debian's 2.2.7, VRRPv3):
//! a mixed group elects one master and hands the VIP over in both
//! directions, and neither side reports a protocol error.

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::*;

const SECS: fn(u64) -> Duration = Duration::from_secs;
/// Lines keepalived prints when it dislikes a packet.
const COMPLAINTS: &[&str] = &[
    "invalid",
    "checksum",
    "mismatch",
    "error",
    "not present",
    "ttl",
    "malformed",
    "bad ",
    "wrong",
];

fn mixed_group(unicast: bool) {
    let ips: Vec<Ipv4Addr> = (1..=3).map(|i| Ipv4Addr::new(10, 77, 0, i)).collect();
    let peers_of = |i: usize| -> Vec<Ipv4Addr> {
        if unicast {
            ips.iter()
                .copied()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, a)| a)
                .collect()
        } else {
            Vec::new()
        }
    };
    let ours = |c: &mut Cluster, i: usize, prio: &str| {
        let mut args = vec![
            "--priority".to_string(),
            prio.to_string(),
            "--advert-int".into(),
            "100".into(),
        ];
        for p in peers_of(i) {
            args.push("--peer".into());
            args.push(p.to_string());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        c.start(i, &args);
    };
    let mut c = Cluster::new(4, 3);
    for i in 0..3 {
        responder(&c.lab, i);
    }
    c.start_keepalived(0, 150, &peers_of(0));
    ours(&mut c, 1, "100");
    ours(&mut c, 2, "120");

    // keepalived has the highest priority: it wins.
    let converged = c.wait_holder(0, SECS(15), SECS(1));
    assert_eq!(c.status(1)["master"], "10.77.0.1");
    assert_eq!(c.status(2)["state"], "BACKUP");
    assert_eq!(reach(&c.lab, 3), Some(0));

    // keepalived stops (priority 0): our h2 takes over at once.
    let t = Instant::now();
    c.stop(0);
    c.wait_holder(2, SECS(5), Duration::from_millis(300));
    let took = c
        .first_holding(2, t)
        .map(|x| x.saturating_duration_since(t));
    eprintln!("keepalived -> vip hand-over: {took:?}");
    assert!(took.is_some_and(|d| d < SECS(2)), "{took:?}\n{}", c.logs());
    assert!(c.max_holders_since(converged) <= 1, "{}", c.logs());

    // keepalived back at 110 respects our 120 master.
    c.start_keepalived(0, 110, &peers_of(0));
    std::thread::sleep(SECS(5));
    c.wait_holder(2, SECS(1), Duration::from_millis(300));
    let ka = read(&c.log(0));
    assert!(ka.contains("Entering BACKUP STATE"), "{ka}");

    // Our master stops: keepalived (110) beats our h1 (100).
    let t = Instant::now();
    c.stop(2);
    c.wait_holder(0, SECS(5), Duration::from_millis(300));
    let took = c
        .first_holding(0, t)
        .map(|x| x.saturating_duration_since(t));
    eprintln!("vip -> keepalived hand-over: {took:?}");
    assert!(took.is_some_and(|d| d < SECS(2)), "{took:?}\n{}", c.logs());
    until_reached(&c.lab, 3, 0, SECS(5));

    // Our h2 comes back at 120 and preempts keepalived.
    let t = Instant::now();
    ours(&mut c, 2, "120");
    c.wait_holder(2, SECS(10), Duration::from_millis(500));
    assert!(c.longest_overlap(t, Instant::now()) < Duration::from_millis(100));
    until_reached(&c.lab, 3, 2, SECS(5));
    let ka = read(&c.log(0));
    assert!(ka.contains("Entering BACKUP STATE"), "{ka}");

    // Nobody complained about anybody's packets.
    eprintln!("keepalived's log:\n{}", read(&c.log(0)));
    for line in read(&c.log(0)).lines() {
        let l = line.to_ascii_lowercase();
        assert!(
            !COMPLAINTS.iter().any(|w| l.contains(w)),
            "keepalived complained: {line}"
        );
    }
    for i in [1, 2] {
        let dropped = &c.status(i)["adverts_dropped"];
        for reason in [
            "malformed",
            "checksum",
            "version",
            "ttl",
            "address_count",
            "not_peer",
        ] {
            assert!(
                dropped.get(reason).is_none(),
                "h{i} dropped keepalived's packets: {dropped}"
            );
        }
        assert!(c.status(i)["adverts_received"].as_u64().unwrap_or(0) > 0);
    }
}

#[test]
fn mixed_group_with_keepalived_over_multicast() {
    mixed_group(false);
}

#[test]
fn mixed_group_with_keepalived_over_unicast() {
    mixed_group(true);
}
