//! `store server`: one storage node. Wires the layers together: identity
//! (or join), QUIC transport, Raft metadata group, chunk store,
//! replication, and the admin HTTP endpoint with the object API.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use b3_common::{admin, AdminServer, HealthStatus, Shutdown};
use bytes::Bytes;

use crate::chunk::ChunkStore;
use crate::cli::ServerArgs;
use crate::cluster::fs_server::FsService;
use crate::cluster::rpc::{self, encode_reply, CallError, RemoteError, Reply, Request};
use crate::cluster::{Cluster, Command, MetaStore, NodeInfo, RaftSettings};
use crate::net::identity::{self, PendingJoin};
use crate::net::{wire, Identity, Peer, Service, Transport};
use crate::replication::{remote_chunk_error, Replicator};

/// How long a joining node keeps trying to reach a peer.
const JOIN_RETRY_FOR: Duration = Duration::from_secs(60);

/// Runs a storage node until `shutdown` fires.
pub async fn run(mut args: ServerArgs, shutdown: Shutdown) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = args.dir.data_dir.clone();
    if let Err(e) = args.maint.validate() {
        return b3_common::daemon::usage(e);
    }
    prepare_data_dir(&dir)?;
    if args.bootstrap {
        crate::bootstrap::prepare_server(&mut args).await?;
    }
    let identity = match Identity::load(&dir)? {
        Some(id) => id,
        None => match &args.join {
            Some(token) => join(&dir, token, &args.peers).await?,
            None if args.bootstrap => {
                use crate::bootstrap::Credentials;
                match crate::bootstrap::wait_for_credentials(&dir, &shutdown).await? {
                    Credentials::Member(id) => id,
                    Credentials::Join(plan) => {
                        args.peers.extend(plan.peers.iter().map(|p| p.to_string()));
                        let id = join(&dir, &plan.token, &args.peers).await?;
                        crate::bootstrap::joined(&dir);
                        id
                    }
                }
            }
            None => return Err(identity::IdentityError::Missing(dir.display().to_string()).into()),
        },
    };
    let identity = Arc::new(identity);
    let advertise = match args.advertise {
        Some(a) => a,
        None => default_advertise(args.listen).await?,
    };
    let chunks = ChunkStore::open(dir.join("chunks"))
        .with_context(|| format!("opening the chunk directory under {}", dir.display()))?;
    // Default weight: the space this node can give the store — free space
    // plus what its chunks already use — so a disk shared with other data
    // gets a share matching what is really available.
    let usable = crate::maint::usable_space(&chunks);
    let me = NodeInfo {
        id: identity.node_id,
        addr: advertise,
        admin: SocketAddr::new(advertise.ip(), args.admin_addr.port()),
        domain: match &args.failure_domain {
            Some(d) => d.clone(),
            None => hostname(),
        },
        weight: args.weight.unwrap_or((usable >> 30).max(1)),
        is_in: true,
    };
    let meta = MetaStore::open(&dir)?;
    let transport = Transport::bind(
        args.listen,
        identity.server_config()?,
        identity.client_config()?,
    )?;
    let election_ms = (args.election_timeout.as_millis() as u64).max(100);
    let settings = RaftSettings {
        heartbeat_ms: (election_ms / 5).max(20),
        election_ms,
        snapshot_every: args.snapshot_every,
        voter_grace: args.voter_grace,
        down_after: args.maint.down_after,
    };
    let cluster = Cluster::start(
        identity.clone(),
        me.clone(),
        meta,
        transport.clone(),
        &settings,
        is_founder(&dir),
    )
    .await?;
    let maint = crate::maint::Maintenance::new(
        cluster.clone(),
        chunks.clone(),
        &dir,
        args.maint.clone(),
        crate::maint::gc::default_sources(),
    );
    let replicator =
        Replicator::new(cluster.clone(), chunks.clone()).with_admission(maint.admission());
    let fs = FsService::new(cluster.clone(), replicator.clone());
    write_endpoint(&dir, advertise, args.listen)?;

    tokio::spawn(transport.clone().serve(
        maint.wrap(service(cluster.clone(), chunks.clone(), fs.clone())),
        shutdown.clone(),
    ));
    tokio::spawn(fs.clone().run_expiry(shutdown.clone()));
    maint.spawn(replicator.metrics.clone(), shutdown.clone());
    tokio::spawn(cluster.clone().run_background(shutdown.clone()));
    tokio::spawn(register(
        cluster.clone(),
        args.peers.clone(),
        shutdown.clone(),
    ));

    let mut registry = admin::registry("store", env!("CARGO_PKG_VERSION"));
    maint.register_metrics(&mut registry);
    let api = crate::api::Api::new(cluster.clone(), replicator, &mut registry);
    api.attach(maint.clone());
    tokio::spawn(api.clone().run_metrics(shutdown.clone()));
    let health_dir = dir.clone();
    let health_cluster = cluster.clone();
    let health: b3_common::Health = Arc::new(move || {
        if !health_dir.is_dir() {
            return HealthStatus::Failing(format!(
                "data directory {} is gone",
                health_dir.display()
            ));
        }
        match health_cluster.raft.metrics().borrow().current_leader {
            Some(_) => HealthStatus::Ok,
            None => HealthStatus::Degraded("no metadata leader known (quorum lost?)".into()),
        }
    });
    let admin = AdminServer::bind(
        args.admin_addr,
        "store",
        env!("CARGO_PKG_VERSION"),
        registry,
        health,
    )
    .await?
    .with_handler(api.handler());
    tracing::info!(
        node = %format!("{:016x}", me.id),
        cluster = %identity.settings.cluster_id,
        quic = %advertise,
        admin = %admin.local_addr()?,
        domain = %me.domain,
        "store server started"
    );
    admin.serve(shutdown).await;
    if let Err(e) = cluster.raft.shutdown().await {
        tracing::warn!(error = %e, "stopping the metadata group");
    }
    transport.close();
    tracing::info!("store server stopped");
    Ok(())
}

