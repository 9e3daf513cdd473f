//! A small Docker Engine API client: the few GET endpoints the provider
//! needs (`/services`, `/tasks`, `/networks`, `/containers/{id}/json`,
//! `/version`) and the `/events` stream, over a unix socket, TCP, or TCP
//! with TLS (client certificate, as the Docker CLI; see [`super::docker_tls`]).
//!
//! Why not bollard: its generated `Task` model has no `NetworksAttachments`
//! (the task IPs, absent from Docker's swagger), so we would need raw
//! requests anyway; hyper is already in the tree, and reading only the
//! fields we use keeps us compatible with every API version (paths are
//! unversioned, so the daemon answers in its own version) and with
//! docker-socket-proxy, which allows GET requests and `/events` only.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite};

use super::docker_tls::DockerTls;
use super::{SwarmNetwork, SwarmService, SwarmState, SwarmTask};

/// Largest JSON answer accepted (a big cluster's task list is a few MB).
const MAX_BODY: usize = 64 << 20;
/// Longest single event accepted on the event stream.
const MAX_EVENT: usize = 1 << 20;
/// Time a request (not the event stream) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// Errors talking to dockerd.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// The endpoint is not one we can use.
    #[error("DOCKER_HOST {0:?}: {1}")]
    Endpoint(String, String),
    /// Could not connect.
    #[error("cannot connect to dockerd at {0}: {1} (is dockerd running, and is the socket mounted into edge's container?)")]
    Connect(String, std::io::Error),
    /// The HTTP exchange failed.
    #[error("dockerd at {0}: {1}")]
    Http(String, String),
    /// The TLS handshake with dockerd failed.
    #[error("TLS to dockerd at {0}: {1}")]
    Tls(String, String),
    /// Not answered in time.
    #[error("dockerd at {0} did not answer {1} within {2:?}")]
    Timeout(String, String, Duration),
    /// dockerd answered with an error status.
    #[error("dockerd at {endpoint}: GET {path} answered {status}: {message}{hint}")]
    Status {
        /// The endpoint.
        endpoint: String,
        /// The path requested.
        path: String,
        /// HTTP status.
        status: u16,
        /// dockerd's message.
        message: String,
        /// What to do about it.
        hint: &'static str,
    },
    /// The answer was not the JSON expected.
    #[error("dockerd at {0}: GET {1}: unexpected answer: {2}")]
    Decode(String, String, String),
}

/// Where dockerd listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `unix:///var/run/docker.sock`
    Unix(PathBuf),
    /// `tcp://host:port` (plain HTTP, e.g. a docker-socket-proxy).
    Tcp(String),
}

