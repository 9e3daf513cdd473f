//! Child processes owned by a test: killed (SIGKILL) and reaped when the
//! guard drops, so a panicking test leaves no daemon behind.

use std::process::{Child, Command};

/// A running child process that dies with the guard.
#[derive(Debug)]
pub struct ChildGuard {
    child: Option<Child>,
    name: String,
}

impl ChildGuard {
    /// Spawns `cmd`.
    pub fn spawn(name: impl Into<String>, cmd: &mut Command) -> anyhow::Result<Self> {
        let name = name.into();
        let child = cmd
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting {name} ({cmd:?}): {e}"))?;
        Ok(Self {
            child: Some(child),
            name,
        })
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Whether the child is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) to the child.
    pub fn signal(&self, signal: i32) -> anyhow::Result<()> {
        let pid = self.pid() as i32;
        // SAFETY: kill(2) with our own child's pid; no memory is involved.
        if pid == 0 || unsafe { libc::kill(pid, signal) } != 0 {
            anyhow::bail!(
                "signalling {} (pid {pid}): {}",
                self.name,
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }

    /// Waits up to `timeout` for the child to exit and returns its status.
    pub fn wait_timeout(
        &mut self,
        timeout: std::time::Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        let name = self.name.clone();
        let child = self
            .child
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("{name} was already reaped"))?;
        crate::wait::until(
            &format!("{name} to exit"),
            timeout,
            std::time::Duration::from_millis(10),
            || child.try_wait().ok().flatten(),
        )
    }

    /// SIGKILLs the child now and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}
