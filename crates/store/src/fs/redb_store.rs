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
        ReadView::new(&txn)
    }
}

impl ReadView {
    /// The namespace tables as `txn` sees them. The tables must exist (a
    /// write transaction created them: [`create_tables`]).
    pub fn new(txn: &redb::ReadTransaction) -> Result<Self, StoreError> {
        Ok(ReadView {
            inodes: txn.open_table(INODES).map_err(db)?,
            dentries: txn.open_table(DENTRIES).map_err(db)?,
            slices: txn.open_table(SLICES).map_err(db)?,
            orphans: txn.open_table(ORPHANS).map_err(db)?,
            inline: txn.open_table(INLINE).map_err(db)?,
        })
    }

    /// Every chunk id some file's slice list references (inline chunks
    /// included), sorted and without duplicates. The garbage collector
    /// keeps these.
    pub fn referenced_chunks(&self) -> Result<Vec<ChunkId>, StoreError> {
        let mut out = Vec::new();
        for item in self.slices.iter().map_err(db)? {
            let (k, v) = item.map_err(db)?;
            let list = slices::decode(v.value())
                .ok_or_else(|| StoreError::Corrupt(format!("slice list of inode {}", k.value())))?;
            out.extend(list.iter().map(|s| s.chunk));
        }
        out.sort();
        out.dedup();
        Ok(out)
    }
}

/// Creates the namespace tables in `txn` if they do not exist yet.
pub fn create_tables(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    WriteView::new(txn).map(|_| ())
}

/// The namespace tables of a write transaction as an [`FsStore`]; the
/// caller commits or aborts `txn`. Used by the Raft state machine, which
/// applies namespace ops in the same transaction that records the applied
/// log id.
pub fn write_view(txn: &redb::WriteTransaction) -> Result<impl FsStore + '_, StoreError> {
    WriteView::new(txn)
}

/// Every namespace table as raw (key, value) pairs, for Raft snapshots.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct Dump {
    /// `inodes`.
    pub inodes: Vec<(u64, Vec<u8>)>,
    /// `dentries`.
    pub dentries: Vec<(Vec<u8>, Vec<u8>)>,
    /// `slices`.
    pub slices: Vec<(u64, Vec<u8>)>,
    /// `orphans`.
    pub orphans: Vec<u64>,
    /// `meta` (counters).
    pub meta: Vec<(String, u64)>,
    /// `inline_chunks`.
    pub inline: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Raw (key, value) pairs of a table.
type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Copies every namespace table out of `txn`.
pub fn dump(txn: &redb::ReadTransaction) -> Result<Dump, StoreError> {
    fn bytes_table(
        t: &redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
    ) -> Result<Pairs, StoreError> {
        let mut out = Vec::new();
        for item in t.iter().map_err(db)? {
            let (k, v) = item.map_err(db)?;
            out.push((k.value().to_vec(), v.value().to_vec()));
        }
        Ok(out)
    }
    fn ino_table(
        t: &redb::ReadOnlyTable<u64, &'static [u8]>,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        for item in t.iter().map_err(db)? {
            let (k, v) = item.map_err(db)?;
            out.push((k.value(), v.value().to_vec()));
        }
        Ok(out)
    }
    let view = ReadView::new(txn)?;
    let meta_t = txn.open_table(META).map_err(db)?;
    let mut meta = Vec::new();
    for item in meta_t.iter().map_err(db)? {
        let (k, v) = item.map_err(db)?;
        meta.push((k.value().to_string(), v.value()));
    }
    Ok(Dump {
        inodes: ino_table(&view.inodes)?,
        dentries: bytes_table(&view.dentries)?,
        slices: ino_table(&view.slices)?,
        orphans: get_orphans(&view.orphans)?,
        meta,
        inline: bytes_table(&view.inline)?,
    })
}

/// Replaces every namespace table of `txn` by `d`.
pub fn restore(txn: &redb::WriteTransaction, d: &Dump) -> Result<(), StoreError> {
    let mut v = WriteView::new(txn)?;
    v.inodes.retain(|_, _| false).map_err(db)?;
    v.dentries.retain(|_, _| false).map_err(db)?;
    v.slices.retain(|_, _| false).map_err(db)?;
    v.orphans.retain(|_, _| false).map_err(db)?;
    v.meta.retain(|_, _| false).map_err(db)?;
    v.inline.retain(|_, _| false).map_err(db)?;
    for (k, val) in &d.inodes {
        v.inodes.insert(*k, val.as_slice()).map_err(db)?;
    }
    for (k, val) in &d.dentries {
        v.dentries
            .insert(k.as_slice(), val.as_slice())
            .map_err(db)?;
    }
    for (k, val) in &d.slices {
        v.slices.insert(*k, val.as_slice()).map_err(db)?;
    }
    for k in &d.orphans {
        v.orphans.insert(*k, ()).map_err(db)?;
    }
    for (k, val) in &d.meta {
        v.meta.insert(k.as_str(), *val).map_err(db)?;
    }
    for (k, val) in &d.inline {
        v.inline.insert(k.as_slice(), val.as_slice()).map_err(db)?;
    }
    Ok(())
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
