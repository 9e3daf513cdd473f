//! `vip` failover next to keepalived, same run, same lab: three nodes
//! (priorities 150/100/50) and a client in network namespaces on one
//! bridge, a TCP responder on every node.
//!
//! - failover: kill -9 of the master until the client's TCP connect to the
//!   VIP is answered by the new master; median of `VIP_BENCH_RUNS` (default
//!   5) runs each for keepalived (`advert_int 1`), `vip` at its defaults
//!   (10 cs) and `vip` at keepalived's interval (100 cs);
//! - clean-stop hand-over: SIGTERM of the master, same measure;
//! - agent RSS and idle CPU of a master over 10 s.
//!
//! Needs root (namespaces). keepalived is Debian's package (`benches/run`
//! installs it); without it the reference column says n/a.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use b3_benches::{median, render, Better, Row};
use b3_tests::netlab::Lab;
use b3_tests::process::ChildGuard;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 100);
const PORT: u16 = 8080;
const CLIENT: usize = 3;
const PRIOS: [u8; 3] = [150, 100, 50];

/// Which agent runs the group.
#[derive(Clone, Copy, PartialEq)]
enum Impl {
    Keepalived,
    Vip { advert_cs: u16 },
}

/// One running node: the process and, for keepalived, its VRRP child's
/// pid file.
struct Node {
    guard: ChildGuard,
    vrrp_pidfile: Option<PathBuf>,
}

impl Node {
    fn pids(&self) -> Vec<i32> {
        let mut pids = vec![self.guard.pid() as i32];
        if let Some(p) = &self.vrrp_pidfile {
            if let Some(pid) = std::fs::read_to_string(p)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                pids.push(pid);
            }
        }
        pids
    }

    fn kill9(mut self) {
        // Parent first, or keepalived's parent would restart the child.
        for pid in self.pids() {
            // SAFETY: kill(2) on processes this benchmark started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        self.guard.kill();
    }

    /// SIGTERM; the caller measures at once and reaps the node later (the
    /// time a process takes to exit is not part of the hand-over).
    fn term(&self) -> anyhow::Result<()> {
        self.guard.signal(libc::SIGTERM)
    }
}

fn enter(ns: &str) -> anyhow::Result<()> {
    let f = File::open(format!("/run/netns/{ns}"))?;
    // SAFETY: setns on a descriptor we own; affects the calling thread only.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns {ns}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(ns)?;
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("namespace thread panicked"))?
    })
}

/// Starts the responders (one thread each, living until the process ends).
fn responders(lab: &Lab) -> anyhow::Result<()> {
    for i in 0..3 {
        let ns = lab.host(i).ns().to_string();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let l = match enter(&ns).and_then(|_| Ok(TcpListener::bind(("0.0.0.0", PORT))?)) {
                Ok(l) => l,
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            };
            let _ = tx.send(Ok(()));
            for mut s in l.incoming().flatten() {
                let _ = s.write_all(format!("h{i}\n").as_bytes());
            }
        });
        rx.recv_timeout(Duration::from_secs(5))?
            .map_err(|e| anyhow::anyhow!("responder on h{i}: {e}"))?;
    }
    Ok(())
}

/// Which node answers on the VIP (call from inside the client namespace).
/// A LAN answers a SYN in well under a millisecond; the short timeout keeps
/// the resolution fine while SYNs still go to a node that gave the VIP up.
fn reach_here() -> Option<usize> {
    let mut s =
        TcpStream::connect_timeout(&SocketAddr::from((VIP, PORT)), Duration::from_millis(10))
            .ok()?;
    s.set_read_timeout(Some(Duration::from_millis(300))).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.trim().strip_prefix('h')?.parse().ok()
}

