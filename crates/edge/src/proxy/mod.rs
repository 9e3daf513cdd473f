//! The data path: listeners accept connections, each request is matched
//! against the current routing [`table::Snapshot`], passes its router's
//! middlewares, and is forwarded to a server of the service picked by the
//! [`balancer`], over a pooled keep-alive connection. Bodies stream in both
//! directions; WebSocket and other `Upgrade`s are tunnelled.

pub mod accesslog;
pub mod balancer;
pub mod coalesce;
pub mod connector;
pub mod health;
pub mod listener;
pub mod metrics;
pub mod middleware;
pub mod pool;
pub mod table;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body as _, Incoming};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use serde::Serialize;

use crate::config::{self, rule::RequestView, Dynamic};
use crate::tls::CertStore;
use balancer::ServerRegistry;
use metrics::{Metrics, RequestLabels, RouterLabels};
use middleware::{Action, Ctx};
use table::{Route, Snapshot};

/// Error type of bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Body type used throughout the proxy (same as the admin endpoint's).
pub type Body = b3_common::admin::Body;

/// An empty body.
pub fn empty() -> Body {
    Empty::new().map_err(|e| match e {}).boxed()
}

/// A short text response (errors, redirects): never empty of explanation.
pub fn small_response(status: StatusCode, text: &str) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::copy_from_slice(text.as_bytes()))
            .map_err(|e| match e {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(text.len()));
    r
}

/// Tunables of the data path (from the command line).
#[derive(Debug, Clone)]
pub struct Options {
    /// Port HTTPS clients reach us on (for redirects).
    pub https_port: u16,
    /// Redirect plain requests for TLS routers to HTTPS.
    pub redirect_to_https: bool,
    /// Time to connect to a backend.
    pub connect_timeout: Duration,
    /// Time for a backend to send response headers.
    pub response_timeout: Duration,
    /// Time a client has to send request headers (and idle keep-alive time).
    pub header_read_timeout: Duration,
    /// Time for a TLS handshake.
    pub handshake_timeout: Duration,
    /// Largest request head (HTTP/1) or header list (HTTP/2).
    pub max_header_bytes: usize,
    /// Longest request URI.
    pub max_uri_bytes: usize,
    /// Largest request body, if limited.
    pub max_body_bytes: Option<u64>,
    /// How long a server that refused a connection is left out.
    pub eject_duration: Duration,
    /// Most client connections per entry point.
    pub max_connections: usize,
    /// Most concurrent HTTP/2 streams per connection.
    pub max_h2_streams: u32,
    /// Idle keep-alive connections kept per backend.
    pub pool_max_idle: usize,
    /// Accept any certificate from `https://` servers.
    pub backend_insecure_skip_verify: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            https_port: 443,
            redirect_to_https: true,
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(60),
            header_read_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            max_header_bytes: 32 * 1024,
            max_uri_bytes: 8 * 1024,
            max_body_bytes: None,
            eject_duration: Duration::from_secs(10),
            max_connections: 16 * 1024,
            max_h2_streams: 250,
            // Above the in-flight requests of a busy HTTP/2 client load
            // (64 connections x 10 streams), so the pool does not churn.
            pool_max_idle: 1024,
            backend_insecure_skip_verify: false,
        }
    }
}

/// A provider's state, for the API.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProviderStatus {
    /// Last configuration accepted (seconds since the epoch).
    pub last_applied: Option<u64>,
    /// Last change rejected, with the reason (cleared by the next good one).
    pub last_error: Option<String>,
}

/// Everything the data path shares.
pub struct Runtime {
    snapshot: RwLock<Arc<Snapshot>>,
    configs: Mutex<BTreeMap<String, Dynamic>>,
    /// Provider states.
    pub providers: Mutex<BTreeMap<String, ProviderStatus>>,
    registry: ServerRegistry,
    /// Certificates.
    pub certs: Arc<CertStore>,
    /// Metrics.
    pub metrics: Metrics,
    client: pool::Client,
    /// Tunables.
    pub opts: Options,
    /// Access log, if enabled.
    pub access_log: Option<accesslog::AccessLog>,
    /// Number of snapshots built.
    pub generation: AtomicU64,
    /// Entry point addresses, for the API.
    pub entry_points: Mutex<Vec<(String, String)>>,
}

