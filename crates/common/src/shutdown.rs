//! Graceful shutdown as a first-class value (the mini-redis pattern).
//!
//! One [`ShutdownTrigger`] fires; every task holding a clone of the
//! [`Shutdown`] handle sees it and winds down. `main` wires SIGTERM/SIGINT to
//! the trigger with [`on_signal`].

use tokio::sync::watch;

/// Fires the shutdown for every [`Shutdown`] handle made from it.
#[derive(Debug)]
pub struct ShutdownTrigger {
    tx: watch::Sender<bool>,
}

/// Cheap, cloneable handle a task polls or awaits to learn it must stop.
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

/// Makes a new trigger and its first handle.
pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger { tx }, Shutdown { rx })
}

impl ShutdownTrigger {
    /// Tells every handle to stop. Idempotent.
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    /// Another handle on the same shutdown.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown {
            rx: self.tx.subscribe(),
        }
    }
}

impl Shutdown {
    /// Whether shutdown has been requested.
    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves once shutdown is requested (at once if it already was, and
    /// also when the trigger is dropped: nobody is left to keep us running).
    pub async fn wait(&mut self) {
        let _ = self.rx.wait_for(|stop| *stop).await;
    }
}

/// Waits for SIGTERM or SIGINT and returns the signal's name.
pub async fn wait_for_signal() -> std::io::Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

/// Spawns a task that fires `trigger` on SIGTERM or SIGINT. A second signal
/// while shutting down exits the process at once (exit code 130), as
/// operators expect from Ctrl-C pressed twice.
pub fn on_signal(trigger: ShutdownTrigger) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    // Register before returning so a signal right after start is not lost.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutting down");
        trigger.trigger();
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        };
        tracing::warn!("second signal: exiting without waiting");
        std::process::exit(130);
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_handle_sees_the_trigger() {
        let (trigger, mut a) = channel();
        let mut b = trigger.subscribe();
        assert!(!a.is_triggered());
        let waiter = tokio::spawn(async move { b.wait().await });
        trigger.trigger();
        a.wait().await;
        assert!(a.is_triggered());
        waiter.await.unwrap();
    }

    #[tokio::test]
    async fn dropped_trigger_releases_waiters() {
        let (trigger, mut a) = channel();
        drop(trigger);
        tokio::time::timeout(std::time::Duration::from_secs(1), a.wait())
            .await
            .expect("wait() must return once the trigger is gone");
    }
}
