//! The Docker Swarm provider: routes every Swarm service that asks for it,
//! from its labels — `edge.*` or, unchanged, Traefik's `traefik.*`.
//!
//! - [`labels`] reads one service's labels (pure);
//! - [`constraints`] selects services (pure);
//! - [`backends`] finds the task IPs to send requests to (pure);
//! - [`build`] turns a [`SwarmState`] into a [`SwarmSnapshot`]: the
//!   dynamic configuration plus a diagnostic for every service (pure);
//! - [`docker`] reads the state from the Docker Engine API and follows its
//!   event stream;
//! - [`run`] keeps a `watch` channel of snapshots up to date: it rebuilds
//!   within ~100 ms of an event, re-lists periodically as a safety net,
//!   reconnects with back-off when dockerd goes away and keeps the last good
//!   snapshot meanwhile;
//! - [`explain`] renders the diagnostics for `edge explain <service>`.

pub mod backends;
pub mod constraints;
pub mod docker;
pub mod docker_tls;
pub mod explain;
pub mod labels;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::config::{self, Dynamic, Service};
use backends::TaskSummary;
use constraints::Constraint;
use labels::{Family, Issue, LabelOptions, ServiceLabels, Severity};

/// The provider's name: elements are `name@swarm` to other providers.
pub const PROVIDER: &str = "swarm";

// ---------------------------------------------------------------------------
// What the provider knows about the cluster (input of `build`).

/// The cluster as read from the Docker Engine API.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SwarmState {
    /// Every service.
    pub services: Vec<SwarmService>,
    /// Tasks whose desired state is `running`.
    pub tasks: Vec<SwarmTask>,
    /// Every network (IDs and names).
    pub networks: Vec<SwarmNetwork>,
    /// IDs of the networks of edge's own container, when edge runs in one
    /// and could inspect itself.
    pub edge_networks: Option<Vec<String>>,
}

/// One Swarm service.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SwarmService {
    /// Service ID.
    pub id: String,
    /// `Spec.Name` (with the stack prefix, e.g. `shop_web`).
    pub name: String,
    /// `Spec.Labels` (the compose file's `deploy.labels`).
    pub labels: BTreeMap<String, String>,
    /// Networks of the task template (IDs, or names on old daemons).
    pub networks: Vec<String>,
    /// Virtual IPs: (network ID, address).
    pub vips: Vec<(String, IpAddr)>,
    /// Target ports of published TCP ports.
    pub target_ports: Vec<u16>,
    /// Replicas asked for; `None` for global services.
    pub replicas: Option<u64>,
}

/// One task.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SwarmTask {
    /// Task ID.
    pub id: String,
    /// Its service.
    pub service_id: String,
    /// Replica slot (replicated services).
    pub slot: Option<u64>,
    /// Node it runs on.
    pub node_id: String,
    /// `Status.State`: `running`, `starting`, `shutdown`, …
    pub state: String,
    /// `DesiredState`.
    pub desired_state: String,
    /// `Status.Message`.
    pub message: String,
    /// `Status.Err`.
    pub error: Option<String>,
    /// Addresses: (network ID, IP).
    pub addresses: Vec<(String, IpAddr)>,
}

/// One network.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SwarmNetwork {
    /// Network ID.
    pub id: String,
    /// Name (stack networks are `<stack>_<name>`).
    pub name: String,
    /// The routing-mesh network (never used for backends).
    pub ingress: bool,
}

// ---------------------------------------------------------------------------
// Settings.

/// Settings of the Swarm provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwarmConfig {
    /// Docker endpoint: `unix:///var/run/docker.sock` or `tcp://host:port`.
    pub docker_host: String,
    /// Speak TLS to a `tcp://` dockerd, verifying it against
    /// `<docker_cert_path>/ca.pem` and presenting `cert.pem`/`key.pem`
    /// (the Docker CLI's `DOCKER_TLS_VERIFY`).
    pub docker_tls_verify: bool,
    /// `DOCKER_TLS` without `DOCKER_TLS_VERIFY`: TLS without checking
    /// dockerd, which edge refuses (see [`SwarmConfig::validate`]).
    pub docker_tls: bool,
    /// Directory of `ca.pem`, `cert.pem`, `key.pem`; `None`: `~/.docker`.
    pub docker_cert_path: Option<PathBuf>,
    /// Domain of the default rule ``Host(`<service>.<domain>`)``.
    pub domain: String,
    /// Replaces the default rule; `{{ normalize .Name }}` is the service name.
    pub default_rule: Option<String>,
    /// Route services without an enable label.
    pub exposed_by_default: bool,
    /// Which services to look at (Traefik's constraint expression).
    pub constraints: Option<String>,
    /// Networks edge reaches services on (names or IDs). Empty: the
    /// networks of edge's own container.
    pub networks: Vec<String>,
    /// Full re-list period (safety net for missed events).
    pub refresh: Duration,
    /// Wait after an event for more before rebuilding.
    pub debounce: Duration,
    /// edge's own container ID; `None` detects it.
    pub container: Option<String>,
}

impl Default for SwarmConfig {
    fn default() -> Self {
        SwarmConfig {
            docker_host: "unix:///var/run/docker.sock".into(),
            docker_tls_verify: false,
            docker_tls: false,
            docker_cert_path: None,
            domain: "b3.swarm".into(),
            default_rule: None,
            exposed_by_default: false,
            constraints: None,
            networks: Vec::new(),
            refresh: Duration::from_secs(30),
            debounce: Duration::from_millis(100),
            container: None,
        }
    }
}

impl SwarmConfig {
    /// The label-reading options this configuration implies.
    pub fn label_options(&self) -> LabelOptions {
        let mut o = LabelOptions::with_domain(&self.domain);
        o.exposed_by_default = self.exposed_by_default;
        if let Some(r) = &self.default_rule {
            o.default_rule = r.clone();
        }
        o
    }

    /// Whether the provider should run when nobody asked explicitly: the
    /// unix socket exists, or a TCP endpoint was configured.
    pub fn auto_enabled(&self) -> bool {
        match docker::Endpoint::parse(&self.docker_host) {
            Ok(docker::Endpoint::Unix(p)) => p.exists(),
            Ok(docker::Endpoint::Tcp(_)) => true,
            Err(_) => false,
        }
    }

