//! [`Meta`], [`ChunkIo`] and [`Locks`] over the cluster:
//! `store mount DIR --backend cluster:DATA_DIR`.
//!
//! The mount uses the node certificate in `DATA_DIR/identity` (the data
//! directory of a `store server` on this host) and talks QUIC to that
//! server, whose address it reads from `DATA_DIR/endpoint`; when the local
//! server does not answer, it fails over to the other nodes of the cluster
//! map. Namespace changes go through Raft (`Command::Fs`, durable on a
//! quorum when `submit` returns), chunks through the replication layer
//! (durable on `min_size` replicas when `put` returns).
//!
//! Caching and consistency (close-to-open): inodes and slice lists read
//! here are cached until the server reports a change by another mount
//! (long-poll of `FsWatch`); `lookup`, the first page of `readdir` and
//! [`Meta::refresh`] (called at every open) read behind a Raft read
//! barrier, so an open sees every change committed before it started. When
//! the change stream breaks, the cache is dropped and bypassed until it is
//! back.
//!
//! Locks: the mount holds a lock session with a lease (renewed every
//! [`RENEW`], valid for [`LEASE`]); a mount that dies loses its locks
//! when the lease runs out, a clean unmount ends the session at once.
//! Waiting lock requests poll the leader with a growing interval.
//!
//! Failures: a metadata request that fails on the way (connection lost,
//! server killed, leader election, timeout) is sent again — to the next
//! node when its server stopped answering — for up to [`RETRY_FOR`] before
//! the application sees `EIO`. Namespace changes are numbered per session
//! so a retry whose first copy did commit is applied once and answered
//! with the first reply (see `cluster::fs_state`).

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::backend::{Change, ChunkIo, Meta};
use super::locks::{Lock, LockKind, LockWaiter, Locks};
use super::{Ctx, Dentry, Errno, FsOp, FsReply, Inode, Slice, Time};
use crate::cluster::fs_server::{unix_ms, FsQuery, FsValue};
use crate::cluster::rpc::{self, CallError, RemoteError, Reply, Request};
use crate::cluster::{Command, CommandResult};
use crate::net::{Identity, NetError, Transport};
use crate::placement::ChunkId;

/// Lock session lease.
pub const LEASE: Duration = Duration::from_secs(15);
/// Lease renewal interval.
pub const RENEW: Duration = Duration::from_secs(3);
/// Budget of one metadata request (a Raft write may wait for an election).
const META_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a failed metadata request is retried (through elections,
/// restarts and fail-over) before the application gets `EIO`.
pub const RETRY_FOR: Duration = Duration::from_secs(60);
/// Budget of one chunk transfer through the server.
const CHUNK_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Deleted chunks are removed this long after the metadata dropped them,
/// so another mount still reading the old version finishes its read.
const DELETE_DELAY: Duration = Duration::from_secs(30);
/// Most cached inodes (and slice lists) before the cache starts over.
const MAX_CACHED: usize = 100_000;
/// Most lock requests waiting at once.
const MAX_WAITERS: usize = 1024;

/// The connection of a mount to the cluster.
pub struct ClusterConn {
    rt: Mutex<Option<tokio::runtime::Runtime>>,
    handle: tokio::runtime::Handle,
    transport: Arc<Transport>,
    addrs: Mutex<Vec<SocketAddr>>,
    current: AtomicUsize,
    /// This mount's lock session (also the origin of its namespace changes).
    pub session: u64,
    /// Number of the next namespace change (exactly-once retries).
    next_req: AtomicU64,
    /// Numbers sent and not answered yet.
    outstanding: Mutex<BTreeSet<u64>>,
    cache: Mutex<MetaCache>,
    /// Bumped on every invalidation; a read only fills the cache if no
    /// invalidation happened while it was in flight.
    generation: AtomicU64,
    watching: AtomicBool,
    changes: Mutex<Option<std::sync::mpsc::SyncSender<Change>>>,
    stop: Arc<AtomicBool>,
    data_dir: PathBuf,
    /// The local server's chunk directory: chunks are immutable files
    /// written atomically, so a local copy is read straight from disk.
    local_chunks: crate::chunk::ChunkStore,
}

#[derive(Default)]
struct MetaCache {
    inodes: HashMap<u64, Inode>,
    slices: HashMap<u64, Vec<Slice>>,
}

impl Drop for ClusterConn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(rt) = self.rt.lock().unwrap_or_else(|p| p.into_inner()).take() {
            rt.shutdown_background();
        }
    }
}

