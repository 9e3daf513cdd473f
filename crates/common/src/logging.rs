//! Structured logging set-up shared by the daemons.
//!
//! Level precedence: `--log-level` flag, then `RUST_LOG`, then `info`.
//! Format: `--log-format text|json` (or `B3_LOG_FORMAT`), text by default.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// How log lines are written to standard error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (coloured when stderr is a terminal).
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Logging flags, flattened into every daemon's command line.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log level or filter (`error`, `warn`, `info`, `debug`, `trace`, or a
    /// directive such as `info,store::cluster=debug`). Overrides RUST_LOG;
    /// without either, `info` is used.
    #[arg(long, global = true, value_name = "FILTER")]
    pub log_level: Option<String>,

    /// Log line format.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t = LogFormat::Text,
        env = "B3_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
}

/// A log filter that could not be parsed.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid log level {value:?} (from {source_name}): {reason} — use one of error, warn, info, debug, trace, or a directive such as `info,store=debug`"
)]
pub struct LogFilterError {
    value: String,
    source_name: &'static str,
    reason: String,
}

/// Resolves the filter to use from the flag and the `RUST_LOG` value.
pub fn filter(flag: Option<&str>, rust_log: Option<&str>) -> Result<EnvFilter, LogFilterError> {
    let (value, source_name) = match (flag, rust_log) {
        (Some(v), _) => (v, "--log-level"),
        (None, Some(v)) if !v.trim().is_empty() => (v, "RUST_LOG"),
        _ => ("info", "default"),
    };
    EnvFilter::builder()
        .parse(value)
        .map_err(|e| LogFilterError {
            value: value.to_string(),
            source_name,
            reason: e.to_string(),
        })
}

impl LogArgs {
    /// Installs the global subscriber. Call once, before anything logs.
    pub fn init(&self) -> Result<(), LogFilterError> {
        let rust_log = std::env::var("RUST_LOG").ok();
        let filter = filter(self.log_level.as_deref(), rust_log.as_deref())?;
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr);
        // A second init (tests calling it twice) is harmless: keep the first.
        let _ = match self.log_format {
            LogFormat::Text => builder
                .with_ansi(std::io::stderr().is_terminal())
                .try_init(),
            LogFormat::Json => builder.json().flatten_event(true).try_init(),
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_beats_rust_log_beats_default() {
        assert_eq!(
            filter(Some("debug"), Some("warn")).unwrap().to_string(),
            "debug"
        );
        assert_eq!(filter(None, Some("warn")).unwrap().to_string(), "warn");
        assert_eq!(filter(None, None).unwrap().to_string(), "info");
        assert_eq!(filter(None, Some("  ")).unwrap().to_string(), "info");
    }

    #[test]
    fn bad_level_names_value_and_source() {
        let err = filter(Some("store=loud"), None).unwrap_err().to_string();
        assert!(err.contains("store=loud"), "{err}");
        assert!(err.contains("--log-level"), "{err}");
        let err = filter(None, Some("=,=")).unwrap_err().to_string();
        assert!(err.contains("RUST_LOG"), "{err}");
    }
}
