//! What a `store server` does for FUSE mounts of `/data`: namespace reads,
//! change polling, chunk I/O through the replication layer, and the
//! leader's expiry of lock sessions of mounts that died.
//!
//! Namespace writes and lock requests need nothing new: the mount sends
//! [`Request::Write`] with a [`Command::Fs`] / [`Command::FsLock`] /
//! [`Command::FsSession`], forwarded to the leader like any write.
//!
//! Consistency of reads ([`Request::FsRead`]): with `barrier: true` the
//! server first establishes a Raft read index (the leader confirms its
//! leadership with a quorum, this node waits until it applied that index),
//! so the answer reflects every write committed before the request was
//! sent. Barriers of concurrent requests are shared: a request waits for
//! one barrier that started after it arrived. Reads without a barrier see
//! this node's applied state, which is never older than what the same
//! mount read with a barrier before.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::fs_state::{self, ChangeBatch};
use super::rpc::{self, RemoteError, Reply, Request};
use super::{Cluster, ClusterError, Command};
use crate::fs::locks::Lock;
use crate::fs::{Dentry, Errno, FileKind, FsRead, Inode, Slice, MAX_NAME, ROOT_INO};
use crate::placement::ChunkId;
use crate::replication::{remote_chunk_error, Replicator, CHUNK_TIMEOUT};

/// A namespace read.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum FsQuery {
    /// An inode.
    Inode(u64),
    /// The inode a name points to.
    Lookup {
        /// Directory.
        parent: u64,
        /// Name.
        name: Vec<u8>,
    },
    /// Entries of a directory in name order.
    ListDir {
        /// Directory.
        dir: u64,
        /// Start after this name.
        after: Option<Vec<u8>>,
        /// At most this many.
        limit: usize,
    },
    /// A file's slice list.
    Slices(u64),
    /// Unlinked inodes that may still be open.
    Orphans,
    /// An inline chunk (reply body = bytes).
    InlineChunk(ChunkId),
    /// `F_GETLK` for a session.
    TestLock {
        /// Session.
        session: u64,
        /// File.
        ino: u64,
        /// Probe.
        lock: Lock,
    },
    /// Cluster capacity for `statfs`.
    Space,
    /// Nodes holding a chunk (for `store fs stat`).
    Locate(ChunkId),
    /// QUIC addresses of every node (for a mount to fail over).
    Nodes,
}

/// The answer to an [`FsQuery`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum FsValue {
    /// An inode.
    Inode(Inode),
    /// Directory entries.
    Entries(Vec<(Vec<u8>, Dentry)>),
    /// Slices.
    Slices(Vec<Slice>),
    /// Inode numbers.
    Inos(Vec<u64>),
    /// Whether the inline chunk exists (bytes in the reply body).
    Inline(bool),
    /// Conflicting lock, if any.
    Lock(Option<Lock>),
    /// Total and available bytes (after replication).
    Space {
        /// Total.
        total: u64,
        /// Available.
        avail: u64,
    },
    /// Descriptions of nodes.
    Where(Vec<String>),
    /// Addresses.
    Addrs(Vec<SocketAddr>),
}

/// Serves the filesystem requests of mounts on one server.
pub struct FsService {
    cluster: Arc<Cluster>,
    replicator: Replicator,
    barrier: tokio::sync::Mutex<()>,
    /// Start time of the last barrier that completed.
    last_barrier: Mutex<Option<Instant>>,
    space: Mutex<Option<(Instant, (u64, u64))>>,
}

/// Longest a change poll waits on the server.
pub const WATCH_WAIT: Duration = Duration::from_secs(20);

impl FsService {
    /// Wires the service.
    pub fn new(cluster: Arc<Cluster>, replicator: Replicator) -> Arc<Self> {
        Arc::new(FsService {
            cluster,
            replicator,
            barrier: tokio::sync::Mutex::new(()),
            last_barrier: Mutex::new(None),
            space: Mutex::new(None),
        })
    }