    /// Checks what can be checked without Docker.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(c) = &self.constraints {
            Constraint::parse(c).map_err(|e| format!("--swarm-constraints: {e}"))?;
        }
        let probe = labels::default_rule(&self.label_options(), "probe");
        config::Rule::parse(&probe)
            .map_err(|e| format!("default rule {probe:?} does not parse: {e}"))?;
        if self.refresh < Duration::from_secs(1) {
            return Err("--swarm-refresh below 1s would hammer dockerd: use at least 1s".into());
        }
        let endpoint = docker::Endpoint::parse(&self.docker_host)?;
        if self.docker_tls && !self.docker_tls_verify {
            return Err("DOCKER_TLS is set without DOCKER_TLS_VERIFY: edge does not talk to dockerd over TLS without checking its certificate (whoever sits in the middle would get root on the host) — set DOCKER_TLS_VERIFY=1 with DOCKER_CERT_PATH holding ca.pem, cert.pem and key.pem".into());
        }
        if self.docker_tls_verify && matches!(endpoint, docker::Endpoint::Unix(_)) {
            tracing::debug!("DOCKER_TLS_VERIFY is ignored for a unix socket");
        }
        Ok(())
    }

    /// A Docker client for this configuration: validates it and, with
    /// `docker_tls_verify` and a `tcp://` host, loads the TLS files.
    pub fn docker_client(&self) -> Result<docker::Client, String> {
        self.validate()?;
        let endpoint = docker::Endpoint::parse(&self.docker_host)?;
        let tls = match (&endpoint, self.docker_tls_verify) {
            (docker::Endpoint::Tcp(_), true) => {
                let dir = self
                    .docker_cert_path
                    .clone()
                    .unwrap_or_else(docker_tls::default_cert_path);
                Some(docker_tls::load(&dir)?)
            }
            _ => None,
        };
        Ok(docker::Client::with_tls(endpoint, tls))
    }
}

/// Whether the daemon runs the Swarm provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SwarmMode {
    /// When the Docker socket exists (or a tcp:// DOCKER_HOST is set).
    Auto,
    /// Always (keeps retrying while dockerd is unreachable).
    On,
    /// Never.
    Off,
}

/// Command-line flags of the provider (flatten into the daemon's flags).
#[derive(Debug, Clone, clap::Args)]
pub struct SwarmArgs {
    /// Run the Docker Swarm provider.
    #[arg(
        long,
        env = "EDGE_SWARM",
        value_enum,
        default_value = "auto",
        value_name = "MODE"
    )]
    pub swarm: SwarmMode,
    /// Docker Engine endpoint (unix:///path or tcp://host:port; a
    /// docker-socket-proxy works: only GET requests and /events are used).
    #[arg(
        long,
        env = "DOCKER_HOST",
        default_value = "unix:///var/run/docker.sock",
        value_name = "URL"
    )]
    pub docker_host: String,
    /// Speak TLS to a tcp:// DOCKER_HOST: verify dockerd against ca.pem and
    /// authenticate with cert.pem/key.pem from --docker-cert-path (as the
    /// Docker CLI).
    /// Takes 1/0 as well as true/false, as Docker users write it.
    #[arg(long, env = "DOCKER_TLS_VERIFY", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new())]
    pub docker_tls_verify: bool,
    /// Directory holding ca.pem, cert.pem and key.pem; default ~/.docker.
    #[arg(long, env = "DOCKER_CERT_PATH", value_name = "DIR")]
    pub docker_cert_path: Option<PathBuf>,
    /// The Docker CLI's DOCKER_TLS (TLS without verifying dockerd): refused,
    /// use DOCKER_TLS_VERIFY.
    #[arg(long, env = "DOCKER_TLS", hide = true, action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new())]
    pub docker_tls: bool,
    /// Default rule template; default "Host(`{{ normalize .Name }}.<--domain>`)".
    #[arg(long, env = "EDGE_SWARM_DEFAULT_RULE", value_name = "RULE")]
    pub swarm_default_rule: Option<String>,
    /// Route services that have no edge.enable / traefik.enable label.
    #[arg(long, env = "EDGE_SWARM_EXPOSED_BY_DEFAULT")]
    pub swarm_exposed_by_default: bool,
    /// Only look at services matching this expression, e.g.
    /// "Label(`traefik.constraint-label`, `public`)".
    #[arg(long, env = "EDGE_SWARM_CONSTRAINTS", value_name = "EXPR")]
    pub swarm_constraints: Option<String>,
    /// Networks edge reaches services on (names or IDs, comma-separated);
    /// default: the networks of edge's own container.
    #[arg(
        long,
        env = "EDGE_SWARM_NETWORKS",
        value_delimiter = ',',
        value_name = "NETWORK"
    )]
    pub swarm_network: Vec<String>,
    /// Full re-list period, a safety net for missed events.
    #[arg(long, env = "EDGE_SWARM_REFRESH", default_value = "30s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub swarm_refresh: Duration,
}

impl SwarmArgs {
    /// The provider's settings; `domain` is edge's `--domain` (the default
    /// rule is ``Host(`<service>.<domain>`)``).
    pub fn config(&self, domain: &str) -> SwarmConfig {
        SwarmConfig {
            docker_host: self.docker_host.clone(),
            docker_tls_verify: self.docker_tls_verify,
            docker_tls: self.docker_tls,
            docker_cert_path: self.docker_cert_path.clone(),
            domain: domain.to_string(),
            default_rule: self.swarm_default_rule.clone(),
            exposed_by_default: self.swarm_exposed_by_default,
            constraints: self.swarm_constraints.clone(),
            networks: self.swarm_network.clone(),
            refresh: self.swarm_refresh,
            ..SwarmConfig::default()
        }
    }

    /// Whether to run the provider, per `--swarm`.
    pub fn enabled(&self, cfg: &SwarmConfig) -> bool {
        match self.swarm {
            SwarmMode::On => true,
            SwarmMode::Off => false,
            SwarmMode::Auto => cfg.auto_enabled(),
        }
    }
}

// ---------------------------------------------------------------------------
// Output.

