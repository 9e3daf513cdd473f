//! The cluster: membership, the cluster map and the Raft metadata group.
//!
//! Internal API used by the layers above (chunk replication, object API,
//! and next the filesystem):
//!
//! * [`Cluster::write`] applies a [`Command`] through Raft from any node:
//!   it runs on the leader or is forwarded to it (one hop), retried while
//!   an election is running, and fails with [`ClusterError::NoQuorum`] when
//!   no leader can commit within the write timeout.
//! * [`Cluster::read_barrier`] makes the next local read linearizable: the
//!   leader confirms its leadership with a quorum (read index) and this node
//!   waits until it has applied up to that index. Then read locally with
//!   [`MetaStore::get`] / [`MetaStore::list`] through [`Cluster::meta`].
//! * [`Cluster::nodes`] / [`Cluster::is_up`] give the cluster map and
//!   liveness (heartbeats every second, down after [`DOWN_AFTER`]).
//!
//! Membership: the leader's reconciler adds every node of the map as a Raft
//! learner and promotes learners to voters up to 3 (5 once the map has 5+
//! nodes). A node joins by getting a certificate (`Request::Join`, token
//! checked) and then writing `Command::UpsertNode` with its own entry.

pub mod fs_server;
pub mod fs_state;
pub mod network;
pub mod rpc;
pub mod storage;
pub mod types;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, Config, ServerState, SnapshotPolicy};
use serde::Serialize;

use crate::net::{Identity, Transport};
use rpc::{CallError, RemoteError, Reply, Request};
pub use storage::MetaStore;
pub use types::{Check, Command, CommandResult, NodeId, NodeInfo, Op, Raft, RaftNode};

/// How long a write may wait for a leader to commit it.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default of `--down-after`: a node not heard from for this long is down.
pub const DOWN_AFTER: Duration = Duration::from_secs(5);
const HEARTBEAT: Duration = Duration::from_secs(1);
/// Time a heartbeat may take (generous: a loaded node is not a dead one).
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// Errors of cluster operations.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No leader could commit in time.
    #[error("no quorum: the metadata group has no leader that can commit ({0}); check that a majority of voters is up and reachable")]
    NoQuorum(String),
    /// The metadata database failed.
    #[error(transparent)]
    Meta(#[from] storage::MetaError),
    /// Raft stopped (shutting down, or a fatal storage error).
    #[error("metadata group stopped: {0}")]
    Fatal(String),
    /// Setting up Raft failed.
    #[error("starting the metadata group: {0}")]
    Start(String),
}

/// Raft timing and compaction settings.
#[derive(Debug, Clone)]
pub struct RaftSettings {
    /// Heartbeat interval (ms).
    pub heartbeat_ms: u64,
    /// Election timeout lower bound (ms); upper bound is twice this.
    pub election_ms: u64,
    /// Build a snapshot (and purge the log) every this many entries.
    pub snapshot_every: u64,
    /// A voter down this long is replaced by an up-to-date learner.
    pub voter_grace: Duration,
    /// A node not heard from for this long is down (`--down-after`).
    pub down_after: Duration,
}

impl Default for RaftSettings {
    fn default() -> Self {
        Self {
            heartbeat_ms: 200,
            election_ms: 1000,
            snapshot_every: 1000,
            voter_grace: Duration::from_secs(60),
            down_after: DOWN_AFTER,
        }
    }
}

/// One node's handle on the cluster.
pub struct Cluster {
    /// Our identity (node id, settings, CA).
    pub identity: Arc<Identity>,
    /// Our map entry.
    pub me: NodeInfo,
    /// Raft handle.
    pub raft: Raft,
    /// Transport to peers.
    pub transport: Arc<Transport>,
    meta: MetaStore,
    last_seen: Mutex<HashMap<NodeId, Instant>>,
    started: Instant,
    voter_grace: Duration,
    down_after: Duration,
}

/// What `store status` shows about the metadata group.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct RaftStatus {
    /// This node's role.
    pub role: String,
    /// Current leader id.
    pub leader: Option<NodeId>,
    /// Current term.
    pub term: u64,
    /// Last log index.
    pub last_log_index: Option<u64>,
    /// Last applied index.
    pub applied_index: Option<u64>,
    /// Voter ids.
    pub voters: Vec<NodeId>,
    /// Learner ids.
    pub learners: Vec<NodeId>,
    /// Index of the last snapshot.
    pub snapshot_index: Option<u64>,
}