impl Endpoint {
    /// Parses a `DOCKER_HOST` value.
    pub fn parse(host: &str) -> Result<Endpoint, String> {
        let bad = |why: &str| format!("DOCKER_HOST {host:?}: {why}");
        if let Some(path) = host.strip_prefix("unix://") {
            if path.is_empty() {
                return Err(bad("no socket path: write unix:///var/run/docker.sock"));
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        if let Some(rest) = host
            .strip_prefix("tcp://")
            .or_else(|| host.strip_prefix("http://"))
        {
            let rest = rest.trim_end_matches('/');
            if rest.is_empty() || rest.contains('/') {
                return Err(bad("write tcp://host:port"));
            }
            let addr = if rest
                .rsplit_once(':')
                .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
            {
                rest.to_string()
            } else {
                format!("{rest}:2375")
            };
            return Ok(Endpoint::Tcp(addr));
        }
        if host.starts_with("https://")
            || host.starts_with("ssh://")
            || host.starts_with("npipe://")
        {
            return Err(bad("https, ssh and named pipes are not supported: for TLS write tcp://host:2376 with DOCKER_TLS_VERIFY=1 and DOCKER_CERT_PATH, as for the Docker CLI; or mount the unix socket"));
        }
        Err(bad("use unix:///path/to/docker.sock or tcp://host:port"))
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix://{}", p.display()),
            Endpoint::Tcp(a) => write!(f, "tcp://{a}"),
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// A Docker Engine API client (cheap to clone; one connection per request).
#[derive(Debug, Clone)]
pub struct Client {
    endpoint: Endpoint,
    name: String,
    tls: Option<DockerTls>,
}

impl Client {
    /// A client for `endpoint` (nothing is connected yet).
    pub fn new(endpoint: Endpoint) -> Client {
        Client::with_tls(endpoint, None)
    }

    /// A client speaking TLS to a `tcp://` endpoint when `tls` is given
    /// (ignored for unix sockets, as the Docker CLI does).
    pub fn with_tls(endpoint: Endpoint, tls: Option<DockerTls>) -> Client {
        let tls = match endpoint {
            Endpoint::Tcp(_) => tls,
            Endpoint::Unix(_) => None,
        };
        Client {
            name: match tls {
                Some(_) => format!("{endpoint} (TLS)"),
                None => endpoint.to_string(),
            },
            endpoint,
            tls,
        }
    }

    /// The endpoint, for messages.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    async fn send(&self, path: &str) -> Result<hyper::Response<Incoming>, DockerError> {
        let io: Box<dyn Io> = match &self.endpoint {
            Endpoint::Unix(p) => Box::new(
                tokio::net::UnixStream::connect(p)
                    .await
                    .map_err(|e| DockerError::Connect(self.name.clone(), e))?,
            ),
            Endpoint::Tcp(a) => {
                let s = tokio::net::TcpStream::connect(a.as_str())
                    .await
                    .map_err(|e| DockerError::Connect(self.name.clone(), e))?;
                let _ = s.set_nodelay(true);
                match &self.tls {
                    None => Box::new(s),
                    Some(tls) => Box::new(self.handshake(tls, a, s).await?),
                }
            }
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| DockerError::Http(self.name.clone(), e.to_string()))?;
        // The connection lives as long as the response body is read.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let host = match &self.endpoint {
            Endpoint::Unix(_) => "docker",
            Endpoint::Tcp(a) => a.as_str(),
        };
        let req = hyper::Request::get(path)
            .header(hyper::header::HOST, host)
            .header(
                hyper::header::USER_AGENT,
                concat!("b3-edge/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::<Bytes>::new())
            .map_err(|e| DockerError::Http(self.name.clone(), e.to_string()))?;
        // With TLS 1.3, dockerd judges the client certificate after the
        // handshake: its refusal arrives here, as an alert.
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| self.http_error(&e))?;
        let status = resp.status().as_u16();
        if status >= 300 {
            let body = Limited::new(resp.into_body(), 64 * 1024)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let message = serde_json::from_slice::<ErrorBody>(&body)
                .map(|e| e.message)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).trim().to_string());
            let hint = match status {
                400 if message.contains("HTTPS server") => " — this port speaks TLS: set DOCKER_TLS_VERIFY=1 and DOCKER_CERT_PATH (or --docker-tls-verify, --docker-cert-path)",
                403 => " — a docker-socket-proxy refused: enable SERVICES, TASKS, NETWORKS, EVENTS (and CONTAINERS to detect edge's own networks)",
                503 if path.starts_with("/services") || path.starts_with("/tasks") => {
                    " — is this node a Swarm manager? edge must run on a manager (deploy.placement.constraints: [node.role == manager])"
                }
                _ => "",
            };
            return Err(DockerError::Status {
                endpoint: self.name.clone(),
                path: path.to_string(),
                status,
                message,
                hint,
            });
        }
        Ok(resp)
    }

    async fn handshake(
        &self,
        tls: &DockerTls,
        addr: &str,
        tcp: tokio::net::TcpStream,
    ) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, DockerError> {
        let host = addr
            .rsplit_once(':')
            .map_or(addr, |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']');
        let name = rustls_pki_types::ServerName::try_from(host.to_string()).map_err(|e| {
            DockerError::Tls(
                self.name.clone(),
                format!("{host:?} is not a valid TLS server name: {e}"),
            )
        })?;
        tls.connector.connect(name, tcp).await.map_err(|e| {
            let text = error_chain(&e);
            let why = super::docker_tls::explain_failure(&text, host, &tls.dir)
                .map_or(text.clone(), |fix| format!("{text}: {fix}"));
            DockerError::Tls(self.name.clone(), why)
        })
    }

    fn http_error(&self, e: &hyper::Error) -> DockerError {
        let text = error_chain(e);
        if let (Some(tls), Endpoint::Tcp(a)) = (&self.tls, &self.endpoint) {
            if let Some(fix) = super::docker_tls::explain_failure(&text, a, &tls.dir) {
                return DockerError::Tls(self.name.clone(), format!("{text}: {fix}"));
            }
        }
        DockerError::Http(self.name.clone(), text)
    }

    /// `GET path` and decode the JSON answer.
    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, DockerError> {
        let fut = async {
            let resp = self.send(path).await?;
            let body = Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| DockerError::Http(self.name.clone(), format!("reading {path}: {e}")))?
                .to_bytes();
            serde_json::from_slice(&body).map_err(|e| {
                DockerError::Decode(self.name.clone(), path.to_string(), e.to_string())
            })
        };
        tokio::time::timeout(REQUEST_TIMEOUT, fut)
            .await
            .map_err(|_| {
                DockerError::Timeout(self.name.clone(), path.to_string(), REQUEST_TIMEOUT)
            })?
    }