    /// A read barrier shared with concurrent callers: returns once a
    /// barrier that started after this call arrived has completed.
    pub async fn barrier(&self) -> Result<(), ClusterError> {
        let arrived = Instant::now();
        let _g = self.barrier.lock().await;
        let last = *self.last_barrier.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| t >= arrived) {
            return Ok(());
        }
        let started = Instant::now();
        self.cluster.read_barrier().await?;
        *self.last_barrier.lock().unwrap_or_else(|p| p.into_inner()) = Some(started);
        Ok(())
    }

    /// Handles a filesystem request; `None` when `req` is not one.
    pub async fn handle(
        &self,
        req: &Request,
        body: &Bytes,
    ) -> Option<(Result<Reply, RemoteError>, Bytes)> {
        let none = Bytes::new();
        Some(match req {
            Request::FsRead { query, barrier } => {
                if *barrier {
                    if let Err(e) = self.barrier().await {
                        return Some((Err(RemoteError::Other(e.to_string())), none));
                    }
                }
                match self.query(query.clone()).await {
                    Ok((v, b)) => (Ok(Reply::FsRead(Ok(v))), b),
                    Err(QueryError::Errno(e)) => (Ok(Reply::FsRead(Err(e))), none),
                    Err(QueryError::Other(e)) => (Err(RemoteError::Other(e)), none),
                }
            }
            Request::FsWatch { id, after, session } => {
                let events = self.cluster.meta().fs_events().clone();
                let b: ChangeBatch = events.poll(*id, *after, *session, WATCH_WAIT).await;
                (Ok(Reply::FsChanges(b)), none)
            }
            Request::FsPutChunk => match self.replicator.write(body.clone()).await {
                Ok(r) => (Ok(Reply::FsChunkStored { id: r.id }), none),
                Err(e) => {
                    let text = e.to_string();
                    let full = matches!(e, crate::replication::ReplicationError::Full(_));
                    let err = if full || text.contains("no space") {
                        RemoteError::NoSpace(text)
                    } else {
                        RemoteError::Other(text)
                    };
                    (Err(err), none)
                }
            },
            Request::FsGetChunk { id } => {
                match read_chunk(&self.cluster, &self.replicator, id).await {
                    Ok(data) => (
                        Ok(Reply::Chunk {
                            crc: crc32fast::hash(&data),
                        }),
                        data,
                    ),
                    Err(e) => (Err(e), none),
                }
            }
            Request::FsDeleteChunk { id } => {
                let (_, targets) = self.replicator.replicas(id);
                let r = crate::replication::ChunkRef {
                    id: *id,
                    len: 0,
                    crc: 0,
                };
                if targets.is_empty() {
                    return Some((Ok(Reply::Done), none));
                }
                self.replicator.delete(&r).await;
                (Ok(Reply::Done), none)
            }
            _ => return None,
        })
    }

    async fn query(&self, q: FsQuery) -> Result<(FsValue, Bytes), QueryError> {
        match q {
            FsQuery::Space => Ok((self.space().await, Bytes::new())),
            FsQuery::Locate(id) => {
                let (pg, nodes) = self.replicator.replicas(&id);
                let mut out = Vec::new();
                for n in nodes {
                    let up = if self.cluster.is_up(n.id) {
                        "up"
                    } else {
                        "down"
                    };
                    out.push(format!(
                        "node {:016x} {} ({}, {up}, pg {pg})",
                        n.id, n.addr, n.domain
                    ));
                }
                Ok((FsValue::Where(out), Bytes::new()))
            }
            FsQuery::Nodes => {
                let (nodes, _) = self.cluster.nodes();
                Ok((
                    FsValue::Addrs(nodes.iter().map(|n| n.addr).collect()),
                    Bytes::new(),
                ))
            }
            FsQuery::TestLock { session, ino, lock } => {
                let db = self.cluster.meta().clone();
                let r = tokio::task::spawn_blocking(move || {
                    fs_state::test_lock(db.db(), session, ino, &lock)
                })
                .await
                .map_err(|e| QueryError::Other(e.to_string()))?
                .map_err(QueryError::Other)?;
                Ok((FsValue::Lock(r), Bytes::new()))
            }
            other => {
                let meta = self.cluster.meta().clone();
                tokio::task::spawn_blocking(move || read_query(meta.db(), other))
                    .await
                    .map_err(|e| QueryError::Other(e.to_string()))?
            }
        }
    }

    /// Capacity of the cluster after replication (cached for 5 s).
    async fn space(&self) -> FsValue {
        if let Some((at, (total, avail))) = *self.space.lock().unwrap_or_else(|p| p.into_inner()) {
            if at.elapsed() < Duration::from_secs(5) {
                return FsValue::Space { total, avail };
            }
        }
        let (nodes, _) = self.cluster.nodes();
        let jobs = nodes.into_iter().filter(|n| n.is_in).map(|n| {
            let cluster = self.cluster.clone();
            let local = self.replicator.local().clone();
            async move {
                if n.id == cluster.me.id {
                    return tokio::task::spawn_blocking(move || local.usage().ok())
                        .await
                        .ok()
                        .flatten();
                }
                match rpc::call(
                    &cluster.transport,
                    n.addr,
                    &Request::Usage,
                    &[],
                    Duration::from_secs(2),
                )
                .await
                {
                    Ok((Reply::Usage(u), _)) => Some(u),
                    _ => None,
                }
            }
        });
        let usages = super::futures_join_all(jobs).await;
        let size = self.cluster.identity.settings.size.max(1) as u64;
        let total: u64 = usages.iter().flatten().map(|u| u.fs_total).sum::<u64>() / size;
        let avail: u64 = usages.iter().flatten().map(|u| u.fs_avail).sum::<u64>() / size;
        *self.space.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((Instant::now(), (total, avail)));
        FsValue::Space { total, avail }
    }

    /// Leader only: ends lock sessions whose lease ran out (mounts that
    /// died without unmounting). Runs until `shutdown`.
    pub async fn run_expiry(self: Arc<Self>, mut shutdown: b3_common::Shutdown) {
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            let leader = self.cluster.raft.metrics().borrow().current_leader;
            if leader != Some(self.cluster.me.id) {
                continue;
            }
            let now_ms = unix_ms();
            let meta = self.cluster.meta().clone();
            let expired =
                tokio::task::spawn_blocking(move || fs_state::expired_sessions(meta.db(), now_ms))
                    .await;
            match expired {
                Ok(Ok(v)) if !v.is_empty() => {
                    if let Err(e) = self.cluster.write(Command::FsExpire { now_ms }).await {
                        tracing::warn!(error = %e, "expiring mount lock sessions");
                    }
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "reading mount lock sessions"),
                _ => {}
            }
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

enum QueryError {
    Errno(Errno),
    Other(String),
}

fn store_err(e: crate::fs::StoreError) -> QueryError {
    QueryError::Other(e.to_string())
}

/// Answers a namespace query from this node's applied state.
fn read_query(db: &redb::Database, q: FsQuery) -> Result<(FsValue, Bytes), QueryError> {
    let view = fs_state::read_view(db).map_err(store_err)?;
    let none = Bytes::new();
    match q {
        FsQuery::Inode(ino) => view
            .inode(ino)
            .map_err(store_err)?
            .map(|i| (FsValue::Inode(i), none))
            .ok_or(QueryError::Errno(Errno::ENOENT)),
        FsQuery::Lookup { parent, name } => {
            if name.len() > MAX_NAME {
                return Err(QueryError::Errno(Errno::ENAMETOOLONG));
            }
            let dir = view
                .inode(parent)
                .map_err(store_err)?
                .ok_or(QueryError::Errno(Errno::ENOENT))?;
            if !dir.is_dir() {
                return Err(QueryError::Errno(Errno::ENOTDIR));
            }
            let d = view
                .dentry(parent, &name)
                .map_err(store_err)?
                .ok_or(QueryError::Errno(Errno::ENOENT))?;
            view.inode(d.ino)
                .map_err(store_err)?
                .map(|i| (FsValue::Inode(i), none))
                .ok_or(QueryError::Errno(Errno::ENOENT))
        }
        FsQuery::ListDir { dir, after, limit } => Ok((
            FsValue::Entries(
                view.list_dir(dir, after.as_deref(), limit.min(4096))
                    .map_err(store_err)?,
            ),
            none,
        )),
        FsQuery::Slices(ino) => Ok((FsValue::Slices(view.slices(ino).map_err(store_err)?), none)),
        FsQuery::Orphans => Ok((FsValue::Inos(view.orphans().map_err(store_err)?), none)),
        FsQuery::InlineChunk(id) => match view.inline_chunk(&id).map_err(store_err)? {
            Some(b) => Ok((FsValue::Inline(true), Bytes::from(b))),
            None => Ok((FsValue::Inline(false), none)),
        },
        _ => Err(QueryError::Other("query not served here".into())),
    }
}

/// Reads chunk `id` from the first replica with a good copy (local first;
/// every copy is checked against the crc32 stored with it).
pub async fn read_chunk(
    cluster: &Arc<Cluster>,
    replicator: &Replicator,
    id: &ChunkId,
) -> Result<Bytes, RemoteError> {
    let local = replicator.local().clone();
    let lid = *id;
    match tokio::task::spawn_blocking(move || local.get(&lid)).await {
        Ok(Ok((data, _))) => return Ok(data),
        Ok(Err(crate::chunk::ChunkError::NotFound(_))) => {}
        Ok(Err(e)) => {
            tracing::warn!(chunk = %id, error = %e, "local chunk copy unreadable; reading a replica")
        }
        Err(_) => {}
    }
    let (_, mut targets) = replicator.replicas(id);
    targets.retain(|n| n.id != cluster.me.id);
    targets.sort_by_key(|n| !cluster.is_up(n.id));
    let mut problems = Vec::new();
    for n in targets {
        match rpc::call(
            &cluster.transport,
            n.addr,
            &Request::GetChunk { id: *id },
            &[],
            CHUNK_TIMEOUT,
        )
        .await
        {
            Ok((Reply::Chunk { crc }, body)) if crc32fast::hash(&body) == crc => return Ok(body),
            Ok((Reply::Chunk { .. }, _)) => {
                problems.push(format!("{}: crc32 mismatch in transfer", n.addr))
            }
            Ok((other, _)) => problems.push(format!("{}: unexpected reply {other:?}", n.addr)),
            Err(e) => problems.push(e.to_string()),
        }
    }
    if problems.iter().all(|p| p.contains("not found")) {
        return Err(remote_chunk_error(crate::chunk::ChunkError::NotFound(*id)));
    }
    Err(RemoteError::Other(format!(
        "chunk {id}: no replica has a good copy ({})",
        problems.join("; ")
    )))
}

/// Why [`read_file`] failed.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// No such file.
    #[error("{0}: no such file in /data")]
    NotFound(String),
    /// A directory (or other non-regular file).
    #[error("{0} is not a regular file")]
    NotAFile(String),
    /// Larger than the limit.
    #[error("{0} is {1} bytes, over the {2}-byte limit of this endpoint")]
    TooLarge(String, u64, u64),
    /// No quorum, storage failure...
    #[error("{0}")]
    Failed(String),
}