/// What the provider publishes: the configuration and why each service is
/// (not) in it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SwarmSnapshot {
    /// Routers, services (with servers) and middlewares of every routed
    /// service. Names are local to the provider (`name@swarm` elsewhere).
    pub dynamic: Dynamic,
    /// One entry per Swarm service, sorted by name.
    pub diagnostics: Vec<ServiceDiagnostic>,
    /// Problems not tied to one service (bad constraint, unknown network).
    pub global: Vec<String>,
    /// Bumped each time `dynamic`, `diagnostics` or `global` change.
    pub generation: u64,
    /// Set while dockerd cannot be reached; the rest is the last good state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub docker_error: Option<String>,
}

impl SwarmSnapshot {
    /// The diagnostic of a service, by name, ID or ID prefix.
    pub fn service(&self, name: &str) -> Option<&ServiceDiagnostic> {
        self.diagnostics
            .iter()
            .find(|d| d.service == name)
            .or_else(|| {
                self.diagnostics
                    .iter()
                    .find(|d| name.len() >= 4 && d.id.starts_with(name))
            })
    }

    fn same_content(&self, other: &SwarmSnapshot) -> bool {
        self.dynamic == other.dynamic
            && self.diagnostics == other.diagnostics
            && self.global == other.global
            && self.docker_error == other.docker_error
    }
}

/// Whether and how a service is routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Status {
    /// Routed, with at least one server.
    Routed,
    /// Its routers are published but there is no server: requests get 503.
    NoServers,
    /// Asked to be routed, but its labels are broken: nothing is published.
    Error,
    /// Not selected by the constraints.
    Excluded,
    /// Not enabled (no enable label and exposedByDefault is off).
    Disabled,
}

/// Why a service is (not) routed.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceDiagnostic {
    /// Swarm service name.
    pub service: String,
    /// Swarm service ID.
    pub id: String,
    /// The verdict.
    pub status: Status,
    /// One sentence: why.
    pub reason: String,
    /// Published routers of this service, with their rules.
    pub routers: BTreeMap<String, String>,
    /// Server URLs of its services.
    pub servers: Vec<String>,
    /// Network the servers are on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Task counts.
    pub tasks: TaskSummary,
    /// Everything found, errors first.
    pub issues: Vec<Issue>,
}

impl ServiceDiagnostic {
    /// Whether the service asked to be routed but is not fully.
    pub fn needs_attention(&self) -> bool {
        matches!(self.status, Status::NoServers | Status::Error)
            || self.issues.iter().any(|i| i.severity == Severity::Error)
    }
}

// ---------------------------------------------------------------------------
// The pure part: state → snapshot.

/// Who defined each element, for merging and for blaming.
#[derive(Default)]
struct Owners {
    routers: BTreeMap<String, BTreeSet<usize>>,
    services: BTreeMap<String, BTreeSet<usize>>,
    middlewares: BTreeMap<String, BTreeSet<usize>>,
}

impl Owners {
    fn of(&mut self, kind: &str) -> &mut BTreeMap<String, BTreeSet<usize>> {
        match kind {
            "routers" => &mut self.routers,
            "services" => &mut self.services,
            _ => &mut self.middlewares,
        }
    }
}

