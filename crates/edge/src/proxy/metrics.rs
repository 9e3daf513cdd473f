//! Prometheus metrics of the data path, registered in the binary's one
//! registry (served on the admin port's `/metrics`).

use std::sync::{Arc, LazyLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The label value for "no router" / "no service" (shared, not reallocated).
pub static NONE: LazyLock<Arc<String>> = LazyLock::new(|| Arc::new("none".to_string()));

/// Labels of a finished request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Entry point.
    pub entrypoint: &'static str,
    /// Router (`none` when nothing matched).
    pub router: Arc<String>,
    /// Service (`none` when not forwarded).
    pub service: Arc<String>,
    /// Status code.
    pub code: u16,
}

/// Labels naming a router.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouterLabels {
    /// Router.
    pub router: Arc<String>,
}

/// Labels naming an entry point.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EntrypointLabels {
    /// Entry point.
    pub entrypoint: &'static str,
}

/// Labels of a TLS handshake.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    /// `ok` or `error`.
    pub result: &'static str,
}

/// Labels of a backend server.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerLabels {
    /// Service.
    pub service: String,
    /// Server URL.
    pub url: String,
}

type HistFamily = Family<RouterLabels, Histogram, fn() -> Histogram>;

/// All data-path metrics.
#[derive(Clone)]
pub struct Metrics {
    /// Requests by entry point, router, service and status.
    pub requests: Family<RequestLabels, Counter>,
    /// Request duration by router.
    pub duration: HistFamily,
    /// Open client connections by entry point.
    pub open_connections: Family<EntrypointLabels, Gauge>,
    /// TLS handshakes by result.
    pub handshakes: Family<HandshakeLabels, Counter>,
    /// 1 when a backend server is usable, 0 when down or ejected.
    pub backend_up: Family<ServerLabels, Gauge>,
    /// Configuration reloads by result.
    pub reloads: Family<HandshakeLabels, Counter>,
}

fn histogram() -> Histogram {
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

impl Metrics {
    /// Creates the metrics and registers them.
    pub fn register(registry: &mut Registry) -> Metrics {
        let m = Metrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(histogram as fn() -> Histogram),
            open_connections: Family::default(),
            handshakes: Family::default(),
            backend_up: Family::default(),
            reloads: Family::default(),
        };
        registry.register("edge_requests", "HTTP requests handled", m.requests.clone());
        registry.register(
            "edge_request_duration_seconds",
            "Time from request received to response headers sent",
            m.duration.clone(),
        );
        registry.register(
            "edge_open_connections",
            "Open client connections",
            m.open_connections.clone(),
        );
        registry.register(
            "edge_tls_handshakes",
            "TLS handshakes",
            m.handshakes.clone(),
        );
        registry.register(
            "edge_backend_up",
            "Backend server usable (1) or not (0)",
            m.backend_up.clone(),
        );
        registry.register(
            "edge_config_reloads",
            "Configuration reloads",
            m.reloads.clone(),
        );
        m
    }
}
