//! What operators see: the Prometheus metrics, the status document served
//! as JSON at `/api/status` on the admin port, and the `vip status`
//! client that prints it.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use b3_common::admin::{self, Handler};
use http::StatusCode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;

use crate::fsm::State;
use crate::health::CheckStatus;
use crate::packet::DropReason;

type Labels = Vec<(String, String)>;

/// The agent's metrics (prefix `vip_`).
#[derive(Clone, Default)]
pub struct Metrics {
    /// 0 INIT, 1 BACKUP, 2 MASTER, 3 FAULT.
    pub state: Gauge,
    /// Effective priority.
    pub priority: Gauge,
    /// Transitions by new state.
    pub transitions: Family<Labels, Counter>,
    /// Adverts sent (one per destination).
    pub sent: Counter,
    /// Adverts received and handed to the state machine.
    pub received: Counter,
    /// Packets dropped, by reason.
    pub dropped: Family<Labels, Counter>,
    /// 1 while a check is up.
    pub check_up: Family<Labels, Gauge>,
    /// Errors adding/removing addresses or sending.
    pub errors: Family<Labels, Counter>,
}

impl Metrics {
    /// Registers every metric in `registry`, with all drop reasons and
    /// states present from the start (at zero).
    pub fn register(registry: &mut Registry) -> Metrics {
        let m = Metrics::default();
        registry.register(
            "vip_state",
            "VRRP state: 0 INIT, 1 BACKUP, 2 MASTER, 3 FAULT",
            m.state.clone(),
        );
        registry.register(
            "vip_effective_priority",
            "Priority advertised (base plus check weights)",
            m.priority.clone(),
        );
        registry.register(
            "vip_transitions",
            "State transitions, by new state",
            m.transitions.clone(),
        );
        registry.register(
            "vip_adverts_sent",
            "VRRP advertisements sent",
            m.sent.clone(),
        );
        registry.register(
            "vip_adverts_received",
            "Valid VRRP advertisements received",
            m.received.clone(),
        );
        registry.register(
            "vip_adverts_dropped",
            "Received packets dropped, by reason",
            m.dropped.clone(),
        );
        registry.register(
            "vip_check_up",
            "Health check result (1 up, 0 down)",
            m.check_up.clone(),
        );
        registry.register(
            "vip_errors",
            "Failed system operations, by operation",
            m.errors.clone(),
        );
        for r in DropReason::ALL {
            let _ = m.dropped.get_or_create(&label("reason", r.label()));
        }
        for s in [
            State::Backup,
            State::Master,
            State::Fault,
            State::Initialize,
        ] {
            let _ = m.transitions.get_or_create(&label("to", s.name()));
        }
        m
    }

    /// Counts a dropped packet.
    pub fn drop(&self, reason: DropReason) {
        self.dropped
            .get_or_create(&label("reason", reason.label()))
            .inc();
    }

    /// Counts an error of operation `op`.
    pub fn error(&self, op: &str) {
        self.errors.get_or_create(&label("op", op)).inc();
    }
}

/// A one-label label set.
pub fn label(k: &str, v: &str) -> Labels {
    vec![(k.to_string(), v.to_string())]
}

/// One state change, for status.
#[derive(Debug, Clone, Serialize)]
pub struct Transition {
    /// Old state.
    pub from: State,
    /// New state.
    pub to: State,
    /// Effective priority at the time.
    pub priority: u8,
    /// Milliseconds since the Unix epoch.
    pub at_unix_ms: u128,
}

/// The status document (`/api/status`, `vip status`).
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// False when no virtual IP is configured (admin endpoint only).
    pub vrrp_enabled: bool,
    /// Current state.
    pub state: State,
    /// Virtual router id.
    pub vrid: u8,
    /// VRRP interface.
    pub interface: String,
    /// This node's primary address.
    pub primary: Option<String>,
    /// Configured priority.
    pub base_priority: u8,
    /// Advertised priority.
    pub effective_priority: u8,
    /// The master as far as this node knows.
    pub master: Option<String>,
    /// Configured virtual IPs.
    pub virtual_ips: Vec<String>,
    /// Whether this node holds them now.
    pub holding: bool,
    /// `multicast` or `unicast`.
    pub mode: &'static str,
    /// Unicast peers.
    pub peers: Vec<String>,
    /// Own advertisement interval (centiseconds).
    pub advert_int_cs: u16,
    /// Master's advertisement interval (centiseconds).
    pub master_adver_int_cs: u16,
    /// Preemption on.
    pub preempt: bool,
    /// Interface up with carrier.
    pub link_up: bool,
    /// Health checks.
    pub checks: Vec<CheckStatus>,
    /// Number of transitions since start.
    pub transitions: u64,
    /// The latest few transitions, newest last.
    pub recent_transitions: Vec<Transition>,
    /// Adverts sent.
    pub adverts_sent: u64,
    /// Adverts received.
    pub adverts_received: u64,
    /// Packets dropped by reason (only non-zero reasons).
    pub adverts_dropped: BTreeMap<String, u64>,
}

/// Most transitions kept in status.
pub const RECENT_TRANSITIONS: usize = 16;

impl Status {
    /// A status for an agent that has not started VRRP.
    pub fn idle(interface: &str, vrid: u8, priority: u8, advert_int: u16) -> Status {
        Status {
            vrrp_enabled: false,
            state: State::Initialize,
            vrid,
            interface: interface.to_string(),
            primary: None,
            base_priority: priority,
            effective_priority: priority,
            master: None,
            virtual_ips: Vec::new(),
            holding: false,
            mode: "multicast",
            peers: Vec::new(),
            advert_int_cs: advert_int,
            master_adver_int_cs: advert_int,
            preempt: true,
            link_up: false,
            checks: Vec::new(),
            transitions: 0,
            recent_transitions: Vec::new(),
            adverts_sent: 0,
            adverts_received: 0,
            adverts_dropped: BTreeMap::new(),
        }
    }
}

