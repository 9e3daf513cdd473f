//! The `/data` namespace inside the Raft state machine.
//!
//! [`Command::Fs`] runs [`crate::fs::apply`] on the namespace tables of the
//! state machine's own redb write transaction (the one that also records
//! the applied log id), so a namespace op and "applied up to here" commit
//! together. The tables are those of [`crate::fs::redb_store`] (same code
//! as the local backend), plus two for cluster-wide file locks:
//!
//! * `fs_sessions`: session id → lease end (Unix ms). A mount opens a
//!   session, renews it every few seconds, and ends it on unmount; the
//!   leader expires sessions whose lease ran out ([`Command::FsExpire`]),
//!   which drops their locks — a mount that dies loses its locks within
//!   one lease.
//! * `fs_locks`: ino → JSON list of (session, lock). Requests are decided
//!   by [`LockTable`] with owners made unique per session.
//! * `fs_replies`: (session, request number) → JSON reply of a numbered
//!   [`Command::Fs`], and `fs_floors`: session → lowest number still
//!   wanted. A mount that lost an answer (leader killed mid-commit,
//!   connection lost) sends the same request again; it is applied once and
//!   the retry gets the first reply (exactly-once, as in the Raft paper's
//!   client sessions). Requests below the floor are stale copies and are
//!   ignored.
//!
//! Everything here is deterministic: time comes in the commands.
//!
//! Applied namespace changes are published to [`FsEvents`] (a bounded ring
//! with sequence numbers) once the transaction committed; mounts long-poll
//! it through their server to drop what their kernel cached.

// openraft's StorageError is large, and the traits fix it as the error type.
#![allow(clippy::result_large_err)]

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use openraft::{StorageError, StorageIOError};
use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::types::{Command, CommandResult, NodeId};
use crate::fs::locks::{Lock, LockTable};
use crate::fs::redb_store::{self, Dump, ReadView};
use crate::fs::{self as fsm, Change, FsOp, FsRead};
use crate::placement::ChunkId;

const FS_LOCKS: TableDefinition<u64, &[u8]> = TableDefinition::new("fs_locks");
const FS_SESSIONS: TableDefinition<u64, u64> = TableDefinition::new("fs_sessions");
const FS_REPLIES: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("fs_replies");
const FS_FLOORS: TableDefinition<u64, u64> = TableDefinition::new("fs_floors");

type SErr = StorageError<NodeId>;

fn w<E: std::fmt::Display>(e: E) -> SErr {
    StorageIOError::write(&std::io::Error::other(e.to_string())).into()
}

fn r<E: std::fmt::Display>(e: E) -> SErr {
    StorageIOError::read(&std::io::Error::other(e.to_string())).into()
}

/// Creates the namespace and lock tables (at open).
pub(crate) fn create_tables(txn: &redb::WriteTransaction) -> Result<(), String> {
    redb_store::create_tables(txn).map_err(|e| e.to_string())?;
    txn.open_table(FS_LOCKS).map_err(|e| e.to_string())?;
    txn.open_table(FS_SESSIONS).map_err(|e| e.to_string())?;
    txn.open_table(FS_REPLIES).map_err(|e| e.to_string())?;
    txn.open_table(FS_FLOORS).map_err(|e| e.to_string())?;
    Ok(())
}

/// A lock with the session holding it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Held {
    session: u64,
    lock: Lock,
}

/// Owner id unique across sessions (kernel lock owners are per mount).
fn mix(session: u64, owner: u64) -> u64 {
    session.rotate_left(29) ^ owner.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The lock table of `ino` with session-unique owners, and the way back.
fn table_of(held: &[Held], ino: u64) -> (LockTable, HashMap<u64, (u64, u64)>) {
    let mut t = LockTable::default();
    let mut back = HashMap::new();
    for h in held {
        let m = mix(h.session, h.lock.owner);
        back.insert(m, (h.session, h.lock.owner));
        // Stored locks never conflict with each other.
        let _ = t.set(ino, Lock { owner: m, ..h.lock });
    }
    (t, back)
}

fn read_held(t: &impl ReadableTable<u64, &'static [u8]>, ino: u64) -> Result<Vec<Held>, String> {
    match t.get(ino).map_err(|e| e.to_string())? {
        None => Ok(Vec::new()),
        Some(v) => serde_json::from_slice(v.value()).map_err(|e| format!("locks of {ino}: {e}")),
    }
}

/// What the state machine did besides the reply: changes to publish once
/// the transaction is committed.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    pub changes: Vec<(u64, Change)>,
}

