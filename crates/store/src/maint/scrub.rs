//! Scrub: re-read every local chunk, check its crc32, repair bad copies.
//!
//! A full pass runs every `--scrub-interval` (counted from the end of the
//! last one, remembered in `<data-dir>/scrub-last` across restarts) or when
//! `store scrub` asks. Reads are paced by `--scrub-bandwidth` (a tenth of
//! it while clients use the node). A copy that fails its checksum is
//! replaced by a good copy fetched from another node (each transfer is
//! checked too); when no node has a good copy the chunk is reported as
//! unrepairable and the bad file is kept for forensics. After the pass a
//! recovery pass compares chunk lists with the other replicas, which finds
//! and fills copies that are missing altogether.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::throttle::{Limits, LoadMeter, Throttle};
use super::{MaintArgs, Maintenance};
use crate::chunk::ChunkError;
use crate::placement::ChunkId;

/// Scrub state of one node (part of its report).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ScrubProgress {
    /// A pass is running.
    pub running: bool,
    /// Chunks checked in the current (or last) pass.
    pub checked: u64,
    /// Chunks to check in it.
    pub total: u64,
    /// Bytes read in it.
    pub bytes: u64,
    /// Corrupt copies found in it.
    pub corrupt: u64,
    /// Of those, repaired from another replica.
    pub repaired: u64,
    /// Of those, with no good copy anywhere.
    pub unrepairable: u64,
    /// Passes finished since start.
    pub passes: u64,
    /// End of the last finished pass (unix ms).
    pub last_finished_ms: Option<u64>,
    /// Ids of unrepairable chunks (first 100).
    pub unrepairable_ids: Vec<ChunkId>,
}

/// Scrub over all nodes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ScrubSummary {
    /// Nodes scrubbing now.
    pub running: u32,
    /// Chunks checked (current or last pass of every node).
    pub checked: u64,
    /// Chunks to check.
    pub total: u64,
    /// Corrupt copies found.
    pub corrupt: u64,
    /// Repaired.
    pub repaired: u64,
    /// Unrepairable.
    pub unrepairable: u64,
    /// Oldest "last finished" over the nodes (unix ms); `None` if a node
    /// never finished one.
    pub oldest_finished_ms: Option<u64>,
    /// Nodes that finished at least one pass since they started.
    pub nodes_finished: u32,
    /// Nodes counted.
    pub nodes: u32,
    /// Passes finished, summed over the nodes (since each started).
    pub passes: u64,
}

impl ScrubSummary {
    /// Adds one node's progress.
    pub fn add(&mut self, p: &ScrubProgress) {
        self.nodes += 1;
        self.running += u32::from(p.running);
        self.checked += p.checked;
        self.total += p.total;
        self.corrupt += p.corrupt;
        self.repaired += p.repaired;
        self.unrepairable += p.unrepairable;
        self.nodes_finished += u32::from(p.passes > 0);
        self.passes += p.passes;
        self.oldest_finished_ms = match (self.nodes, self.oldest_finished_ms, p.last_finished_ms) {
            (1, _, v) => v,
            (_, Some(a), Some(b)) => Some(a.min(b)),
            _ => None,
        };
    }
}

/// Scrub state of one node.
pub struct Scrub {
    throttle: Throttle,
    interval: Duration,
    state_file: PathBuf,
    wanted: AtomicBool,
    wake: Notify,
    state: Mutex<ScrubProgress>,
    /// When the schedule started on a node that never finished a pass.
    first_start_ms: Mutex<Option<u64>>,
}

impl Scrub {
    /// Scrub with the pacing from `args`; remembers its last run in `dir`.
    pub fn new(args: &MaintArgs, load: LoadMeter, dir: &Path) -> Self {
        let limits = Limits {
            idle_bps: args.scrub_bandwidth,
            busy_fraction: 0.1,
            idle_concurrency: 1,
            busy_concurrency: 1,
        };
        let state_file = dir.join("scrub-last");
        let last = std::fs::read_to_string(&state_file)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok());
        Self {
            throttle: Throttle::new(limits, load),
            interval: args.scrub_interval,
            state_file,
            wanted: AtomicBool::new(false),
            wake: Notify::new(),
            state: Mutex::new(ScrubProgress {
                last_finished_ms: last,
                ..Default::default()
            }),
            first_start_ms: Mutex::new(None),
        }
    }

    /// Asks for a pass now; false when one is already running.
    pub fn request(&self) -> bool {
        if self.lock().running {
            return false;
        }
        self.wanted.store(true, Ordering::SeqCst);
        self.wake.notify_one();
        true
    }

    /// Current progress.
    pub fn progress(&self) -> ScrubProgress {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ScrubProgress> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Time until the next scheduled pass (`None`: only on demand).
    fn until_due(&self) -> Option<Duration> {
        if self.interval.is_zero() {
            return None;
        }
        let last = self.lock().last_finished_ms;
        // A node that never finished a pass: its chunks were checked on
        // arrival, so the first pass is due one interval after it started
        // (not at once, which would make every fresh cluster scrub while
        // it fills).
        let last = match last {
            Some(l) => l,
            None => *self
                .first_start_ms
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_or_insert_with(now_ms),
        };
        let due = last.saturating_add(self.interval.as_millis() as u64);
        Some(Duration::from_millis(due.saturating_sub(now_ms())))
    }
}

