//! Zero-touch cluster bootstrap for Docker Swarm: `docker stack deploy`
//! brings up a store cluster with no `store init` and no token to copy.
//!
//! Two processes per node share the node's data directory (a host
//! directory bind-mounted into both):
//!
//! * `store server --bootstrap` runs on the host network (QUIC and the
//!   admin port must be reachable from the host's `store mount`). It writes
//!   its advertised addresses to `<data-dir>/bootstrap/node.json`, and when
//!   it has no identity yet it waits until one appears (this node founded
//!   the cluster) or until `bootstrap/join.json` holds a join token and the
//!   addresses of members (this node joins).
//! * `store bootstrap` (the *companion*) runs on a private overlay network
//!   that only the stack's `store-bootstrap` service is attached to. Tasks
//!   there find each other through Swarm's DNS (`tasks.store-bootstrap`),
//!   which a host-network task cannot use. Each companion answers
//!   `GET /v1/bootstrap/hello` with its Swarm node id, its cluster (if its
//!   server is a member) and its server's QUIC address. Every second it
//!   asks all others and [`decide`]s:
//!   - its own server is a member → hand out join tokens to other
//!     companions (`POST /v1/bootstrap/join`) and keep `bootstrap/peers.json`
//!     current;
//!   - some other node is a member → ask it for a token and write
//!     `bootstrap/join.json` for the local server;
//!   - nobody is a member, at least `--expect` companions are visible and
//!     the set has not changed for `--settle` → the one with the smallest
//!     node id runs `store init` in its data directory; the others wait and
//!     then join it.
//!
//! Trust model: a join token (which admits a node and gives it the CA key)
//! is handed only to a requester on the overlay whose address is one of
//! the `--peers` addresses (the tasks of the bootstrap service), and only
//! by a companion whose server is already a member. Being on that network
//! requires being a task of a service the swarm's managers created, so the
//! trust root is Swarm itself (whoever can create services is already root
//! on every node). The overlay is `internal` (no outside traffic) and
//! `encrypted` in the stack file (IPsec between nodes), since the token
//! crosses it; tokens live for `--token-ttl` (10 minutes) only.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use b3_common::Shutdown;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cli::{DataDir, ServerArgs};
use crate::net::Identity;

/// Default port of the companion's HTTP endpoint (on the overlay only).
pub const DEFAULT_PORT: u16 = 7402;
/// Largest response the companion reads from a peer.
const MAX_RESPONSE: u64 = 64 * 1024;
/// How long one request to a peer may take.
const PEER_TIMEOUT: Duration = Duration::from_secs(3);

/// Flags of `store bootstrap`.
#[derive(Debug, Clone, clap::Args)]
pub struct BootstrapArgs {
    #[command(flatten)]
    pub dir: DataDir,

    /// HTTP address of this companion (reachable from the other
    /// companions; in Swarm, on the private bootstrap overlay).
    #[arg(
        long,
        env = "STORE_BOOTSTRAP_LISTEN",
        default_value = "0.0.0.0:7402",
        value_name = "ADDR"
    )]
    pub listen: SocketAddr,

    /// The other companions: `host:port,...` or a DNS name such as
    /// `tasks.store-bootstrap` (every address it resolves to; port 7402 if
    /// omitted). Re-resolved every round. Only these addresses get tokens.
    #[arg(
        long,
        env = "STORE_BOOTSTRAP_PEERS",
        value_name = "LIST",
        value_delimiter = ',',
        required = true
    )]
    pub peers: Vec<String>,

    /// A stable, unique name of this node; the smallest one founds the
    /// cluster (in Swarm: `{{.Node.ID}}`; default: the host name).
    #[arg(long, env = "STORE_BOOTSTRAP_NODE", value_name = "NAME")]
    pub node: Option<String>,

    /// How many companions must be visible before a new cluster is founded
    /// (like Consul's bootstrap_expect). Set it to the number of store
    /// nodes of the first deployment; it matters only until the cluster
    /// exists.
    #[arg(long, env = "STORE_BOOTSTRAP_EXPECT", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub expect: u32,

    /// How long the set of visible companions must stay unchanged before
    /// founding.
    #[arg(long, env = "STORE_BOOTSTRAP_SETTLE", default_value = "5s", value_parser = humantime::parse_duration)]
    pub settle: Duration,

    /// Validity of the join tokens handed out.
    #[arg(long, env = "STORE_BOOTSTRAP_TOKEN_TTL", default_value = "10m", value_parser = humantime::parse_duration)]
    pub token_ttl: Duration,

    /// Copies of every chunk (used by the founder's `store init`).
    #[arg(long, env = "STORE_SIZE", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=7))]
    pub size: u32,

    /// Fewest durable copies before a write is acknowledged (founder only).
    #[arg(long, env = "STORE_MIN_SIZE", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=7))]
    pub min_size: u32,
}