/// Polls from the client until node `want` answers; returns when it first
/// did. The whole loop runs on one thread inside the client namespace.
fn until_reached(lab: &Lab, want: usize, timeout: Duration) -> anyhow::Result<Instant> {
    let t0 = Instant::now();
    let got = in_ns(lab.host(CLIENT).ns(), || {
        while t0.elapsed() < timeout {
            if reach_here() == Some(want) {
                return Some(Instant::now());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        None
    })?;
    got.with_context(|| format!("the client did not reach h{want} on the VIP within {timeout:?}"))
}

fn start(lab: &Lab, dir: &Path, which: Impl, i: usize) -> anyhow::Result<Node> {
    let log = File::options()
        .create(true)
        .append(true)
        .open(dir.join(format!("h{i}.log")))?;
    match which {
        Impl::Vip { advert_cs } => {
            let bin = vip_bin()?;
            let mut cmd = lab.host(i).command(bin);
            cmd.args(["--virtual-ip", &format!("{VIP}/24")])
                .args(["--priority", &PRIOS[i].to_string()])
                .args(["--advert-int", &advert_cs.to_string()])
                .args(["--admin-addr", "127.0.0.1:7410"])
                .stdout(Stdio::null())
                .stderr(log);
            Ok(Node {
                guard: ChildGuard::spawn(format!("vip h{i}"), &mut cmd)?,
                vrrp_pidfile: None,
            })
        }
        Impl::Keepalived => {
            let conf = dir.join(format!("ka-{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "global_defs {{\n  vrrp_version 3\n  router_id ka{i}\n}}\n\
                     vrrp_instance VI_1 {{\n  state BACKUP\n  interface eth0\n  virtual_router_id 51\n  \
                     priority {}\n  advert_int 1\n  virtual_ipaddress {{\n    {VIP}/24\n  }}\n}}\n",
                    PRIOS[i]
                ),
            )?;
            let vrrp_pidfile = dir.join(format!("ka-vrrp-{i}.pid"));
            let _ = std::fs::remove_file(&vrrp_pidfile);
            let mut cmd = lab.host(i).command("keepalived");
            cmd.args(["--vrrp", "--dont-fork", "--log-console", "-f"])
                .arg(&conf)
                .arg("-p")
                .arg(dir.join(format!("ka-{i}.pid")))
                .arg("-r")
                .arg(&vrrp_pidfile)
                .stdout(log.try_clone()?)
                .stderr(log);
            let guard = ChildGuard::spawn(format!("keepalived h{i}"), &mut cmd)?;
            b3_tests::wait::until(
                "keepalived's VRRP process",
                Duration::from_secs(10),
                Duration::from_millis(10),
                || vrrp_pidfile.is_file().then_some(()),
            )?;
            Ok(Node {
                guard,
                vrrp_pidfile: Some(vrrp_pidfile),
            })
        }
    }
}

/// The `vip` binary next to this one (target/release/vip).
fn vip_bin() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let here = exe.parent().map(|d| d.join("vip"));
    match here.filter(|p| p.is_file()) {
        Some(p) => Ok(p),
        None => b3_tests::bins::bin("vip"),
    }
}

/// Removes the VIP wherever it is left (after kill -9).
fn clear_vip(lab: &Lab) {
    for i in 0..3 {
        let _ = lab
            .host(i)
            .command("ip")
            .args(["addr", "del", &format!("{VIP}/24"), "dev", "eth0"])
            .stderr(Stdio::null())
            .status();
    }
}

/// Starts a group, waits for h0 to serve the VIP, then kills (or stops)
/// h0 and returns the time until the client reaches h1.
fn one_run(lab: &Lab, dir: &Path, which: Impl, clean: bool) -> anyhow::Result<Duration> {
    clear_vip(lab);
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(Some(start(lab, dir, which, i)?));
    }
    let result = (|| {
        until_reached(lab, 0, Duration::from_secs(20)).context("initial convergence")?;
        // Let the backups hear a few adverts.
        std::thread::sleep(Duration::from_millis(1500));
        let t0 = Instant::now();
        if clean {
            nodes[0].as_ref().context("no master")?.term()?;
        } else {
            nodes[0].take().context("no master")?.kill9();
        }
        let t = until_reached(lab, 1, Duration::from_secs(20))?;
        Ok(t - t0)
    })();
    for n in nodes.into_iter().flatten() {
        n.kill9();
    }
    result
}

fn runs(lab: &Lab, dir: &Path, which: Impl, clean: bool, n: usize) -> anyhow::Result<f64> {
    let mut ms = Vec::new();
    for _ in 0..n {
        let d = one_run(lab, dir, which, clean)?;
        ms.push(d.as_secs_f64() * 1000.0);
    }
    eprintln!(
        "  {} {}: {:?} ms",
        name(which),
        if clean { "clean stop" } else { "kill -9" },
        ms.iter().map(|x| x.round()).collect::<Vec<_>>()
    );
    median(&ms).context("no runs")
}

fn name(which: Impl) -> String {
    match which {
        Impl::Keepalived => "keepalived advert_int 1".into(),
        Impl::Vip { advert_cs } => format!("vip advert {advert_cs} cs"),
    }
}

