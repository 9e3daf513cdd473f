//! POSIX byte-range locks (and `flock`, which the kernel sends as a lock of
//! the whole file owned by the open file) as a pure table, plus the
//! [`Locks`] service the FUSE client calls.
//!
//! The table is deterministic and has no I/O, so the cluster can keep it in
//! its replicated state (owners are then `(node, lock owner)` pairs) and
//! locks exclude each other across nodes; the local backend keeps it in
//! memory ([`LocalLocks`]).

use std::collections::HashMap;
use std::sync::Mutex;

use super::Errno;

/// Kind of a lock request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum LockKind {
    /// Shared (`F_RDLCK`).
    Read,
    /// Exclusive (`F_WRLCK`).
    Write,
    /// Release (`F_UNLCK`).
    Unlock,
}

impl LockKind {
    /// From `F_RDLCK` / `F_WRLCK` / `F_UNLCK`.
    pub fn from_fcntl(typ: i32) -> Option<Self> {
        match typ {
            libc::F_RDLCK => Some(LockKind::Read),
            libc::F_WRLCK => Some(LockKind::Write),
            libc::F_UNLCK => Some(LockKind::Unlock),
            _ => None,
        }
    }

    /// To `F_RDLCK` / `F_WRLCK` / `F_UNLCK`.
    pub fn to_fcntl(self) -> i32 {
        match self {
            LockKind::Read => libc::F_RDLCK,
            LockKind::Write => libc::F_WRLCK,
            LockKind::Unlock => libc::F_UNLCK,
        }
    }
}

/// One lock (or request): `owner` holds bytes `start..=end` of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Lock {
    /// Lock owner (the kernel's id of the process's file table or open file).
    pub owner: u64,
    /// First byte.
    pub start: u64,
    /// Last byte, inclusive (`u64::MAX`: to the end of any file).
    pub end: u64,
    /// Read, write, or (in requests) unlock.
    pub kind: LockKind,
    /// Process id to report to `F_GETLK`.
    pub pid: u32,
}

impl Lock {
    fn overlaps(&self, other: &Lock) -> bool {
        self.start <= other.end && other.start <= self.end
    }

    fn conflicts(&self, other: &Lock) -> bool {
        self.owner != other.owner
            && self.overlaps(other)
            && (self.kind == LockKind::Write || other.kind == LockKind::Write)
    }
}

/// The locks held on every file.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct LockTable {
    files: HashMap<u64, Vec<Lock>>,
}

impl LockTable {
    /// The first lock that conflicts with `req` on `ino` (`F_GETLK`).
    pub fn test(&self, ino: u64, req: &Lock) -> Option<Lock> {
        if req.kind == LockKind::Unlock {
            return None;
        }
        self.files
            .get(&ino)?
            .iter()
            .find(|l| l.conflicts(req))
            .copied()
    }

    /// Sets or releases `req` (`F_SETLK`): on conflict nothing changes and
    /// the conflicting lock is returned. A new lock replaces the owner's
    /// own locks on the range (upgrades, downgrades, splits).
    pub fn set(&mut self, ino: u64, req: Lock) -> Result<(), Lock> {
        if let Some(c) = self.test(ino, &req) {
            return Err(c);
        }
        let locks = self.files.entry(ino).or_default();
        let mut kept = Vec::with_capacity(locks.len() + 2);
        for l in locks.drain(..) {
            if l.owner != req.owner || !l.overlaps(&req) {
                kept.push(l);
                continue;
            }
            if l.start < req.start {
                kept.push(Lock {
                    end: req.start - 1,
                    ..l
                });
            }
            if l.end > req.end {
                kept.push(Lock {
                    start: req.end + 1,
                    ..l
                });
            }
        }
        if req.kind != LockKind::Unlock {
            kept.push(req);
        }
        if kept.is_empty() {
            self.files.remove(&ino);
        } else {
            *locks = kept;
        }
        Ok(())
    }

    /// The locks held on `ino`.
    pub fn locks(&self, ino: u64) -> &[Lock] {
        self.files
            .get(&ino)
            .map(|v| v.as_slice())
            .unwrap_or_default()
    }

    /// Drops every lock of `owner` on `ino`.
    pub fn release_owner(&mut self, ino: u64, owner: u64) {
        if let Some(locks) = self.files.get_mut(&ino) {
            locks.retain(|l| l.owner != owner);
            if locks.is_empty() {
                self.files.remove(&ino);
            }
        }
    }
}

/// Called once a blocking lock request is decided.
pub type LockWaiter = Box<dyn FnOnce(Result<(), Errno>) + Send>;

/// File locks as the client uses them. `set` with `wait` must not block
/// the calling thread: it answers through `done`, possibly later, from
/// another thread (FUSE worker threads would otherwise all end up waiting
/// and nobody could serve the unlock).
pub trait Locks: Send + Sync + 'static {
    /// The conflicting lock, if any (`F_GETLK`).
    fn test(&self, ino: u64, req: &Lock) -> Result<Option<Lock>, Errno>;
    /// Sets or releases a lock; with `wait`, waits for conflicts to go.
    /// `done` gets `Ok`, `EAGAIN` (conflict, not waiting), `ENOLCK` (too
    /// many waiters) or `EINTR` (the owner unlocked or closed meanwhile).
    fn set(&self, ino: u64, req: Lock, wait: bool, done: LockWaiter);
}

/// Most lock requests waiting at once.
const MAX_WAITERS: usize = 1024;

/// [`Locks`] in memory: exclusion between processes of this mount only.
#[derive(Default)]
pub struct LocalLocks {
    inner: Mutex<LocalInner>,
}

#[derive(Default)]
struct LocalInner {
    table: LockTable,
    waiters: Vec<(u64, Lock, LockWaiter)>,
}

