//! HTTP API on the admin port: the object API and the JSON status the
//! admin CLI prints, plus the Prometheus gauges behind it.
//!
//! Objects live at `/objects/<bucket>/<key>` — the same bucket/key split
//! as S3 (`/<bucket>/<key>`), so an S3 front end later maps one to one:
//!
//! | request | effect |
//! |---|---|
//! | `PUT /objects/b/k` | store the body; `200` + `ETag` once every chunk has ≥ min_size durable copies *and* the metadata is committed |
//! | `GET /objects/b/k` | the object (`Range: bytes=a-b`, `a-`, `-n` → `206`) |
//! | `HEAD /objects/b/k` | headers only |
//! | `DELETE /objects/b/k` | `204`, `404` if absent; chunks are freed after the commit |
//! | `GET /objects/b?prefix=p&start-after=k&limit=n` | JSON listing, key order |
//! | `GET /v1/status`, `/v1/nodes`, `/v1/df` | what `store status/nodes/df --json` print |
//!
//! Object metadata is the namespace entry `o/<bucket>/<key>` holding a JSON
//! [`ObjectMeta`]. Reads are linearizable (read index) so a GET sees every
//! PUT acknowledged before it, on any node.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use b3_common::admin::{self, Body, BoxError, Handler};
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::chunk::{Usage, MAX_CHUNK};
use crate::cluster::rpc::{self, Reply, Request as Rpc};
use crate::cluster::{Cluster, ClusterError, Command, Op};
use crate::replication::{replicas_of_pg, ChunkRef, ReplicationError, Replicator};

/// Largest object accepted in one PUT (as S3).
pub const MAX_OBJECT: u64 = 5 << 30;
/// Objects up to this size are stored inside their metadata.
pub const INLINE_MAX: usize = 4096;
/// Chunk writes (or reads) in flight per request.
const PIPELINE: usize = 3;
/// Longest key accepted.
const MAX_KEY: usize = 1024;

/// Metadata of one object (the namespace value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectMeta {
    /// Bytes.
    pub size: u64,
    /// Entity tag (changes with the content).
    pub etag: String,
    /// Last modification, unix milliseconds.
    pub modified_ms: u64,
    /// Content-Type given at PUT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// Chunks in order.
    pub chunks: Vec<ChunkRef>,
    /// The bytes themselves (base64) for objects of at most [`INLINE_MAX`]
    /// bytes, which have no chunks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<String>,
}

/// Health and placement summary (`store status`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// Cluster id.
    pub cluster_id: String,
    /// `HEALTH_OK`, `HEALTH_WARN` or `HEALTH_ERR` (as Ceph).
    pub health: String,
    /// Why it is not OK.
    pub checks: Vec<String>,
    /// Node answering.
    pub node_id: String,
    /// Metadata group.
    pub raft: crate::cluster::RaftStatus,
    /// Leader known.
    pub quorum: bool,
    /// Map epoch.
    pub epoch: u64,
    /// Nodes in the map.
    pub nodes_total: usize,
    /// Nodes answering heartbeats.
    pub nodes_up: usize,
    /// Nodes holding data.
    pub nodes_in: usize,
    /// Replication size.
    pub size: usize,
    /// Replication min_size.
    pub min_size: usize,
    /// Placement groups.
    pub pgs_total: u32,
    /// PGs with all `size` replicas up.
    pub pgs_clean: u32,
    /// PGs with ≥ min_size but < size replicas up.
    pub pgs_degraded: u32,
    /// PGs below min_size (writes blocked).
    pub pgs_inactive: u32,
    /// Objects stored.
    pub objects: u64,
    /// Recovery, scrub, GC and capacity over the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maint: Option<crate::maint::MaintStatus>,
}

/// One node as `store nodes` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Node id (hex).
    pub id: String,
    /// QUIC address.
    pub addr: String,
    /// Admin address.
    pub admin: String,
    /// Failure domain.
    pub domain: String,
    /// Weight.
    pub weight: u64,
    /// Answering heartbeats.
    pub up: bool,
    /// Holding data.
    pub is_in: bool,
    /// `leader`, `voter` or `learner` (or `joining`).
    pub raft: String,
}

/// One node's line of `store df`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeDf {
    /// Node id (hex).
    pub id: String,
    /// Usage, when the node answered.
    pub usage: Option<Usage>,
    /// Why not.
    pub error: Option<String>,
}

/// `store df`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Df {
    /// Per node.
    pub nodes: Vec<NodeDf>,
    /// Raw chunk bytes over all nodes (all copies).
    pub raw_used: u64,
    /// Filesystem capacity over all nodes.
    pub raw_total: u64,
    /// Free space over all nodes.
    pub raw_avail: u64,
    /// Logical bytes of all objects (one copy).
    pub stored: u64,
    /// Objects.
    pub objects: u64,
    /// Replication size.
    pub size: usize,
}

