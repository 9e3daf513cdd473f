//! Multi-process cluster tests on loopback: init, join, objects, Raft
//! failover, catch-up, bad input.

mod harness;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use harness::{data, http, run, Cluster};

fn chunk_copies(c: &Cluster) -> HashMap<String, Vec<usize>> {
    let mut copies: HashMap<String, Vec<usize>> = HashMap::new();
    for i in 0..c.nodes.len() {
        for f in c.chunk_files(i) {
            let name = f.file_name().unwrap().to_string_lossy().to_string();
            copies.entry(name).or_default().push(i);
        }
    }
    copies
}

#[test]
fn three_nodes_round_trip_objects_with_three_copies() {
    let c = Cluster::start(3, &[], &[]);

    // Status through the CLI, as a user would run it.
    let out = run(&[
        "status",
        "--server",
        &c.nodes[1].admin.to_string(),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["health"], "HEALTH_OK", "{s}");
    assert_eq!(s["nodes_total"], 3);
    assert_eq!(s["pgs_clean"], 256);
    let out = run(&["nodes", "--server", &c.nodes[2].admin.to_string()]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert_eq!(table.matches(" up ").count(), 3, "{table}");
    assert!(table.contains("leader"), "{table}");

    // A multi-chunk object written on node 1, read on nodes 2 and 0.
    let big = data(9 << 20, 1);
    let (code, body) = c.put(1, "/objects/photos/2024/big.bin", &big);
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let (code, got) = c.get(2, "/objects/photos/2024/big.bin");
    assert_eq!(code, 200);
    assert!(got == big, "content differs");
    let (code, _, part) = http(
        c.nodes[0].admin,
        "GET",
        "/objects/photos/2024/big.bin",
        &[("Range", "bytes=4194000-4194999")],
        b"",
    )
    .unwrap();
    assert_eq!(code, 206);
    assert_eq!(part, &big[4194000..4195000]);
    let (code, head, body) = http(
        c.nodes[0].admin,
        "HEAD",
        "/objects/photos/2024/big.bin",
        &[],
        b"",
    )
    .unwrap();
    assert_eq!(code, 200);
    assert!(
        head.contains(&format!("content-length: {}", big.len())),
        "{head}"
    );
    assert!(body.is_empty());

    for i in 0..5 {
        let (code, _) = c.put(
            i % 3,
            &format!("/objects/photos/small/{i}"),
            &data(5000, i as u64),
        );
        assert_eq!(code, 200);
    }
    let (code, list) = c.get(2, "/objects/photos?prefix=small/&limit=3");
    assert_eq!(code, 200);
    let list: serde_json::Value = serde_json::from_slice(&list).unwrap();
    let keys: Vec<_> = list["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(keys, vec!["small/0", "small/1", "small/2"]);
    assert_eq!(list["truncated"], true);

    // Every chunk is on exactly `size` nodes, in distinct failure domains
    // (each node is its own domain here).
    let copies = chunk_copies(&c);
    assert_eq!(copies.len(), 3 + 5, "{copies:?}");
    for (id, nodes) in &copies {
        let mut distinct = nodes.clone();
        distinct.dedup();
        assert_eq!(distinct.len(), 3, "chunk {id} on {nodes:?}");
    }

    // Delete frees the chunks and the key.
    let (code, _, _) = http(
        c.nodes[2].admin,
        "DELETE",
        "/objects/photos/2024/big.bin",
        &[],
        b"",
    )
    .unwrap();
    assert_eq!(code, 204);
    assert_eq!(c.get(0, "/objects/photos/2024/big.bin").0, 404);
    let (code, _, _) = http(
        c.nodes[2].admin,
        "DELETE",
        "/objects/photos/2024/big.bin",
        &[],
        b"",
    )
    .unwrap();
    assert_eq!(code, 404);
    c.wait_for(
        Duration::from_secs(10),
        "chunks of the deleted object freed",
        |c| (chunk_copies(c).len() == 5).then_some(()),
    );

    // Small objects live in the metadata: no chunk files, ranges work.
    let tiny = data(3000, 42);
    assert_eq!(c.put(1, "/objects/photos/tiny", &tiny).0, 200);
    assert_eq!(chunk_copies(&c).len(), 5);
    assert_eq!(c.get(2, "/objects/photos/tiny").1, tiny);
    let (code, _, part) = http(
        c.nodes[0].admin,
        "GET",
        "/objects/photos/tiny",
        &[("Range", "bytes=-10")],
        b"",
    )
    .unwrap();
    assert_eq!(code, 206);
    assert_eq!(part, &tiny[2990..]);
    assert_eq!(c.put(1, "/objects/photos/empty", b"").0, 200);
    let (code, empty) = c.get(0, "/objects/photos/empty");
    assert_eq!((code, empty.len()), (200, 0));

    // df sees all three nodes.
    let out = run(&["df", "--server", &c.nodes[0].admin.to_string(), "--json"]);
    let df: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(df["nodes"].as_array().unwrap().len(), 3);
    assert_eq!(df["objects"], 7);
    // Metrics mirror the status.
    let (_, _, m) = http(c.nodes[0].admin, "GET", "/metrics", &[], b"").unwrap();
    let m = String::from_utf8_lossy(&m);
    assert!(m.contains("store_raft_has_leader 1"), "{m}");
}

#[test]
fn five_nodes_have_five_voters_and_place_three_copies() {
    let c = Cluster::start(5, &[], &[]);
    let s = c.status(3).unwrap();
    assert_eq!(s["raft"]["voters"].as_array().unwrap().len(), 5);
    for i in 0..10u64 {
        let (code, _) = c.put(
            i as usize % 5,
            &format!("/objects/b/{i}"),
            &data(100_000, i),
        );
        assert_eq!(code, 200);
    }
    let copies = chunk_copies(&c);
    assert_eq!(copies.len(), 10);
    let mut used = std::collections::HashSet::new();
    for nodes in copies.values() {
        assert_eq!(nodes.len(), 3, "{nodes:?}");
        used.extend(nodes.iter().copied());
    }
    assert!(
        used.len() >= 4,
        "placement should spread over the nodes: {used:?}"
    );
    for i in 0..10u64 {
        assert_eq!(
            c.get((i as usize + 2) % 5, &format!("/objects/b/{i}")).1,
            data(100_000, i)
        );
    }
}

#[test]
fn killing_the_leader_elects_another_and_loses_no_acknowledged_write() {
    let mut c = Cluster::start(3, &[], &[]);
    let leader = c.leader_index().expect("a leader");
    let mut acked = Vec::new();
    for i in 0..20u64 {
        let (code, _) = c.put(i as usize % 3, &format!("/objects/k/{i}"), &data(5000, i));
        assert_eq!(code, 200);
        acked.push(i);
    }
    let old = c.node_id(leader).unwrap();
    c.kill9(leader);
    let t = Instant::now();
    let survivor = (leader + 1) % 3;
    c.wait_for(Duration::from_secs(15), "a new leader", |c| {
        let s = c.status(survivor)?;
        let l = s["raft"]["leader"].as_u64()?;
        (l != old).then_some(())
    });
    let elapsed = t.elapsed();
    assert!(
        elapsed < Duration::from_secs(8),
        "election took {elapsed:?}"
    );
    eprintln!("new leader after {elapsed:?}");
    for i in &acked {
        let (code, body) = c.get(survivor, &format!("/objects/k/{i}"));
        assert_eq!(code, 200, "object {i} lost");
        assert_eq!(body, data(5000, *i));
    }
    // Two of three nodes still take writes (min_size 2), after the dead
    // node is noticed.
    let other = (leader + 2) % 3;
    c.wait_for(
        Duration::from_secs(15),
        "writes accepted by the survivors",
        |c| (c.put(other, "/objects/k/after", b"still here").0 == 200).then_some(()),
    );
    assert_eq!(c.get(survivor, "/objects/k/after").1, b"still here");
}

#[test]
fn a_minority_cannot_commit() {
    let c = Cluster::start(3, &[], &[]);
    let (code, _) = c.put(0, "/objects/m/before", b"x");
    assert_eq!(code, 200);
    // Freeze two nodes: node 0 alone is a minority.
    c.signal(1, libc::SIGSTOP);
    c.signal(2, libc::SIGSTOP);
    let t = Instant::now();
    let (code, _, body) = http(c.nodes[0].admin, "DELETE", "/objects/m/before", &[], b"").unwrap();
    assert_eq!(code, 503, "{}", String::from_utf8_lossy(&body));
    assert!(
        String::from_utf8_lossy(&body).contains("quorum"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert!(t.elapsed() < Duration::from_secs(20));
    // Reads need the quorum too (linearizable).
    assert_eq!(c.get(0, "/objects/m/before").0, 503);
    let s = c.status(0).unwrap();
    assert_ne!(s["health"], "HEALTH_OK");
    // Heal: the majority works again.
    c.signal(1, libc::SIGCONT);
    c.signal(2, libc::SIGCONT);
    c.wait_for(Duration::from_secs(20), "writes after healing", |c| {
        (c.put(1, "/objects/m/after", b"y").0 == 200).then_some(())
    });
}

#[test]
fn a_restarted_node_catches_up_from_a_snapshot() {
    let mut c = Cluster::start(3, &[], &["--snapshot-every", "20"]);
    let leader = c.leader_index().unwrap();
    let follower = (leader + 1) % 3;
    c.kill9(follower);
    for i in 0..60u64 {
        let (code, body) = c.put(leader, &format!("/objects/s/{i}"), &data(1000, i));
        assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    }
    let leader_status = c.status(leader).unwrap();
    assert!(
        leader_status["raft"]["snapshot_index"].as_u64().is_some(),
        "{leader_status}"
    );
    c.spawn(follower);
    c.wait_for(Duration::from_secs(30), "restarted node caught up", |c| {
        let s = c.status(follower)?;
        (s["objects"].as_u64()? == 60 && s["raft"]["snapshot_index"].as_u64().is_some())
            .then_some(())
    });
    for i in [0u64, 31, 59] {
        assert_eq!(c.get(follower, &format!("/objects/s/{i}")).1, data(1000, i));
    }
}

#[test]
fn bad_join_tokens_are_refused_clearly() {
    let mut c = Cluster::start(1, &["--size", "1", "--min-size", "1"], &[]);
    let dir0 = c.nodes[0].dir.display().to_string();
    let peers = c.nodes[0].quic.to_string();
    let join = |token: &str, name: &str| {
        let dir = c.tmp.path().join(name);
        run(&[
            "server",
            "--data-dir",
            &dir.display().to_string(),
            "--listen",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
            "--join",
            token,
            "--peers",
            &peers,
        ])
    };
    // Forged secret.
    let good = c.token.clone();
    let mut forged = good.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'a' { 'b' } else { 'a' });
    let out = join(&forged, "forged");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refused") && err.contains("secret is wrong"),
        "{err}"
    );
    // Expired.
    let out = run(&["join-token", "--data-dir", &dir0, "--ttl", "1s"]);
    let expired = String::from_utf8_lossy(&out.stdout).trim().to_string();
    std::thread::sleep(Duration::from_millis(2100));
    let out = join(&expired, "expired");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("expired") && err.contains("store join-token"),
        "{err}"
    );
    // A token of another cluster: the server's CA does not match the pin.
    let other = c.tmp.path().join("other");
    assert!(run(&["init", "--data-dir", &other.display().to_string()])
        .status
        .success());
    let out = run(&["join-token", "--data-dir", &other.display().to_string()]);
    let foreign = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let out = join(&foreign, "foreign");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a node of the cluster"), "{err}");
    // Garbage.
    let out = join("hello", "garbage");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("malformed"));
    // None of them got an identity.
    for d in ["forged", "expired", "foreign", "garbage"] {
        assert!(
            !c.tmp.path().join(d).join("identity/node.json").exists(),
            "{d}"
        );
    }
    // The cluster is unaffected.
    assert_eq!(c.status(0).unwrap()["nodes_total"], 1);
    c.kill9(0);
}

#[test]
fn a_corrupt_chunk_is_served_from_another_replica_and_repaired() {
    let c = Cluster::start(3, &[], &[]);
    let body = data(300_000, 7);
    assert_eq!(c.put(0, "/objects/c/obj", &body).0, 200);
    // Corrupt node 1's copy; a read on node 1 tries its local copy first.
    let files = c.chunk_files(1);
    assert_eq!(files.len(), 1);
    let mut raw = std::fs::read(&files[0]).unwrap();
    raw[1000] ^= 0x55;
    std::fs::write(&files[0], &raw).unwrap();
    let (code, got) = c.get(1, "/objects/c/obj");
    assert_eq!(code, 200);
    assert!(got == body, "served corrupt data");
    // Reported in the metrics, and the bad copy rewritten from a good one.
    c.wait_for(Duration::from_secs(10), "corrupt copy repaired", |_| {
        let raw = std::fs::read(&files[0]).ok()?;
        let (d, crc) = raw.split_at(raw.len() - 4);
        (crc32fast::hash(d).to_le_bytes() == crc && d == &body[..]).then_some(())
    });
    let (_, _, m) = http(c.nodes[1].admin, "GET", "/metrics", &[], b"").unwrap();
    let m = String::from_utf8_lossy(&m);
    assert!(m.contains("store_chunk_corrupt_total 1"), "{m}");
    assert!(m.contains("store_chunk_repairs_total 1"), "{m}");
}

#[test]
fn truncated_requests_store_nothing_and_break_nothing() {
    let c = Cluster::start(3, &[], &[]);
    // HTTP: announce 1 MB, send 10 bytes, hang up.
    {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(c.nodes[0].admin).unwrap();
        s.write_all(b"PUT /objects/t/partial HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n0123456789")
            .unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(c.get(1, "/objects/t/partial").0, 404);

    // QUIC: a member sends a truncated frame, then a malformed one.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let id = store::net::Identity::require(&c.nodes[0].dir).unwrap();
    rt.block_on(async {
        let t = store::net::Transport::client(id.client_config().unwrap()).unwrap();
        let addr = c.nodes[1].quic;
        let full = store::net::wire::encode(b"{\"Ping\":null}", b"");
        let err = t
            .call_raw(addr, &full[..6], Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(!err.to_string().is_empty());
        let frame = t
            .call(addr, b"{not json", b"", Duration::from_secs(5))
            .await
            .unwrap();
        let reply = String::from_utf8_lossy(&frame.header);
        assert!(reply.contains("Malformed"), "{reply}");
        // And the node still answers a well-formed request.
        let frame = t
            .call(addr, b"\"Ping\"", b"", Duration::from_secs(5))
            .await
            .unwrap();
        assert!(String::from_utf8_lossy(&frame.header).contains("Pong"));
    });
    assert_eq!(c.put(1, "/objects/t/after", b"ok").0, 200);
}

#[test]
fn a_peer_without_a_certificate_gets_nothing_but_join() {
    let c = Cluster::start(1, &["--size", "1", "--min-size", "1"], &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let cfg = store::net::identity::join_client_config(&c.token).unwrap();
        let t = store::net::Transport::client(cfg).unwrap();
        let frame = t
            .call(c.nodes[0].quic, b"\"Ping\"", b"", Duration::from_secs(5))
            .await
            .unwrap();
        let reply = String::from_utf8_lossy(&frame.header);
        assert!(reply.contains("Unauthenticated"), "{reply}");
    });
}

/// A small tmpfs, unmounted (and its mount point removed) on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs { dir })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[test]
fn a_full_disk_is_a_clear_error_and_nothing_unstored_is_acknowledged() {
    let Some(small) = Tmpfs::mount("40m") else {
        eprintln!("SKIP: cannot mount a tmpfs here (needs root)");
        return;
    };
    let full_dir = small.dir.path().join("node2");
    // min_size 3: every copy is needed, so the full node blocks writes.
    let c = Cluster::start_with(3, &["--size", "3", "--min-size", "3"], &[], |i, node| {
        if i == 2 {
            node.dir = full_dir.clone();
        }
    });
    let mut acked = Vec::new();
    let mut refusal = None;
    for i in 0..30u64 {
        let body = data(4 << 20, i);
        let (code, resp) = c.put(0, &format!("/objects/full/{i}"), &body);
        if code == 200 {
            acked.push(i);
        } else {
            refusal = Some((i, code, String::from_utf8_lossy(&resp).to_string()));
            break;
        }
    }
    let (failed, code, msg) = refusal.expect("the 40 MiB disk never filled up");
    assert_eq!(code, 507, "{msg}");
    assert!(msg.contains("no space left"), "{msg}");
    assert!(!acked.is_empty());
    // Every acknowledged object is intact; the refused one does not exist.
    for i in &acked {
        let (code, got) = c.get(1, &format!("/objects/full/{i}"));
        assert_eq!(code, 200);
        assert!(got == data(4 << 20, *i), "object {i} damaged");
    }
    assert_eq!(c.get(1, &format!("/objects/full/{failed}")).0, 404);
    drop(c);
}

#[test]
fn nodes_can_be_taken_out_and_removed() {
    let mut c = Cluster::start(4, &[], &[]);
    let server = c.nodes[0].admin.to_string();
    let id1 = format!("{:016x}", c.node_id(1).unwrap());
    let out = run(&["out", &id1, "--server", &server]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = c.chunk_files(1).len();
    for i in 0..12u64 {
        assert_eq!(
            c.put(0, &format!("/objects/o/{i}"), &data(10_000, i)).0,
            200
        );
    }
    assert_eq!(c.chunk_files(1).len(), before, "an out node got new chunks");
    let out = run(&["in", &id1, "--server", &server]);
    assert!(out.status.success());

    // Remove a stopped node: it leaves the map and the metadata group.
    let id3 = c.node_id(3).unwrap();
    c.kill9(3);
    let out = run(&["remove-node", &format!("{id3:016x}"), "--server", &server]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.wait_for(
        Duration::from_secs(20),
        "node removed from map and Raft",
        |c| {
            let s = c.status(0)?;
            let in_raft = s["raft"]["voters"]
                .as_array()?
                .iter()
                .chain(s["raft"]["learners"].as_array()?.iter())
                .any(|v| v.as_u64() == Some(id3));
            (s["nodes_total"] == 3 && !in_raft && s["health"] == "HEALTH_OK").then_some(())
        },
    );
    let out = run(&["remove-node", "zz", "--server", &server]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not hexadecimal"));
}

#[test]
fn a_dead_voter_is_replaced_so_the_next_failure_is_survived() {
    let mut c = Cluster::start(4, &[], &["--voter-grace", "3s"]);
    assert_eq!(c.put(0, "/objects/v/a", b"a").0, 200);
    assert_eq!(c.put(0, "/objects/v/b", b"b").0, 200);
    let ids: Vec<u64> = (0..4).map(|i| c.node_id(i).unwrap()).collect();
    let s = c.status(0).unwrap();
    let voters: Vec<u64> = s["raft"]["voters"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_u64())
        .collect();
    let leader = c.leader_index().unwrap();
    let victim = (0..4)
        .find(|i| *i != leader && voters.contains(&ids[*i]))
        .unwrap();
    c.kill9(victim);
    let alive = (0..4).find(|i| *i != victim).unwrap();
    c.wait_for(
        Duration::from_secs(30),
        "dead voter replaced by the learner",
        |c| {
            let s = c.status(alive)?;
            let v: Vec<u64> = s["raft"]["voters"]
                .as_array()?
                .iter()
                .filter_map(|v| v.as_u64())
                .collect();
            (v.len() == 3 && !v.contains(&ids[victim])).then_some(())
        },
    );
    // Now lose a second original voter: the group still has a majority.
    let leader = c.leader_index().unwrap();
    let s = c.status(leader).unwrap();
    let voters: Vec<u64> = s["raft"]["voters"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_u64())
        .collect();
    let second = (0..4)
        .find(|i| *i != leader && *i != victim && voters.contains(&ids[*i]))
        .unwrap();
    c.kill9(second);
    let (code, _, body) = http(c.nodes[leader].admin, "DELETE", "/objects/v/a", &[], b"").unwrap();
    assert_eq!(code, 204, "{}", String::from_utf8_lossy(&body));
}

#[test]
fn command_line_mistakes_get_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("d").display().to_string();
    let out = run(&[
        "server",
        "--data-dir",
        &d,
        "--listen",
        "127.0.0.1:0",
        "--admin-addr",
        "127.0.0.1:0",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("store init") && err.contains("--join"),
        "{err}"
    );

    let out = run(&["init", "--data-dir", &d, "--size", "2", "--min-size", "3"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("min_size must be at most size"));

    assert!(run(&["init", "--data-dir", &d]).status.success());
    let out = run(&["init", "--data-dir", &d]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already holds a cluster identity"));

    let out = run(&["status", "--server", "127.0.0.1:1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is `store server` running"));

    let out = run(&[
        "join-token",
        "--data-dir",
        &tmp.path().join("none").display().to_string(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("store init"));
}

/// A report piped into a reader that goes away (`store … | head`) ends
/// the command by SIGPIPE, as for other Unix tools, not with a panic.
#[test]
fn a_closed_stdout_ends_a_report_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("d").display().to_string();
    assert!(run(&["init", "--data-dir", &d]).status.success());
    let mut fds = [0; 2];
    // SAFETY: pipe fills the two fds.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: fds[1] is ours; the read end is closed before the child runs.
    let write_end =
        unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fds[1]) };
    unsafe { libc::close(fds[0]) };
    let out = std::process::Command::new(harness::bin())
        .args(["join-token", "--data-dir", &d])
        .stdout(write_end)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "{:?} {err}",
        out.status
    );
}