/// Builds the snapshot for `state` (generation 0; [`run`] numbers them).
pub fn build(state: &SwarmState, cfg: &SwarmConfig) -> SwarmSnapshot {
    let opts = cfg.label_options();
    let mut global = Vec::new();
    let constraint = match cfg.constraints.as_deref().map(Constraint::parse) {
        None => None,
        Some(Ok(c)) => Some(c),
        Some(Err(e)) => {
            global.push(format!(
                "{e}; no service is routed until the constraint is fixed"
            ));
            return SwarmSnapshot {
                global,
                ..SwarmSnapshot::default()
            };
        }
    };
    let edge_networks: Option<BTreeSet<String>> = if !cfg.networks.is_empty() {
        let mut ids = BTreeSet::new();
        for n in &cfg.networks {
            match backends::find_network(&state.networks, n, None) {
                Some(net) => {
                    ids.insert(net.id.clone());
                }
                None => global.push(format!(
                    "network {n:?} given with --swarm-network does not exist: create it (docker network create --driver overlay --attachable {n}) or fix the flag"
                )),
            }
        }
        Some(ids)
    } else {
        if state.edge_networks.is_none() {
            global.push(
                "edge's own networks are unknown (it does not run in a container, or the Docker API refused to inspect it): a service on several networks needs edge.swarm.network, and edge may pick a network it cannot reach; set --swarm-network to the networks edge is attached to".into(),
            );
        }
        state
            .edge_networks
            .as_ref()
            .map(|v| v.iter().cloned().collect())
    };

    let mut services: Vec<&SwarmService> = state.services.iter().collect();
    services.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));

    let mut diags: Vec<ServiceDiagnostic> = Vec::with_capacity(services.len());
    let mut parsed: Vec<Option<ServiceLabels>> = Vec::with_capacity(services.len());
    let mut merged = Dynamic::default();
    let mut owners = Owners::default();

    for (idx, svc) in services.iter().enumerate() {
        let mut lbl = labels::parse(&svc.name, &svc.labels, &opts);
        let mut d = ServiceDiagnostic {
            service: svc.name.clone(),
            id: svc.id.clone(),
            status: Status::Routed,
            reason: String::new(),
            routers: BTreeMap::new(),
            servers: Vec::new(),
            network: None,
            tasks: TaskSummary::default(),
            issues: Vec::new(),
        };
        if !lbl.enabled {
            d.status = Status::Disabled;
            d.reason = if lbl.has_labels {
                "has routing labels but is not enabled: add the label traefik.enable=true (or edge.enable=true), or run edge with --swarm-exposed-by-default".into()
            } else {
                "not enabled: add the labels edge.enable=true and edge.port=<port the app listens on>".into()
            };
            d.issues = std::mem::take(&mut lbl.issues);
            diags.push(d);
            parsed.push(None);
            continue;
        }
        if let Some(c) = &constraint {
            if !c.matches(&svc.labels) {
                d.status = Status::Excluded;
                d.reason = format!(
                    "not selected by the constraints {:?}: change the service's labels or edge's --swarm-constraints",
                    cfg.constraints.as_deref().unwrap_or_default()
                );
                diags.push(d);
                parsed.push(None);
                continue;
            }
        }
        let b = backends::resolve(svc, state, edge_networks.as_ref(), &lbl);
        d.network = b.network.clone();
        d.tasks = b.tasks.clone();
        if lbl.has_errors() {
            d.status = Status::Error;
            d.issues = std::mem::take(&mut lbl.issues);
            d.issues.extend(b.issues);
            diags.push(d);
            parsed.push(None);
            continue;
        }
        d.issues = std::mem::take(&mut lbl.issues);
        // Configuration problems (a missing port) come before the backend
        // ones (no running task), which are often only transient.
        let backend_issues = b.issues.clone();
        // Servers of every service these labels define.
        let names: Vec<String> = lbl.http.services.keys().cloned().collect();
        for name in names {
            let port = match lbl.ports.get(&name) {
                Some(p) => Some(*p),
                None if svc.target_ports.len() == 1 => Some(svc.target_ports[0]),
                None => None,
            };
            let Some(port) = port.filter(|p| *p > 0) else {
                let label = format!(
                    "{}http.services.{name}.loadbalancer.server.port",
                    match lbl.origin.get(&("services".to_string(), name.clone())) {
                        Some(Family::Traefik) => "traefik.",
                        Some(Family::Implicit) if lbl.traefik_style => "traefik.",
                        _ => "edge.",
                    }
                );
                d.issues.push(Issue::error(
                    None,
                    format!(
                        "no port for service {name}: Swarm does not say which port the app listens on; add the label {label}=<port> (or edge.port=<port>)"
                    ),
                ));
                continue;
            };
            let scheme = lbl.schemes.get(&name).map_or("http", String::as_str);
            if let Some(Service::LoadBalancer(lb)) = lbl.http.services.get_mut(&name) {
                lb.servers = b
                    .ips
                    .iter()
                    .map(|ip| config::Server {
                        url: match ip {
                            IpAddr::V4(v4) => format!("{scheme}://{v4}:{port}"),
                            IpAddr::V6(v6) => format!("{scheme}://[{v6}]:{port}"),
                        },
                        weight: None,
                    })
                    .collect();
            }
        }
        d.issues.extend(backend_issues);
        // Merge into the provider's configuration (Traefik's rules: equal
        // definitions from several services are one; load balancers with
        // equal settings pool their servers; anything else conflicts).
        for (name, r) in &lbl.http.routers {
            owners
                .of("routers")
                .entry(name.clone())
                .or_default()
                .insert(idx);
            merged
                .http
                .routers
                .entry(name.clone())
                .or_insert_with(|| r.clone());
        }
        for (name, m) in &lbl.http.middlewares {
            owners
                .of("middlewares")
                .entry(name.clone())
                .or_default()
                .insert(idx);
            merged
                .http
                .middlewares
                .entry(name.clone())
                .or_insert_with(|| m.clone());
        }
        for (name, s) in &lbl.http.services {
            owners
                .of("services")
                .entry(name.clone())
                .or_default()
                .insert(idx);
            match (merged.http.services.get_mut(name), s) {
                (None, _) => {
                    merged.http.services.insert(name.clone(), s.clone());
                }
                (Some(Service::LoadBalancer(have)), Service::LoadBalancer(new)) => {
                    let mut a = have.clone();
                    a.servers.clear();
                    let mut b2 = new.clone();
                    b2.servers.clear();
                    if a == b2 {
                        for srv in &new.servers {
                            if !have.servers.contains(srv) {
                                have.servers.push(srv.clone());
                            }
                        }
                        have.servers.sort_by(|x, y| x.url.cmp(&y.url));
                    }
                }
                _ => {}
            }
        }
        diags.push(d);
        parsed.push(Some(lbl));
    }

    // Conflicts: the same name defined differently by several services.
    let mut drop: Vec<Removal> = Vec::new();
    for (kind, map) in [
        ("routers", &owners.routers),
        ("services", &owners.services),
        ("middlewares", &owners.middlewares),
    ] {
        for (name, who) in map {
            if who.len() < 2 {
                continue;
            }
            let defs: Vec<String> = who
                .iter()
                .filter_map(|i| parsed[*i].as_ref())
                .map(|l| match kind {
                    "routers" => format!("{:?}", l.http.routers.get(name)),
                    "middlewares" => format!("{:?}", l.http.middlewares.get(name)),
                    _ => match l.http.services.get(name) {
                        Some(Service::LoadBalancer(lb)) => {
                            let mut lb = lb.clone();
                            lb.servers.clear();
                            format!("{lb:?}")
                        }
                        other => format!("{other:?}"),
                    },
                })
                .collect();
            if defs.windows(2).any(|w| w[0] != w[1]) {
                let names: Vec<&str> = who.iter().map(|i| diags[*i].service.as_str()).collect();
                drop.push(Removal {
                    kind,
                    name: name.clone(),
                    field: None,
                    message: format!(
                        "{} {name:?} is defined differently by services {}: rename it in one of them (names are shared by every service of the provider)",
                        singular(kind),
                        names.join(", ")
                    ),
                });
            }
        }
    }
    // Then whatever the configuration check finds; removing an element can
    // break routers that used it, so repeat until clean (each round removes
    // at least one element, so this ends).
    loop {
        for r in drop.drain(..) {
            let who = owners.of(r.kind).get(&r.name).cloned().unwrap_or_default();
            for i in &who {
                let label = match (&parsed[*i], &r.field) {
                    (Some(l), Some(f)) => l.label_for(r.kind, &r.name, &f.to_ascii_lowercase()),
                    _ => None,
                };
                diags[*i]
                    .issues
                    .push(Issue::error(label.as_deref(), r.message.clone()));
            }
            match r.kind {
                "routers" => merged.http.routers.remove(&r.name).map(|_| ()),
                "services" => merged.http.services.remove(&r.name).map(|_| ()),
                _ => merged.http.middlewares.remove(&r.name).map(|_| ()),
            };
        }
        let problems = config::validate(&merged, PROVIDER);
        let mut seen = BTreeSet::new();
        for p in problems {
            let mut parts = p.path.splitn(4, '.');
            let (Some("http"), Some(kind), Some(name)) = (parts.next(), parts.next(), parts.next())
            else {
                global.push(p.to_string());
                continue;
            };
            let kind = match kind {
                "routers" => "routers",
                "services" => "services",
                _ => "middlewares",
            };
            let field = parts.next().unwrap_or_default().to_string();
            let message = format!(
                "{} {name}: {}: {}; it is not routed",
                singular(kind),
                field,
                p.message
            );
            seen.insert((kind, name.to_string()));
            drop.push(Removal {
                kind,
                name: name.to_string(),
                field: Some(field),
                message,
            });
        }
        if drop.is_empty() {
            break;
        }
        if seen.iter().all(|(k, n)| owners.of(k).get(n).is_none()) {
            // Problems about elements nobody owns cannot be fixed by
            // removing anything: report them once and stop.
            for r in drop.drain(..) {
                global.push(r.message);
            }
            break;
        }
    }

    // Verdicts.
    for (idx, d) in diags.iter_mut().enumerate() {
        let Some(lbl) = &parsed[idx] else {
            sort_issues(&mut d.issues);
            if d.status == Status::Error {
                d.reason = first_error(&d.issues).unwrap_or_else(|| "broken labels".into());
            }
            continue;
        };
        for name in lbl.http.routers.keys() {
            if let Some(r) = merged.http.routers.get(name) {
                d.routers.insert(name.clone(), r.rule.clone());
            }
        }
        for name in lbl.http.services.keys() {
            if let Some(Service::LoadBalancer(lb)) = merged.http.services.get(name) {
                for s in &lb.servers {
                    if !d.servers.contains(&s.url) {
                        d.servers.push(s.url.clone());
                    }
                }
            }
        }
        d.servers.sort();
        sort_issues(&mut d.issues);
        if d.routers.is_empty() {
            d.status = Status::Error;
            d.reason =
                first_error(&d.issues).unwrap_or_else(|| "no router is left to route it".into());
        } else if d.servers.is_empty() {
            d.status = Status::NoServers;
            d.reason = format!(
                "routed, but without servers (requests get 503): {}",
                first_error(&d.issues).unwrap_or_else(|| "no running task".into())
            );
        } else {
            d.status = Status::Routed;
            d.reason = format!(
                "routed to {} server{} on {}",
                d.servers.len(),
                if d.servers.len() == 1 { "" } else { "s" },
                d.network.as_deref().unwrap_or("its network")
            );
        }
    }

    SwarmSnapshot {
        dynamic: merged,
        diagnostics: diags,
        global,
        generation: 0,
        docker_error: None,
    }
}