#[derive(Default)]
struct Gauges {
    nodes: Family<Vec<(String, String)>, Gauge>,
    pgs: Family<Vec<(String, String)>, Gauge>,
    has_leader: Gauge,
    is_leader: Gauge,
    term: Gauge,
    applied: Gauge,
    epoch: Gauge,
    objects: Gauge,
    chunks: Gauge,
    chunk_bytes: Gauge,
    fs_total: Gauge,
    fs_avail: Gauge,
    requests: Family<Vec<(String, String)>, prometheus_client::metrics::counter::Counter>,
}

/// The HTTP API of one node.
pub struct Api {
    cluster: Arc<Cluster>,
    replicator: Replicator,
    gauges: Gauges,
    maint: std::sync::OnceLock<Arc<crate::maint::Maintenance>>,
}

fn label(k: &str, v: &str) -> Vec<(String, String)> {
    vec![(k.to_string(), v.to_string())]
}

impl Api {
    /// Builds the API and registers its metrics.
    pub fn new(
        cluster: Arc<Cluster>,
        replicator: Replicator,
        registry: &mut Registry,
    ) -> Arc<Self> {
        let g = Gauges::default();
        let r = registry.sub_registry_with_prefix("store");
        r.register(
            "nodes",
            "Nodes of the cluster map by state (total, up, in)",
            g.nodes.clone(),
        );
        r.register(
            "pgs",
            "Placement groups by state (clean, degraded, inactive)",
            g.pgs.clone(),
        );
        r.register(
            "raft_has_leader",
            "1 when a metadata leader is known (quorum)",
            g.has_leader.clone(),
        );
        r.register(
            "raft_is_leader",
            "1 on the metadata leader",
            g.is_leader.clone(),
        );
        r.register("raft_term", "Current Raft term", g.term.clone());
        r.register(
            "raft_applied_index",
            "Last applied Raft log index",
            g.applied.clone(),
        );
        r.register("map_epoch", "Cluster map epoch", g.epoch.clone());
        r.register("objects", "Objects in the namespace", g.objects.clone());
        r.register(
            "chunks",
            "Chunk copies stored on this node",
            g.chunks.clone(),
        );
        r.register(
            "chunk_bytes",
            "Bytes of chunk copies stored on this node",
            g.chunk_bytes.clone(),
        );
        r.register(
            "fs_bytes_total",
            "Capacity of this node's data filesystem",
            g.fs_total.clone(),
        );
        r.register(
            "fs_bytes_avail",
            "Free space on this node's data filesystem",
            g.fs_avail.clone(),
        );
        r.register(
            "api_requests",
            "Object API requests by method",
            g.requests.clone(),
        );
        let m = &replicator.metrics;
        r.register(
            "chunk_writes",
            "Chunks written with at least min_size copies",
            m.chunk_writes.clone(),
        );
        r.register(
            "chunk_degraded_writes",
            "Chunk writes acknowledged with fewer than size copies",
            m.degraded_writes.clone(),
        );
        r.register("chunk_reads", "Chunks read", m.chunk_reads.clone());
        r.register(
            "chunk_read_fallbacks",
            "Chunk reads that skipped a bad or slow replica",
            m.read_fallbacks.clone(),
        );
        r.register(
            "chunk_corrupt",
            "Corrupt chunk copies detected",
            m.corrupt_found.clone(),
        );
        r.register(
            "chunk_repairs",
            "Chunk copies rewritten after a bad read",
            m.repairs.clone(),
        );
        Arc::new(Self {
            cluster,
            replicator,
            gauges: g,
            maint: std::sync::OnceLock::new(),
        })
    }

    /// Adds the maintenance jobs' status and endpoints.
    pub fn attach(&self, maint: Arc<crate::maint::Maintenance>) {
        let _ = self.maint.set(maint);
    }

    /// [`Api::status`] with recovery, scrub, GC and capacity folded in.
    pub async fn full_status(&self) -> Status {
        let mut s = self.status();
        if let Some(m) = self.maint.get() {
            crate::maint::health::fold_into(&mut s, m.status().await);
        }
        s
    }

    /// The admin endpoint handler.
    pub fn handler(self: &Arc<Self>) -> Handler {
        let api = self.clone();
        Arc::new(move |req| {
            let api = api.clone();
            Box::pin(async move { api.route(req).await })
        })
    }

