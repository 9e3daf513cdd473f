//! Middlewares compiled from the configuration: each may change the request
//! before it is forwarded, answer it itself (redirect, 401, 403, 429, CORS
//! preflight), and change the response on the way back.

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Frame, SizeHint};
use ipnet::IpNet;
use sha2::{Digest, Sha256};

use crate::config::{self, htpasswd};
use crate::proxy::{small_response, Body, BoxError};

/// Most client addresses a rate limiter remembers.
const RATE_LIMIT_MAX_CLIENTS: usize = 100_000;
/// Most successful basic-auth verifications remembered (bcrypt is slow).
const AUTH_CACHE_MAX: usize = 10_000;

/// Per-request facts the middlewares need.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// Arrived over TLS.
    pub tls: bool,
    /// TCP peer address.
    pub client_ip: IpAddr,
    /// Request host (lower case, no port).
    pub host: String,
    /// The HTTPS entry point's public port (for redirects).
    pub https_port: u16,
    /// The best compression the client accepts.
    pub accept: Option<Encoding>,
    /// A HEAD request.
    pub head: bool,
    /// CORS: the request's Origin header.
    pub origin: Option<HeaderValue>,
    /// Set by the retry middleware: attempts and first back-off.
    pub retry: Option<(u32, Duration)>,
}

/// A content coding the compress middleware can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// brotli (preferred: smaller).
    Br,
    /// gzip.
    Gzip,
}

impl Encoding {
    fn token(self) -> &'static str {
        match self {
            Encoding::Br => "br",
            Encoding::Gzip => "gzip",
        }
    }
}