/// Applies the filesystem commands; `None` for other commands.
pub(crate) fn apply(
    txn: &redb::WriteTransaction,
    cmd: &Command,
    epoch: u64,
    pending: &mut Pending,
) -> Result<Option<CommandResult>, SErr> {
    let done = |ok: bool| CommandResult {
        ok,
        previous: Vec::new(),
        epoch,
        fs: None,
        lock: None,
    };
    match cmd {
        Command::FsInit { now } => {
            let mut view = redb_store::write_view(txn).map_err(w)?;
            fsm::init_root(&mut view, *now).map_err(w)?;
            Ok(Some(done(true)))
        }
        Command::Fs {
            op,
            ctx,
            origin,
            req,
            done_below,
        } => {
            let numbered = *origin != 0 && *req != 0;
            if numbered {
                match remembered(txn, *origin, *req, *done_below)? {
                    Remembered::New => {}
                    Remembered::Reply(result) => {
                        return Ok(Some(CommandResult {
                            fs: Some(result),
                            ..done(true)
                        }))
                    }
                    Remembered::Stale => {
                        tracing::debug!(
                            session = origin,
                            req,
                            "a stale copy of an answered request is ignored"
                        );
                        return Ok(Some(CommandResult {
                            fs: Some(Err(fsm::Errno::EIO)),
                            ..done(false)
                        }));
                    }
                }
            }
            let mut view = redb_store::write_view(txn).map_err(w)?;
            let before = touched(&view, op).map_err(r)?;
            let result = match fsm::apply(&mut view, op.clone(), ctx) {
                Ok(reply) => Ok(reply),
                Err(fsm::ApplyError::Errno(e)) => Err(e),
                // The namespace tables failed: fatal for this node, as
                // any other state machine storage error.
                Err(fsm::ApplyError::Store(e)) => return Err(w(e)),
            };
            if let Ok(reply) = &result {
                let mut changes = before;
                if let Some(i) = &reply.inode {
                    changes.push(Change::Inode(i.ino));
                }
                changes.sort_by_key(|c| format!("{c:?}"));
                changes.dedup();
                pending
                    .changes
                    .extend(changes.into_iter().map(|c| (*origin, c)));
            }
            drop(view);
            if numbered {
                let v = serde_json::to_vec(&result).map_err(w)?;
                txn.open_table(FS_REPLIES)
                    .map_err(w)?
                    .insert((*origin, *req), v.as_slice())
                    .map_err(w)?;
            }
            Ok(Some(CommandResult {
                fs: Some(result),
                ..done(true)
            }))
        }
        Command::FsSession {
            session,
            expires_ms,
        } => {
            let mut t = txn.open_table(FS_SESSIONS).map_err(w)?;
            t.insert(*session, *expires_ms).map_err(w)?;
            Ok(Some(done(true)))
        }
        Command::FsEndSession { session } => {
            end_sessions(txn, &[*session])?;
            Ok(Some(done(true)))
        }
        Command::FsExpire { now_ms } => {
            let expired: Vec<u64> = {
                let t = txn.open_table(FS_SESSIONS).map_err(w)?;
                let mut out = Vec::new();
                for item in t.iter().map_err(w)? {
                    let (k, v) = item.map_err(w)?;
                    if v.value() < *now_ms {
                        out.push(k.value());
                    }
                }
                out
            };
            if !expired.is_empty() {
                tracing::info!(sessions = ?expired, "mount lock sessions expired; their locks are released");
            }
            end_sessions(txn, &expired)?;
            Ok(Some(done(true)))
        }
        Command::FsLock { session, ino, lock } => {
            let known = txn
                .open_table(FS_SESSIONS)
                .map_err(w)?
                .get(*session)
                .map_err(w)?
                .is_some();
            if !known {
                return Ok(Some(done(false)));
            }
            let mut t = txn.open_table(FS_LOCKS).map_err(w)?;
            let held = read_held(&t, *ino).map_err(w)?;
            let (mut table, mut back) = table_of(&held, *ino);
            let m = mix(*session, lock.owner);
            back.insert(m, (*session, lock.owner));
            match table.set(*ino, Lock { owner: m, ..*lock }) {
                Err(c) => {
                    let owner = back.get(&c.owner).map(|(_, o)| *o).unwrap_or(c.owner);
                    Ok(Some(CommandResult {
                        lock: Some(Lock { owner, ..c }),
                        ..done(false)
                    }))
                }
                Ok(()) => {
                    let now: Vec<Held> = table
                        .locks(*ino)
                        .iter()
                        .filter_map(|l| {
                            back.get(&l.owner).map(|(s, o)| Held {
                                session: *s,
                                lock: Lock { owner: *o, ..*l },
                            })
                        })
                        .collect();
                    if now.is_empty() {
                        t.remove(*ino).map_err(w)?;
                    } else {
                        let v = serde_json::to_vec(&now).map_err(w)?;
                        t.insert(*ino, v.as_slice()).map_err(w)?;
                    }
                    Ok(Some(done(true)))
                }
            }
        }
        _ => Ok(None),
    }
}