fn eio(what: &str, e: impl std::fmt::Display) -> Errno {
    tracing::error!(error = %e, "{what} failed");
    Errno::EIO
}

impl ClusterConn {
    /// Connects with the identity of the server whose data directory is
    /// `data_dir`.
    pub fn connect(data_dir: &Path) -> anyhow::Result<Arc<Self>> {
        use anyhow::Context;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let identity = Identity::require(data_dir).with_context(|| {
            format!(
                "reading the node identity in {} (is a `store server` set up with this --data-dir?)",
                data_dir.display()
            )
        })?;
        let endpoint = data_dir.join(crate::server::ENDPOINT_FILE);
        let text = std::fs::read_to_string(&endpoint).with_context(|| {
            format!(
                "reading {}: start `store server --data-dir {}` on this host first",
                endpoint.display(),
                data_dir.display()
            )
        })?;
        let first: SocketAddr = text.trim().parse().with_context(|| {
            format!(
                "{} holds {:?}, not an address",
                endpoint.display(),
                text.trim()
            )
        })?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("store-cluster-io")
            .enable_all()
            .build()
            .context("starting the mount's network runtime")?;
        let handle = rt.handle().clone();
        let client = identity.client_config()?;
        let transport = handle.block_on(async { Transport::client(client) })?;
        let conn = Arc::new(ClusterConn {
            rt: Mutex::new(Some(rt)),
            handle,
            transport,
            addrs: Mutex::new(vec![first]),
            current: AtomicUsize::new(0),
            session: rand::random::<u64>() | 1,
            next_req: AtomicU64::new(1),
            outstanding: Mutex::new(BTreeSet::new()),
            cache: Mutex::new(MetaCache::default()),
            generation: AtomicU64::new(0),
            watching: AtomicBool::new(false),
            changes: Mutex::new(None),
            stop: Arc::new(AtomicBool::new(false)),
            data_dir: data_dir.to_path_buf(),
            local_chunks: crate::chunk::ChunkStore::reader(data_dir.join("chunks")),
        });
        // Every node, for fail-over (the local server first).
        // Short: a mount started without its server says so at once.
        match conn.query_within(FsQuery::Nodes, false, Duration::from_secs(3)) {
            Ok((FsValue::Addrs(all), _)) => {
                let mut a = conn.addrs.lock().unwrap_or_else(|p| p.into_inner());
                for x in all {
                    if !a.contains(&x) {
                        a.push(x);
                    }
                }
            }
            Ok(_) => {}
            Err(e) => anyhow::bail!(
                "the store server at {first} (from {}) does not answer: {e}; is it running?",
                endpoint.display()
            ),
        }
        let now = Time::now();
        match conn.write(Command::FsInit { now }) {
            Ok(_) => {}
            Err(e) => anyhow::bail!("creating the root of /data through the cluster failed ({e}); check `store status` for a metadata quorum"),
        }
        conn.renew_session()
            .map_err(|e| anyhow::anyhow!("opening a lock session failed: {e}"))?;
        Self::start_background(&conn);
        Ok(conn)
    }

