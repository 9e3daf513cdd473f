//! Fixtures for b3 stack's end-to-end tests, and the tests themselves (in
//! `tests/tests/`). Later issues lean on these:
//!
//! - [`netlab`]: N "hosts" (network namespaces) joined by veth pairs to a
//!   bridge, with link down/up, torn down even when the test panics;
//! - [`dockerd`]: a private Debian `dockerd` (own data-root, exec-root and
//!   socket), a single-node swarm and busybox-based test images;
//! - [`process`]: child processes that are killed when the guard drops;
//! - [`wait`]: polling with a deadline instead of sleeps.
//!
//! These fixtures need root (network namespaces, mounts, dockerd). They
//! report a clear error rather than skipping when it is missing.

pub mod bins;
pub mod dockerd;
pub mod http;
pub mod netlab;
pub mod process;
pub mod wait;

/// Fails with a clear message unless running as root.
pub fn require_root(what: &str) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        anyhow::bail!("{what} needs root (network namespaces, mounts, dockerd): run the tests as root, e.g. `sudo -E cargo nextest run`");
    }
    Ok(())
}

/// Runs a command, failing with its stderr if it exits non-zero.
pub fn run(cmd: &mut std::process::Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .map_err(|e| anyhow::anyhow!("running {cmd:?}: {e}"))?;
    if !out.status.success() {
        anyhow::bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether process `pid` is alive.
pub fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}
