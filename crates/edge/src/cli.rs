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
}

/// Runs the proxy until `shutdown` fires.
pub async fn run(args: RunArgs, shutdown: Shutdown) -> anyhow::Result<()> {
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
