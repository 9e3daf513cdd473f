//! What the filesystem client needs from the storage below it, as two
//! traits: [`Meta`] (the namespace: submit an [`FsOp`], look things up) and
//! [`ChunkIo`] (immutable chunks: put, get, delete). The local backend
//! implements both over one directory (a redb file and a chunk directory);
//! the cluster implements them over Raft and replicated chunks, and the
//! FUSE client does not change.
//!
//! Both traits are blocking (FUSE worker threads call them) and return the
//! errno the caller should see; implementations log the details of storage
//! failures (which become `EIO`) where they happen.

use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::{Ctx, Dentry, Errno, FsOp, FsRead, FsReply, Inode, RedbFs, Slice, MAX_NAME};
use crate::chunk::{ChunkError, ChunkStore};
use crate::placement::ChunkId;

/// The namespace as the client sees it. Every mutation goes through
/// [`Meta::submit`], which returns only once the change is durable (the
/// cluster: committed by a Raft quorum).
pub trait Meta: Send + Sync + 'static {
    /// Applies `op` as `ctx`; durable when this returns `Ok`.
    fn submit(&self, op: FsOp, ctx: &Ctx) -> Result<FsReply, Errno>;
    /// The inode `ino` (ENOENT if gone).
    fn inode(&self, ino: u64) -> Result<Inode, Errno>;
    /// The inode named `name` in directory `parent` (ENOENT, ENOTDIR,
    /// ENAMETOOLONG as a lookup gives them).
    fn lookup(&self, parent: u64, name: &[u8]) -> Result<Inode, Errno>;
    /// Up to `limit` entries of `dir` after `after`, in name order.
    fn list_dir(
        &self,
        dir: u64,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Dentry)>, Errno>;
    /// The slice list of file `ino`.
    fn slices(&self, ino: u64) -> Result<Vec<Slice>, Errno>;
    /// Inodes with no name left that may still be open.
    fn orphans(&self) -> Result<Vec<u64>, Errno>;
    /// The bytes of inline chunk `id` (small chunks committed inside
    /// `AppendSlices` and kept in the namespace), `None` if it is not one.
    fn inline_chunk(&self, id: &ChunkId) -> Result<Option<Bytes>, Errno>;
    /// Makes every change submitted so far durable. Backends whose
    /// `submit` is always durable (the cluster: Raft commit) do nothing.
    fn sync(&self) -> Result<(), Errno> {
        Ok(())
    }
    /// Called when a file or directory is opened: backends that cache
    /// metadata or read from a replica that may lag (the cluster) make the
    /// following reads of `ino` see every change committed before this
    /// call (close-to-open consistency). Local backends do nothing.
    fn refresh(&self, _ino: u64) -> Result<(), Errno> {
        Ok(())
    }
    /// Changes made by other clients, for the mount to drop what the kernel
    /// cached (names, attributes, pages). `None` when nobody else can change
    /// the namespace (the local backend). Called once per mount.
    fn subscribe(&self) -> Option<std::sync::mpsc::Receiver<Change>> {
        None
    }
}

/// Something another client changed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Change {
    /// Attributes or content of `ino`.
    Inode(u64),
    /// The entry `name` of directory `parent` (created, removed, renamed).
    Entry {
        /// Directory.
        parent: u64,
        /// Name in it.
        name: Vec<u8>,
    },
}

/// Immutable chunks of file data.
pub trait ChunkIo: Send + Sync + 'static {
    /// Stores `data` (at most [`crate::chunk::MAX_CHUNK`] bytes) under a new
    /// id; durable (the cluster: on `min_size` replicas) when this returns.
    fn put(&self, data: &[u8]) -> Result<ChunkId, Errno>;
    /// The whole chunk, checksum verified.
    fn get(&self, id: &ChunkId) -> Result<Bytes, Errno>;
    /// Deletes a chunk no file references any more (best effort).
    fn delete(&self, id: &ChunkId) -> Result<(), Errno>;
    /// (total, available) bytes of capacity, for `statfs`.
    fn space(&self) -> (u64, u64);
    /// Where chunk `id` lives, for `store fs stat` (paths or node names).
    fn locate(&self, id: &ChunkId) -> Vec<String>;
}

/// [`Meta`] over a local redb file.
///
/// Durability: commits of file data (`AppendSlices`, `ReplaceSlices`) are
/// fsynced before they return, and each one also makes every earlier
/// namespace change durable. Other namespace ops (create, rename, unlink,
/// chmod…) are committed without an fsync and become durable with the next
/// data commit, [`Meta::sync`] (called by close, fsync and fsyncdir), or
/// the client's once-a-second sync — the same window ext4 gives by default.
/// A crash always leaves a consistent namespace.
#[derive(Debug)]
pub struct LocalMeta {
    fs: RedbFs,
    path: PathBuf,
    pending: std::sync::atomic::AtomicBool,
    /// Serialises commits so `pending` is exact (redb has one writer anyway).
    write: std::sync::Mutex<()>,
}

impl LocalMeta {
    /// Opens (creating) the namespace database at `path`.
    pub fn open(path: &Path) -> Result<Self, super::StoreError> {
        Ok(LocalMeta {
            fs: RedbFs::open(path)?,
            path: path.to_path_buf(),
            pending: std::sync::atomic::AtomicBool::new(false),
            write: std::sync::Mutex::new(()),
        })
    }

