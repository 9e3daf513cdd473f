//! The namespace in one redb file: each [`apply`](super::apply) is one
//! write transaction, committed durably (fsync) before the reply, aborted
//! on any error.
//!
//! Tables: `inodes` (ino → JSON inode), `dentries` (parent as 8 big-endian
//! bytes ++ name bytes → ino + kind, so one directory is one key range in
//! name order), `slices` (ino → 40-byte records), `orphans` (ino → ()),
//! `meta` (counters), `inline_chunks` (chunk id → bytes of small chunks
//! kept in the metadata).

use std::ops::Bound;
use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::apply::{self, ApplyError};
use super::slices::{self, Slice};
use super::{Ctx, Dentry, FileKind, FsOp, FsRead, FsReply, FsStore, Inode, Time};
use crate::placement::ChunkId;

const INODES: TableDefinition<u64, &[u8]> = TableDefinition::new("inodes");
const DENTRIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("dentries");
const SLICES: TableDefinition<u64, &[u8]> = TableDefinition::new("slices");
const ORPHANS: TableDefinition<u64, ()> = TableDefinition::new("orphans");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const INLINE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("inline_chunks");

/// A failure of the metadata store itself (not of the operation).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database reported an error.
    #[error("metadata database: {0}")]
    Db(String),
    /// A record does not decode: the file is damaged.
    #[error("metadata database is corrupt: {0}; restore it from a replica or backup")]
    Corrupt(String),
}

fn db<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Db(e.to_string())
}

/// The namespace stored in a redb database file.
pub struct RedbFs {
    db: Database,
}

impl std::fmt::Debug for RedbFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbFs").finish_non_exhaustive()
    }
}

impl RedbFs {
    /// Opens (creating if needed) the database at `path` and makes sure the
    /// root directory exists.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let database = Database::create(path)
            .map_err(|e| StoreError::Db(format!("opening {}: {e}", path.display())))?;
        let this = RedbFs { db: database };
        let txn = this.db.begin_write().map_err(db)?;
        {
            let mut view = WriteView::new(&txn)?;
            apply::init_root(&mut view, Time::now())?;
        }
        txn.commit().map_err(db)?;
        Ok(this)
    }

    /// Applies one op in one durable transaction.
    pub fn apply(&self, op: FsOp, ctx: &Ctx) -> Result<FsReply, ApplyError> {
        self.apply_with(op, ctx, true)
    }

    /// Applies one op in one transaction; with `durable == false` the
    /// commit is not fsynced and becomes durable with the next durable
    /// commit or [`RedbFs::sync`] (a crash before that rolls back to the
    /// last durable state, which is always consistent).
    pub fn apply_with(&self, op: FsOp, ctx: &Ctx, durable: bool) -> Result<FsReply, ApplyError> {
        let mut txn = self.db.begin_write().map_err(db)?;
        if !durable {
            txn.set_durability(redb::Durability::None).map_err(db)?;
        }
        let result = {
            let mut view = WriteView::new(&txn)?;
            apply::apply(&mut view, op, ctx)
        };
        match result {
            Ok(reply) => {
                txn.commit().map_err(db)?;
                Ok(reply)
            }
            Err(e) => {
                txn.abort().map_err(db)?;
                Err(e)
            }
        }
    }

    /// Makes every earlier commit durable (one fsync'd empty commit).
    pub fn sync(&self) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db)?;
        txn.commit().map_err(db)
    }

    /// A consistent read-only snapshot.
    pub fn read(&self) -> Result<ReadView, StoreError> {
        let txn = self.db.begin_read().map_err(db)?;
        Ok(ReadView {
            inodes: txn.open_table(INODES).map_err(db)?,
            dentries: txn.open_table(DENTRIES).map_err(db)?,
            slices: txn.open_table(SLICES).map_err(db)?,
            orphans: txn.open_table(ORPHANS).map_err(db)?,
            inline: txn.open_table(INLINE).map_err(db)?,
        })
    }
}

fn dentry_key(parent: u64, name: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + name.len());
    k.extend_from_slice(&parent.to_be_bytes());
    k.extend_from_slice(name);
    k
}

fn kind_byte(k: FileKind) -> u8 {
    match k {
        FileKind::Regular => 1,
        FileKind::Directory => 2,
        FileKind::Symlink => 3,
        FileKind::Fifo => 4,
        FileKind::Socket => 5,
        FileKind::CharDevice => 6,
        FileKind::BlockDevice => 7,
    }
}