    /// Refreshes the gauges every few seconds until `shutdown`.
    pub async fn run_metrics(self: Arc<Self>, mut shutdown: b3_common::Shutdown) {
        loop {
            let status = self.status();
            let g = &self.gauges;
            g.nodes
                .get_or_create(&label("state", "total"))
                .set(status.nodes_total as i64);
            g.nodes
                .get_or_create(&label("state", "up"))
                .set(status.nodes_up as i64);
            g.nodes
                .get_or_create(&label("state", "in"))
                .set(status.nodes_in as i64);
            g.pgs
                .get_or_create(&label("state", "clean"))
                .set(i64::from(status.pgs_clean));
            g.pgs
                .get_or_create(&label("state", "degraded"))
                .set(i64::from(status.pgs_degraded));
            g.pgs
                .get_or_create(&label("state", "inactive"))
                .set(i64::from(status.pgs_inactive));
            g.has_leader.set(i64::from(status.quorum));
            g.is_leader
                .set(i64::from(status.raft.leader == Some(self.cluster.me.id)));
            g.term.set(status.raft.term as i64);
            g.applied.set(status.raft.applied_index.unwrap_or(0) as i64);
            g.epoch.set(status.epoch as i64);
            g.objects.set(status.objects as i64);
            let local = self.replicator.local().clone();
            if let Ok(Ok(u)) = tokio::task::spawn_blocking(move || local.usage()).await {
                g.chunks.set(u.chunks as i64);
                g.chunk_bytes.set(u.bytes as i64);
                g.fs_total.set(u.fs_total as i64);
                g.fs_avail.set(u.fs_avail as i64);
            }
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        }
    }