/// What the state machine knows of a numbered request.
enum Remembered {
    /// Not seen: apply it.
    New,
    /// Applied before: this is the reply it got.
    Reply(Result<fsm::FsReply, fsm::Errno>),
    /// Below the session's floor: a late copy of an answered request.
    Stale,
}

/// Raises the session's floor to `done_below` (forgetting the replies
/// below it) and looks `req` up.
fn remembered(
    txn: &redb::WriteTransaction,
    session: u64,
    req: u64,
    done_below: u64,
) -> Result<Remembered, SErr> {
    let mut floors = txn.open_table(FS_FLOORS).map_err(w)?;
    let floor = floors.get(session).map_err(w)?.map_or(0, |v| v.value());
    let mut replies = txn.open_table(FS_REPLIES).map_err(w)?;
    if done_below > floor {
        floors.insert(session, done_below).map_err(w)?;
        replies
            .retain_in((session, floor)..(session, done_below), |_, _| false)
            .map_err(w)?;
    }
    if req < floor.max(done_below) {
        return Ok(Remembered::Stale);
    }
    let found = match replies.get((session, req)).map_err(w)? {
        None => Remembered::New,
        Some(v) => Remembered::Reply(serde_json::from_slice(v.value()).map_err(w)?),
    };
    Ok(found)
}

fn end_sessions(txn: &redb::WriteTransaction, sessions: &[u64]) -> Result<(), SErr> {
    if sessions.is_empty() {
        return Ok(());
    }
    {
        let mut floors = txn.open_table(FS_FLOORS).map_err(w)?;
        let mut replies = txn.open_table(FS_REPLIES).map_err(w)?;
        for id in sessions {
            floors.remove(*id).map_err(w)?;
            replies
                .retain_in((*id, 0)..=(*id, u64::MAX), |_, _| false)
                .map_err(w)?;
        }
    }
    let mut s = txn.open_table(FS_SESSIONS).map_err(w)?;
    for id in sessions {
        s.remove(*id).map_err(w)?;
    }
    let mut t = txn.open_table(FS_LOCKS).map_err(w)?;
    let mut rewrite = Vec::new();
    for item in t.iter().map_err(w)? {
        let (k, v) = item.map_err(w)?;
        let held: Vec<Held> = serde_json::from_slice(v.value()).map_err(w)?;
        if held.iter().any(|h| sessions.contains(&h.session)) {
            let keep: Vec<Held> = held
                .into_iter()
                .filter(|h| !sessions.contains(&h.session))
                .collect();
            rewrite.push((k.value(), keep));
        }
    }
    for (ino, keep) in rewrite {
        if keep.is_empty() {
            t.remove(ino).map_err(w)?;
        } else {
            let v = serde_json::to_vec(&keep).map_err(w)?;
            t.insert(ino, v.as_slice()).map_err(w)?;
        }
    }
    Ok(())
}