fn decode_dentry(v: &[u8]) -> Result<Dentry, StoreError> {
    if v.len() != 9 {
        return Err(StoreError::Corrupt(format!(
            "dentry value of {} bytes",
            v.len()
        )));
    }
    let mut ino = [0u8; 8];
    ino.copy_from_slice(&v[..8]);
    let kind = match v[8] {
        1 => FileKind::Regular,
        2 => FileKind::Directory,
        3 => FileKind::Symlink,
        4 => FileKind::Fifo,
        5 => FileKind::Socket,
        6 => FileKind::CharDevice,
        7 => FileKind::BlockDevice,
        b => return Err(StoreError::Corrupt(format!("dentry kind {b}"))),
    };
    Ok(Dentry {
        ino: u64::from_le_bytes(ino),
        kind,
    })
}

fn encode_dentry(d: Dentry) -> [u8; 9] {
    let mut v = [0u8; 9];
    v[..8].copy_from_slice(&d.ino.to_le_bytes());
    v[8] = kind_byte(d.kind);
    v
}

fn get_inode(
    t: &impl ReadableTable<u64, &'static [u8]>,
    ino: u64,
) -> Result<Option<Inode>, StoreError> {
    match t.get(ino).map_err(db)? {
        None => Ok(None),
        Some(v) => serde_json::from_slice(v.value())
            .map(Some)
            .map_err(|e| StoreError::Corrupt(format!("inode {ino}: {e}"))),
    }
}

fn get_dentry(
    t: &impl ReadableTable<&'static [u8], &'static [u8]>,
    parent: u64,
    name: &[u8],
) -> Result<Option<Dentry>, StoreError> {
    match t.get(dentry_key(parent, name).as_slice()).map_err(db)? {
        None => Ok(None),
        Some(v) => decode_dentry(v.value()).map(Some),
    }
}

fn list(
    t: &impl ReadableTable<&'static [u8], &'static [u8]>,
    parent: u64,
    after: Option<&[u8]>,
    limit: usize,
) -> Result<Vec<(Vec<u8>, Dentry)>, StoreError> {
    let start = match after {
        Some(a) => Bound::Excluded(dentry_key(parent, a)),
        None => Bound::Included(dentry_key(parent, b"")),
    };
    let end = match parent.checked_add(1) {
        Some(p) => Bound::Excluded(dentry_key(p, b"")),
        None => Bound::Unbounded,
    };
    let range = (
        start.as_ref().map(|v| v.as_slice()),
        end.as_ref().map(|v| v.as_slice()),
    );
    let mut out = Vec::new();
    for item in t.range::<&[u8]>(range).map_err(db)? {
        if out.len() >= limit {
            break;
        }
        let (k, v) = item.map_err(db)?;
        let name = k.value().get(8..).unwrap_or_default().to_vec();
        out.push((name, decode_dentry(v.value())?));
    }
    Ok(out)
}

fn get_slices(
    t: &impl ReadableTable<u64, &'static [u8]>,
    ino: u64,
) -> Result<Vec<Slice>, StoreError> {
    match t.get(ino).map_err(db)? {
        None => Ok(Vec::new()),
        Some(v) => slices::decode(v.value())
            .ok_or_else(|| StoreError::Corrupt(format!("slice list of inode {ino}"))),
    }
}

fn get_inline(
    t: &impl ReadableTable<&'static [u8], &'static [u8]>,
    id: &ChunkId,
) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(t.get(&id.0[..]).map_err(db)?.map(|v| v.value().to_vec()))
}

fn get_orphans(t: &impl ReadableTable<u64, ()>) -> Result<Vec<u64>, StoreError> {
    let mut out = Vec::new();
    for item in t.iter().map_err(db)? {
        out.push(item.map_err(db)?.0.value());
    }
    Ok(out)
}

/// A read-only snapshot of the namespace.
pub struct ReadView {
    inodes: redb::ReadOnlyTable<u64, &'static [u8]>,
    dentries: redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
    slices: redb::ReadOnlyTable<u64, &'static [u8]>,
    orphans: redb::ReadOnlyTable<u64, ()>,
    inline: redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
}

impl FsRead for ReadView {
    fn inode(&self, ino: u64) -> Result<Option<Inode>, StoreError> {
        get_inode(&self.inodes, ino)
    }
    fn dentry(&self, parent: u64, name: &[u8]) -> Result<Option<Dentry>, StoreError> {
        get_dentry(&self.dentries, parent, name)
    }
    fn list_dir(
        &self,
        parent: u64,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Dentry)>, StoreError> {
        list(&self.dentries, parent, after, limit)
    }
    fn slices(&self, ino: u64) -> Result<Vec<Slice>, StoreError> {
        get_slices(&self.slices, ino)
    }
    fn orphans(&self) -> Result<Vec<u64>, StoreError> {
        get_orphans(&self.orphans)
    }
    fn inline_chunk(&self, id: &ChunkId) -> Result<Option<Vec<u8>>, StoreError> {
        get_inline(&self.inline, id)
    }
}

