//! Keeping the data safe over time: failure detection, recovery and
//! backfill, scrub, garbage collection and capacity limits. Part of the
//! chunk layer; it sits on [`crate::chunk`], [`crate::placement`],
//! [`crate::replication`] and [`crate::cluster`], and the admin API shows
//! what it does.
//!
//! Every node runs the same background jobs over its *own* chunks, so no
//! coordinator is needed and a node that returns after days simply catches
//! up:
//!
//! * [`health`] polls every node each second for its [`NodeReport`]
//!   (space, recovery, scrub, GC); the metadata leader marks a node *out*
//!   after it has been *down* for `--out-after`, and back *in* when it
//!   returns (only if it was marked out automatically).
//! * [`recovery`] makes the local chunk directory match placement: it pulls
//!   every chunk of its placement groups that a peer has and it lacks, and
//!   deletes chunks of groups it no longer serves once every replica of the
//!   group holds them. Throttled by [`throttle`].
//! * [`scrub`] re-reads every local chunk, checks its crc32, and rewrites a
//!   bad copy from a good replica; then a recovery pass compares chunk lists.
//! * [`gc`] deletes local chunks that no namespace entry references, after
//!   a safety delay.
//!
//! Peers talk through their own message type ([`MaintRequest`]) on the same
//! QUIC transport: [`Maintenance::wrap`] serves it in front of the node's
//! other requests (and counts client chunk traffic for the throttle).

pub mod cli;
pub mod gc;
pub mod health;
pub mod recovery;
pub mod scrub;
pub mod throttle;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::chunk::{ChunkError, ChunkStore};
use crate::cluster::rpc::{encode_reply, RemoteError};
use crate::cluster::{Cluster, NodeId, NodeInfo};
use crate::net::{wire, Peer, Service};
use crate::placement::ChunkId;
use crate::replication::{remote_chunk_error, ReplicationMetrics};
use throttle::LoadMeter;

pub use gc::{ObjectRefs, ReferenceSource};
pub use health::{Fullness, MaintStatus};

/// Flags of `store server` for failure handling, recovery, scrub, GC and
/// capacity (all also read from `STORE_*` variables).
#[derive(Debug, Clone, clap::Args)]
pub struct MaintArgs {
    /// A node that has not answered heartbeats for this long is down
    /// (writes skip it, reads go elsewhere).
    #[arg(long, env = "STORE_DOWN_AFTER", default_value = "5s", value_parser = humantime::parse_duration)]
    pub down_after: Duration,

    /// A node down for this much longer is marked out and its data is
    /// re-replicated onto the others (0 = never automatically).
    #[arg(long, env = "STORE_OUT_AFTER", default_value = "60s", value_parser = humantime::parse_duration)]
    pub out_after: Duration,

    /// Recovery bandwidth ceiling per node, bytes per second (e.g. 100MiB,
    /// 1G; 0 = unlimited).
    #[arg(long, env = "STORE_RECOVERY_BANDWIDTH", default_value = "200MiB", value_parser = parse_bytes)]
    pub recovery_bandwidth: u64,

    /// Chunk transfers in flight per node for recovery (while no client
    /// I/O is going on).
    #[arg(long, env = "STORE_RECOVERY_MAX_ACTIVE", default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub recovery_max_active: u64,

    /// Share of the recovery bandwidth left to recovery while clients are
    /// reading or writing on the node (0.01-1; one transfer at a time).
    #[arg(long, env = "STORE_RECOVERY_BUSY_FRACTION", default_value_t = 0.05, value_parser = parse_fraction)]
    pub recovery_busy_fraction: f64,

    /// Compare chunk lists with peers at least this often (a map change
    /// starts a pass at once).
    #[arg(long, env = "STORE_RECOVERY_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub recovery_interval: Duration,

    /// Full scrub (re-read and check every chunk) this often, counted from
    /// the last finished one (0 = only when `store scrub` asks).
    #[arg(long, env = "STORE_SCRUB_INTERVAL", default_value = "7d", value_parser = humantime::parse_duration)]
    pub scrub_interval: Duration,

