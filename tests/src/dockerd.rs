//! A private Docker engine for tests: Debian's `dockerd` with its own
//! data-root, exec-root and socket under a temporary directory, a
//! single-node swarm, and test images made with `docker import` from a
//! busybox root filesystem (no registry is reachable here).
//!
//! It runs with `--iptables=false --bridge=none`, so it leaves no firewall
//! rules and no `docker0` behind; overlay networks, task IPs, Swarm DNS and
//! host-mode published ports still work. Dropping [`Dockerd`] removes
//! services and containers, leaves the swarm, stops the daemon, unmounts
//! and deletes everything under its directory and deletes the bridges it
//! made. Only one fixture daemon runs at a time (a file lock serialises
//! tests across processes).

use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::process::ChildGuard;
use crate::{run, wait};

/// Where the cross-process lock lives.
const LOCK_PATH: &str = "/run/lock/b3-dockerd-fixture.lock";
/// Bridges dockerd makes in the root namespace; deleted on drop when they
/// did not exist before.
const DOCKER_LINKS: &[&str] = &["docker_gwbridge", "docker0"];
/// The script the demo image runs: an HTTP server answering
/// `hello from <hostname>` on `$PORT` (default 8000).
const DEMO_SCRIPT: &str = "#!/bin/sh\nmkdir -p /www\necho \"hello from $(hostname)\" > /www/index.html\nexec httpd -f -p \"${PORT:-8000}\" -h /www\n";

/// A running private dockerd. See the module docs.
pub struct Dockerd {
    dir: tempfile::TempDir,
    socket: PathBuf,
    daemon: Option<ChildGuard>,
    new_links: Vec<&'static str>,
    _lock: std::fs::File,
}

