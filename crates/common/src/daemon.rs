//! The few lines every `main.rs` would otherwise repeat: set up logging,
//! start the tokio runtime, wire SIGTERM/SIGINT to a [`Shutdown`], run the
//! daemon, and turn its result into an exit code with a readable message.

use std::future::Future;
use std::process::ExitCode;

use crate::logging::LogArgs;
use crate::shutdown::{self, Shutdown};

/// Exit code for a configuration or usage mistake (as clap uses).
pub const EXIT_USAGE: u8 = 2;
/// Exit code for a runtime failure.
pub const EXIT_FAILURE: u8 = 1;

/// Runs `body` to completion under a multi-threaded runtime and returns the
/// process exit code. Errors are printed as `error: <chain>` on stderr.
pub fn main<F, Fut>(binary: &str, log: &LogArgs, body: F) -> ExitCode
where
    F: FnOnce(Shutdown) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    main_with_workers(binary, log, None, body)
}

/// The number of CPUs this process may run on (its affinity mask, e.g.
/// under `taskset` or a container CPU limit), at least 1.
pub fn available_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// As [`main`], with a chosen number of runtime worker threads: `None` is
/// tokio's default (one per available CPU) and `Some(1)` runs everything on
/// the main thread with the current-thread scheduler, which skips the
/// cross-thread wake-ups and atomics a one-worker pool would still pay.
pub fn main_with_workers<F, Fut>(
    binary: &str,
    log: &LogArgs,
    workers: Option<usize>,
    body: F,
) -> ExitCode
where
    F: FnOnce(Shutdown) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    if let Err(e) = log.init() {
        eprintln!("{binary}: error: {e}");
        return ExitCode::from(EXIT_USAGE);
    }
    let mut builder = match workers {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n.max(1));
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder
        .enable_all()
        .thread_name(format!("{binary}-worker"))
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{binary}: error: starting the async runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let result = runtime.block_on(async {
        let (trigger, shutdown) = shutdown::channel();
        shutdown::on_signal(trigger)
            .map_err(|e| anyhow::anyhow!("installing signal handlers: {e}"))?;
        body(shutdown).await
    });
    // Do not wait forever for blocking tasks (e.g. a stuck FUSE request).
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Once, in the format the operator chose.
            if log.log_format == crate::logging::LogFormat::Json {
                tracing::error!(error = format!("{e:#}"), "exiting");
            } else {
                eprintln!("{binary}: error: {e:#}");
            }
            match e.downcast_ref::<UsageError>() {
                Some(_) => ExitCode::from(EXIT_USAGE),
                None => ExitCode::from(EXIT_FAILURE),
            }
        }
    }
}

/// A configuration mistake found after argument parsing (exit code 2). The
/// message names the bad value and says how to fix it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Shorthand for returning a [`UsageError`].
pub fn usage<T>(msg: impl Into<String>) -> anyhow::Result<T> {
    Err(UsageError(msg.into()).into())
}