    /// The server data directory this mount uses.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    fn start_background(this: &Arc<Self>) {
        // Change stream.
        let weak = Arc::downgrade(this);
        let stop = this.stop.clone();
        this.handle.spawn(async move {
            let (mut id, mut after) = (0u64, 0u64);
            let mut failures = 0u32;
            loop {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let Some(conn) = weak.upgrade() else { return };
                let req = Request::FsWatch {
                    id,
                    after,
                    session: conn.session,
                };
                let r = conn
                    .call_async(&req, Bytes::new(), crate::cluster::fs_server::WATCH_WAIT + Duration::from_secs(10))
                    .await;
                match r {
                    Ok((Reply::FsChanges(b), _)) => {
                        failures = 0;
                        let first = id == 0;
                        if b.id != id || b.lost {
                            // Started over (first poll, server restarted or
                            // fail-over): anything cached may be stale.
                            if !first || b.lost {
                                tracing::info!("change stream restarted; dropping cached metadata");
                            }
                            conn.invalidate_all();
                        }
                        id = b.id;
                        after = b.next;
                        conn.watching.store(true, Ordering::SeqCst);
                        conn.apply_changes(b.changes);
                    }
                    Ok((other, _)) => {
                        tracing::warn!(reply = ?other, "unexpected reply to a change poll");
                        failures += 1;
                    }
                    Err(e) => {
                        if failures == 0 {
                            tracing::warn!(error = %e, "change stream broken; metadata caching is off until it is back");
                        }
                        conn.watching.store(false, Ordering::SeqCst);
                        conn.invalidate_all();
                        id = 0;
                        failures += 1;
                    }
                }
                drop(conn);
                if failures > 0 {
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(failures.min(10)))).await;
                }
            }
        });
        // Lock session renewal.
        let weak = Arc::downgrade(this);
        let stop = this.stop.clone();
        this.handle.spawn(async move {
            loop {
                tokio::time::sleep(RENEW).await;
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let Some(conn) = weak.upgrade() else { return };
                let cmd = Command::FsSession {
                    session: conn.session,
                    expires_ms: unix_ms() + LEASE.as_millis() as u64,
                };
                let req = Request::Write {
                    command: cmd,
                    hops: 0,
                };
                if let Err(e) = conn.call_async(&req, Bytes::new(), META_TIMEOUT).await {
                    tracing::warn!(error = %e, "renewing the lock session failed; locks are lost if this lasts {LEASE:?}");
                }
            }
        });
    }

    fn invalidate_all(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        c.inodes.clear();
        c.slices.clear();
    }

    fn invalidate(&self, ino: u64) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        c.inodes.remove(&ino);
        c.slices.remove(&ino);
    }

    fn apply_changes(&self, changes: Vec<Change>) {
        if changes.is_empty() {
            return;
        }
        for c in &changes {
            if let Change::Inode(ino) = c {
                self.invalidate(*ino);
            }
        }
        let tx = self
            .changes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(tx) = tx {
            for c in changes {
                // Full: the kernel's short TTLs cover what is dropped.
                let _ = tx.try_send(c);
            }
        }
    }

    fn cache_ok(&self) -> bool {
        self.watching.load(Ordering::SeqCst)
    }

    fn fill<T>(&self, gen: u64, f: impl FnOnce(&mut MetaCache) -> T) {
        if !self.cache_ok() {
            return;
        }
        let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if self.generation.load(Ordering::SeqCst) != gen {
            return;
        }
        if c.inodes.len() + c.slices.len() > MAX_CACHED {
            c.inodes.clear();
            c.slices.clear();
        }
        f(&mut c);
    }

    /// Runs `f` on the connection's runtime from a blocking thread.
    fn block<F>(&self, f: F) -> F::Output
    where
        F: std::future::Future + Send,
        F::Output: Send,
    {
        if tokio::runtime::Handle::try_current().is_ok() {
            // Inside some runtime (a spawn_blocking thread): block on a
            // thread of our own.
            std::thread::scope(|s| {
                s.spawn(|| self.handle.block_on(f))
                    .join()
                    .unwrap_or_else(|p| std::panic::resume_unwind(p))
            })
        } else {
            self.handle.block_on(f)
        }
    }

    /// Sends `req` to the current server; on a connection failure moves on
    /// to the next node and retries (each node once).
    async fn call_async(
        &self,
        req: &Request,
        body: Bytes,
        timeout: Duration,
    ) -> Result<(Reply, Bytes), CallError> {
        let addrs = self.addrs.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let start = self.current.load(Ordering::Relaxed);
        let mut last = None;
        for k in 0..addrs.len() {
            let i = (start + k) % addrs.len();
            match rpc::call(&self.transport, addrs[i], req, &body, timeout).await {
                Err(CallError::Net(NetError::Connect { addr, reason })) => {
                    tracing::debug!(%addr, %reason, "store server unreachable; trying the next node");
                    last = Some(CallError::Net(NetError::Connect { addr, reason }));
                }
                other => {
                    if k > 0 {
                        tracing::info!(server = %addrs[i], "mount now talks to another store server");
                        self.current.store(i, Ordering::Relaxed);
                    }
                    return other;
                }
            }
        }
        Err(last.unwrap_or_else(|| {
            CallError::Net(NetError::Connect {
                addr: SocketAddr::from(([127, 0, 0, 1], 0)),
                reason: "no store server known".into(),
            })
        }))
    }

    /// [`Self::call`] retried while the failure is one a retry can cure,
    /// for up to `budget` (metadata requests with [`META_TIMEOUT`] per try).
    fn call_retrying(&self, req: &Request, budget: Duration) -> Result<(Reply, Bytes), CallError> {
        self.call_retrying_with(req, Bytes::new(), META_TIMEOUT, budget)
    }

    fn call_retrying_with(
        &self,
        req: &Request,
        body: Bytes,
        timeout: Duration,
        budget: Duration,
    ) -> Result<(Reply, Bytes), CallError> {
        self.block(async {
            let start = Instant::now();
            let mut delay = Duration::from_millis(50);
            let mut attempt = 0u32;
            loop {
                let err = match self.call_async(req, body.clone(), timeout).await {
                    Ok(r) => {
                        if attempt > 0 {
                            tracing::info!(attempt, what = req.name(), "request went through after a retry");
                        }
                        return Ok(r);
                    }
                    Err(e) => e,
                };
                if !retryable(req, &err) || start.elapsed() + delay >= budget {
                    return Err(err);
                }
                attempt += 1;
                tracing::warn!(error = %err, attempt, what = req.name(), "request failed on the way; retrying");
                if matches!(err, CallError::Net(NetError::Timeout { .. } | NetError::Wire { .. })) {
                    // The server may be gone without refusing connections:
                    // the next attempt goes to the next node.
                    let n = self.addrs.lock().unwrap_or_else(|p| p.into_inner()).len().max(1);
                    let next = (self.current.load(Ordering::Relaxed) + 1) % n;
                    self.current.store(next, Ordering::Relaxed);
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
        })
    }

    fn write(&self, command: Command) -> Result<CommandResult, Errno> {
        let req = Request::Write { command, hops: 0 };
        match self.call_retrying(&req, RETRY_FOR) {
            Ok((Reply::Written(r), _)) => Ok(r),
            Ok((other, _)) => Err(eio(
                "a metadata write",
                format!("unexpected reply {other:?}"),
            )),
            Err(e) => Err(eio("a metadata write", e)),
        }
    }

    fn query(&self, query: FsQuery, barrier: bool) -> Result<(FsValue, Bytes), Errno> {
        self.query_within(query, barrier, RETRY_FOR)
    }

    fn query_within(
        &self,
        query: FsQuery,
        barrier: bool,
        budget: Duration,
    ) -> Result<(FsValue, Bytes), Errno> {
        let req = Request::FsRead { query, barrier };
        match self.call_retrying(&req, budget) {
            Ok((Reply::FsRead(Ok(v)), body)) => Ok((v, body)),
            Ok((Reply::FsRead(Err(e)), _)) => Err(e),
            Ok((other, _)) => Err(eio(
                "a metadata read",
                format!("unexpected reply {other:?}"),
            )),
            Err(e) => Err(eio("a metadata read", e)),
        }
    }

    fn renew_session(&self) -> Result<(), Errno> {
        self.write(Command::FsSession {
            session: self.session,
            expires_ms: unix_ms() + LEASE.as_millis() as u64,
        })
        .map(|_| ())
    }

    /// Ends the lock session (clean unmount): this mount's locks go now.
    pub fn end_session(&self) {
        // Not retried for long: an unmount must not hang on a dead cluster.
        let req = Request::Write {
            command: Command::FsEndSession {
                session: self.session,
            },
            hops: 0,
        };
        if let Err(e) = self.call_retrying(&req, Duration::from_secs(3)) {
            tracing::warn!(error = %e, "ending the lock session failed; its locks go when the lease ends");
        }
    }
}

/// Whether sending the same request again can succeed: the way failed
/// (connection, timeout, election), not the request. A chunk read that
/// found no good replica is not retried (the server already tried them
/// all).
fn retryable(req: &Request, e: &CallError) -> bool {
    match e {
        CallError::Net(_) => true,
        CallError::Remote { source, .. } => match source {
            RemoteError::NotLeader { .. } => true,
            RemoteError::Other(_) => !matches!(req, Request::FsGetChunk { .. }),
            _ => false,
        },
        CallError::Decode { .. } => false,
    }
}

fn inode_of(v: FsValue) -> Result<Inode, Errno> {
    match v {
        FsValue::Inode(i) => Ok(i),
        other => Err(eio(
            "a metadata read",
            format!("unexpected value {other:?}"),
        )),
    }
}

/// [`Meta`] over the cluster.
pub struct ClusterMeta(pub Arc<ClusterConn>);

impl Meta for ClusterMeta {
    fn submit(&self, op: FsOp, ctx: &Ctx) -> Result<FsReply, Errno> {
        let c = &self.0;
        // What this op changes that the cache may hold: the inode, or for
        // a new name its directory (and a hard link's inode). Unlink,
        // rmdir and rename change an inode found by name: everything goes.
        let targets: Option<Vec<u64>> = match &op {
            FsOp::SetAttr { ino, .. }
            | FsOp::SetXattr { ino, .. }
            | FsOp::RemoveXattr { ino, .. }
            | FsOp::AppendSlices { ino, .. }
            | FsOp::ReplaceSlices { ino, .. }
            | FsOp::Purge { ino } => Some(vec![*ino]),
            FsOp::Mknod { parent, .. }
            | FsOp::Mkdir { parent, .. }
            | FsOp::Symlink { parent, .. } => Some(vec![*parent]),
            FsOp::Link { ino, parent, .. } => Some(vec![*ino, *parent]),
            _ => None,
        };
        let req = c.next_req.fetch_add(1, Ordering::Relaxed);
        let done_below = {
            let mut o = c.outstanding.lock().unwrap_or_else(|p| p.into_inner());
            o.insert(req);
            o.first().copied().unwrap_or(req)
        };
        let r = c.write(Command::Fs {
            op,
            ctx: ctx.clone(),
            origin: c.session,
            req,
            done_below,
        });
        c.outstanding
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&req);
        // Our own changes are not echoed back by the change stream.
        match targets {
            Some(inos) => inos.into_iter().for_each(|ino| c.invalidate(ino)),
            None => c.invalidate_all(),
        }
        match r?.fs {
            Some(r) => r,
            None => Err(eio(
                "a namespace change",
                "the server answered without a result (older server?)",
            )),
        }
    }

    fn inode(&self, ino: u64) -> Result<Inode, Errno> {
        let c = &self.0;
        if c.cache_ok() {
            if let Some(i) = c
                .cache
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .inodes
                .get(&ino)
            {
                return Ok(i.clone());
            }
        }
        let gen = c.generation.load(Ordering::SeqCst);
        let i = inode_of(c.query(FsQuery::Inode(ino), false)?.0)?;
        c.fill(gen, |m| {
            m.inodes.insert(ino, i.clone());
        });
        Ok(i)
    }

    fn lookup(&self, parent: u64, name: &[u8]) -> Result<Inode, Errno> {
        let c = &self.0;
        let gen = c.generation.load(Ordering::SeqCst);
        let i = inode_of(
            c.query(
                FsQuery::Lookup {
                    parent,
                    name: name.to_vec(),
                },
                true,
            )?
            .0,
        )?;
        c.fill(gen, |m| {
            m.inodes.insert(i.ino, i.clone());
        });
        Ok(i)
    }

    fn list_dir(
        &self,
        dir: u64,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Dentry)>, Errno> {
        let q = FsQuery::ListDir {
            dir,
            after: after.map(|a| a.to_vec()),
            limit,
        };
        match self.0.query(q, after.is_none())?.0 {
            FsValue::Entries(e) => Ok(e),
            other => Err(eio(
                "listing a directory",
                format!("unexpected value {other:?}"),
            )),
        }
    }

    fn slices(&self, ino: u64) -> Result<Vec<Slice>, Errno> {
        let c = &self.0;
        if c.cache_ok() {
            if let Some(s) = c
                .cache
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .slices
                .get(&ino)
            {
                return Ok(s.clone());
            }
        }
        let gen = c.generation.load(Ordering::SeqCst);
        match c.query(FsQuery::Slices(ino), false)?.0 {
            FsValue::Slices(s) => {
                c.fill(gen, |m| {
                    m.slices.insert(ino, s.clone());
                });
                Ok(s)
            }
            other => Err(eio("reading slices", format!("unexpected value {other:?}"))),
        }
    }

    fn orphans(&self) -> Result<Vec<u64>, Errno> {
        match self.0.query(FsQuery::Orphans, true)?.0 {
            FsValue::Inos(v) => Ok(v),
            other => Err(eio(
                "listing orphans",
                format!("unexpected value {other:?}"),
            )),
        }
    }

    fn inline_chunk(&self, id: &ChunkId) -> Result<Option<Bytes>, Errno> {
        match self.0.query(FsQuery::InlineChunk(*id), false)? {
            (FsValue::Inline(true), b) => Ok(Some(b)),
            (FsValue::Inline(false), _) => Ok(None),
            (other, _) => Err(eio(
                "reading an inline chunk",
                format!("unexpected value {other:?}"),
            )),
        }
    }

    fn refresh(&self, ino: u64) -> Result<(), Errno> {
        let c = &self.0;
        c.invalidate(ino);
        let gen = c.generation.load(Ordering::SeqCst);
        let i = inode_of(c.query(FsQuery::Inode(ino), true)?.0)?;
        c.fill(gen, |m| {
            m.inodes.insert(ino, i);
        });
        Ok(())
    }

    fn subscribe(&self) -> Option<std::sync::mpsc::Receiver<Change>> {
        let (tx, rx) = std::sync::mpsc::sync_channel(65_536);
        *self.0.changes.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        Some(rx)
    }
}

