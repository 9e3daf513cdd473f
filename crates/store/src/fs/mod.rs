//! The filesystem namespace as a pure, deterministic state machine.
//!
//! Everything `/data` is — inodes, directory entries, hard links, symlinks,
//! xattrs and per-file slice lists — changes only through [`apply`]: one
//! [`FsOp`] in, one [`FsReply`] or an errno out, against a [`FsStore`]. The
//! same function runs in the local backend (one redb file) and, later,
//! inside the Raft state machine on every metadata node, so it must be
//! deterministic: no clock (time comes in [`Ctx::now`]), no randomness (inode
//! numbers come from a counter in the store), no I/O besides the store.
//!
//! Errors are the kernel's errnos, decided before anything is written, so an
//! op either happens completely or not at all (the redb store additionally
//! aborts the transaction on error).
//!
//! File content is not here: a file is a list of [`Slice`]s pointing into
//! immutable chunks (see [`slices`]); writing a file stores new chunks first
//! and then commits them with one [`FsOp::AppendSlices`].

mod apply;
pub mod backend;
pub mod cluster_backend;
pub mod locks;
pub mod mem;
pub mod redb_store;
pub mod slices;
mod types;

#[cfg(test)]
mod tests;

pub use apply::{
    apply, check_access, check_xattr, init_root, ApplyError, MAX_FILE_SIZE, MAX_INLINE, MAX_NAME,
    MAX_XATTR_NAME, MAX_XATTR_VALUE,
};
pub use backend::{Change, ChunkIo, LocalChunks, LocalMeta, Meta};
pub use mem::MemStore;
pub use redb_store::{RedbFs, StoreError};
pub use slices::{resolve, Piece, Slice};
pub use types::*;

use crate::placement::ChunkId;

/// Inode number of the root directory (the same as FUSE's root).
pub const ROOT_INO: u64 = 1;

/// Read access to a namespace: what lookups, `readdir` and reads need.
pub trait FsRead {
    /// The inode `ino`, if it exists.
    fn inode(&self, ino: u64) -> Result<Option<Inode>, StoreError>;
    /// The entry `name` of directory `parent`, if any.
    fn dentry(&self, parent: u64, name: &[u8]) -> Result<Option<Dentry>, StoreError>;
    /// Up to `limit` entries of `parent` in name order, strictly after the
    /// name `after` (from the start when `None`).
    fn list_dir(
        &self,
        parent: u64,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Dentry)>, StoreError>;
    /// The slice list of file `ino`, oldest first (empty when none).
    fn slices(&self, ino: u64) -> Result<Vec<Slice>, StoreError>;
    /// Inodes whose last name is gone but which may still be open somewhere.
    fn orphans(&self) -> Result<Vec<u64>, StoreError>;
    /// The bytes of an inline chunk (one kept in the metadata), if `id` is one.
    fn inline_chunk(&self, id: &ChunkId) -> Result<Option<Vec<u8>>, StoreError>;
}

/// Read and write access: what [`apply`] needs. Implementations are
/// transactional at the level of one `apply` call (the caller commits or
/// aborts around it).
pub trait FsStore: FsRead {
    /// Writes (creates or replaces) an inode.
    fn put_inode(&mut self, inode: &Inode) -> Result<(), StoreError>;
    /// Removes an inode and its slices.
    fn delete_inode(&mut self, ino: u64) -> Result<(), StoreError>;
    /// Writes (creates or replaces) a directory entry.
    fn put_dentry(&mut self, parent: u64, name: &[u8], entry: Dentry) -> Result<(), StoreError>;
    /// Removes a directory entry (no error when absent).
    fn delete_dentry(&mut self, parent: u64, name: &[u8]) -> Result<(), StoreError>;
    /// Replaces the slice list of `ino`.
    fn put_slices(&mut self, ino: u64, slices: &[Slice]) -> Result<(), StoreError>;
    /// Marks or unmarks `ino` as an orphan (nlink 0, maybe still open).
    fn set_orphan(&mut self, ino: u64, orphan: bool) -> Result<(), StoreError>;
    /// Allocates the next inode number (never reused).
    fn next_ino(&mut self) -> Result<u64, StoreError>;
    /// Stores an inline chunk.
    fn put_inline(&mut self, id: &ChunkId, data: &[u8]) -> Result<(), StoreError>;
    /// Removes an inline chunk (no error when absent).
    fn delete_inline(&mut self, id: &ChunkId) -> Result<(), StoreError>;
}