impl Runtime {
    /// A runtime with an empty routing table.
    pub fn new(
        opts: Options,
        certs: Arc<CertStore>,
        metrics: Metrics,
        access_log: Option<accesslog::AccessLog>,
    ) -> anyhow::Result<Runtime> {
        let mut conn = HttpConnector::new();
        conn.set_connect_timeout(Some(opts.connect_timeout));
        conn.set_nodelay(true);
        conn.set_keepalive(Some(Duration::from_secs(60)));
        let client = pool::Client::new(
            connector::Connector::new(conn, opts.backend_insecure_skip_verify)?,
            opts.pool_max_idle,
            Duration::from_secs(90),
            // Reads from a server grow their buffer while reads fill it, by
            // default up to ~400 KiB per connection: 64 connections
            // streaming 100 KiB responses held 25 MiB of it. 64 KiB is a
            // few loopback reads per large response, and still room for
            // any sane response head.
            64 * 1024,
        );
        Ok(Runtime {
            snapshot: RwLock::new(Arc::new(Snapshot::default())),
            configs: Mutex::new(BTreeMap::new()),
            providers: Mutex::new(BTreeMap::new()),
            registry: ServerRegistry::default(),
            certs,
            metrics,
            client,
            opts,
            access_log,
            generation: AtomicU64::new(0),
            entry_points: Mutex::new(Vec::new()),
        })
    }

    /// The current routing snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        match self.snapshot.read() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Replaces one provider's configuration and swaps in a new snapshot.
    pub fn apply(&self, provider: &str, cfg: Dynamic) {
        let snap = {
            let Ok(mut configs) = self.configs.lock() else {
                return;
            };
            configs.insert(provider.to_string(), cfg);
            table::compile(&configs, &self.registry)
        };
        self.certs.set_files(&snap.certificates);
        for p in &snap.problems {
            tracing::warn!(problem = %p, "configuration problem");
        }
        let routers = snap.routers.len();
        if let Ok(mut w) = self.snapshot.write() {
            *w = Arc::new(snap);
        }
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        if let Ok(mut p) = self.providers.lock() {
            let st = p.entry(provider.to_string()).or_default();
            st.last_applied = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .ok()
                .map(|d| d.as_secs());
            st.last_error = None;
        }
        self.metrics
            .reloads
            .get_or_create(&metrics::HandshakeLabels { result: "ok" })
            .inc();
        tracing::info!(provider, routers, generation, "configuration applied");
    }

    /// Records that a provider rejected a change (the old one keeps serving).
    pub fn reject(&self, provider: &str, error: String) {
        tracing::error!(provider, %error, "configuration change rejected; the last good configuration keeps serving");
        self.metrics
            .reloads
            .get_or_create(&metrics::HandshakeLabels { result: "rejected" })
            .inc();
        if let Ok(mut p) = self.providers.lock() {
            p.entry(provider.to_string()).or_default().last_error = Some(error);
        }
    }
}

/// Facts about the client connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// Entry point name.
    pub entrypoint: &'static str,
    /// Over TLS.
    pub tls: bool,
    /// Client address.
    pub peer: SocketAddr,
    /// Our port.
    pub local_port: u16,
}

fn client_ip(peer: &SocketAddr) -> IpAddr {
    match peer.ip() {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// Headers that apply to one connection only (RFC 9110 §7.6.1), never
/// forwarded. Made once: a header name given as `&str` is parsed and, for
/// non-standard ones, copied into a new allocation on every use.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Most messages carry none (or only `Connection`): look before removing.
    if !h.keys().any(|k| HOP_BY_HOP.contains(k)) {
        return;
    }
    let listed: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in listed {
        h.remove(n);
    }
    for n in &HOP_BY_HOP {
        h.remove(n);
    }
}

fn is_upgrade(req: &Request<Incoming>) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11 {
        return None;
    }
    let conn_upgrade = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        });
    if conn_upgrade {
        req.headers().get(header::UPGRADE).cloned()
    } else {
        None
    }
}