/// [`ChunkIo`] over the cluster (through the server's replication).
pub struct ClusterChunks(pub Arc<ClusterConn>);

impl ChunkIo for ClusterChunks {
    fn put(&self, data: &[u8]) -> Result<ChunkId, Errno> {
        let body = Bytes::copy_from_slice(data);
        // A retry after a lost answer may store the chunk twice under two
        // ids: the unused one is garbage-collected.
        match self
            .0
            .call_retrying_with(&Request::FsPutChunk, body, CHUNK_CALL_TIMEOUT, RETRY_FOR)
        {
            Ok((Reply::FsChunkStored { id }, _)) => Ok(id),
            Ok((other, _)) => Err(eio(
                "storing a chunk",
                format!("unexpected reply {other:?}"),
            )),
            Err(CallError::Remote {
                source: RemoteError::NoSpace(m),
                ..
            }) => {
                tracing::error!(problem = %m, "storing a chunk: no space");
                Err(Errno::ENOSPC)
            }
            Err(e) => Err(eio("storing a chunk", e)),
        }
    }

    fn get(&self, id: &ChunkId) -> Result<Bytes, Errno> {
        // The local replica, if this host has one (crc checked); anything
        // else (absent, corrupt, unreadable) goes through the server, which
        // reads another replica.
        match self.0.local_chunks.get(id) {
            Ok((data, _)) => return Ok(data),
            Err(crate::chunk::ChunkError::NotFound(_)) => {}
            Err(e) => {
                tracing::warn!(chunk = %id, error = %e, "local chunk copy unreadable; reading through the server")
            }
        }
        match self.0.call_retrying_with(
            &Request::FsGetChunk { id: *id },
            Bytes::new(),
            CHUNK_CALL_TIMEOUT,
            RETRY_FOR,
        ) {
            Ok((Reply::Chunk { crc }, body)) if crc32fast::hash(&body) == crc => Ok(body),
            Ok((Reply::Chunk { .. }, _)) => Err(eio(
                "reading a chunk",
                format!("chunk {id}: crc32 mismatch in transfer"),
            )),
            Ok((other, _)) => Err(eio(
                "reading a chunk",
                format!("unexpected reply {other:?}"),
            )),
            Err(e) => Err(eio("reading a chunk", format!("chunk {id}: {e}"))),
        }
    }