impl LocalLocks {
    /// An empty lock table.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Locks for LocalLocks {
    fn test(&self, ino: u64, req: &Lock) -> Result<Option<Lock>, Errno> {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        Ok(g.table.test(ino, req))
    }

    fn set(&self, ino: u64, req: Lock, wait: bool, done: LockWaiter) {
        let mut ready: Vec<(LockWaiter, Result<(), Errno>)> = Vec::new();
        {
            let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            match g.table.set(ino, req) {
                Ok(()) => {
                    ready.push((done, Ok(())));
                    if req.kind == LockKind::Unlock {
                        // An owner releasing a range may be a closing
                        // process: its own waiting requests are void.
                        let (gone, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut g.waiters)
                            .into_iter()
                            .partition(|(i, l, _)| *i == ino && l.owner == req.owner);
                        g.waiters = keep;
                        ready.extend(
                            gone.into_iter()
                                .map(|(_, _, d)| (d, Err(Errno(libc::EINTR)))),
                        );
                    }
                    // Grant waiters that no longer conflict, in arrival order.
                    let waiters = std::mem::take(&mut g.waiters);
                    for (i, l, d) in waiters {
                        if i == ino && g.table.set(i, l).is_ok() {
                            ready.push((d, Ok(())));
                        } else {
                            g.waiters.push((i, l, d));
                        }
                    }
                }
                Err(_) if !wait => ready.push((done, Err(Errno::EAGAIN))),
                Err(_) if g.waiters.len() >= MAX_WAITERS => {
                    ready.push((done, Err(Errno(libc::ENOLCK))))
                }
                Err(_) => g.waiters.push((ino, req, done)),
            }
        }
        for (d, r) in ready {
            d(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::mpsc;

    fn lk(owner: u64, start: u64, end: u64, kind: LockKind) -> Lock {
        Lock {
            owner,
            start,
            end,
            kind,
            pid: owner as u32,
        }
    }

    /// Model: per owner, the lock kind on each of 32 bytes.
    #[derive(Default, Clone)]
    struct Model(HashMap<u64, [Option<LockKind>; 32]>);

    impl Model {
        fn conflict(&self, r: &Lock) -> bool {
            r.kind != LockKind::Unlock
                && self.0.iter().any(|(o, bytes)| {
                    *o != r.owner
                        && (r.start..=r.end.min(31)).any(|b| match bytes[b as usize] {
                            Some(k) => k == LockKind::Write || r.kind == LockKind::Write,
                            None => false,
                        })
                })
        }

        fn set(&mut self, r: &Lock) -> bool {
            if self.conflict(r) {
                return false;
            }
            let bytes = self.0.entry(r.owner).or_insert([None; 32]);
            for b in r.start..=r.end.min(31) {
                bytes[b as usize] = (r.kind != LockKind::Unlock).then_some(r.kind);
            }
            true
        }
    }

    fn arb_lock() -> impl Strategy<Value = Lock> {
        (0u64..3, 0u64..32, 0u64..8, 0usize..3).prop_map(|(o, s, len, k)| {
            let kind = [LockKind::Read, LockKind::Write, LockKind::Unlock][k];
            lk(o, s, (s + len).min(31), kind)
        })
    }

    proptest! {
        #[test]
        fn table_agrees_with_byte_model(reqs in prop::collection::vec(arb_lock(), 1..60)) {
            let mut t = LockTable::default();
            let mut m = Model::default();
            for r in &reqs {
                let want = m.set(r);
                prop_assert_eq!(t.set(7, *r).is_ok(), want, "{:?}", r);
                // Every probe agrees too.
                for probe in [lk(9, 0, 31, LockKind::Read), lk(9, 0, 31, LockKind::Write), lk(0, 5, 9, LockKind::Write)] {
                    prop_assert_eq!(t.test(7, &probe).is_some(), m.conflict(&probe));
                }
            }
        }
    }

    #[test]
    fn waiters_are_granted_on_unlock_and_voided_when_their_owner_unlocks() {
        let locks = LocalLocks::new();
        let (tx, rx) = mpsc::channel();
        let cb = |tag: &'static str| {
            let tx = tx.clone();
            Box::new(move |r: Result<(), Errno>| {
                let _ = tx.send((tag, r));
            }) as LockWaiter
        };
        locks.set(1, lk(1, 0, u64::MAX, LockKind::Write), false, cb("a"));
        assert_eq!(rx.recv().unwrap(), ("a", Ok(())));
        locks.set(1, lk(2, 0, 10, LockKind::Read), false, cb("b"));
        assert_eq!(rx.recv().unwrap(), ("b", Err(Errno::EAGAIN)));
        locks.set(1, lk(2, 0, 10, LockKind::Read), true, cb("c"));
        locks.set(1, lk(3, 5, 5, LockKind::Write), true, cb("d"));
        assert!(rx.try_recv().is_err(), "both wait");
        // Owner 3 gives up (closes): its waiter is voided.
        locks.set(1, lk(3, 0, u64::MAX, LockKind::Unlock), false, cb("e"));
        assert_eq!(rx.recv().unwrap(), ("e", Ok(())));
        assert_eq!(rx.recv().unwrap(), ("d", Err(Errno(libc::EINTR))));
        // Owner 1 unlocks: owner 2's read lock is granted.
        locks.set(1, lk(1, 0, u64::MAX, LockKind::Unlock), false, cb("f"));
        assert_eq!(rx.recv().unwrap(), ("f", Ok(())));
        assert_eq!(rx.recv().unwrap(), ("c", Ok(())));
        let held = locks.test(1, &lk(4, 0, 0, LockKind::Write)).unwrap();
        assert_eq!(held.map(|l| l.owner), Some(2));
    }
}