fn cookie_value<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Handles one client request end to end. Never fails: every problem is
/// an HTTP error response with a one-line explanation.
pub async fn handle(
    rt: Arc<Runtime>,
    conn: ConnInfo,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let start = Instant::now();
    let method = req.method().clone();
    let uri_text = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| req.uri().to_string());
    let version = req.version();
    if uri_text.len() > rt.opts.max_uri_bytes {
        let r = small_response(StatusCode::URI_TOO_LONG, "request URI too long\n");
        return finish(
            &rt, &conn, start, &method, &uri_text, version, "", None, None, r,
        );
    }
    let host_raw = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(String::from)
        })
        .unwrap_or_default();
    let host = config::rule::normalize_host(&host_raw);
    let snap = rt.snapshot();
    let ip = client_ip(&conn.peer);
    let route: Option<Arc<Route>> = {
        let view = RequestView {
            method: req.method(),
            host: &host,
            path: req.uri().path(),
            query: req.uri().query(),
            headers: req.headers(),
            client_ip: ip,
        };
        let table = if conn.tls { &snap.websecure } else { &snap.web };
        match table.find(&view) {
            Some(r) => Some(r.clone()),
            None => {
                let r = if !conn.tls
                    && rt.opts.redirect_to_https
                    && snap.redirect.find(&view).is_some()
                {
                    let loc = middleware::redirect_location(
                        "https",
                        &host,
                        Some(rt.opts.https_port),
                        &req.into_parts().0,
                    );
                    let mut r = small_response(
                        StatusCode::PERMANENT_REDIRECT,
                        &format!("redirecting to {loc}\n"),
                    );
                    if let Ok(v) = HeaderValue::from_str(&loc) {
                        r.headers_mut().insert(header::LOCATION, v);
                    }
                    r
                } else {
                    small_response(
                        StatusCode::NOT_FOUND,
                        "404 page not found: no router matches this host and path\n",
                    )
                };
                return finish(
                    &rt, &conn, start, &method, &uri_text, version, &host_raw, None, None, r,
                );
            }
        }
    };
    let Some(route) = route else {
        return small_response(StatusCode::NOT_FOUND, "404 page not found\n");
    };
    if let (Some(max), Some(len)) = (rt.opts.max_body_bytes, req.body().size_hint().exact()) {
        if len > max {
            let r = small_response(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n");
            return finish(
                &rt,
                &conn,
                start,
                &method,
                &uri_text,
                version,
                &host_raw,
                Some(&route.label),
                None,
                r,
            );
        }
    }
    let upgrade = is_upgrade(&req).map(|proto| (proto, hyper::upgrade::on(&mut req)));
    let (mut parts, body) = req.into_parts();
    let mut ctx = Ctx {
        tls: conn.tls,
        client_ip: ip,
        host: host.clone(),
        https_port: rt.opts.https_port,
        accept: middleware::negotiate(
            parts
                .headers
                .get_all(header::ACCEPT_ENCODING)
                .iter()
                .filter_map(|v| v.to_str().ok()),
        ),
        head: parts.method == Method::HEAD,
        origin: parts.headers.get(header::ORIGIN).cloned(),
        retry: None,
    };
    let mut applied = route.middlewares.len();
    let mut early = None;
    for (i, mw) in route.middlewares.iter().enumerate() {
        if let Action::Respond(r) = mw.on_request(&mut ctx, &mut parts).await {
            applied = i;
            early = Some(r);
            break;
        }
    }
    let (mut resp, service) = match early {
        Some(r) => (r, None),
        None => {
            let (r, s) = forward(&rt, &conn, &route, &ctx, parts, body, upgrade, &host_raw).await;
            (r, s)
        }
    };
    for mw in route.middlewares[..applied].iter().rev() {
        mw.on_response(&ctx, &mut resp);
    }
    finish(
        &rt,
        &conn,
        start,
        &method,
        &uri_text,
        version,
        &host_raw,
        Some(&route.label),
        service.as_ref(),
        resp,
    )
}