/// The names and inodes `op` changes, read before it is applied (an
/// unlink or rename must invalidate the inode the name pointed to).
fn touched(view: &impl FsRead, op: &FsOp) -> Result<Vec<Change>, fsm::StoreError> {
    let entry = |parent: u64, name: &[u8]| Change::Entry {
        parent,
        name: name.to_vec(),
    };
    let mut out = Vec::new();
    match op {
        FsOp::Mknod { parent, name, .. }
        | FsOp::Mkdir { parent, name, .. }
        | FsOp::Symlink { parent, name, .. } => {
            out.push(entry(*parent, name));
            out.push(Change::Inode(*parent));
        }
        FsOp::Link { ino, parent, name } => {
            out.push(entry(*parent, name));
            out.push(Change::Inode(*parent));
            out.push(Change::Inode(*ino));
        }
        FsOp::Unlink { parent, name } | FsOp::Rmdir { parent, name } => {
            out.push(entry(*parent, name));
            out.push(Change::Inode(*parent));
            if let Some(d) = view.dentry(*parent, name)? {
                out.push(Change::Inode(d.ino));
            }
        }
        FsOp::Rename {
            parent,
            name,
            new_parent,
            new_name,
            ..
        } => {
            for (p, n) in [(*parent, name), (*new_parent, new_name)] {
                out.push(entry(p, n));
                out.push(Change::Inode(p));
                if let Some(d) = view.dentry(p, n)? {
                    out.push(Change::Inode(d.ino));
                }
            }
        }
        FsOp::SetAttr { ino, .. }
        | FsOp::SetXattr { ino, .. }
        | FsOp::RemoveXattr { ino, .. }
        | FsOp::AppendSlices { ino, .. }
        | FsOp::ReplaceSlices { ino, .. }
        | FsOp::Purge { ino } => out.push(Change::Inode(*ino)),
    }
    Ok(out)
}

/// The filesystem part of a Raft snapshot.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct FsSnapshot {
    namespace: Dump,
    locks: Vec<(u64, Vec<u8>)>,
    sessions: Vec<(u64, u64)>,
    #[serde(default)]
    replies: Vec<((u64, u64), Vec<u8>)>,
    #[serde(default)]
    floors: Vec<(u64, u64)>,
}

/// Copies the filesystem tables out of `txn`.
pub(crate) fn snapshot(txn: &redb::ReadTransaction) -> Result<FsSnapshot, SErr> {
    let namespace = redb_store::dump(txn).map_err(r)?;
    let mut locks = Vec::new();
    for item in txn.open_table(FS_LOCKS).map_err(r)?.iter().map_err(r)? {
        let (k, v) = item.map_err(r)?;
        locks.push((k.value(), v.value().to_vec()));
    }
    let mut sessions = Vec::new();
    for item in txn.open_table(FS_SESSIONS).map_err(r)?.iter().map_err(r)? {
        let (k, v) = item.map_err(r)?;
        sessions.push((k.value(), v.value()));
    }
    let mut replies = Vec::new();
    for item in txn.open_table(FS_REPLIES).map_err(r)?.iter().map_err(r)? {
        let (k, v) = item.map_err(r)?;
        replies.push((k.value(), v.value().to_vec()));
    }
    let mut floors = Vec::new();
    for item in txn.open_table(FS_FLOORS).map_err(r)?.iter().map_err(r)? {
        let (k, v) = item.map_err(r)?;
        floors.push((k.value(), v.value()));
    }
    Ok(FsSnapshot {
        namespace,
        locks,
        sessions,
        replies,
        floors,
    })
}

