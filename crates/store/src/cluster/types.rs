//! Types of the metadata group: the Raft type configuration, the commands
//! the state machine applies, and the cluster map entries.
//!
//! The state machine holds two things:
//!
//! * the **cluster map**: one [`NodeInfo`] per node (address, failure
//!   domain, weight, in/out), with an epoch bumped on every change;
//! * the **namespace**: an ordered map of string keys to string values
//!   (serialized documents), changed only by atomic [`Command::Txn`]s.
//!   The object API stores `o/<bucket>/<key>` → object metadata; the
//!   filesystem will store inodes and directory entries under its own
//!   prefixes. A transaction checks any number of keys (present with a given
//!   value, or absent) and applies all its operations only if every check
//!   holds, so compare-and-swap, create-if-absent and atomic rename are all
//!   one command.

use std::io::Cursor;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Raft node id (random, fixed at join; see `net::identity`).
pub type NodeId = u64;

/// What Raft knows of a node: where to reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftNode {
    /// QUIC address.
    pub addr: String,
}

openraft::declare_raft_types!(
    /// Raft types of the metadata group.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = NodeId,
        Node = RaftNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The Raft handle of the metadata group.
pub type Raft = openraft::Raft<TypeConfig>;

/// One node of the cluster map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Node id.
    pub id: NodeId,
    /// QUIC address peers use.
    pub addr: SocketAddr,
    /// Admin HTTP address (object API, status).
    pub admin: SocketAddr,
    /// Failure domain (host name by default).
    pub domain: String,
    /// Placement weight (capacity in GiB by default, at least 1).
    pub weight: u64,
    /// "in": holds data. An "out" node keeps its vote but gets no chunks.
    pub is_in: bool,
}

/// A check a transaction makes before applying.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// Key checked.
    pub key: String,
    /// Required value; `None` requires the key to be absent.
    pub value: Option<String>,
}

/// One operation of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Set `key` to `value`.
    Put {
        /// Key.
        key: String,
        /// New value.
        value: String,
    },
    /// Remove `key` (no error when absent).
    Delete {
        /// Key.
        key: String,
    },
}

impl Op {
    /// The key this operation touches.
    pub fn key(&self) -> &str {
        match self {
            Op::Put { key, .. } | Op::Delete { key } => key,
        }
    }
}

/// A command of the replicated log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Atomic namespace transaction.
    Txn {
        /// All must hold, or nothing is applied.
        checks: Vec<Check>,
        /// Applied in order.
        ops: Vec<Op>,
    },
    /// Adds or updates a node of the map.
    UpsertNode(NodeInfo),
    /// Removes a node from the map.
    RemoveNode(NodeId),
    /// Creates the root directory of `/data` if it does not exist yet
    /// (idempotent; every mount sends it once at start).
    FsInit {
        /// Time stamps of the root.
        now: crate::fs::Time,
    },
    /// A namespace operation of `/data`, applied with [`crate::fs::apply`]
    /// in the state machine's transaction. The result is in
    /// [`CommandResult::fs`].
    Fs {
        /// The operation.
        op: crate::fs::FsOp,
        /// Who does it, and when (the only clock the state machine sees).
        ctx: crate::fs::Ctx,
        /// Session of the mount that sent it (0: none); its own change
        /// notifications are not sent back to it.
        #[serde(default)]
        origin: u64,
        /// Number of this request in its session (0: not numbered). A
        /// mount retries a request whose answer it lost (leader change,
        /// connection loss) with the same number; the state machine
        /// applies it once and answers the retry with the remembered
        /// reply.
        #[serde(default)]
        req: u64,
        /// Every request of the session numbered below this has been
        /// answered: their remembered replies can go, and a late copy of
        /// one of them (a retry still in flight) is ignored.
        #[serde(default)]
        done_below: u64,
    },
    /// Opens or renews a mount's lock session until `expires_ms` (Unix
    /// ms, by the clock of the node that sent it).
    FsSession {
        /// Session id (random per mount).
        session: u64,
        /// Lease end.
        expires_ms: u64,
    },
    /// Ends a session and drops its locks (clean unmount).
    FsEndSession {
        /// Session id.
        session: u64,
    },
    /// Ends every session whose lease ended before `now_ms` and drops its
    /// locks (sent by the leader).
    FsExpire {
        /// The leader's clock, Unix ms.
        now_ms: u64,
    },
    /// Sets or releases a file lock (flock / POSIX byte range) for a
    /// session. `ok == false` with [`CommandResult::lock`] on conflict.
    FsLock {
        /// Session of the mount.
        session: u64,
        /// File.
        ino: u64,
        /// The request (owner is the kernel's lock owner on that mount).
        lock: crate::fs::locks::Lock,
    },
}

/// Result of applying a [`Command`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResult {
    /// Whether a transaction's checks held (always true for other commands).
    pub ok: bool,
    /// For transactions: the previous value of each operation's key, in
    /// order (the caller frees what an overwrite or delete released).
    pub previous: Vec<Option<String>>,
    /// Map epoch after this command.
    pub epoch: u64,
    /// For [`Command::Fs`]: the reply or the errno.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs: Option<Result<crate::fs::FsReply, crate::fs::Errno>>,
    /// For [`Command::FsLock`] with `ok == false`: the conflicting lock;
    /// `None` then means the session is unknown (expired): `ENOLCK`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock: Option<crate::fs::locks::Lock>,
}
