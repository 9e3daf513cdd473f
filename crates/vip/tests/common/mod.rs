//! Shared fixtures of the namespace tests: agents on lab hosts, a sampler
//! that reads every host's addresses every couple of milliseconds (from a
//! thread moved into each namespace with setns), TCP responders and a
//! client inside the namespaces.
#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use b3_tests::netlab::Lab;
use b3_tests::process::ChildGuard;

/// The virtual IP every test uses.
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 100);
/// Port of the responders.
pub const PORT: u16 = 8080;

/// Runs `f` on a thread inside network namespace `ns`.
pub fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(&path);
            f()
        })
        .join()
        .expect("namespace thread panicked")
    })
}

/// Moves the calling thread into the namespace at `path`.
fn enter(path: &str) {
    let fd = File::open(path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
    // SAFETY: setns on a namespace descriptor we own; affects this thread only.
    let rc = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
}

/// Starts a TCP responder answering `h<i>\n` on 0.0.0.0:PORT in host `i`
/// (it answers on the VIP while the host holds it). Lives until the test
/// process ends.
pub fn responder(lab: &Lab, i: usize) {
    let path = format!("/run/netns/{}", lab.host(i).ns());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        enter(&path);
        let l = TcpListener::bind(("0.0.0.0", PORT)).expect("bind responder");
        tx.send(()).ok();
        for mut s in l.incoming().take(100_000).flatten() {
            let _ = s.write_all(format!("h{i}\n").as_bytes());
        }
    });
    rx.recv_timeout(Duration::from_secs(5))
        .expect("responder started");
}

/// From host `client`, connects to VIP:PORT and returns who answered.
pub fn reach(lab: &Lab, client: usize) -> Option<usize> {
    in_ns(lab.host(client).ns(), || {
        let mut s =
            TcpStream::connect_timeout(&SocketAddr::from((VIP, PORT)), Duration::from_millis(300))
                .ok()?;
        s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        out.trim().strip_prefix('h')?.parse().ok()
    })
}

/// GET `path` from the admin endpoint (127.0.0.1:7410) of host `i`.
pub fn http_get(lab: &Lab, i: usize, path: &str) -> String {
    try_http_get(lab, i, path).unwrap_or_else(|| panic!("GET {path} on h{i} failed"))
}