    fn eio<E: std::fmt::Display>(&self, what: &str, e: E) -> Errno {
        tracing::error!(db = %self.path.display(), error = %e, "{what} failed");
        Errno::EIO
    }

    fn view(&self) -> Result<super::redb_store::ReadView, Errno> {
        self.fs.read().map_err(|e| self.eio("reading metadata", e))
    }
}

impl Meta for LocalMeta {
    fn submit(&self, op: FsOp, ctx: &Ctx) -> Result<FsReply, Errno> {
        use std::sync::atomic::Ordering;
        let name = op.name();
        let durable = matches!(op, FsOp::AppendSlices { .. } | FsOp::ReplaceSlices { .. });
        let _write = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let result = self.fs.apply_with(op, ctx, durable);
        if result.is_ok() {
            // A durable commit persists everything before it.
            self.pending.store(!durable, Ordering::SeqCst);
        }
        match result {
            Ok(r) => Ok(r),
            Err(super::ApplyError::Errno(e)) => Err(e),
            Err(super::ApplyError::Store(e)) => Err(self.eio(name, e)),
        }
    }

    fn inode(&self, ino: u64) -> Result<Inode, Errno> {
        self.view()?
            .inode(ino)
            .map_err(|e| self.eio("reading an inode", e))?
            .ok_or(Errno::ENOENT)
    }

    fn lookup(&self, parent: u64, name: &[u8]) -> Result<Inode, Errno> {
        if name.len() > MAX_NAME {
            return Err(Errno::ENAMETOOLONG);
        }
        let view = self.view()?;
        let dir = view
            .inode(parent)
            .map_err(|e| self.eio("reading an inode", e))?
            .ok_or(Errno::ENOENT)?;
        if !dir.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        let d = view
            .dentry(parent, name)
            .map_err(|e| self.eio("reading a directory entry", e))?
            .ok_or(Errno::ENOENT)?;
        view.inode(d.ino)
            .map_err(|e| self.eio("reading an inode", e))?
            .ok_or(Errno::ENOENT)
    }

    fn list_dir(
        &self,
        dir: u64,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Dentry)>, Errno> {
        self.view()?
            .list_dir(dir, after, limit)
            .map_err(|e| self.eio("listing a directory", e))
    }

    fn slices(&self, ino: u64) -> Result<Vec<Slice>, Errno> {
        self.view()?
            .slices(ino)
            .map_err(|e| self.eio("reading slices", e))
    }

    fn orphans(&self) -> Result<Vec<u64>, Errno> {
        self.view()?
            .orphans()
            .map_err(|e| self.eio("listing orphans", e))
    }

    fn inline_chunk(&self, id: &ChunkId) -> Result<Option<Bytes>, Errno> {
        Ok(self
            .view()?
            .inline_chunk(id)
            .map_err(|e| self.eio("reading an inline chunk", e))?
            .map(Bytes::from))
    }

    fn sync(&self) -> Result<(), Errno> {
        use std::sync::atomic::Ordering;
        let _write = self.write.lock().unwrap_or_else(|p| p.into_inner());
        if self.pending.load(Ordering::SeqCst) {
            self.fs
                .sync()
                .map_err(|e| self.eio("syncing metadata", e))?;
            self.pending.store(false, Ordering::SeqCst);
        }
        Ok(())
    }
}

/// [`ChunkIo`] over a local chunk directory ([`ChunkStore`]).
#[derive(Debug, Clone)]
pub struct LocalChunks {
    store: ChunkStore,
}

impl LocalChunks {
    /// Opens (creating) the chunk directory `dir`.
    pub fn open(dir: &Path) -> Result<Self, ChunkError> {
        Ok(LocalChunks {
            store: ChunkStore::open(dir)?,
        })
    }
}

fn chunk_errno(e: &ChunkError) -> Errno {
    match e {
        ChunkError::NoSpace { .. } => Errno::ENOSPC,
        ChunkError::TooLarge { .. } => Errno::EFBIG,
        _ => Errno::EIO,
    }
}

impl ChunkIo for LocalChunks {
    fn put(&self, data: &[u8]) -> Result<ChunkId, Errno> {
        let id = ChunkId::random();
        self.store
            .put(&id, data, crc32fast::hash(data))
            .map_err(|e| {
                tracing::error!(chunk = %id, error = %e, "storing a chunk failed");
                chunk_errno(&e)
            })?;
        Ok(id)
    }

    fn get(&self, id: &ChunkId) -> Result<Bytes, Errno> {
        self.store.get(id).map(|(b, _)| b).map_err(|e| {
            tracing::error!(chunk = %id, error = %e, "reading a chunk failed");
            chunk_errno(&e)
        })
    }

    fn delete(&self, id: &ChunkId) -> Result<(), Errno> {
        self.store.delete(id).map(|_| ()).map_err(|e| {
            tracing::warn!(chunk = %id, error = %e, "deleting a chunk failed");
            chunk_errno(&e)
        })
    }

    fn space(&self) -> (u64, u64) {
        crate::chunk::fs_space(self.store.root())
    }

    fn locate(&self, id: &ChunkId) -> Vec<String> {
        vec![format!("local:{}", self.store.path(id).display())]
    }
}