/// Replaces the filesystem tables of `txn` by `s`.
pub(crate) fn install(txn: &redb::WriteTransaction, s: &FsSnapshot) -> Result<(), SErr> {
    redb_store::restore(txn, &s.namespace).map_err(w)?;
    let mut l = txn.open_table(FS_LOCKS).map_err(w)?;
    l.retain(|_, _| false).map_err(w)?;
    for (k, v) in &s.locks {
        l.insert(*k, v.as_slice()).map_err(w)?;
    }
    let mut t = txn.open_table(FS_SESSIONS).map_err(w)?;
    t.retain(|_, _| false).map_err(w)?;
    for (k, v) in &s.sessions {
        t.insert(*k, *v).map_err(w)?;
    }
    let mut t = txn.open_table(FS_REPLIES).map_err(w)?;
    t.retain(|_, _| false).map_err(w)?;
    for (k, v) in &s.replies {
        t.insert(*k, v.as_slice()).map_err(w)?;
    }
    let mut t = txn.open_table(FS_FLOORS).map_err(w)?;
    t.retain(|_, _| false).map_err(w)?;
    for (k, v) in &s.floors {
        t.insert(*k, *v).map_err(w)?;
    }
    Ok(())
}

/// The namespace as this node applied it (not linearizable by itself:
/// establish a read index first, see `Cluster::read_barrier`).
pub fn read_view(db: &redb::Database) -> Result<ReadView, fsm::StoreError> {
    use redb::ReadableDatabase;
    let txn = db
        .begin_read()
        .map_err(|e| fsm::StoreError::Db(e.to_string()))?;
    ReadView::new(&txn)
}

/// The first lock of another owner that conflicts with `req` (`F_GETLK`).
pub fn test_lock(
    db: &redb::Database,
    session: u64,
    ino: u64,
    req: &Lock,
) -> Result<Option<Lock>, String> {
    use redb::ReadableDatabase;
    let txn = db.begin_read().map_err(|e| e.to_string())?;
    let t = txn.open_table(FS_LOCKS).map_err(|e| e.to_string())?;
    let held = read_held(&t, ino)?;
    let (table, back) = table_of(&held, ino);
    let probe = Lock {
        owner: mix(session, req.owner),
        ..*req
    };
    Ok(table.test(ino, &probe).map(|c| Lock {
        owner: back.get(&c.owner).map(|(_, o)| *o).unwrap_or(c.owner),
        ..c
    }))
}

/// Sessions whose lease ended before `now_ms`.
pub fn expired_sessions(db: &redb::Database, now_ms: u64) -> Result<Vec<u64>, String> {
    use redb::ReadableDatabase;
    let txn = db.begin_read().map_err(|e| e.to_string())?;
    let t = txn.open_table(FS_SESSIONS).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for item in t.iter().map_err(|e| e.to_string())? {
        let (k, v) = item.map_err(|e| e.to_string())?;
        if v.value() < now_ms {
            out.push(k.value());
        }
    }
    Ok(out)
}

/// Every chunk id the namespace references (for garbage collection: a
/// chunk not in this list and older than the GC delay is garbage). Read
/// after a read barrier so a just-committed file is included; chunks are
/// written before the metadata that references them, so the collector
/// must also spare chunks younger than its delay.
pub fn referenced_chunks(db: &redb::Database) -> Result<Vec<ChunkId>, fsm::StoreError> {
    read_view(db)?.referenced_chunks()
}

/// Most changes kept for mounts that poll.
const EVENT_RING: usize = 8192;