#[allow(clippy::too_many_arguments)]
fn finish(
    rt: &Runtime,
    conn: &ConnInfo,
    start: Instant,
    method: &Method,
    uri: &str,
    version: Version,
    host: &str,
    router: Option<&Arc<String>>,
    service: Option<&Arc<String>>,
    resp: Response<Body>,
) -> Response<Body> {
    let code = resp.status().as_u16();
    let elapsed = start.elapsed();
    rt.metrics
        .requests
        .get_or_create(&RequestLabels {
            entrypoint: conn.entrypoint,
            router: router.unwrap_or(&metrics::NONE).clone(),
            service: service.unwrap_or(&metrics::NONE).clone(),
            code,
        })
        .inc();
    if let Some(r) = router {
        rt.metrics
            .duration
            .get_or_create(&RouterLabels { router: r.clone() })
            .observe(elapsed.as_secs_f64());
    }
    if let Some(log) = &rt.access_log {
        log.record(accesslog::Entry {
            client: conn.peer.ip(),
            method: method.as_str(),
            uri,
            version,
            host,
            status: code,
            bytes: resp.body().size_hint().exact(),
            duration: elapsed,
            router: router.map(|r| r.as_str()),
            service: service.map(|s| s.as_str()),
            entrypoint: conn.entrypoint,
        });
    }
    resp
}

fn header_value(s: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(s).ok()
}

/// Sets the headers the backend sees: hop-by-hop removed, X-Forwarded-*,
/// Forwarded, X-Real-Ip. Incoming forwarding headers are not trusted (a
/// client could forge them), so they are replaced, not appended to.
fn forwarded_headers(h: &mut HeaderMap, conn: &ConnInfo, host_raw: &str) {
    use std::fmt::Write as _;
    strip_hop_by_hop(h);
    let ip = client_ip(&conn.peer);
    let proto = if conn.tls { "https" } else { "http" };
    // One buffer for the `Forwarded` value; the address is a slice of it.
    let mut fwd = String::with_capacity(64 + host_raw.len());
    fwd.push_str("for=");
    let ip_at = match ip {
        IpAddr::V6(_) => {
            fwd.push_str("\"[");
            fwd.len()
        }
        IpAddr::V4(_) => fwd.len(),
    };
    let _ = write!(fwd, "{ip}");
    let ip_end = fwd.len();
    if let Ok(v) = HeaderValue::from_str(&fwd[ip_at..ip_end]) {
        h.insert(X_FORWARDED_FOR, v.clone());
        h.insert(X_REAL_IP, v);
    }
    if ip.is_ipv6() {
        fwd.push_str("]\"");
    }
    h.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    if let Some(v) = header_value(host_raw) {
        h.insert(X_FORWARDED_HOST, v);
    }
    h.insert(X_FORWARDED_PORT, HeaderValue::from(conn.local_port));
    fwd.push_str(";proto=");
    fwd.push_str(proto);
    if !host_raw.is_empty()
        && host_raw
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b';' && b != b',')
    {
        fwd.push_str(";host=\"");
        fwd.push_str(host_raw);
        fwd.push('"');
    }
    if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(fwd)) {
        h.insert(header::FORWARDED, v);
    }
}

