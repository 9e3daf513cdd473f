//! Command line of the `store` binary. Every flag also reads an environment
//! variable (`STORE_*`); a flag given on the command line wins over the
//! environment, which wins over the built-in default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use b3_common::{LogArgs, Shutdown};
use clap::{Parser, Subcommand};

use crate::net::Identity;

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
    /// Create a new cluster in this node's data directory (first node only),
    /// then start it with `store server`.
    Init(InitArgs),
    /// Print a token that lets another node join this node's cluster.
    JoinToken(JoinTokenArgs),
    /// Run a storage node (chunks + metadata) until SIGTERM/SIGINT.
    Server(Box<ServerArgs>),
    /// Cluster health, quorum, leader, nodes and placement groups.
    Status(ClientArgs),
    /// The nodes of the cluster map (like `ceph osd tree`).
    Nodes(ClientArgs),
    /// Space used and available, per node and in total (like `ceph df`).
    Df(ClientArgs),
    /// Planned maintenance: `store node out|in|remove ID` (remove drains
    /// the node first, with progress).
    Node(crate::maint::cli::NodeCmd),
    /// Check every chunk copy against its crc32 now and repair bad ones
    /// from good replicas, with progress.
    Scrub(crate::maint::cli::ScrubArgs),
    /// Remove a node from the cluster map at once, without draining (same
    /// as `store node remove --no-drain`; stop it first, it rejoins if
    /// restarted).
    RemoveNode(NodeArgs),
    /// Stop placing data on a node; its chunks move to the others (same as
    /// `store node out`).
    Out(NodeArgs),
    /// Place data on a node again after `store out` (same as `store node in`).
    In(NodeArgs),
    /// Mount the filesystem on DIR (foreground) until SIGTERM/SIGINT.
    Mount(crate::mount::MountArgs),
    /// Inspect files on a mount (`store fs stat PATH`).
    Fs(crate::mount::FsArgs),
    /// Zero-touch bootstrap companion for Docker Swarm: founds the cluster
    /// or fetches a join token for the local `store server --bootstrap`.
    Bootstrap(crate::bootstrap::BootstrapArgs),
}

impl Command {
    /// Reports printed to stdout and exit (no daemon, no long-lived
    /// sockets): these take the default SIGPIPE disposition.
    pub fn prints_only(&self) -> bool {
        matches!(
            self,
            Command::JoinToken(_)
                | Command::Status(_)
                | Command::Nodes(_)
                | Command::Df(_)
                | Command::Fs(_)
        )
    }
}

/// Flags of the commands that act on one node.
#[derive(Debug, Clone, clap::Args)]
pub struct NodeArgs {
    /// Node id as `store nodes` prints it (hex).
    pub id: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// The data directory flag shared by the commands that use one.
#[derive(Debug, Clone, clap::Args)]
pub struct DataDir {
    /// Directory holding this node's chunks, metadata and identity.
    #[arg(
        long,
        env = "STORE_DATA_DIR",
        default_value = "/var/lib/b3/store",
        value_name = "DIR"
    )]
    pub data_dir: PathBuf,
}

/// Flags of `store init`.
#[derive(Debug, Clone, clap::Args)]
pub struct InitArgs {
    #[command(flatten)]
    pub dir: DataDir,
    /// Copies of every chunk.
    #[arg(long, env = "STORE_SIZE", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=7))]
    pub size: u32,
    /// Fewest durable copies before a write is acknowledged.
    #[arg(long, env = "STORE_MIN_SIZE", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=7))]
    pub min_size: u32,
}

/// Flags of `store join-token`.
#[derive(Debug, Clone, clap::Args)]
pub struct JoinTokenArgs {
    #[command(flatten)]
    pub dir: DataDir,
    /// How long the token stays valid (e.g. 30m, 24h, 7d).
    #[arg(long, env = "STORE_TOKEN_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
}