    /// Scrub read bandwidth per node, bytes per second (a tenth of it
    /// while clients are busy; 0 = unlimited).
    #[arg(long, env = "STORE_SCRUB_BANDWIDTH", default_value = "50MiB", value_parser = parse_bytes)]
    pub scrub_bandwidth: u64,

    /// Chunks younger than this are never garbage-collected (a write puts
    /// its chunks before it commits the metadata naming them).
    #[arg(long, env = "STORE_GC_DELAY", default_value = "1h", value_parser = humantime::parse_duration)]
    pub gc_delay: Duration,

    /// Look for unreferenced chunks this often (0 = never).
    #[arg(long, env = "STORE_GC_INTERVAL", default_value = "10m", value_parser = humantime::parse_duration)]
    pub gc_interval: Duration,

    /// Disk use above which the node is reported near full (a warning).
    #[arg(long, env = "STORE_NEARFULL_RATIO", default_value_t = 0.85, value_parser = parse_fraction)]
    pub nearfull_ratio: f64,

    /// Disk use above which the node accepts no more recovery data.
    #[arg(long, env = "STORE_BACKFILLFULL_RATIO", default_value_t = 0.90, value_parser = parse_fraction)]
    pub backfillfull_ratio: f64,

    /// Disk use above which writes to the node's placement groups are
    /// refused (HTTP 507 / ENOSPC) instead of filling the disk.
    #[arg(long, env = "STORE_FULL_RATIO", default_value_t = 0.95, value_parser = parse_fraction)]
    pub full_ratio: f64,
}

impl Default for MaintArgs {
    fn default() -> Self {
        Self {
            down_after: Duration::from_secs(5),
            out_after: Duration::from_secs(60),
            recovery_bandwidth: 200 << 20,
            recovery_max_active: 4,
            recovery_busy_fraction: 0.05,
            recovery_interval: Duration::from_secs(30),
            scrub_interval: Duration::from_secs(7 * 24 * 3600),
            scrub_bandwidth: 50 << 20,
            gc_delay: Duration::from_secs(3600),
            gc_interval: Duration::from_secs(600),
            nearfull_ratio: 0.85,
            backfillfull_ratio: 0.90,
            full_ratio: 0.95,
        }
    }
}

impl MaintArgs {
    /// Checks the flags that depend on each other.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.nearfull_ratio <= self.backfillfull_ratio
            && self.backfillfull_ratio <= self.full_ratio)
        {
            return Err(format!(
                "--nearfull-ratio {} <= --backfillfull-ratio {} <= --full-ratio {} must hold",
                self.nearfull_ratio, self.backfillfull_ratio, self.full_ratio
            ));
        }
        if self.down_after < Duration::from_millis(500) {
            return Err(format!(
                "--down-after {:?} is too short: heartbeats are sent every second; use at least 2s",
                self.down_after
            ));
        }
        Ok(())
    }
}

/// Parses a byte count: `0`, `1048576`, `64KiB`, `100MiB`, `1G`, `2GB`.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a byte count (examples: 0, 64KiB, 100MiB, 1G)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => return Err(format!("{s:?}: unknown unit {other:?} (use KiB, MiB, GiB)")),
    };
    Ok((n * mult as f64) as u64)
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number between 0 and 1"))?;
    if !(0.01..=1.0).contains(&v) {
        return Err(format!("{v} is outside 0.01..=1"));
    }
    Ok(v)
}

/// Requests of the maintenance jobs between nodes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MaintRequest {
    /// This node's [`NodeReport`].
    Report,
    /// Chunks stored here in these placement groups (reply body: packed
    /// records of 16-byte id + u32 LE length).
    ListChunks {
        /// Placement groups.
        pgs: Vec<u32>,
    },
    /// Which of the ids in the body (packed 16-byte ids) are stored here
    /// (reply body: one byte 0/1 per id).
    HasChunks,
    /// A chunk for recovery or repair (reply body = data). Not counted as
    /// client load.
    FetchChunk {
        /// Id.
        id: ChunkId,
    },
    /// Start a scrub now (if none is running).
    StartScrub,
    /// Delete the chunks in the body (packed ids): the sender's GC found
    /// them unreferenced.
    GcDelete,
}