    fn delete(&self, id: &ChunkId) -> Result<(), Errno> {
        let conn = Arc::downgrade(&self.0);
        let id = *id;
        self.0.handle.spawn(async move {
            tokio::time::sleep(DELETE_DELAY).await;
            let Some(conn) = conn.upgrade() else { return };
            if let Err(e) = conn
                .call_async(&Request::FsDeleteChunk { id }, Bytes::new(), CHUNK_CALL_TIMEOUT)
                .await
            {
                tracing::debug!(chunk = %id, error = %e, "deleting a chunk failed; left to garbage collection");
            }
        });
        Ok(())
    }

    fn space(&self) -> (u64, u64) {
        match self.0.query(FsQuery::Space, false) {
            Ok((FsValue::Space { total, avail }, _)) => (total, avail),
            _ => (0, 0),
        }
    }

    fn locate(&self, id: &ChunkId) -> Vec<String> {
        match self.0.query(FsQuery::Locate(*id), false) {
            Ok((FsValue::Where(w), _)) => w,
            Ok(_) => Vec::new(),
            Err(e) => vec![format!("unknown ({e})")],
        }
    }
}

/// [`Locks`] over the cluster: the lock table lives in the Raft state
/// machine, so locks exclude each other across every mount.
pub struct ClusterLocks {
    conn: Arc<ConnRef>,
    waiting: Arc<Mutex<Vec<Waiter>>>,
}