/// Status shared between the agent and the admin endpoint.
pub type SharedStatus = Arc<Mutex<Status>>;

/// The admin routes of `vip`: `GET /api/status`.
pub fn handler(status: SharedStatus) -> Handler {
    Arc::new(move |req| {
        let status = status.clone();
        Box::pin(async move {
            if req.uri().path() == "/api/status" && req.method() == http::Method::GET {
                let snapshot = match status.lock() {
                    Ok(s) => s.clone(),
                    Err(poisoned) => poisoned.into_inner().clone(),
                };
                admin::json(StatusCode::OK, &snapshot)
            } else {
                admin::text(
                    StatusCode::NOT_FOUND,
                    "not found: try /api/status, /health or /metrics\n",
                )
            }
        })
    })
}

/// Fetches `/api/status` from a running agent's admin port.
pub fn fetch_status(addr: SocketAddr) -> anyhow::Result<serde_json::Value> {
    use anyhow::Context;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| format!("connecting to the vip admin endpoint at {addr} (is the agent running? pass its --admin-addr)"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET /api/status HTTP/1.1\r\nHost: vip\r\nConnection: close\r\n\r\n")?;
    let mut body = Vec::new();
    s.take(4 * 1024 * 1024).read_to_end(&mut body)?;
    let text = String::from_utf8_lossy(&body);
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .context("malformed HTTP response from the admin endpoint")?;
    if !head.starts_with("HTTP/1.1 200") {
        anyhow::bail!(
            "admin endpoint at {addr} answered {}",
            head.lines().next().unwrap_or("")
        );
    }
    serde_json::from_str(rest).context("the admin endpoint did not return status JSON")
}

/// Renders a status document for humans.
pub fn render(v: &serde_json::Value) -> String {
    let s = |k: &str| match &v[k] {
        serde_json::Value::String(x) => x.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    };
    let mut out = String::new();
    if v["vrrp_enabled"] == serde_json::Value::Bool(false) {
        out.push_str("VRRP disabled: no virtual IP configured (set --virtual-ip or KEEPALIVED_VIRTUAL_IPS)\n");
        return out;
    }
    out.push_str(&format!(
        "state:     {}  (VRID {} on {}, {})\n",
        s("state"),
        s("vrid"),
        s("interface"),
        s("mode")
    ));
    out.push_str(&format!(
        "priority:  {} (base {}){}\n",
        s("effective_priority"),
        s("base_priority"),
        if v["preempt"] == serde_json::Value::Bool(false) {
            ", nopreempt"
        } else {
            ""
        }
    ));
    out.push_str(&format!(
        "master:    {}  (this node: {})\n",
        s("master"),
        s("primary")
    ));
    let vips: Vec<String> = v["virtual_ips"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    out.push_str(&format!(
        "vips:      {}  ({})\n",
        vips.join(", "),
        if v["holding"] == serde_json::Value::Bool(true) {
            "held here"
        } else {
            "not held here"
        }
    ));
    out.push_str(&format!(
        "link:      {}\n",
        if v["link_up"] == serde_json::Value::Bool(true) {
            "up"
        } else {
            "DOWN"
        }
    ));
    if let Some(checks) = v["checks"].as_array() {
        for c in checks {
            out.push_str(&format!(
                "check:     {} {} (weight {}){}\n",
                if c["up"] == serde_json::Value::Bool(true) {
                    "up  "
                } else {
                    "DOWN"
                },
                c["name"].as_str().unwrap_or("?"),
                c["weight"],
                c["last_error"]
                    .as_str()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ));
        }
    }
    out.push_str(&format!(
        "adverts:   sent {}, received {}, dropped {}\n",
        s("adverts_sent"),
        s("adverts_received"),
        v["adverts_dropped"]
    ));
    out.push_str(&format!("transitions: {}\n", s("transitions")));
    if let Some(ts) = v["recent_transitions"].as_array() {
        for t in ts.iter().rev().take(5) {
            out.push_str(&format!(
                "  {} -> {} (priority {}, at {} ms)\n",
                t["from"].as_str().unwrap_or("?"),
                t["to"].as_str().unwrap_or("?"),
                t["priority"],
                t["at_unix_ms"]
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_show_every_reason_from_the_start() {
        let mut r = Registry::default();
        let m = Metrics::register(&mut r);
        m.drop(DropReason::Checksum);
        m.state.set(State::Master.code());
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
        assert!(
            out.contains("vip_adverts_dropped_total{reason=\"checksum\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("vip_adverts_dropped_total{reason=\"ttl\"} 0"),
            "{out}"
        );
        assert!(out.contains("vip_state 2"), "{out}");
        assert!(
            out.contains("vip_transitions_total{to=\"MASTER\"} 0"),
            "{out}"
        );
    }

    #[test]
    fn renders_status() {
        let mut st = Status::idle("eth0", 51, 100, 10);
        st.vrrp_enabled = true;
        st.state = State::Master;
        st.virtual_ips = vec!["10.0.0.100/32".into()];
        st.holding = true;
        let v = serde_json::to_value(&st).unwrap();
        assert_eq!(v["state"], "MASTER");
        let text = render(&v);
        assert!(text.contains("state:     MASTER"), "{text}");
        assert!(text.contains("held here"), "{text}");
        let idle = serde_json::to_value(Status::idle("eth0", 51, 100, 10)).unwrap();
        assert!(render(&idle).contains("VRRP disabled"));
    }
}