/// RSS (KiB) and CPU time (clock ticks) of processes `pids`.
fn usage(pids: &[i32]) -> (u64, u64) {
    let mut rss = 0;
    let mut ticks = 0;
    for pid in pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        rss += status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the command name: utime and stime are 14th and 15th.
        if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let t = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            ticks += t(11) + t(12);
        }
    }
    (rss, ticks)
}

/// RSS (MiB) and CPU (% of one core) of the master over `window`.
fn idle(lab: &Lab, dir: &Path, which: Impl, window: Duration) -> anyhow::Result<(f64, f64)> {
    clear_vip(lab);
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(start(lab, dir, which, i)?);
    }
    let result = (|| {
        until_reached(lab, 0, Duration::from_secs(20))?;
        std::thread::sleep(Duration::from_secs(1));
        let pids = nodes[0].pids();
        let (_, t0) = usage(&pids);
        let start = Instant::now();
        std::thread::sleep(window);
        let (rss, t1) = usage(&pids);
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let cpu = (t1 - t0) as f64 / hz / start.elapsed().as_secs_f64() * 100.0;
        Ok((rss as f64 / 1024.0, cpu))
    })();
    for n in nodes {
        n.kill9();
    }
    result
}

fn main() -> anyhow::Result<()> {
    let n: usize = std::env::var("VIP_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .max(1);
    let have_ka = Command::new("keepalived")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !have_ka {
        eprintln!(
            "keepalived not found: the reference column will say n/a (apt-get install keepalived)"
        );
    }
    let lab = Lab::new(4)?;
    responders(&lab)?;
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let ours = Impl::Vip { advert_cs: 10 };
    let ours_slow = Impl::Vip { advert_cs: 100 };

    eprintln!("failover, kill -9 of the master ({n} runs each):");
    let ka_fail = if have_ka {
        Some(runs(&lab, d, Impl::Keepalived, false, n)?)
    } else {
        None
    };
    let vip_fail = runs(&lab, d, ours, false, n)?;
    let vip_fail_slow = runs(&lab, d, ours_slow, false, n)?;
    eprintln!("clean stop of the master ({n} runs each):");
    let ka_stop = if have_ka {
        Some(runs(&lab, d, Impl::Keepalived, true, n)?)
    } else {
        None
    };
    let vip_stop = runs(&lab, d, ours, true, n)?;
    let window = Duration::from_secs(20);
    eprintln!("master at rest, {window:?}:");
    let (vip_rss, vip_cpu) = idle(&lab, d, ours, window)?;
    let (_, vip_cpu_slow) = idle(&lab, d, ours_slow, window)?;
    let ka_idle = if have_ka {
        Some(idle(&lab, d, Impl::Keepalived, window)?)
    } else {
        None
    };

    let row = |w: &str, unit: &str, ours: f64, reference: Option<f64>, target: Option<f64>| Row {
        workload: w.into(),
        unit: unit.into(),
        ours,
        reference_name: "keepalived".into(),
        reference,
        better: Better::Lower,
        target,
    };
    let rows = vec![
        row(
            "failover kill -9, vip default 10cs",
            "ms",
            vip_fail,
            ka_fail,
            Some(7.0),
        ),
        row(
            "failover kill -9, vip at 100cs",
            "ms",
            vip_fail_slow,
            ka_fail,
            Some(1.0),
        ),
        row(
            "clean-stop hand-over, vip default",
            "ms",
            vip_stop,
            ka_stop,
            None,
        ),
        row("master RSS", "MiB", vip_rss, ka_idle.map(|x| x.0), None),
        row(
            "master idle CPU, vip 10cs",
            "% core",
            vip_cpu.max(0.01),
            ka_idle.map(|x| x.1.max(0.01)),
            None,
        ),
        row(
            "master idle CPU, vip 100cs",
            "% core",
            vip_cpu_slow.max(0.01),
            ka_idle.map(|x| x.1.max(0.01)),
            None,
        ),
    ];
    println!(
        "{}",
        render(
            "vip: VRRP failover, 3 nodes, median of runs (lower is better)",
            &rows
        )
    );
    println!(
        "targets: failover at defaults <= 500 ms ({}), clean stop <= 100 ms ({}), RSS <= 10 MiB ({})",
        if vip_fail <= 500.0 { "ok" } else { "MISS" },
        if vip_stop <= 100.0 { "ok" } else { "MISS" },
        if vip_rss <= 10.0 { "ok" } else { "MISS" },
    );
    println!("keepalived RSS and CPU are its parent plus VRRP child; CPU is measured in");
    println!("clock ticks (10 ms), so 0.01 means \"below one tick in the window\".");
    Ok(())
}