/// Picks br, else gzip, from `Accept-Encoding` values (q=0 refuses).
pub fn negotiate<'a>(values: impl Iterator<Item = &'a str>) -> Option<Encoding> {
    let (mut br, mut gzip) = (false, false);
    for v in values {
        for item in v.split(',') {
            let mut parts = item.split(';');
            let name = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let refused = parts.any(|p| {
                let p = p.trim();
                p.strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            if refused {
                continue;
            }
            match name.as_str() {
                "br" => br = true,
                "gzip" | "x-gzip" => gzip = true,
                "*" => {
                    br = true;
                    gzip = true
                }
                _ => {}
            }
        }
    }
    if br {
        Some(Encoding::Br)
    } else if gzip {
        Some(Encoding::Gzip)
    } else {
        None
    }
}

/// A compiled middleware.
#[derive(Debug)]
pub enum Mw {
    /// Redirect to another scheme.
    RedirectScheme {
        /// `http` or `https`.
        scheme: String,
        /// Target port, when not the default.
        port: Option<u16>,
        /// 308 instead of 307.
        permanent: bool,
    },
    /// Remove the first matching prefix.
    StripPrefix(Vec<String>),
    /// Prepend a prefix.
    AddPrefix(String),
    /// Header manipulation, HSTS, CORS.
    Headers(Box<HeadersMw>),
    /// Basic authentication.
    BasicAuth(BasicAuthMw),
    /// Token bucket per client address.
    RateLimit(RateLimiter),
    /// Allowed client networks.
    IpAllowList(Vec<IpNet>),
    /// gzip compression of responses.
    Compress {
        /// Content types never compressed.
        excluded: Vec<String>,
        /// Smallest length compressed when known.
        min_bytes: u64,
    },
    /// Retry on network errors.
    Retry {
        /// Attempts in total.
        attempts: u32,
        /// First back-off.
        initial: Duration,
    },
}

/// What a middleware decided about a request.
pub enum Action {
    /// Go on to the next middleware / the service.
    Continue,
    /// Answer with this response.
    Respond(Response<Body>),
}

/// Compiled `headers` middleware.
#[derive(Debug)]
pub struct HeadersMw {
    request: Vec<(HeaderName, Option<HeaderValue>)>,
    response: Vec<(HeaderName, Option<HeaderValue>)>,
    sts: Option<HeaderValue>,
    force_sts: bool,
    cors_origins: Vec<String>,
    cors_methods: Option<HeaderValue>,
    cors_headers: Option<HeaderValue>,
    cors_expose: Option<HeaderValue>,
    cors_credentials: bool,
    cors_max_age: Option<HeaderValue>,
    vary: bool,
}

/// Compiled `basicAuth` middleware.
#[derive(Debug)]
pub struct BasicAuthMw {
    users: HashMap<String, htpasswd::Hash>,
    realm: String,
    remove_header: bool,
    header_field: Option<HeaderName>,
    // sha256(Authorization value) → user, for credentials verified before.
    cache: Mutex<HashMap<[u8; 32], String>>,
}

/// Token buckets per client address.
#[derive(Debug)]
pub struct RateLimiter {
    per_sec: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl RateLimiter {
    /// `average` requests per `period`, bursts of `burst`.
    pub fn new(average: u64, period: Duration, burst: u64) -> RateLimiter {
        RateLimiter {
            per_sec: average as f64 / period.as_secs_f64().max(0.001),
            burst: burst.max(1) as f64,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `ip`; false when the client is over its rate.
    pub fn allow(&self, ip: IpAddr, now: Instant) -> bool {
        let Ok(mut b) = self.buckets.lock() else {
            return true;
        };
        if b.len() >= RATE_LIMIT_MAX_CLIENTS && !b.contains_key(&ip) {
            // Forget clients whose bucket has refilled: they lose nothing.
            let (per_sec, burst) = (self.per_sec, self.burst);
            b.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * per_sec < burst
            });
            if b.len() >= RATE_LIMIT_MAX_CLIENTS {
                b.clear();
            }
        }
        let (tokens, at) = b.entry(ip).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.per_sec).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn header_list(v: &[String]) -> Option<HeaderValue> {
    if v.is_empty() {
        None
    } else {
        HeaderValue::from_str(&v.join(", ")).ok()
    }
}

fn header_pairs(
    m: &std::collections::BTreeMap<String, String>,
) -> Result<Vec<(HeaderName, Option<HeaderValue>)>, String> {
    m.iter()
        .map(|(k, v)| {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| format!("{k:?} is not a header name"))?;
            let value = if v.is_empty() {
                None
            } else {
                Some(
                    HeaderValue::from_str(v)
                        .map_err(|_| format!("value of {k:?} is not a valid header value"))?,
                )
            };
            Ok((name, value))
        })
        .collect()
}

/// Compiles one middleware (chains are flattened by the caller).
pub fn compile(m: &config::Middleware) -> Result<Mw, String> {
    Ok(match m {
        config::Middleware::RedirectScheme(r) => Mw::RedirectScheme {
            scheme: r.scheme.clone().unwrap_or_else(|| "https".into()),
            port: match &r.port {
                Some(p) => Some(
                    p.parse()
                        .map_err(|_| format!("port {p:?} is not a number"))?,
                ),
                None => None,
            },
            permanent: r.permanent,
        },
        config::Middleware::StripPrefix(s) => Mw::StripPrefix(s.prefixes.clone()),
        config::Middleware::AddPrefix(a) => Mw::AddPrefix(a.prefix.clone()),
        config::Middleware::Headers(h) => {
            let sts = if h.sts_seconds > 0 {
                let mut v = format!("max-age={}", h.sts_seconds);
                if h.sts_include_subdomains {
                    v.push_str("; includeSubDomains");
                }
                if h.sts_preload {
                    v.push_str("; preload");
                }
                HeaderValue::from_str(&v).ok()
            } else {
                None
            };
            let mut response = header_pairs(&h.custom_response_headers)?;
            if h.frame_deny {
                response.push((
                    header::X_FRAME_OPTIONS,
                    Some(HeaderValue::from_static("DENY")),
                ));
            }
            if h.content_type_nosniff {
                response.push((
                    header::X_CONTENT_TYPE_OPTIONS,
                    Some(HeaderValue::from_static("nosniff")),
                ));
            }
            if let Some(r) = &h.referrer_policy {
                response.push((header::REFERRER_POLICY, HeaderValue::from_str(r).ok()));
            }
            if let Some(c) = &h.content_security_policy {
                response.push((
                    header::CONTENT_SECURITY_POLICY,
                    HeaderValue::from_str(c).ok(),
                ));
            }
            Mw::Headers(Box::new(HeadersMw {
                request: header_pairs(&h.custom_request_headers)?,
                response,
                sts,
                force_sts: h.force_sts_header,
                cors_origins: h.access_control_allow_origin_list.clone(),
                cors_methods: header_list(&h.access_control_allow_methods),
                cors_headers: header_list(&h.access_control_allow_headers),
                cors_expose: header_list(&h.access_control_expose_headers),
                cors_credentials: h.access_control_allow_credentials,
                cors_max_age: h
                    .access_control_max_age
                    .and_then(|a| HeaderValue::from_str(&a.to_string()).ok()),
                vary: h.add_vary_header,
            }))
        }
        config::Middleware::BasicAuth(b) => {
            let mut users = HashMap::new();
            let mut lines: Vec<String> = b.users.clone();
            if let Some(f) = &b.users_file {
                let text = std::fs::read_to_string(f).map_err(|e| {
                    format!("reading usersFile {f:?}: {e}; check the path is mounted and readable")
                })?;
                lines.extend(
                    text.lines()
                        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
                        .map(String::from),
                );
            }
            for l in &lines {
                let (u, h) = htpasswd::parse_line(l)?;
                users.insert(u, h);
            }
            let header_field = match &b.header_field {
                Some(h) => Some(
                    HeaderName::from_bytes(h.as_bytes())
                        .map_err(|_| format!("headerField {h:?} is not a header name"))?,
                ),
                None => None,
            };
            Mw::BasicAuth(BasicAuthMw {
                users,
                realm: b
                    .realm
                    .clone()
                    .unwrap_or_else(|| "edge".into())
                    .replace('"', ""),
                remove_header: b.remove_header,
                header_field,
                cache: Mutex::new(HashMap::new()),
            })
        }
        config::Middleware::RateLimit(r) => Mw::RateLimit(RateLimiter::new(
            r.average,
            r.period.map(|p| p.0).unwrap_or(Duration::from_secs(1)),
            r.burst.unwrap_or(1),
        )),
        config::Middleware::IpAllowList(l) | config::Middleware::IpWhiteList(l) => Mw::IpAllowList(
            l.source_range
                .iter()
                .map(|s| config::rule::parse_net(s).map_err(|e| format!("{s:?}: {e}")))
                .collect::<Result<_, _>>()?,
        ),
        config::Middleware::Compress(c) => Mw::Compress {
            excluded: c
                .excluded_content_types
                .iter()
                .map(|s| s.to_ascii_lowercase())
                .collect(),
            min_bytes: c.min_response_body_bytes.unwrap_or(1024),
        },
        config::Middleware::Retry(r) => Mw::Retry {
            attempts: r.attempts.clamp(1, 10),
            initial: r
                .initial_interval
                .map(|d| d.0)
                .unwrap_or(Duration::from_millis(100)),
        },
        config::Middleware::Chain(_) => return Err("chains are flattened before compiling".into()),
    })
}

fn redirect(status: StatusCode, location: &str) -> Response<Body> {
    let mut r = small_response(status, &format!("redirecting to {location}\n"));
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// Builds `scheme://host[:port]/path?query` for a redirect.
pub fn redirect_location(
    scheme: &str,
    host: &str,
    port: Option<u16>,
    parts: &request::Parts,
) -> String {
    let default = if scheme == "https" { 443 } else { 80 };
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    match port {
        Some(p) if p != default => format!("{scheme}://{host}:{p}{pq}"),
        _ => format!("{scheme}://{host}{pq}"),
    }
}

fn set_path(parts: &mut request::Parts, path: &str) {
    let pq = match parts.uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let mut p = std::mem::take(&mut parts.uri).into_parts();
    p.path_and_query = pq.parse().ok();
    if let Ok(u) = http::Uri::from_parts(p) {
        parts.uri = u;
    }
}

fn origin_allowed(list: &[String], origin: &HeaderValue) -> bool {
    list.iter()
        .any(|o| o == "*" || o.as_bytes() == origin.as_bytes())
}

impl Mw {
    /// Request phase.
    pub async fn on_request(&self, ctx: &mut Ctx, parts: &mut request::Parts) -> Action {
        match self {
            Mw::RedirectScheme {
                scheme,
                port,
                permanent,
            } => {
                let current = if ctx.tls { "https" } else { "http" };
                if current == scheme {
                    return Action::Continue;
                }
                let port = port.or(if scheme == "https" {
                    Some(ctx.https_port)
                } else {
                    None
                });
                let loc = redirect_location(scheme, &ctx.host, port, parts);
                let status = if *permanent {
                    StatusCode::PERMANENT_REDIRECT
                } else {
                    StatusCode::TEMPORARY_REDIRECT
                };
                Action::Respond(redirect(status, &loc))
            }
            Mw::StripPrefix(prefixes) => {
                let path = parts.uri.path().to_string();
                for p in prefixes {
                    let p = p.trim_end_matches('/');
                    if let Some(rest) = path.strip_prefix(p) {
                        if !(rest.is_empty() || rest.starts_with('/') || p.is_empty()) {
                            continue;
                        }
                        let new = if rest.starts_with('/') {
                            rest.to_string()
                        } else {
                            format!("/{rest}")
                        };
                        set_path(parts, &new);
                        if let Ok(v) = HeaderValue::from_str(p) {
                            parts.headers.insert("x-forwarded-prefix", v);
                        }
                        break;
                    }
                }
                Action::Continue
            }
            Mw::AddPrefix(prefix) => {
                let path = format!("{}{}", prefix.trim_end_matches('/'), parts.uri.path());
                set_path(parts, &path);
                Action::Continue
            }
            Mw::Headers(h) => {
                for (k, v) in &h.request {
                    match v {
                        Some(v) => {
                            parts.headers.insert(k.clone(), v.clone());
                        }
                        None => {
                            parts.headers.remove(k);
                        }
                    }
                }
                // CORS preflight: answered here, never forwarded.
                if !h.cors_origins.is_empty()
                    && parts.method == http::Method::OPTIONS
                    && parts
                        .headers
                        .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
                {
                    if let Some(origin) = &ctx.origin {
                        let mut r = small_response(StatusCode::OK, "");
                        let hd = r.headers_mut();
                        if origin_allowed(&h.cors_origins, origin) {
                            hd.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
                            if let Some(m) = &h.cors_methods {
                                hd.insert(header::ACCESS_CONTROL_ALLOW_METHODS, m.clone());
                            }
                            if let Some(m) = &h.cors_headers {
                                hd.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, m.clone());
                            }
                            if let Some(m) = &h.cors_max_age {
                                hd.insert(header::ACCESS_CONTROL_MAX_AGE, m.clone());
                            }
                            if h.cors_credentials {
                                hd.insert(
                                    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                                    HeaderValue::from_static("true"),
                                );
                            }
                        }
                        return Action::Respond(r);
                    }
                }
                Action::Continue
            }
            Mw::BasicAuth(b) => b.check(parts).await,
            Mw::RateLimit(r) => {
                if r.allow(ctx.client_ip, Instant::now()) {
                    Action::Continue
                } else {
                    let mut resp = small_response(
                        StatusCode::TOO_MANY_REQUESTS,
                        "too many requests: slow down\n",
                    );
                    resp.headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                    Action::Respond(resp)
                }
            }
            Mw::IpAllowList(nets) => {
                let ip = match ctx.client_ip {
                    IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ctx.client_ip),
                    v4 => v4,
                };
                if nets.iter().any(|n| n.contains(&ip)) {
                    Action::Continue
                } else {
                    Action::Respond(small_response(
                        StatusCode::FORBIDDEN,
                        "forbidden: your address is not allowed\n",
                    ))
                }
            }
            Mw::Compress { .. } => Action::Continue,
            Mw::Retry { attempts, initial } => {
                ctx.retry = Some((*attempts, *initial));
                Action::Continue
            }
        }
    }

    /// Response phase.
    pub fn on_response(&self, ctx: &Ctx, resp: &mut Response<Body>) {
        match self {
            Mw::Headers(h) => {
                let hd = resp.headers_mut();
                for (k, v) in &h.response {
                    match v {
                        Some(v) => {
                            hd.insert(k.clone(), v.clone());
                        }
                        None => {
                            hd.remove(k);
                        }
                    }
                }
                if let Some(sts) = &h.sts {
                    if ctx.tls || h.force_sts {
                        hd.insert(header::STRICT_TRANSPORT_SECURITY, sts.clone());
                    }
                }
                if !h.cors_origins.is_empty() {
                    if let Some(origin) = &ctx.origin {
                        if origin_allowed(&h.cors_origins, origin) {
                            let value =
                                if h.cors_origins.iter().any(|o| o == "*") && !h.cors_credentials {
                                    HeaderValue::from_static("*")
                                } else {
                                    origin.clone()
                                };
                            hd.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
                            if h.cors_credentials {
                                hd.insert(
                                    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                                    HeaderValue::from_static("true"),
                                );
                            }
                            if let Some(e) = &h.cors_expose {
                                hd.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, e.clone());
                            }
                        }
                    }
                    if h.vary {
                        hd.append(header::VARY, HeaderValue::from_static("Origin"));
                    }
                }
            }
            Mw::Compress {
                excluded,
                min_bytes,
            } => compress(ctx, resp, excluded, *min_bytes),
            _ => {}
        }
    }
}

impl BasicAuthMw {
    async fn check(&self, parts: &mut request::Parts) -> Action {
        let challenge = || {
            let mut r = small_response(StatusCode::UNAUTHORIZED, "401 unauthorized\n");
            if let Ok(v) = HeaderValue::from_str(&format!("Basic realm=\"{}\"", self.realm)) {
                r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
            }
            Action::Respond(r)
        };
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            return challenge();
        };
        let key: [u8; 32] = Sha256::digest(value.as_bytes()).into();
        let cached = self.cache.lock().ok().and_then(|c| c.get(&key).cloned());
        let user = match cached {
            Some(u) => u,
            None => {
                let Some((user, pass)) = decode_basic(value) else {
                    return challenge();
                };
                let Some(hash) = self.users.get(&user).cloned() else {
                    return challenge();
                };
                // bcrypt takes tens of milliseconds: keep it off the I/O threads.
                let p = pass.clone();
                let ok = tokio::task::spawn_blocking(move || hash.verify(&p))
                    .await
                    .unwrap_or(false);
                if !ok {
                    return challenge();
                }
                if let Ok(mut c) = self.cache.lock() {
                    if c.len() >= AUTH_CACHE_MAX {
                        c.clear();
                    }
                    c.insert(key, user.clone());
                }
                user
            }
        };
        if self.remove_header {
            parts.headers.remove(header::AUTHORIZATION);
        }
        if let Some(h) = &self.header_field {
            if let Ok(v) = HeaderValue::from_str(&user) {
                parts.headers.insert(h.clone(), v);
            }
        }
        Action::Continue
    }
}