/// An element to take out of the merged configuration, and why.
struct Removal {
    kind: &'static str,
    name: String,
    field: Option<String>,
    message: String,
}

fn singular(kind: &str) -> &str {
    kind.strip_suffix('s').unwrap_or(kind)
}

fn first_error(issues: &[Issue]) -> Option<String> {
    issues
        .iter()
        .find(|i| i.severity == Severity::Error)
        .map(|i| match &i.label {
            Some(l) => format!("label {l}: {}", i.message),
            None => i.message.clone(),
        })
}

/// Errors first; among them, those naming a label (what the user wrote
/// wrong) before the others (often transient: no running task yet).
fn sort_issues(issues: &mut [Issue]) {
    issues.sort_by_key(|i| (i.severity, i.label.is_none()));
}

// ---------------------------------------------------------------------------
// The I/O part: follow dockerd and publish snapshots.

/// Re-list this often while tasks are still moving after an event (Swarm
/// has no task events, and container events only exist on the local node)…
const SETTLE_POLL: Duration = Duration::from_millis(100);
/// …for this long after the last event, then at `SETTLE_SLOW` (a task that
/// keeps failing must not make edge hammer dockerd).
const SETTLE_FAST: Duration = Duration::from_secs(5);
const SETTLE_SLOW: Duration = Duration::from_secs(1);
/// Keep settling at most this long after the last event.
const SETTLE_MAX: Duration = Duration::from_secs(60);
/// First and largest wait before reconnecting to dockerd.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Whether every task is where it is going (nothing starting, every
/// replicated service at its replica count).
pub fn settled(state: &SwarmState) -> bool {
    let mut running: BTreeMap<&str, u64> = BTreeMap::new();
    for t in &state.tasks {
        if t.desired_state != "running" {
            continue;
        }
        if t.state != "running" {
            return false;
        }
        *running.entry(t.service_id.as_str()).or_default() += 1;
    }
    state.services.iter().all(|s| match s.replicas {
        Some(n) => running.get(s.id.as_str()).copied().unwrap_or(0) == n,
        None => true,
    })
}