    async fn route(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_string();
        if let Some(rest) = path.strip_prefix("/objects/") {
            self.gauges
                .requests
                .get_or_create(&label("method", req.method().as_str()))
                .inc();
            return match split_object_path(rest) {
                Ok((bucket, None)) if req.method() == Method::GET => self.list(&bucket, &req).await,
                Ok((_, None)) => error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "a bucket path supports GET (list); objects are at /objects/<bucket>/<key>",
                ),
                Ok((bucket, Some(key))) => self.object(req, &bucket, &key).await,
                Err(msg) => error(StatusCode::BAD_REQUEST, &msg),
            };
        }
        if let Some(m) = self.maint.get() {
            if let Some(resp) = m.route(req.method(), &path).await {
                return resp;
            }
        }
        if let Some(rest) = path.strip_prefix("/v1/nodes/") {
            return self.change_node(req.method(), rest).await;
        }
        if let Some(rest) = path.strip_prefix("/v1/fs/") {
            if req.method() != Method::GET {
                return error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "/v1/fs/<path> supports GET only; write files through a `store mount`",
                );
            }
            return self.fs_file(rest).await;
        }
        if req.method() != Method::GET {
            return error(
                StatusCode::NOT_FOUND,
                "not found: see /v1/status or /objects/<bucket>/<key>",
            );
        }
        match path.as_str() {
            "/v1/status" => admin::json(StatusCode::OK, &self.full_status().await),
            "/v1/nodes" => admin::json(StatusCode::OK, &self.node_list()),
            "/v1/df" => admin::json(StatusCode::OK, &self.df().await),
            _ => error(
                StatusCode::NOT_FOUND,
                "not found: try /health, /metrics, /v1/status, /v1/nodes, /v1/df or /objects/<bucket>/<key>",
            ),
        }
    }

    /// `GET /v1/fs/<path>`: the bytes of a file of `/data` as committed
    /// cluster-wide (404 when missing, 400 for a directory).
    async fn fs_file(&self, rest: &str) -> Response<Body> {
        let Some(path) = percent_decode_bytes(rest) else {
            return error(
                StatusCode::BAD_REQUEST,
                "malformed percent-encoding in the path",
            );
        };
        use crate::cluster::fs_server::{read_file, FileError};
        match read_file(&self.cluster, &self.replicator, &path).await {
            Ok(data) => Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/octet-stream")
                .header(header::CONTENT_LENGTH, data.len())
                .body(admin::full(data))
                .unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())),
            Err(e @ FileError::NotFound(_)) => error(StatusCode::NOT_FOUND, &e.to_string()),
            Err(e @ FileError::NotAFile(_)) => error(StatusCode::BAD_REQUEST, &e.to_string()),
            Err(e @ FileError::TooLarge(..)) => {
                error(StatusCode::PAYLOAD_TOO_LARGE, &e.to_string())
            }
            Err(e @ FileError::Failed(_)) => error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        }
    }

    /// `DELETE /v1/nodes/<id>` removes a node from the map (and Raft);
    /// `POST /v1/nodes/<id>/out` and `/in` stop or resume placing data on it.
    async fn change_node(&self, method: &Method, rest: &str) -> Response<Body> {
        let (id_text, action) = match rest.split_once('/') {
            Some((id, a)) => (id, a),
            None => (rest, ""),
        };
        let Ok(id) = u64::from_str_radix(id_text, 16) else {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("node id {id_text:?} is not hexadecimal; see `store nodes`"),
            );
        };
        if let Err(e) = self.cluster.read_barrier().await {
            return cluster_error(&e);
        }
        let (nodes, _) = self.cluster.nodes();
        let Some(node) = nodes.into_iter().find(|n| n.id == id) else {
            return error(
                StatusCode::NOT_FOUND,
                &format!("no node {id:016x} in the cluster map; see `store nodes`"),
            );
        };
        let cmd =
            match (method, action) {
                (&Method::DELETE, "") => Command::RemoveNode(id),
                (&Method::POST, "out") | (&Method::POST, "in") => {
                    let mut node = node;
                    node.is_in = action == "in";
                    Command::UpsertNode(node)
                }
                _ => return error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "use DELETE /v1/nodes/<id>, POST /v1/nodes/<id>/out or POST /v1/nodes/<id>/in",
                ),
            };
        match self.cluster.write(cmd).await {
            Ok(r) => admin::json(StatusCode::OK, &serde_json::json!({ "epoch": r.epoch })),
            Err(e) => cluster_error(&e),
        }
    }

    async fn object(&self, req: Request<Incoming>, bucket: &str, key: &str) -> Response<Body> {
        let meta_key = format!("o/{bucket}/{key}");
        match *req.method() {
            Method::PUT => self.put(req, &meta_key).await,
            Method::GET | Method::HEAD => self.get(req, &meta_key).await,
            Method::DELETE => self.delete(&meta_key).await,
            _ => {
                let mut r = error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "use PUT, GET, HEAD or DELETE",
                );
                r.headers_mut().insert(
                    header::ALLOW,
                    HeaderValue::from_static("PUT, GET, HEAD, DELETE"),
                );
                r
            }
        }
    }

    async fn put(&self, req: Request<Incoming>, meta_key: &str) -> Response<Body> {
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if let Some(len) = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
        {
            if len > MAX_OBJECT {
                return error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("object of {len} bytes is over the {MAX_OBJECT}-byte limit"),
                );
            }
        }
        let mut body = req.into_body();
        let mut buf = BytesMut::new();
        let mut size = 0u64;
        let mut inflight: VecDeque<JoinHandle<Result<ChunkRef, ReplicationError>>> =
            VecDeque::new();
        let mut chunks = Vec::new();
        let mut failure: Option<Response<Body>> = None;
        loop {
            let frame = match body.frame().await {
                None => break,
                Some(Ok(f)) => f,
                Some(Err(e)) => {
                    failure = Some(error(
                        StatusCode::BAD_REQUEST,
                        &format!("reading the request body: {e}"),
                    ));
                    break;
                }
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            size += data.len() as u64;
            if size > MAX_OBJECT {
                failure = Some(error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("object is over the {MAX_OBJECT}-byte limit"),
                ));
                break;
            }
            buf.extend_from_slice(&data);
            while buf.len() >= MAX_CHUNK {
                let piece = buf.split_to(MAX_CHUNK).freeze();
                if let Err(resp) = self.push_chunk(&mut inflight, &mut chunks, piece).await {
                    failure = Some(resp);
                    break;
                }
            }
            if failure.is_some() {
                break;
            }
        }
        // Small objects live inside their metadata (replicated by Raft):
        // no chunk files, no extra fsyncs.
        let inline = if failure.is_none()
            && inflight.is_empty()
            && chunks.is_empty()
            && buf.len() <= INLINE_MAX
        {
            Some(base64::engine::general_purpose::STANDARD.encode(&buf))
        } else {
            None
        };
        if failure.is_none() && inline.is_none() && !buf.is_empty() {
            let piece = buf.split().freeze();
            if let Err(resp) = self.push_chunk(&mut inflight, &mut chunks, piece).await {
                failure = Some(resp);
            }
        }
        while let Some(h) = inflight.pop_front() {
            match h.await {
                Ok(Ok(c)) => chunks.push(c),
                Ok(Err(e)) => failure = failure.or_else(|| Some(replication_error(&e))),
                Err(e) => {
                    failure = failure
                        .or_else(|| Some(error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())))
                }
            }
        }
        if let Some(resp) = failure {
            self.free_chunks(chunks);
            return resp;
        }
        let etag = match &inline {
            Some(_) => format!("{:08x}-i", crc32fast::hash(&buf)),
            None => etag(&chunks, size),
        };
        let meta = ObjectMeta {
            size,
            etag,
            modified_ms: now_ms(),
            content_type,
            chunks,
            inline,
        };
        let value = match serde_json::to_string(&meta) {
            Ok(v) => v,
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        };
        let cmd = Command::Txn {
            checks: Vec::new(),
            ops: vec![Op::Put {
                key: meta_key.to_string(),
                value,
            }],
        };
        match self.cluster.write(cmd).await {
            Ok(result) => {
                self.free_previous(&result.previous);
                let mut r = admin::json(
                    StatusCode::OK,
                    &serde_json::json!({"etag": meta.etag, "size": meta.size}),
                );
                if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", meta.etag)) {
                    r.headers_mut().insert(header::ETAG, v);
                }
                r
            }
            Err(e) => {
                // The commit's outcome is unknown only on timeout; chunks of
                // a lost commit are garbage, not data loss.
                if !matches!(e, ClusterError::NoQuorum(_)) {
                    self.free_chunks(meta.chunks);
                }
                cluster_error(&e)
            }
        }
    }

    async fn push_chunk(
        &self,
        inflight: &mut VecDeque<JoinHandle<Result<ChunkRef, ReplicationError>>>,
        chunks: &mut Vec<ChunkRef>,
        piece: Bytes,
    ) -> Result<(), Response<Body>> {
        let rep = self.replicator.clone();
        inflight.push_back(tokio::spawn(async move { rep.write(piece).await }));
        while inflight.len() >= PIPELINE {
            let Some(h) = inflight.pop_front() else { break };
            match h.await {
                Ok(Ok(c)) => chunks.push(c),
                Ok(Err(e)) => return Err(replication_error(&e)),
                Err(e) => return Err(error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())),
            }
        }
        Ok(())
    }

    fn free_chunks(&self, chunks: Vec<ChunkRef>) {
        if chunks.is_empty() {
            return;
        }
        let rep = self.replicator.clone();
        tokio::spawn(async move {
            for c in chunks {
                rep.delete(&c).await;
            }
        });
    }

    fn free_previous(&self, previous: &[Option<String>]) {
        for p in previous.iter().flatten() {
            if let Ok(old) = serde_json::from_str::<ObjectMeta>(p) {
                self.free_chunks(old.chunks);
            }
        }
    }

    async fn lookup(&self, meta_key: &str) -> Result<Option<ObjectMeta>, Response<Body>> {
        if let Err(e) = self.cluster.read_barrier().await {
            return Err(cluster_error(&e));
        }
        match self.cluster.meta().get(meta_key) {
            Ok(None) => Ok(None),
            Ok(Some(v)) => serde_json::from_str(&v).map(Some).map_err(|e| {
                error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("object metadata of {meta_key} is corrupt: {e}"),
                )
            }),
            Err(e) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())),
        }
    }

    async fn get(&self, req: Request<Incoming>, meta_key: &str) -> Response<Body> {
        let meta = match self.lookup(meta_key).await {
            Ok(Some(m)) => m,
            Ok(None) => {
                return error(
                    StatusCode::NOT_FOUND,
                    &format!("no object {}", &meta_key[2..]),
                )
            }
            Err(r) => return r,
        };
        let range = match req
            .headers()
            .get(header::RANGE)
            .map(|v| v.to_str().unwrap_or(""))
        {
            None => None,
            Some(spec) => match parse_range(spec, meta.size) {
                Ok(r) => Some(r),
                Err(Unsatisfiable) => {
                    let mut r = error(
                        StatusCode::RANGE_NOT_SATISFIABLE,
                        &format!(
                            "range {spec:?} is not satisfiable for an object of {} bytes",
                            meta.size
                        ),
                    );
                    if let Ok(v) = HeaderValue::from_str(&format!("bytes */{}", meta.size)) {
                        r.headers_mut().insert(header::CONTENT_RANGE, v);
                    }
                    return r;
                }
            },
        };
        let (start, end) = range.unwrap_or((0, meta.size)); // end exclusive
        let mut builder = Response::builder()
            .header(header::ACCEPT_RANGES, "bytes")
            .header(header::ETAG, format!("\"{}\"", meta.etag))
            .header(header::CONTENT_LENGTH, end - start)
            .header(
                header::CONTENT_TYPE,
                meta.content_type
                    .as_deref()
                    .unwrap_or("application/octet-stream"),
            )
            .header("x-b3-modified-ms", meta.modified_ms);
        if range.is_some() {
            builder = builder.status(StatusCode::PARTIAL_CONTENT).header(
                header::CONTENT_RANGE,
                format!("bytes {}-{}/{}", start, end.saturating_sub(1), meta.size),
            );
        }
        if req.method() == Method::HEAD || start == end {
            return builder
                .body(admin::full(Bytes::new()))
                .unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()));
        }
        if let Some(inline) = &meta.inline {
            use base64::Engine;
            return match base64::engine::general_purpose::STANDARD.decode(inline) {
                Ok(bytes) if bytes.len() as u64 == meta.size => {
                    let part = Bytes::from(bytes).slice(start as usize..end as usize);
                    builder.body(admin::full(part)).unwrap_or_else(|e| {
                        error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())
                    })
                }
                _ => error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("inline data of {} is corrupt", &meta_key[2..]),
                ),
            };
        }
        // The pieces of chunks that overlap [start, end).
        let mut pieces = Vec::new();
        let mut offset = 0u64;
        for c in &meta.chunks {
            let (cs, ce) = (offset, offset + u64::from(c.len));
            offset = ce;
            if ce <= start || cs >= end {
                continue;
            }
            let from = start.max(cs) - cs;
            let to = end.min(ce) - cs;
            pieces.push((*c, from as usize, to as usize));
        }
        // Read the first piece before answering, so an unreadable object is
        // an error status rather than a cut-off body.
        let mut pieces = pieces.into_iter();
        let Some((first, from, to)) = pieces.next() else {
            return builder
                .body(admin::full(Bytes::new()))
                .unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()));
        };
        let first_data = match self.replicator.read(&first).await {
            Ok(d) => d.slice(from..to),
            Err(e) => return replication_error(&e),
        };
        let rest: Vec<_> = pieces.collect();
        if rest.is_empty() {
            // One piece: answer in one write (no streaming round trips).
            return builder
                .body(admin::full(first_data))
                .unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()));
        }
        let (tx, rx) = mpsc::channel::<Result<Bytes, BoxError>>(PIPELINE);
        let rep = self.replicator.clone();
        tokio::spawn(async move {
            if tx.send(Ok(first_data)).await.is_err() {
                return;
            }
            let mut queue: VecDeque<PendingRead> = VecDeque::new();
            let mut next = rest.into_iter();
            loop {
                while queue.len() < PIPELINE {
                    let Some((c, from, to)) = next.next() else {
                        break;
                    };
                    let rep = rep.clone();
                    queue.push_back((tokio::spawn(async move { rep.read(&c).await }), from, to));
                }
                let Some((h, from, to)) = queue.pop_front() else {
                    return;
                };
                let item = match h.await {
                    Ok(Ok(d)) => Ok(d.slice(from..to)),
                    Ok(Err(e)) => Err(Box::new(e) as BoxError),
                    Err(e) => Err(Box::new(e) as BoxError),
                };
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    return;
                }
            }
        });
        builder
            .body(ChannelBody { rx }.boxed())
            .unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()))
    }

    async fn delete(&self, meta_key: &str) -> Response<Body> {
        let cmd = Command::Txn {
            checks: Vec::new(),
            ops: vec![Op::Delete {
                key: meta_key.to_string(),
            }],
        };
        match self.cluster.write(cmd).await {
            Ok(result) => {
                if result.previous.first().is_some_and(|p| p.is_some()) {
                    self.free_previous(&result.previous);
                    Response::builder()
                        .status(StatusCode::NO_CONTENT)
                        .body(admin::full(Bytes::new()))
                        .unwrap_or_else(|e| {
                            error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())
                        })
                } else {
                    error(
                        StatusCode::NOT_FOUND,
                        &format!("no object {}", &meta_key[2..]),
                    )
                }
            }
            Err(e) => cluster_error(&e),
        }
    }

    async fn list(&self, bucket: &str, req: &Request<Incoming>) -> Response<Body> {
        let query = parse_query(req.uri().query().unwrap_or(""));
        let prefix = query
            .iter()
            .find(|(k, _)| k == "prefix")
            .map(|(_, v)| v.as_str())
            .unwrap_or("");
        let after = query
            .iter()
            .find(|(k, _)| k == "start-after")
            .map(|(_, v)| v.clone());
        let limit = query
            .iter()
            .find(|(k, _)| k == "limit")
            .and_then(|(_, v)| v.parse::<usize>().ok())
            .unwrap_or(1000)
            .clamp(1, 10_000);
        if let Err(e) = self.cluster.read_barrier().await {
            return cluster_error(&e);
        }
        let base = format!("o/{bucket}/");
        let full_prefix = format!("{base}{prefix}");
        let after_key = after.map(|a| format!("{base}{a}"));
        let entries = match self
            .cluster
            .meta()
            .list(&full_prefix, after_key.as_deref(), limit + 1)
        {
            Ok(e) => e,
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        };
        let truncated = entries.len() > limit;
        #[derive(Serialize)]
        struct Item {
            key: String,
            size: u64,
            etag: String,
            modified_ms: u64,
        }
        let objects: Vec<Item> = entries
            .into_iter()
            .take(limit)
            .filter_map(|(k, v)| {
                let m: ObjectMeta = serde_json::from_str(&v).ok()?;
                Some(Item {
                    key: k[base.len()..].to_string(),
                    size: m.size,
                    etag: m.etag,
                    modified_ms: m.modified_ms,
                })
            })
            .collect();
        let next = if truncated {
            objects.last().map(|o| o.key.clone())
        } else {
            None
        };
        admin::json(
            StatusCode::OK,
            &serde_json::json!({
                "bucket": bucket,
                "prefix": prefix,
                "objects": objects,
                "truncated": truncated,
                "next_start_after": next,
            }),
        )
    }

    /// Cluster health as this node sees it.
    pub fn status(&self) -> Status {
        let s = &self.cluster.identity.settings;
        let (nodes, epoch) = self.cluster.nodes();
        let raft = self.cluster.raft_status();
        let up: Vec<_> = nodes.iter().filter(|n| self.cluster.is_up(n.id)).collect();
        let nodes_in = nodes.iter().filter(|n| n.is_in).count();
        let (mut clean, mut degraded, mut inactive) = (0, 0, 0);
        for pg in 0..s.pg_count {
            let set = replicas_of_pg(pg, &nodes, s.size);
            let alive = set.iter().filter(|n| self.cluster.is_up(n.id)).count();
            if alive >= s.size {
                clean += 1;
            } else if alive >= s.min_size {
                degraded += 1;
            } else {
                inactive += 1;
            }
        }
        let quorum = raft.leader.is_some();
        let mut checks = Vec::new();
        if !quorum {
            checks.push("no metadata leader: quorum lost or election in progress".to_string());
        }
        if up.len() < nodes.len() {
            checks.push(format!(
                "{} of {} nodes down",
                nodes.len() - up.len(),
                nodes.len()
            ));
        }
        if inactive > 0 {
            checks.push(format!(
                "{inactive} placement groups below min_size {}: writes to them are blocked",
                s.min_size
            ));
        }
        if degraded > 0 {
            checks.push(format!(
                "{degraded} placement groups degraded (fewer than {} replicas up)",
                s.size
            ));
        }
        let health = if !quorum || inactive > 0 {
            "HEALTH_ERR"
        } else if checks.is_empty() {
            "HEALTH_OK"
        } else {
            "HEALTH_WARN"
        };
        Status {
            cluster_id: s.cluster_id.clone(),
            health: health.into(),
            checks,
            node_id: format!("{:016x}", self.cluster.me.id),
            raft,
            quorum,
            epoch,
            nodes_total: nodes.len(),
            nodes_up: up.len(),
            nodes_in,
            size: s.size,
            min_size: s.min_size,
            pgs_total: s.pg_count,
            pgs_clean: clean,
            pgs_degraded: degraded,
            pgs_inactive: inactive,
            objects: self.cluster.meta().count_prefix("o/").unwrap_or(0),
            maint: None,
        }
    }

    fn node_list(&self) -> Vec<NodeStatus> {
        let (nodes, _) = self.cluster.nodes();
        let raft = self.cluster.raft_status();
        nodes
            .into_iter()
            .map(|n| NodeStatus {
                id: format!("{:016x}", n.id),
                addr: n.addr.to_string(),
                admin: n.admin.to_string(),
                domain: n.domain.clone(),
                weight: n.weight,
                up: self.cluster.is_up(n.id),
                is_in: n.is_in,
                raft: if raft.leader == Some(n.id) {
                    "leader"
                } else if raft.voters.contains(&n.id) {
                    "voter"
                } else if raft.learners.contains(&n.id) {
                    "learner"
                } else {
                    "joining"
                }
                .into(),
            })
            .collect()
    }

    async fn df(&self) -> Df {
        let (nodes, _) = self.cluster.nodes();
        let s = &self.cluster.identity.settings;
        let jobs = nodes.into_iter().map(|n| {
            let cluster = self.cluster.clone();
            let local = self.replicator.local().clone();
            async move {
                let id = format!("{:016x}", n.id);
                let r = if n.id == cluster.me.id {
                    tokio::task::spawn_blocking(move || local.usage())
                        .await
                        .map_err(|e| e.to_string())
                        .and_then(|r| r.map_err(|e| e.to_string()))
                } else {
                    match rpc::call(
                        &cluster.transport,
                        n.addr,
                        &Rpc::Usage,
                        &[],
                        Duration::from_secs(3),
                    )
                    .await
                    {
                        Ok((Reply::Usage(u), _)) => Ok(u),
                        Ok((other, _)) => Err(format!("unexpected reply {other:?}")),
                        Err(e) => Err(e.to_string()),
                    }
                };
                match r {
                    Ok(u) => NodeDf {
                        id,
                        usage: Some(u),
                        error: None,
                    },
                    Err(e) => NodeDf {
                        id,
                        usage: None,
                        error: Some(e),
                    },
                }
            }
        });
        let per_node = crate::cluster::futures_join_all(jobs).await;
        let (mut stored, mut objects) = (0, 0);
        if let Ok(all) = self.cluster.meta().list("o/", None, usize::MAX) {
            for (_, v) in all {
                if let Ok(m) = serde_json::from_str::<ObjectMeta>(&v) {
                    stored += m.size;
                    objects += 1;
                }
            }
        }
        let sum = |f: fn(&Usage) -> u64| {
            per_node
                .iter()
                .filter_map(|n| n.usage.as_ref())
                .map(f)
                .sum()
        };
        Df {
            raw_used: sum(|u| u.bytes),
            raw_total: sum(|u| u.fs_total),
            raw_avail: sum(|u| u.fs_avail),
            nodes: per_node,
            stored,
            objects,
            size: s.size,
        }
    }
}