/// Replies to [`MaintRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MaintReply {
    /// To [`MaintRequest::Report`].
    Report(Box<NodeReport>),
    /// To `ListChunks` / `HasChunks` (data in the body).
    Listed,
    /// To `FetchChunk` (body = data).
    Chunk {
        /// crc32 of the body.
        crc: u32,
    },
    /// To `StartScrub`: whether a new scrub started (false: one was running).
    Scrub {
        /// Started now.
        started: bool,
    },
}

/// Header of a maintenance request on the wire: `{"Maint": …}`, a tag no
/// other request uses, so [`Maintenance::wrap`] recognises it.
#[derive(Debug, Serialize, Deserialize)]
enum Envelope {
    Maint(MaintRequest),
}

/// What one node says about itself (polled every second by every node).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NodeReport {
    /// Node id.
    pub node_id: NodeId,
    /// Map epoch this node has applied.
    pub epoch: u64,
    /// Filesystem size of the data directory.
    pub fs_total: u64,
    /// Space available on it.
    pub fs_avail: u64,
    /// Fraction used (0..1).
    pub used_ratio: f64,
    /// Capacity state under this node's own ratios.
    pub fullness: Fullness,
    /// Chunks stored.
    pub chunks: u64,
    /// Bytes of chunk data stored.
    pub chunk_bytes: u64,
    /// Recovery state.
    pub recovery: recovery::RecoveryProgress,
    /// Scrub state.
    pub scrub: scrub::ScrubProgress,
    /// Garbage collection state.
    pub gc: gc::GcProgress,
}

/// Cached listing of the local chunk directory (id → length), so peers
/// asking for several batches of placement groups cost one directory walk.
#[derive(Default)]
struct Inventory {
    cached: Mutex<Option<(Instant, Listing)>>,
}

/// Local chunk ids and their lengths.
type Listing = Arc<HashMap<ChunkId, u32>>;

/// The maintenance jobs of one node and their shared state.
pub struct Maintenance {
    /// Cluster handle.
    pub cluster: Arc<Cluster>,
    /// Local chunks.
    pub local: ChunkStore,
    /// Settings.
    pub args: MaintArgs,
    /// Client load on this node (for the throttles).
    pub load: LoadMeter,
    data_dir: PathBuf,
    health: health::Health,
    recovery: recovery::Recovery,
    scrub: scrub::Scrub,
    gc: gc::Gc,
    inventory: Inventory,
    gauges: Gauges,
}

/// Prometheus gauges of the maintenance jobs (refreshed every second).
#[derive(Default)]
struct Gauges {
    g: prometheus_client::metrics::family::Family<
        Vec<(String, String)>,
        prometheus_client::metrics::gauge::Gauge<f64, std::sync::atomic::AtomicU64>,
    >,
}

impl Maintenance {
    /// Sets up the jobs (started by [`Maintenance::spawn`]). `sources` say
    /// which chunks the namespace references (see [`gc`]).
    pub fn new(
        cluster: Arc<Cluster>,
        local: ChunkStore,
        data_dir: &Path,
        args: MaintArgs,
        sources: Vec<Arc<dyn ReferenceSource>>,
    ) -> Arc<Self> {
        let load = LoadMeter::default();
        Arc::new(Self {
            recovery: recovery::Recovery::new(&args, load.clone()),
            scrub: scrub::Scrub::new(&args, load.clone(), data_dir),
            gc: gc::Gc::new(sources),
            health: health::Health::default(),
            cluster,
            local,
            args,
            load,
            data_dir: data_dir.to_path_buf(),
            inventory: Inventory::default(),
            gauges: Gauges::default(),
        })
    }

