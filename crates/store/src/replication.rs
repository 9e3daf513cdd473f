//! Replicated chunks: write a chunk to its placement group's replicas and
//! read it back from whichever copy is good. Part of the chunk layer; sits
//! on [`crate::chunk::ChunkStore`] (local copies), [`crate::placement`]
//! (which nodes) and [`crate::cluster`] (map, liveness, transport).
//!
//! * [`Replicator::write`] stores a new chunk on every *up* replica of its
//!   PG in parallel and succeeds only when at least `min_size` copies are
//!   durable (fsynced) — below that it fails with
//!   [`ReplicationError::BelowMinSize`] and removes the partial copies. A
//!   write never succeeds silently with fewer copies.
//! * [`Replicator::read`] tries the local copy first, then the other
//!   replicas; a timeout, a missing copy or a checksum mismatch moves on to
//!   the next one, and bad copies are rewritten from the good one
//!   (read repair) in the background.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use serde::{Deserialize, Serialize};

use crate::chunk::{ChunkError, ChunkStore, MAX_CHUNK};
use crate::cluster::rpc::{self, CallError, RemoteError, Reply, Request};
use crate::cluster::{Cluster, NodeId, NodeInfo};
use crate::placement::{self, Candidate, ChunkId};

/// Time budget of one chunk transfer to or from one replica.
pub const CHUNK_TIMEOUT: Duration = Duration::from_secs(10);

/// A stored chunk as object metadata references it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    /// Chunk id.
    pub id: ChunkId,
    /// Length in bytes.
    pub len: u32,
    /// crc32 of the bytes.
    pub crc: u32,
}

/// Errors of replicated chunk I/O.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    /// Too few replicas up to accept a write.
    #[error("placement group {pg} has {up} of {size} replicas up, below min_size {min_size}: writes are blocked until nodes return (check `store status`)")]
    BelowMinSize {
        /// PG.
        pg: u32,
        /// Replicas up.
        up: usize,
        /// Configured size.
        size: usize,
        /// Configured min_size.
        min_size: usize,
    },
    /// Too few replicas stored the chunk.
    #[error("chunk {id}: only {stored} of {tried} replicas stored it, below min_size {min_size} (nothing acknowledged): {problems}")]
    TooFewCopies {
        /// Chunk.
        id: ChunkId,
        /// Copies that succeeded.
        stored: usize,
        /// Replicas tried.
        tried: usize,
        /// Required.
        min_size: usize,
        /// Per-replica failures.
        problems: String,
    },
    /// No replica could serve a good copy.
    #[error("chunk {id}: no replica has a good copy ({problems})")]
    Unreadable {
        /// Chunk.
        id: ChunkId,
        /// Per-replica failures.
        problems: String,
    },
    /// Chunk over the size limit.
    #[error("chunk of {0} bytes is over the {MAX_CHUNK}-byte limit")]
    TooLarge(usize),
    /// A replica the chunk would land on is full (HTTP 507, ENOSPC).
    #[error("{0}")]
    Full(String),
}

/// Checks a write's replica set before any byte is sent (capacity limits,
/// see `maint`); `Err` names the reason the write is refused.
pub type Admission = Arc<dyn Fn(&[NodeInfo]) -> Result<(), String> + Send + Sync>;

/// Counters the replicator exports.
#[derive(Debug, Clone, Default)]
pub struct ReplicationMetrics {
    /// Chunks written (acknowledged).
    pub chunk_writes: Counter,
    /// Acknowledged writes with fewer than `size` copies.
    pub degraded_writes: Counter,
    /// Chunk reads served.
    pub chunk_reads: Counter,
    /// Reads that had to skip a replica.
    pub read_fallbacks: Counter,
    /// Corrupt copies found.
    pub corrupt_found: Counter,
    /// Copies repaired after a bad read.
    pub repairs: Counter,
}

/// Reads and writes chunks across the cluster.
#[derive(Clone)]
pub struct Replicator {
    cluster: Arc<Cluster>,
    local: ChunkStore,
    admission: Option<Admission>,
    /// Counters.
    pub metrics: ReplicationMetrics,
}

impl Replicator {
    /// Wires a replicator.
    pub fn new(cluster: Arc<Cluster>, local: ChunkStore) -> Self {
        Self {
            cluster,
            local,
            admission: None,
            metrics: ReplicationMetrics::default(),
        }
    }

