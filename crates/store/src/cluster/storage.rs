//! Raft log and state machine, both in one redb database
//! (`<data-dir>/meta.redb`).
//!
//! Tables: `log` (index → JSON entry), `raft` (vote, committed, purged),
//! `sm` (last applied, membership, epoch), `kv` (the namespace), `nodes`
//! (the cluster map) and `snapshot` (the latest snapshot, so a restarted
//! node can serve it). Every commit is durable (redb `Immediate`), so an
//! acknowledged append or apply survives `kill -9`.
//!
//! Reads that do not go through Raft ([`MetaStore::get`], [`MetaStore::list`],
//! [`MetaStore::nodes`]) open their own read transaction; callers that need
//! linearizability first establish a read index (see `cluster::Cluster`).

// openraft's StorageError is large, and the traits fix it as the error type.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    Entry, EntryPayload, LogId, LogState, RaftLogReader, RaftSnapshotBuilder, Snapshot,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use super::types::{Command, CommandResult, NodeId, NodeInfo, Op, RaftNode, TypeConfig};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const RAFT: TableDefinition<&str, &[u8]> = TableDefinition::new("raft");
const SM: TableDefinition<&str, &[u8]> = TableDefinition::new("sm");
const KV: TableDefinition<&str, &str> = TableDefinition::new("kv");
const NODES: TableDefinition<u64, &[u8]> = TableDefinition::new("nodes");
const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");

type SErr = StorageError<NodeId>;
/// Serialized state, applied log id, membership.
type SnapshotParts = (
    Vec<u8>,
    Option<LogId<NodeId>>,
    StoredMembership<NodeId, RaftNode>,
);

fn w<E: std::error::Error + 'static>(e: E) -> SErr {
    StorageIOError::write(&e).into()
}

fn r<E: std::error::Error + 'static>(e: E) -> SErr {
    StorageIOError::read(&e).into()
}

/// Errors of the metadata database outside Raft's own calls.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// redb failed.
    #[error("metadata database {path}: {source}")]
    Db {
        /// File.
        path: String,
        /// Cause.
        #[source]
        source: redb::Error,
    },
    /// A stored record did not decode.
    #[error("metadata database: corrupt record {what}: {source}")]
    Decode {
        /// Which record.
        what: String,
        /// Parser error.
        #[source]
        source: serde_json::Error,
    },
}

/// The metadata database, shared by the log store and the state machine.
#[derive(Clone)]
pub struct MetaStore {
    db: Arc<Database>,
    path: Arc<String>,
    events: Arc<super::fs_state::FsEvents>,
}

impl Debug for MetaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MetaStore({})", self.path)
    }
}

#[derive(Serialize, Deserialize)]
struct SnapshotData {
    kv: Vec<(String, String)>,
    nodes: Vec<NodeInfo>,
    epoch: u64,
    #[serde(default)]
    fs: super::fs_state::FsSnapshot,
}

/// Snapshots written before [`SNAP_MAGIC`]: one JSON document with the
/// data as an array of numbers (read for compatibility).
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, RaftNode>,
    data: Vec<u8>,
}

/// Start of a snapshot in the compact format: the magic, then
/// [`SnapshotData`] in postcard. Older snapshots are JSON (they start with
/// `{`) and are still installed. The JSON form held every byte of inline
/// file data as a decimal number; with 10,000 small files a snapshot was
/// tens of MiB, rebuilt every `--snapshot-every` entries.
const SNAP_MAGIC: &[u8] = b"b3snap\x02\n";

fn encode_snapshot(data: &SnapshotData) -> Result<Vec<u8>, SErr> {
    postcard::to_extend(data, SNAP_MAGIC.to_vec()).map_err(r)
}

fn decode_snapshot(bytes: &[u8]) -> Result<SnapshotData, SErr> {
    match bytes.strip_prefix(SNAP_MAGIC) {
        Some(rest) => postcard::from_bytes(rest).map_err(w),
        None => serde_json::from_slice(bytes).map_err(w),
    }
}

/// Stores `meta` and `data` as the current snapshot (raw bytes, not JSON).
fn store_snapshot(
    txn: &redb::WriteTransaction,
    meta: &SnapshotMeta<NodeId, RaftNode>,
    data: &[u8],
) -> Result<(), SErr> {
    let mut t = txn.open_table(SNAPSHOT).map_err(w)?;
    t.remove("current").map_err(w)?;
    put_json(&mut t, "meta", meta)?;
    t.insert("data", data).map_err(w)?;
    Ok(())
}

