//! Failure detection and the cluster-wide health view.
//!
//! Every second each node asks every other node for its [`NodeReport`]
//! (this also counts as a heartbeat). A node silent for `--down-after` is
//! *down*: writes skip it and reads go to other replicas, but data does not
//! move yet — most outages are restarts. Once it has been down for
//! `--out-after` more, the metadata leader marks it *out* in the cluster map
//! (recording `sys/auto-out/<id>` in the namespace), its placement groups get
//! new replica sets and recovery copies the data. When an automatically
//! out node answers again it is marked *in* and backfill moves its share
//! back. A node the operator marked out stays out.
//!
//! The leader never marks a node out if that would leave fewer in-nodes
//! than `size`: there would be nowhere to re-replicate to.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{MaintArgs, MaintReply, MaintRequest, Maintenance, NodeReport};
use crate::cluster::{Command, NodeId, Op};
use crate::replication::replicas_of_pg;

/// Namespace prefix of automatic out markers.
pub const AUTO_OUT_PREFIX: &str = "sys/auto-out/";
const POLL: Duration = Duration::from_secs(1);

/// Capacity state of a node (Ceph's nearfull / backfillfull / full).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fullness {
    /// Below the near-full ratio.
    #[default]
    Ok,
    /// Warn: above `--nearfull-ratio`.
    Nearfull,
    /// Takes no recovery data: above `--backfillfull-ratio`.
    Backfillfull,
    /// Refuses writes: above `--full-ratio`.
    Full,
}

impl Fullness {
    /// State for a used fraction under `args`' ratios.
    pub fn of(ratio: f64, args: &MaintArgs) -> Self {
        if ratio >= args.full_ratio {
            Fullness::Full
        } else if ratio >= args.backfillfull_ratio {
            Fullness::Backfillfull
        } else if ratio >= args.nearfull_ratio {
            Fullness::Nearfull
        } else {
            Fullness::Ok
        }
    }
}

/// Last reports of the peers.
#[derive(Default)]
pub struct Health {
    reports: Mutex<HashMap<NodeId, (NodeReport, Instant)>>,
}

impl Health {
    /// Copy of the peers' last reports.
    pub fn reports(&self) -> HashMap<NodeId, (NodeReport, Instant)> {
        self.reports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Capacity state of a peer, from a report at most 30 s old.
    pub fn fullness(&self, id: NodeId) -> Option<Fullness> {
        let r = self.reports.lock().unwrap_or_else(|p| p.into_inner());
        r.get(&id)
            .filter(|(_, at)| at.elapsed() < Duration::from_secs(30))
            .map(|(r, _)| r.fullness)
    }

    fn store(&self, report: NodeReport) {
        let mut r = self.reports.lock().unwrap_or_else(|p| p.into_inner());
        r.insert(report.node_id, (report, Instant::now()));
    }
}

/// Polls peers every second; on the leader, marks nodes out and in.
pub async fn run(m: Arc<Maintenance>, mut shutdown: b3_common::Shutdown) {
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_epoch = m.cluster.nodes().1;
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tick.tick() => {}
        }
        let (nodes, epoch) = m.cluster.nodes();
        if epoch != last_epoch {
            last_epoch = epoch;
            m.kick_recovery();
        }
        let polls = nodes
            .into_iter()
            .filter(|n| n.id != m.cluster.me.id)
            .map(|n| {
                let m = m.clone();
                async move {
                    m.call(&n, MaintRequest::Report, &[], Duration::from_secs(2))
                        .await
                }
            });
        for r in crate::cluster::futures_join_all(polls).await {
            if let Ok((MaintReply::Report(report), _)) = r {
                m.health.store(*report);
            }
        }
        let leader = m.cluster.raft.metrics().borrow().current_leader == Some(m.cluster.me.id);
        if leader {
            if let Err(e) = auto_out_in(&m).await {
                tracing::warn!(error = %e, "marking nodes out/in");
            }
        }
        m.update_metrics().await;
    }
}