/// Recently applied namespace changes, numbered, for mounts to poll.
#[derive(Debug)]
pub struct FsEvents {
    /// Random per process: a mount that sees it change starts over.
    pub id: u64,
    inner: Mutex<Ring>,
    notify: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct Ring {
    next: u64,
    items: VecDeque<(u64, u64, Change)>,
}

/// A batch of changes for one mount.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChangeBatch {
    /// [`FsEvents::id`] of the server.
    pub id: u64,
    /// Ask for changes after this next time.
    pub next: u64,
    /// Some changes were lost (the ring overflowed, or the server
    /// restarted): the mount must drop all its caches.
    pub lost: bool,
    /// The changes (other sessions' only).
    pub changes: Vec<Change>,
}

impl Default for FsEvents {
    fn default() -> Self {
        FsEvents {
            id: rand::random(),
            inner: Mutex::new(Ring::default()),
            notify: tokio::sync::Notify::new(),
        }
    }
}

impl FsEvents {
    pub(crate) fn publish(&self, changes: Vec<(u64, Change)>) {
        if changes.is_empty() {
            return;
        }
        {
            let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            for (origin, c) in changes {
                let n = g.next;
                g.next += 1;
                g.items.push_back((n, origin, c));
                if g.items.len() > EVENT_RING {
                    g.items.pop_front();
                }
            }
        }
        self.notify.notify_waiters();
    }

    fn collect(&self, id: u64, after: u64, session: u64, max: usize) -> Option<ChangeBatch> {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if id != self.id || after > g.next {
            return Some(ChangeBatch {
                id: self.id,
                next: g.next,
                lost: id != 0,
                changes: Vec::new(),
            });
        }
        if after == g.next {
            return None;
        }
        let oldest = g.items.front().map(|i| i.0).unwrap_or(g.next);
        let lost = after < oldest;
        let mut next = after.max(oldest);
        let mut changes = Vec::new();
        for (n, origin, c) in g.items.iter() {
            if *n < next {
                continue;
            }
            if changes.len() >= max {
                break;
            }
            next = n + 1;
            if *origin != session || session == 0 {
                changes.push(c.clone());
            }
        }
        Some(ChangeBatch {
            id: self.id,
            next,
            lost,
            changes,
        })
    }

    /// Changes after `after` that `session` did not make, waiting up to
    /// `wait` for some. `id` is the server id the mount saw last (0 at
    /// first: the answer is then empty and says where to start).
    pub async fn poll(
        &self,
        id: u64,
        after: u64,
        session: u64,
        wait: std::time::Duration,
    ) -> ChangeBatch {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.notify.notified();
            if let Some(b) = self.collect(id, after, session, 4096) {
                return b;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return ChangeBatch {
                    id: self.id,
                    next: after,
                    lost: false,
                    changes: Vec::new(),
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::MetaStore;
    use crate::fs::locks::LockKind;
    use crate::fs::{Ctx, FsReply, Slice, Time, ROOT_INO};
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftSnapshotBuilder};

    fn entry(index: u64, cmd: Command) -> Entry<super::super::types::TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(cmd),
        }
    }

    fn fs(op: FsOp, origin: u64) -> Command {
        numbered(op, origin, 0, 0)
    }

    fn numbered(op: FsOp, origin: u64, req: u64, done_below: u64) -> Command {
        Command::Fs {
            op,
            ctx: Ctx::root(Time::default()),
            origin,
            req,
            done_below,
        }
    }