impl MetaStore {
    /// Opens or creates `<dir>/meta.redb`.
    pub fn open(dir: &Path) -> Result<Self, MetaError> {
        let path = dir.join("meta.redb");
        let shown = path.display().to_string();
        let db_err = |e: redb::Error| MetaError::Db {
            path: shown.clone(),
            source: e,
        };
        let db = Database::create(&path).map_err(|e| db_err(e.into()))?;
        let txn = db.begin_write().map_err(|e| db_err(e.into()))?;
        {
            txn.open_table(LOG).map_err(|e| db_err(e.into()))?;
            txn.open_table(RAFT).map_err(|e| db_err(e.into()))?;
            txn.open_table(SM).map_err(|e| db_err(e.into()))?;
            txn.open_table(KV).map_err(|e| db_err(e.into()))?;
            txn.open_table(NODES).map_err(|e| db_err(e.into()))?;
            txn.open_table(SNAPSHOT).map_err(|e| db_err(e.into()))?;
        }
        super::fs_state::create_tables(&txn).map_err(|e| MetaError::Db {
            path: shown.clone(),
            source: redb::Error::Corrupted(e),
        })?;
        txn.commit().map_err(|e| db_err(e.into()))?;
        Ok(Self {
            db: Arc::new(db),
            path: Arc::new(shown),
            events: Arc::default(),
        })
    }

    fn err(&self, e: impl Into<redb::Error>) -> MetaError {
        MetaError::Db {
            path: (*self.path).clone(),
            source: e.into(),
        }
    }

    /// The database (for the filesystem reads of `fs_state`).
    pub fn db(&self) -> &Database {
        &self.db
    }

    /// Namespace changes applied on this node, for mounts to poll.
    pub fn fs_events(&self) -> &Arc<super::fs_state::FsEvents> {
        &self.events
    }

    /// Value of `key` in the namespace (local, not linearizable by itself).
    pub fn get(&self, key: &str) -> Result<Option<String>, MetaError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = txn.open_table(KV).map_err(|e| self.err(e))?;
        let v = t.get(key).map_err(|e| self.err(e))?;
        Ok(v.map(|g| g.value().to_string()))
    }

    /// Up to `limit` entries with keys starting with `prefix`, after
    /// `start_after` (exclusive) when given, in key order.
    pub fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, String)>, MetaError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = txn.open_table(KV).map_err(|e| self.err(e))?;
        let start = match start_after {
            Some(s) if s >= prefix => Bound::Excluded(s),
            _ => Bound::Included(prefix),
        };
        let mut out = Vec::new();
        for item in t
            .range::<&str>((start, Bound::Unbounded))
            .map_err(|e| self.err(e))?
        {
            let (k, v) = item.map_err(|e| self.err(e))?;
            let k = k.value();
            if !k.starts_with(prefix) || out.len() >= limit {
                break;
            }
            out.push((k.to_string(), v.value().to_string()));
        }
        Ok(out)
    }

    /// Number of keys starting with `prefix` (reads keys only).
    pub fn count_prefix(&self, prefix: &str) -> Result<u64, MetaError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = txn.open_table(KV).map_err(|e| self.err(e))?;
        let mut n = 0;
        for item in t.range::<&str>(prefix..).map_err(|e| self.err(e))? {
            let (k, _) = item.map_err(|e| self.err(e))?;
            if !k.value().starts_with(prefix) {
                break;
            }
            n += 1;
        }
        Ok(n)
    }

    /// The cluster map and its epoch.
    pub fn nodes(&self) -> Result<(Vec<NodeInfo>, u64), MetaError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = txn.open_table(NODES).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for item in t.iter().map_err(|e| self.err(e))? {
            let (_, v) = item.map_err(|e| self.err(e))?;
            let node: NodeInfo =
                serde_json::from_slice(v.value()).map_err(|source| MetaError::Decode {
                    what: "node".into(),
                    source,
                })?;
            out.push(node);
        }
        let sm = txn.open_table(SM).map_err(|e| self.err(e))?;
        let epoch = read_json::<u64>(&sm, "epoch")
            .map_err(|_| MetaError::Decode {
                what: "epoch".into(),
                source: serde_json::Error::io(std::io::Error::other("bad epoch")),
            })?
            .unwrap_or(0);
        Ok((out, epoch))
    }

    /// Number of namespace keys.
    pub fn key_count(&self) -> Result<u64, MetaError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = txn.open_table(KV).map_err(|e| self.err(e))?;
        t.len().map_err(|e| self.err(e))
    }

    /// The Raft log store over this database.
    pub fn log_store(&self) -> LogStore {
        LogStore(self.clone())
    }

    /// The Raft state machine over this database.
    pub fn state_machine(&self) -> StateMachine {
        StateMachine(self.clone())
    }

    fn snapshot_data(&self) -> Result<SnapshotParts, SErr> {
        let txn = self.db.begin_read().map_err(r)?;
        let kv = txn.open_table(KV).map_err(r)?;
        let nodes_t = txn.open_table(NODES).map_err(r)?;
        let sm = txn.open_table(SM).map_err(r)?;
        let mut data = SnapshotData {
            kv: Vec::new(),
            nodes: Vec::new(),
            epoch: read_json(&sm, "epoch")?.unwrap_or(0),
            fs: super::fs_state::snapshot(&txn)?,
        };
        for item in kv.iter().map_err(r)? {
            let (k, v) = item.map_err(r)?;
            data.kv.push((k.value().to_string(), v.value().to_string()));
        }
        for item in nodes_t.iter().map_err(r)? {
            let (_, v) = item.map_err(r)?;
            data.nodes
                .push(serde_json::from_slice(v.value()).map_err(r)?);
        }
        let applied = read_json(&sm, "applied")?;
        let membership = read_json(&sm, "membership")?.unwrap_or_default();
        Ok((encode_snapshot(&data)?, applied, membership))
    }
}

