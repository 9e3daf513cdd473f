//! A network lab made of namespaces: N hosts, each a network namespace with
//! one interface `eth0` (address `<subnet>.<i+1>/24`) whose veth peer sits
//! on a bridge inside a separate "switch" namespace. Nothing touches the
//! machine's own network namespace, so labs never collide with each other
//! or with the host, and traffic stays inside what the test created.
//!
//! ```no_run
//! let lab = b3_tests::netlab::Lab::new(3)?;
//! lab.host(0).run(&["ping", "-c1", "-W1", &lab.host(1).ip().to_string()])?;
//! lab.link_down(1)?; // pull host 1's cable
//! # anyhow::Ok(())
//! ```
//!
//! Dropping the [`Lab`] kills every process still running inside its
//! namespaces and deletes them, also when the test panics. Labs left behind
//! by a test that was SIGKILLed are swept by the next [`Lab::new`].

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::process::ChildGuard;
use crate::run;

const PREFIX: &str = "b3lab";
static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// One host of the lab.
#[derive(Debug)]
pub struct Host {
    ns: String,
    ip: Ipv4Addr,
    index: usize,
}

impl Host {
    /// The namespace name (for `ip netns exec`).
    pub fn ns(&self) -> &str {
        &self.ns
    }

    /// The host's address on the lab subnet.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// The host's position in the lab (0-based).
    pub fn index(&self) -> usize {
        self.index
    }

    /// A command that runs `program` inside this host.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns]).arg(program);
        cmd
    }

    /// Runs `argv` inside this host and returns its stdout, failing on a
    /// non-zero exit.
    pub fn run(&self, argv: &[&str]) -> anyhow::Result<String> {
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| anyhow::anyhow!("empty command"))?;
        run(self.command(program).args(args))
    }

    /// Starts a long-running process inside this host; it dies with the
    /// returned guard (and with the lab).
    pub fn spawn(&self, name: &str, argv: &[&str]) -> anyhow::Result<ChildGuard> {
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| anyhow::anyhow!("empty command"))?;
        ChildGuard::spawn(
            format!("{name} on {}", self.ns),
            self.command(program).args(args),
        )
    }
}

/// A set of hosts on one bridged subnet. See the module docs.
#[derive(Debug)]
pub struct Lab {
    name: String,
    switch_ns: String,
    hosts: Vec<Host>,
}

impl Lab {
    /// Creates `n` hosts on 10.77.0.0/24 (hosts are .1, .2, …).
    pub fn new(n: usize) -> anyhow::Result<Self> {
        Self::with_subnet(n, [10, 77, 0])
    }

    /// Creates `n` hosts on `<subnet>.0/24`.
    pub fn with_subnet(n: usize, subnet: [u8; 3]) -> anyhow::Result<Self> {
        crate::require_root("the netns lab")?;
        if n == 0 || n > 250 {
            anyhow::bail!("a lab has 1 to 250 hosts, not {n}");
        }
        sweep_stale_labs();
        let name = format!(
            "{PREFIX}-{}-{}",
            std::process::id(),
            NEXT_LAB.fetch_add(1, Ordering::SeqCst)
        );
        let switch_ns = format!("{name}-sw");
        // From here on, Drop cleans up whatever was created.
        let mut lab = Lab {
            name,
            switch_ns,
            hosts: Vec::new(),
        };
        run(Command::new("ip").args(["netns", "add", &lab.switch_ns]))?;
        let sw = lab.switch_ns.clone();
        run(Command::new("ip").args(["-n", &sw, "link", "set", "lo", "up"]))?;
        run(Command::new("ip").args(["-n", &sw, "link", "add", "br0", "type", "bridge"]))?;
        run(Command::new("ip").args(["-n", &sw, "link", "set", "br0", "up"]))?;
        for i in 0..n {
            let ns = format!("{}-h{i}", lab.name);
            let ip = Ipv4Addr::new(subnet[0], subnet[1], subnet[2], (i + 1) as u8);
            run(Command::new("ip").args(["netns", "add", &ns]))?;
            lab.hosts.push(Host {
                ns: ns.clone(),
                ip,
                index: i,
            });
            let port = format!("p{i}");
            // The veth is born in the switch namespace with its peer directly
            // in the host namespace: no name ever appears in the root one.
            run(Command::new("ip").args([
                "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ]))?;
            run(Command::new("ip").args(["-n", &sw, "link", "set", &port, "master", "br0", "up"]))?;
            run(Command::new("ip").args(["-n", &ns, "link", "set", "lo", "up"]))?;
            run(Command::new("ip").args([
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                "eth0",
            ]))?;
            run(Command::new("ip").args(["-n", &ns, "link", "set", "eth0", "up"]))?;
        }
        Ok(lab)
    }

    /// Host `i` (0-based). Panics if out of range: that is a bug in the test.
    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i]
    }

    /// All hosts.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The lab's name (prefix of all its namespaces).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Takes host `i`'s link down at the switch, as if its cable were pulled
    /// (the host keeps its address; its `eth0` loses carrier).
    pub fn link_down(&self, i: usize) -> anyhow::Result<()> {
        self.set_port(i, "down")
    }

    /// Brings host `i`'s link back up.
    pub fn link_up(&self, i: usize) -> anyhow::Result<()> {
        self.set_port(i, "up")
    }

    fn set_port(&self, i: usize, state: &str) -> anyhow::Result<()> {
        if i >= self.hosts.len() {
            anyhow::bail!("lab {} has no host {i}", self.name);
        }
        run(Command::new("ip").args([
            "-n",
            &self.switch_ns,
            "link",
            "set",
            &format!("p{i}"),
            state,
        ]))?;
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for host in &self.hosts {
            delete_ns(&host.ns);
        }
        delete_ns(&self.switch_ns);
    }
}

/// Kills what runs inside namespace `ns` (only ever processes our tests
/// started there) and deletes it.
fn delete_ns(ns: &str) {
    for _ in 0..50 {
        let pids = Command::new("ip")
            .args(["netns", "pids", ns])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let pids: Vec<i32> = pids
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            // SAFETY: kill(2) on a pid that lives in a namespace this lab made.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = Command::new("ip").args(["netns", "del", ns]).output();
}

/// Deletes namespaces of labs whose test process no longer exists.
fn sweep_stale_labs() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(&format!("{PREFIX}-")) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !crate::pid_alive(pid) {
            delete_ns(&name);
        }
    }
}

/// Names of the namespaces that currently exist for lab `name`.
pub fn namespaces_of(name: &str) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!("{name}-")))
                .collect()
        })
        .unwrap_or_default()
}
