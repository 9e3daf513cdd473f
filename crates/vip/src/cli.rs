//! Command line of the `vip` binary. Every flag also reads an environment
//! variable (`VIP_*`); a flag given on the command line wins over the
//! environment, which wins over the built-in default.

use std::net::SocketAddr;
use std::sync::Arc;

use b3_common::{admin, AdminServer, HealthStatus, LogArgs, Shutdown};
use clap::Parser;

/// VRRPv3 virtual-IP failover agent, wire-compatible with keepalived.
#[derive(Debug, Parser)]
#[command(name = "vip", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,

    #[command(flatten)]
    pub run: RunArgs,
}

/// Flags of the agent.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Address of the admin HTTP endpoint (/health, /metrics).
    #[arg(
        long,
        env = "VIP_ADMIN_ADDR",
        default_value = "0.0.0.0:7410",
        value_name = "ADDR"
    )]
    pub admin_addr: SocketAddr,
}

/// Runs the agent until `shutdown` fires.
pub async fn run(args: RunArgs, shutdown: Shutdown) -> anyhow::Result<()> {
    let registry = admin::registry("vip", env!("CARGO_PKG_VERSION"));
    let health: b3_common::Health = Arc::new(|| HealthStatus::Ok);
    let admin = AdminServer::bind(
        args.admin_addr,
        "vip",
        env!("CARGO_PKG_VERSION"),
        registry,
        health,
    )
    .await?;
    tracing::info!(admin = %admin.local_addr()?, "vip started");
    admin.serve(shutdown).await;
    tracing::info!("vip stopped");
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
