//! Command line of the `edge` binary. Every flag also reads an environment
//! variable (`EDGE_*`); a flag given on the command line wins over the
//! environment, which wins over the built-in default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use b3_common::{admin, AdminServer, HealthStatus, LogArgs, Shutdown};
use clap::{ArgAction, Parser};

use crate::provider::{self, file::Location, Update};
use crate::proxy::accesslog::{self, AccessLog};
use crate::proxy::listener::{self, EntryPoint};
use crate::proxy::metrics::Metrics;
use crate::proxy::{health, Options, Runtime};
use crate::tls;

/// Label-driven TLS reverse proxy for Docker Swarm services.
#[derive(Debug, Parser)]
#[command(name = "edge", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,

    #[command(flatten)]
    pub run: RunArgs,
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e}; write e.g. 10s, 500ms or 1m"))
}

/// Flags of the proxy.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Address of the admin endpoint (dashboard, API, /health, /metrics).
    #[arg(
        long,
        env = "EDGE_ADMIN_ADDR",
        default_value = "0.0.0.0:8080",
        value_name = "ADDR"
    )]
    pub admin_addr: SocketAddr,

    /// Address of the `web` entry point (plain HTTP).
    #[arg(
        long,
        env = "EDGE_WEB_ADDR",
        default_value = "0.0.0.0:80",
        value_name = "ADDR"
    )]
    pub web_addr: SocketAddr,

    /// Address of the `websecure` entry point (HTTPS).
    #[arg(
        long,
        env = "EDGE_WEBSECURE_ADDR",
        default_value = "0.0.0.0:443",
        value_name = "ADDR"
    )]
    pub websecure_addr: SocketAddr,

    /// Port clients use for HTTPS, in redirects (default: the port of --websecure-addr).
    #[arg(long, env = "EDGE_HTTPS_PORT", value_name = "PORT")]
    pub https_port: Option<u16>,

    /// Redirect plain HTTP requests for TLS routers to HTTPS.
    #[arg(long, env = "EDGE_REDIRECT_TO_HTTPS", default_value_t = true, action = ArgAction::Set, value_name = "BOOL")]
    pub redirect_to_https: bool,

    /// Dynamic configuration file (YAML or TOML), reloaded when it changes.
    #[arg(
        long,
        env = "EDGE_CONFIG_FILE",
        value_name = "FILE",
        conflicts_with = "config_dir"
    )]
    pub config_file: Option<PathBuf>,

    /// Directory of dynamic configuration files (*.yml, *.yaml, *.toml).
    #[arg(long, env = "EDGE_CONFIG_DIR", value_name = "DIR")]
    pub config_dir: Option<PathBuf>,

    /// How often configuration and certificate files are checked for changes.
    #[arg(long, env = "EDGE_WATCH_INTERVAL", default_value = "1s", value_parser = duration, value_name = "DURATION")]
    pub watch_interval: Duration,

    /// Domain of the default wildcard certificate (*.DOMAIN).
    #[arg(
        long,
        env = "EDGE_DOMAIN",
        default_value = "b3.swarm",
        value_name = "DOMAIN"
    )]
    pub domain: String,

    /// Directory where the default certificate is generated and kept; share
    /// it between replicas so they serve the same certificate.
    #[arg(
        long,
        env = "EDGE_CERT_DIR",
        default_value = "/data/edge/certs",
        value_name = "DIR"
    )]
    pub cert_dir: PathBuf,

    /// Access log format on stdout.
    #[arg(
        long,
        env = "EDGE_ACCESS_LOG",
        value_enum,
        default_value = "off",
        value_name = "FORMAT"
    )]
    pub access_log: accesslog::Format,

    /// Time to open a connection to a backend server.
    #[arg(long, env = "EDGE_CONNECT_TIMEOUT", default_value = "5s", value_parser = duration, value_name = "DURATION")]
    pub connect_timeout: Duration,

    /// Time a backend server has to send its response headers (then 504).
    #[arg(long, env = "EDGE_RESPONSE_TIMEOUT", default_value = "60s", value_parser = duration, value_name = "DURATION")]
    pub response_timeout: Duration,

    /// Time a client has to send its request headers; also how long an idle
    /// keep-alive connection is kept.
    #[arg(long, env = "EDGE_HEADER_READ_TIMEOUT", default_value = "30s", value_parser = duration, value_name = "DURATION")]
    pub header_read_timeout: Duration,

    /// Time a client has to finish the TLS handshake.
    #[arg(long, env = "EDGE_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = duration, value_name = "DURATION")]
    pub handshake_timeout: Duration,

    /// Largest request header section, in bytes (then 431).
    #[arg(long, env = "EDGE_MAX_HEADER_BYTES", default_value_t = 32 * 1024, value_name = "BYTES")]
    pub max_header_bytes: usize,

    /// Longest request URI, in bytes (then 414).
    #[arg(long, env = "EDGE_MAX_URI_BYTES", default_value_t = 8 * 1024, value_name = "BYTES")]
    pub max_uri_bytes: usize,

    /// Largest request body, in bytes (then 413); 0 means no limit.
    #[arg(
        long,
        env = "EDGE_MAX_BODY_BYTES",
        default_value_t = 0,
        value_name = "BYTES"
    )]
    pub max_body_bytes: u64,

    /// How long a server that refused a connection is left out of rotation.
    #[arg(long, env = "EDGE_EJECT_DURATION", default_value = "10s", value_parser = duration, value_name = "DURATION")]
    pub eject_duration: Duration,

    /// Accept any certificate from https:// backend servers (for services
    /// with self-signed certificates; Traefik's insecureSkipVerify).
    #[arg(long, env = "EDGE_BACKEND_INSECURE_SKIP_VERIFY", default_value_t = false, action = ArgAction::Set, value_name = "BOOL")]
    pub backend_insecure_skip_verify: bool,

    /// Most client connections per entry point (more wait in the kernel backlog).
    #[arg(
        long,
        env = "EDGE_MAX_CONNECTIONS",
        default_value_t = 16384,
        value_name = "N"
    )]
    pub max_connections: usize,

    /// Threads serving connections; 0 means one per CPU edge may run on
    /// (its affinity mask, e.g. a container's cpuset). With one, edge runs a
    /// single-threaded event loop (like an nginx worker), which is the
    /// fastest way to use one core.
    #[arg(
        long,
        env = "EDGE_WORKER_THREADS",
        default_value_t = 0,
        value_name = "N"
    )]
    pub worker_threads: usize,

    /// Swarm provider settings.
    #[command(flatten)]
    pub swarm: crate::swarm::SwarmArgs,

    /// A one-shot command instead of running the proxy.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// One-shot commands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Explain why a Swarm service is (not) routed, and how to fix it.
    /// Reads dockerd directly with the same flags and EDGE_* environment as
    /// the daemon, so `docker exec <edge> edge explain shop` sees what the
    /// running edge sees.
    Explain {
        /// Service name or ID; without it, every service that needs
        /// attention and a one-line summary of the others.
        service: Option<String>,
        /// Print the diagnostics as JSON (as /api/swarm/services serves them).
        #[arg(long)]
        json: bool,
    },
}

