//! Garbage collection of chunks nothing references.
//!
//! Chunks become garbage when an object is overwritten or deleted and the
//! best-effort delete missed a copy (a node was down), when a write fails
//! after some chunks landed, or when a client dies between storing chunks
//! and committing the metadata that names them.
//!
//! Every `--gc-interval` each node looks at its *own* chunks:
//!
//! 1. candidates are local chunks whose file is older than `--gc-delay`
//!    (a write stores its chunks first and commits the metadata after, so
//!    a young unreferenced chunk may belong to a write in progress);
//! 2. a read barrier makes the following metadata read linearizable;
//! 3. every [`ReferenceSource`] adds the chunk ids it references;
//! 4. candidates not referenced are deleted here and on every up node (so
//!    recovery does not copy a garbage chunk back from a peer).
//!
//! The namespace may hold data of components that reference chunks in ways
//! GC does not know. So GC refuses to run (and says so in `store status`)
//! while any namespace key lies outside the prefixes its sources declare.
//! Sources today: objects (`o/`) and this module's own markers (`sys/`).
//! The filesystem namespace (its own tables, every slice's chunk) is the
//! third source, [`FsRefs`].

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::{MaintRequest, Maintenance};
use crate::cluster::Cluster;
use crate::placement::ChunkId;

/// Something in the namespace that references chunks.
pub trait ReferenceSource: Send + Sync {
    /// Name for logs and status.
    fn name(&self) -> &str;
    /// Namespace key prefixes whose entries this source accounts for.
    fn prefixes(&self) -> Vec<String>;
    /// Adds every chunk id it references to `out`. Called right after a
    /// read barrier: read the local metadata store.
    fn collect(&self, cluster: &Cluster, out: &mut HashSet<ChunkId>) -> Result<(), String>;
}

/// Objects of the object API: `o/<bucket>/<key>` → `ObjectMeta.chunks`.
pub struct ObjectRefs;

impl ReferenceSource for ObjectRefs {
    fn name(&self) -> &str {
        "objects"
    }
    fn prefixes(&self) -> Vec<String> {
        vec!["o/".into()]
    }
    fn collect(&self, cluster: &Cluster, out: &mut HashSet<ChunkId>) -> Result<(), String> {
        let mut after: Option<String> = None;
        loop {
            let page = cluster
                .meta()
                .list("o/", after.as_deref(), 10_000)
                .map_err(|e| e.to_string())?;
            let Some((last, _)) = page.last() else {
                return Ok(());
            };
            after = Some(last.clone());
            for (k, v) in &page {
                // An entry GC cannot read could reference anything: stop.
                let meta: crate::api::ObjectMeta = serde_json::from_str(v).map_err(|e| {
                    format!("object entry {k} does not decode ({e}); not collecting garbage")
                })?;
                out.extend(meta.chunks.iter().map(|c| c.id));
            }
        }
    }
}

/// Keys under `sys/` (maintenance markers) reference no chunks.
pub struct SystemKeys;

impl ReferenceSource for SystemKeys {
    fn name(&self) -> &str {
        "system"
    }
    fn prefixes(&self) -> Vec<String> {
        vec!["sys/".into()]
    }
    fn collect(&self, _: &Cluster, _: &mut HashSet<ChunkId>) -> Result<(), String> {
        Ok(())
    }
}

/// Files of the `/data` namespace: every chunk id any file's slice list
/// (or inline chunk) references. The filesystem keeps its own tables in the
/// metadata store, not namespace keys, so it declares no key prefix.
pub struct FsRefs;

impl ReferenceSource for FsRefs {
    fn name(&self) -> &str {
        "filesystem"
    }
    fn prefixes(&self) -> Vec<String> {
        Vec::new()
    }
    fn collect(&self, cluster: &Cluster, out: &mut HashSet<ChunkId>) -> Result<(), String> {
        let ids = crate::cluster::fs_state::referenced_chunks(cluster.meta().db())
            .map_err(|e| format!("reading the filesystem's chunk references: {e}"))?;
        out.extend(ids);
        Ok(())
    }
}

/// The filesystem namespace's reference source.
pub fn fs_reference_source() -> Option<Arc<dyn ReferenceSource>> {
    Some(Arc::new(FsRefs))
}

/// The sources a server uses.
pub fn default_sources() -> Vec<Arc<dyn ReferenceSource>> {
    let mut v: Vec<Arc<dyn ReferenceSource>> = vec![Arc::new(ObjectRefs), Arc::new(SystemKeys)];
    v.extend(fs_reference_source());
    v
}

/// GC state of one node (part of its report).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GcProgress {
    /// Passes since start.
    pub passes: u64,
    /// Chunks deleted as garbage since start (here and on peers).
    pub deleted: u64,
    /// Candidates (old enough) at the last pass.
    pub candidates: u64,
    /// Why the last pass did not collect, if so.
    pub blocked: Option<String>,
}

/// GC of one node.
pub struct Gc {
    sources: Vec<Arc<dyn ReferenceSource>>,
    state: Mutex<GcProgress>,
}

