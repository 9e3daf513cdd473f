//! The typed messages nodes exchange over the transport. A request header
//! is a JSON [`Request`]; the reply header is a JSON `Result<Reply,
//! RemoteError>`. Chunk bytes travel in the frame body, never in JSON.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};

use super::types::{Command, CommandResult, NodeId, TypeConfig};
use crate::net::identity::JoinGrant;
use crate::net::wire::{self, WireError};
use crate::net::{NetError, Transport};
use crate::placement::ChunkId;

/// A request from one node (or the CLI) to another.
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    /// Liveness probe; answered with the node's id.
    Ping,
    /// Ask for a certificate (the only request served without one).
    Join {
        /// Token from `store join-token`.
        token: String,
        /// Node id the joiner chose.
        node_id: NodeId,
        /// Its certificate signing request.
        csr_pem: String,
    },
    /// Raft: replicate entries.
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    /// Raft: request a vote.
    Vote(VoteRequest<NodeId>),
    /// Raft: a snapshot chunk.
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// Apply a command through Raft (forwarded to the leader).
    Write {
        /// The command.
        command: Command,
        /// Forwards so far; a forwarded write is not forwarded again.
        hops: u8,
    },
    /// Leader: confirm leadership and return the read index.
    ReadIndex,
    /// Store a chunk (body = data).
    PutChunk {
        /// Id.
        id: ChunkId,
        /// crc32 of the body.
        crc: u32,
    },
    /// Read a chunk (reply body = data).
    GetChunk {
        /// Id.
        id: ChunkId,
    },
    /// Remove a chunk.
    DeleteChunk {
        /// Id.
        id: ChunkId,
    },
    /// Disk usage of the node's chunk directory.
    Usage,
    /// `/data`: a namespace read (see `cluster::fs_server`).
    FsRead {
        /// What to read.
        query: super::fs_server::FsQuery,
        /// Establish a read index first (linearizable).
        barrier: bool,
    },
    /// `/data`: namespace changes other mounts made after `after`
    /// (long poll, up to [`super::fs_server::WATCH_WAIT`]).
    FsWatch {
        /// Server event id seen last (0 at first).
        id: u64,
        /// Sequence number to continue from.
        after: u64,
        /// The polling mount's session (its own changes are skipped).
        session: u64,
    },
    /// `/data`: store a new chunk on `min_size`+ replicas (body = data).
    FsPutChunk,
    /// `/data`: read a chunk from any good replica (reply body = data).
    FsGetChunk {
        /// Id.
        id: ChunkId,
    },
    /// `/data`: delete a chunk from its replicas.
    FsDeleteChunk {
        /// Id.
        id: ChunkId,
    },
}

impl Request {
    /// Short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Ping => "ping",
            Request::Join { .. } => "join",
            Request::AppendEntries(_) => "append_entries",
            Request::Vote(_) => "vote",
            Request::InstallSnapshot(_) => "install_snapshot",
            Request::Write { .. } => "write",
            Request::ReadIndex => "read_index",
            Request::PutChunk { .. } => "put_chunk",
            Request::GetChunk { .. } => "get_chunk",
            Request::DeleteChunk { .. } => "delete_chunk",
            Request::Usage => "usage",
            Request::FsRead { .. } => "fs_read",
            Request::FsWatch { .. } => "fs_watch",
            Request::FsPutChunk => "fs_put_chunk",
            Request::FsGetChunk { .. } => "fs_get_chunk",
            Request::FsDeleteChunk { .. } => "fs_delete_chunk",
        }
    }
}

/// A successful reply.
#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    /// To [`Request::Ping`].
    Pong {
        /// Responder's node id.
        node_id: NodeId,
    },
    /// To [`Request::Join`].
    Joined(Box<JoinGrant>),
    /// To [`Request::AppendEntries`].
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    /// To [`Request::Vote`].
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    /// To [`Request::InstallSnapshot`].
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    /// To [`Request::Write`].
    Written(CommandResult),
    /// To [`Request::ReadIndex`]: the log index to wait for.
    ReadIndex(u64),
    /// Chunk stored / deleted.
    Done,
    /// To [`Request::GetChunk`] (body = data).
    Chunk {
        /// crc32 of the body.
        crc: u32,
    },
    /// To [`Request::Usage`].
    Usage(crate::chunk::Usage),
    /// To [`Request::FsRead`]: the value or the errno.
    FsRead(Result<super::fs_server::FsValue, crate::fs::Errno>),
    /// To [`Request::FsWatch`].
    FsChanges(super::fs_state::ChangeBatch),
    /// To [`Request::FsPutChunk`].
    FsChunkStored {
        /// The new chunk's id.
        id: ChunkId,
    },
}

/// Why a request failed on the remote side.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
pub enum RemoteError {
    /// The peer has no valid cluster certificate.
    #[error("refused: this request needs a certificate signed by the cluster CA")]
    Unauthenticated,
    /// Join refused (bad token...).
    #[error("join refused: {0}")]
    JoinRefused(String),
    /// The remote is not the leader; try this one.
    #[error("not the leader (leader is {leader:?})")]
    NotLeader {
        /// Known leader's address.
        leader: Option<SocketAddr>,
    },
    /// No chunk with that id there.
    #[error("chunk not found")]
    NotFound,
    /// Stored copy failed its checksum.
    #[error("corrupt copy: {0}")]
    Corrupt(String),
    /// The remote's disk is full.
    #[error("{0}")]
    NoSpace(String),
    /// The request could not be decoded.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// A request failed: on the way, or on the remote.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Transport-level failure.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The reply did not decode.
    #[error("reply from {addr}: {source}")]
    Decode {
        /// Peer.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: WireError,
    },
    /// The remote refused or failed.
    #[error("{addr}: {source}")]
    Remote {
        /// Peer.
        addr: SocketAddr,
        /// Its error.
        #[source]
        source: RemoteError,
    },
}

/// Sends `req` (with `body`) to `addr` and decodes the reply.
pub async fn call(
    transport: &Arc<Transport>,
    addr: SocketAddr,
    req: &Request,
    body: &[u8],
    timeout: Duration,
) -> Result<(Reply, Bytes), CallError> {
    call_bytes(transport, addr, req, Bytes::copy_from_slice(body), timeout).await
}

/// [`call`] with an owned body, sent without a copy (chunk data).
pub async fn call_bytes(
    transport: &Arc<Transport>,
    addr: SocketAddr,
    req: &Request,
    body: Bytes,
    timeout: Duration,
) -> Result<(Reply, Bytes), CallError> {
    let header = wire::to_header(req).map_err(|source| CallError::Decode { addr, source })?;
    let frame = transport.call_bytes(addr, &header, body, timeout).await?;
    let reply: Result<Reply, RemoteError> =
        wire::from_header(&frame.header).map_err(|source| CallError::Decode { addr, source })?;
    match reply {
        Ok(r) => Ok((r, frame.body)),
        Err(source) => Err(CallError::Remote { addr, source }),
    }
}

/// Encodes a reply header (never fails in practice; falls back to an error
/// reply if serialization somehow does).
pub fn encode_reply(reply: &Result<Reply, RemoteError>) -> Vec<u8> {
    wire::to_header(reply).unwrap_or_else(|e| {
        wire::to_header(&Err::<Reply, _>(RemoteError::Other(e.to_string()))).unwrap_or_default()
    })
}