impl Cluster {
    /// Starts the Raft node over `meta` and `transport`. Founding nodes
    /// (`found`) initialise a one-voter group if none exists yet.
    pub async fn start(
        identity: Arc<Identity>,
        me: NodeInfo,
        meta: MetaStore,
        transport: Arc<Transport>,
        settings: &RaftSettings,
        found: bool,
    ) -> Result<Arc<Self>, ClusterError> {
        let config = Config {
            cluster_name: identity.settings.cluster_id.clone(),
            heartbeat_interval: settings.heartbeat_ms,
            election_timeout_min: settings.election_ms,
            election_timeout_max: settings.election_ms * 2,
            install_snapshot_timeout: 5000,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(settings.snapshot_every),
            max_in_snapshot_log_to_keep: settings.snapshot_every / 2,
            snapshot_max_chunk_size: 1 << 20,
            ..Default::default()
        }
        .validate()
        .map_err(|e| ClusterError::Start(e.to_string()))?;
        let raft = Raft::new(
            me.id,
            Arc::new(config),
            network::Network {
                transport: transport.clone(),
            },
            meta.log_store(),
            meta.state_machine(),
        )
        .await
        .map_err(|e| ClusterError::Start(e.to_string()))?;
        if found
            && !raft
                .is_initialized()
                .await
                .map_err(|e| ClusterError::Fatal(e.to_string()))?
        {
            let mut members = BTreeMap::new();
            members.insert(
                me.id,
                RaftNode {
                    addr: me.addr.to_string(),
                },
            );
            raft.initialize(members)
                .await
                .map_err(|e| ClusterError::Start(e.to_string()))?;
            tracing::info!(node = me.id, "founded the metadata group");
        }
        Ok(Arc::new(Self {
            identity,
            me,
            raft,
            transport,
            meta,
            last_seen: Mutex::new(HashMap::new()),
            started: Instant::now(),
            voter_grace: settings.voter_grace,
            down_after: settings.down_after,
        }))
    }

    /// Local metadata store (read after [`Cluster::read_barrier`] for
    /// linearizable reads).
    pub fn meta(&self) -> &MetaStore {
        &self.meta
    }