/// Leader: out after down + out_after; back in when an auto-out node returns.
async fn auto_out_in(m: &Maintenance) -> Result<(), String> {
    let (nodes, _) = m.cluster.nodes();
    let size = m.cluster.identity.settings.size;
    let grace = m.args.down_after + m.args.out_after;
    let auto_out: BTreeSet<NodeId> = m
        .cluster
        .meta()
        .list(AUTO_OUT_PREFIX, None, 10_000)
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter_map(|(k, _)| u64::from_str_radix(&k[AUTO_OUT_PREFIX.len()..], 16).ok())
        .collect();
    let in_count = nodes.iter().filter(|n| n.is_in).count();
    for n in &nodes {
        let key = format!("{AUTO_OUT_PREFIX}{:016x}", n.id);
        let up = m.cluster.is_up(n.id);
        if n.is_in && !m.args.out_after.is_zero() && m.cluster.down_for(n.id) > grace {
            // Count in-domains that would remain: with fewer than `size`
            // there is nowhere to copy to, so out would only shuffle data.
            let domains: BTreeSet<&str> = nodes
                .iter()
                .filter(|o| o.is_in && o.id != n.id && m.cluster.is_up(o.id))
                .map(|o| o.domain.as_str())
                .collect();
            if in_count <= size || domains.len() < size {
                continue;
            }
            tracing::warn!(node = %format!("{:016x}", n.id), down_for = ?m.cluster.down_for(n.id), "node down past --out-after: marking it out, its data will be re-replicated");
            write(
                m,
                vec![Op::Put {
                    key,
                    value: now_ms().to_string(),
                }],
            )
            .await?;
            let mut out = n.clone();
            out.is_in = false;
            m.cluster
                .write(Command::UpsertNode(out))
                .await
                .map_err(|e| e.to_string())?;
            return Ok(());
        }
        if auto_out.contains(&n.id) && up {
            if !n.is_in {
                tracing::info!(node = %format!("{:016x}", n.id), "automatically out node is back: marking it in (backfill follows)");
                let mut back = n.clone();
                back.is_in = true;
                m.cluster
                    .write(Command::UpsertNode(back))
                    .await
                    .map_err(|e| e.to_string())?;
            }
            write(m, vec![Op::Delete { key }]).await?;
        }
    }
    // Markers of nodes no longer in the map.
    for id in auto_out {
        if !nodes.iter().any(|n| n.id == id) {
            write(
                m,
                vec![Op::Delete {
                    key: format!("{AUTO_OUT_PREFIX}{id:016x}"),
                }],
            )
            .await?;
        }
    }
    Ok(())
}