/// Runs scheduled and requested passes until `shutdown`.
pub async fn run(m: Arc<Maintenance>, mut shutdown: b3_common::Shutdown) {
    loop {
        let s = &m.scrub;
        if !s.wanted.swap(false, Ordering::SeqCst) {
            let wait = s.until_due();
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = s.wake.notified() => {
                    if !s.wanted.swap(false, Ordering::SeqCst) { continue; }
                }
                _ = sleep_opt(wait) => {}
            }
        }
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = pass(&m) => {}
        }
        m.kick_recovery();
    }
}

async fn sleep_opt(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending::<()>().await,
    }
}

/// One full pass over the local chunks.
pub async fn pass(m: &Arc<Maintenance>) {
    let s = &m.scrub;
    let local = m.local.clone();
    let ids = tokio::task::spawn_blocking(move || local.list())
        .await
        .ok()
        .and_then(|r| r.ok())
        .unwrap_or_default();
    {
        let mut p = s.lock();
        let (passes, last) = (p.passes, p.last_finished_ms);
        *p = ScrubProgress {
            running: true,
            total: ids.len() as u64,
            passes,
            last_finished_ms: last,
            ..Default::default()
        };
    }
    tracing::info!(chunks = ids.len(), "scrub started");
    for id in ids {
        let local = m.local.clone();
        let len = std::fs::metadata(local.path(&id))
            .map(|md| md.len())
            .unwrap_or(0);
        s.throttle.take(len).await;
        let r = tokio::task::spawn_blocking(move || local.get(&id)).await;
        let mut bad = false;
        match r {
            Ok(Ok(_)) => {}
            Ok(Err(ChunkError::NotFound(_))) => {} // deleted meanwhile (GC, surplus)
            Ok(Err(e @ ChunkError::Corrupt { .. })) => {
                tracing::warn!(chunk = %id, error = %e, "scrub: corrupt chunk copy");
                bad = true;
            }
            Ok(Err(e)) => {
                tracing::warn!(chunk = %id, error = %e, "scrub: cannot read chunk copy");
                bad = true;
            }
            Err(e) => tracing::warn!(error = %e, "scrub task failed"),
        }
        {
            let mut p = s.lock();
            p.checked += 1;
            p.bytes += len;
            p.corrupt += u64::from(bad);
        }
        if bad {
            let fixed = repair(m, id).await;
            let mut p = s.lock();
            match fixed {
                Ok(()) => p.repaired += 1,
                Err(e) => {
                    tracing::error!(chunk = %id, problem = %e, "scrub: no good copy of a corrupt chunk anywhere");
                    p.unrepairable += 1;
                    if p.unrepairable_ids.len() < 100 {
                        p.unrepairable_ids.push(id);
                    }
                }
            }
        }
    }
    let now = now_ms();
    let summary = {
        let mut p = s.lock();
        p.running = false;
        p.passes += 1;
        p.last_finished_ms = Some(now);
        p.clone()
    };
    if let Err(e) = std::fs::write(&s.state_file, now.to_string()) {
        tracing::warn!(file = %s.state_file.display(), error = %e, "recording the scrub time");
    }
    tracing::info!(
        checked = summary.checked,
        corrupt = summary.corrupt,
        repaired = summary.repaired,
        unrepairable = summary.unrepairable,
        "scrub finished"
    );
}

/// Replaces the local copy of `id` with a good copy from another node.
async fn repair(m: &Arc<Maintenance>, id: ChunkId) -> Result<(), String> {
    let (nodes, _) = m.cluster.nodes();
    let s = &m.cluster.identity.settings;
    let set = crate::replication::replicas_of_pg(id.pg(s.pg_count), &nodes, s.size);
    // Replicas of the group first, then anyone else that may hold a copy.
    let mut candidates: Vec<_> = nodes
        .into_iter()
        .filter(|n| n.id != m.cluster.me.id && m.cluster.is_up(n.id))
        .collect();
    candidates.sort_by_key(|n| !set.iter().any(|x| x.id == n.id));
    let mut problems = Vec::new();
    for n in candidates {
        match m.fetch(&n, id).await {
            Ok((data, crc)) => {
                return m
                    .store_local(id, data, crc)
                    .await
                    .map_err(|e| e.to_string());
            }
            Err(e) => problems.push(e),
        }
    }
    Err(if problems.is_empty() {
        "no other node is up".into()
    } else {
        problems.join("; ")
    })
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
