//! Recovery and backfill: make this node's chunk directory match placement.
//!
//! A pass (on a map change, after a scrub, and every
//! `--recovery-interval`):
//!
//! 1. From the cluster map, compute the placement groups this node is a
//!    replica of (the same function writers use).
//! 2. Ask every up node which chunks it holds in those groups (one listing
//!    per batch of groups) and compare with the local directory. Anything a
//!    peer has and we lack is *missing*: after a node goes out, the new
//!    replicas find the chunks on the survivors; when a node comes back
//!    empty or joins, it finds its share on the old holders (backfill).
//! 3. Copy the missing chunks, each from a node holding it (replicas of the
//!    group first), checking the crc32 of every transfer, under the
//!    throttle: bandwidth and concurrency limits that drop while clients
//!    use the node.
//! 4. Chunks held here in groups this node no longer serves are *surplus*.
//!    They are deleted only once every replica of their group (all `size`
//!    of them, all up) confirms holding the chunk durably — so a copy is
//!    never removed before its replacements exist.
//!
//! Nothing in a pass is destructive except step 4, and step 4 re-reads the
//! map epoch first: if placement changed during the pass it waits for the
//! next one.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::throttle::{Limits, LoadMeter, Throttle};
use super::{Fullness, MaintArgs, MaintReply, MaintRequest, Maintenance};
use crate::cluster::NodeInfo;
use crate::placement::ChunkId;
use crate::replication::replicas_of_pg;

/// Placement groups per listing request.
const PG_BATCH: usize = 32;
/// Ids per `HasChunks` request.
const HAS_BATCH: usize = 4096;

/// What recovery on one node is doing (part of its report).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RecoveryProgress {
    /// Map epoch of the last complete pass (every up peer answered).
    pub pass_epoch: Option<u64>,
    /// Passes run since start.
    pub passes: u64,
    /// A pass is running.
    pub running: bool,
    /// Chunks of this node's groups still to copy here.
    pub missing_chunks: u64,
    /// Their bytes.
    pub missing_bytes: u64,
    /// Groups with missing chunks here.
    pub recovering_pgs: Vec<u32>,
    /// Missing chunks that no reachable node could provide in the last pass.
    pub unfound_chunks: u64,
    /// Chunks held here for groups this node does not serve.
    pub surplus_chunks: u64,
    /// Surplus chunks not yet on every replica of their group (kept).
    pub unsynced_chunks: u64,
    /// Chunks copied here since start.
    pub moved_chunks: u64,
    /// Bytes copied here since start.
    pub moved_bytes: u64,
    /// Surplus chunks deleted since start.
    pub surplus_deleted: u64,
    /// Copy rate over the last seconds (bytes/s).
    pub rate_bps: u64,
    /// Recovery is slowed for client I/O right now.
    pub throttled: bool,
    /// Why recovery cannot proceed here, if so.
    pub blocked: Option<String>,
}

/// Recovery state of one node.
pub struct Recovery {
    throttle: Throttle,
    interval: Duration,
    kick: Notify,
    state: Mutex<RecoveryProgress>,
    moved: Mutex<VecDeque<(Instant, u64)>>,
}

impl Recovery {
    /// Recovery with the limits from `args`.
    pub fn new(args: &MaintArgs, load: LoadMeter) -> Self {
        let limits = Limits {
            idle_bps: args.recovery_bandwidth,
            busy_fraction: args.recovery_busy_fraction,
            idle_concurrency: args.recovery_max_active as usize,
            busy_concurrency: 1,
        };
        Self {
            throttle: Throttle::new(limits, load),
            interval: args.recovery_interval.max(Duration::from_secs(1)),
            kick: Notify::new(),
            state: Mutex::new(RecoveryProgress::default()),
            moved: Mutex::new(VecDeque::new()),
        }
    }

    /// Starts a pass soon.
    pub fn kick(&self) {
        self.kick.notify_one();
    }

    /// Current progress.
    pub fn progress(&self) -> RecoveryProgress {
        let mut p = self.lock().clone();
        p.rate_bps = self.rate();
        p.throttled = p.missing_chunks > 0 && self.throttle.busy();
        p
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RecoveryProgress> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record_moved(&self, bytes: u64) {
        let mut q = self.moved.lock().unwrap_or_else(|p| p.into_inner());
        q.push_back((Instant::now(), bytes));
        while q.len() > 10_000 {
            q.pop_front();
        }
    }

    /// Bytes per second copied over the last 5 seconds.
    fn rate(&self) -> u64 {
        let window = Duration::from_secs(5);
        let mut q = self.moved.lock().unwrap_or_else(|p| p.into_inner());
        while q.front().is_some_and(|(t, _)| t.elapsed() > window) {
            q.pop_front();
        }
        let bytes: u64 = q.iter().map(|(_, b)| b).sum();
        (bytes as f64 / window.as_secs_f64()) as u64
    }
}

/// Runs passes until `shutdown`.
pub async fn run(m: Arc<Maintenance>, mut shutdown: b3_common::Shutdown) {
    // Let heartbeats establish who is up before the first pass.
    tokio::select! {
        _ = shutdown.wait() => return,
        _ = tokio::time::sleep(Duration::from_secs(2)) => {}
    }
    loop {
        let started = Instant::now();
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = pass(&m) => {}
        }
        tracing::debug!(took = ?started.elapsed(), "recovery pass done");
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = m.recovery.kick.notified() => {}
            _ = tokio::time::sleep(m.recovery.interval) => {}
        }
    }
}

