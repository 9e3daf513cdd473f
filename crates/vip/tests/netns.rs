//! The agent for real, in network namespaces: three agents and a client on
//! one bridge. Who holds the VIP is read from each host's addresses every
//! couple of milliseconds; the client checks that the VIP answers from the
//! right host (TCP to a responder on each agent host).

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use common::*;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use vip::packet::{self, Advert};

const CLIENT: usize = 3;
const SECS: fn(u64) -> Duration = Duration::from_secs;

fn three_agents(extra: [&[&str]; 3]) -> Cluster {
    let mut c = Cluster::new(4, 3);
    for i in 0..3 {
        responder(&c.lab, i);
    }
    let prios = ["150", "100", "50"];
    for i in 0..3 {
        let mut args = vec!["--priority", prios[i]];
        args.extend_from_slice(extra[i]);
        c.start(i, &args);
    }
    c
}

#[test]
fn one_holder_then_kill_9_then_clean_stop_and_preemption() {
    let mut c = three_agents([&[], &[], &[]]);
    let converged = c.wait_holder(0, SECS(10), Duration::from_millis(500));
    assert_eq!(reach(&c.lab, CLIENT), Some(0));

    // kill -9 the master: h1 takes over and the client reaches it.
    let t_kill = Instant::now();
    c.crash(0);
    let took = until_reached(&c.lab, CLIENT, 1, SECS(5));
    eprintln!("kill -9 failover: client reached h1 after {took:?}");
    assert!(took < SECS(2), "failover took {took:?}\n{}", c.logs());
    c.wait_holder(1, SECS(5), Duration::from_millis(300));
    assert_eq!(
        c.max_holders_since(converged),
        1,
        "two live holders at once\n{}",
        c.logs()
    );

    // Restart h0: it removes its left-over address, then preempts back.
    let t_restart = Instant::now();
    c.start(0, &["--priority", "150"]);
    c.wait_holder(0, SECS(10), Duration::from_millis(300));
    assert_eq!(reach(&c.lab, CLIENT), Some(0));
    assert!(t_restart > t_kill);

    // Preemption is the one hand-over where the new master adds the VIP a
    // moment before the old one hears its advert and removes it.
    let overlap = c.longest_overlap(t_restart, Instant::now());
    eprintln!("preemption overlap: {overlap:?}");
    assert!(
        overlap < Duration::from_millis(100),
        "{overlap:?}\n{}",
        c.logs()
    );

    // Clean stop: a priority-0 advert hands over at once.
    let t_stop = Instant::now();
    c.stop(0);
    c.wait_holder(1, SECS(5), Duration::from_millis(300));
    let t_took = c
        .first_holding(1, t_stop)
        .unwrap_or_else(|| panic!("h1 never held\n{}", c.logs()));
    let handover = t_took.saturating_duration_since(t_stop);
    eprintln!("clean-stop hand-over: {handover:?}");
    assert!(handover < Duration::from_millis(500), "{handover:?}");
    assert!(c.max_holders_since(t_stop) <= 1, "{}", c.logs());
    assert_eq!(reach(&c.lab, CLIENT), Some(1));
    assert_eq!(
        holders(&c.lab, &[0, 1, 2]),
        vec![1],
        "h0 removed its VIP on stop"
    );
}

