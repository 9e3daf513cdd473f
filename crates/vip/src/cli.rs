//! Command line of the `vip` binary. Every flag also reads an environment
//! variable (`VIP_*`); a flag given on the command line wins over the
//! environment, which wins over the osixia/keepalived variables
//! (`KEEPALIVED_*`), which win over the built-in default.
//!
//! `vip` with no subcommand runs the agent; `vip status` asks a running
//! agent for its state.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use b3_common::{admin, AdminServer, HealthStatus, LogArgs, Shutdown};
use clap::{Parser, Subcommand};

use crate::admin::{Metrics, Status};
use crate::config::{self, Config, Raw};

/// VRRPv3 virtual-IP failover agent, wire-compatible with keepalived.
///
/// Without a subcommand, runs the agent. Give it at least one virtual IP
/// (--virtual-ip or KEEPALIVED_VIRTUAL_IPS); with none it only serves its
/// admin endpoint. See docs/vip.md for every option.
#[derive(Debug, Parser)]
#[command(name = "vip", version, about, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,

    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub run: RunArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show a running agent's state, priority, master, checks and counters.
    Status {
        /// The agent's admin address.
        #[arg(
            long,
            env = "VIP_ADMIN_ADDR",
            default_value = "127.0.0.1:7410",
            value_name = "ADDR"
        )]
        admin_addr: SocketAddr,
        /// Print the raw JSON document.
        #[arg(long)]
        json: bool,
    },
}

/// Flags of the agent.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Address of the admin HTTP endpoint (/health, /metrics, /api/status).
    #[arg(
        long,
        env = "VIP_ADMIN_ADDR",
        default_value = "0.0.0.0:7410",
        value_name = "ADDR"
    )]
    pub admin_addr: SocketAddr,

    /// Interface VRRP runs on and the virtual IPs go to
    /// [fallback: KEEPALIVED_INTERFACE; default: eth0].
    #[arg(long, env = "VIP_INTERFACE", value_name = "IF")]
    pub interface: Option<String>,

    /// Virtual router id, shared by every node of the group
    /// [fallback: KEEPALIVED_ROUTER_ID; default: 51].
    #[arg(long, env = "VIP_VRID", value_name = "1-255", value_parser = clap::value_parser!(u8).range(1..=255))]
    pub vrid: Option<u8>,

    /// Base priority; the highest healthy node holds the VIP. 255 = the
    /// address owner [fallback: KEEPALIVED_PRIORITY; default: 100].
    #[arg(long, env = "VIP_PRIORITY", value_name = "1-255", value_parser = clap::value_parser!(u8).range(1..=255))]
    pub priority: Option<u8>,

    /// Virtual IP(s): ADDR[/PREFIX] [dev IF] [label LABEL]; repeat the flag
    /// or separate with commas [fallback: KEEPALIVED_VIRTUAL_IPS].
    #[arg(long = "virtual-ip", env = "VIP_VIRTUAL_IPS", value_name = "VIP")]
    pub virtual_ips: Vec<String>,

    /// Unicast peer(s) (the other nodes' addresses); without any, adverts
    /// go to multicast 224.0.0.18 [fallback: KEEPALIVED_UNICAST_PEERS].
    #[arg(long = "peer", env = "VIP_PEERS", value_name = "ADDR")]
    pub peers: Vec<String>,

    /// Advertisement interval in centiseconds (10 = 0.1 s; keepalived's
    /// `advert_int 1` is 100). A dead master is replaced after 3 intervals
    /// plus a skew.
    #[arg(long, env = "VIP_ADVERT_INT", value_name = "CS", default_value_t = config::DEFAULT_ADVERT_INT)]
    pub advert_int: u16,

    /// Initial state hint, as keepalived's `state`: MASTER claims the VIP at
    /// once on start, BACKUP waits [fallback: KEEPALIVED_STATE; default: BACKUP].
    #[arg(long, env = "VIP_STATE", value_name = "MASTER|BACKUP")]
    pub state: Option<String>,

    /// Never take the VIP from a lower-priority master that holds it.
    #[arg(long, env = "VIP_NOPREEMPT")]
    pub nopreempt: bool,

    /// After start-up, wait this long before preempting a lower-priority
    /// master (seconds, or 500ms / 2s) [default: 0].
    #[arg(long, env = "VIP_PREEMPT_DELAY", value_name = "DURATION")]
    pub preempt_delay: Option<String>,

    /// Health check: tcp:IP:PORT, http://IP[:PORT]/PATH, https://..., or
    /// cmd:PROGRAM ARGS, then options ,weight=N,fall=N,rise=N,interval=1s,
    /// timeout=1s,status=200|any. Weight 0 (default): FAULT while failing.
    /// Repeatable; in VIP_CHECKS separate with ';'.
    #[arg(
        long = "check",
        env = "VIP_CHECKS",
        value_name = "CHECK",
        value_delimiter = ';'
    )]
    pub checks: Vec<String>,

    /// Add the stack's default check: the local edge accepts TCP on
    /// 127.0.0.1:443 (weight 0: no working edge, no VIP).
    #[arg(long, env = "VIP_CHECK_EDGE")]
    pub check_edge: bool,

    /// Command run on every transition as `CMD INSTANCE VI_<vrid> STATE
    /// PRIORITY` (keepalived's notify) [fallback: KEEPALIVED_NOTIFY].
    #[arg(long, env = "VIP_NOTIFY", value_name = "CMD")]
    pub notify: Option<String>,

    /// Gratuitous ARPs sent on becoming master, 100 ms apart.
    #[arg(long, env = "VIP_GARP_REPEAT", value_name = "N", default_value_t = 5)]
    pub garp_repeat: u32,

    /// Re-announce the VIPs with gratuitous ARP this often while master
    /// (0 = never).
    #[arg(
        long,
        env = "VIP_GARP_REFRESH",
        value_name = "DURATION",
        default_value = "60s"
    )]
    pub garp_refresh: String,
}