/// Where `store mount --backend cluster:DIR` finds this server: the file
/// `DIR/endpoint` names the QUIC address to use from this host.
pub const ENDPOINT_FILE: &str = "endpoint";

fn write_endpoint(dir: &Path, advertise: SocketAddr, listen: SocketAddr) -> anyhow::Result<()> {
    // A local mount reaches the listening socket directly when it is bound
    // to one address; otherwise through the advertised one.
    let addr = if listen.ip().is_unspecified() {
        advertise
    } else {
        listen
    };
    let p = dir.join(ENDPOINT_FILE);
    let tmp = dir.join(format!("{ENDPOINT_FILE}.tmp"));
    std::fs::write(&tmp, format!("{addr}\n"))
        .and_then(|()| std::fs::rename(&tmp, &p))
        .with_context(|| format!("writing {}", p.display()))
}

/// Handles requests from peers.
fn service(cluster: Arc<Cluster>, chunks: ChunkStore, fs: Arc<FsService>) -> Service {
    Arc::new(move |peer: Peer, frame: wire::Frame| {
        let cluster = cluster.clone();
        let chunks = chunks.clone();
        let fs = fs.clone();
        Box::pin(async move {
            let (reply, body) = match wire::from_header::<Request>(&frame.header) {
                Err(e) => (Err(RemoteError::Malformed(e.to_string())), Bytes::new()),
                Ok(req) => {
                    if !peer.authenticated && !matches!(req, Request::Join { .. }) {
                        tracing::info!(peer = %peer.addr, request = req.name(), "refused request from a peer without a cluster certificate");
                        (Err(RemoteError::Unauthenticated), Bytes::new())
                    } else if let Some(r) = fs.handle(&req, &frame.body).await {
                        r
                    } else {
                        handle(&cluster, &chunks, peer, req, frame.body).await
                    }
                }
            };
            (encode_reply(&reply), body)
        })
    })
}