impl Gc {
    /// GC over `sources`.
    pub fn new(sources: Vec<Arc<dyn ReferenceSource>>) -> Self {
        Self {
            sources,
            state: Mutex::new(GcProgress::default()),
        }
    }

    /// Current state.
    pub fn progress(&self) -> GcProgress {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn update(&self, f: impl FnOnce(&mut GcProgress)) {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

/// Runs a pass every `--gc-interval` until `shutdown`.
pub async fn run(m: Arc<Maintenance>, mut shutdown: b3_common::Shutdown) {
    if m.args.gc_interval.is_zero() {
        m.gc.update(|p| p.blocked = Some("disabled (--gc-interval 0)".into()));
        return;
    }
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(m.args.gc_interval) => {}
        }
        match pass(&m).await {
            Ok(n) => m.gc.update(|p| {
                p.passes += 1;
                p.deleted += n;
                p.blocked = None;
            }),
            Err(e) => {
                tracing::warn!(problem = %e, "garbage collection skipped");
                m.gc.update(|p| {
                    p.passes += 1;
                    p.blocked = Some(e);
                });
            }
        }
    }
}

/// One GC pass; returns the number of chunks deleted.
pub async fn pass(m: &Arc<Maintenance>) -> Result<u64, String> {
    let delay = m.args.gc_delay;
    let local = m.local.clone();
    let old = tokio::task::spawn_blocking(move || old_chunks(&local, delay))
        .await
        .map_err(|e| e.to_string())??;
    m.gc.update(|p| p.candidates = old.len() as u64);
    if old.is_empty() {
        return Ok(0);
    }
    m.cluster
        .read_barrier()
        .await
        .map_err(|e| format!("cannot read the namespace linearizably: {e}"))?;
    uncovered_key(&m.cluster, &m.gc.sources)?;
    let mut referenced = HashSet::new();
    for s in &m.gc.sources {
        s.collect(&m.cluster, &mut referenced)
            .map_err(|e| format!("reference source {}: {e}", s.name()))?;
    }
    let garbage: Vec<ChunkId> = old
        .into_iter()
        .filter(|id| !referenced.contains(id))
        .collect();
    if garbage.is_empty() {
        return Ok(0);
    }
    // Peers first: if we crash in between, the local copy is still here
    // and the next pass finishes the job.
    let (nodes, _) = m.cluster.nodes();
    let body = super::pack_ids(&garbage);
    for n in nodes
        .iter()
        .filter(|n| n.id != m.cluster.me.id && m.cluster.is_up(n.id))
    {
        if let Err(e) = m
            .call(n, MaintRequest::GcDelete, &body, Duration::from_secs(30))
            .await
        {
            tracing::info!(node = %format!("{:016x}", n.id), error = %e, "GC delete on a peer failed; its own GC will catch up");
        }
    }
    let deleted = delete_local(m, garbage.clone()).await;
    tracing::info!(chunks = deleted, "garbage-collected unreferenced chunks");
    Ok(deleted)
}

/// Deletes `ids` here (GC decided they are garbage).
pub async fn delete_local(m: &Maintenance, ids: Vec<ChunkId>) -> u64 {
    let local = m.local.clone();
    let n = tokio::task::spawn_blocking(move || {
        ids.iter()
            .filter(|id| local.delete(id).unwrap_or(false))
            .count() as u64
    })
    .await
    .unwrap_or(0);
    m.invalidate_inventory();
    n
}

/// Local chunks whose file is older than `delay` (blocking).
fn old_chunks(local: &crate::chunk::ChunkStore, delay: Duration) -> Result<Vec<ChunkId>, String> {
    let now = SystemTime::now();
    let ids = local.list().map_err(|e| e.to_string())?;
    Ok(ids
        .into_iter()
        .filter(|id| {
            std::fs::metadata(local.path(id))
                .and_then(|md| md.modified())
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age >= delay)
        })
        .collect())
}

/// Fails when a namespace key lies outside every source's prefixes.
fn uncovered_key(cluster: &Cluster, sources: &[Arc<dyn ReferenceSource>]) -> Result<(), String> {
    let prefixes: Vec<String> = sources.iter().flat_map(|s| s.prefixes()).collect();
    let mut after: Option<String> = None;
    loop {
        let next = cluster
            .meta()
            .list("", after.as_deref(), 1)
            .map_err(|e| e.to_string())?;
        let Some((key, _)) = next.into_iter().next() else {
            return Ok(());
        };
        match prefixes.iter().find(|p| key.starts_with(p.as_str())) {
            // Skip past every key under that prefix.
            Some(p) => after = Some(format!("{p}{}", char::MAX.to_string().repeat(4))),
            None => {
                return Err(format!(
                    "namespace key {key:?} is not covered by any chunk reference source ({}); garbage collection is off so no chunk it may reference is lost",
                    sources.iter().map(|s| s.name()).collect::<Vec<_>>().join(", ")
                ))
            }
        }
    }
}