/// A waiting lock request: (ino, owner, cancelled).
type Waiter = (u64, u64, Arc<AtomicBool>);

/// Ends the session when the last user is gone.
struct ConnRef(Arc<ClusterConn>);

impl Drop for ConnRef {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::Relaxed);
        self.0.end_session();
    }
}

impl ClusterLocks {
    /// Locks of `conn`'s session; dropping the last handle ends it.
    pub fn new(conn: Arc<ClusterConn>) -> Self {
        ClusterLocks {
            conn: Arc::new(ConnRef(conn)),
            waiting: Arc::default(),
        }
    }
}

impl Locks for ClusterLocks {
    fn test(&self, ino: u64, req: &Lock) -> Result<Option<Lock>, Errno> {
        let c = &self.conn.0;
        let q = FsQuery::TestLock {
            session: c.session,
            ino,
            lock: *req,
        };
        match c.query(q, true)?.0 {
            FsValue::Lock(l) => Ok(l),
            other => Err(eio("testing a lock", format!("unexpected value {other:?}"))),
        }
    }

    fn set(&self, ino: u64, req: Lock, wait: bool, done: LockWaiter) {
        if req.kind == LockKind::Unlock {
            // The owner gives up (unlock or close): its waiters are void.
            let mut w = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
            for (i, o, cancel) in w.iter() {
                if *i == ino && *o == req.owner {
                    cancel.store(true, Ordering::SeqCst);
                }
            }
            w.retain(|(i, o, _)| !(*i == ino && *o == req.owner));
        }
        let cancel = Arc::new(AtomicBool::new(false));
        if wait {
            let mut w = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
            if w.len() >= MAX_WAITERS {
                drop(w);
                done(Err(Errno(libc::ENOLCK)));
                return;
            }
            w.push((ino, req.owner, cancel.clone()));
        }
        let conn = self.conn.clone();
        let waiting = self.waiting.clone();
        let handle = conn.0.handle.clone();
        handle.spawn(async move {
            let c = &conn.0;
            let mut delay = Duration::from_millis(20);
            let mut renewed = false;
            let started = Instant::now();
            let result = loop {
                if cancel.load(Ordering::SeqCst) {
                    break Err(Errno(libc::EINTR));
                }
                let r = Request::Write {
                    command: Command::FsLock {
                        session: c.session,
                        ino,
                        lock: req,
                    },
                    hops: 0,
                };
                match c.call_async(&r, Bytes::new(), META_TIMEOUT).await {
                    Ok((Reply::Written(res), _)) if res.ok => break Ok(()),
                    Ok((Reply::Written(res), _)) if res.lock.is_none() => {
                        // Session expired (the mount was cut off longer
                        // than the lease): open it again once.
                        if renewed {
                            break Err(Errno(libc::ENOLCK));
                        }
                        renewed = true;
                        let s = Request::Write {
                            command: Command::FsSession {
                                session: c.session,
                                expires_ms: unix_ms() + LEASE.as_millis() as u64,
                            },
                            hops: 0,
                        };
                        if c.call_async(&s, Bytes::new(), META_TIMEOUT).await.is_err() {
                            break Err(Errno(libc::ENOLCK));
                        }
                    }
                    Ok((Reply::Written(_), _)) if !wait => break Err(Errno::EAGAIN),
                    Ok((Reply::Written(_), _)) => {
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_millis(500));
                    }
                    Ok((other, _)) => {
                        break Err(eio("a lock request", format!("unexpected reply {other:?}")))
                    }
                    // Setting the same lock again is harmless: retry
                    // through elections and fail-over.
                    Err(e) if retryable(&r, &e) && started.elapsed() < RETRY_FOR => {
                        tracing::warn!(error = %e, "a lock request failed on the way; retrying");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_millis(500));
                    }
                    Err(e) => break Err(eio("a lock request", e)),
                }
            };
            if wait {
                let mut w = waiting.lock().unwrap_or_else(|p| p.into_inner());
                w.retain(|(_, _, c)| !Arc::ptr_eq(c, &cancel));
            }
            // The callback replies to the kernel: off the async threads.
            let _ = tokio::task::spawn_blocking(move || done(result)).await;
        });
    }
}