    /// A retried request (same session and number) is applied once and
    /// gets the first reply, also after a snapshot; a late copy below the
    /// floor changes nothing; ending the session forgets it all.
    #[tokio::test]
    async fn retried_requests_apply_once() {
        let dir = tempfile::tempdir().unwrap();
        let meta = MetaStore::open(dir.path()).unwrap();
        let mut sm = meta.state_machine();
        let mk = |name: &[u8]| FsOp::Mkdir {
            parent: ROOT_INO,
            name: name.to_vec(),
            mode: 0o755,
        };
        let rename = FsOp::Rename {
            parent: ROOT_INO,
            name: b"a".to_vec(),
            new_parent: ROOT_INO,
            new_name: b"b".to_vec(),
            mode: crate::fs::RenameMode::Replace,
        };
        let r = sm
            .apply(vec![
                entry(
                    1,
                    Command::FsInit {
                        now: Time::default(),
                    },
                ),
                entry(2, numbered(mk(b"a"), 5, 1, 1)),
                // The retry of request 1: the first reply, not EEXIST.
                entry(3, numbered(mk(b"a"), 5, 1, 1)),
                entry(4, numbered(rename.clone(), 5, 2, 1)),
            ])
            .await
            .unwrap();
        let first = r[1].fs.clone().unwrap().unwrap();
        assert_eq!(r[2].fs, Some(Ok(first.clone())));
        assert!(r[3].fs.as_ref().unwrap().is_ok());
        // Another session's identical request is its own.
        let r = sm
            .apply(vec![entry(5, numbered(mk(b"b"), 6, 1, 1))])
            .await
            .unwrap();
        assert_eq!(r[0].fs, Some(Err(crate::fs::Errno::EEXIST)));
        // A snapshot keeps what was answered.
        let snap = sm.build_snapshot().await.unwrap();
        let other = tempfile::tempdir().unwrap();
        let copy = MetaStore::open(other.path()).unwrap();
        let mut sm2 = copy.state_machine();
        sm2.install_snapshot(&snap.meta, snap.snapshot)
            .await
            .unwrap();
        let r = sm2
            .apply(vec![
                entry(6, numbered(rename.clone(), 5, 2, 1)),
                // Request 3 says 1 and 2 were answered; a late copy of 2
                // is then stale and does nothing (`a` does not exist, but
                // a create of it must not happen either).
                entry(7, numbered(mk(b"c"), 5, 3, 3)),
                entry(8, numbered(mk(b"a"), 5, 1, 1)),
            ])
            .await
            .unwrap();
        assert!(r[0].fs.as_ref().unwrap().is_ok(), "{:?}", r[0]);
        assert!(r[2].fs.as_ref().unwrap().is_err() && !r[2].ok);
        let view = read_view(copy.db()).unwrap();
        assert!(view.dentry(ROOT_INO, b"a").unwrap().is_none());
        assert!(view.dentry(ROOT_INO, b"b").unwrap().is_some());
        drop(view);
        sm2.apply(vec![
            entry(9, Command::FsEndSession { session: 5 }),
            entry(10, Command::FsEndSession { session: 6 }),
        ])
        .await
        .unwrap();
        use redb::{ReadableDatabase, ReadableTableMetadata};
        let txn = copy.db().begin_read().unwrap();
        assert_eq!(txn.open_table(FS_REPLIES).unwrap().len().unwrap(), 0);
        assert_eq!(txn.open_table(FS_FLOORS).unwrap().len().unwrap(), 0);
    }

    fn lk(owner: u64, kind: LockKind) -> Lock {
        Lock {
            owner,
            start: 0,
            end: u64::MAX,
            kind,
            pid: 1,
        }
    }