fn decode_basic(v: &HeaderValue) -> Option<(String, String)> {
    use base64::Engine;
    let s = v.to_str().ok()?;
    let (scheme, rest) = s.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

fn compress(ctx: &Ctx, resp: &mut Response<Body>, excluded: &[String], min_bytes: u64) {
    let Some(encoding) = ctx.accept else { return };
    if ctx.head {
        return;
    }
    let st = resp.status();
    if st.is_informational() || st == StatusCode::NO_CONTENT || st == StatusCode::NOT_MODIFIED {
        return;
    }
    let h = resp.headers();
    if h.contains_key(header::CONTENT_ENCODING) || h.contains_key(header::CONTENT_RANGE) {
        return;
    }
    let ct = h
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let ct_base = ct.split(';').next().unwrap_or("").trim();
    // Already compressed formats and streams that must not be delayed.
    let never = [
        "image/",
        "video/",
        "audio/",
        "application/zip",
        "application/gzip",
        "text/event-stream",
        "application/grpc",
    ];
    if never.iter().any(|n| ct_base.starts_with(n)) || excluded.iter().any(|e| e == ct_base) {
        return;
    }
    if let Some(len) = resp.body().size_hint().exact() {
        if len < min_bytes {
            return;
        }
    }
    let hd = resp.headers_mut();
    hd.remove(header::CONTENT_LENGTH);
    hd.insert(
        header::CONTENT_ENCODING,
        HeaderValue::from_static(encoding.token()),
    );
    hd.append(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    let body = std::mem::replace(resp.body_mut(), crate::proxy::empty());
    *resp.body_mut() = CompressBody::new(body, encoding).boxed();
}

enum Encoder {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Br(Box<brotli::CompressorWriter<Vec<u8>>>),
}

impl Encoder {
    fn write_flush(&mut self, data: &[u8]) -> std::io::Result<Vec<u8>> {
        use std::io::Write;
        match self {
            Encoder::Gzip(e) => {
                e.write_all(data)?;
                e.flush()?;
                Ok(std::mem::take(e.get_mut()))
            }
            Encoder::Br(e) => {
                e.write_all(data)?;
                e.flush()?;
                Ok(std::mem::take(e.get_mut()))
            }
        }
    }

    fn finish(self) -> std::io::Result<Vec<u8>> {
        match self {
            Encoder::Gzip(e) => e.finish(),
            Encoder::Br(e) => Ok(e.into_inner()),
        }
    }
}

/// Streams a body through gzip or brotli, chunk by chunk (never buffers it
/// whole).
pub struct CompressBody {
    inner: Body,
    enc: Option<Encoder>,
}

impl CompressBody {
    /// Wraps `inner`.
    pub fn new(inner: Body, encoding: Encoding) -> CompressBody {
        let enc = match encoding {
            Encoding::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::fast(),
            )),
            // Quality 4: fast enough for on-the-fly, still beats gzip.
            Encoding::Br => Encoder::Br(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                16 * 1024,
                4,
                22,
            ))),
        };
        CompressBody {
            inner,
            enc: Some(enc),
        }
    }
}