/// Flags of `store server`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    #[command(flatten)]
    pub dir: DataDir,

    /// Address of the admin HTTP endpoint (/health, /metrics, object API).
    #[arg(
        long,
        env = "STORE_ADMIN_ADDR",
        default_value = "0.0.0.0:7401",
        value_name = "ADDR"
    )]
    pub admin_addr: SocketAddr,

    /// UDP address of the QUIC cluster transport.
    #[arg(
        long,
        env = "STORE_LISTEN",
        default_value = "0.0.0.0:7400",
        value_name = "ADDR"
    )]
    pub listen: SocketAddr,

    /// Address other nodes use to reach this one (default: --listen, or
    /// this host's address when --listen is 0.0.0.0).
    #[arg(long, env = "STORE_ADVERTISE", value_name = "ADDR")]
    pub advertise: Option<SocketAddr>,

    /// Join token from `store join-token` (only needed the first time).
    #[arg(long, env = "STORE_JOIN", value_name = "TOKEN")]
    pub join: Option<String>,

    /// Nodes to contact when joining: `host:port,...` or a DNS name such as
    /// `tasks.store` (every address it resolves to; port 7400 if omitted).
    #[arg(long, env = "STORE_PEERS", value_name = "LIST", value_delimiter = ',')]
    pub peers: Vec<String>,

    /// Failure domain of this node; at most one copy of a chunk per domain
    /// (default: the host name).
    #[arg(long, env = "STORE_FAILURE_DOMAIN", value_name = "NAME")]
    pub failure_domain: Option<String>,

    /// Placement weight (default: capacity of the data disk in GiB).
    #[arg(long, env = "STORE_WEIGHT", value_name = "N")]
    pub weight: Option<u64>,

    /// Without an identity, wait for the bootstrap companion (`store
    /// bootstrap`) to found the cluster or bring a join token, instead of
    /// failing; also detect --advertise from the routing table.
    #[arg(long, env = "STORE_BOOTSTRAP")]
    pub bootstrap: bool,

    /// Raft election timeout (the heartbeat is a fifth of it).
    #[arg(long, env = "STORE_ELECTION_TIMEOUT", default_value = "1s", value_parser = humantime::parse_duration)]
    pub election_timeout: Duration,

    /// Snapshot the metadata (and compact the log) every N entries.
    #[arg(long, env = "STORE_SNAPSHOT_EVERY", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..))]
    pub snapshot_every: u64,

    /// A metadata voter down this long is replaced by an up-to-date learner
    /// (clusters of 4+ nodes).
    #[arg(long, env = "STORE_VOTER_GRACE", default_value = "60s", value_parser = humantime::parse_duration)]
    pub voter_grace: Duration,

    #[command(flatten)]
    pub maint: crate::maint::MaintArgs,
}

/// Flags of the admin commands.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// Admin address of any node of the cluster.
    #[arg(
        long,
        env = "STORE_SERVER",
        default_value = "127.0.0.1:7401",
        value_name = "ADDR"
    )]
    pub server: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Runs the parsed command.
pub async fn run(command: Command, shutdown: Shutdown) -> anyhow::Result<()> {
    match command {
        Command::Init(args) => init(args),
        Command::JoinToken(args) => {
            let id = Identity::require(&args.dir.data_dir)?;
            println!("{}", id.join_token(args.ttl)?);
            Ok(())
        }
        Command::Server(args) => crate::server::run(*args, shutdown).await,
        Command::Status(args) => crate::admin_cli::status(&args).await,
        Command::Nodes(args) => crate::admin_cli::nodes(&args).await,
        Command::Df(args) => crate::admin_cli::df(&args).await,
        Command::Node(c) => crate::maint::cli::node(c).await,
        Command::Scrub(a) => crate::maint::cli::scrub(a).await,
        Command::RemoveNode(a) => crate::admin_cli::change_node(&a.client, &a.id, "remove").await,
        Command::Out(a) => crate::admin_cli::change_node(&a.client, &a.id, "out").await,
        Command::In(a) => crate::admin_cli::change_node(&a.client, &a.id, "in").await,
        Command::Mount(args) => crate::mount::run(args, shutdown).await,
        Command::Fs(args) => crate::mount::run_fs(args),
        Command::Bootstrap(args) => crate::bootstrap::run(args, shutdown).await,
    }
}

fn init(args: InitArgs) -> anyhow::Result<()> {
    if args.min_size > args.size {
        return b3_common::daemon::usage(format!(
            "--min-size {} is larger than --size {}; min_size must be at most size",
            args.min_size, args.size
        ));
    }
    let dir = &args.dir.data_dir;
    crate::server::prepare_data_dir(dir)?;
    let id = Identity::init(dir, args.size as usize, args.min_size as usize)?;
    crate::server::mark_founder(dir)?;
    let token = id
        .join_token(Duration::from_secs(24 * 3600))
        .context("making the first join token")?;
    println!(
        "cluster {} created in {}",
        id.settings.cluster_id,
        dir.display()
    );
    println!(
        "node {:016x}, size {}, min_size {}",
        id.node_id, id.settings.size, id.settings.min_size
    );
    println!("start it with:  store server --data-dir {}", dir.display());
    println!("join others with (valid 24h; `store join-token` makes more):");
    println!("  store server --join {token} --peers <this node>:7400");
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
    fn bad_admin_addr_names_the_value() {
        let err =
            Cli::try_parse_from(["store", "server", "--admin-addr", "localhost"]).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("localhost") && msg.contains("--admin-addr"),
            "{msg}"
        );
    }

    #[test]
    fn peers_split_on_commas() {
        let cli = Cli::try_parse_from(["store", "server", "--peers", "10.0.0.1:7400,tasks.store"])
            .unwrap();
        let Command::Server(args) = cli.command else {
            panic!("not server")
        };
        assert_eq!(args.peers, vec!["10.0.0.1:7400", "tasks.store"]);
    }
}