    #[tokio::test]
    async fn namespace_ops_apply_in_raft_snapshot_and_publish_changes() {
        let dir = tempfile::tempdir().unwrap();
        let meta = MetaStore::open(dir.path()).unwrap();
        let mut sm = meta.state_machine();
        let chunk = ChunkId([7; 16]);
        let r = sm
            .apply(vec![
                entry(
                    1,
                    Command::FsInit {
                        now: Time::default(),
                    },
                ),
                entry(
                    2,
                    fs(
                        FsOp::Mknod {
                            parent: ROOT_INO,
                            name: b"f".to_vec(),
                            mode: 0o644,
                            rdev: 0,
                        },
                        9,
                    ),
                ),
                // EEXIST: an errno in the result, nothing changed.
                entry(
                    3,
                    fs(
                        FsOp::Mkdir {
                            parent: ROOT_INO,
                            name: b"f".to_vec(),
                            mode: 0o755,
                        },
                        9,
                    ),
                ),
            ])
            .await
            .unwrap();
        let created: &FsReply = r[1].fs.as_ref().unwrap().as_ref().unwrap();
        let ino = created.inode.as_ref().unwrap().ino;
        assert_eq!(r[2].fs, Some(Err(crate::fs::Errno::EEXIST)));
        sm.apply(vec![entry(
            4,
            fs(
                FsOp::AppendSlices {
                    ino,
                    slices: vec![Slice {
                        off: 0,
                        len: 10,
                        chunk,
                        chunk_off: 0,
                    }],
                    size: 10,
                    inline: Vec::new(),
                },
                9,
            ),
        )])
        .await
        .unwrap();
        assert_eq!(referenced_chunks(meta.db()).unwrap(), vec![chunk]);
        // Another session sees the changes; the origin does not.
        let ev = meta.fs_events();
        let first = ev.poll(0, 0, 1, std::time::Duration::ZERO).await;
        let b = ev.poll(first.id, 0, 1, std::time::Duration::ZERO).await;
        assert!(b.changes.contains(&Change::Entry {
            parent: ROOT_INO,
            name: b"f".to_vec()
        }));
        assert!(b.changes.contains(&Change::Inode(ino)));
        let own = ev.poll(first.id, 0, 9, std::time::Duration::ZERO).await;
        assert!(own.changes.is_empty() && own.next == b.next);

        // A snapshot carries the namespace to a fresh node.
        let snap = sm.build_snapshot().await.unwrap();
        let other = tempfile::tempdir().unwrap();
        let copy = MetaStore::open(other.path()).unwrap();
        copy.state_machine()
            .install_snapshot(&snap.meta, snap.snapshot)
            .await
            .unwrap();
        let view = read_view(copy.db()).unwrap();
        assert_eq!(view.dentry(ROOT_INO, b"f").unwrap().unwrap().ino, ino);
        assert_eq!(view.slices(ino).unwrap().len(), 1);
        assert_eq!(referenced_chunks(copy.db()).unwrap(), vec![chunk]);
    }

    #[tokio::test]
    async fn locks_exclude_across_sessions_and_expire_with_them() {
        let dir = tempfile::tempdir().unwrap();
        let meta = MetaStore::open(dir.path()).unwrap();
        let mut sm = meta.state_machine();
        let lock = |i, session, l| {
            entry(
                i,
                Command::FsLock {
                    session,
                    ino: 5,
                    lock: l,
                },
            )
        };
        let r = sm
            .apply(vec![
                // Unknown session: refused without a conflict.
                lock(1, 1, lk(1, LockKind::Write)),
                entry(
                    2,
                    Command::FsSession {
                        session: 1,
                        expires_ms: 1000,
                    },
                ),
                entry(
                    3,
                    Command::FsSession {
                        session: 2,
                        expires_ms: 5000,
                    },
                ),
                lock(4, 1, lk(1, LockKind::Write)),
                // Same kernel owner number on another mount: a conflict.
                lock(5, 2, lk(1, LockKind::Read)),
                // Session 1's lease ends: its lock goes.
                entry(6, Command::FsExpire { now_ms: 2000 }),
                lock(7, 2, lk(1, LockKind::Read)),
            ])
            .await
            .unwrap();
        assert!(!r[0].ok && r[0].lock.is_none());
        assert!(r[3].ok);
        assert!(!r[4].ok && r[4].lock.unwrap().owner == 1);
        assert!(r[6].ok);
        assert_eq!(
            test_lock(meta.db(), 3, 5, &lk(1, LockKind::Write))
                .unwrap()
                .map(|l| l.kind),
            Some(LockKind::Read)
        );
        assert_eq!(expired_sessions(meta.db(), 6000).unwrap(), vec![2]);
        sm.apply(vec![entry(8, Command::FsEndSession { session: 2 })])
            .await
            .unwrap();
        assert_eq!(
            test_lock(meta.db(), 3, 5, &lk(1, LockKind::Write)).unwrap(),
            None
        );
    }
}