    /// Registers the maintenance metrics (`store_maint{what=...}`).
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.sub_registry_with_prefix("store").register(
            "maint",
            "Failure handling, recovery, scrub, GC and capacity, by what: node_* for this node, cluster_* as this node sees the cluster",
            self.gauges.g.clone(),
        );
    }

    /// Refreshes the gauges from this node's report and the cluster view.
    async fn update_metrics(&self) {
        let r = self.report().await;
        let st = self.status().await;
        let set = |k: &str, v: f64| {
            self.gauges
                .g
                .get_or_create(&vec![("what".to_string(), k.to_string())])
                .set(v);
        };
        set("node_used_ratio", r.used_ratio);
        set(
            "node_full",
            f64::from(u8::from(r.fullness == Fullness::Full)),
        );
        set(
            "node_nearfull",
            f64::from(u8::from(r.fullness != Fullness::Ok)),
        );
        set(
            "node_recovery_missing_chunks",
            r.recovery.missing_chunks as f64,
        );
        set(
            "node_recovery_missing_bytes",
            r.recovery.missing_bytes as f64,
        );
        set("node_recovery_moved_bytes", r.recovery.moved_bytes as f64);
        set("node_recovery_moved_chunks", r.recovery.moved_chunks as f64);
        set("node_recovery_rate_bytes", r.recovery.rate_bps as f64);
        set(
            "node_recovery_throttled",
            f64::from(u8::from(r.recovery.throttled)),
        );
        set("node_surplus_deleted", r.recovery.surplus_deleted as f64);
        set("node_scrub_running", f64::from(u8::from(r.scrub.running)));
        set("node_scrub_checked", r.scrub.checked as f64);
        set("node_scrub_total", r.scrub.total as f64);
        set("node_scrub_corrupt", r.scrub.corrupt as f64);
        set("node_scrub_repaired", r.scrub.repaired as f64);
        set("node_scrub_unrepairable", r.scrub.unrepairable as f64);
        set("node_gc_deleted", r.gc.deleted as f64);
        set(
            "node_gc_blocked",
            f64::from(u8::from(r.gc.blocked.is_some())),
        );
        let down = st.nodes.iter().filter(|n| n.state != "up").count();
        let out = st.nodes.iter().filter(|n| !n.is_in).count();
        set("cluster_nodes_down", down as f64);
        set("cluster_nodes_out", out as f64);
        set("cluster_pgs_recovering", f64::from(st.pgs_recovering));
        set("cluster_pgs_degraded", f64::from(st.pgs_degraded));
        set("cluster_recovery_bytes_to_move", st.bytes_to_move as f64);
        set("cluster_recovery_chunks_to_move", st.chunks_to_move as f64);
        set("cluster_recovery_rate_bytes", st.rate_bps as f64);
        set(
            "cluster_recovery_eta_seconds",
            st.eta_s.map(|s| s as f64).unwrap_or(0.0),
        );
    }

    /// Starts the background jobs; they stop at `shutdown`.
    pub fn spawn(self: &Arc<Self>, metrics: ReplicationMetrics, shutdown: b3_common::Shutdown) {
        tokio::spawn(self.clone().watch_client_load(metrics, shutdown.clone()));
        tokio::spawn(health::run(self.clone(), shutdown.clone()));
        tokio::spawn(recovery::run(self.clone(), shutdown.clone()));
        tokio::spawn(scrub::run(self.clone(), shutdown.clone()));
        tokio::spawn(gc::run(self.clone(), shutdown));
    }

    /// Marks the node busy whenever its replicator serves a client chunk
    /// read or write (checked every 100 ms).
    async fn watch_client_load(
        self: Arc<Self>,
        metrics: ReplicationMetrics,
        mut shutdown: b3_common::Shutdown,
    ) {
        let mut last = 0;
        loop {
            let now = metrics.chunk_reads.get() + metrics.chunk_writes.get();
            if now != last {
                last = now;
                self.load.record();
            }
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }

    /// Puts the maintenance requests in front of the node's `inner`
    /// service, refuses chunk writes when this node is full, and counts
    /// client chunk requests as load.
    pub fn wrap(self: &Arc<Self>, inner: Service) -> Service {
        let this = self.clone();
        Arc::new(move |peer: Peer, frame: wire::Frame| {
            let this = this.clone();
            let inner = inner.clone();
            Box::pin(async move {
                let h = &frame.header;
                if h.starts_with(b"{\"Maint\"") {
                    if !peer.authenticated {
                        let r: Result<MaintReply, _> = Err(RemoteError::Unauthenticated);
                        return (encode_maint(&r), Bytes::new());
                    }
                    let (reply, body) = match wire::from_header::<Envelope>(h) {
                        Ok(Envelope::Maint(req)) => this.handle(req, frame.body).await,
                        Err(e) => (Err(RemoteError::Malformed(e.to_string())), Bytes::new()),
                    };
                    return (encode_maint(&reply), body);
                }
                let put = h.starts_with(b"{\"PutChunk\"");
                if put || h.starts_with(b"{\"GetChunk\"") {
                    this.load.record();
                }
                if put && peer.authenticated {
                    let f = this.local_fullness();
                    if f == Fullness::Full {
                        let reply = Err(RemoteError::NoSpace(format!(
                            "node {:016x} is full (over --full-ratio {}): no space left for new chunks; add capacity or delete data",
                            this.cluster.me.id, this.args.full_ratio
                        )));
                        return (encode_reply(&reply), Bytes::new());
                    }
                }
                inner(peer, frame).await
            })
        })
    }

    async fn handle(
        &self,
        req: MaintRequest,
        body: Bytes,
    ) -> (Result<MaintReply, RemoteError>, Bytes) {
        match req {
            MaintRequest::Report => (
                Ok(MaintReply::Report(Box::new(self.report().await))),
                Bytes::new(),
            ),
            MaintRequest::ListChunks { pgs } => {
                let inv = self.inventory(Duration::from_secs(1)).await;
                let n = self.cluster.identity.settings.pg_count;
                let wanted: std::collections::HashSet<u32> = pgs.into_iter().collect();
                let mut out = Vec::new();
                for (id, len) in inv.iter() {
                    if wanted.contains(&id.pg(n)) {
                        if out.len() + 20 > wire::MAX_BODY {
                            return (
                                Err(RemoteError::Other("chunk listing over the frame limit: ask for fewer placement groups".into())),
                                Bytes::new(),
                            );
                        }
                        out.extend_from_slice(&id.0);
                        out.extend_from_slice(&len.to_le_bytes());
                    }
                }
                (Ok(MaintReply::Listed), Bytes::from(out))
            }
            MaintRequest::HasChunks => {
                let ids = unpack_ids(&body);
                let local = self.local.clone();
                let out = tokio::task::spawn_blocking(move || {
                    ids.iter()
                        .map(|id| u8::from(local.contains(id)))
                        .collect::<Vec<u8>>()
                })
                .await
                .unwrap_or_default();
                (Ok(MaintReply::Listed), Bytes::from(out))
            }
            MaintRequest::FetchChunk { id } => {
                let local = self.local.clone();
                match tokio::task::spawn_blocking(move || local.get(&id)).await {
                    Ok(Ok((data, crc))) => (Ok(MaintReply::Chunk { crc }), data),
                    Ok(Err(e)) => (Err(remote_chunk_error(e)), Bytes::new()),
                    Err(e) => (Err(RemoteError::Other(e.to_string())), Bytes::new()),
                }
            }
            MaintRequest::GcDelete => {
                let n = gc::delete_local(self, unpack_ids(&body)).await;
                if n > 0 {
                    tracing::info!(chunks = n, "deleted garbage chunks on a peer's request");
                }
                (Ok(MaintReply::Listed), Bytes::new())
            }
            MaintRequest::StartScrub => {
                let started = self.scrub.request();
                (Ok(MaintReply::Scrub { started }), Bytes::new())
            }
        }
    }

    /// Local chunk listing, at most `max_age` old.
    async fn inventory(&self, max_age: Duration) -> Arc<HashMap<ChunkId, u32>> {
        {
            let c = self
                .inventory
                .cached
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some((at, inv)) = c.as_ref() {
                if at.elapsed() <= max_age {
                    return inv.clone();
                }
            }
        }
        let local = self.local.clone();
        let inv = tokio::task::spawn_blocking(move || walk_inventory(&local))
            .await
            .unwrap_or_default();
        let inv = Arc::new(inv);
        *self
            .inventory
            .cached
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), inv.clone()));
        inv
    }

    /// Forgets the cached listing (after local changes).
    fn invalidate_inventory(&self) {
        *self
            .inventory
            .cached
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// This node's capacity state.
    pub fn local_fullness(&self) -> Fullness {
        Fullness::of(used_ratio(&self.data_dir), &self.args)
    }

    /// This node's report.
    pub async fn report(&self) -> NodeReport {
        let (total, avail) = crate::chunk::fs_space(&self.data_dir);
        // Counts for status only: a listing up to 30 s old spares a
        // directory walk per peer poll.
        let inv = self.inventory(Duration::from_secs(30)).await;
        let ratio = used_ratio(&self.data_dir);
        NodeReport {
            node_id: self.cluster.me.id,
            epoch: self.cluster.nodes().1,
            fs_total: total,
            fs_avail: avail,
            used_ratio: ratio,
            fullness: Fullness::of(ratio, &self.args),
            chunks: inv.len() as u64,
            chunk_bytes: inv.values().map(|l| u64::from(*l)).sum(),
            recovery: self.recovery.progress(),
            scrub: self.scrub.progress(),
            gc: self.gc.progress(),
        }
    }

    /// Reports of every node (ours fresh, peers' as last polled).
    pub async fn reports(&self) -> HashMap<NodeId, (NodeReport, Instant)> {
        let mut all = self.health.reports();
        all.insert(self.cluster.me.id, (self.report().await, Instant::now()));
        all
    }

    /// The write admission check for [`crate::replication::Replicator`]:
    /// refuses a chunk write when a replica it would land on is full.
    pub fn admission(self: &Arc<Self>) -> crate::replication::Admission {
        let this = self.clone();
        Arc::new(move |targets: &[NodeInfo]| {
            for n in targets {
                let full = if n.id == this.cluster.me.id {
                    this.local_fullness() == Fullness::Full
                } else {
                    this.health.fullness(n.id) == Some(Fullness::Full)
                };
                if full {
                    return Err(format!(
                        "node {:016x} is full: no space left for new writes to its placement groups (free space or add a node; `store df` shows usage)",
                        n.id
                    ));
                }
            }
            Ok(())
        })
    }

    /// Sends a maintenance request to `node`.
    pub async fn call(
        &self,
        node: &NodeInfo,
        req: MaintRequest,
        body: &[u8],
        timeout: Duration,
    ) -> Result<(MaintReply, Bytes), String> {
        let header = wire::to_header(&Envelope::Maint(req)).map_err(|e| e.to_string())?;
        let frame = self
            .cluster
            .transport
            .call(node.addr, &header, body, timeout)
            .await
            .map_err(|e| e.to_string())?;
        let reply: Result<MaintReply, RemoteError> = wire::from_header(&frame.header)
            .map_err(|e| format!("reply from {}: {e}", node.addr))?;
        match reply {
            Ok(r) => {
                self.cluster.mark_seen(node.id);
                Ok((r, frame.body))
            }
            Err(e) => Err(format!("node {:016x}: {e}", node.id)),
        }
    }

    /// Reads chunk `id` from `node` for recovery; checks its crc.
    async fn fetch(&self, node: &NodeInfo, id: ChunkId) -> Result<(Bytes, u32), String> {
        let (reply, body) = self
            .call(
                node,
                MaintRequest::FetchChunk { id },
                &[],
                crate::replication::CHUNK_TIMEOUT,
            )
            .await?;
        let MaintReply::Chunk { crc } = reply else {
            return Err(format!("unexpected reply {reply:?}"));
        };
        let actual = crc32fast::hash(&body);
        if actual != crc {
            return Err(format!(
                "chunk {id} from node {:016x}: crc32 mismatch in transfer (expected {crc:08x}, got {actual:08x})",
                node.id
            ));
        }
        Ok((body, crc))
    }

    /// Stores a recovered chunk locally.
    async fn store_local(&self, id: ChunkId, data: Bytes, crc: u32) -> Result<(), ChunkError> {
        let local = self.local.clone();
        let r = tokio::task::spawn_blocking(move || local.put(&id, &data, crc))
            .await
            .map_err(|e| ChunkError::Io {
                action: "storing",
                path: id.to_string(),
                source: std::io::Error::other(e.to_string()),
            })?;
        self.invalidate_inventory();
        r
    }

    /// Cluster-wide view for `store status`.
    pub async fn status(&self) -> MaintStatus {
        health::status(self).await
    }

    /// Wakes the recovery loop (map changed, scrub finished, ...).
    pub fn kick_recovery(&self) {
        self.recovery.kick();
    }

    /// Handles `/v1/scrub` and `/v1/maint` on the admin port; `None` for
    /// other paths.
    pub async fn route(
        self: &Arc<Self>,
        method: &http::Method,
        path: &str,
    ) -> Option<http::Response<b3_common::admin::Body>> {
        use b3_common::admin::json;
        use http::StatusCode;
        match (method, path) {
            (&http::Method::GET, "/v1/maint") => Some(json(StatusCode::OK, &self.status().await)),
            (&http::Method::POST, "/v1/scrub") => {
                let (nodes, _) = self.cluster.nodes();
                let mut started = Vec::new();
                let mut problems = Vec::new();
                for n in nodes {
                    if n.id == self.cluster.me.id {
                        if self.scrub.request() {
                            started.push(format!("{:016x}", n.id));
                        }
                        continue;
                    }
                    if !self.cluster.is_up(n.id) {
                        problems.push(format!("node {:016x} is down", n.id));
                        continue;
                    }
                    match self
                        .call(&n, MaintRequest::StartScrub, &[], Duration::from_secs(5))
                        .await
                    {
                        Ok((MaintReply::Scrub { started: true }, _)) => {
                            started.push(format!("{:016x}", n.id))
                        }
                        Ok(_) => {}
                        Err(e) => problems.push(e),
                    }
                }
                Some(json(
                    StatusCode::OK,
                    &serde_json::json!({ "started": started, "problems": problems }),
                ))
            }
            (_, "/v1/maint") | (_, "/v1/scrub") => Some(json(
                StatusCode::METHOD_NOT_ALLOWED,
                &serde_json::json!({"error": "use GET /v1/maint or POST /v1/scrub"}),
            )),
            _ => None,
        }
    }
}