/// rustls warns about every handshake whose client sent an IP address as
/// SNI (load testers, health checkers and `curl https://10.0.0.5/` do):
/// one line per connection caused by the client, which costs a formatted
/// line and a write per handshake and lets any client flood the log. Unless
/// the filter (`--log-level`, else `RUST_LOG`) names rustls itself, that
/// module logs errors only.
pub fn quiet_handshake_noise(log: &mut LogArgs) {
    let rust_log = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty());
    let current = match (&log.log_level, rust_log) {
        (Some(v), _) => v.clone(),
        (None, Some(v)) => {
            if b3_common::logging::filter(None, Some(&v)).is_err() {
                return; // let start-up report the bad RUST_LOG as such
            }
            v
        }
        (None, None) => "info".into(),
    };
    if !current.contains("rustls") {
        log.log_level = Some(format!("{current},rustls::msgs::handshake=error"));
    }
}

impl RunArgs {
    /// Runtime worker threads to start (`--worker-threads`, 0 = per CPU).
    pub fn workers(&self) -> usize {
        match self.worker_threads {
            0 => b3_common::daemon::available_cpus(),
            n => n,
        }
    }

    fn options(&self) -> Options {
        Options {
            https_port: self.https_port.unwrap_or(self.websecure_addr.port()),
            redirect_to_https: self.redirect_to_https,
            connect_timeout: self.connect_timeout,
            response_timeout: self.response_timeout,
            header_read_timeout: self.header_read_timeout,
            handshake_timeout: self.handshake_timeout,
            max_header_bytes: self.max_header_bytes.max(1024),
            max_uri_bytes: self.max_uri_bytes.max(256),
            max_body_bytes: (self.max_body_bytes > 0).then_some(self.max_body_bytes),
            eject_duration: self.eject_duration,
            max_connections: self.max_connections.max(1),
            backend_insecure_skip_verify: self.backend_insecure_skip_verify,
            ..Options::default()
        }
    }
}