impl hyper::body::Body for CompressBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            if self.enc.is_none() {
                return Poll::Ready(None);
            }
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    let Some(enc) = self.enc.as_mut() else {
                        continue;
                    };
                    // Flush so slow streams still flow; compression stays good
                    // for the large chunks backends usually send.
                    let out = match enc.write_flush(&data) {
                        Ok(out) => out,
                        Err(e) => return Poll::Ready(Some(Err(e.into()))),
                    };
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                    }
                }
                Poll::Ready(None) => {
                    let Some(enc) = self.enc.take() else {
                        return Poll::Ready(None);
                    };
                    return match enc.finish() {
                        Ok(out) => Poll::Ready(Some(Ok(Frame::data(Bytes::from(out))))),
                        Err(e) => Poll::Ready(Some(Err(e.into()))),
                    };
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.enc.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// Flattens a router's middleware list (expanding chains), resolving names
/// with `lookup`. Fails on unknown names and cycles.
pub fn flatten<'a>(
    names: &[String],
    lookup: &dyn Fn(&str) -> Option<(String, &'a config::Middleware)>,
    depth: usize,
    out: &mut Vec<String>,
) -> Result<(), String> {
    if depth > 10 {
        return Err("chain nested more than 10 deep (a chain that contains itself?)".into());
    }
    for n in names {
        let Some((qualified, m)) = lookup(n) else {
            return Err(format!("middleware {n:?} is not defined"));
        };
        match m {
            config::Middleware::Chain(c) => {
                let provider = config::split_qualified(&qualified).1.unwrap_or("");
                let inner: Vec<String> = c
                    .middlewares
                    .iter()
                    .map(|x| {
                        if x.contains('@') {
                            x.clone()
                        } else {
                            format!("{x}@{provider}")
                        }
                    })
                    .collect();
                flatten(&inner, lookup, depth + 1, out)?;
            }
            _ => out.push(qualified),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse, Format};

    fn ctx(tls: bool) -> Ctx {
        Ctx {
            tls,
            client_ip: "10.0.0.1".parse().unwrap(),
            host: "app.b3.swarm".into(),
            https_port: 443,
            accept: Some(Encoding::Gzip),
            head: false,
            origin: None,
            retry: None,
        }
    }

    fn mw(yaml: &str) -> Mw {
        let cfg = parse(
            &format!("http:\n  middlewares:\n    m:\n{yaml}"),
            Format::Yaml,
        )
        .unwrap();
        compile(&cfg.http.middlewares["m"]).unwrap()
    }

    fn parts(uri: &str) -> request::Parts {
        http::Request::builder()
            .uri(uri)
            .body(())
            .unwrap()
            .into_parts()
            .0
    }

    fn run(m: &Mw, c: &mut Ctx, p: &mut request::Parts) -> Option<Response<Body>> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        match rt.block_on(m.on_request(c, p)) {
            Action::Continue => None,
            Action::Respond(r) => Some(r),
        }
    }

    #[test]
    fn redirect_scheme_keeps_path_and_query() {
        let m = mw("      redirectScheme: { scheme: https, permanent: true }\n");
        let mut p = parts("/a/b?x=1");
        let r = run(&m, &mut ctx(false), &mut p).unwrap();
        assert_eq!(r.status(), 308);
        assert_eq!(
            r.headers()[header::LOCATION],
            "https://app.b3.swarm/a/b?x=1"
        );
        let mut c = ctx(false);
        c.https_port = 8443;
        let r = run(&m, &mut c, &mut p).unwrap();
        assert_eq!(
            r.headers()[header::LOCATION],
            "https://app.b3.swarm:8443/a/b?x=1"
        );
        assert!(run(&m, &mut ctx(true), &mut p).is_none(), "already https");
    }

    #[test]
    fn strip_and_add_prefix() {
        let m = mw("      stripPrefix: { prefixes: [/api, /v1/] }\n");
        let mut p = parts("/api/users?q=1");
        assert!(run(&m, &mut ctx(false), &mut p).is_none());
        assert_eq!(p.uri.to_string(), "/users?q=1");
        assert_eq!(p.headers["x-forwarded-prefix"], "/api");
        let mut p = parts("/api");
        run(&m, &mut ctx(false), &mut p);
        assert_eq!(p.uri.path(), "/");
        let mut p = parts("/apix");
        run(&m, &mut ctx(false), &mut p);
        assert_eq!(p.uri.path(), "/apix", "a prefix matches whole segments");
        let m = mw("      addPrefix: { prefix: /v2 }\n");
        let mut p = parts("/x?y");
        run(&m, &mut ctx(false), &mut p);
        assert_eq!(p.uri.to_string(), "/v2/x?y");
    }

    #[test]
    fn basic_auth_bcrypt() {
        use base64::Engine;
        let hash = bcrypt::hash("pw", 4).unwrap();
        let m = mw(&format!("      basicAuth: {{ users: [\"alice:{hash}\"], removeHeader: true, headerField: X-User }}\n"));
        let mut p = parts("/");
        let r = run(&m, &mut ctx(true), &mut p).unwrap();
        assert_eq!(r.status(), 401);
        assert!(r.headers()[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .starts_with("Basic realm="));
        let good = base64::engine::general_purpose::STANDARD.encode("alice:pw");
        let bad = base64::engine::general_purpose::STANDARD.encode("alice:nope");
        for _ in 0..2 {
            // Second time comes from the cache.
            let mut p = parts("/");
            p.headers.insert(
                header::AUTHORIZATION,
                format!("Basic {good}").parse().unwrap(),
            );
            assert!(run(&m, &mut ctx(true), &mut p).is_none());
            assert!(!p.headers.contains_key(header::AUTHORIZATION));
            assert_eq!(p.headers["x-user"], "alice");
        }
        let mut p = parts("/");
        p.headers.insert(
            header::AUTHORIZATION,
            format!("Basic {bad}").parse().unwrap(),
        );
        assert_eq!(run(&m, &mut ctx(true), &mut p).unwrap().status(), 401);
    }

    #[test]
    fn rate_limit_per_client() {
        let r = RateLimiter::new(10, Duration::from_secs(1), 3);
        let t = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!((0..3).all(|_| r.allow(a, t)));
        assert!(!r.allow(a, t), "burst exhausted");
        assert!(r.allow(b, t), "other clients unaffected");
        assert!(
            r.allow(a, t + Duration::from_millis(110)),
            "refills at 10/s"
        );
        assert!(!r.allow(a, t + Duration::from_millis(110)));
    }

    #[test]
    fn ip_allow_list() {
        let m = mw("      ipAllowList: { sourceRange: [10.0.0.0/8] }\n");
        assert!(run(&m, &mut ctx(false), &mut parts("/")).is_none());
        let mut c = ctx(false);
        c.client_ip = "192.168.1.1".parse().unwrap();
        assert_eq!(run(&m, &mut c, &mut parts("/")).unwrap().status(), 403);
    }

    #[test]
    fn headers_hsts_and_cors() {
        let m = mw("      headers:\n        customRequestHeaders: { X-A: '1', X-Drop: '' }\n        customResponseHeaders: { X-B: '2' }\n        stsSeconds: 31536000\n        stsIncludeSubdomains: true\n        accessControlAllowOriginList: ['https://ui.example']\n        accessControlAllowMethods: [GET, POST]\n");
        let mut p = parts("/");
        p.headers.insert("x-drop", "y".parse().unwrap());
        let mut c = ctx(true);
        c.origin = Some("https://ui.example".parse().unwrap());
        assert!(run(&m, &mut c, &mut p).is_none());
        assert_eq!(p.headers["x-a"], "1");
        assert!(!p.headers.contains_key("x-drop"));
        let mut r = small_response(StatusCode::OK, "x");
        m.on_response(&c, &mut r);
        assert_eq!(r.headers()["x-b"], "2");
        assert_eq!(
            r.headers()[header::STRICT_TRANSPORT_SECURITY],
            "max-age=31536000; includeSubDomains"
        );
        assert_eq!(
            r.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://ui.example"
        );
        // No HSTS over plain HTTP.
        let mut r = small_response(StatusCode::OK, "x");
        m.on_response(&ctx(false), &mut r);
        assert!(!r.headers().contains_key(header::STRICT_TRANSPORT_SECURITY));
        // Preflight answered directly.
        let mut p = http::Request::builder()
            .method("OPTIONS")
            .uri("/")
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let r = run(&m, &mut c, &mut p).unwrap();
        assert_eq!(
            r.headers()[header::ACCESS_CONTROL_ALLOW_METHODS],
            "GET, POST"
        );
    }

    #[test]
    fn accept_encoding_negotiation() {
        assert_eq!(
            negotiate(["gzip, deflate, br"].into_iter()),
            Some(Encoding::Br)
        );
        assert_eq!(negotiate(["gzip;q=0.5"].into_iter()), Some(Encoding::Gzip));
        assert_eq!(
            negotiate(["br;q=0, gzip"].into_iter()),
            Some(Encoding::Gzip)
        );
        assert_eq!(negotiate(["identity"].into_iter()), None);
        assert_eq!(negotiate(std::iter::empty()), None);
    }

    #[test]
    fn brotli_streams_and_round_trips() {
        use std::io::Read;
        let m = mw("      compress: {}\n");
        let text = "hello compressible world ".repeat(200);
        let mut c = ctx(false);
        c.accept = Some(Encoding::Br);
        let mut r = small_response(StatusCode::OK, &text);
        m.on_response(&c, &mut r);
        assert_eq!(r.headers()[header::CONTENT_ENCODING], "br");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let bytes = rt.block_on(r.into_body().collect()).unwrap().to_bytes();
        assert!(bytes.len() < text.len() / 4);
        let mut out = String::new();
        brotli::Decompressor::new(&bytes[..], 4096)
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, text);
    }

    #[test]
    fn gzip_streams_and_round_trips() {
        use std::io::Read;
        let m = mw("      compress: {}\n");
        let text = "hello compressible world ".repeat(200);
        let mut r = small_response(StatusCode::OK, &text);
        m.on_response(&ctx(false), &mut r);
        assert_eq!(r.headers()[header::CONTENT_ENCODING], "gzip");
        assert!(!r.headers().contains_key(header::CONTENT_LENGTH));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let bytes = rt.block_on(r.into_body().collect()).unwrap().to_bytes();
        assert!(bytes.len() < text.len() / 4);
        let mut out = String::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, text);
        // Small bodies and clients without gzip are left alone.
        let mut r = small_response(StatusCode::OK, "tiny");
        m.on_response(&ctx(false), &mut r);
        assert!(!r.headers().contains_key(header::CONTENT_ENCODING));
        let mut c = ctx(false);
        c.accept = None;
        let mut r = small_response(StatusCode::OK, &text);
        m.on_response(&c, &mut r);
        assert!(!r.headers().contains_key(header::CONTENT_ENCODING));
    }
}