impl Dockerd {
    /// Starts a daemon and waits until it answers (at most 60 s).
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with_args(&[])
    }

    /// Like [`Dockerd::start`], with `extra` appended to dockerd's
    /// arguments (e.g. a TLS listener: `-H tcp://127.0.0.1:PORT
    /// --tlsverify --tlscacert … --tlscert … --tlskey …`). The fixture's
    /// own clients keep using the unix socket.
    pub fn start_with_args(extra: &[&str]) -> anyhow::Result<Self> {
        crate::require_root("the dockerd fixture")?;
        if Command::new("dockerd").arg("--version").output().is_err() {
            anyhow::bail!(
                "dockerd not found: install Debian's docker.io (the README's test command does)"
            );
        }
        let lock = lock_exclusive()?;
        let existing: Vec<&'static str> = DOCKER_LINKS
            .iter()
            .copied()
            .filter(|l| link_exists(l))
            .collect();
        let dir = tempfile::Builder::new()
            .prefix("b3-dockerd-")
            .tempdir_in("/tmp")?;
        let socket = dir.path().join("docker.sock");
        let log = std::fs::File::create(dir.path().join("dockerd.log"))?;
        let daemon = ChildGuard::spawn(
            "dockerd",
            Command::new("dockerd")
                .arg("--data-root")
                .arg(dir.path().join("data"))
                .arg("--exec-root")
                .arg(dir.path().join("exec"))
                .arg("--pidfile")
                .arg(dir.path().join("docker.pid"))
                .arg("-H")
                .arg(format!("unix://{}", socket.display()))
                .args(["--iptables=false", "--bridge=none"])
                .args(extra)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log),
        )?;
        let new_links = DOCKER_LINKS
            .iter()
            .copied()
            .filter(|l| !existing.contains(l))
            .collect();
        let me = Dockerd {
            dir,
            socket,
            daemon: Some(daemon),
            new_links,
            _lock: lock,
        };
        wait::until(
            "dockerd to answer",
            Duration::from_secs(60),
            Duration::from_millis(200),
            || {
                me.docker()
                    .arg("version")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .ok()?
                    .success()
                    .then_some(())
            },
        )
        .map_err(|e| anyhow::anyhow!("{e}; dockerd log:\n{}", me.log_tail()))?;
        Ok(me)
    }

    /// The daemon's socket (for `DOCKER_HOST=unix://…`).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `DOCKER_HOST` value for clients.
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// A `docker` client command bound to this daemon.
    pub fn docker(&self) -> Command {
        let mut cmd = Command::new("docker");
        cmd.arg("-H").arg(self.docker_host());
        cmd
    }

    /// Runs `docker <args>` and returns its stdout.
    pub fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        run(self.docker().args(args))
    }

    /// Makes this daemon a single-node swarm manager.
    pub fn swarm_init(&self) -> anyhow::Result<()> {
        self.run(&["swarm", "init", "--advertise-addr", "127.0.0.1"])?;
        Ok(())
    }

    /// Imports a busybox image as `tag`. It holds every busybox applet and
    /// `/bin/b3-demo`, an HTTP server answering `hello from <hostname>` on
    /// `$PORT` (default 8000), used as the demo backend.
    pub fn import_busybox(&self, tag: &str) -> anyhow::Result<()> {
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .find(|p| Path::new(p).is_file())
            .ok_or_else(|| anyhow::anyhow!("busybox not found: install Debian's busybox-static"))?;
        let root = self
            .dir
            .path()
            .join(format!("rootfs-{}", tag.replace(['/', ':'], "_")));
        let bin = root.join("bin");
        std::fs::create_dir_all(&bin)?;
        std::fs::create_dir_all(root.join("tmp"))?;
        std::fs::create_dir_all(root.join("www"))?;
        std::fs::copy(busybox, bin.join("busybox"))?;
        let applets = run(Command::new(busybox).arg("--list"))?;
        for applet in applets
            .lines()
            .map(str::trim)
            .filter(|a| !a.is_empty() && *a != "busybox")
        {
            let _ = std::os::unix::fs::symlink("busybox", bin.join(applet));
        }
        let demo = bin.join("b3-demo");
        std::fs::write(&demo, DEMO_SCRIPT)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&demo, std::fs::Permissions::from_mode(0o755))?;
        let tar = root.with_extension("tar");
        run(Command::new("tar")
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&tar)
            .arg("."))?;
        run(self.docker().arg("import").arg(&tar).arg(tag))?;
        Ok(())
    }

    /// The IPs of service `service`'s running tasks on overlay `network`.
    pub fn task_ips(&self, service: &str, network: &str) -> anyhow::Result<Vec<String>> {
        let out = self.run(&[
            "network",
            "inspect",
            network,
            "--format",
            "{{range .Containers}}{{.Name}} {{.IPv4Address}}\n{{end}}",
        ])?;
        Ok(out
            .lines()
            .filter_map(|l| {
                let (name, addr) = l.split_once(' ')?;
                name.starts_with(&format!("{service}."))
                    .then(|| addr.split('/').next().unwrap_or(addr).to_string())
            })
            .collect())
    }

    /// The last lines of dockerd's log, for error messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// The fixture's directory (data-root, exec-root, socket, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn teardown(&mut self) {
        let quiet = |args: &[&str]| {
            let _ = self
                .docker()
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        };
        if let Ok(services) = self.run(&["service", "ls", "-q"]) {
            let ids: Vec<&str> = services.split_whitespace().collect();
            if !ids.is_empty() {
                quiet(&[&["service", "rm"][..], &ids].concat());
            }
        }
        if let Ok(containers) = self.run(&["ps", "-aq"]) {
            let ids: Vec<&str> = containers.split_whitespace().collect();
            if !ids.is_empty() {
                quiet(&[&["rm", "-f"][..], &ids].concat());
            }
        }
        quiet(&["swarm", "leave", "--force"]);
        if let Some(mut daemon) = self.daemon.take() {
            let _ = daemon.signal(libc::SIGTERM);
            if daemon.wait_timeout(Duration::from_secs(20)).is_err() {
                daemon.kill();
            }
        }
        kill_processes_mentioning(self.dir.path());
        unmount_under(self.dir.path());
        for link in &self.new_links {
            let _ = Command::new("ip")
                .args(["link", "del", link])
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        self.teardown();
    }
}

fn lock_exclusive() -> anyhow::Result<std::fs::File> {
    std::fs::create_dir_all("/run/lock")?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK_PATH)?;
    // SAFETY: flock(2) on a descriptor we own; blocks until the lock is free.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        anyhow::bail!("locking {LOCK_PATH}: {}", std::io::Error::last_os_error());
    }
    Ok(file)
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Kills processes whose command line mentions `dir` (containerd and shims
/// the fixture's dockerd started, should they outlive it).
fn kill_processes_mentioning(dir: &Path) {
    let needle = dir.to_string_lossy().into_owned();
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid as u32 == me {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            // SAFETY: kill(2) on a process started by our own dockerd.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Unmounts every mount point under `dir`, deepest first.
fn unmount_under(dir: &Path) {
    for _ in 0..3 {
        let mounts = mounts_under(dir);
        if mounts.is_empty() {
            return;
        }
        for m in mounts.iter().rev() {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(m)
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Mount points under `dir`, in /proc/self/mounts order.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|m| m.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}