async fn handle(
    cluster: &Arc<Cluster>,
    chunks: &ChunkStore,
    peer: Peer,
    req: Request,
    body: Bytes,
) -> (Result<Reply, RemoteError>, Bytes) {
    let none = Bytes::new();
    let blocking = |f: Box<dyn FnOnce() -> Result<(Reply, Bytes), RemoteError> + Send>| async move {
        match tokio::task::spawn_blocking(f).await {
            Ok(Ok((r, b))) => (Ok(r), b),
            Ok(Err(e)) => (Err(e), Bytes::new()),
            Err(e) => (Err(RemoteError::Other(e.to_string())), Bytes::new()),
        }
    };
    match req {
        Request::Ping => (
            Ok(Reply::Pong {
                node_id: cluster.me.id,
            }),
            none,
        ),
        Request::Join {
            token,
            node_id,
            csr_pem,
        } => match cluster.identity.grant(&token, node_id, &csr_pem) {
            Ok(grant) => {
                tracing::info!(peer = %peer.addr, node = %format!("{node_id:016x}"), "granted a certificate to a joining node");
                (Ok(Reply::Joined(Box::new(grant))), none)
            }
            Err(e) => {
                tracing::warn!(peer = %peer.addr, error = %e, "refused a join");
                (Err(RemoteError::JoinRefused(e.to_string())), none)
            }
        },
        Request::AppendEntries(r) => (
            Ok(Reply::AppendEntries(cluster.raft.append_entries(r).await)),
            none,
        ),
        Request::Vote(r) => (Ok(Reply::Vote(cluster.raft.vote(r).await)), none),
        Request::InstallSnapshot(r) => (
            Ok(Reply::InstallSnapshot(
                cluster.raft.install_snapshot(r).await,
            )),
            none,
        ),
        Request::Write { command, hops } => match cluster.write_with_hops(command, hops).await {
            Ok(r) => (Ok(Reply::Written(r)), none),
            Err(e) => (Err(RemoteError::Other(e.to_string())), none),
        },
        Request::ReadIndex => (cluster.read_index().await.map(Reply::ReadIndex), none),
        Request::PutChunk { id, crc } => {
            let chunks = chunks.clone();
            blocking(Box::new(move || {
                chunks
                    .put(&id, &body, crc)
                    .map(|()| (Reply::Done, Bytes::new()))
                    .map_err(remote_chunk_error)
            }))
            .await
        }
        Request::GetChunk { id } => {
            let chunks = chunks.clone();
            blocking(Box::new(move || {
                chunks
                    .get(&id)
                    .map(|(data, crc)| (Reply::Chunk { crc }, data))
                    .map_err(|e| {
                        if matches!(e, crate::chunk::ChunkError::Corrupt { .. }) {
                            tracing::warn!(chunk = %id, error = %e, "corrupt chunk copy on disk");
                        }
                        remote_chunk_error(e)
                    })
            }))
            .await
        }
        Request::DeleteChunk { id } => {
            let chunks = chunks.clone();
            blocking(Box::new(move || {
                chunks
                    .delete(&id)
                    .map(|_| (Reply::Done, Bytes::new()))
                    .map_err(remote_chunk_error)
            }))
            .await
        }
        Request::FsRead { .. }
        | Request::FsWatch { .. }
        | Request::FsPutChunk
        | Request::FsGetChunk { .. }
        | Request::FsDeleteChunk { .. } => (
            Err(RemoteError::Other("filesystem request not served".into())),
            none,
        ),
        Request::Usage => {
            let chunks = chunks.clone();
            blocking(Box::new(move || {
                chunks
                    .usage()
                    .map(|u| (Reply::Usage(u), Bytes::new()))
                    .map_err(remote_chunk_error)
            }))
            .await
        }
    }
}

