//! The filesystem client without FUSE types: buffered writes cut into
//! chunks and committed as slices, reads resolved through slices into a
//! chunk cache with read-ahead, and the open-file bookkeeping that decides
//! when an unlinked file's data can go.
//!
//! Contract (close-to-open): data written through a file is buffered here
//! (bounded) and becomes durable and visible to others when it is committed:
//! on `flush` (every `close`), `fsync`, or when the buffer fills a chunk.
//! A commit stores the chunks first (durable), then appends their slices in
//! one metadata op, so a crash leaves either the old or the new slices,
//! never a slice pointing at missing data.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use crate::chunk::MAX_CHUNK;
use crate::fs::slices::{self, Slice};
use crate::fs::{ChunkIo, Ctx, Errno, FileKind, FsOp, FsReply, Inode, Meta, Time, MAX_FILE_SIZE};
use crate::placement::ChunkId;

use super::cache::ChunkCache;

/// Tunables of the client.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Largest chunk written (≤ [`MAX_CHUNK`]).
    pub chunk_size: usize,
    /// Buffered bytes of one file handed to a background commit at once
    /// (at least one chunk): several chunks of a batch are stored in
    /// parallel and committed with one metadata op, which hides the
    /// latency of a networked backend. 0: one chunk.
    pub commit_bytes: usize,
    /// Bytes of chunks kept in memory for reads.
    pub cache_bytes: usize,
    /// Bytes of unwritten data buffered over all open files before writes
    /// start committing early.
    pub dirty_limit: usize,
    /// Threads fetching the next chunk ahead of sequential readers.
    pub prefetch_threads: usize,
    /// Commits of at most this many bytes keep their data in the metadata
    /// (inline chunks) instead of the chunk store (≤ [`crate::fs::MAX_INLINE`]).
    pub inline_max: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            chunk_size: MAX_CHUNK,
            commit_bytes: 0,
            cache_bytes: 256 << 20,
            dirty_limit: 256 << 20,
            prefetch_threads: 2,
            inline_max: 32 * 1024,
        }
    }
}

/// First bytes of the ids of inline chunks (the rest is random). A chunk
/// store id may start the same way by chance: reads then look in the
/// metadata first and fall back to the chunk store.
const INLINE_PREFIX: [u8; 4] = *b"inl\0";

fn inline_id() -> ChunkId {
    let mut id: [u8; 16] = rand::random();
    id[..4].copy_from_slice(&INLINE_PREFIX);
    ChunkId(id)
}

/// Whether `id` may be an inline chunk.
pub fn maybe_inline(id: &ChunkId) -> bool {
    id.0[..4] == INLINE_PREFIX
}

/// Most write extents buffered for one file before a commit (bounds the
/// slice count of a commit under small random writes).
const MAX_EXTENTS: usize = 1024;

/// Buffered writes: (file offset, bytes), in write order.
type Extents = Vec<(u64, Vec<u8>)>;

/// Per-inode state while open on this node.
#[derive(Debug, Default)]
struct FileState {
    opens: usize,
    /// Unlinked while open: purge on last close.
    orphan: bool,
    /// Buffered writes in write order (later ones win).
    extents: Vec<(u64, Vec<u8>)>,
    dirty: usize,
    /// End of the furthest buffered write (0 when none).
    end: u64,
    /// A failed background commit, reported by the next flush/fsync.
    error: Option<Errno>,
    /// Who wrote last (the commit is made as them).
    writer: Option<Ctx>,
    /// A full chunk being committed in the background (older than
    /// `extents`); readers see it until its slices are committed.
    inflight: Option<Arc<Extents>>,
    /// End of the in-flight writes (0 when none).
    inflight_end: u64,
}

/// A file's state and the signal that its background commit finished.
#[derive(Debug, Default)]
struct FileSlot {
    state: Mutex<FileState>,
    done: std::sync::Condvar,
}

/// Waits until `f` has no background commit running (commits stay in
/// write order) and returns the guard.
fn wait_idle<'a>(
    slot: &'a FileSlot,
    mut f: MutexGuard<'a, FileState>,
) -> MutexGuard<'a, FileState> {
    while f.inflight.is_some() {
        f = slot.done.wait(f).unwrap_or_else(|p| p.into_inner());
    }
    f
}