/// The default certificate: from (or generated into) `cert_dir`; if that
/// directory cannot be used, a certificate kept in memory only.
fn default_certificate(args: &RunArgs) -> anyhow::Result<(tls::Loaded, String)> {
    match tls::default_cert(&args.cert_dir, &args.domain) {
        Ok((l, path)) => Ok((l, path.display().to_string())),
        Err(e) => {
            tracing::warn!(
                error = format!("{e:#}"),
                "cannot keep the default certificate on disk; using one in memory (replicas will differ: set --cert-dir to a shared writable directory)"
            );
            let pem = tls::generate_wildcard(&args.domain)?;
            let l =
                tls::load_pem(pem.as_bytes(), pem.as_bytes()).map_err(|e| anyhow::anyhow!(e))?;
            Ok((l, "generated in memory".into()))
        }
    }
}

async fn bind(addr: SocketAddr, name: &str, flag: &str) -> anyhow::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .with_context(|| format!("creating the {name} socket"))?;
    socket.set_reuseaddr(true).ok();
    socket
        .bind(addr)
        .with_context(|| format!("binding the {name} entry point on {addr} (in use, or a privileged port without CAP_NET_BIND_SERVICE? change it with {flag})"))?;
    socket
        .listen(4096)
        .with_context(|| format!("listening on {addr}"))
}