/// Obtains a certificate from one of `peers` with `token` and saves the
/// new identity in `dir`.
async fn join(dir: &Path, token: &str, peer_names: &[String]) -> anyhow::Result<Identity> {
    if peer_names.iter().all(|p| p.trim().is_empty()) {
        return b3_common::daemon::usage(
            "--join needs --peers (or STORE_PEERS): the address of at least one node of the cluster",
        );
    }
    let transport = Transport::client(identity::join_client_config(token)?)?;
    let pending = PendingJoin::new()?;
    let req = Request::Join {
        token: token.to_string(),
        node_id: pending.node_id,
        csr_pem: pending.csr_pem.clone(),
    };
    let start = Instant::now();
    let mut problems = Vec::new();
    loop {
        // Re-resolved every round: a DNS name may list new tasks.
        let peers = resolve_peers(peer_names).await?;
        if peers.is_empty() {
            problems.push(format!("--peers {peer_names:?} resolved to no address"));
        }
        for addr in &peers {
            match rpc::call(&transport, *addr, &req, &[], Duration::from_secs(5)).await {
                Ok((Reply::Joined(grant), _)) => {
                    let id = Identity::from_grant(*grant, pending, token)?;
                    id.save(dir)?;
                    tracing::info!(peer = %addr, node = %format!("{:016x}", id.node_id), cluster = %id.settings.cluster_id, "joined the cluster");
                    transport.close();
                    return Ok(id);
                }
                Ok((other, _)) => problems.push(format!("{addr}: unexpected reply {other:?}")),
                Err(CallError::Remote {
                    addr,
                    source: RemoteError::JoinRefused(why),
                }) => {
                    anyhow::bail!("node {addr} refused to let this node join: {why}");
                }
                Err(e) => {
                    let text = e.to_string();
                    if text.contains("CA does not match") {
                        anyhow::bail!("{addr} is not a node of the cluster this join token belongs to ({text}); check --peers and the token");
                    }
                    problems.push(text);
                }
            }
        }
        if start.elapsed() > JOIN_RETRY_FOR {
            anyhow::bail!(
                "could not join: no peer answered within {JOIN_RETRY_FOR:?} ({}); check --peers and that the nodes are running",
                problems.join("; ")
            );
        }
        problems.clear();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Makes sure this node's entry in the cluster map is current (keeping an
/// operator's in/out decision). Re-resolves `--peers` on every attempt, so
/// a DNS name follows the swarm as tasks come and go.
async fn register(cluster: Arc<Cluster>, peers: Vec<String>, shutdown: Shutdown) {
    let mut delay = Duration::from_millis(200);
    loop {
        if shutdown.is_triggered() {
            return;
        }
        let (nodes, _) = cluster.nodes();
        let mut me = cluster.me.clone();
        if let Some(existing) = nodes.iter().find(|n| n.id == me.id) {
            me.is_in = existing.is_in;
            if *existing == me {
                return;
            }
        }
        let cmd = Command::UpsertNode(me);
        let leader_known = cluster.raft.metrics().borrow().current_leader.is_some();
        let result = if leader_known {
            cluster.write(cmd).await.map_err(|e| e.to_string())
        } else {
            match resolve_peers(&peers).await {
                Ok(addrs) if !addrs.is_empty() => cluster.write_via(&addrs, &cmd).await,
                Ok(_) => Err("no leader known yet and no --peers to ask".into()),
                Err(e) => Err(e.to_string()),
            }
        };
        match result {
            Ok(_) => tracing::info!("registered this node in the cluster map"),
            Err(e) => tracing::info!(problem = %e, "registering in the cluster map; will retry"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Resolves `--peers`: `ip:port`, `host:port`, or `host` (port 7400). A
/// DNS name (Swarm's `tasks.store`) yields every address it resolves to.
pub async fn resolve_peers(peers: &[String]) -> anyhow::Result<Vec<SocketAddr>> {
    let mut out = Vec::new();
    let mut resolver = None;
    for p in peers.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
        if let Ok(a) = p.parse::<SocketAddr>() {
            out.push(a);
            continue;
        }
        let (host, port) = match p.rsplit_once(':') {
            Some((h, port)) => (
                h,
                port.parse::<u16>()
                    .map_err(|_| anyhow::anyhow!("--peers entry {p:?}: bad port {port:?}"))?,
            ),
            None => (p, 7400),
        };
        if let Ok(ip) = host.parse::<IpAddr>() {
            out.push(SocketAddr::new(ip, port));
            continue;
        }
        if resolver.is_none() {
            resolver = Some(
                hickory_resolver::TokioResolver::builder_tokio()
                    .context("reading the system DNS configuration to resolve --peers")?
                    .build()
                    .context("building the DNS resolver")?,
            );
        }
        let Some(r) = resolver.as_ref() else { continue };
        match r.lookup_ip(host).await {
            Ok(ips) => out.extend(ips.iter().map(|ip| SocketAddr::new(ip, port))),
            Err(e) => {
                tracing::warn!(peer = %p, error = %e, "could not resolve a --peers name; skipping it")
            }
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

async fn default_advertise(listen: SocketAddr) -> anyhow::Result<SocketAddr> {
    if !listen.ip().is_unspecified() {
        return Ok(listen);
    }
    let host = hostname();
    let addrs = tokio::net::lookup_host((host.as_str(), listen.port()))
        .await
        .with_context(|| {
            format!("resolving this host's name {host:?} to advertise an address; set --advertise")
        })?;
    let found = addrs
        .into_iter()
        .find(|a| a.is_ipv4() && !a.ip().is_loopback());
    found.ok_or_else(|| anyhow::anyhow!("this host's name {host:?} resolves to no usable address; set --advertise (or STORE_ADVERTISE) to the address peers should use"))
}

/// This host's name (the default failure domain).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Marks `dir` as the founding node: its first start creates the group.
pub fn mark_founder(dir: &Path) -> anyhow::Result<()> {
    let p = dir.join("identity").join("founder");
    std::fs::write(&p, b"this node created the cluster\n")
        .with_context(|| format!("writing {}", p.display()))
}

fn is_founder(dir: &Path) -> bool {
    dir.join("identity").join("founder").exists()
}

/// Creates the data directory and proves it is writable, so a read-only or
/// mistyped path fails at start-up rather than on the first write.
pub fn prepare_data_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| {
        format!(
            "creating data directory {} (choose another with --data-dir or STORE_DATA_DIR)",
            dir.display()
        )
    })?;
    // Unique per process: the server and its bootstrap companion probe the
    // same directory at the same moment and must not delete each other's.
    static PROBES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let probe = dir.join(format!(".write-probe.{}.{n}", std::process::id()));
    std::fs::write(&probe, b"ok")
        .and_then(|()| std::fs::remove_file(&probe))
        .with_context(|| format!("data directory {} is not writable", dir.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unwritable_data_dir_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let err = prepare_data_dir(&file.join("sub")).unwrap_err();
        assert!(format!("{err:#}").contains("--data-dir"), "{err:#}");
        prepare_data_dir(&tmp.path().join("fresh")).unwrap();
        assert!(tmp.path().join("fresh").is_dir());
    }

    /// The server and its bootstrap companion start together on one data
    /// directory; one's probe must never be deleted by the other.
    #[test]
    fn concurrent_probes_of_one_directory_all_succeed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let dir = dir.clone();
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        prepare_data_dir(&dir).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "no probe left");
    }

    #[tokio::test]
    async fn peers_resolve_literal_addresses() {
        let peers = resolve_peers(&["127.0.0.2:7400".into(), "127.0.0.3".into(), " ".into()])
            .await
            .unwrap();
        assert_eq!(
            peers,
            vec![
                "127.0.0.2:7400".parse().unwrap(),
                "127.0.0.3:7400".parse().unwrap()
            ]
        );
        let err = resolve_peers(&["host:notaport".into()]).await.unwrap_err();
        assert!(err.to_string().contains("bad port"), "{err}");
    }
}