async fn write(m: &Maintenance, ops: Vec<Op>) -> Result<(), String> {
    m.cluster
        .write(Command::Txn {
            checks: Vec::new(),
            ops,
        })
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One node in the maintenance view of `store status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeState {
    /// Node id (hex).
    pub id: String,
    /// `up`, `down` or `unknown` (never heard from).
    pub state: String,
    /// Holds data.
    pub is_in: bool,
    /// Marked out automatically (goes back in when it returns).
    pub auto_out: bool,
    /// Seconds since it last answered.
    pub down_for_s: u64,
    /// Seconds until the leader marks it out (down and in only).
    pub out_in_s: Option<u64>,
    /// Capacity state (from its last report).
    pub fullness: Option<Fullness>,
    /// Disk use fraction (from its last report).
    pub used_ratio: Option<f64>,
    /// Chunks it holds (from its last report).
    pub chunks: Option<u64>,
    /// Chunks it holds that belong elsewhere and are not yet on every
    /// replica there (drain progress).
    pub unsynced_chunks: Option<u64>,
}

/// Recovery, scrub and GC over the whole cluster (`store status`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MaintStatus {
    /// Per node.
    pub nodes: Vec<NodeState>,
    /// Placement groups some replica is still copying into.
    pub pgs_recovering: u32,
    /// Placement groups with a replica down (not yet out).
    pub pgs_degraded: u32,
    /// Chunk copies still to make.
    pub chunks_to_move: u64,
    /// Bytes still to copy.
    pub bytes_to_move: u64,
    /// Chunk copies made so far (since start of each node).
    pub chunks_moved: u64,
    /// Bytes copied so far.
    pub bytes_moved: u64,
    /// Current copy rate over all nodes (bytes/s).
    pub rate_bps: u64,
    /// Estimated seconds until the copies are done.
    pub eta_s: Option<u64>,
    /// Nodes holding recovery back for client I/O right now.
    pub throttled_nodes: u32,
    /// Up nodes that have not compared their placement groups against the
    /// current map yet.
    pub nodes_peering: Vec<String>,
    /// Missing copies no reachable node can provide (a down node may).
    pub chunks_unfound: u64,
    /// Scrub over all nodes.
    pub scrub: super::scrub::ScrubSummary,
    /// Chunks deleted by GC (since start of each node).
    pub gc_deleted: u64,
    /// Why GC is not running, if it is not.
    pub gc_blocked: Vec<String>,
    /// Warnings and errors, as `(severity, text)`; severity `warn`/`err`.
    pub checks: Vec<(String, String)>,
}

/// Builds the cluster-wide view from every node's report.
pub async fn status(m: &Maintenance) -> MaintStatus {
    let (nodes, epoch) = m.cluster.nodes();
    let s = &m.cluster.identity.settings;
    let reports = m.reports().await;
    let auto_out: BTreeSet<NodeId> = m
        .cluster
        .meta()
        .list(AUTO_OUT_PREFIX, None, 10_000)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(k, _)| u64::from_str_radix(&k[AUTO_OUT_PREFIX.len()..], 16).ok())
        .collect();
    let mut st = MaintStatus::default();
    let mut recovering = BTreeSet::new();
    let grace = m.args.down_after + m.args.out_after;
    for n in &nodes {
        let up = m.cluster.is_up(n.id);
        let down_for = m.cluster.down_for(n.id);
        let rep = reports
            .get(&n.id)
            .filter(|(_, at)| at.elapsed() < Duration::from_secs(30) || n.id == m.cluster.me.id)
            .map(|(r, _)| r);
        let hex = format!("{:016x}", n.id);
        st.nodes.push(NodeState {
            id: hex.clone(),
            state: if up { "up" } else { "down" }.into(),
            is_in: n.is_in,
            auto_out: auto_out.contains(&n.id),
            down_for_s: if up { 0 } else { down_for.as_secs() },
            out_in_s: (!up && n.is_in && !m.args.out_after.is_zero())
                .then(|| grace.saturating_sub(down_for).as_secs()),
            fullness: rep.map(|r| r.fullness),
            used_ratio: rep.map(|r| r.used_ratio),
            chunks: rep.map(|r| r.chunks),
            unsynced_chunks: rep.map(|r| r.recovery.unsynced_chunks),
        });
        if !up {
            let mut text = format!("node {hex} down for {}s", down_for.as_secs());
            if n.is_in && !m.args.out_after.is_zero() {
                text.push_str(&format!(
                    "; marked out in {}s unless it returns",
                    grace.saturating_sub(down_for).as_secs()
                ));
            }
            st.checks.push(("warn".into(), text));
            continue;
        }
        let Some(r) = rep else {
            st.nodes_peering.push(hex);
            continue;
        };
        match r.fullness {
            Fullness::Ok => {}
            Fullness::Nearfull => st.checks.push((
                "warn".into(),
                format!(
                    "node {hex} is near full ({:.0}% used)",
                    r.used_ratio * 100.0
                ),
            )),
            Fullness::Backfillfull => st.checks.push((
                "warn".into(),
                format!(
                    "node {hex} is backfill-full ({:.0}% used): it takes no recovery data",
                    r.used_ratio * 100.0
                ),
            )),
            Fullness::Full => st.checks.push((
                "err".into(),
                format!(
                    "node {hex} is full ({:.0}% used): writes to its placement groups are refused",
                    r.used_ratio * 100.0
                ),
            )),
        }
        let rec = &r.recovery;
        if rec.pass_epoch != Some(epoch) || r.epoch != epoch {
            st.nodes_peering.push(hex.clone());
        }
        recovering.extend(rec.recovering_pgs.iter().copied());
        st.chunks_to_move += rec.missing_chunks;
        st.bytes_to_move += rec.missing_bytes;
        st.chunks_moved += rec.moved_chunks;
        st.bytes_moved += rec.moved_bytes;
        st.rate_bps += rec.rate_bps;
        st.chunks_unfound += rec.unfound_chunks;
        if rec.throttled {
            st.throttled_nodes += 1;
        }
        if let Some(b) = &rec.blocked {
            st.checks.push(("warn".into(), format!("node {hex}: {b}")));
        }
        st.scrub.add(&r.scrub);
        st.gc_deleted += r.gc.deleted;
        if let Some(b) = &r.gc.blocked {
            st.gc_blocked.push(format!("node {hex}: {b}"));
        }
    }
    for pg in 0..s.pg_count {
        let set = replicas_of_pg(pg, &nodes, s.size);
        if set.iter().any(|n| !m.cluster.is_up(n.id)) || set.len() < s.size {
            st.pgs_degraded += 1;
        }
    }
    st.pgs_recovering = recovering.len() as u32;
    if st.rate_bps > 0 && st.bytes_to_move > 0 {
        st.eta_s = Some(st.bytes_to_move / st.rate_bps.max(1));
    }
    if st.pgs_recovering > 0 {
        st.checks.push((
            "warn".into(),
            format!(
                "{} placement groups recovering: {} chunk copies ({} bytes) to make",
                st.pgs_recovering, st.chunks_to_move, st.bytes_to_move
            ),
        ));
    }
    if st.chunks_unfound > 0 {
        st.checks.push((
            "warn".into(),
            format!(
                "{} chunk copies missing with no reachable source (a down node may hold them)",
                st.chunks_unfound
            ),
        ));
    }
    // Right after a map change the new replicas have not looked for what
    // they miss yet; with data stored, that is not healthy. A cluster
    // holding no chunks has nothing to compare.
    let stored: u64 = reports.values().map(|(r, _)| r.chunks).sum();
    if !st.nodes_peering.is_empty() && stored > 0 {
        st.checks.push((
            "warn".into(),
            format!(
                "{} nodes still comparing their placement groups with map epoch {epoch}",
                st.nodes_peering.len()
            ),
        ));
    }
    if st.scrub.unrepairable > 0 {
        st.checks.push((
            "err".into(),
            format!(
                "scrub found {} chunk copies with no good replica to repair from",
                st.scrub.unrepairable
            ),
        ));
    }
    st
}

/// Folds the maintenance view into `store status`: its checks join the
/// others, recovering groups stop counting as clean, and the health word
/// is recomputed (`HEALTH_ERR` for a full node or unrepairable chunks).
pub fn fold_into(status: &mut crate::api::Status, m: MaintStatus) {
    let mut err = status.health == "HEALTH_ERR";
    // The base status already reports down nodes; keep its wording.
    for (sev, text) in &m.checks {
        if text.starts_with("node ") && text.contains(" down for ") {
            continue;
        }
        err |= sev == "err";
        status.checks.push(text.clone());
    }
    for n in m.nodes.iter().filter(|n| n.state != "up") {
        let mut text = format!("node {} down for {}s", n.id, n.down_for_s);
        match (n.is_in, n.out_in_s) {
            (true, Some(s)) => text.push_str(&format!("; marked out in {s}s unless it returns")),
            (false, _) => text.push_str("; out: its data moves to the other nodes"),
            _ => {}
        }
        status.checks.push(text);
    }
    let moved = m.pgs_recovering.min(status.pgs_clean);
    status.pgs_clean -= moved;
    status.pgs_degraded += moved;
    status.health = if err {
        "HEALTH_ERR"
    } else if status.checks.is_empty() {
        "HEALTH_OK"
    } else {
        "HEALTH_WARN"
    }
    .into();
    status.maint = Some(m);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fullness_follows_the_ratios() {
        let a = MaintArgs::default();
        assert_eq!(Fullness::of(0.10, &a), Fullness::Ok);
        assert_eq!(Fullness::of(0.86, &a), Fullness::Nearfull);
        assert_eq!(Fullness::of(0.91, &a), Fullness::Backfillfull);
        assert_eq!(Fullness::of(0.95, &a), Fullness::Full);
        assert_eq!(Fullness::of(1.0, &a), Fullness::Full);
    }
}