fn encode_maint(reply: &Result<MaintReply, RemoteError>) -> Vec<u8> {
    wire::to_header(reply).unwrap_or_else(|e| {
        wire::to_header(&Err::<MaintReply, _>(RemoteError::Other(e.to_string())))
            .unwrap_or_default()
    })
}

/// Bytes the store can use on a node: free space plus its chunks' bytes
/// (the default placement weight, in GiB).
pub fn usable_space(local: &ChunkStore) -> u64 {
    match local.usage() {
        Ok(u) => u.fs_avail + u.bytes,
        Err(_) => crate::chunk::fs_space(local.root()).0,
    }
}

/// Fraction of the filesystem holding `path` in use, as `df` shows it:
/// used / (used + available to unprivileged users), so blocks reserved
/// for root (or missing from a thin volume) do not count as used.
pub fn used_ratio(path: &Path) -> f64 {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return 0.0;
    };
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a valid out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return 0.0;
    }
    ratio_of(st.f_blocks as u64, st.f_bfree as u64, st.f_bavail as u64)
}

/// `df`'s use fraction from block counts (total, free, available).
fn ratio_of(total: u64, free: u64, avail: u64) -> f64 {
    let used = total.saturating_sub(free);
    if used + avail == 0 {
        return 0.0;
    }
    used as f64 / (used + avail) as f64
}