/// The client: metadata + chunks + caches.
pub struct Client {
    meta: Arc<dyn Meta>,
    chunks: Arc<dyn ChunkIo>,
    cache: Arc<ChunkCache>,
    files: Mutex<HashMap<u64, Arc<FileSlot>>>,
    /// This client, for background commit threads.
    me: std::sync::Weak<Client>,
    dirty_total: AtomicUsize,
    opts: ClientOptions,
    prefetch: Option<SyncSender<ChunkId>>,
    /// Chunks to delete once the metadata that dropped them is durable.
    freeq: Arc<Mutex<Vec<ChunkId>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    syncer: Option<std::thread::JoinHandle<()>>,
}

/// Deleted chunks queued before the queue is drained inline.
const MAX_FREE_QUEUE: usize = 65_536;

/// Makes metadata durable, then deletes the chunks it no longer uses (in
/// that order: a crash must never leave metadata pointing at a deleted
/// chunk).
fn sync_and_free(
    meta: &dyn Meta,
    chunks: &dyn ChunkIo,
    freeq: &Mutex<Vec<ChunkId>>,
) -> Result<(), Errno> {
    let ids = std::mem::take(&mut *lock(freeq));
    if let Err(e) = meta.sync() {
        lock(freeq).extend(ids);
        return Err(e);
    }
    for id in ids {
        let _ = chunks.delete(&id);
    }
    Ok(())
}