/// Runs the proxy until `shutdown` fires.
pub async fn run(args: RunArgs, shutdown: Shutdown) -> anyhow::Result<()> {
    if let Some(Command::Explain { service, json }) = &args.command {
        let cfg = args.swarm.config(&args.domain);
        print!(
            "{}",
            crate::swarm::explain::explain(&cfg, service.as_deref(), *json).await?
        );
        return Ok(());
    }
    // Several crates may try; the first install wins, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut registry = admin::registry("edge", env!("CARGO_PKG_VERSION"));
    let metrics = Metrics::register(&mut registry);

    let (default_cert, source) = default_certificate(&args)?;
    let certs = Arc::new(tls::CertStore::new(default_cert, source));
    let tls_config = tls::server_config(certs.clone())?;
    let rt = Arc::new(Runtime::new(
        args.options(),
        certs.clone(),
        metrics,
        AccessLog::start(args.access_log),
    )?);

    let web = bind(args.web_addr, "web", "--web-addr").await?;
    let websecure = bind(args.websecure_addr, "websecure", "--websecure-addr").await?;
    let web_local = web.local_addr()?;
    let secure_local = websecure.local_addr()?;
    if let Ok(mut e) = rt.entry_points.lock() {
        *e = vec![
            ("web".into(), web_local.to_string()),
            ("websecure".into(), secure_local.to_string()),
        ];
    }

    // The Swarm provider's snapshots, also served by the admin API.
    let swarm_cfg = args.swarm.config(&args.domain);
    let (swarm_tx, swarm_rx) = if args.swarm.enabled(&swarm_cfg) {
        let (tx, rx) = tokio::sync::watch::channel(crate::swarm::SwarmSnapshot::default());
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };

    // Serving is what matters to an orchestrator: a rejected configuration
    // change degrades (still 200) rather than fails, since the last good one
    // is still routing.
    let health_rt = rt.clone();
    let health: b3_common::Health = Arc::new(move || {
        let rejected: Vec<String> = health_rt
            .providers
            .lock()
            .map(|p| {
                p.iter()
                    .filter_map(|(name, st)| {
                        st.last_error
                            .as_ref()
                            .map(|e| format!("provider {name}: last change rejected: {e}"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        if rejected.is_empty() {
            HealthStatus::Ok
        } else {
            HealthStatus::Degraded(rejected.join("; "))
        }
    });
    let admin = AdminServer::bind(
        args.admin_addr,
        "edge",
        env!("CARGO_PKG_VERSION"),
        registry,
        health,
    )
    .await?
    .with_handler(crate::swarm::explain::admin_handler(
        swarm_rx.clone(),
        crate::admin::handler(rt.clone()),
    ));
    tracing::info!(admin = %admin.local_addr()?, web = %web_local, websecure = %secure_local, "edge started");

    // Providers feed the aggregator, which swaps routing snapshots.
    let mut source = provider::Source::new();
    let location = match (&args.config_file, &args.config_dir) {
        (Some(f), _) => Some(Location::File(f.clone())),
        (None, Some(d)) => Some(Location::Directory(d.clone())),
        (None, None) => None,
    };
    match location {
        Some(loc) => {
            let (Location::File(f) | Location::Directory(f)) = &loc;
            if !f.exists() {
                tracing::warn!(path = %f.display(), "configuration path does not exist yet; edge will load it when it appears");
            }
            tokio::spawn(provider::file::run(
                loc,
                args.watch_interval,
                source.sink("file"),
                shutdown.clone(),
            ));
        }
        None => tracing::info!(
            "no --config-file or --config-dir: serving no routers until a provider adds some"
        ),
    }
    if let (Some(tx), Some(rx)) = (swarm_tx, swarm_rx) {
        let sink = source.sink(crate::swarm::PROVIDER);
        tokio::spawn(crate::swarm::forward(rx, move |d| {
            let sink = sink.clone();
            async move { sink.push(d).await }
        }));
        let swarm_shutdown = shutdown.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::swarm::run(swarm_cfg, tx, swarm_shutdown).await {
                tracing::error!(error = format!("{e:#}"), "swarm provider not started");
            }
        });
    }
    let agg_rt = rt.clone();
    let mut agg_shutdown = shutdown.clone();
    tokio::spawn(async move {
        loop {
            let batch = tokio::select! {
                _ = agg_shutdown.wait() => return,
                b = source.next() => match b { Some(b) => b, None => return },
            };
            for u in batch {
                match u {
                    Update::Config { provider, config } => agg_rt.apply(&provider, *config),
                    Update::Rejected { provider, error } => agg_rt.reject(&provider, error),
                }
            }
        }
    });
    tokio::spawn(health::run(rt.clone(), shutdown.clone()));
    let cert_certs = certs.clone();
    let mut cert_shutdown = shutdown.clone();
    let interval = args.watch_interval;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = cert_shutdown.wait() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            cert_certs.reload_changed();
        }
    });

    let acceptor = tokio_rustls::TlsAcceptor::from(tls_config);
    let web_task = tokio::spawn(listener::serve(
        EntryPoint {
            name: "web",
            listener: web,
            tls: None,
        },
        rt.clone(),
        shutdown.clone(),
    ));
    let secure_task = tokio::spawn(listener::serve(
        EntryPoint {
            name: "websecure",
            listener: websecure,
            tls: Some(acceptor),
        },
        rt.clone(),
        shutdown.clone(),
    ));
    admin.serve(shutdown).await;
    let _ = web_task.await;
    let _ = secure_task.await;
    tracing::info!("edge stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn rustls_sni_warnings_are_quieted_unless_asked_for() {
        let mut c = Cli::try_parse_from(["edge", "--log-level", "warn"]).unwrap();
        quiet_handshake_noise(&mut c.log);
        assert_eq!(
            c.log.log_level.as_deref(),
            Some("warn,rustls::msgs::handshake=error")
        );
        let mut c = Cli::try_parse_from(["edge", "--log-level", "info,rustls=debug"]).unwrap();
        quiet_handshake_noise(&mut c.log);
        assert_eq!(c.log.log_level.as_deref(), Some("info,rustls=debug"));
        let mut c = Cli::try_parse_from(["edge", "--log-level", "warn"]).unwrap();
        c.log.log_level = Some("bogus=loud".into());
        quiet_handshake_noise(&mut c.log);
        assert!(
            b3_common::logging::filter(c.log.log_level.as_deref(), None).is_err(),
            "a bad filter stays bad and is reported at start-up"
        );
    }

    #[test]
    fn flags_beat_env_which_beats_defaults() {
        let c = Cli::try_parse_from(["edge"]).unwrap();
        assert_eq!(c.run.web_addr.port(), 80);
        assert_eq!(c.run.options().https_port, 443);
        let c = Cli::try_parse_from([
            "edge",
            "--websecure-addr",
            "127.0.0.1:8443",
            "--redirect-to-https",
            "false",
        ])
        .unwrap();
        assert_eq!(c.run.options().https_port, 8443);
        assert!(!c.run.redirect_to_https);
        assert!(Cli::try_parse_from(["edge", "--connect-timeout", "soon"]).is_err());
    }
}