/// Packs ids for `HasChunks`.
fn pack_ids(ids: &[ChunkId]) -> Vec<u8> {
    ids.iter().flat_map(|id| id.0).collect()
}

fn unpack_ids(body: &[u8]) -> Vec<ChunkId> {
    body.chunks_exact(16)
        .map(|c| {
            let mut b = [0u8; 16];
            b.copy_from_slice(c);
            ChunkId(b)
        })
        .collect()
}

/// Decodes a `ListChunks` reply body.
fn unpack_listing(body: &[u8]) -> Vec<(ChunkId, u32)> {
    body.chunks_exact(20)
        .map(|c| {
            let mut b = [0u8; 16];
            b.copy_from_slice(&c[..16]);
            let mut l = [0u8; 4];
            l.copy_from_slice(&c[16..]);
            (ChunkId(b), u32::from_le_bytes(l))
        })
        .collect()
}

/// Every local chunk and its length (blocking).
fn walk_inventory(local: &ChunkStore) -> HashMap<ChunkId, u32> {
    let ids = match local.list() {
        Ok(ids) => ids,
        Err(e) => {
            tracing::warn!(error = %e, "listing local chunks");
            return HashMap::new();
        }
    };
    ids.into_iter()
        .filter_map(|id| {
            let len = std::fs::metadata(local.path(&id))
                .ok()?
                .len()
                .saturating_sub(4);
            Some((id, len as u32))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_parse_with_units_and_reject_garbage() {
        assert_eq!(parse_bytes("0").unwrap(), 0);
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert_eq!(parse_bytes("64KiB").unwrap(), 64 << 10);
        assert_eq!(parse_bytes("100MiB").unwrap(), 100 << 20);
        assert_eq!(parse_bytes("1G").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("1.5 GiB").unwrap(), 3 << 29);
        assert!(parse_bytes("lots")
            .unwrap_err()
            .contains("not a byte count"));
        assert!(parse_bytes("5 parsecs")
            .unwrap_err()
            .contains("unknown unit"));
    }

    #[test]
    fn use_ratio_is_dfs() {
        // 100 blocks, 40 free of which 30 available: 60 / (60 + 30).
        assert!((ratio_of(100, 40, 30) - 60.0 / 90.0).abs() < 1e-9);
        assert_eq!(ratio_of(0, 0, 0), 0.0);
        assert_eq!(ratio_of(100, 100, 100), 0.0);
        let r = used_ratio(Path::new("/"));
        assert!((0.0..=1.0).contains(&r));
    }

    #[test]
    fn ratios_must_be_ordered() {
        let mut a = MaintArgs::default();
        assert!(a.validate().is_ok());
        a.nearfull_ratio = 0.97;
        assert!(a.validate().unwrap_err().contains("--nearfull-ratio"));
        assert!(parse_fraction("1.5").is_err());
        assert!(parse_fraction("x").is_err());
    }

    #[test]
    fn id_packing_round_trips() {
        let ids = vec![ChunkId::random(), ChunkId::random()];
        assert_eq!(unpack_ids(&pack_ids(&ids)), ids);
        let mut listing = Vec::new();
        listing.extend_from_slice(&ids[0].0);
        listing.extend_from_slice(&77u32.to_le_bytes());
        listing.extend_from_slice(b"trailing garbage");
        assert_eq!(unpack_listing(&listing), vec![(ids[0], 77)]);
    }

    #[test]
    fn envelope_tag_is_what_wrap_looks_for() {
        let h = wire::to_header(&Envelope::Maint(MaintRequest::Report)).unwrap();
        assert!(
            h.starts_with(b"{\"Maint\""),
            "{}",
            String::from_utf8_lossy(&h)
        );
        let put = wire::to_header(&crate::cluster::rpc::Request::PutChunk {
            id: ChunkId::random(),
            crc: 1,
        })
        .unwrap();
        assert!(put.starts_with(b"{\"PutChunk\""));
    }
}