impl Drop for Client {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.syncer.take() {
            h.thread().unpark();
            let _ = h.join();
        }
        let _ = sync_and_free(&*self.meta, &*self.chunks, &self.freeq);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Client {
    /// A client over `meta` and `chunks`.
    pub fn new(
        meta: Arc<dyn Meta>,
        chunks: Arc<dyn ChunkIo>,
        mut opts: ClientOptions,
    ) -> Arc<Self> {
        opts.chunk_size = opts.chunk_size.clamp(4096, MAX_CHUNK);
        opts.commit_bytes = match opts.commit_bytes {
            0 => opts.chunk_size,
            n => n.clamp(opts.chunk_size, 16 * MAX_CHUNK),
        };
        opts.inline_max = opts.inline_max.min(crate::fs::MAX_INLINE);
        let cache = Arc::new(ChunkCache::new(opts.cache_bytes));
        let prefetch = (opts.prefetch_threads > 0).then(|| {
            let (tx, rx) = sync_channel::<ChunkId>(32);
            let rx = Arc::new(Mutex::new(rx));
            for i in 0..opts.prefetch_threads {
                let (rx, chunks, cache) = (rx.clone(), chunks.clone(), cache.clone());
                let spawned = std::thread::Builder::new()
                    .name(format!("store-prefetch-{i}"))
                    .spawn(move || prefetcher(&rx, &*chunks, &cache));
                if let Err(e) = spawned {
                    tracing::warn!(error = %e, "starting a read-ahead thread failed; reads work without it");
                }
            }
            tx
        });
        let freeq = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let syncer = {
            let (meta, chunks, freeq, stop) =
                (meta.clone(), chunks.clone(), freeq.clone(), stop.clone());
            let spawned = std::thread::Builder::new()
                .name("store-sync".into())
                .spawn(move || loop {
                    std::thread::park_timeout(std::time::Duration::from_millis(500));
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    if let Err(e) = sync_and_free(&*meta, &*chunks, &freeq) {
                        tracing::warn!(error = %e, "background metadata sync failed; retrying");
                    }
                });
            match spawned {
                Ok(h) => Some(h),
                Err(e) => {
                    tracing::warn!(error = %e, "starting the sync thread failed; close and fsync still sync");
                    None
                }
            }
        };
        Arc::new_cyclic(|me| Client {
            me: me.clone(),
            meta,
            chunks,
            cache,
            files: Mutex::new(HashMap::new()),
            dirty_total: AtomicUsize::new(0),
            opts,
            prefetch,
            freeq,
            stop,
            syncer,
        })
    }

    /// The metadata backend.
    pub fn meta(&self) -> &dyn Meta {
        &*self.meta
    }

    /// The chunk backend.
    pub fn chunks(&self) -> &dyn ChunkIo {
        &*self.chunks
    }

    fn state(&self, ino: u64) -> Arc<FileSlot> {
        lock(&self.files).entry(ino).or_default().clone()
    }

    fn existing(&self, ino: u64) -> Option<Arc<FileSlot>> {
        lock(&self.files).get(&ino).cloned()
    }

    /// Submits a namespace op and takes care of its side effects (orphans
    /// to purge, chunks to delete).
    pub fn submit(&self, op: FsOp, ctx: &Ctx) -> Result<FsReply, Errno> {
        let reply = self.meta.submit(op, ctx)?;
        self.after(&reply);
        Ok(reply)
    }

    fn after(&self, reply: &FsReply) {
        for &ino in &reply.orphaned {
            let open = self.existing(ino).map(|s| {
                let mut f = lock(&s.state);
                f.orphan = true;
                f.opens > 0
            });
            if open != Some(true) {
                self.purge(ino);
            }
        }
        self.free(&reply.freed);
    }

    /// Queues chunks for deletion after the next metadata sync.
    fn free(&self, ids: &[ChunkId]) {
        if ids.is_empty() {
            return;
        }
        for id in ids {
            self.cache.remove(id);
        }
        let full = {
            let mut q = lock(&self.freeq);
            q.extend_from_slice(ids);
            q.len() > MAX_FREE_QUEUE
        };
        if full {
            let _ = self.sync();
        }
    }

    /// Makes all metadata durable and deletes chunks freed so far.
    pub fn sync(&self) -> Result<(), Errno> {
        sync_and_free(&*self.meta, &*self.chunks, &self.freeq)
    }

    /// Deletes an unlinked inode and its chunks.
    pub fn purge(&self, ino: u64) {
        lock(&self.files).remove(&ino);
        match self
            .meta
            .submit(FsOp::Purge { ino }, &Ctx::root(Time::now()))
        {
            Ok(r) => self.free(&r.freed),
            Err(e) => {
                tracing::warn!(ino, error = %e, "purging an unlinked file failed; it is retried at the next mount")
            }
        }
    }

    /// Purges every orphan (at start-up, when no handle can be open: only
    /// valid while this client is the only one — the local backend).
    pub fn purge_orphans(&self) -> Result<usize, Errno> {
        let orphans = self.meta.orphans()?;
        for &ino in &orphans {
            self.purge(ino);
        }
        Ok(orphans.len())
    }

    /// The inode with buffered writes accounted for (size).
    pub fn getattr(&self, ino: u64) -> Result<Inode, Errno> {
        let Some(s) = self.existing(ino) else {
            return self.meta.inode(ino);
        };
        // Under the lock, so a concurrent commit is seen whole or not at all.
        let f = lock(&s.state);
        let mut i = self.meta.inode(ino)?;
        i.size = i.size.max(f.end).max(f.inflight_end);
        Ok(i)
    }

    /// `i` with the size grown by writes buffered here.
    pub fn with_buffered(&self, mut i: Inode) -> Inode {
        if let Some(s) = self.existing(i.ino) {
            let f = lock(&s.state);
            i.size = i.size.max(f.end).max(f.inflight_end);
        }
        i
    }

    /// Registers an open handle of `ino`.
    pub fn open(&self, ino: u64) {
        lock(&self.state(ino).state).opens += 1;
    }

    /// Buffers a write; commits when a chunk is full or memory is tight.
    pub fn write(&self, ino: u64, off: u64, data: &[u8], ctx: &Ctx) -> Result<usize, Errno> {
        let end = off
            .checked_add(data.len() as u64)
            .filter(|e| *e <= MAX_FILE_SIZE)
            .ok_or(Errno::EFBIG)?;
        let s = self.state(ino);
        let mut f = lock(&s.state);
        if let Some(e) = f.error {
            return Err(e);
        }
        match f.extents.last_mut() {
            Some((o, buf)) if *o + buf.len() as u64 == off => buf.extend_from_slice(data),
            _ => f.extents.push((off, data.to_vec())),
        }
        f.dirty += data.len();
        f.end = f.end.max(end);
        f.writer = Some(ctx.clone());
        let total = self.dirty_total.fetch_add(data.len(), Ordering::Relaxed) + data.len();
        if f.extents.len() >= MAX_EXTENTS || total > self.opts.dirty_limit {
            let mut f = wait_idle(&s, f);
            self.commit(ino, &mut f)?;
        } else if f.dirty >= self.opts.commit_bytes {
            // A full chunk: store it in the background while the writer
            // fills the next one (at most one in flight per file).
            let f = wait_idle(&s, f);
            self.commit_in_background(ino, &s, f);
        }
        Ok(data.len())
    }

    /// Hands the buffered writes to a thread that stores and commits them;
    /// readers keep seeing them (as `inflight`) until they are slices.
    fn commit_in_background(
        &self,
        ino: u64,
        slot: &Arc<FileSlot>,
        mut f: MutexGuard<'_, FileState>,
    ) {
        let batch = Arc::new(std::mem::take(&mut f.extents));
        let end = std::mem::take(&mut f.end);
        self.dirty_total
            .fetch_sub(std::mem::take(&mut f.dirty), Ordering::Relaxed);
        let ctx = f.writer.clone().unwrap_or_else(|| Ctx::root(Time::now()));
        f.inflight = Some(batch.clone());
        f.inflight_end = end;
        drop(f);
        let (me, slot2, batch2, ctx2) = (self.me.clone(), slot.clone(), batch.clone(), ctx.clone());
        let spawned = std::thread::Builder::new()
            .name("store-commit".into())
            .spawn(move || {
                let r = match me.upgrade() {
                    Some(c) => c.store_extents(ino, &batch2, end, ctx2),
                    None => Err(Errno::EIO),
                };
                finish_inflight(&slot2, r);
            });
        if spawned.is_err() {
            let r = self.store_extents(ino, &batch, end, ctx);
            finish_inflight(slot, r);
        }
    }

    /// Stores the buffered writes of `f` as chunks, then commits them as
    /// slices with one metadata op.
    fn commit(&self, ino: u64, f: &mut FileState) -> Result<(), Errno> {
        if f.extents.is_empty() {
            return Ok(());
        }
        let extents = std::mem::take(&mut f.extents);
        let end = std::mem::take(&mut f.end);
        self.dirty_total
            .fetch_sub(std::mem::take(&mut f.dirty), Ordering::Relaxed);
        let ctx = f.writer.clone().unwrap_or_else(|| Ctx::root(Time::now()));
        let result = self.store_extents(ino, &extents, end, ctx);
        if let Err(e) = result {
            f.error = Some(e);
        }
        result
    }

    fn store_extents(
        &self,
        ino: u64,
        extents: &[(u64, Vec<u8>)],
        end: u64,
        mut ctx: Ctx,
    ) -> Result<(), Errno> {
        let cs = self.opts.chunk_size;
        // Pack pieces (≤ chunk size each) into chunk buffers; small writes
        // share a chunk, each keeping its own slice.
        let mut bufs: Vec<Vec<u8>> = Vec::new();
        let mut placed: Vec<(u64, u64, usize, u64)> = Vec::new(); // file off, len, buf, buf off
        for (off, data) in extents {
            for (i, piece) in data.chunks(cs).enumerate() {
                let fits = bufs.last().is_some_and(|b| b.len() + piece.len() <= cs);
                if !fits {
                    bufs.push(Vec::with_capacity(piece.len().max(cs.min(data.len()))));
                }
                let bi = bufs.len() - 1;
                let b = &mut bufs[bi];
                placed.push((
                    *off + (i * cs) as u64,
                    piece.len() as u64,
                    bi,
                    b.len() as u64,
                ));
                b.extend_from_slice(piece);
            }
        }
        let total: usize = bufs.iter().map(Vec::len).sum();
        let inline = total <= self.opts.inline_max;
        let ids = if inline {
            bufs.iter().map(|_| inline_id()).collect()
        } else {
            self.put_all(&bufs)?
        };
        let new_slices: Vec<Slice> = placed
            .iter()
            .map(|&(off, len, bi, boff)| Slice {
                off,
                len,
                chunk: ids[bi],
                chunk_off: boff,
            })
            .collect();
        ctx.now = Time::now();
        let op = FsOp::AppendSlices {
            ino,
            slices: new_slices,
            size: end,
            inline: if inline {
                ids.iter().copied().zip(bufs.iter().cloned()).collect()
            } else {
                Vec::new()
            },
        };
        match self.meta.submit(op, &ctx) {
            Ok(reply) => {
                for (id, b) in ids.iter().zip(bufs) {
                    self.cache.insert(*id, Bytes::from(b));
                }
                self.after(&reply);
                Ok(())
            }
            Err(e) => {
                // The chunks are unreferenced: drop them.
                if !inline {
                    self.free(&ids);
                }
                Err(e)
            }
        }
    }

    /// Puts chunks, several in parallel.
    fn put_all(&self, bufs: &[Vec<u8>]) -> Result<Vec<ChunkId>, Errno> {
        if bufs.len() == 1 {
            return Ok(vec![self.chunks.put(&bufs[0])?]);
        }
        let results: Vec<Result<ChunkId, Errno>> = std::thread::scope(|scope| {
            let mut out = Vec::with_capacity(bufs.len());
            for group in bufs.chunks(4) {
                let handles: Vec<_> = group
                    .iter()
                    .map(|b| scope.spawn(move || self.chunks.put(b)))
                    .collect();
                for h in handles {
                    out.push(h.join().unwrap_or(Err(Errno::EIO)));
                }
            }
            out
        });
        let mut ids = Vec::with_capacity(results.len());
        let mut first_err = None;
        for r in results {
            match r {
                Ok(id) => ids.push(id),
                Err(e) => first_err = first_err.or(Some(e)),
            }
        }
        if let Some(e) = first_err {
            self.free(&ids);
            return Err(e);
        }
        Ok(ids)
    }

    /// Commits buffered writes of `ino`; returns (and clears) any earlier
    /// commit failure. Durable when `Ok`.
    pub fn flush(&self, ino: u64) -> Result<(), Errno> {
        let Some(s) = self.existing(ino) else {
            return self.meta.sync();
        };
        let mut f = wait_idle(&s, lock(&s.state));
        let r = self.commit(ino, &mut f);
        if let Some(e) = f.error.take() {
            return Err(e);
        }
        r?;
        drop(f);
        self.meta.sync()
    }

    /// Drops a handle: commits, and on the last close of an unlinked file
    /// deletes it; compacts files with many slices.
    pub fn release(&self, ino: u64) -> Result<(), Errno> {
        let r = self.flush(ino);
        let Some(s) = self.existing(ino) else {
            return r;
        };
        let (last, orphan) = {
            let mut f = lock(&s.state);
            f.opens = f.opens.saturating_sub(1);
            (
                f.opens == 0 && f.extents.is_empty() && f.inflight.is_none(),
                f.orphan,
            )
        };
        if last {
            let mut files = lock(&self.files);
            if files.get(&ino).is_some_and(|s| lock(&s.state).opens == 0) {
                files.remove(&ino);
            }
        }
        if last && orphan {
            self.purge(ino);
        } else if last {
            if let Err(e) = self.compact(ino) {
                tracing::debug!(ino, error = %e, "compaction skipped");
            }
        }
        r
    }

    /// Commits every buffered write (at unmount).
    pub fn flush_all(&self) {
        let all: Vec<(u64, Arc<FileSlot>)> = lock(&self.files)
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        for (ino, s) in all {
            let mut f = wait_idle(&s, lock(&s.state));
            if let Err(e) = self.commit(ino, &mut f) {
                tracing::error!(ino, error = %e, "committing buffered writes at unmount failed");
            }
        }
        if let Err(e) = self.sync() {
            tracing::error!(error = %e, "syncing metadata at unmount failed");
        }
    }

    /// Truncates or extends after committing buffered writes (so they are
    /// ordered before the size change).
    pub fn setattr(&self, ino: u64, attr: crate::fs::SetAttr, ctx: &Ctx) -> Result<Inode, Errno> {
        if attr.size.is_some() {
            self.flush(ino)?;
        }
        let r = self.submit(FsOp::SetAttr { ino, attr }, ctx)?;
        r.inode.ok_or(Errno::EIO)
    }

    fn chunk(&self, id: &ChunkId) -> Result<Bytes, Errno> {
        if let Some(b) = self.cache.get(id) {
            return Ok(b);
        }
        if maybe_inline(id) {
            if let Some(b) = self.meta.inline_chunk(id)? {
                self.cache.insert(*id, b.clone());
                return Ok(b);
            }
        }
        let b = self.chunks.get(id)?;
        self.cache.insert(*id, b.clone());
        Ok(b)
    }

    /// Reads up to `size` bytes at `off`: committed data through the slices,
    /// with this node's buffered writes on top.
    pub fn read(&self, ino: u64, off: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let want_end = off.saturating_add(u64::from(size));
        // Metadata and buffered writes are read under the file's lock: a
        // commit (which holds it) moves data from the buffer to the slices
        // atomically for readers, so a read never misses data that a
        // finished write() put in either place.
        let state = self.existing(ino);
        let guard = state.as_ref().map(|s| lock(&s.state));
        let inode = self.meta.inode(ino)?;
        match inode.kind {
            FileKind::Regular => {}
            FileKind::Directory => return Err(Errno::EISDIR),
            _ => return Err(Errno::EINVAL),
        }
        let mut overlay: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut file_size = inode.size;
        if let Some(f) = &guard {
            file_size = file_size.max(f.end).max(f.inflight_end);
            // In-flight writes first: the buffer is newer.
            let inflight = f.inflight.iter().flat_map(|b| b.iter());
            for (o, d) in inflight.chain(f.extents.iter()) {
                let (a, b) = ((*o).max(off), (*o + d.len() as u64).min(want_end));
                if a < b {
                    overlay.push((a, d[(a - o) as usize..(b - o) as usize].to_vec()));
                }
            }
        }
        if off >= file_size {
            return Ok(Vec::new());
        }
        let len = (u64::from(size)).min(file_size - off);
        let committed_end = (off + len).min(inode.size);
        let slices = if committed_end > off {
            self.meta.slices(ino)?
        } else {
            Vec::new()
        };
        drop(guard);
        // Chunks are immutable: fetching them needs no lock.
        let mut buf = vec![0u8; len as usize];
        if committed_end > off {
            for p in slices::resolve(&slices, off, committed_end - off) {
                let Some((id, co)) = p.src else { continue };
                let data = self.chunk(&id)?;
                let src = usize::try_from(co)
                    .ok()
                    .and_then(|co| data.get(co..co + p.len as usize))
                    .ok_or_else(|| {
                        tracing::error!(ino, chunk = %id, "slice points past the end of its chunk");
                        Errno::EIO
                    })?;
                let dst = (p.off - off) as usize;
                buf[dst..dst + p.len as usize].copy_from_slice(src);
            }
            self.read_ahead(&slices, off + len, inode.size);
        }
        for (o, d) in overlay {
            let dst = (o - off) as usize;
            buf[dst..dst + d.len()].copy_from_slice(&d);
        }
        Ok(buf)
    }

    /// Queues the chunk holding the bytes right after a read.
    fn read_ahead(&self, slices: &[Slice], at: u64, size: u64) {
        let Some(tx) = &self.prefetch else { return };
        if at >= size {
            return;
        }
        let ahead = (self.opts.chunk_size as u64).min(size - at);
        for p in slices::resolve(slices, at, ahead) {
            if let Some((id, _)) = p.src {
                if !maybe_inline(&id) && self.cache.get(&id).is_none() {
                    if let Err(TrySendError::Disconnected(_)) = tx.try_send(id) {
                        return;
                    }
                }
                return;
            }
        }
    }

    /// Rewrites a file with many slices into few chunks (same content).
    fn compact(&self, ino: u64) -> Result<(), Errno> {
        let old = self.meta.slices(ino)?;
        if !slices::needs_compaction(&old) {
            return Ok(());
        }
        let inode = self.meta.inode(ino)?;
        // At most 16 windows (64 MiB) per close: bounded work on big files.
        let plan = slices::plan_compaction(&old, inode.size, self.opts.chunk_size as u64, 16);
        if plan.is_empty() {
            return Ok(());
        }
        let mut new = Vec::with_capacity(plan.len());
        let mut written = Vec::new();
        for (off, len) in plan {
            let mut data = vec![0u8; len as usize];
            for p in slices::resolve(&old, off, len) {
                let Some((id, co)) = p.src else { continue };
                let c = self.chunk(&id)?;
                let src = c
                    .get(co as usize..(co + p.len) as usize)
                    .ok_or(Errno::EIO)?;
                let dst = (p.off - off) as usize;
                data[dst..dst + p.len as usize].copy_from_slice(src);
            }
            let id = self.chunks.put(&data)?;
            written.push(id);
            new.push(Slice {
                off,
                len,
                chunk: id,
                chunk_off: 0,
            });
        }
        let mut all = old.clone();
        all.extend_from_slice(&new);
        let op = FsOp::ReplaceSlices {
            ino,
            expect: old,
            new: slices::prune_shadowed(&all),
        };
        match self.meta.submit(op, &Ctx::root(Time::now())) {
            Ok(r) => {
                self.free(&r.freed);
                Ok(())
            }
            Err(e) => {
                self.free(&written);
                Err(e)
            }
        }
    }
}

/// Ends a background commit: clears `inflight`, records a failure for the
/// next flush, wakes waiters.
fn finish_inflight(slot: &FileSlot, r: Result<(), Errno>) {
    let mut f = lock(&slot.state);
    f.inflight = None;
    f.inflight_end = 0;
    if let Err(e) = r {
        f.error = Some(e);
    }
    drop(f);
    slot.done.notify_all();
}

fn prefetcher(rx: &Mutex<Receiver<ChunkId>>, chunks: &dyn ChunkIo, cache: &ChunkCache) {
    loop {
        let next = lock(rx).recv();
        let Ok(id) = next else { return };
        if cache.get(&id).is_some() {
            continue;
        }
        if let Ok(b) = chunks.get(&id) {
            cache.insert(id, b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::{LocalChunks, LocalMeta, ROOT_INO};

    fn client(dir: &std::path::Path, chunk_size: usize) -> Arc<Client> {
        let meta = Arc::new(LocalMeta::open(&dir.join("meta.redb")).unwrap());
        let chunks = Arc::new(LocalChunks::open(&dir.join("chunks")).unwrap());
        Client::new(
            meta,
            chunks,
            ClientOptions {
                chunk_size,
                inline_max: 0,
                ..ClientOptions::default()
            },
        )
    }

    fn mkfile(c: &Client, name: &str) -> u64 {
        let r = c
            .submit(
                FsOp::Mknod {
                    parent: ROOT_INO,
                    name: name.into(),
                    mode: libc::S_IFREG | 0o644,
                    rdev: 0,
                },
                &Ctx::root(Time::now()),
            )
            .unwrap();
        r.inode.unwrap().ino
    }

    #[test]
    fn writes_read_back_before_and_after_commit_and_across_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let c = client(dir.path(), 4096);
        let ino = mkfile(&c, "f");
        let ctx = Ctx::root(Time::now());
        c.open(ino);
        let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        // Unaligned pieces, one overwrite, one hole.
        c.write(ino, 0, &data[..3000], &ctx).unwrap();
        c.write(ino, 3000, &data[3000..15_000], &ctx).unwrap();
        c.write(ino, 100, b"XYZ", &ctx).unwrap();
        c.write(ino, 30_000, b"tail", &ctx).unwrap();
        let mut want = vec![0u8; 30_004];
        want[..15_000].copy_from_slice(&data[..15_000]);
        want[100..103].copy_from_slice(b"XYZ");
        want[30_000..].copy_from_slice(b"tail");
        assert_eq!(c.getattr(ino).unwrap().size, 30_004);
        assert_eq!(c.read(ino, 0, 40_000).unwrap(), want, "before flush");
        c.flush(ino).unwrap();
        assert_eq!(c.read(ino, 0, 40_000).unwrap(), want, "after flush");
        assert_eq!(c.read(ino, 29_998, 10).unwrap(), &want[29_998..]);
        assert!(c.meta().slices(ino).unwrap().iter().all(|s| s.len <= 4096));
        c.release(ino).unwrap();
        // A new client (remount) sees the same bytes.
        drop(c);
        let c = client(dir.path(), 4096);
        assert_eq!(c.read(ino, 0, 40_000).unwrap(), want, "after reopen");
    }

    #[test]
    fn unlinked_open_file_stays_readable_until_last_close() {
        let dir = tempfile::tempdir().unwrap();
        let c = client(dir.path(), 4096);
        let ino = mkfile(&c, "f");
        let ctx = Ctx::root(Time::now());
        c.open(ino);
        c.write(ino, 0, &[7u8; 10_000], &ctx).unwrap();
        c.flush(ino).unwrap();
        let chunk_dir = dir.path().join("chunks");
        let count = || {
            walk(&chunk_dir)
                .into_iter()
                .filter(|p| {
                    !p.strip_prefix(&chunk_dir)
                        .is_ok_and(|r| r.starts_with("tmp"))
                })
                .count()
        };
        assert_eq!(count(), 3);
        c.submit(
            FsOp::Unlink {
                parent: ROOT_INO,
                name: b"f".to_vec(),
            },
            &ctx,
        )
        .unwrap();
        assert_eq!(c.read(ino, 0, 10).unwrap(), vec![7u8; 10]);
        c.release(ino).unwrap();
        assert_eq!(c.meta().inode(ino), Err(Errno::ENOENT));
        c.sync().unwrap();
        assert_eq!(
            count(),
            0,
            "chunks deleted with the file once metadata is durable"
        );
    }

    #[test]
    fn small_commits_are_inline_and_need_no_chunk_files() {
        let dir = tempfile::tempdir().unwrap();
        let inline_client = |dir: &std::path::Path| {
            let meta = Arc::new(LocalMeta::open(&dir.join("meta.redb")).unwrap());
            let chunks = Arc::new(LocalChunks::open(&dir.join("chunks")).unwrap());
            Client::new(meta, chunks, ClientOptions::default())
        };
        let c = inline_client(dir.path());
        let ino = mkfile(&c, "small");
        let ctx = Ctx::root(Time::now());
        c.open(ino);
        c.write(ino, 0, b"tiny file", &ctx).unwrap();
        c.release(ino).unwrap();
        let chunk_files = walk(&dir.path().join("chunks"))
            .into_iter()
            .filter(|p| {
                !p.strip_prefix(dir.path().join("chunks"))
                    .is_ok_and(|r| r.starts_with("tmp"))
            })
            .count();
        assert_eq!(chunk_files, 0);
        let s = c.meta().slices(ino).unwrap();
        assert!(maybe_inline(&s[0].chunk));
        drop(c);
        // Read back after a restart (nothing cached).
        let c = inline_client(dir.path());
        assert_eq!(c.read(ino, 0, 100).unwrap(), b"tiny file");
    }

    #[test]
    fn many_small_writes_are_packed_and_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let c = client(dir.path(), 64 * 1024);
        let ino = mkfile(&c, "f");
        let ctx = Ctx::root(Time::now());
        let mut model = vec![0u8; 100_000];
        for round in 0..60u32 {
            c.open(ino);
            let off = (round * 1601 % 90_000) as usize;
            let bytes = vec![(round + 1) as u8; 777];
            c.write(ino, off as u64, &bytes, &ctx).unwrap();
            model[off..off + 777].copy_from_slice(&bytes);
            c.release(ino).unwrap();
        }
        let size = c.getattr(ino).unwrap().size as usize;
        assert_eq!(c.read(ino, 0, 200_000).unwrap(), &model[..size]);
        c.compact(ino).unwrap();
        let n = c.meta().slices(ino).unwrap().len();
        assert!(
            n <= slices::COMPACT_THRESHOLD,
            "{n} slices after compaction"
        );
    }

    fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    out.extend(walk(&p));
                } else {
                    out.push(p);
                }
            }
        }
        out
    }
}