/// Largest file [`read_file`] returns.
pub const MAX_READ_FILE: u64 = 1 << 30;

/// The bytes of the file at `path` (relative to the root of `/data`,
/// `/`-separated) as committed cluster-wide (read barrier first).
pub async fn read_file(
    cluster: &Arc<Cluster>,
    replicator: &Replicator,
    path: &[u8],
) -> Result<Bytes, FileError> {
    cluster
        .read_barrier()
        .await
        .map_err(|e| FileError::Failed(e.to_string()))?;
    let shown = String::from_utf8_lossy(path).into_owned();
    let meta = cluster.meta().clone();
    let p = path.to_vec();
    let shown2 = shown.clone();
    let (inode, slices, inline) = tokio::task::spawn_blocking(move || {
        let fail = |e: crate::fs::StoreError| FileError::Failed(e.to_string());
        let view = fs_state::read_view(meta.db()).map_err(fail)?;
        let mut ino = ROOT_INO;
        for part in p.split(|b| *b == b'/').filter(|c| !c.is_empty()) {
            let d = view
                .dentry(ino, part)
                .map_err(fail)?
                .ok_or_else(|| FileError::NotFound(shown2.clone()))?;
            ino = d.ino;
        }
        let inode = view
            .inode(ino)
            .map_err(fail)?
            .ok_or_else(|| FileError::NotFound(shown2.clone()))?;
        if inode.kind != FileKind::Regular {
            return Err(FileError::NotAFile(shown2.clone()));
        }
        if inode.size > MAX_READ_FILE {
            return Err(FileError::TooLarge(shown2, inode.size, MAX_READ_FILE));
        }
        let slices = view.slices(ino).map_err(fail)?;
        let mut inline = std::collections::HashMap::new();
        for s in &slices {
            if let Some(b) = view.inline_chunk(&s.chunk).map_err(fail)? {
                inline.insert(s.chunk, Bytes::from(b));
            }
        }
        Ok((inode, slices, inline))
    })
    .await
    .map_err(|e| FileError::Failed(e.to_string()))??;
    let mut out = vec![0u8; inode.size as usize];
    let mut fetched: std::collections::HashMap<ChunkId, Bytes> = inline;
    for piece in crate::fs::resolve(&slices, 0, inode.size) {
        let Some((id, co)) = piece.src else { continue };
        if let std::collections::hash_map::Entry::Vacant(slot) = fetched.entry(id) {
            let data = read_chunk(cluster, replicator, &id)
                .await
                .map_err(|e| FileError::Failed(format!("{shown}: {e}")))?;
            slot.insert(data);
        }
        let data = &fetched[&id];
        let src = data
            .get(co as usize..(co + piece.len) as usize)
            .ok_or_else(|| FileError::Failed(format!("{shown}: a slice points past its chunk")))?;
        out[piece.off as usize..(piece.off + piece.len) as usize].copy_from_slice(src);
    }
    Ok(Bytes::from(out))
}