    /// The daemon's version (a cheap reachability check).
    pub async fn version(&self) -> Result<String, DockerError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct V {
            #[serde(default)]
            version: String,
            #[serde(default)]
            api_version: String,
        }
        let v: V = self.get_json("/version").await?;
        Ok(format!("{} (API {})", v.version, v.api_version))
    }

    /// Subscribes to the events that can change routing.
    pub async fn events(&self) -> Result<Events, DockerError> {
        let filters = r#"{"type":["service","container","network","node"]}"#;
        let path = format!("/events?filters={}", percent_encode(filters));
        let resp = tokio::time::timeout(REQUEST_TIMEOUT, self.send(&path))
            .await
            .map_err(|_| {
                DockerError::Timeout(self.name.clone(), "/events".into(), REQUEST_TIMEOUT)
            })??;
        Ok(Events {
            body: resp.into_body(),
            buf: BytesMut::new(),
            name: self.name.clone(),
        })
    }

    /// Reads services, running tasks, networks and (when `container` is
    /// given and found) the networks of edge's own container.
    pub async fn fetch_state(&self, container: Option<&str>) -> Result<SwarmState, DockerError> {
        let services: Vec<ApiService> = self.get_json("/services").await?;
        let filter = percent_encode(r#"{"desired-state":["running"]}"#);
        let tasks: Vec<ApiTask> = self.get_json(&format!("/tasks?filters={filter}")).await?;
        let networks: Vec<ApiNetwork> = self.get_json("/networks").await?;
        let edge_networks = match container {
            Some(id) => match self
                .get_json::<ApiContainer>(&format!("/containers/{}/json", percent_encode(id)))
                .await
            {
                Ok(c) => Some(
                    c.network_settings
                        .networks
                        .into_values()
                        .map(|n| n.network_id)
                        .filter(|id| !id.is_empty())
                        .collect(),
                ),
                // Not in a container (404), or a socket proxy without
                // CONTAINERS (403): edge's networks are then unknown, which
                // `build` explains; it is no reason to stop routing.
                Err(e) => {
                    tracing::debug!(error = %e, "cannot inspect edge's own container");
                    None
                }
            },
            None => None,
        };
        Ok(SwarmState {
            services: services.into_iter().map(ApiService::into_state).collect(),
            tasks: tasks.into_iter().map(ApiTask::into_state).collect(),
            networks: networks
                .into_iter()
                .map(|n| SwarmNetwork {
                    id: n.id,
                    name: n.name,
                    ingress: n.ingress,
                })
                .collect(),
            edge_networks,
        })
    }
}

/// The event stream: one JSON object per line.
pub struct Events {
    body: Incoming,
    buf: BytesMut,
    name: String,
}

/// One Docker event (only what we look at).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Event {
    /// `service`, `container`, `network`, `node`.
    #[serde(rename = "Type", default)]
    pub kind: String,
    /// `create`, `update`, `remove`, `start`, `die`, …
    #[serde(rename = "Action", default)]
    pub action: String,
}

impl Events {
    /// The next event; `Ok(None)` when dockerd closed the stream.
    pub async fn next(&mut self) -> Result<Option<Event>, DockerError> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line = self.buf.split_to(pos + 1);
                let line = &line[..pos];
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                // An event we cannot decode still means "something changed".
                return Ok(Some(serde_json::from_slice(line).unwrap_or_default()));
            }
            if self.buf.len() > MAX_EVENT {
                return Err(DockerError::Http(
                    self.name.clone(),
                    format!("an event longer than {MAX_EVENT} bytes"),
                ));
            }
            match self.body.frame().await {
                None => return Ok(None),
                Some(Err(e)) => {
                    return Err(DockerError::Http(
                        self.name.clone(),
                        format!("event stream: {e}"),
                    ))
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}

/// edge's own container ID, when it runs in one: Docker bind-mounts
/// `/var/lib/docker/containers/<id>/hostname` on the container's
/// `/etc/hostname`, which `/proc/self/mountinfo` shows; else `$HOSTNAME`
/// when it looks like a short container ID. (Only the `/etc/hostname` mount
/// counts: on a host, mountinfo lists other containers' mounts too.)
pub fn detect_own_container() -> Option<String> {
    if let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") {
        if let Some(id) = container_from_mountinfo(&info) {
            return Some(id);
        }
    }
    let h = std::env::var("HOSTNAME").ok()?;
    (h.len() == 12 && h.chars().all(|c| c.is_ascii_hexdigit())).then_some(h)
}