    /// Refuses writes that `check` rejects (e.g. a full replica).
    pub fn with_admission(mut self, check: Admission) -> Self {
        self.admission = Some(check);
        self
    }

    /// The local chunk store.
    pub fn local(&self) -> &ChunkStore {
        &self.local
    }

    /// Replica set (primary first) of chunk `id` under the current map.
    pub fn replicas(&self, id: &ChunkId) -> (u32, Vec<NodeInfo>) {
        let (nodes, _) = self.cluster.nodes();
        let s = &self.cluster.identity.settings;
        let pg = id.pg(s.pg_count);
        (pg, replicas_of_pg(pg, &nodes, s.size))
    }

    /// Stores `data` as a new chunk on ≥ min_size replicas.
    pub async fn write(&self, data: Bytes) -> Result<ChunkRef, ReplicationError> {
        if data.len() > MAX_CHUNK {
            return Err(ReplicationError::TooLarge(data.len()));
        }
        let s = self.cluster.identity.settings.clone();
        let id = ChunkId::random();
        let crc = crc32fast::hash(&data);
        let (pg, targets) = self.replicas(&id);
        let up: Vec<NodeInfo> = targets
            .into_iter()
            .filter(|n| self.cluster.is_up(n.id))
            .collect();
        if let Some(check) = &self.admission {
            check(&up).map_err(ReplicationError::Full)?;
        }
        if up.len() < s.min_size {
            return Err(ReplicationError::BelowMinSize {
                pg,
                up: up.len(),
                size: s.size,
                min_size: s.min_size,
            });
        }
        let tried = up.len();
        let jobs = up.iter().map(|n| {
            let this = self.clone();
            let node = n.clone();
            let data = data.clone();
            async move {
                let r = this.put_on(&node, id, crc, data).await;
                (node.id, r)
            }
        });
        let results = crate::cluster::futures_join_all(jobs).await;
        let stored: Vec<NodeId> = results
            .iter()
            .filter(|(_, r)| r.is_ok())
            .map(|(id, _)| *id)
            .collect();
        if stored.len() < s.min_size {
            let problems = results
                .iter()
                .filter_map(|(n, r)| r.as_ref().err().map(|e| format!("node {n:x}: {e}")))
                .collect::<Vec<_>>()
                .join("; ");
            // Nothing is acknowledged: take back the copies that did land.
            for n in up.iter().filter(|n| stored.contains(&n.id)) {
                let _ = self.delete_on(n, id).await;
            }
            return Err(ReplicationError::TooFewCopies {
                id,
                stored: stored.len(),
                tried,
                min_size: s.min_size,
                problems,
            });
        }
        self.metrics.chunk_writes.inc();
        if stored.len() < s.size {
            self.metrics.degraded_writes.inc();
        }
        Ok(ChunkRef {
            id,
            len: data.len() as u32,
            crc,
        })
    }

    /// Reads a chunk from the first replica with a good copy.
    pub async fn read(&self, r: &ChunkRef) -> Result<Bytes, ReplicationError> {
        let (_, mut targets) = self.replicas(&r.id);
        // Local copy first, then replicas that are up, then the rest.
        targets.sort_by_key(|n| (n.id != self.cluster.me.id, !self.cluster.is_up(n.id)));
        let mut problems = Vec::new();
        let mut bad = Vec::new();
        for node in &targets {
            match self.get_from(node, r).await {
                Ok(data) => {
                    self.metrics.chunk_reads.inc();
                    if !problems.is_empty() {
                        self.metrics.read_fallbacks.inc();
                    }
                    if !bad.is_empty() {
                        self.repair(bad, *r, data.clone());
                    }
                    return Ok(data);
                }
                Err(e) => {
                    if e.contains("crc32") || e.contains("not stored") || e.contains("not found") {
                        if e.contains("crc32") {
                            self.metrics.corrupt_found.inc();
                            tracing::warn!(chunk = %r.id, node = node.id, problem = %e, "corrupt chunk copy; reading another replica");
                        }
                        bad.push(node.clone());
                    }
                    problems.push(format!("node {:x}: {e}", node.id));
                }
            }
        }
        Err(ReplicationError::Unreadable {
            id: r.id,
            problems: problems.join("; "),
        })
    }

    /// Removes a chunk from all its replicas (best effort).
    pub async fn delete(&self, r: &ChunkRef) {
        let (_, targets) = self.replicas(&r.id);
        for n in targets {
            if let Err(e) = self.delete_on(&n, r.id).await {
                tracing::debug!(chunk = %r.id, node = n.id, error = %e, "chunk delete failed; left for garbage collection");
            }
        }
    }