impl RunArgs {
    /// The raw values for [`Config::resolve`].
    pub fn raw(&self) -> Raw {
        Raw {
            interface: self.interface.clone(),
            vrid: self.vrid,
            priority: self.priority,
            advert_int: self.advert_int,
            virtual_ips: self.virtual_ips.clone(),
            peers: self.peers.clone(),
            state: self.state.clone(),
            nopreempt: self.nopreempt,
            preempt_delay: self.preempt_delay.clone(),
            checks: self.checks.clone(),
            check_edge: self.check_edge,
            notify: self.notify.clone(),
            garp_repeat: self.garp_repeat,
            garp_refresh: self.garp_refresh.clone(),
        }
    }
}

/// Runs the command line until `shutdown` fires.
pub async fn main(cli: Cli, shutdown: Shutdown) -> anyhow::Result<()> {
    match cli.command {
        Some(Command::Status { admin_addr, json }) => {
            let v = crate::admin::fetch_status(admin_addr)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", crate::admin::render(&v));
            }
            Ok(())
        }
        None => run(cli.run, shutdown).await,
    }
}

/// Runs the agent until `shutdown` fires.
pub async fn run(args: RunArgs, shutdown: Shutdown) -> anyhow::Result<()> {
    let env = |k: &str| std::env::var(k).ok();
    let cfg = match Config::resolve(args.raw(), &env) {
        Ok(c) => c,
        Err(e) => return b3_common::daemon::usage(e.to_string()),
    };
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }
    let mut registry = admin::registry("vip", env!("CARGO_PKG_VERSION"));
    let metrics = Metrics::register(&mut registry);
    let mut st = Status::idle(&cfg.interface, cfg.vrid, cfg.priority, cfg.advert_int);
    st.preempt = cfg.preempt;
    let status = Arc::new(Mutex::new(st));
    let enabled = !cfg.virtual_ips.is_empty();
    let health_status = status.clone();
    let health: b3_common::Health = Arc::new(move || {
        if !enabled {
            return HealthStatus::Degraded(
                "no virtual IP configured: set --virtual-ip or KEEPALIVED_VIRTUAL_IPS".into(),
            );
        }
        let st = match health_status.lock() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        };
        match st.state {
            crate::fsm::State::Fault => HealthStatus::Degraded(format!(
                "FAULT: {}",
                if st.link_up {
                    "a check without weight is failing"
                } else {
                    "link down"
                }
            )),
            _ => HealthStatus::Ok,
        }
    });
    let admin = AdminServer::bind(
        args.admin_addr,
        "vip",
        env!("CARGO_PKG_VERSION"),
        registry,
        health,
    )
    .await?
    .with_handler(crate::admin::handler(status.clone()));
    tracing::info!(admin = %admin.local_addr()?, "vip started");
    let admin_task = tokio::spawn(admin.serve(shutdown.clone()));

    let result = if enabled {
        match crate::agent::run(cfg, metrics, status, shutdown.clone()).await {
            Err(e) if e.downcast_ref::<crate::agent::SetupError>().is_some() => {
                b3_common::daemon::usage(e.to_string())
            }
            r => r,
        }
    } else {
        tracing::warn!(
            "no virtual IP configured (--virtual-ip or KEEPALIVED_VIRTUAL_IPS): VRRP is off, serving the admin endpoint only"
        );
        let mut s = shutdown.clone();
        s.wait().await;
        Ok(())
    };
    if result.is_err() {
        // Do not leave the admin endpoint up after a failed start.
        admin_task.abort();
    } else {
        let _ = admin_task.await;
    }
    tracing::info!("vip stopped");
    result
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
    fn status_subcommand_parses() {
        let cli = Cli::try_parse_from(["vip", "status", "--json"]).unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::Status { json: true, .. })
        ));
        let cli =
            Cli::try_parse_from(["vip", "--virtual-ip", "10.0.0.1", "--peer", "10.0.0.2"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.run.virtual_ips, vec!["10.0.0.1"]);
        assert!(Cli::try_parse_from(["vip", "--priority", "0"]).is_err());
    }
}
