//! openraft's network over the cluster transport.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError as RaftRemote, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

use super::rpc::{self, CallError, Reply, Request};
use super::types::{NodeId, RaftNode, TypeConfig};
use crate::net::Transport;

/// Makes a [`PeerClient`] per Raft target.
#[derive(Clone)]
pub struct Network {
    /// Shared transport.
    pub transport: Arc<Transport>,
}

/// Raft's view of one peer.
pub struct PeerClient {
    transport: Arc<Transport>,
    target: NodeId,
    addr: Result<SocketAddr, String>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &RaftNode) -> PeerClient {
        PeerClient {
            transport: self.transport.clone(),
            target,
            addr: node
                .addr
                .parse()
                .map_err(|e| format!("bad address {:?} of node {target}: {e}", node.addr)),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Msg(String);

impl PeerClient {
    async fn send<E>(
        &self,
        req: Request,
        option: &RPCOption,
    ) -> Result<Reply, RPCError<NodeId, RaftNode, E>>
    where
        E: std::error::Error,
    {
        let addr = self
            .addr
            .clone()
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&Msg(e))))?;
        let timeout = option.hard_ttl().max(Duration::from_millis(100));
        match rpc::call(&self.transport, addr, &req, &[], timeout).await {
            Ok((reply, _)) => Ok(reply),
            Err(CallError::Net(e)) => Err(RPCError::Unreachable(Unreachable::new(&e))),
            Err(e) => Err(RPCError::Network(NetworkError::new(&e))),
        }
    }

    fn unexpected<E: std::error::Error>(&self, reply: Reply) -> RPCError<NodeId, RaftNode, E> {
        RPCError::Network(NetworkError::new(&Msg(format!(
            "node {} sent an unexpected reply {reply:?}",
            self.target
        ))))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, RaftNode, RaftError<NodeId>>> {
        match self.send(Request::AppendEntries(rpc), &option).await? {
            Reply::AppendEntries(r) => {
                r.map_err(|e| RPCError::RemoteError(RaftRemote::new(self.target, e)))
            }
            other => Err(self.unexpected(other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, RaftNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        match self.send(Request::InstallSnapshot(rpc), &option).await? {
            Reply::InstallSnapshot(r) => {
                r.map_err(|e| RPCError::RemoteError(RaftRemote::new(self.target, e)))
            }
            other => Err(self.unexpected(other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, RaftNode, RaftError<NodeId>>> {
        match self.send(Request::Vote(rpc), &option).await? {
            Reply::Vote(r) => r.map_err(|e| RPCError::RemoteError(RaftRemote::new(self.target, e))),
            other => Err(self.unexpected(other)),
        }
    }
}
