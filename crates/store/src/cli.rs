//! Command line of the `store` binary. Every flag also reads an environment
//! variable (`STORE_*`); a flag given on the command line wins over the
//! environment, which wins over the built-in default.

use std::net::SocketAddr;
use std::path::PathBuf;

use b3_common::{LogArgs, Shutdown};
use clap::{Parser, Subcommand};

/// Replicated chunk store with a metadata quorum and a FUSE client.
#[derive(Debug, Parser)]
#[command(name = "store", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// What to run.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a storage node (chunks + metadata) until SIGTERM/SIGINT.
    Server(ServerArgs),
    /// Mount the filesystem on DIR (foreground) until SIGTERM/SIGINT.
    Mount(crate::mount::MountArgs),
    /// Inspect files on a mount (`store fs stat PATH`).
    Fs(crate::mount::FsArgs),
}

/// Flags of `store server`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// Directory holding this node's chunks, metadata and identity.
    #[arg(
        long,
        env = "STORE_DATA_DIR",
        default_value = "/var/lib/b3/store",
        value_name = "DIR"
    )]
    pub data_dir: PathBuf,

    /// Address of the admin HTTP endpoint (/health, /metrics).
    #[arg(
        long,
        env = "STORE_ADMIN_ADDR",
        default_value = "0.0.0.0:7401",
        value_name = "ADDR"
    )]
    pub admin_addr: SocketAddr,
}

/// Runs the parsed command.
pub async fn run(command: Command, shutdown: Shutdown) -> anyhow::Result<()> {
    match command {
        Command::Server(args) => crate::server::run(args, shutdown).await,
        Command::Mount(args) => crate::mount::run(args, shutdown).await,
        Command::Fs(args) => crate::mount::run_fs(args),
    }
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
    fn bad_admin_addr_names_the_value() {
        let err =
            Cli::try_parse_from(["store", "server", "--admin-addr", "localhost"]).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("localhost") && msg.contains("--admin-addr"),
            "{msg}"
        );
    }
}
