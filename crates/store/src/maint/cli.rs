//! Admin commands of the maintenance jobs: `store node out|in|remove`,
//! `store scrub`, and the recovery lines of `store status`.

use std::time::{Duration, Instant};

use anyhow::Context;

use super::MaintStatus;
use crate::admin_cli::{get, request};
use crate::cli::ClientArgs;

/// `store node …`.
#[derive(Debug, Clone, clap::Args)]
pub struct NodeCmd {
    #[command(subcommand)]
    pub action: NodeAction,
}

/// Planned maintenance of one node.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum NodeAction {
    /// Stop placing data on a node; its chunks are copied to the others
    /// and then deleted from it (it keeps its metadata vote).
    Out(NodeTarget),
    /// Place data on a node again (backfill moves its share back).
    In(NodeTarget),
    /// Drain a node (mark it out and wait until every chunk it holds is
    /// on its new replicas), then remove it from the cluster map.
    Remove(RemoveArgs),
}

/// A node and the server to ask.
#[derive(Debug, Clone, clap::Args)]
pub struct NodeTarget {
    /// Node id as `store nodes` prints it (hex).
    pub id: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Flags of `store node remove`.
#[derive(Debug, Clone, clap::Args)]
pub struct RemoveArgs {
    #[command(flatten)]
    pub target: NodeTarget,
    /// Remove at once without draining (its copies are lost; the other
    /// replicas re-replicate what it held).
    #[arg(long)]
    pub no_drain: bool,
    /// Give up draining after this long (the node stays out).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// Flags of `store scrub`.
#[derive(Debug, Clone, clap::Args)]
pub struct ScrubArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Start the scrub and return without waiting for it.
    #[arg(long)]
    pub no_wait: bool,
    /// Stop waiting after this long (the scrub goes on).
    #[arg(long, default_value = "2h", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

async fn maint(server: &str) -> anyhow::Result<MaintStatus> {
    let body = get(server, "/v1/maint").await?;
    serde_json::from_str(&body).with_context(|| {
        format!("{server} sent a maintenance status this `store` does not understand")
    })
}

/// Runs `store node …`.
pub async fn node(cmd: NodeCmd) -> anyhow::Result<()> {
    match cmd.action {
        NodeAction::Out(t) => {
            crate::admin_cli::change_node(&t.client, &t.id, "out").await?;
            if !t.client.json {
                println!(
                    "data now moves off node {}: follow it with `store status`",
                    t.id
                );
            }
            Ok(())
        }
        NodeAction::In(t) => crate::admin_cli::change_node(&t.client, &t.id, "in").await,
        NodeAction::Remove(r) => remove(r).await,
    }
}

async fn remove(r: RemoveArgs) -> anyhow::Result<()> {
    let t = &r.target;
    let server = t.client.server.as_str();
    if !r.no_drain {
        let body = get(server, "/v1/nodes").await?;
        let nodes: Vec<crate::api::NodeStatus> = serde_json::from_str(&body)?;
        let Some(node) = nodes
            .iter()
            .find(|n| n.id == t.id || n.id.trim_start_matches('0') == t.id.trim_start_matches('0'))
        else {
            anyhow::bail!("no node {} in the cluster map; see `store nodes`", t.id);
        };
        let id = node.id.clone();
        if node.is_in {
            request(server, "POST", &format!("/v1/nodes/{id}/out")).await?;
            println!("node {id} marked out; draining");
        }
        drain(server, &id, r.timeout).await?;
    }
    request(server, "DELETE", &format!("/v1/nodes/{}", t.id)).await?;
    println!("node {} removed from the cluster map", t.id);
    Ok(())
}

/// Waits until the cluster holds every chunk of node `id` elsewhere.
async fn drain(server: &str, id: &str, timeout: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    // Let every node see the new map and compare.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut first_chunks = None;
    loop {
        let s = maint(server).await?;
        let Some(n) = s.nodes.iter().find(|n| n.id == id) else {
            anyhow::bail!("node {id} disappeared from the map while draining");
        };
        let up = n.state == "up";
        let held = n.unsynced_chunks.unwrap_or(0);
        let total = *first_chunks.get_or_insert(held.max(1));
        let settled = s.pgs_recovering == 0 && s.nodes_peering.is_empty() && s.chunks_to_move == 0;
        let done = settled && (!up || held == 0);
        let frac = if up {
            1.0 - held as f64 / total as f64
        } else {
            1.0 - f64::from(s.pgs_recovering) / 256f64.max(f64::from(s.pgs_recovering))
        };
        println!(
            "{} {}",
            bar(frac),
            if up {
                format!(
                    "{held} chunks still only on {id}; {} copies to make, {}/s{}",
                    s.chunks_to_move,
                    human(s.rate_bps),
                    eta(s.eta_s)
                )
            } else {
                format!(
                    "node down: {} placement groups recovering, {} copies to make{}",
                    s.pgs_recovering,
                    s.chunks_to_move,
                    eta(s.eta_s)
                )
            }
        );
        if done {
            println!("node {id} drained");
            return Ok(());
        }
        if start.elapsed() > timeout {
            anyhow::bail!(
                "node {id} not drained after {timeout:?} (it stays out); check `store status`, then retry or use --no-drain"
            );
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Runs `store scrub`.
pub async fn scrub(a: ScrubArgs) -> anyhow::Result<()> {
    let server = a.client.server.as_str();
    let before = maint(server).await?.scrub.passes;
    let body = request(server, "POST", "/v1/scrub").await?;
    if a.client.json && a.no_wait {
        print!("{body}");
        return Ok(());
    }
    let v: serde_json::Value = serde_json::from_str(&body)?;
    let started = v["started"].as_array().map(|a| a.len()).unwrap_or(0);
    println!("scrub started on {started} nodes");
    if let Some(p) = v["problems"].as_array() {
        for p in p {
            println!("  {}", p.as_str().unwrap_or_default());
        }
    }
    if a.no_wait {
        return Ok(());
    }
    let start = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    loop {
        let s = maint(server).await?;
        let sc = &s.scrub;
        let frac = if sc.total == 0 {
            1.0
        } else {
            sc.checked as f64 / sc.total as f64
        };
        println!(
            "{} {}/{} chunks checked, {} corrupt, {} repaired, {} unrepairable",
            bar(frac),
            sc.checked,
            sc.total,
            sc.corrupt,
            sc.repaired,
            sc.unrepairable
        );
        // Reports travel once a second: wait until every started pass has
        // been seen finishing, not just "nothing running yet".
        if sc.running == 0 && sc.passes >= before + started as u64 {
            if a.client.json {
                println!("{}", serde_json::to_string(&s.scrub)?);
            }
            if sc.unrepairable > 0 {
                anyhow::bail!(
                    "scrub found {} chunk copies with no good replica; see the server logs for their ids",
                    sc.unrepairable
                );
            }
            println!("scrub finished");
            return Ok(());
        }
        if start.elapsed() > a.timeout {
            anyhow::bail!(
                "scrub still running after {:?}; it goes on in the background",
                a.timeout
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The maintenance lines of `store status`.
pub fn print_status(m: &MaintStatus, pgs_total: u32) {
    if m.pgs_recovering > 0 || m.chunks_to_move > 0 {
        let frac = 1.0 - f64::from(m.pgs_recovering) / f64::from(pgs_total.max(1));
        println!(
            " recovery: {} {} pgs recovering, {} copies ({}) to make at {}/s{}{}",
            bar(frac),
            m.pgs_recovering,
            m.chunks_to_move,
            human(m.bytes_to_move),
            human(m.rate_bps),
            eta(m.eta_s),
            if m.throttled_nodes > 0 {
                format!(", slowed for client I/O on {} nodes", m.throttled_nodes)
            } else {
                String::new()
            }
        );
    } else {
        println!(
            " recovery: idle ({} copies made since start)",
            m.chunks_moved
        );
    }
    for n in &m.nodes {
        if n.state != "up" {
            let out = match (n.is_in, n.out_in_s) {
                (true, Some(s)) => format!(", out in {s}s"),
                (false, _) if n.auto_out => ", out (automatically)".into(),
                (false, _) => ", out".into(),
                _ => String::new(),
            };
            println!("     down: {} for {}s{out}", n.id, n.down_for_s);
        }
    }
    let sc = &m.scrub;
    if sc.running > 0 {
        let frac = if sc.total == 0 {
            1.0
        } else {
            sc.checked as f64 / sc.total as f64
        };
        println!(
            "    scrub: {} {}/{} chunks, {} corrupt, {} repaired",
            bar(frac),
            sc.checked,
            sc.total,
            sc.corrupt,
            sc.repaired
        );
    } else {
        let last = sc
            .oldest_finished_ms
            .map(|ms| format!("oldest pass finished {} ago", ago(ms)))
            .unwrap_or_else(|| "not every node has finished a pass yet".into());
        println!(
            "    scrub: idle, {last}; {} corrupt found, {} repaired, {} unrepairable",
            sc.corrupt, sc.repaired, sc.unrepairable
        );
    }
    if m.gc_blocked.is_empty() {
        println!("       gc: {} garbage chunks deleted", m.gc_deleted);
    } else {
        for b in &m.gc_blocked {
            println!("       gc: blocked: {b}");
        }
    }
}

/// `[#####.....]  50%`.
pub fn bar(frac: f64) -> String {
    let f = frac.clamp(0.0, 1.0);
    let n = (f * 30.0).round() as usize;
    format!(
        "[{}{}] {:>3.0}%",
        "#".repeat(n),
        ".".repeat(30 - n),
        f * 100.0
    )
}

fn eta(s: Option<u64>) -> String {
    match s {
        Some(s) => format!(
            ", ETA {}",
            humantime::format_duration(Duration::from_secs(s))
        ),
        None => String::new(),
    }
}

fn ago(ms: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    humantime::format_duration(Duration::from_secs(now.saturating_sub(ms) / 1000)).to_string()
}

fn human(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_bar_is_bounded() {
        assert_eq!(
            bar(0.5),
            format!("[{}{}]  50%", "#".repeat(15), ".".repeat(15))
        );
        assert!(bar(2.0).ends_with("100%"));
        assert!(bar(-1.0).ends_with("  0%"));
    }
}