// --- files shared by the server and its companion -------------------------

/// `<data-dir>/bootstrap/node.json`: written by the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalNode {
    /// The server's advertised QUIC address.
    pub quic: SocketAddr,
    /// The server's admin address.
    pub admin: SocketAddr,
}

/// `<data-dir>/bootstrap/join.json`: written by the companion for a server
/// without identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinPlan {
    /// A join token from a member.
    pub token: String,
    /// QUIC addresses of members.
    pub peers: Vec<SocketAddr>,
}

/// `<data-dir>/bootstrap/peers.json`: QUIC addresses of the members the
/// companion knows, for a server that restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerList {
    /// QUIC addresses.
    pub peers: Vec<SocketAddr>,
}

fn boot_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("bootstrap")
}

fn node_file(d: &Path) -> PathBuf {
    boot_dir(d).join("node.json")
}
fn join_file(d: &Path) -> PathBuf {
    boot_dir(d).join("join.json")
}
fn peers_file(d: &Path) -> PathBuf {
    boot_dir(d).join("peers.json")
}

/// Writes `value` as JSON atomically (temp file + rename), mode 0600 (a
/// join plan holds a secret).
fn write_json<T: Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let tmp = path.with_extension("tmp");
    let body = serde_json::to_vec_pretty(value)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(&body)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