fn read_json<T: serde::de::DeserializeOwned>(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<T>, SErr> {
    match t.get(key).map_err(r)? {
        Some(v) => Ok(Some(serde_json::from_slice(v.value()).map_err(r)?)),
        None => Ok(None),
    }
}

fn put_json<T: Serialize>(
    t: &mut redb::Table<&'static str, &'static [u8]>,
    key: &str,
    value: &T,
) -> Result<(), SErr> {
    let bytes = serde_json::to_vec(value).map_err(w)?;
    t.insert(key, bytes.as_slice()).map_err(w)?;
    Ok(())
}

/// Raft log storage (and log reader).
#[derive(Clone, Debug)]
pub struct LogStore(MetaStore);

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, SErr> {
        let txn = self.0.db.begin_read().map_err(r)?;
        let t = txn.open_table(LOG).map_err(r)?;
        let mut out = Vec::new();
        for item in t.range(range).map_err(r)? {
            let (_, v) = item.map_err(r)?;
            out.push(serde_json::from_slice(v.value()).map_err(r)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, SErr> {
        let txn = self.0.db.begin_read().map_err(r)?;
        let raft = txn.open_table(RAFT).map_err(r)?;
        let last_purged: Option<LogId<NodeId>> = read_json(&raft, "purged")?;
        let log = txn.open_table(LOG).map_err(r)?;
        let last = match log.last().map_err(r)? {
            Some((_, v)) => {
                let e: Entry<TypeConfig> = serde_json::from_slice(v.value()).map_err(r)?;
                Some(e.log_id)
            }
            None => last_purged,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), SErr> {
        let txn = self.0.db.begin_write().map_err(w)?;
        {
            let mut t = txn.open_table(RAFT).map_err(w)?;
            put_json(&mut t, "vote", vote)?;
        }
        txn.commit().map_err(w)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, SErr> {
        let txn = self.0.db.begin_read().map_err(r)?;
        let t = txn.open_table(RAFT).map_err(r)?;
        read_json(&t, "vote")
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let result = (|| {
            let txn = self.0.db.begin_write().map_err(w)?;
            {
                let mut t = txn.open_table(LOG).map_err(w)?;
                for e in entries {
                    let bytes = serde_json::to_vec(&e).map_err(w)?;
                    t.insert(e.log_id.index, bytes.as_slice()).map_err(w)?;
                }
            }
            txn.commit().map_err(w)
        })();
        match &result {
            Ok(()) => callback.log_io_completed(Ok(())),
            Err(e) => callback.log_io_completed(Err(std::io::Error::other(e.to_string()))),
        }
        result
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), SErr> {
        let txn = self.0.db.begin_write().map_err(w)?;
        {
            let mut t = txn.open_table(LOG).map_err(w)?;
            t.retain_in(log_id.index.., |_, _| false).map_err(w)?;
        }
        txn.commit().map_err(w)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), SErr> {
        let txn = self.0.db.begin_write().map_err(w)?;
        {
            let mut raft = txn.open_table(RAFT).map_err(w)?;
            put_json(&mut raft, "purged", &log_id)?;
            let mut t = txn.open_table(LOG).map_err(w)?;
            t.retain_in(..=log_id.index, |_, _| false).map_err(w)?;
        }
        txn.commit().map_err(w)
    }
}

/// The replicated state machine.
#[derive(Clone, Debug)]
pub struct StateMachine(MetaStore);

fn apply_command(
    cmd: &Command,
    kv: &mut redb::Table<&'static str, &'static str>,
    nodes: &mut redb::Table<u64, &'static [u8]>,
    epoch: &mut u64,
) -> Result<CommandResult, SErr> {
    match cmd {
        Command::Txn { checks, ops } => {
            for c in checks {
                let current = kv
                    .get(c.key.as_str())
                    .map_err(w)?
                    .map(|g| g.value().to_string());
                if current != c.value {
                    return Ok(CommandResult {
                        ok: false,
                        previous: Vec::new(),
                        epoch: *epoch,
                        ..Default::default()
                    });
                }
            }
            let mut previous = Vec::with_capacity(ops.len());
            for op in ops {
                let prev = match op {
                    Op::Put { key, value } => kv.insert(key.as_str(), value.as_str()).map_err(w)?,
                    Op::Delete { key } => kv.remove(key.as_str()).map_err(w)?,
                };
                previous.push(prev.map(|g| g.value().to_string()));
            }
            Ok(CommandResult {
                ok: true,
                previous,
                epoch: *epoch,
                ..Default::default()
            })
        }
        Command::UpsertNode(node) => {
            let bytes = serde_json::to_vec(node).map_err(w)?;
            let changed = nodes
                .get(node.id)
                .map_err(w)?
                .is_none_or(|old| old.value() != bytes.as_slice());
            if changed {
                nodes.insert(node.id, bytes.as_slice()).map_err(w)?;
                *epoch += 1;
            }
            Ok(CommandResult {
                ok: true,
                previous: Vec::new(),
                epoch: *epoch,
                ..Default::default()
            })
        }
        Command::FsInit { .. }
        | Command::Fs { .. }
        | Command::FsSession { .. }
        | Command::FsEndSession { .. }
        | Command::FsExpire { .. }
        | Command::FsLock { .. } => Ok(CommandResult {
            ok: false,
            epoch: *epoch,
            ..Default::default()
        }),
        Command::RemoveNode(id) => {
            if nodes.remove(*id).map_err(w)?.is_some() {
                *epoch += 1;
            }
            Ok(CommandResult {
                ok: true,
                previous: Vec::new(),
                epoch: *epoch,
                ..Default::default()
            })
        }
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, RaftNode>), SErr> {
        let txn = self.0.db.begin_read().map_err(r)?;
        let sm = txn.open_table(SM).map_err(r)?;
        Ok((
            read_json(&sm, "applied")?,
            read_json(&sm, "membership")?.unwrap_or_default(),
        ))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut txn = self.0.db.begin_write().map_err(w)?;
        // Not fsynced on its own: the log is durable, a restarted node
        // re-applies what it lost, and every later log append or purge (an
        // Immediate commit) makes this one durable too — before any log
        // entry it depends on can be purged.
        txn.set_durability(redb::Durability::None).map_err(w)?;
        let mut out = Vec::new();
        let mut pending = super::fs_state::Pending::default();
        {
            let mut sm = txn.open_table(SM).map_err(w)?;
            let mut kv = txn.open_table(KV).map_err(w)?;
            let mut nodes = txn.open_table(NODES).map_err(w)?;
            let mut epoch: u64 = read_json(&sm, "epoch")?.unwrap_or(0);
            let mut last = None;
            for entry in entries {
                last = Some(entry.log_id);
                match &entry.payload {
                    EntryPayload::Blank => out.push(CommandResult {
                        ok: true,
                        previous: Vec::new(),
                        epoch,
                        ..Default::default()
                    }),
                    EntryPayload::Normal(cmd) => {
                        match super::fs_state::apply(&txn, cmd, epoch, &mut pending)? {
                            Some(result) => out.push(result),
                            None => out.push(apply_command(cmd, &mut kv, &mut nodes, &mut epoch)?),
                        }
                    }
                    EntryPayload::Membership(m) => {
                        put_json(
                            &mut sm,
                            "membership",
                            &StoredMembership::new(Some(entry.log_id), m.clone()),
                        )?;
                        out.push(CommandResult {
                            ok: true,
                            previous: Vec::new(),
                            epoch,
                            ..Default::default()
                        });
                    }
                }
            }
            if let Some(last) = last {
                put_json(&mut sm, "applied", &last)?;
            }
            put_json(&mut sm, "epoch", &epoch)?;
        }
        txn.commit().map_err(w)?;
        self.0.events.publish(pending.changes);
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, SErr> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, RaftNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), SErr> {
        let bytes = snapshot.into_inner();
        let data = decode_snapshot(&bytes)?;
        let txn = self.0.db.begin_write().map_err(w)?;
        {
            let mut kv = txn.open_table(KV).map_err(w)?;
            kv.retain(|_, _| false).map_err(w)?;
            for (k, v) in &data.kv {
                kv.insert(k.as_str(), v.as_str()).map_err(w)?;
            }
            let mut nodes = txn.open_table(NODES).map_err(w)?;
            nodes.retain(|_, _| false).map_err(w)?;
            for n in &data.nodes {
                let b = serde_json::to_vec(n).map_err(w)?;
                nodes.insert(n.id, b.as_slice()).map_err(w)?;
            }
            let mut sm = txn.open_table(SM).map_err(w)?;
            put_json(&mut sm, "applied", &meta.last_log_id)?;
            put_json(&mut sm, "membership", &meta.last_membership)?;
            put_json(&mut sm, "epoch", &data.epoch)?;
            super::fs_state::install(&txn, &data.fs)?;
        }
        store_snapshot(&txn, meta, &bytes)?;
        txn.commit().map_err(w)
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, SErr> {
        let txn = self.0.db.begin_read().map_err(r)?;
        let t = txn.open_table(SNAPSHOT).map_err(r)?;
        if let Some(meta) = read_json::<SnapshotMeta<NodeId, RaftNode>>(&t, "meta")? {
            let data = t
                .get("data")
                .map_err(r)?
                .map(|v| v.value().to_vec())
                .unwrap_or_default();
            return Ok(Some(Snapshot {
                meta,
                snapshot: Box::new(Cursor::new(data)),
            }));
        }
        let stored: Option<StoredSnapshot> = read_json(&t, "current")?;
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, SErr> {
        let (data, applied, membership) = self.0.snapshot_data()?;
        let snapshot_id = format!(
            "{}-{}",
            applied.map(|l| l.index).unwrap_or(0),
            rand::random::<u32>()
        );
        let meta = SnapshotMeta {
            last_log_id: applied,
            last_membership: membership,
            snapshot_id,
        };
        let txn = self.0.db.begin_write().map_err(w)?;
        store_snapshot(&txn, &meta, &data)?;
        txn.commit().map_err(w)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::types::{Check, NodeInfo};
    use openraft::CommittedLeaderId;

    fn entry(index: u64, cmd: Command) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(cmd),
        }
    }

    fn put(key: &str, value: &str) -> Op {
        Op::Put {
            key: key.into(),
            value: value.into(),
        }
    }

    #[tokio::test]
    async fn transactions_apply_all_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let meta = MetaStore::open(dir.path()).unwrap();
        let mut sm = meta.state_machine();
        let r = sm
            .apply(vec![
                entry(
                    1,
                    Command::Txn {
                        checks: vec![],
                        ops: vec![put("a", "1"), put("b", "2")],
                    },
                ),
                // Create-if-absent fails: "a" exists. Nothing applied.
                entry(
                    2,
                    Command::Txn {
                        checks: vec![Check {
                            key: "a".into(),
                            value: None,
                        }],
                        ops: vec![put("a", "X"), put("c", "3")],
                    },
                ),
                // Compare-and-swap holds: rename b -> d atomically.
                entry(
                    3,
                    Command::Txn {
                        checks: vec![Check {
                            key: "b".into(),
                            value: Some("2".into()),
                        }],
                        ops: vec![Op::Delete { key: "b".into() }, put("d", "2")],
                    },
                ),
            ])
            .await
            .unwrap();
        assert!(r[0].ok && !r[1].ok && r[2].ok);
        assert_eq!(r[2].previous, vec![Some("2".to_string()), None]);
        assert_eq!(meta.get("a").unwrap().as_deref(), Some("1"));
        assert_eq!(meta.get("c").unwrap(), None);
        assert_eq!(meta.get("b").unwrap(), None);
        assert_eq!(meta.get("d").unwrap().as_deref(), Some("2"));
        assert_eq!(
            sm.applied_state().await.unwrap().0.map(|l| l.index),
            Some(3)
        );
    }

    #[tokio::test]
    async fn list_pages_by_prefix_and_snapshots_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let meta = MetaStore::open(dir.path()).unwrap();
        let mut sm = meta.state_machine();
        let ops = (0..10)
            .map(|i| put(&format!("o/b/k{i}"), "v"))
            .chain([put("o/c/x", "v")])
            .collect();
        let node = NodeInfo {
            id: 7,
            addr: "127.0.0.1:7400".parse().unwrap(),
            admin: "127.0.0.1:7401".parse().unwrap(),
            domain: "h".into(),
            weight: 1,
            is_in: true,
        };
        sm.apply(vec![
            entry(
                1,
                Command::Txn {
                    checks: vec![],
                    ops,
                },
            ),
            entry(2, Command::UpsertNode(node.clone())),
        ])
        .await
        .unwrap();
        let page = meta.list("o/b/", None, 3).unwrap();
        assert_eq!(
            page.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            ["o/b/k0", "o/b/k1", "o/b/k2"]
        );
        let next = meta.list("o/b/", Some("o/b/k8"), 3).unwrap();
        assert_eq!(
            next.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            ["o/b/k9"]
        );
        assert_eq!(meta.count_prefix("o/b/").unwrap(), 10);
        assert_eq!(meta.nodes().unwrap(), (vec![node.clone()], 1));

        let snap = sm.build_snapshot().await.unwrap();
        let other = tempfile::tempdir().unwrap();
        let copy = MetaStore::open(other.path()).unwrap();
        let mut sm2 = copy.state_machine();
        sm2.install_snapshot(&snap.meta, snap.snapshot)
            .await
            .unwrap();
        assert_eq!(copy.count_prefix("o/").unwrap(), 11);
        assert_eq!(copy.nodes().unwrap(), (vec![node], 1));
        assert_eq!(
            sm2.applied_state().await.unwrap().0.map(|l| l.index),
            Some(2)
        );
        assert!(sm2.get_current_snapshot().await.unwrap().is_some());
        // The stored snapshot is in the compact format.
        let bytes = sm2
            .get_current_snapshot()
            .await
            .unwrap()
            .unwrap()
            .snapshot
            .into_inner();
        assert!(bytes.starts_with(SNAP_MAGIC));
        // The snapshot survives a reopen.
        drop((sm2, copy));
        let reopened = MetaStore::open(other.path()).unwrap();
        assert!(reopened
            .state_machine()
            .get_current_snapshot()
            .await
            .unwrap()
            .is_some());
    }

    /// Snapshots in the old JSON form are still installed; the compact form
    /// keeps inline file data at about its own size.
    #[test]
    fn compact_snapshots_and_old_json_ones_decode() {
        let mut data = SnapshotData {
            kv: vec![("k".into(), "v".into())],
            nodes: Vec::new(),
            epoch: 3,
            fs: Default::default(),
        };
        data.fs = serde_json::from_value(serde_json::json!({
            "namespace": {"inodes": [], "dentries": [], "slices": [], "orphans": [], "meta": [],
                          "inline": [[[1, 2], vec![0xabu8; 1024]]]},
            "locks": [], "sessions": [[5, 99]]
        }))
        .unwrap();
        let compact = encode_snapshot(&data).unwrap();
        assert!(compact.starts_with(SNAP_MAGIC));
        assert!(compact.len() < 1200, "{} bytes", compact.len());
        let json = serde_json::to_vec(&data).unwrap();
        assert!(json.len() > 3000);
        for bytes in [compact, json] {
            let back = decode_snapshot(&bytes).unwrap();
            assert_eq!(back.epoch, 3);
            assert_eq!(back.kv, data.kv);
            assert_eq!(
                serde_json::to_value(&back.fs).unwrap(),
                serde_json::to_value(&data.fs).unwrap()
            );
        }
        assert!(decode_snapshot(b"b3snap\x02\n\xff\xff").is_err());
        assert!(decode_snapshot(b"garbage").is_err());
    }
}