/// GET `path` from the admin endpoint of host `i`, `None` if unreachable.
pub fn try_http_get(lab: &Lab, i: usize, path: &str) -> Option<String> {
    in_ns(lab.host(i).ns(), || {
        let mut s = TcpStream::connect(("127.0.0.1", 7410)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    })
}

/// Polls `reach` until host `want` answers; returns the time it took.
pub fn until_reached(lab: &Lab, client: usize, want: usize, timeout: Duration) -> Duration {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if reach(lab, client) == Some(want) {
            return t0.elapsed();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("client h{client} did not reach h{want} on the VIP within {timeout:?}");
}

/// Hosts that have the VIP on eth0 right now (dead agents included).
pub fn holders(lab: &Lab, hosts: &[usize]) -> Vec<usize> {
    hosts
        .iter()
        .copied()
        .filter(|&i| {
            in_ns(lab.host(i).ns(), || {
                vip::net::ipv4_addresses("eth0")
                    .unwrap_or_default()
                    .contains(&VIP)
            })
        })
        .collect()
}

/// When, and which live hosts held the VIP.
pub type Sample = (Instant, Vec<usize>);

/// The agents of a test and the sampler watching them.
pub struct Cluster {
    pub lab: Lab,
    pub dir: tempfile::TempDir,
    pub agents: Vec<Option<ChildGuard>>,
    alive: Arc<Vec<AtomicBool>>,
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
    sampler: Option<std::thread::JoinHandle<()>>,
    pub t0: Instant,
}

impl Cluster {
    /// A lab of `hosts` hosts; agents may run on the first `agents`.
    pub fn new(hosts: usize, agents: usize) -> Cluster {
        let lab = Lab::new(hosts).expect("lab");
        let dir = tempfile::tempdir().expect("tempdir");
        let alive: Arc<Vec<AtomicBool>> =
            Arc::new((0..agents).map(|_| AtomicBool::new(false)).collect());
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let paths: Vec<String> = (0..agents)
            .map(|i| format!("/run/netns/{}", lab.host(i).ns()))
            .collect();
        let sampler = {
            let (alive, samples, stop) = (alive.clone(), samples.clone(), stop.clone());
            std::thread::spawn(move || {
                let fds: Vec<File> = paths.iter().map(|p| File::open(p).expect(p)).collect();
                let deadline = Instant::now() + Duration::from_secs(120);
                while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                    let mut held = Vec::new();
                    for (i, fd) in fds.iter().enumerate() {
                        // SAFETY: setns on a namespace descriptor we own.
                        if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                            continue;
                        }
                        let has = vip::net::ipv4_addresses("eth0")
                            .unwrap_or_default()
                            .contains(&VIP);
                        if has && alive[i].load(Ordering::SeqCst) {
                            held.push(i);
                        }
                    }
                    if let Ok(mut s) = samples.lock() {
                        s.push((Instant::now(), held));
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        };
        Cluster {
            lab,
            dir,
            agents: (0..agents).map(|_| None).collect(),
            alive,
            samples,
            stop,
            sampler: Some(sampler),
            t0: Instant::now(),
        }
    }

    /// Log file of agent `i`.
    pub fn log(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("vip-{i}.log"))
    }

    /// Starts the agent on host `i` with the VIP and `args`.
    pub fn start(&mut self, i: usize, args: &[&str]) {
        let mut full = vec!["--virtual-ip".to_string(), format!("{VIP}/24")];
        full.extend(args.iter().map(|a| a.to_string()));
        self.start_with(i, &full, &[]);
    }

    /// Starts the agent on host `i` with exactly `args` and environment
    /// `env` (the admin address and log level are added).
    pub fn start_with(&mut self, i: usize, args: &[String], env: &[(&str, String)]) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log(i))
            .expect("log file");
        let mut cmd = self.lab.host(i).command(env!("CARGO_BIN_EXE_vip"));
        cmd.args(["--admin-addr", "127.0.0.1:7410", "--log-level", "debug"])
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(log);
        let guard = ChildGuard::spawn(format!("vip on h{i}"), &mut cmd).expect("spawn vip");
        self.agents[i] = Some(guard);
        // Count it once VRRP runs: by then a left-over address from an
        // earlier kill -9 is gone (the agent removes it first thing).
        b3_tests::wait::until(
            &format!("vip on h{i} to start VRRP"),
            Duration::from_secs(10),
            Duration::from_millis(5),
            || {
                try_http_get(&self.lab, i, "/api/status")
                    .filter(|r| r.contains("\"vrrp_enabled\": true"))
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()));
        self.alive[i].store(true, Ordering::SeqCst);
    }

    /// Starts keepalived (VRRPv3, `advert_int 1`) on host `i` with the
    /// same VIP; unicast to `peers` when not empty. Its log is `log(i)`.
    pub fn start_keepalived(&mut self, i: usize, priority: u8, peers: &[Ipv4Addr]) {
        let conf = self.dir.path().join(format!("keepalived-{i}.conf"));
        let unicast = if peers.is_empty() {
            String::new()
        } else {
            let list: Vec<String> = peers.iter().map(|p| p.to_string()).collect();
            format!("  unicast_peer {{\n    {}\n  }}\n", list.join("\n    "))
        };
        std::fs::write(
            &conf,
            format!(
                "global_defs {{\n  vrrp_version 3\n  router_id ka{i}\n}}\n\
                 vrrp_instance VI_1 {{\n  state BACKUP\n  interface eth0\n  virtual_router_id 51\n  \
                 priority {priority}\n  advert_int 1\n{unicast}  virtual_ipaddress {{\n    {VIP}/24\n  }}\n}}\n"
            ),
        )
        .expect("write keepalived.conf");
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log(i))
            .expect("log file");
        let d = self.dir.path();
        let mut cmd = self.lab.host(i).command("keepalived");
        cmd.args(["--vrrp", "--dont-fork", "--log-console", "-f"])
            .arg(&conf)
            .arg("-p")
            .arg(d.join(format!("keepalived-{i}.pid")))
            .arg("-r")
            .arg(d.join(format!("keepalived-vrrp-{i}.pid")))
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        let guard = ChildGuard::spawn(format!("keepalived on h{i}"), &mut cmd).expect("keepalived");
        self.agents[i] = Some(guard);
        b3_tests::wait::until(
            "keepalived to start",
            Duration::from_secs(10),
            Duration::from_millis(10),
            || {
                read(&self.log(i))
                    .contains("Entering BACKUP STATE")
                    .then_some(())
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()));
        self.alive[i].store(true, Ordering::SeqCst);
    }

    /// kill -9 of agent `i`. Its address stays behind, as on a crashed
    /// host, so the sampler stops counting it.
    pub fn crash(&mut self, i: usize) {
        self.alive[i].store(false, Ordering::SeqCst);
        if let Some(mut g) = self.agents[i].take() {
            g.kill();
        }
    }

    /// SIGTERM of agent `i`; waits for it to exit 0.
    pub fn stop(&mut self, i: usize) {
        if let Some(mut g) = self.agents[i].take() {
            g.signal(libc::SIGTERM).expect("SIGTERM");
            let st = g.wait_timeout(Duration::from_secs(10)).expect("exit");
            assert!(st.success(), "vip on h{i} exited with {st}");
        }
        // Its address is gone now; keep counting it to prove that.
    }

    /// Samples since `from`.
    pub fn samples_since(&self, from: Instant) -> Vec<Sample> {
        self.samples
            .lock()
            .map(|s| s.iter().filter(|(t, _)| *t >= from).cloned().collect())
            .unwrap_or_default()
    }

    /// Most holders seen at once since `from`.
    pub fn max_holders_since(&self, from: Instant) -> usize {
        self.samples_since(from)
            .iter()
            .map(|(_, h)| h.len())
            .max()
            .unwrap_or(0)
    }

    /// Longest run of samples between `from` and `to` with more than one
    /// holder (zero if none).
    pub fn longest_overlap(&self, from: Instant, to: Instant) -> Duration {
        let mut longest = Duration::ZERO;
        let mut start: Option<Instant> = None;
        for (t, h) in self.samples_since(from).iter().filter(|(t, _)| *t <= to) {
            if h.len() > 1 {
                let s = *start.get_or_insert(*t);
                // A single sample counts as one sampling period.
                longest = longest.max(*t - s + Duration::from_millis(2));
            } else {
                start = None;
            }
        }
        longest
    }

    /// Waits until the sampler sees exactly `[i]` for `stable` in a row.
    pub fn wait_holder(&self, i: usize, timeout: Duration, stable: Duration) -> Instant {
        let start = Instant::now();
        loop {
            let samples = self.samples_since(start);
            let mut since: Option<Instant> = None;
            for (t, h) in &samples {
                if h == &[i] {
                    since.get_or_insert(*t);
                    if *t - since.unwrap_or(*t) >= stable {
                        return since.unwrap_or(*t);
                    }
                } else {
                    since = None;
                }
            }
            if start.elapsed() > timeout {
                let last = samples.last().map(|(_, h)| h.clone());
                panic!(
                    "h{i} did not become the only holder within {timeout:?}; last sample {last:?}\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// First time since `from` the holders were exactly `[i]`.
    pub fn first_holding(&self, i: usize, from: Instant) -> Option<Instant> {
        self.samples_since(from)
            .iter()
            .find(|(_, h)| h == &[i])
            .map(|(t, _)| *t)
    }

    /// Last time since `from` at which someone held the VIP before a gap.
    pub fn last_holding_before(&self, i: usize, from: Instant) -> Option<Instant> {
        self.samples_since(from)
            .iter()
            .take_while(|(_, h)| h.contains(&i))
            .map(|(t, _)| *t)
            .last()
    }

    /// `vip status --json` of agent `i`.
    pub fn status(&self, i: usize) -> serde_json::Value {
        let out = self
            .lab
            .host(i)
            .run(&[
                env!("CARGO_BIN_EXE_vip"),
                "status",
                "--json",
                "--admin-addr",
                "127.0.0.1:7410",
            ])
            .unwrap_or_else(|e| panic!("vip status on h{i}: {e}"));
        serde_json::from_str(&out).expect("status JSON")
    }

    /// The tails of every agent's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for i in 0..self.agents.len() {
            let text = std::fs::read_to_string(self.log(i)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().filter(|l| !l.contains("DEBUG")).collect();
            out.push_str(&format!("--- h{i} ---\n"));
            for l in &lines[lines.len().saturating_sub(15)..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(s) = self.sampler.take() {
            let _ = s.join();
        }
        for a in &mut self.agents {
            if let Some(mut g) = a.take() {
                g.kill();
            }
        }
    }
}

/// Reads a whole file, empty if missing.
pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}