/// A chunk read in flight and the slice of it the response needs.
type PendingRead = (JoinHandle<Result<Bytes, ReplicationError>>, usize, usize);

/// A response body fed by a channel (streams object data).
struct ChannelBody {
    rx: mpsc::Receiver<Result<Bytes, BoxError>>,
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.rx.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data)))
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn etag(chunks: &[ChunkRef], size: u64) -> String {
    let mut h = crc32fast::Hasher::new();
    for c in chunks {
        h.update(&c.crc.to_le_bytes());
        h.update(&c.id.0);
    }
    h.update(&size.to_le_bytes());
    format!("{:08x}-{}", h.finalize(), chunks.len())
}

fn error(status: StatusCode, msg: &str) -> Response<Body> {
    admin::json(status, &serde_json::json!({ "error": msg }))
}

fn cluster_error(e: &ClusterError) -> Response<Body> {
    let status = match e {
        ClusterError::NoQuorum(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, &e.to_string())
}

fn replication_error(e: &ReplicationError) -> Response<Body> {
    let text = e.to_string();
    let status = if text.contains("no space left") {
        StatusCode::INSUFFICIENT_STORAGE
    } else {
        match e {
            ReplicationError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ReplicationError::Full(_) => StatusCode::INSUFFICIENT_STORAGE,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        }
    };
    error(status, &text)
}

/// Splits `bucket[/key]` (percent-encoded) and validates both.
pub fn split_object_path(rest: &str) -> Result<(String, Option<String>), String> {
    let (bucket, key) = match rest.split_once('/') {
        Some((b, k)) if !k.is_empty() => (b, Some(k)),
        Some((b, _)) => (b, None),
        None => (rest, None),
    };
    let bucket = percent_decode(bucket).ok_or("bucket name is not valid percent-encoded UTF-8")?;
    if bucket.is_empty()
        || bucket.len() > 63
        || !bucket.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.' || b == b'_'
        })
    {
        return Err(format!(
            "bucket name {bucket:?} is invalid: use 1-63 characters among a-z 0-9 . - _"
        ));
    }
    let key = match key {
        None => None,
        Some(k) => {
            let k = percent_decode(k).ok_or("object key is not valid percent-encoded UTF-8")?;
            if k.len() > MAX_KEY || k.contains('\0') {
                return Err(format!(
                    "object key is invalid: at most {MAX_KEY} bytes, no NUL"
                ));
            }
            Some(k)
        }
    };
    Ok((bucket, key))
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Percent-decodes a path into raw bytes (file names need not be UTF-8).
fn percent_decode_bytes(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Some((percent_decode(k)?, percent_decode(&v.replace('+', " "))?))
        })
        .collect()
}