fn container_from_mountinfo(info: &str) -> Option<String> {
    for line in info.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let (Some(root), Some(mount_point)) = (fields.get(3), fields.get(4)) else {
            continue;
        };
        if *mount_point != "/etc/hostname" {
            continue;
        }
        if let Some(pos) = root.find("/containers/") {
            let id: String = root[pos + "/containers/".len()..]
                .chars()
                .take_while(char::is_ascii_hexdigit)
                .collect();
            if id.len() == 64 {
                return Some(id);
            }
        }
    }
    None
}

/// `e` and its sources, joined (rustls's reason sits a few levels down).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let t = s.to_string();
        if !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        cur = s.source();
    }
    out
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 2);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// ---------------------------------------------------------------------------
// The JSON we read. Every field is optional: older and newer daemons differ.

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    message: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct ApiService {
    #[serde(rename = "ID")]
    id: String,
    spec: ApiServiceSpec,
    endpoint: ApiEndpoint,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct ApiServiceSpec {
    name: String,
    labels: Option<HashMap<String, String>>,
    mode: ApiMode,
    task_template: ApiTaskTemplate,
    /// Deprecated location of the networks (old daemons).
    networks: Option<Vec<ApiNetworkRef>>,
    endpoint_spec: ApiEndpointSpec,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct ApiMode {
    replicated: Option<ApiReplicated>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct ApiReplicated {
    replicas: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct ApiTaskTemplate {
    networks: Option<Vec<ApiNetworkRef>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct ApiNetworkRef {
    target: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct ApiEndpointSpec {
    ports: Option<Vec<ApiPort>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct ApiPort {
    protocol: String,
    target_port: u16,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct ApiEndpoint {
    #[serde(rename = "VirtualIPs")]
    virtual_ips: Option<Vec<ApiVip>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ApiVip {
    #[serde(rename = "NetworkID")]
    network_id: String,
    #[serde(rename = "Addr")]
    addr: String,
}

impl ApiService {
    fn into_state(self) -> SwarmService {
        let nets = self
            .spec
            .task_template
            .networks
            .or(self.spec.networks)
            .unwrap_or_default();
        SwarmService {
            id: self.id,
            name: self.spec.name,
            labels: self
                .spec
                .labels
                .unwrap_or_default()
                .into_iter()
                .collect::<BTreeMap<_, _>>(),
            networks: nets.into_iter().map(|n| n.target).collect(),
            vips: self
                .endpoint
                .virtual_ips
                .unwrap_or_default()
                .into_iter()
                .filter_map(|v| Some((v.network_id, parse_cidr_ip(&v.addr)?)))
                .collect(),
            target_ports: self
                .spec
                .endpoint_spec
                .ports
                .unwrap_or_default()
                .into_iter()
                .filter(|p| p.protocol.is_empty() || p.protocol == "tcp")
                .map(|p| p.target_port)
                .filter(|p| *p > 0)
                .collect(),
            replicas: self.spec.mode.replicated.map(|r| r.replicas.unwrap_or(1)),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct ApiTask {
    #[serde(rename = "ID")]
    id: String,
    #[serde(rename = "ServiceID")]
    service_id: String,
    #[serde(rename = "NodeID")]
    node_id: String,
    slot: Option<u64>,
    status: ApiTaskStatus,
    desired_state: String,
    networks_attachments: Option<Vec<ApiAttachment>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct ApiTaskStatus {
    state: String,
    message: String,
    err: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct ApiAttachment {
    network: ApiAttachedNetwork,
    addresses: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ApiAttachedNetwork {
    #[serde(rename = "ID")]
    id: String,
}

impl ApiTask {
    fn into_state(self) -> SwarmTask {
        let addresses = self
            .networks_attachments
            .unwrap_or_default()
            .into_iter()
            .flat_map(|a| {
                let net = a.network.id;
                a.addresses
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(move |addr| Some((net.clone(), parse_cidr_ip(&addr)?)))
            })
            .collect();
        SwarmTask {
            id: self.id,
            service_id: self.service_id,
            slot: self.slot,
            node_id: self.node_id,
            state: self.status.state,
            desired_state: self.desired_state,
            message: self.status.message,
            error: self.status.err,
            addresses,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct ApiNetwork {
    #[serde(alias = "ID")]
    id: String,
    name: String,
    ingress: bool,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct ApiContainer {
    network_settings: ApiContainerNetworks,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct ApiContainerNetworks {
    networks: HashMap<String, ApiContainerNetwork>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ApiContainerNetwork {
    #[serde(rename = "NetworkID")]
    network_id: String,
}

/// `10.0.1.5/24` → 10.0.1.5 (also accepts a bare address).
fn parse_cidr_ip(s: &str) -> Option<IpAddr> {
    s.split('/').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            Endpoint::parse("unix:///var/run/docker.sock").unwrap(),
            Endpoint::Unix("/var/run/docker.sock".into())
        );
        assert_eq!(
            Endpoint::parse("tcp://proxy:2375").unwrap(),
            Endpoint::Tcp("proxy:2375".into())
        );
        assert_eq!(
            Endpoint::parse("tcp://proxy").unwrap(),
            Endpoint::Tcp("proxy:2375".into())
        );
        assert!(Endpoint::parse("ssh://x")
            .unwrap_err()
            .contains("not supported"));
        assert!(Endpoint::parse("/var/run/docker.sock").is_err());
        assert!(Endpoint::parse("unix://").is_err());
    }

    #[test]
    fn engine_json_is_read_leniently() {
        let svc: ApiService = serde_json::from_str(
            r#"{"ID":"s1","Version":{"Index":1},"Spec":{"Name":"shop_web","Labels":{"traefik.enable":"true"},
               "TaskTemplate":{"ContainerSpec":{"Image":"x"},"Networks":[{"Target":"n1","Aliases":["web"]}]},
               "Mode":{"Replicated":{"Replicas":2}},"EndpointSpec":{"Mode":"vip","Ports":[{"Protocol":"tcp","TargetPort":80,"PublishedPort":8080}]}},
               "Endpoint":{"VirtualIPs":[{"NetworkID":"n1","Addr":"10.0.1.2/24"}]}}"#,
        )
        .unwrap();
        let s = svc.into_state();
        assert_eq!(s.name, "shop_web");
        assert_eq!(s.networks, vec!["n1"]);
        assert_eq!(s.vips[0].1.to_string(), "10.0.1.2");
        assert_eq!(s.target_ports, vec![80]);
        assert_eq!(s.replicas, Some(2));
        let t: ApiTask = serde_json::from_str(
            r#"{"ID":"t1","ServiceID":"s1","NodeID":"n","Slot":1,"Status":{"State":"running","Message":"started"},
               "DesiredState":"running","NetworksAttachments":[{"Network":{"ID":"n1","Spec":{"Name":"front"}},"Addresses":["10.0.1.5/24"]}]}"#,
        )
        .unwrap();
        let t = t.into_state();
        assert_eq!(
            t.addresses,
            vec![("n1".to_string(), "10.0.1.5".parse().unwrap())]
        );
        let g: ApiService =
            serde_json::from_str(r#"{"ID":"g","Spec":{"Name":"g","Mode":{"Global":{}}}}"#).unwrap();
        assert_eq!(g.into_state().replicas, None);
        let n: Vec<ApiNetwork> =
            serde_json::from_str(r#"[{"Name":"ingress","Id":"i","Ingress":true}]"#).unwrap();
        assert!(n[0].ingress && n[0].id == "i");
    }

    #[test]
    fn own_container_comes_from_the_etc_hostname_mount_only() {
        let id = "a".repeat(64);
        let other = "b".repeat(64);
        let info = format!(
            "1 0 0:1 / / rw - overlay overlay rw\n\
             2 1 0:2 /var/lib/docker/containers/{other}/mounts/shm /x/shm rw - tmpfs shm rw\n\
             3 1 8:1 /var/lib/docker/containers/{id}/hostname /etc/hostname rw - ext4 /dev/sda1 rw\n"
        );
        assert_eq!(container_from_mountinfo(&info), Some(id));
        let host = format!(
            "2 1 0:2 /var/lib/docker/containers/{other}/mounts/shm /x/shm rw - tmpfs shm rw\n"
        );
        assert_eq!(container_from_mountinfo(&host), None);
    }

    #[test]
    fn filters_are_percent_encoded() {
        assert_eq!(
            percent_encode(r#"{"a":["b"]}"#),
            "%7B%22a%22%3A%5B%22b%22%5D%7D"
        );
    }
}