#[test]
fn link_down_on_the_master_moves_the_vip() {
    // h0 also runs a notify hook that records each transition.
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("notify.sh");
    let record = dir.path().join("transitions");
    std::fs::write(
        &script,
        format!("#!/bin/sh\necho \"$*\" >> {}\n", record.display()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let notify = script.display().to_string();
    let c = three_agents([&["--notify", &notify], &[], &[]]);
    let converged = c.wait_holder(0, SECS(10), Duration::from_millis(300));
    c.lab.link_down(0).unwrap();
    let t = Instant::now();
    c.wait_holder(1, SECS(5), Duration::from_millis(300));
    // h0 saw its carrier go and dropped the VIP (FAULT), not just lost it.
    b3_tests::wait::until(
        "h0 to drop the VIP",
        SECS(5),
        Duration::from_millis(20),
        || (!holders(&c.lab, &[0]).contains(&0)).then_some(()),
    )
    .unwrap();
    assert_eq!(c.status(0)["state"], "FAULT");
    until_reached(&c.lab, CLIENT, 1, SECS(5));
    eprintln!("link-down failover: {:?}", t.elapsed());
    assert!(c.max_holders_since(converged) <= 1, "{}", c.logs());

    c.lab.link_up(0).unwrap();
    c.wait_holder(0, SECS(10), Duration::from_millis(300));
    until_reached(&c.lab, CLIENT, 0, SECS(5));

    let want = [
        "INSTANCE VI_51 BACKUP 150",
        "INSTANCE VI_51 MASTER 150",
        "INSTANCE VI_51 FAULT 150",
        "INSTANCE VI_51 BACKUP 150",
        "INSTANCE VI_51 MASTER 150",
    ];
    let got = b3_tests::wait::until(
        "the notify hook",
        SECS(5),
        Duration::from_millis(20),
        || {
            let text = read(&record);
            (text.lines().count() >= want.len()).then_some(text)
        },
    )
    .unwrap();
    assert_eq!(got.lines().collect::<Vec<_>>(), want);
}

#[test]
fn nopreempt_keeps_the_new_master() {
    let np: &[&str] = &["--nopreempt"];
    let mut c = three_agents([np, np, np]);
    c.wait_holder(0, SECS(10), Duration::from_millis(300));
    c.crash(0);
    c.wait_holder(1, SECS(5), Duration::from_millis(300));
    c.start(0, &["--priority", "150", "--nopreempt"]);
    let back = Instant::now();
    // Well past h0's Master_Down_Interval: h1 keeps the VIP.
    std::thread::sleep(SECS(2));
    assert_eq!(c.max_holders_since(back), 1);
    let s = c.samples_since(back + Duration::from_millis(50));
    assert!(s.iter().all(|(_, h)| h == &[1]), "{}", c.logs());
    assert_eq!(c.status(0)["state"], "BACKUP");
    assert_eq!(reach(&c.lab, CLIENT), Some(1));
}

#[test]
fn failing_health_checks_move_the_vip() {
    let dir = tempfile::tempdir().unwrap();
    let weighted = dir.path().join("weighted-ok");
    let fatal = dir.path().join("fatal-ok");
    std::fs::write(&weighted, "").unwrap();
    std::fs::write(&fatal, "").unwrap();
    let w = format!(
        "cmd:test -f {},weight=-60,interval=100ms,fall=1,rise=1",
        weighted.display()
    );
    let f = format!(
        "cmd:test -f {},interval=100ms,fall=1,rise=1",
        fatal.display()
    );
    let h0: Vec<&str> = vec!["--check", &w, "--check", &f];
    let c = three_agents([&h0, &[], &[]]);
    c.wait_holder(0, SECS(10), Duration::from_millis(300));

    // A weighted check fails: 150 - 60 = 90 < 100, h1 preempts.
    std::fs::remove_file(&weighted).unwrap();
    c.wait_holder(1, SECS(5), Duration::from_millis(300));
    assert_eq!(c.status(0)["effective_priority"], 90);
    until_reached(&c.lab, CLIENT, 1, SECS(5));
    std::fs::write(&weighted, "").unwrap();
    c.wait_holder(0, SECS(5), Duration::from_millis(300));

    // A check without weight fails: FAULT, never master.
    std::fs::remove_file(&fatal).unwrap();
    c.wait_holder(1, SECS(5), Duration::from_millis(300));
    assert_eq!(c.status(0)["state"], "FAULT");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(c.status(0)["state"], "FAULT");
    std::fs::write(&fatal, "").unwrap();
    c.wait_holder(0, SECS(5), Duration::from_millis(300));
    until_reached(&c.lab, CLIENT, 0, SECS(5));
}

#[test]
fn split_network_heals_to_one_master() {
    let c = three_agents([&[], &[], &[]]);
    c.wait_holder(0, SECS(10), Duration::from_millis(300));
    // Take h0's port off the bridge: both ends keep carrier, so neither
    // side sees a fault — a real split brain.
    let sw = format!("{}-sw", c.lab.name());
    b3_tests::run(
        std::process::Command::new("ip").args(["-n", &sw, "link", "set", "p0", "nomaster"]),
    )
    .unwrap();
    b3_tests::wait::until(
        "both sides to have a master",
        SECS(5),
        Duration::from_millis(20),
        || (holders(&c.lab, &[0, 1, 2]) == vec![0, 1]).then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    b3_tests::run(
        std::process::Command::new("ip").args(["-n", &sw, "link", "set", "p0", "master", "br0"]),
    )
    .unwrap();
    let healed = Instant::now();
    let one = c.wait_holder(0, SECS(5), Duration::from_millis(500));
    eprintln!(
        "split healed to one master in {:?}",
        one.saturating_duration_since(healed)
    );
    assert!(one.saturating_duration_since(healed) < SECS(1));
    until_reached(&c.lab, CLIENT, 0, SECS(5));
}

/// Sends raw IPv4 packets (header included) from host `from` to `dst`.
fn inject(c: &Cluster, from: usize, packets: Vec<Vec<u8>>, dst: Ipv4Addr) {
    in_ns(c.lab.host(from).ns(), move || {
        let s = Socket::new(
            Domain::IPV4,
            Type::RAW,
            Some(Protocol::from(libc::IPPROTO_RAW)),
        )
        .expect("raw socket");
        for p in &packets {
            s.send_to(p, &SockAddr::from(SocketAddrV4::new(dst, 0)))
                .expect("send");
        }
    });
}

#[test]
fn bad_packets_are_dropped_counted_and_change_nothing() {
    // Unicast between h0 and h1; h3 is a stranger on the same LAN.
    let (h0, h1, h3) = (
        Ipv4Addr::new(10, 77, 0, 1),
        Ipv4Addr::new(10, 77, 0, 2),
        Ipv4Addr::new(10, 77, 0, 4),
    );
    let mut c = Cluster::new(4, 2);
    c.start(0, &["--priority", "150", "--peer", &h1.to_string()]);
    c.start(1, &["--priority", "100", "--peer", &h0.to_string()]);
    c.wait_holder(0, SECS(10), Duration::from_millis(300));
    let before = c.status(0);

    // Each would make h0 step down if it were accepted (priority 254).
    let good = |vrid: u8, src: Ipv4Addr| {
        Advert {
            vrid,
            priority: 254,
            max_adver_int: 10,
            addresses: vec![VIP],
        }
        .encode(src, h0)
        .unwrap()
    };
    let mut bad_sum = good(51, h1);
    bad_sum[6] ^= 0xff;
    let mut v2 = good(51, h1);
    v2[0] = 0x21;
    let packets = vec![
        // Spoofed from the peer h1, but broken in one way each.
        packet::ipv4_packet(h1, h0, 255, &good(51, h1)[..5]), // truncated
        packet::ipv4_packet(h1, h0, 255, &good(52, h1)),      // wrong VRID
        packet::ipv4_packet(h1, h0, 254, &good(51, h1)),      // crossed a router
        packet::ipv4_packet(h1, h0, 255, &bad_sum),           // bad checksum
        packet::ipv4_packet(h1, h0, 255, &v2),                // VRRPv2
        // Valid, but from a host that is not a peer.
        packet::ipv4_packet(h3, h0, 255, &good(51, h3)),
    ];
    // Resolve h0's MAC first: packets sent while ARP is pending may be
    // dropped by the injecting host's own kernel.
    c.lab
        .host(CLIENT)
        .run(&["ping", "-c1", "-W2", &h0.to_string()])
        .unwrap();
    for _ in 0..3 {
        inject(&c, CLIENT, packets.clone(), h0);
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let after = c.status(0);
    assert_eq!(after["state"], "MASTER");
    assert_eq!(after["transitions"], before["transitions"]);
    let dropped = &after["adverts_dropped"];
    for reason in [
        "malformed",
        "vrid",
        "ttl",
        "checksum",
        "version",
        "not_peer",
    ] {
        assert!(
            dropped[reason].as_u64().unwrap_or(0) >= 3,
            "{reason} not counted: {dropped}"
        );
    }
    assert_eq!(c.status(1)["state"], "BACKUP");
    // And it is all in the metrics too.
    let metrics = http_get(&c.lab, 0, "/metrics");
    for reason in [
        "malformed",
        "vrid",
        "ttl",
        "checksum",
        "version",
        "not_peer",
    ] {
        let line = format!("vip_adverts_dropped_total{{reason=\"{reason}\"}} ");
        let n: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        assert!(n >= 3, "{reason}: {metrics}");
    }
    assert!(c.max_holders_since(c.t0) <= 1);
    c.crash(1);
}

/// The osixia/keepalived `docker run -e KEEPALIVED_…` configuration, with
/// no flag at all: unicast peers and VIPs in the `#PYTHON2BASH` form.
#[test]
fn keepalived_environment_alone_configures_a_unicast_group() {
    let mut c = Cluster::new(4, 3);
    for i in 0..3 {
        responder(&c.lab, i);
    }
    let ips = ["10.77.0.1", "10.77.0.2", "10.77.0.3"];
    for (i, prio) in ["150", "100", "50"].into_iter().enumerate() {
        // Every node gets the same list, its own address included, as in
        // osixia's examples.
        let peers: Vec<String> = ips.iter().map(|ip| format!("'{ip}'")).collect();
        let env = [
            ("KEEPALIVED_INTERFACE", "eth0".to_string()),
            ("KEEPALIVED_ROUTER_ID", "77".to_string()),
            ("KEEPALIVED_PRIORITY", prio.to_string()),
            (
                "KEEPALIVED_STATE",
                if i == 0 { "MASTER" } else { "BACKUP" }.to_string(),
            ),
            ("KEEPALIVED_PASSWORD", "d0cker".to_string()),
            (
                "KEEPALIVED_UNICAST_PEERS",
                format!("#PYTHON2BASH:[{}]", peers.join(", ")),
            ),
            (
                "KEEPALIVED_VIRTUAL_IPS",
                format!("#PYTHON2BASH:['{VIP}/24 dev eth0']"),
            ),
        ];
        c.start_with(i, &[], &env);
    }
    c.wait_holder(0, SECS(10), Duration::from_millis(300));
    let st = c.status(1);
    assert_eq!(st["mode"], "unicast");
    assert_eq!(st["vrid"], 77);
    assert_eq!(st["master"], "10.77.0.1");
    assert_eq!(st["peers"], serde_json::json!(["10.77.0.1", "10.77.0.3"]));
    assert!(st["adverts_dropped"].get("own").is_none(), "{st}");
    assert!(read(&c.log(0)).contains("KEEPALIVED_PASSWORD is ignored"));
    c.crash(0);
    until_reached(&c.lab, CLIENT, 1, SECS(5));
}