/// A `Range` header that is malformed or outside the object (416).
#[derive(Debug, PartialEq, Eq)]
pub struct Unsatisfiable;

/// Parses one `bytes=` range into `[start, end)`; `Err` when unsatisfiable
/// or malformed (both answered with 416).
pub fn parse_range(spec: &str, size: u64) -> Result<(u64, u64), Unsatisfiable> {
    let r = spec.trim().strip_prefix("bytes=").ok_or(Unsatisfiable)?;
    if r.contains(',') {
        return Err(Unsatisfiable);
    }
    let (a, b) = r.split_once('-').ok_or(Unsatisfiable)?;
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        let n: u64 = b.parse().map_err(|_| Unsatisfiable)?;
        if n == 0 || size == 0 {
            return Err(Unsatisfiable);
        }
        return Ok((size.saturating_sub(n), size));
    }
    let start: u64 = a.parse().map_err(|_| Unsatisfiable)?;
    if start >= size {
        return Err(Unsatisfiable);
    }
    let end = if b.is_empty() {
        size
    } else {
        let last: u64 = b.parse().map_err(|_| Unsatisfiable)?;
        if last < start {
            return Err(Unsatisfiable);
        }
        (last + 1).min(size)
    };
    Ok((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Ok((0, 10)));
        assert_eq!(parse_range("bytes=90-", 100), Ok((90, 100)));
        assert_eq!(parse_range("bytes=-10", 100), Ok((90, 100)));
        assert_eq!(parse_range("bytes=-1000", 100), Ok((0, 100)));
        assert_eq!(parse_range("bytes=50-1000", 100), Ok((50, 100)));
        assert_eq!(parse_range("bytes=100-", 100), Err(Unsatisfiable));
        assert_eq!(parse_range("bytes=9-3", 100), Err(Unsatisfiable));
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Err(Unsatisfiable));
        assert_eq!(parse_range("items=0-1", 100), Err(Unsatisfiable));
        assert_eq!(parse_range("bytes=x-", 100), Err(Unsatisfiable));
    }

    #[test]
    fn object_paths() {
        assert_eq!(
            split_object_path("photos/2024/a%20b.jpg").unwrap(),
            ("photos".into(), Some("2024/a b.jpg".into()))
        );
        assert_eq!(
            split_object_path("photos").unwrap(),
            ("photos".into(), None)
        );
        assert_eq!(
            split_object_path("photos/").unwrap(),
            ("photos".into(), None)
        );
        assert!(split_object_path("Bad!/x")
            .unwrap_err()
            .contains("bucket name"));
        assert!(split_object_path("b/%zz").is_err());
        assert!(split_object_path("b/a%00b").is_err());
    }
}