    /// The cluster map (local copy) and its epoch.
    pub fn nodes(&self) -> (Vec<NodeInfo>, u64) {
        self.meta.nodes().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "reading the cluster map");
            (Vec::new(), 0)
        })
    }

    /// Whether node `id` answered a heartbeat recently. Right after start,
    /// before the first heartbeats are back, every node counts as up.
    pub fn is_up(&self, id: NodeId) -> bool {
        if id == self.me.id {
            return true;
        }
        self.down_for(id) < self.down_after
    }

    /// How long node `id` has not answered (since start if never).
    pub fn down_for(&self, id: NodeId) -> Duration {
        if id == self.me.id {
            return Duration::ZERO;
        }
        let seen = self.last_seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.get(&id)
            .map(|t| t.elapsed())
            .unwrap_or_else(|| self.started.elapsed())
    }

    /// Records that node `id` answered (heartbeat or any other request).
    pub fn mark_seen(&self, id: NodeId) {
        let mut seen = self.last_seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.insert(id, Instant::now());
    }

    /// Address of the current leader, if known and not us.
    fn leader(&self) -> (Option<NodeId>, Option<SocketAddr>) {
        let m = self.raft.metrics().borrow().clone();
        let Some(leader) = m.current_leader else {
            return (None, None);
        };
        let addr = m
            .membership_config
            .membership()
            .get_node(&leader)
            .and_then(|n| n.addr.parse().ok());
        (Some(leader), addr)
    }

    /// Applies `cmd` through Raft from any node (see module docs).
    pub async fn write(&self, cmd: Command) -> Result<CommandResult, ClusterError> {
        self.write_with_hops(cmd, 0).await
    }

    /// Like [`Cluster::write`]; `hops` counts forwards so far (max 1).
    pub async fn write_with_hops(
        &self,
        cmd: Command,
        hops: u8,
    ) -> Result<CommandResult, ClusterError> {
        let deadline = Instant::now() + WRITE_TIMEOUT;
        let mut last_problem = "no leader elected yet".to_string();
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(ClusterError::NoQuorum(last_problem));
            }
            match self.leader() {
                (Some(l), _) if l == self.me.id => {
                    match tokio::time::timeout(remaining, self.raft.client_write(cmd.clone())).await
                    {
                        Ok(Ok(resp)) => return Ok(resp.data),
                        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
                            last_problem = "leadership moved during the write".into();
                        }
                        Ok(Err(RaftError::APIError(e))) => last_problem = e.to_string(),
                        Ok(Err(RaftError::Fatal(e))) => {
                            return Err(ClusterError::Fatal(e.to_string()))
                        }
                        Err(_) => {
                            return Err(ClusterError::NoQuorum(
                                "the leader could not reach a majority in time".into(),
                            ))
                        }
                    }
                }
                (Some(l), Some(addr)) if hops == 0 => {
                    let req = Request::Write {
                        command: cmd.clone(),
                        hops: hops + 1,
                    };
                    let t = remaining.min(WRITE_TIMEOUT);
                    match rpc::call(&self.transport, addr, &req, &[], t).await {
                        Ok((Reply::Written(r), _)) => return Ok(r),
                        Ok((other, _)) => last_problem = format!("unexpected reply {other:?}"),
                        Err(e) => last_problem = format!("forwarding to leader {l}: {e}"),
                    }
                }
                (Some(l), _) => {
                    last_problem =
                        format!("leader {l} is elsewhere and this request was already forwarded");
                    if hops > 0 {
                        return Err(ClusterError::NoQuorum(last_problem));
                    }
                }
                (None, _) => {}
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// On the leader: confirms leadership with a quorum and returns the
    /// index reads must wait for.
    pub async fn read_index(&self) -> Result<u64, RemoteError> {
        match tokio::time::timeout(WRITE_TIMEOUT, self.raft.ensure_linearizable()).await {
            Ok(Ok(log_id)) => Ok(log_id.map(|l| l.index).unwrap_or(0)),
            Ok(Err(_)) => Err(RemoteError::NotLeader {
                leader: self.leader().1,
            }),
            Err(_) => Err(RemoteError::Other(
                "leader could not confirm its leadership with a majority".into(),
            )),
        }
    }

    /// Makes the following local reads linearizable (read index).
    pub async fn read_barrier(&self) -> Result<(), ClusterError> {
        let deadline = Instant::now() + WRITE_TIMEOUT;
        let mut last_problem = "no leader elected yet".to_string();
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(ClusterError::NoQuorum(last_problem));
            }
            let index = match self.leader() {
                (Some(l), _) if l == self.me.id => match self.read_index().await {
                    Ok(i) => Some(i),
                    Err(e) => {
                        last_problem = e.to_string();
                        None
                    }
                },
                (Some(l), Some(addr)) => {
                    match rpc::call(&self.transport, addr, &Request::ReadIndex, &[], remaining)
                        .await
                    {
                        Ok((Reply::ReadIndex(i), _)) => Some(i),
                        Ok((other, _)) => {
                            last_problem = format!("unexpected reply {other:?}");
                            None
                        }
                        Err(e) => {
                            last_problem = format!("asking leader {l} for a read index: {e}");
                            None
                        }
                    }
                }
                _ => None,
            };
            if let Some(index) = index {
                let remaining = deadline.saturating_duration_since(Instant::now());
                return self
                    .raft
                    .wait(Some(remaining))
                    .applied_index_at_least(Some(index), "read barrier")
                    .await
                    .map(|_| ())
                    .map_err(|e| {
                        ClusterError::NoQuorum(format!("catching up to the leader: {e}"))
                    });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Asks `peers` in turn to apply `cmd` (for a node not yet in the
    /// group, which does not know the leader).
    pub async fn write_via(
        &self,
        peers: &[SocketAddr],
        cmd: &Command,
    ) -> Result<CommandResult, String> {
        let mut problems = Vec::new();
        for addr in peers {
            let req = Request::Write {
                command: cmd.clone(),
                hops: 0,
            };
            match rpc::call(&self.transport, *addr, &req, &[], WRITE_TIMEOUT).await {
                Ok((Reply::Written(r), _)) => return Ok(r),
                Ok((other, _)) => problems.push(format!("{addr}: unexpected reply {other:?}")),
                Err(e) => problems.push(e.to_string()),
            }
        }
        Err(problems.join("; "))
    }

    /// Raft status for `store status`.
    pub fn raft_status(&self) -> RaftStatus {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        let learners: Vec<NodeId> = membership.learner_ids().collect();
        RaftStatus {
            role: format!("{:?}", m.state).to_lowercase(),
            leader: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index,
            applied_index: m.last_applied.map(|l| l.index),
            voters,
            learners,
            snapshot_index: m.snapshot.map(|l| l.index),
        }
    }

    /// Background work: heartbeats to every node, and on the leader the
    /// membership reconciler. Runs until `shutdown`.
    pub async fn run_background(self: Arc<Self>, mut shutdown: b3_common::Shutdown) {
        let mut tick = tokio::time::interval(HEARTBEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tick.tick() => {}
            }
            self.heartbeat().await;
            if self.raft.metrics().borrow().state == ServerState::Leader {
                if let Err(e) = self.reconcile().await {
                    tracing::warn!(error = %e, "membership reconciliation");
                }
            }
        }
    }

    async fn heartbeat(&self) {
        let (nodes, _) = self.nodes();
        let pings = nodes.into_iter().filter(|n| n.id != self.me.id).map(|n| {
            let transport = self.transport.clone();
            async move {
                let r = rpc::call(&transport, n.addr, &Request::Ping, &[], PING_TIMEOUT).await;
                (n.id, r)
            }
        });
        for (id, r) in futures_join_all(pings).await {
            match r {
                Ok((Reply::Pong { node_id }, _)) if node_id == id => self.mark_seen(id),
                Ok(_) => tracing::warn!(node = id, "heartbeat answered by another node id"),
                Err(CallError::Net(_)) => {}
                Err(e) => tracing::debug!(node = id, error = %e, "heartbeat failed"),
            }
        }
    }

    /// Leader only: makes Raft membership follow the cluster map.
    async fn reconcile(&self) -> Result<(), String> {
        let (nodes, _) = self.nodes();
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership().clone();
        let in_raft: BTreeSet<NodeId> = membership.nodes().map(|(id, _)| *id).collect();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        for n in &nodes {
            if !in_raft.contains(&n.id) {
                tracing::info!(node = n.id, addr = %n.addr, "adding node to the metadata group as a learner");
                self.raft
                    .add_learner(
                        n.id,
                        RaftNode {
                            addr: n.addr.to_string(),
                        },
                        false,
                    )
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        let mapped: BTreeSet<NodeId> = nodes.iter().map(|n| n.id).collect();
        let gone: BTreeSet<NodeId> = in_raft
            .iter()
            .filter(|id| !mapped.contains(id) && **id != self.me.id)
            .copied()
            .collect();
        if !gone.is_empty() && !nodes.is_empty() {
            let gone_voters: BTreeSet<NodeId> = gone.intersection(&voters).copied().collect();
            if !gone_voters.is_empty() {
                self.raft
                    .change_membership(ChangeMembers::RemoveVoters(gone_voters), false)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            self.raft
                .change_membership(ChangeMembers::RemoveNodes(gone), false)
                .await
                .map_err(|e| e.to_string())?;
            return Ok(());
        }
        let target = if nodes.len() >= 5 {
            5
        } else {
            nodes.len().min(3)
        };
        let last = m.last_log_index.unwrap_or(0);
        let replication = m.replication.clone().unwrap_or_default();
        let mut ready: Vec<NodeId> = nodes
            .iter()
            .map(|n| n.id)
            .filter(|id| !voters.contains(id) && self.is_up(*id))
            .filter(|id| {
                replication
                    .get(id)
                    .and_then(|l| l.map(|l| l.index))
                    .is_some_and(|i| i + 100 >= last)
            })
            .collect();
        ready.sort();
        // A voter gone for longer than the grace period hands its vote to
        // an up-to-date learner, so the group tolerates the next failure
        // too. The old voter stays a learner and may be promoted again.
        if voters.len() >= target {
            let dead = voters
                .iter()
                .copied()
                .find(|v| self.down_for(*v) > self.voter_grace);
            if let (Some(dead), Some(&spare)) = (dead, ready.first()) {
                let mut next = voters.clone();
                next.remove(&dead);
                next.insert(spare);
                tracing::warn!(
                    down = %format!("{dead:016x}"),
                    promoted = %format!("{spare:016x}"),
                    "voter down past the grace period; replacing it"
                );
                self.raft
                    .change_membership(ChangeMembers::ReplaceAllVoters(next), true)
                    .await
                    .map_err(|e| e.to_string())?;
                return Ok(());
            }
        }
        if voters.len() < target {
            let add: BTreeSet<NodeId> = ready.into_iter().take(target - voters.len()).collect();
            if !add.is_empty() {
                tracing::info!(voters = ?add, "promoting learners to voters");
                self.raft
                    .change_membership(ChangeMembers::AddVoterIds(add), true)
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }
}

/// Runs futures concurrently and collects their outputs in order.
pub async fn futures_join_all<F>(futs: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        // A task only fails to join when the runtime is shutting down.
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}
