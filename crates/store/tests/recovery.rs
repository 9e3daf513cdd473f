//! Fault injection with real processes: kill -9, corrupt chunk files, a
//! wiped data directory, a full disk, kills during writes and during
//! recovery, and a bounded kill/restart soak. After each: the data set
//! reads back bit-exact, `store status` is healthy again within a bounded
//! time, and every chunk has exactly `size` copies.

mod harness;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::{data, http, run, Cluster};

/// Short failure timings so tests finish in seconds.
const FAST: &[&str] = &[
    "--down-after",
    "2s",
    "--out-after",
    "3s",
    "--recovery-interval",
    "3s",
];

/// A data set: (object path, content).
type DataSet = Vec<(String, Vec<u8>)>;

/// Multi-chunk, one-chunk and just-over-inline objects.
fn write_dataset(c: &Cluster, node: usize, prefix: &str) -> DataSet {
    let sizes = [
        (5 << 20) + 123,
        300 << 10,
        9000,
        (2 << 20) - 7,
        64 << 10,
        5000,
    ];
    let mut set = Vec::new();
    for (i, len) in sizes.iter().enumerate() {
        let path = format!("/objects/{prefix}/obj-{i}");
        let body = data(*len, i as u64 + 1000 * prefix.len() as u64);
        let (code, resp) = c.put(node, &path, &body);
        assert_eq!(code, 200, "{}", String::from_utf8_lossy(&resp));
        set.push((path, body));
    }
    set
}

fn verify(c: &Cluster, node: usize, set: &DataSet) {
    for (path, want) in set {
        let (code, got) = c.get(node, path);
        assert_eq!(
            code,
            200,
            "GET {path} on node {node}: {}",
            String::from_utf8_lossy(&got)
        );
        assert!(got == *want, "{path} differs when read from node {node}");
    }
}

fn exactly(c: &Cluster, live: &[usize], size: usize) -> bool {
    let m = c.copies(live);
    !m.is_empty() && m.values().all(|n| *n == size)
}

fn maint(c: &Cluster, i: usize) -> Option<serde_json::Value> {
    let (code, _, body) = http(c.nodes[i].admin, "GET", "/v1/maint", &[], b"").ok()?;
    (code == 200).then(|| serde_json::from_slice(&body).ok())?
}

fn healthy(c: &Cluster, i: usize) -> bool {
    c.status(i).is_some_and(|s| s["health"] == "HEALTH_OK")
}

/// Healthy, settled (nothing to move) and exactly `size` copies.
fn wait_clean(c: &Cluster, at: usize, live: &[usize], size: usize, limit: Duration, what: &str) {
    let mut last_print = Instant::now();
    c.wait_for(limit, what, |c| {
        if last_print.elapsed() > Duration::from_secs(10) {
            last_print = Instant::now();
            let mut hist: HashMap<usize, usize> = HashMap::new();
            for n in c.copies(live).values() {
                *hist.entry(*n).or_default() += 1;
            }
            eprintln!(
                "waiting for {what}: status {:?}; maint {:?}; copies histogram {hist:?}",
                c.status(at).map(|s| s["checks"].clone()),
                maint(c, at).map(|m| (
                    m["pgs_recovering"].clone(),
                    m["chunks_to_move"].clone(),
                    m["nodes_peering"].clone()
                ))
            );
        }
        let m = maint(c, at)?;
        let settled = m["pgs_recovering"] == 0 && m["chunks_to_move"] == 0;
        (healthy(c, at) && settled && exactly(c, live, size)).then_some(())
    });
}