/// Reads a JSON file: `Ok(None)` if it does not exist, an error naming the
/// file if it does not parse.
fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).with_context(|| {
            format!(
                "{} is not valid (delete it; it is rewritten)",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

// --- server side -----------------------------------------------------------

/// Hook for `store server --bootstrap`, called before anything else:
/// settles the advertised address (detected from the routing table when
/// neither `--advertise` nor a specific `--listen` gives one), publishes it
/// to the companion, and adds the members the companion knows to `--peers`.
pub async fn prepare_server(args: &mut ServerArgs) -> anyhow::Result<()> {
    let dir = args.dir.data_dir.clone();
    crate::server::prepare_data_dir(&dir)?;
    let quic = match args.advertise {
        Some(a) => a,
        None => {
            let a = detect_advertise(args.listen)?;
            args.advertise = Some(a);
            a
        }
    };
    let admin_ip = if args.admin_addr.ip().is_unspecified() {
        quic.ip()
    } else {
        args.admin_addr.ip()
    };
    write_json(
        &node_file(&dir),
        &LocalNode {
            quic,
            admin: SocketAddr::new(admin_ip, args.admin_addr.port()),
        },
    )?;
    if let Some(list) = read_json::<PeerList>(&peers_file(&dir))? {
        for p in list.peers.into_iter().filter(|p| *p != quic) {
            args.peers.push(p.to_string());
        }
    }
    Ok(())
}

/// The address to advertise: `listen` when it names an address, else the
/// source address the kernel would use for the default route (a UDP
/// `connect` sends no packet).
pub fn detect_advertise(listen: SocketAddr) -> anyhow::Result<SocketAddr> {
    if !listen.ip().is_unspecified() {
        return Ok(listen);
    }
    let probe = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .and_then(|s| {
            // TEST-NET-1: never routed anywhere, only used to pick a route.
            s.connect((Ipv4Addr::new(192, 0, 2, 1), 9))?;
            s.local_addr()
        })
        .context("finding this host's address from the routing table (no default route?); set STORE_ADVERTISE to the address peers should use")?;
    if probe.ip().is_unspecified() || probe.ip().is_loopback() {
        anyhow::bail!("this host's default route gives {}, which peers cannot reach; set STORE_ADVERTISE to the address peers should use", probe.ip());
    }
    Ok(SocketAddr::new(probe.ip(), listen.port()))
}

/// What a server without identity got from its companion.
pub enum Credentials {
    /// This node founded the cluster: its identity is in the data dir.
    Member(Identity),
    /// Join with this token through these members.
    Join(JoinPlan),
}

/// Waits (logging every 30 s what it waits for) until this node has an
/// identity or a join plan. Ends with an error on shutdown.
pub async fn wait_for_credentials(
    data_dir: &Path,
    shutdown: &Shutdown,
) -> anyhow::Result<Credentials> {
    let mut shutdown = shutdown.clone();
    let mut last_log: Option<Instant> = None;
    loop {
        if let Some(id) = Identity::load(data_dir)? {
            return Ok(Credentials::Member(id));
        }
        if let Some(plan) = read_json::<JoinPlan>(&join_file(data_dir))? {
            if !plan.peers.is_empty() {
                return Ok(Credentials::Join(plan));
            }
        }
        if last_log.is_none_or(|t| t.elapsed() > Duration::from_secs(30)) {
            tracing::info!(
                dir = %data_dir.display(),
                "no cluster identity yet: waiting for the bootstrap companion (`store bootstrap`, the store-bootstrap service) to found the cluster or to bring a join token"
            );
            last_log = Some(Instant::now());
        }
        tokio::select! {
            _ = shutdown.wait() => anyhow::bail!("stopped while waiting for a cluster identity"),
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

/// Called by the server once it joined: the plan has been used.
pub fn joined(data_dir: &Path) {
    let _ = std::fs::remove_file(join_file(data_dir));
}

// --- the decision (pure) ---------------------------------------------------

/// What one companion knows about its node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Stable node name (Swarm node id).
    pub node: String,
    /// Cluster id, when this node's server is a member.
    pub cluster: Option<String>,
    /// The server's QUIC address, once it published it.
    pub quic: Option<SocketAddr>,
}

/// What a companion does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Our server is a member: serve tokens.
    Serve,
    /// Found a new cluster here.
    Found,
    /// Ask these companions (members of one cluster) for a token.
    Join(Vec<SocketAddr>),
    /// Nothing to do yet; the reason is logged.
    Wait(String),
    /// Members of different clusters are visible: an operator must decide.
    Conflict(String),
}

/// Decides the next step from what this node knows (`me`), what the
/// other companions said (`others`: HTTP address and answer), the
/// `expect`ed count and whether the visible set has been stable for the
/// settle time. Pure: tested exhaustively below.
pub fn decide(
    me: &Hello,
    others: &[(SocketAddr, Hello)],
    expect: usize,
    settled: bool,
) -> Decision {
    let clusters: BTreeSet<&str> = others
        .iter()
        .filter_map(|(_, h)| h.cluster.as_deref())
        .chain(me.cluster.as_deref())
        .collect();
    if clusters.len() > 1 {
        return Decision::Conflict(format!(
            "companions report {} different clusters ({}): two clusters were founded separately (was --expect lower than half the nodes?); keep one, wipe the data directory of the other's nodes and restart them",
            clusters.len(),
            clusters.iter().copied().collect::<Vec<_>>().join(", ")
        ));
    }
    if me.cluster.is_some() {
        return Decision::Serve;
    }
    let members: Vec<SocketAddr> = others
        .iter()
        .filter(|(_, h)| h.cluster.is_some() && h.quic.is_some())
        .map(|(a, _)| *a)
        .collect();
    if !members.is_empty() {
        return Decision::Join(members);
    }
    if others.iter().any(|(_, h)| h.cluster.is_some()) {
        return Decision::Wait("a member has not published its server's address yet".into());
    }
    let names: BTreeSet<&str> = others
        .iter()
        .map(|(_, h)| h.node.as_str())
        .chain([me.node.as_str()])
        .collect();
    if names.len() < expect {
        return Decision::Wait(format!(
            "no cluster yet; {} of the {expect} expected nodes visible (STORE_BOOTSTRAP_EXPECT)",
            names.len()
        ));
    }
    if !settled {
        return Decision::Wait("no cluster yet; waiting for the set of nodes to settle".into());
    }
    match names.iter().next() {
        Some(first) if *first == me.node => Decision::Found,
        Some(first) => Decision::Wait(format!("no cluster yet; node {first} founds it")),
        None => Decision::Wait("no nodes visible".into()),
    }
}

// --- the companion ---------------------------------------------------------

struct State {
    args: BootstrapArgs,
    node: String,
    /// Addresses `--peers` resolved to last (allowed to ask for tokens).
    allowed: Mutex<BTreeSet<IpAddr>>,
    /// Set while members of different clusters are visible: no tokens
    /// are handed out until an operator sorts it out.
    conflict: Mutex<Option<String>>,
}

impl State {
    fn hello(&self) -> Hello {
        let dir = &self.args.dir.data_dir;
        Hello {
            node: self.node.clone(),
            cluster: Identity::load(dir)
                .ok()
                .flatten()
                .map(|id| id.settings.cluster_id),
            quic: read_json::<LocalNode>(&node_file(dir))
                .ok()
                .flatten()
                .map(|n| n.quic),
        }
    }
}

/// Runs the companion until `shutdown`.
pub async fn run(args: BootstrapArgs, shutdown: Shutdown) -> anyhow::Result<()> {
    if args.min_size > args.size {
        return b3_common::daemon::usage(format!(
            "--min-size {} is larger than --size {}; min_size must be at most size",
            args.min_size, args.size
        ));
    }
    let dir = args.dir.data_dir.clone();
    crate::server::prepare_data_dir(&dir)?;
    let node = match &args.node {
        Some(n) if !n.trim().is_empty() => n.trim().to_string(),
        _ => crate::server::hostname(),
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| {
            format!(
                "binding the bootstrap endpoint on {} (choose another with --listen)",
                args.listen
            )
        })?;
    let state = Arc::new(State {
        args: args.clone(),
        node,
        allowed: Mutex::new(BTreeSet::new()),
        conflict: Mutex::new(None),
    });
    tracing::info!(node = %state.node, listen = %args.listen, expect = args.expect, "store bootstrap companion started");
    tokio::spawn(serve(listener, state.clone(), shutdown.clone()));
    rounds(state, shutdown).await;
    tracing::info!("store bootstrap companion stopped");
    Ok(())
}

/// One round a second: look around, decide, act.
async fn rounds(state: Arc<State>, mut shutdown: Shutdown) {
    let args = &state.args;
    let dir = args.dir.data_dir.clone();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut stable_since = Instant::now();
    let mut last_reason = String::new();
    let mut plan_written: Option<Instant> = None;
    loop {
        let peers = resolve(&args.peers).await;
        *state.allowed.lock().unwrap_or_else(|p| p.into_inner()) =
            peers.iter().map(|a| a.ip()).collect();
        let me = state.hello();
        let mut others = Vec::new();
        for addr in &peers {
            match get_json::<Hello>(*addr, bind_ip(args.listen), "GET", "/v1/bootstrap/hello").await
            {
                Ok(h) if h.node != me.node => others.push((*addr, h)),
                Ok(_) => {}
                Err(e) => tracing::debug!(peer = %addr, error = %e, "companion did not answer"),
            }
        }
        let names: BTreeSet<String> = others.iter().map(|(_, h)| h.node.clone()).collect();
        if names != seen {
            seen = names;
            stable_since = Instant::now();
        }
        let settled = stable_since.elapsed() >= args.settle;
        let decision = decide(&me, &others, args.expect as usize, settled);
        *state.conflict.lock().unwrap_or_else(|p| p.into_inner()) = match &decision {
            Decision::Conflict(why) => Some(why.clone()),
            _ => None,
        };
        let reason = match &decision {
            Decision::Serve => {
                let mut list: Vec<SocketAddr> = others
                    .iter()
                    .filter_map(|(_, h)| h.quic.filter(|_| h.cluster.is_some()))
                    .collect();
                list.extend(me.quic);
                list.sort();
                list.dedup();
                let current = read_json::<PeerList>(&peers_file(&dir)).ok().flatten();
                if current.as_ref().map(|c| &c.peers) != Some(&list) {
                    if let Err(e) = write_json(&peers_file(&dir), &PeerList { peers: list }) {
                        tracing::warn!(error = %format!("{e:#}"), "writing the peer list");
                    }
                }
                "member: handing out join tokens".to_string()
            }
            Decision::Found => match found(&dir, args) {
                Ok(id) => {
                    tracing::info!(cluster = %id.settings.cluster_id, size = args.size, min_size = args.min_size, "founded a new cluster");
                    "founded the cluster".into()
                }
                Err(e) => format!("founding the cluster failed: {e:#}"),
            },
            Decision::Join(members) => {
                let fresh = plan_written.is_some_and(|t| t.elapsed() < args.token_ttl / 2);
                if fresh && join_file(&dir).exists() {
                    "join token handed to the local server; waiting for it to join".into()
                } else {
                    match fetch_plan(members, bind_ip(args.listen)).await {
                        Ok(plan) => match write_json(&join_file(&dir), &plan) {
                            Ok(()) => {
                                plan_written = Some(Instant::now());
                                tracing::info!(peers = ?plan.peers, "got a join token for the local server");
                                "join token handed to the local server; waiting for it to join"
                                    .into()
                            }
                            Err(e) => format!("writing the join plan: {e:#}"),
                        },
                        Err(e) => format!("asking members for a join token: {e:#}"),
                    }
                }
            }
            Decision::Wait(why) => why.clone(),
            Decision::Conflict(why) => {
                if *why != last_reason {
                    tracing::error!("{why}");
                }
                why.clone()
            }
        };
        if reason != last_reason {
            tracing::info!(visible = others.len() + 1, "{reason}");
            last_reason = reason;
        }
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// `store init` in the data directory (the server is waiting for it).
fn found(dir: &Path, args: &BootstrapArgs) -> anyhow::Result<Identity> {
    let id = Identity::init(dir, args.size as usize, args.min_size as usize)?;
    crate::server::mark_founder(dir)?;
    Ok(id)
}

/// Asks each member in turn for a join plan.
async fn fetch_plan(members: &[SocketAddr], from: Option<IpAddr>) -> anyhow::Result<JoinPlan> {
    let mut problems = Vec::new();
    for m in members {
        match get_json::<JoinPlan>(*m, from, "POST", "/v1/bootstrap/join").await {
            Ok(plan) if !plan.peers.is_empty() => return Ok(plan),
            Ok(_) => problems.push(format!("{m}: no member addresses in the answer")),
            Err(e) => problems.push(format!("{e:#}")),
        }
    }
    anyhow::bail!("{}", problems.join("; "))
}

fn bind_ip(listen: SocketAddr) -> Option<IpAddr> {
    (!listen.ip().is_unspecified()).then_some(listen.ip())
}

/// Resolves the peer list (port [`DEFAULT_PORT`] if omitted); a name that
/// does not resolve (yet) counts as no address.
async fn resolve(peers: &[String]) -> Vec<SocketAddr> {
    let with_ports: Vec<String> = peers
        .iter()
        .map(|p| p.trim())
        .filter(|p| !p.is_empty())
        .map(|p| {
            if p.parse::<SocketAddr>().is_ok()
                || p.rsplit_once(':')
                    .is_some_and(|(_, port)| port.parse::<u16>().is_ok())
            {
                p.to_string()
            } else {
                format!("{p}:{DEFAULT_PORT}")
            }
        })
        .collect();
    match crate::server::resolve_peers(&with_ports).await {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "resolving the bootstrap peers");
            Vec::new()
        }
    }
}

/// One small HTTP/1.1 request (no body) from `from` (when set) to `addr`,
/// answer parsed as JSON; non-200 answers are errors carrying the body.
async fn get_json<T: serde::de::DeserializeOwned>(
    addr: SocketAddr,
    from: Option<IpAddr>,
    method: &str,
    path: &str,
) -> anyhow::Result<T> {
    let fetch = async {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        if let Some(ip) = from.filter(|ip| ip.is_ipv4() == addr.is_ipv4()) {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        let mut s = socket.connect(addr).await?;
        s.write_all(
            format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
        let mut raw = Vec::new();
        (&mut s).take(MAX_RESPONSE).read_to_end(&mut raw).await?;
        std::io::Result::Ok(raw)
    };
    let raw = tokio::time::timeout(PEER_TIMEOUT, fetch)
        .await
        .with_context(|| format!("{addr} did not answer {path} within {PEER_TIMEOUT:?}"))?
        .with_context(|| format!("{method} {addr}{path}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("{addr} sent a malformed HTTP response"))?;
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        anyhow::bail!("{addr}{path} answered {status}: {}", body.trim());
    }
    serde_json::from_str(body).with_context(|| format!("{addr}{path} sent unexpected JSON"))
}

type Body = Full<bytes::Bytes>;

fn reply<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, msg: String) -> Response<Body> {
    reply(status, &serde_json::json!({ "error": msg }))
}

/// The companion's HTTP endpoint.
async fn serve(listener: tokio::net::TcpListener, state: Arc<State>, mut shutdown: Shutdown) {
    let limit = Arc::new(tokio::sync::Semaphore::new(64));
    loop {
        let permit = match limit.clone().acquire_owned().await {
            Ok(p) => p,
            Err(_) => return,
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.wait() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "bootstrap accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, peer, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
            drop(permit);
        });
    }
}

async fn handle(
    state: &State,
    peer: SocketAddr,
    req: Request<hyper::body::Incoming>,
) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    // Requests carry no body; read at most a little and drop it.
    let _ = http_body_util::Limited::new(req.into_body(), 4096)
        .collect()
        .await;
    match (method, path.as_str()) {
        (Method::GET, "/v1/bootstrap/hello") => reply(StatusCode::OK, &state.hello()),
        (Method::GET, "/health") => reply(StatusCode::OK, &state.hello()),
        (Method::POST, "/v1/bootstrap/join") => join_request(state, peer).await,
        _ => error(StatusCode::NOT_FOUND, format!("no such endpoint: {path}")),
    }
}

/// Hands a join plan to another companion of the same service.
async fn join_request(state: &State, peer: SocketAddr) -> Response<Body> {
    let peer_ip = canonical(peer.ip());
    // Re-resolve: the requester may be a task that started a moment ago.
    let allowed = {
        let known = state
            .allowed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&peer_ip);
        known
            || resolve(&state.args.peers)
                .await
                .iter()
                .any(|a| canonical(a.ip()) == peer_ip)
    };
    if !allowed {
        tracing::warn!(peer = %peer, "refused a join token to an address that is not one of the bootstrap peers");
        return error(
            StatusCode::FORBIDDEN,
            format!("{peer_ip} is not one of the bootstrap peers ({}); only tasks of the bootstrap service get join tokens", state.args.peers.join(",")),
        );
    }
    if let Some(why) = state
        .conflict
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
    {
        return error(StatusCode::CONFLICT, why);
    }
    let dir = &state.args.dir.data_dir;
    let id = match Identity::load(dir) {
        Ok(Some(id)) => id,
        Ok(None) => {
            return error(
                StatusCode::CONFLICT,
                "this node is not a member of a cluster yet".into(),
            )
        }
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let token = match id.join_token(state.args.token_ttl) {
        Ok(t) => t,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let mut peers: Vec<SocketAddr> = read_json::<PeerList>(&peers_file(dir))
        .ok()
        .flatten()
        .map(|l| l.peers)
        .unwrap_or_default();
    match read_json::<LocalNode>(&node_file(dir)) {
        Ok(Some(n)) => peers.push(n.quic),
        _ => {
            return error(
                StatusCode::CONFLICT,
                "this node's server has not published its address yet".into(),
            )
        }
    }
    peers.sort();
    peers.dedup();
    tracing::info!(peer = %peer, "handed out a join token");
    reply(StatusCode::OK, &JoinPlan { token, peers })
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(node: &str, cluster: Option<&str>, quic: Option<&str>) -> Hello {
        Hello {
            node: node.into(),
            cluster: cluster.map(str::to_string),
            quic: quic.map(|q| q.parse().unwrap()),
        }
    }

    fn at(n: u8) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, n)), DEFAULT_PORT)
    }

    #[test]
    fn a_member_serves() {
        let me = hello("b", Some("c1"), Some("10.1.0.2:7400"));
        assert_eq!(decide(&me, &[], 3, false), Decision::Serve);
        let others = [(at(1), hello("a", Some("c1"), None))];
        assert_eq!(decide(&me, &others, 3, false), Decision::Serve);
    }

    #[test]
    fn joins_through_every_published_member() {
        let me = hello("a", None, Some("10.1.0.1:7400"));
        let others = [
            (at(2), hello("b", Some("c1"), Some("10.1.0.2:7400"))),
            (at(3), hello("c", None, None)),
            (at(4), hello("d", Some("c1"), Some("10.1.0.4:7400"))),
        ];
        // Even the smallest node joins once a cluster exists, whatever
        // --expect says: adding a node never founds a second cluster.
        assert_eq!(
            decide(&me, &others, 9, false),
            Decision::Join(vec![at(2), at(4)])
        );
    }

    #[test]
    fn a_member_without_address_is_waited_for() {
        let me = hello("a", None, None);
        let others = [(at(2), hello("b", Some("c1"), None))];
        assert!(matches!(decide(&me, &others, 1, true), Decision::Wait(_)));
    }

    #[test]
    fn founding_waits_for_expect_and_settle_and_picks_the_smallest() {
        let a = hello("node-a", None, None);
        let b = hello("node-b", None, None);
        let c = hello("node-c", None, None);
        let two = [(at(2), b.clone())];
        match decide(&a, &two, 3, true) {
            Decision::Wait(why) => assert!(why.contains("2 of the 3"), "{why}"),
            d => panic!("{d:?}"),
        }
        let all = [(at(2), b.clone()), (at(3), c.clone())];
        assert!(matches!(decide(&a, &all, 3, false), Decision::Wait(_)));
        assert_eq!(decide(&a, &all, 3, true), Decision::Found);
        let from_b = [(at(1), a.clone()), (at(3), c.clone())];
        match decide(&b, &from_b, 3, true) {
            Decision::Wait(why) => assert!(why.contains("node-a founds"), "{why}"),
            d => panic!("{d:?}"),
        }
        // Alone with expect 1 (a one-node swarm).
        assert_eq!(decide(&c, &[], 1, true), Decision::Found);
    }

    #[test]
    fn duplicate_names_count_once() {
        // Two addresses answering for the same node (e.g. a task being
        // replaced) are one node.
        let me = hello("a", None, None);
        let others = [
            (at(2), hello("b", None, None)),
            (at(3), hello("b", None, None)),
        ];
        assert!(matches!(decide(&me, &others, 3, true), Decision::Wait(_)));
    }

    #[test]
    fn two_clusters_are_a_conflict_not_a_join() {
        let me = hello("a", None, None);
        let others = [
            (at(2), hello("b", Some("c1"), Some("10.1.0.2:7400"))),
            (at(3), hello("c", Some("c2"), Some("10.1.0.3:7400"))),
        ];
        match decide(&me, &others, 1, true) {
            Decision::Conflict(why) => assert!(why.contains("c1") && why.contains("c2"), "{why}"),
            d => panic!("{d:?}"),
        }
        let member = hello("a", Some("c1"), None);
        assert!(matches!(
            decide(&member, &others[1..], 1, true),
            Decision::Conflict(_)
        ));
    }

    #[test]
    fn shared_files_round_trip_and_bad_files_name_themselves() {
        let tmp = tempfile::tempdir().unwrap();
        let plan = JoinPlan {
            token: "B3S1-x".into(),
            peers: vec!["10.0.0.1:7400".parse().unwrap()],
        };
        write_json(&join_file(tmp.path()), &plan).unwrap();
        assert_eq!(
            read_json::<JoinPlan>(&join_file(tmp.path())).unwrap(),
            Some(plan)
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(join_file(tmp.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the join plan holds a secret");
        assert_eq!(
            read_json::<PeerList>(&peers_file(tmp.path())).unwrap(),
            None
        );
        std::fs::write(peers_file(tmp.path()), b"{not json").unwrap();
        let err = read_json::<PeerList>(&peers_file(tmp.path())).unwrap_err();
        assert!(format!("{err:#}").contains("peers.json"), "{err:#}");
    }

    fn state(dir: &Path) -> State {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct W {
            #[command(flatten)]
            a: BootstrapArgs,
        }
        let w = W::try_parse_from([
            "w",
            "--data-dir",
            dir.to_str().unwrap(),
            "--peers",
            "10.0.0.1:7402,10.0.0.2",
        ])
        .unwrap();
        State {
            args: w.a,
            node: "me".into(),
            allowed: Mutex::new(BTreeSet::new()),
            conflict: Mutex::new(None),
        }
    }

    async fn body(r: Response<Body>) -> (StatusCode, String) {
        let status = r.status();
        let bytes = r.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn tokens_only_for_peers_from_members_without_conflict() {
        let tmp = tempfile::tempdir().unwrap();
        let st = state(tmp.path());
        let peer: SocketAddr = "10.0.0.2:40000".parse().unwrap();
        let stranger: SocketAddr = "10.0.0.9:40000".parse().unwrap();

        let (code, text) = body(join_request(&st, stranger).await).await;
        assert_eq!(code, StatusCode::FORBIDDEN, "{text}");
        let (code, text) = body(join_request(&st, peer).await).await;
        assert_eq!(code, StatusCode::CONFLICT, "not a member yet: {text}");

        let id = Identity::init(tmp.path(), 3, 2).unwrap();
        let (code, text) = body(join_request(&st, peer).await).await;
        assert_eq!(code, StatusCode::CONFLICT, "server address unknown: {text}");
        write_json(
            &node_file(tmp.path()),
            &LocalNode {
                quic: "10.1.0.1:7400".parse().unwrap(),
                admin: "10.1.0.1:7401".parse().unwrap(),
            },
        )
        .unwrap();
        let (code, text) = body(join_request(&st, peer).await).await;
        assert_eq!(code, StatusCode::OK, "{text}");
        let plan: JoinPlan = serde_json::from_str(&text).unwrap();
        id.verify_token(&plan.token, 0).unwrap();
        assert_eq!(plan.peers, vec!["10.1.0.1:7400".parse().unwrap()]);
        // An IPv4 peer seen on a dual-stack socket is the same peer.
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:40000".parse().unwrap();
        assert_eq!(
            body(join_request(&st, mapped).await).await.0,
            StatusCode::OK
        );

        *st.conflict.lock().unwrap() = Some("two clusters".into());
        let (code, text) = body(join_request(&st, peer).await).await;
        assert_eq!(code, StatusCode::CONFLICT);
        assert!(
            text.contains("two clusters") && !text.contains("B3S1"),
            "{text}"
        );
    }

    #[test]
    fn advertise_uses_a_specific_listen_address() {
        let l: SocketAddr = "127.0.0.7:7400".parse().unwrap();
        assert_eq!(detect_advertise(l).unwrap(), l);
    }

    #[tokio::test]
    async fn waiting_server_takes_a_join_plan_or_an_identity() {
        let tmp = tempfile::tempdir().unwrap();
        let (trigger, shutdown) = b3_common::shutdown::channel();
        let dir = tmp.path().to_path_buf();
        let waiter = tokio::spawn({
            let dir = dir.clone();
            let shutdown = shutdown.clone();
            async move { wait_for_credentials(&dir, &shutdown).await }
        });
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(!waiter.is_finished(), "nothing to take yet");
        let plan = JoinPlan {
            token: "B3S1-x".into(),
            peers: vec!["10.0.0.1:7400".parse().unwrap()],
        };
        write_json(&join_file(&dir), &plan).unwrap();
        match waiter.await.unwrap().unwrap() {
            Credentials::Join(p) => assert_eq!(p, plan),
            Credentials::Member(_) => panic!("no identity was made"),
        }
        joined(&dir);
        assert!(!join_file(&dir).exists());

        // An identity made by the founder wins.
        Identity::init(&dir, 1, 1).unwrap();
        assert!(matches!(
            wait_for_credentials(&dir, &shutdown).await.unwrap(),
            Credentials::Member(_)
        ));

        // Shutdown ends the wait with an error.
        let empty = tempfile::tempdir().unwrap();
        trigger.trigger();
        assert!(wait_for_credentials(empty.path(), &shutdown).await.is_err());
    }
}