    fn repair(&self, bad: Vec<NodeInfo>, r: ChunkRef, data: Bytes) {
        let this = self.clone();
        tokio::spawn(async move {
            for node in bad {
                match this.put_on(&node, r.id, r.crc, data.clone()).await {
                    Ok(()) => {
                        this.metrics.repairs.inc();
                        tracing::info!(chunk = %r.id, node = node.id, "repaired chunk copy");
                    }
                    Err(e) => {
                        tracing::warn!(chunk = %r.id, node = node.id, error = %e, "chunk repair failed")
                    }
                }
            }
        });
    }

    async fn put_on(
        &self,
        node: &NodeInfo,
        id: ChunkId,
        crc: u32,
        data: Bytes,
    ) -> Result<(), String> {
        if node.id == self.cluster.me.id {
            let local = self.local.clone();
            return tokio::task::spawn_blocking(move || local.put(&id, &data, crc))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string());
        }
        let req = Request::PutChunk { id, crc };
        match rpc::call_bytes(
            &self.cluster.transport,
            node.addr,
            &req,
            data,
            CHUNK_TIMEOUT,
        )
        .await
        {
            Ok((Reply::Done, _)) => {
                self.cluster.mark_seen(node.id);
                Ok(())
            }
            Ok((other, _)) => Err(format!("unexpected reply {other:?}")),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn delete_on(&self, node: &NodeInfo, id: ChunkId) -> Result<(), String> {
        if node.id == self.cluster.me.id {
            let local = self.local.clone();
            return tokio::task::spawn_blocking(move || local.delete(&id))
                .await
                .map_err(|e| e.to_string())?
                .map(|_| ())
                .map_err(|e| e.to_string());
        }
        let req = Request::DeleteChunk { id };
        match rpc::call(&self.cluster.transport, node.addr, &req, &[], CHUNK_TIMEOUT).await {
            Ok(_) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn get_from(&self, node: &NodeInfo, r: &ChunkRef) -> Result<Bytes, String> {
        let data = if node.id == self.cluster.me.id {
            let local = self.local.clone();
            let id = r.id;
            tokio::task::spawn_blocking(move || local.get(&id))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?
                .0
        } else {
            let req = Request::GetChunk { id: r.id };
            match rpc::call(&self.cluster.transport, node.addr, &req, &[], CHUNK_TIMEOUT).await {
                Ok((Reply::Chunk { crc }, body)) => {
                    // Checked on transfer too.
                    let actual = crc32fast::hash(&body);
                    if actual != crc {
                        return Err(format!(
                            "crc32 mismatch in transfer (expected {crc:08x}, got {actual:08x})"
                        ));
                    }
                    body
                }
                Ok((other, _)) => return Err(format!("unexpected reply {other:?}")),
                Err(CallError::Remote {
                    source: RemoteError::NotFound,
                    ..
                }) => return Err("chunk not found".into()),
                Err(e) => return Err(e.to_string()),
            }
        };
        let actual = crc32fast::hash(&data);
        if actual != r.crc || data.len() != r.len as usize {
            return Err(format!(
                "crc32 mismatch against the object's record (expected {:08x}, got {actual:08x})",
                r.crc
            ));
        }
        Ok(data)
    }
}

/// Replica set of `pg` over the "in" nodes of a map.
pub fn replicas_of_pg(pg: u32, nodes: &[NodeInfo], size: usize) -> Vec<NodeInfo> {
    let candidates: Vec<Candidate> = nodes
        .iter()
        .filter(|n| n.is_in)
        .map(|n| Candidate {
            id: n.id,
            weight: n.weight,
            domain: n.domain.clone(),
        })
        .collect();
    placement::replicas(pg, &candidates, size)
        .into_iter()
        .filter_map(|id| nodes.iter().find(|n| n.id == id).cloned())
        .collect()
}

/// Maps a local chunk error to the remote error a peer sees.
pub fn remote_chunk_error(e: ChunkError) -> RemoteError {
    match e {
        ChunkError::NotFound(_) => RemoteError::NotFound,
        ChunkError::Corrupt { .. } => RemoteError::Corrupt(e.to_string()),
        ChunkError::NoSpace { .. } => RemoteError::NoSpace(e.to_string()),
        other => RemoteError::Other(other.to_string()),
    }
}