/// The tables of one write transaction.
struct WriteView<'t> {
    inodes: redb::Table<'t, u64, &'static [u8]>,
    dentries: redb::Table<'t, &'static [u8], &'static [u8]>,
    slices: redb::Table<'t, u64, &'static [u8]>,
    orphans: redb::Table<'t, u64, ()>,
    meta: redb::Table<'t, &'static str, u64>,
    inline: redb::Table<'t, &'static [u8], &'static [u8]>,
}

impl<'t> WriteView<'t> {
    fn new(txn: &'t redb::WriteTransaction) -> Result<Self, StoreError> {
        Ok(WriteView {
            inodes: txn.open_table(INODES).map_err(db)?,
            dentries: txn.open_table(DENTRIES).map_err(db)?,
            slices: txn.open_table(SLICES).map_err(db)?,
            orphans: txn.open_table(ORPHANS).map_err(db)?,
            meta: txn.open_table(META).map_err(db)?,
            inline: txn.open_table(INLINE).map_err(db)?,
        })
    }
}

impl FsRead for WriteView<'_> {
    fn inode(&self, ino: u64) -> Result<Option<Inode>, StoreError> {
        get_inode(&self.inodes, ino)
    }
    fn dentry(&self, parent: u64, name: &[u8]) -> Result<Option<Dentry>, StoreError> {
        get_dentry(&self.dentries, parent, name)
    }
    fn list_dir(
        &self,
        parent: u64,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Dentry)>, StoreError> {
        list(&self.dentries, parent, after, limit)
    }
    fn slices(&self, ino: u64) -> Result<Vec<Slice>, StoreError> {
        get_slices(&self.slices, ino)
    }
    fn orphans(&self) -> Result<Vec<u64>, StoreError> {
        get_orphans(&self.orphans)
    }
    fn inline_chunk(&self, id: &ChunkId) -> Result<Option<Vec<u8>>, StoreError> {
        get_inline(&self.inline, id)
    }
}

impl FsStore for WriteView<'_> {
    fn put_inode(&mut self, inode: &Inode) -> Result<(), StoreError> {
        let v = serde_json::to_vec(inode).map_err(db)?;
        self.inodes.insert(inode.ino, v.as_slice()).map_err(db)?;
        Ok(())
    }
    fn delete_inode(&mut self, ino: u64) -> Result<(), StoreError> {
        self.inodes.remove(ino).map_err(db)?;
        self.slices.remove(ino).map_err(db)?;
        Ok(())
    }
    fn put_dentry(&mut self, parent: u64, name: &[u8], entry: Dentry) -> Result<(), StoreError> {
        let k = dentry_key(parent, name);
        self.dentries
            .insert(k.as_slice(), encode_dentry(entry).as_slice())
            .map_err(db)?;
        Ok(())
    }
    fn delete_dentry(&mut self, parent: u64, name: &[u8]) -> Result<(), StoreError> {
        let k = dentry_key(parent, name);
        self.dentries.remove(k.as_slice()).map_err(db)?;
        Ok(())
    }
    fn put_slices(&mut self, ino: u64, s: &[Slice]) -> Result<(), StoreError> {
        if s.is_empty() {
            self.slices.remove(ino).map_err(db)?;
        } else {
            let v = slices::encode(s);
            self.slices.insert(ino, v.as_slice()).map_err(db)?;
        }
        Ok(())
    }
    fn set_orphan(&mut self, ino: u64, orphan: bool) -> Result<(), StoreError> {
        if orphan {
            self.orphans.insert(ino, ()).map_err(db)?;
        } else {
            self.orphans.remove(ino).map_err(db)?;
        }
        Ok(())
    }
    fn put_inline(&mut self, id: &ChunkId, data: &[u8]) -> Result<(), StoreError> {
        self.inline.insert(&id.0[..], data).map_err(db)?;
        Ok(())
    }
    fn delete_inline(&mut self, id: &ChunkId) -> Result<(), StoreError> {
        self.inline.remove(&id.0[..]).map_err(db)?;
        Ok(())
    }
    fn next_ino(&mut self) -> Result<u64, StoreError> {
        let last = self
            .meta
            .get("last_ino")
            .map_err(db)?
            .map(|v| v.value())
            .unwrap_or(0);
        let next = last + 1;
        self.meta.insert("last_ino", next).map_err(db)?;
        Ok(next)
    }
}