/// Runs the provider until `shutdown`: publishes a new snapshot on `tx`
/// (generation + 1) each time the routing or the diagnostics change. While
/// dockerd cannot be reached it keeps the last snapshot and sets its
/// `docker_error`. Fails only on a configuration error, at start.
pub async fn run(
    cfg: SwarmConfig,
    tx: tokio::sync::watch::Sender<SwarmSnapshot>,
    mut shutdown: b3_common::Shutdown,
) -> anyhow::Result<()> {
    let client = cfg.docker_client().map_err(anyhow::Error::msg)?;
    let container = cfg.container.clone().or_else(docker::detect_own_container);
    let mut backoff = BACKOFF_MIN;
    tracing::info!(docker = %client.endpoint(), container = ?container, "swarm provider starting");
    while !shutdown.is_triggered() {
        match follow(
            &client,
            &cfg,
            container.as_deref(),
            &tx,
            &mut shutdown,
            &mut backoff,
        )
        .await
        {
            Ok(Ended::Shutdown) => return Ok(()),
            Ok(Ended::Resubscribe) => {
                tracing::info!("swarm provider: the periodic re-list found changes no event announced; subscribing to events again");
            }
            Err(e) => {
                let msg = e.to_string();
                tracing::warn!(error = %msg, retry_in = ?backoff, "swarm provider: dockerd unreachable; keeping the last configuration");
                tx.send_if_modified(|s| {
                    if s.docker_error.as_deref() == Some(msg.as_str()) {
                        return false;
                    }
                    s.docker_error = Some(msg.clone());
                    s.generation += 1;
                    true
                });
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.wait() => return Ok(()),
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
    Ok(())
}

/// Why [`follow`] returned without an error.
enum Ended {
    Shutdown,
    /// The event stream looks dead (a proxy or NAT may drop an idle TCP
    /// connection without telling): subscribe again.
    Resubscribe,
}

/// One connection's worth of following: subscribe, list, then rebuild on
/// events, on the settle poll and on the refresh timer. Returns on
/// shutdown, when the event stream looks dead, or with the error that
/// ended it.
async fn follow(
    client: &docker::Client,
    cfg: &SwarmConfig,
    container: Option<&str>,
    tx: &tokio::sync::watch::Sender<SwarmSnapshot>,
    shutdown: &mut b3_common::Shutdown,
    backoff: &mut Duration,
) -> Result<Ended, docker::DockerError> {
    use tokio::time::{sleep_until, Instant};
    // Subscribe first, so that no change between the list and the
    // subscription is missed.
    let mut events = client.events().await?;
    let mut state = client.fetch_state(container).await?;
    publish(tx, &state, cfg);
    *backoff = BACKOFF_MIN;
    tracing::info!(docker = %client.endpoint(), services = state.services.len(), "swarm provider connected");
    let mut rebuild_at: Option<Instant> = None;
    let mut last_rebuild = Instant::now();
    let mut settle_until: Option<Instant> = (!settled(&state)).then(|| Instant::now() + SETTLE_MAX);
    let mut last_event = Instant::now();
    let mut next_refresh = Instant::now() + cfg.refresh;
    let mut by_timer = false;
    let mut quiet = true;
    loop {
        let settle_tick = settle_until.map(|_| {
            let every = if last_event.elapsed() < SETTLE_FAST {
                SETTLE_POLL
            } else {
                SETTLE_SLOW
            };
            (last_rebuild + every).max(Instant::now())
        });
        tokio::select! {
            _ = shutdown.wait() => return Ok(Ended::Shutdown),
            ev = events.next() => match ev? {
                Some(ev) => {
                    tracing::debug!(kind = %ev.kind, action = %ev.action, "docker event");
                    // Leading-edge debounce: the first event after a quiet
                    // period rebuilds at once (a task being stopped must
                    // leave the list fast); a burst is folded into one
                    // rebuild per debounce window.
                    rebuild_at.get_or_insert_with(|| (last_rebuild + cfg.debounce).max(Instant::now()));
                    settle_until = Some(Instant::now() + SETTLE_MAX);
                    last_event = Instant::now();
                    quiet = false;
                    continue;
                }
                None => {
                    return Err(docker::DockerError::Http(
                        client.endpoint().to_string(),
                        "the event stream ended (dockerd restarting?)".into(),
                    ))
                }
            },
            _ = sleep_until(rebuild_at.unwrap_or(next_refresh)), if rebuild_at.is_some() => {}
            _ = sleep_until(settle_tick.unwrap_or(next_refresh)), if settle_tick.is_some() && rebuild_at.is_none() => {}
            _ = sleep_until(next_refresh) => {
                next_refresh = Instant::now() + cfg.refresh;
                by_timer = true;
            }
        }
        rebuild_at = None;
        last_rebuild = Instant::now();
        let next = client.fetch_state(container).await?;
        // Services or networks that changed with no event since the last
        // re-list: the stream is probably dead. (Task changes alone can be
        // silent: tasks on other nodes send no events here.)
        let silent_change = by_timer
            && quiet
            && (next.services != state.services || next.networks != state.networks);
        state = next;
        by_timer = false;
        quiet = true;
        publish(tx, &state, cfg);
        if silent_change {
            return Ok(Ended::Resubscribe);
        }
        if let Some(until) = settle_until {
            if settled(&state) || Instant::now() > until {
                settle_until = None;
            }
        }
    }
}

/// Hands each new configuration to `push` (e.g. the proxy's provider
/// sink), skipping snapshots whose `dynamic` did not change (diagnostics
/// alone, or dockerd going away). Ends when the provider is gone or `push`
/// returns false.
pub async fn forward<F, Fut>(mut rx: tokio::sync::watch::Receiver<SwarmSnapshot>, mut push: F)
where
    F: FnMut(Dynamic) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut last: Option<Dynamic> = None;
    loop {
        let next = {
            let snap = rx.borrow_and_update();
            // Generation 0 is the empty placeholder before the first list:
            // pushing it would wipe routes the proxy may have kept.
            (snap.generation > 0 && last.as_ref() != Some(&snap.dynamic))
                .then(|| snap.dynamic.clone())
        };
        if let Some(d) = next {
            last = Some(d.clone());
            if !push(d).await {
                return;
            }
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Builds and publishes a snapshot if anything changed.
fn publish(tx: &tokio::sync::watch::Sender<SwarmSnapshot>, state: &SwarmState, cfg: &SwarmConfig) {
    let mut next = build(state, cfg);
    tx.send_if_modified(|cur| {
        if cur.same_content(&next) && cur.generation > 0 {
            return false;
        }
        next.generation = cur.generation + 1;
        let routed = next
            .diagnostics
            .iter()
            .filter(|d| d.status == Status::Routed)
            .count();
        tracing::info!(
            generation = next.generation,
            routers = next.dynamic.http.routers.len(),
            routed_services = routed,
            "swarm configuration changed"
        );
        for g in &next.global {
            tracing::warn!(problem = %g, "swarm provider");
        }
        for d in next.diagnostics.iter().filter(|d| d.needs_attention()) {
            tracing::warn!(service = %d.service, status = ?d.status, reason = %d.reason, "swarm service not fully routed");
        }
        *cur = std::mem::take(&mut next);
        true
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn svc(id: &str, name: &str, labels: &[(&str, &str)]) -> SwarmService {
        SwarmService {
            id: id.into(),
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            networks: vec!["net1".into()],
            vips: vec![],
            target_ports: vec![],
            replicas: Some(2),
        }
    }

    fn task(id: &str, service: &str, ip: &str) -> SwarmTask {
        SwarmTask {
            id: id.into(),
            service_id: service.into(),
            state: "running".into(),
            desired_state: "running".into(),
            addresses: vec![("net1".into(), ip.parse().unwrap())],
            ..SwarmTask::default()
        }
    }

    fn state(services: Vec<SwarmService>) -> SwarmState {
        let mut tasks = Vec::new();
        for (i, s) in services.iter().enumerate() {
            tasks.push(task(&format!("{}-a", s.id), &s.id, &format!("10.0.{i}.2")));
            tasks.push(task(&format!("{}-b", s.id), &s.id, &format!("10.0.{i}.3")));
        }
        SwarmState {
            services,
            tasks,
            networks: vec![SwarmNetwork {
                id: "net1".into(),
                name: "public".into(),
                ingress: false,
            }],
            edge_networks: Some(vec!["net1".into()]),
        }
    }

    fn diag<'a>(s: &'a SwarmSnapshot, name: &str) -> &'a ServiceDiagnostic {
        s.service(name).unwrap()
    }

    #[test]
    fn a_labelled_service_is_routed_to_its_task_ips() {
        let st = state(vec![svc(
            "s1",
            "demo",
            &[("edge.enable", "true"), ("edge.port", "8000")],
        )]);
        let snap = build(&st, &SwarmConfig::default());
        let r = &snap.dynamic.http.routers["demo"];
        assert_eq!(r.rule, "Host(`demo.b3.swarm`)");
        assert!(r.tls.is_some());
        let Service::LoadBalancer(lb) = &snap.dynamic.http.services["demo"] else {
            panic!()
        };
        let urls: Vec<&str> = lb.servers.iter().map(|s| s.url.as_str()).collect();
        assert_eq!(urls, vec!["http://10.0.0.2:8000", "http://10.0.0.3:8000"]);
        let d = diag(&snap, "demo");
        assert_eq!(d.status, Status::Routed, "{d:?}");
        assert_eq!(d.network.as_deref(), Some("public"));
        assert!(config::validate(&snap.dynamic, PROVIDER).is_empty());
    }

    #[test]
    fn broken_labels_on_one_service_leave_the_others_routed() {
        let st = state(vec![
            svc(
                "s1",
                "good",
                &[("edge.enable", "true"), ("edge.port", "80")],
            ),
            svc(
                "s2",
                "shop",
                &[
                    ("traefik.enable", "true"),
                    ("traefik.http.routers.web.rule", "Host(shop)"),
                    ("traefik.http.services.web.loadbalancer.server.port", "80"),
                ],
            ),
            svc(
                "s3",
                "typo",
                &[
                    ("traefik.enable", "true"),
                    ("traefik.http.routers.x.rulez", "Host(`a`)"),
                ],
            ),
        ]);
        let snap = build(&st, &SwarmConfig::default());
        assert_eq!(diag(&snap, "good").status, Status::Routed);
        assert!(snap.dynamic.http.routers.contains_key("good"));
        let shop = diag(&snap, "shop");
        assert_eq!(shop.status, Status::Error);
        assert!(!snap.dynamic.http.routers.contains_key("web"));
        let issue = &shop.issues[0];
        assert_eq!(
            issue.label.as_deref(),
            Some("traefik.http.routers.web.rule")
        );
        assert!(issue.message.contains("write Host(`shop`)"), "{issue:?}");
        let text = explain::render(&snap, Some("shop")).unwrap();
        assert!(
            text.contains("error: label traefik.http.routers.web.rule on service shop:"),
            "{text}"
        );
        let typo = diag(&snap, "typo");
        assert_eq!(typo.status, Status::Error);
        assert!(typo.reason.contains("rulez"), "{}", typo.reason);
    }

    #[test]
    fn services_sharing_a_name_pool_servers_and_conflicts_are_dropped() {
        let lb = |name: &'static str| {
            svc(
                name,
                name,
                &[
                    ("traefik.enable", "true"),
                    (
                        "traefik.http.routers.shared.rule",
                        "Host(`shared.example.com`)",
                    ),
                    ("traefik.http.routers.shared.service", "pool"),
                    ("traefik.http.services.pool.loadbalancer.server.port", "80"),
                ],
            )
        };
        let st = state(vec![lb("blue"), lb("green")]);
        let snap = build(&st, &SwarmConfig::default());
        let Service::LoadBalancer(pool) = &snap.dynamic.http.services["pool"] else {
            panic!()
        };
        assert_eq!(pool.servers.len(), 4, "{pool:?}");
        assert_eq!(diag(&snap, "blue").status, Status::Routed);

        let mut other = lb("green");
        other.labels.insert(
            "traefik.http.routers.shared.rule".into(),
            "Host(`other`)".into(),
        );
        let st = state(vec![lb("blue"), other]);
        let snap = build(&st, &SwarmConfig::default());
        assert!(!snap.dynamic.http.routers.contains_key("shared"));
        for s in ["blue", "green"] {
            let d = diag(&snap, s);
            assert_eq!(d.status, Status::Error, "{d:?}");
            assert!(
                d.reason
                    .contains("defined differently by services blue, green"),
                "{}",
                d.reason
            );
        }
    }

    #[test]
    fn a_router_using_a_missing_middleware_is_dropped_with_the_reason() {
        let st = state(vec![svc(
            "s1",
            "app",
            &[
                ("traefik.enable", "true"),
                ("traefik.http.routers.app.rule", "Host(`app.example.com`)"),
                ("traefik.http.routers.app.middlewares", "nope"),
                ("traefik.http.routers.api.rule", "Host(`api.example.com`)"),
                ("traefik.http.services.app.loadbalancer.server.port", "80"),
            ],
        )]);
        let snap = build(&st, &SwarmConfig::default());
        assert!(!snap.dynamic.http.routers.contains_key("app"));
        assert!(snap.dynamic.http.routers.contains_key("api"));
        let d = diag(&snap, "app");
        assert_eq!(d.status, Status::Routed);
        assert!(d.needs_attention());
        assert_eq!(
            d.issues[0].label.as_deref(),
            Some("traefik.http.routers.app.middlewares")
        );
    }

    #[test]
    fn missing_port_disabled_and_excluded_services_are_explained() {
        let st = state(vec![
            svc("s1", "noport", &[("traefik.enable", "true")]),
            svc("s2", "plain", &[]),
            svc(
                "s3",
                "private",
                &[("edge.enable", "true"), ("edge.port", "80")],
            ),
        ]);
        let cfg = SwarmConfig {
            constraints: Some("!Label(`edge.enable`, `true`) || Label(`tier`, `public`)".into()),
            ..SwarmConfig::default()
        };
        let snap = build(&st, &cfg);
        let d = diag(&snap, "noport");
        assert_eq!(d.status, Status::NoServers);
        assert!(
            d.reason
                .contains("traefik.http.services.noport.loadbalancer.server.port=<port>"),
            "{}",
            d.reason
        );
        assert_eq!(diag(&snap, "plain").status, Status::Disabled);
        assert!(diag(&snap, "plain").reason.contains("edge.enable=true"));
        assert_eq!(diag(&snap, "private").status, Status::Excluded);
        assert!(!snap.dynamic.http.routers.contains_key("private"));
        // A single published port is the port when no label says otherwise.
        let mut s = svc("s1", "pub", &[("traefik.enable", "true")]);
        s.target_ports = vec![8080];
        let snap = build(&state(vec![s]), &SwarmConfig::default());
        assert_eq!(diag(&snap, "pub").status, Status::Routed);
        assert!(diag(&snap, "pub").servers[0].ends_with(":8080"));
    }

    #[test]
    fn a_bad_constraint_routes_nothing_and_says_why() {
        let st = state(vec![svc(
            "s1",
            "demo",
            &[("edge.enable", "true"), ("edge.port", "80")],
        )]);
        let cfg = SwarmConfig {
            constraints: Some("Label(`a`)".into()),
            ..SwarmConfig::default()
        };
        assert!(cfg.validate().is_err());
        let snap = build(&st, &cfg);
        assert!(snap.dynamic.http.routers.is_empty());
        assert!(snap.global[0].contains("constraint"));
    }

    #[test]
    fn configured_networks_are_resolved_by_name() {
        let mut st = state(vec![svc(
            "s1",
            "demo",
            &[("edge.enable", "true"), ("edge.port", "80")],
        )]);
        st.edge_networks = None;
        let cfg = SwarmConfig {
            networks: vec!["public".into(), "missing".into()],
            ..SwarmConfig::default()
        };
        let snap = build(&st, &cfg);
        assert_eq!(diag(&snap, "demo").status, Status::Routed);
        assert!(snap.global[0].contains("\"missing\""), "{:?}", snap.global);
    }

    #[test]
    fn https_tasks_get_https_server_urls() {
        let st = state(vec![svc(
            "s1",
            "tlsapp",
            &[
                ("traefik.enable", "true"),
                (
                    "traefik.http.services.tlsapp.loadbalancer.server.port",
                    "8443",
                ),
                (
                    "traefik.http.services.tlsapp.loadbalancer.server.scheme",
                    "https",
                ),
            ],
        )]);
        let snap = build(&st, &SwarmConfig::default());
        assert_eq!(diag(&snap, "tlsapp").status, Status::Routed);
        assert_eq!(diag(&snap, "tlsapp").servers[0], "https://10.0.0.2:8443");
        assert!(config::validate(&snap.dynamic, PROVIDER).is_empty());
    }

    #[test]
    fn settled_means_every_replica_runs() {
        let mut st = state(vec![svc("s1", "demo", &[])]);
        assert!(settled(&st));
        st.tasks[1].state = "starting".into();
        assert!(!settled(&st));
        st.tasks.pop();
        assert!(!settled(&st), "one of two replicas");
    }

    #[tokio::test]
    async fn forward_pushes_only_changed_configurations() {
        let (tx, rx) = tokio::sync::watch::channel(SwarmSnapshot::default());
        let (out_tx, mut out) = tokio::sync::mpsc::channel::<Dynamic>(8);
        let task = tokio::spawn(forward(rx, move |d| {
            let out_tx = out_tx.clone();
            async move { out_tx.send(d).await.is_ok() }
        }));
        let st = state(vec![svc(
            "s1",
            "demo",
            &[("edge.enable", "true"), ("edge.port", "80")],
        )]);
        let mut snap = build(&st, &SwarmConfig::default());
        snap.generation = 1;
        tx.send_replace(snap.clone());
        let got = out.recv().await.unwrap();
        assert!(got.http.routers.contains_key("demo"));
        // dockerd goes away: same dynamic, nothing pushed.
        snap.generation = 2;
        snap.docker_error = Some("gone".into());
        tx.send_replace(snap.clone());
        // A real change is pushed.
        snap.generation = 3;
        snap.dynamic.http.routers.clear();
        tx.send_replace(snap);
        let got = out.recv().await.unwrap();
        assert!(got.http.routers.is_empty());
        drop(tx);
        task.await.unwrap();
        assert!(out.try_recv().is_err());
    }

    #[test]
    fn auto_enable_follows_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("docker.sock");
        let cfg = SwarmConfig {
            docker_host: format!("unix://{}", sock.display()),
            ..SwarmConfig::default()
        };
        assert!(!cfg.auto_enabled());
        std::fs::write(&sock, b"").unwrap();
        assert!(cfg.auto_enabled());
    }

    proptest! {
        // The snapshot does not depend on the order dockerd lists things in.
        #[test]
        fn build_is_deterministic(seed in any::<u64>()) {
            let st = state(vec![
                svc("s1", "a", &[("edge.enable", "true"), ("edge.port", "80")]),
                svc("s2", "b", &[("traefik.enable", "true"), ("traefik.http.services.p.loadbalancer.server.port", "81"), ("traefik.http.routers.r.rule", "Path(`/`)")]),
                svc("s3", "c", &[("traefik.enable", "true"), ("traefik.http.services.p.loadbalancer.server.port", "81"), ("traefik.http.routers.r.rule", "Path(`/`)")]),
            ]);
            let mut shuffled = st.clone();
            let mut x = seed | 1;
            for v in [&mut shuffled.tasks] {
                for i in (1..v.len()).rev() {
                    x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                    v.swap(i, (x % (i as u64 + 1)) as usize);
                }
            }
            shuffled.services.reverse();
            prop_assert_eq!(build(&st, &SwarmConfig::default()), build(&shuffled, &SwarmConfig::default()));
        }
    }
}