/// One recovery pass (see the module docs).
pub async fn pass(m: &Arc<Maintenance>) {
    let r = &m.recovery;
    r.lock().running = true;
    let (nodes, epoch) = m.cluster.nodes();
    let s = m.cluster.identity.settings.clone();
    if nodes.is_empty() {
        r.lock().running = false;
        return;
    }
    let me = m.cluster.me.id;
    let sets: Vec<Vec<NodeInfo>> = (0..s.pg_count)
        .map(|pg| replicas_of_pg(pg, &nodes, s.size))
        .collect();
    let my_pgs: Vec<u32> = (0..s.pg_count)
        .filter(|pg| sets[*pg as usize].iter().any(|n| n.id == me))
        .collect();
    let local = m.inventory(Duration::ZERO).await;

    // 2. What peers hold in our groups that we lack.
    let peers: Vec<NodeInfo> = nodes
        .iter()
        .filter(|n| n.id != me && m.cluster.is_up(n.id))
        .cloned()
        .collect();
    let listings = peers.iter().map(|p| {
        let m = m.clone();
        let p = p.clone();
        let pgs = my_pgs.clone();
        async move {
            let mut out = Vec::new();
            for batch in pgs.chunks(PG_BATCH) {
                let req = MaintRequest::ListChunks {
                    pgs: batch.to_vec(),
                };
                match m.call(&p, req, &[], Duration::from_secs(30)).await {
                    Ok((MaintReply::Listed, body)) => out.extend(super::unpack_listing(&body)),
                    Ok((other, _)) => return (p, Err(format!("unexpected reply {other:?}"))),
                    Err(e) => return (p, Err(e)),
                }
            }
            (p, Ok(out))
        }
    });
    let mut complete = true;
    let mut wanted: HashMap<ChunkId, (u32, Vec<NodeInfo>)> = HashMap::new();
    for (peer, listing) in crate::cluster::futures_join_all(listings).await {
        match listing {
            Ok(entries) => {
                for (id, len) in entries {
                    if !local.contains_key(&id) {
                        wanted
                            .entry(id)
                            .or_insert((len, Vec::new()))
                            .1
                            .push(peer.clone());
                    }
                }
            }
            Err(e) => {
                complete = false;
                tracing::info!(peer = %format!("{:016x}", peer.id), error = %e, "listing a peer's chunks for recovery");
            }
        }
    }
    let pgs_of = |ids: &mut dyn Iterator<Item = &ChunkId>| -> Vec<u32> {
        ids.map(|id| id.pg(s.pg_count))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    };
    {
        let mut p = r.lock();
        p.missing_chunks = wanted.len() as u64;
        p.missing_bytes = wanted.values().map(|(l, _)| u64::from(*l)).sum();
        p.recovering_pgs = pgs_of(&mut wanted.keys());
        p.blocked = None;
    }

    // 3. Copy, throttled.
    let mut unfound = 0u64;
    if !wanted.is_empty() {
        if m.local_fullness() >= Fullness::Backfillfull {
            r.lock().blocked = Some(format!(
                "over --backfillfull-ratio {}: not accepting recovery data ({} chunks wait)",
                m.args.backfillfull_ratio,
                wanted.len()
            ));
        } else {
            let failed = copy_missing(m, wanted, &sets).await;
            unfound = failed.len() as u64;
            let mut p = r.lock();
            p.missing_chunks = failed.len() as u64;
            p.missing_bytes = failed.iter().map(|(_, l)| u64::from(*l)).sum();
            p.recovering_pgs = pgs_of(&mut failed.iter().map(|(id, _)| id));
        }
    }

    // 4. Surplus: delete only what every replica of the group confirms.
    let local = m.inventory(Duration::ZERO).await;
    let mut surplus: HashMap<u32, Vec<ChunkId>> = HashMap::new();
    for id in local.keys() {
        let pg = id.pg(s.pg_count);
        if !sets[pg as usize].iter().any(|n| n.id == me) {
            surplus.entry(pg).or_default().push(*id);
        }
    }
    let surplus_total: u64 = surplus.values().map(|v| v.len() as u64).sum();
    let mut unsynced = 0u64;
    let mut deleted = 0u64;
    for (pg, ids) in surplus {
        let set = &sets[pg as usize];
        if set.len() < s.size || set.iter().any(|n| !m.cluster.is_up(n.id)) {
            unsynced += ids.len() as u64;
            continue;
        }
        let confirmed = confirmed_everywhere(m, set, &ids).await;
        unsynced += (ids.len() - confirmed.len()) as u64;
        if confirmed.is_empty() {
            continue;
        }
        if m.cluster.nodes().1 != epoch {
            // Placement moved under us: decide again with the new map.
            unsynced += confirmed.len() as u64;
            complete = false;
            continue;
        }
        let local_store = m.local.clone();
        let n = tokio::task::spawn_blocking(move || {
            confirmed
                .iter()
                .filter(|id| local_store.delete(id).unwrap_or(false))
                .count() as u64
        })
        .await
        .unwrap_or(0);
        deleted += n;
    }
    if deleted > 0 {
        m.invalidate_inventory();
        tracing::info!(
            chunks = deleted,
            "deleted surplus chunk copies now held by every replica"
        );
    }
    let mut p = r.lock();
    p.surplus_chunks = surplus_total - deleted;
    p.unsynced_chunks = unsynced;
    p.surplus_deleted += deleted;
    p.unfound_chunks = unfound;
    p.passes += 1;
    p.running = false;
    if complete && m.cluster.nodes().1 == epoch {
        p.pass_epoch = Some(epoch);
    }
    // Unfinished business (a copy failed, or surplus waits for the new
    // replicas to fill): look again soon rather than in a full interval.
    let again = if p.missing_chunks > 0 {
        Some(Duration::from_secs(2))
    } else if p.unsynced_chunks > 0 {
        Some(Duration::from_secs(5))
    } else {
        None
    };
    drop(p);
    if let Some(after) = again {
        let m = m.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            m.recovery.kick();
        });
    }
}