fn status_text(c: &Cluster, i: usize) -> String {
    let out = run(&["status", "--server", &c.nodes[i].admin.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn a_killed_node_is_re_replicated_and_backfilled_when_it_returns() {
    let mut c = Cluster::start(4, &[], FAST);
    let set = write_dataset(&c, 0, "kill");
    wait_clean(
        &c,
        0,
        &[0, 1, 2, 3],
        3,
        Duration::from_secs(30),
        "clean before the kill",
    );

    c.kill9(3);
    // Down first, then out; status says so.
    c.wait_for(Duration::from_secs(15), "node 3 reported down", |c| {
        let s = c.status(0)?;
        let checks = s["checks"].to_string();
        (s["health"] == "HEALTH_WARN" && checks.contains("down for")).then_some(())
    });
    // The survivors hold three copies of everything.
    c.wait_for(
        Duration::from_secs(60),
        "three copies on the survivors",
        |c| {
            let m = maint(c, 0)?;
            (m["pgs_recovering"] == 0 && m["chunks_to_move"] == 0 && exactly(c, &[0, 1, 2], 3))
                .then_some(())
        },
    );
    let text = status_text(&c, 1);
    assert!(
        text.contains("recovery:") && text.contains("down:"),
        "{text}"
    );
    assert!(text.contains("out"), "{text}");
    verify(&c, 1, &set);
    let s = c.status(2).unwrap();
    assert!(s["maint"]["chunks_moved"].as_u64().unwrap() > 0, "{s}");

    // It comes back: marked in again, surplus copies go, exactly 3 remain.
    c.spawn(3);
    wait_clean(
        &c,
        0,
        &[0, 1, 2, 3],
        3,
        Duration::from_secs(60),
        "healthy with the node back",
    );
    verify(&c, 3, &set);
}

#[test]
fn scrub_finds_corrupt_and_missing_copies_and_repairs_them() {
    let c = Cluster::start(3, &[], FAST);
    let set = write_dataset(&c, 0, "scrub");
    wait_clean(&c, 0, &[0, 1, 2], 3, Duration::from_secs(30), "clean");
    let mut files = c.chunk_files(1);
    files.sort();
    assert!(files.len() >= 6, "{files:?}");
    // Flip bytes in three copies, truncate one, delete two.
    for f in &files[0..3] {
        let mut raw = std::fs::read(f).unwrap();
        let mid = raw.len() / 2;
        raw[mid] ^= 0x5a;
        std::fs::write(f, &raw).unwrap();
    }
    let raw = std::fs::read(&files[3]).unwrap();
    std::fs::write(&files[3], &raw[..raw.len() / 3]).unwrap();
    std::fs::remove_file(&files[4]).unwrap();
    std::fs::remove_file(&files[5]).unwrap();

    let server = c.nodes[1].admin.to_string();
    let out = run(&["scrub", "--server", &server]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("scrub finished"), "{stdout}");
    let m = maint(&c, 1).unwrap();
    assert_eq!(m["scrub"]["corrupt"], 4, "{m}");
    assert_eq!(m["scrub"]["repaired"], 4, "{m}");
    // Missing copies come back through the post-scrub comparison.
    wait_clean(
        &c,
        1,
        &[0, 1, 2],
        3,
        Duration::from_secs(30),
        "missing copies restored",
    );
    for f in &files[0..6] {
        assert!(f.exists(), "{} not restored", f.display());
    }
    // A second scrub finds nothing.
    let out = run(&["scrub", "--server", &server, "--json"]);
    assert!(out.status.success());
    let m = maint(&c, 1).unwrap();
    assert_eq!(m["scrub"]["corrupt"], 0, "{m}");
    verify(&c, 1, &set);
}

#[test]
fn a_node_wiped_and_rejoined_empty_gets_its_share_back() {
    let mut c = Cluster::start(3, &[], FAST);
    let set = write_dataset(&c, 0, "wipe");
    wait_clean(&c, 0, &[0, 1, 2], 3, Duration::from_secs(30), "clean");
    let old = c.node_id(2).unwrap();
    c.kill9(2);
    std::fs::remove_dir_all(&c.nodes[2].dir).unwrap();
    c.spawn(2); // rejoins with the token: a new node with an empty disk
    c.wait_for(Duration::from_secs(30), "new node 2 answers", |c| {
        let id = c.node_id(2)?;
        (id != old).then_some(())
    });
    let server = c.nodes[0].admin.to_string();
    let out = run(&[
        "node",
        "remove",
        &format!("{old:016x}"),
        "--no-drain",
        "--server",
        &server,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_clean(
        &c,
        0,
        &[0, 1, 2],
        3,
        Duration::from_secs(60),
        "backfilled the new node",
    );
    verify(&c, 2, &set);
}

struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "mounting a tmpfs (tests run as root)");
        Tmpfs { dir }
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

/// Grows `filler` until the filesystem at `dir` is `ratio` used.
fn fill_to(dir: &std::path::Path, filler: &std::path::Path, ratio: f64) {
    let st = nix_statvfs(dir);
    let (total, avail) = st;
    let used = total - avail;
    let target = (total as f64 * ratio) as u64;
    let add = target.saturating_sub(used);
    let cur = std::fs::metadata(filler).map(|m| m.len()).unwrap_or(0);
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(filler)
        .unwrap();
    use std::io::Write;
    let mut w = std::io::BufWriter::new(f);
    let block = vec![0xabu8; 1 << 20];
    let mut left = add;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        w.write_all(&block[..n]).unwrap();
        left -= n as u64;
    }
    w.flush().unwrap();
    let _ = cur;
}

fn nix_statvfs(dir: &std::path::Path) -> (u64, u64) {
    let out = std::process::Command::new("df")
        .args(["-B1", "--output=size,avail"])
        .arg(dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().nth(1).unwrap();
    let mut it = line.split_whitespace().map(|v| v.parse::<u64>().unwrap());
    (it.next().unwrap(), it.next().unwrap())
}

#[test]
fn a_full_node_refuses_writes_with_507_and_recovers_when_space_returns() {
    let small = Tmpfs::mount("64m");
    let dir2: PathBuf = small.dir.path().join("node2");
    let mut c = Cluster::start_with(3, &[], FAST, |i, node| {
        if i == 2 {
            node.dir = dir2.clone();
        }
    });
    let set = write_dataset(&c, 0, "full");
    let filler = small.dir.path().join("filler");

    // Near full: a warning, writes go on.
    fill_to(small.dir.path(), &filler, 0.87);
    c.wait_for(Duration::from_secs(15), "near-full warning", |c| {
        let s = c.status(0)?;
        (s["health"] == "HEALTH_WARN" && s["checks"].to_string().contains("near full"))
            .then_some(())
    });
    assert_eq!(
        c.put(1, "/objects/full/while-nearfull", &data(100_000, 9))
            .0,
        200
    );

    // Full: writes refused with 507 and a message saying why.
    fill_to(small.dir.path(), &filler, 0.97);
    c.wait_for(Duration::from_secs(15), "full error", |c| {
        let s = c.status(1)?;
        (s["health"] == "HEALTH_ERR" && s["checks"].to_string().contains("is full")).then_some(())
    });
    let (code, body) = c.put(1, "/objects/full/refused", &data(200_000, 10));
    let msg = String::from_utf8_lossy(&body);
    assert_eq!(code, 507, "{msg}");
    assert!(
        msg.contains("full") && msg.contains("no space left"),
        "{msg}"
    );
    assert_eq!(c.get(0, "/objects/full/refused").0, 404);
    // Reads still work.
    verify(&c, 2, &set);

    // Space returns: writes work again, health returns.
    std::fs::remove_file(&filler).unwrap();
    c.wait_for(
        Duration::from_secs(20),
        "healthy after freeing space, seen from every node",
        |c| (0..3).all(|i| healthy(c, i)).then_some(()),
    );
    assert_eq!(c.put(1, "/objects/full/after", &data(200_000, 11)).0, 200);
    wait_clean(
        &c,
        0,
        &[0, 1, 2],
        3,
        Duration::from_secs(30),
        "clean after full",
    );
    verify(&c, 1, &set);
    for i in 0..3 {
        c.kill9(i);
    }
    drop(c);
    drop(small);
}

#[test]
fn kills_during_a_large_write_and_during_recovery_lose_nothing_acknowledged() {
    let mut args: Vec<&str> = FAST.to_vec();
    args.extend_from_slice(&["--recovery-bandwidth", "2MiB", "--recovery-max-active", "1"]);
    let mut c = Cluster::start(4, &[], &args);
    let base = write_dataset(&c, 0, "base");
    let admin = c.nodes[0].admin;
    let acked: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let writer = {
        let acked = acked.clone();
        std::thread::spawn(move || {
            for i in 0..24u64 {
                let path = format!("/objects/big/{i}");
                let body = data((3 << 20) + i as usize, 500 + i);
                if let Ok((200, _, _)) = http(admin, "PUT", &path, &[], &body) {
                    acked.lock().unwrap().push((path, 500 + i));
                }
            }
        })
    };
    c.wait_for(
        Duration::from_secs(90),
        "a dozen writes acknowledged",
        |_| (acked.lock().unwrap().len() >= 12).then_some(()),
    );
    c.kill9(3);

    // Node 3 goes out; kill a node that is copying, mid-recovery (the
    // writer goes on meanwhile; writes to groups that lost two replicas
    // are refused, never acknowledged short).
    c.wait_for(Duration::from_secs(30), "recovery under way", |c| {
        let m = maint(c, 0)?;
        (m["chunks_to_move"].as_u64()? > 2).then_some(())
    });
    let text = status_text(&c, 0);
    assert!(text.contains("pgs recovering"), "{text}");
    c.kill9(1);
    std::thread::sleep(Duration::from_secs(3));
    c.spawn(1);
    writer.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 12,
        "only {} of 24 writes acknowledged",
        acked.len()
    );
    c.wait_for(Duration::from_secs(120), "three copies on nodes 0-2", |c| {
        let m = maint(c, 0)?;
        (m["pgs_recovering"] == 0 && m["chunks_to_move"] == 0 && exactly(c, &[0, 1, 2], 3))
            .then_some(())
    });
    c.spawn(3);
    wait_clean(
        &c,
        0,
        &[0, 1, 2, 3],
        3,
        Duration::from_secs(120),
        "clean with all back",
    );
    verify(&c, 2, &base);
    for (path, seed) in &acked {
        let i: usize = path.rsplit('/').next().unwrap().parse().unwrap();
        let (code, got) = c.get(3, path);
        assert_eq!(code, 200, "{path}");
        assert!(got == data((3 << 20) + i, *seed), "{path} damaged");
    }
}

#[test]
fn unreferenced_chunks_are_collected_after_the_delay_and_referenced_ones_kept() {
    let mut args: Vec<&str> = FAST.to_vec();
    args.extend_from_slice(&["--gc-delay", "30s", "--gc-interval", "2s"]);
    let c = Cluster::start(3, &[], &args);
    let set = write_dataset(&c, 0, "gc");
    wait_clean(&c, 0, &[0, 1, 2], 3, Duration::from_secs(30), "clean");
    // Plant two orphans (valid chunk files nothing references) on node 1:
    // one an hour old, one fresh.
    let template = c.chunk_files(1)[0].clone();
    let plant = |name: &str, age: Option<&str>| {
        let dir = c.nodes[1]
            .dir
            .join("chunks")
            .join(&name[0..2])
            .join(&name[2..4]);
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::copy(&template, &p).unwrap();
        if let Some(age) = age {
            let ok = std::process::Command::new("touch")
                .args(["-d", age])
                .arg(&p)
                .status()
                .unwrap()
                .success();
            assert!(ok);
        }
        p
    };
    let old = "0123456789abcdef0123456789abcdef";
    let fresh = "fedcba9876543210fedcba9876543210";
    plant(old, Some("1 hour ago"));
    plant(fresh, None);
    let start = Instant::now();
    c.wait_for(
        Duration::from_secs(30),
        "old orphan collected on every node",
        |c| {
            let m = c.copies(&[0, 1, 2]);
            (!m.contains_key(old)).then_some(())
        },
    );
    assert!(start.elapsed() < Duration::from_secs(25));
    // The fresh orphan is younger than --gc-delay: still there.
    assert!(c.copies(&[0, 1, 2]).contains_key(fresh));
    c.wait_for(Duration::from_secs(5), "GC reported in status", |c| {
        let s = c.status(0)?;
        (s["maint"]["gc_deleted"].as_u64()? >= 1).then_some(())
    });
    // Referenced chunks untouched.
    verify(&c, 2, &set);
    let m = c.copies(&[0, 1, 2]);
    assert!(
        m.iter()
            .filter(|(k, _)| k.as_str() != fresh)
            .all(|(_, n)| *n == 3),
        "{m:?}"
    );
}

#[test]
fn node_remove_drains_first_with_progress() {
    let mut c = Cluster::start(4, &[], FAST);
    let set = write_dataset(&c, 0, "drain");
    wait_clean(&c, 0, &[0, 1, 2, 3], 3, Duration::from_secs(30), "clean");
    let id = format!("{:016x}", c.node_id(3).unwrap());
    assert!(!c.chunk_files(3).is_empty());
    let out = run(&[
        "node",
        "remove",
        &id,
        "--server",
        &c.nodes[0].admin.to_string(),
        "--timeout",
        "60s",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("drained") && stdout.contains("removed") && stdout.contains('%'),
        "{stdout}"
    );
    assert!(exactly(&c, &[0, 1, 2], 3));
    assert!(
        c.chunk_files(3).is_empty(),
        "drained node still holds chunks"
    );
    c.kill9(3);
    c.wait_for(Duration::from_secs(30), "healthy without the node", |c| {
        healthy(c, 0).then_some(())
    });
    verify(&c, 1, &set);
    // Bad input: a clear error, nothing changes.
    let out = run(&[
        "node",
        "out",
        "zz",
        "--server",
        &c.nodes[0].admin.to_string(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not hexadecimal"));
    let out = run(&["server", "--full-ratio", "0.5", "--nearfull-ratio", "0.9"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--nearfull-ratio"));
}

/// Bounded soak: nodes killed and restarted in a loop under a mixed load.
/// `STORE_SOAK_ROUNDS` (default 3) sets the number of kill/restart rounds.
#[test]
fn soak_kill_restart_loop_loses_no_acknowledged_data() {
    let rounds: usize = std::env::var("STORE_SOAK_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .min(50);
    let mut c = Cluster::start(4, &[], FAST);
    let admins: Vec<_> = c.nodes.iter().map(|n| n.admin).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<(String, usize, u64)>>> = Arc::default();
    let bad_reads = Arc::new(Mutex::new(Vec::<String>::new()));
    let load = {
        let (stop, acked, bad_reads) = (stop.clone(), acked.clone(), bad_reads.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            let mut failed = 0;
            while !stop.load(Ordering::SeqCst) && i < 300 {
                let path = format!("/objects/soak/{i}");
                let len = [700_000usize, 5000, (4 << 20) + 10][i as usize % 3];
                // Writes and reads go to node 0, which is never killed.
                match http(admins[0], "PUT", &path, &[], &data(len, i)) {
                    Ok((200, _, _)) => acked.lock().unwrap().push((path, len, i)),
                    _ => failed += 1,
                }
                let sample = {
                    let a = acked.lock().unwrap();
                    a.get((i as usize * 7919) % a.len().max(1)).cloned()
                };
                if let Some((p, l, s)) = sample {
                    if let Ok((200, _, got)) = http(admins[0], "GET", &p, &[], b"") {
                        if got != data(l, s) {
                            bad_reads.lock().unwrap().push(p);
                        }
                    }
                }
                i += 1;
            }
            failed
        })
    };
    let deadline = Instant::now() + Duration::from_secs(240);
    for r in 0..rounds {
        if Instant::now() > deadline {
            break;
        }
        let victim = 1 + r % 3;
        c.kill9(victim);
        std::thread::sleep(Duration::from_secs(8));
        c.spawn(victim);
        std::thread::sleep(Duration::from_secs(6));
    }
    stop.store(true, Ordering::SeqCst);
    let failed_writes = load.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    eprintln!(
        "soak: {} writes acknowledged, {failed_writes} refused",
        acked.len()
    );
    assert!(
        bad_reads.lock().unwrap().is_empty(),
        "wrong data read: {:?}",
        bad_reads.lock().unwrap()
    );
    assert!(acked.len() > 10);
    wait_clean(
        &c,
        0,
        &[0, 1, 2, 3],
        3,
        Duration::from_secs(120),
        "clean after the soak",
    );
    for (p, l, s) in &acked {
        let (code, got) = c.get(2, p);
        assert_eq!(code, 200, "{p}");
        assert!(got == data(*l, *s), "{p} damaged");
    }
}
