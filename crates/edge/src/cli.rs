//! Command line of the `edge` binary. Every flag also reads an environment
//! variable (`EDGE_*`); a flag given on the command line wins over the
//! environment, which wins over the built-in default.

use std::net::SocketAddr;
use std::sync::Arc;

use b3_common::{admin, AdminServer, HealthStatus, LogArgs, Shutdown};
use clap::Parser;

/// Label-driven TLS reverse proxy for Docker Swarm services.
#[derive(Debug, Parser)]
#[command(name = "edge", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,

    #[command(flatten)]
    pub run: RunArgs,
}

/// Flags of the proxy.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Address of the admin HTTP endpoint (/health, /metrics).
    #[arg(
        long,
        env = "EDGE_ADMIN_ADDR",
        default_value = "0.0.0.0:8080",
        value_name = "ADDR"
    )]
    pub admin_addr: SocketAddr,

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

/// Runs the proxy until `shutdown` fires.
pub async fn run(args: RunArgs, shutdown: Shutdown) -> anyhow::Result<()> {
    if let Some(Command::Explain { service, json }) = &args.command {
        let cfg = crate::swarm::SwarmConfig::from(&args.swarm);
        print!(
            "{}",
            crate::swarm::explain::explain(&cfg, service.as_deref(), *json).await?
        );
        return Ok(());
    }
    let registry = admin::registry("edge", env!("CARGO_PKG_VERSION"));
    let health: b3_common::Health = Arc::new(|| HealthStatus::Ok);
    let admin = AdminServer::bind(
        args.admin_addr,
        "edge",
        env!("CARGO_PKG_VERSION"),
        registry,
        health,
    )
    .await?;
    tracing::info!(admin = %admin.local_addr()?, "edge started");
    admin.serve(shutdown).await;
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
}