/// Copies the `wanted` chunks here; returns those no source could give.
async fn copy_missing(
    m: &Arc<Maintenance>,
    wanted: HashMap<ChunkId, (u32, Vec<NodeInfo>)>,
    sets: &[Vec<NodeInfo>],
) -> Vec<(ChunkId, u32)> {
    let r = &m.recovery;
    let pg_count = m.cluster.identity.settings.pg_count;
    let mut queue: VecDeque<(ChunkId, u32, Vec<NodeInfo>)> = wanted
        .into_iter()
        .map(|(id, (len, mut sources))| {
            // Replicas of the group first: they are the copies that stay.
            let set = &sets[id.pg(pg_count) as usize];
            sources.sort_by_key(|n| !set.iter().any(|s| s.id == n.id));
            (id, len, sources)
        })
        .collect();
    let mut tasks = tokio::task::JoinSet::new();
    let mut unfound = Vec::new();
    loop {
        let limit = r.throttle.limits().concurrency(r.throttle.busy());
        while tasks.len() < limit {
            let Some((id, len, sources)) = queue.pop_front() else {
                break;
            };
            let m = m.clone();
            tasks.spawn(async move {
                m.recovery.throttle.take(u64::from(len)).await;
                let mut problems = Vec::new();
                for src in &sources {
                    match m.fetch(src, id).await {
                        Ok((data, crc)) => {
                            let n = data.len() as u64;
                            match m.store_local(id, data, crc).await {
                                Ok(()) => return Ok(n),
                                Err(e) => problems.push(e.to_string()),
                            }
                        }
                        Err(e) => problems.push(e),
                    }
                }
                Err((id, len, problems.join("; ")))
            });
        }
        let Some(done) = tasks.join_next().await else {
            break;
        };
        let mut p = r.lock();
        match done {
            Ok(Ok(bytes)) => {
                p.missing_chunks = p.missing_chunks.saturating_sub(1);
                p.missing_bytes = p.missing_bytes.saturating_sub(bytes);
                p.moved_chunks += 1;
                p.moved_bytes += bytes;
                drop(p);
                r.record_moved(bytes);
            }
            Ok(Err((id, len, problem))) => {
                unfound.push((id, len));
                tracing::warn!(chunk = %id, problem = %problem, "recovery could not copy a chunk; will retry");
            }
            Err(e) => tracing::warn!(error = %e, "recovery task failed"),
        }
    }
    unfound
}

/// The ids among `ids` that every node of `set` holds.
async fn confirmed_everywhere(m: &Maintenance, set: &[NodeInfo], ids: &[ChunkId]) -> Vec<ChunkId> {
    let mut ok = vec![true; ids.len()];
    for node in set {
        if node.id == m.cluster.me.id {
            // We are not a replica of this group (that is why it is surplus).
            continue;
        }
        for (b, batch) in ids.chunks(HAS_BATCH).enumerate() {
            let body = super::pack_ids(batch);
            match m
                .call(
                    node,
                    MaintRequest::HasChunks,
                    &body,
                    Duration::from_secs(30),
                )
                .await
            {
                Ok((MaintReply::Listed, bits)) if bits.len() == batch.len() => {
                    for (i, bit) in bits.iter().enumerate() {
                        if *bit == 0 {
                            ok[b * HAS_BATCH + i] = false;
                        }
                    }
                }
                _ => {
                    for v in &mut ok[b * HAS_BATCH..b * HAS_BATCH + batch.len()] {
                        *v = false;
                    }
                }
            }
        }
    }
    ids.iter()
        .zip(ok)
        .filter(|(_, ok)| *ok)
        .map(|(id, _)| *id)
        .collect()
}