#[allow(clippy::too_many_arguments)]
async fn forward(
    rt: &Runtime,
    conn: &ConnInfo,
    route: &Route,
    ctx: &Ctx,
    mut parts: http::request::Parts,
    body: Incoming,
    upgrade: Option<(HeaderValue, hyper::upgrade::OnUpgrade)>,
    host_raw: &str,
) -> (Response<Body>, Option<Arc<String>>) {
    let Some((svc_name, lb)) = route.service.resolve() else {
        return (
            small_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "503 service unavailable: the service has no servers\n",
            ),
            None,
        );
    };
    let svc = Some(svc_name.clone());
    let sticky_cookie = lb
        .sticky
        .as_ref()
        .and_then(|s| cookie_value(&parts.headers, &s.name).map(String::from));
    forwarded_headers(&mut parts.headers, conn, host_raw);
    let (upgrade_proto, client_upgrade) = match upgrade {
        Some((p, u)) => (Some(p), Some(u)),
        None => (None, None),
    };
    if let Some(p) = &upgrade_proto {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, p.clone());
    }
    // Origin form (`/path?query`), as HTTP/1.1 servers expect; an HTTP/2
    // request's URI is absolute.
    let origin_form: http::Uri = match parts.uri.path_and_query() {
        Some(p) => p.clone().into(),
        None => http::Uri::from_static("/"),
    };
    // A request without a body can be sent again; one with a body streams
    // once (it is never buffered), so it is retried only if it never left.
    let bodyless = body.is_end_stream() && client_upgrade.is_none();
    let idempotent = matches!(
        parts.method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    );
    let (retry_attempts, mut backoff) = ctx.retry.unwrap_or((0, Duration::from_millis(0)));
    let max_attempts = if bodyless {
        (lb.servers.len().min(3) as u32).max(retry_attempts).max(1)
    } else {
        1
    };
    let mut body = Some(body);
    let mut tried = Vec::new();
    let mut last_error = String::from("no server was tried");
    let limit = rt.opts.max_body_bytes;
    let (idx, mut resp) = loop {
        let Some(idx) = lb.pick(sticky_cookie.as_deref(), &tried) else {
            let r = if tried.is_empty() {
                small_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "503 service unavailable: no healthy server\n",
                )
            } else {
                small_response(
                    StatusCode::BAD_GATEWAY,
                    &format!("502 bad gateway: {last_error}\n"),
                )
            };
            return (r, svc);
        };
        tried.push(idx);
        let server = &lb.servers[idx];
        server.requests.fetch_add(1, Ordering::Relaxed);
        // The last possible attempt takes the headers; earlier ones copy them.
        let mut headers = if tried.len() as u32 >= max_attempts {
            std::mem::take(&mut parts.headers)
        } else {
            parts.headers.clone()
        };
        let host_header = if lb.pass_host_header && !host_raw.is_empty() {
            header_value(host_raw)
        } else {
            header_value(server.addr.authority.as_str())
        };
        if let Some(h) = host_header {
            headers.insert(header::HOST, h);
        }
        let req_body: Body = if bodyless {
            empty()
        } else {
            match body.take() {
                Some(b) => match limit {
                    Some(max) => http_body_util::Limited::new(b, max as usize).boxed(),
                    None => b.map_err(|e| Box::new(e) as BoxError).boxed(),
                },
                None => empty(),
            }
        };
        let mut out = Request::new(req_body);
        *out.method_mut() = parts.method.clone();
        *out.uri_mut() = origin_form.clone();
        *out.version_mut() = Version::HTTP_11;
        *out.headers_mut() = headers;
        let attempt = tried.len() as u32;
        match tokio::time::timeout(
            rt.opts.response_timeout,
            rt.client.send(Some(&server.pool), &server.target, out),
        )
        .await
        {
            Err(_) => {
                server.errors.fetch_add(1, Ordering::Relaxed);
                server.note_error(format!("no response within {:?}", rt.opts.response_timeout));
                return (
                    small_response(
                        StatusCode::GATEWAY_TIMEOUT,
                        "504 gateway timeout: the server did not answer in time\n",
                    ),
                    svc,
                );
            }
            Ok(Ok(r)) => {
                server.clear_ejection();
                break (idx, r);
            }
            Ok(Err(e)) => {
                let msg = error_chain(&e);
                if e.is_connect() {
                    server.eject(rt.opts.eject_duration, format!("connect: {msg}"));
                    tracing::warn!(service = %svc_name, server = %server.url, error = %msg, "backend refused the connection; ejected");
                    last_error = format!("cannot connect to {}: {msg}", server.url);
                    if attempt < max_attempts {
                        continue;
                    }
                } else {
                    server.errors.fetch_add(1, Ordering::Relaxed);
                    server.note_error(msg.clone());
                    last_error = format!("{}: {msg}", server.url);
                    if ctx.retry.is_some() && bodyless && idempotent && attempt < max_attempts {
                        tokio::time::sleep(backoff).await;
                        backoff *= 2;
                        continue;
                    }
                }
                return (
                    small_response(
                        StatusCode::BAD_GATEWAY,
                        &format!("502 bad gateway: {last_error}\n"),
                    ),
                    svc,
                );
            }
        }
    };
    let server = &lb.servers[idx];
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_up) = client_upgrade {
            let backend_up = hyper::upgrade::on(&mut resp);
            let url = server.url.clone();
            tokio::spawn(async move {
                match tokio::try_join!(client_up, backend_up) {
                    Ok((c, b)) => {
                        let mut c = TokioIo::new(c);
                        let mut b = TokioIo::new(b);
                        if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut b).await {
                            tracing::debug!(server = %url, error = %e, "upgraded connection ended");
                        }
                    }
                    Err(e) => tracing::debug!(server = %url, error = %e, "upgrade failed"),
                }
            });
        }
        let (p, _) = resp.into_parts();
        return (Response::from_parts(p, empty()), svc);
    }
    strip_hop_by_hop(resp.headers_mut());
    if let Some(s) = &lb.sticky {
        if sticky_cookie.as_deref() != Some(server.cookie_id.as_str()) {
            if let Some(v) =
                header_value(&format!("{}={}{}", s.name, server.cookie_id, s.attributes))
            {
                resp.headers_mut().append(header::SET_COOKIE, v);
            }
        }
    }
    (
        resp.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed()),
        svc,
    )
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, X-Secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn forwarded_headers_replace_forged_ones() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "6.6.6.6".parse().unwrap());
        let conn = ConnInfo {
            entrypoint: "websecure",
            tls: true,
            peer: "[::ffff:10.0.0.9]:5555".parse().unwrap(),
            local_port: 443,
        };
        forwarded_headers(&mut h, &conn, "app.b3.swarm");
        assert_eq!(h["x-forwarded-for"], "10.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "app.b3.swarm");
        assert_eq!(h["x-forwarded-port"], "443");
        assert_eq!(h["x-real-ip"], "10.0.0.9");
        assert_eq!(
            h[header::FORWARDED],
            "for=10.0.0.9;proto=https;host=\"app.b3.swarm\""
        );
    }

    #[test]
    fn forwarded_headers_quote_ipv6_and_replace_forged_ones() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "6.6.6.6".parse().unwrap());
        h.insert(header::CONNECTION, "close".parse().unwrap());
        let conn = ConnInfo {
            entrypoint: "web",
            tls: false,
            peer: "[2001:db8::1]:5555".parse().unwrap(),
            local_port: 80,
        };
        forwarded_headers(&mut h, &conn, "a\"b");
        assert_eq!(h["x-forwarded-for"], "2001:db8::1");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-real-ip"], "2001:db8::1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-port"], "80");
        assert!(!h.contains_key(header::CONNECTION));
        // A host that cannot be quoted safely is left out of Forwarded.
        assert_eq!(h[header::FORWARDED], "for=\"[2001:db8::1]\";proto=http");
    }

    #[test]
    fn cookies_are_found_by_name() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, "a=1; srv=abc; b=2".parse().unwrap());
        assert_eq!(cookie_value(&h, "srv"), Some("abc"));
        assert_eq!(cookie_value(&h, "zz"), None);
    }
}
