//! The dynamic configuration: routers, services, middlewares and TLS
//! certificates, with the same names and shapes as Traefik's dynamic
//! configuration so its documentation maps one-to-one.
//!
//! Providers (file, Swarm) produce a [`Dynamic`]; [`validate`] checks it
//! without I/O; the proxy compiles the merged result into a routing table.

pub mod htpasswd;
pub mod rule;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

pub use rule::{Rule, RuleError};

/// Entry point names, as in Traefik's documentation.
pub const WEB: &str = "web";
/// The TLS entry point.
pub const WEBSECURE: &str = "websecure";

/// One provider's dynamic configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Dynamic {
    /// HTTP routers, services and middlewares.
    #[serde(default)]
    pub http: Http,
    /// TLS certificates.
    #[serde(default)]
    pub tls: Tls,
}

/// The `http` section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Http {
    /// Routers by name.
    #[serde(default)]
    pub routers: BTreeMap<String, Router>,
    /// Services by name.
    #[serde(default)]
    pub services: BTreeMap<String, Service>,
    /// Middlewares by name.
    #[serde(default)]
    pub middlewares: BTreeMap<String, Middleware>,
}

/// A router: which requests (rule, entry points) go to which service,
/// through which middlewares.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Router {
    /// Entry points it listens on; empty means all.
    #[serde(default)]
    pub entry_points: Vec<String>,
    /// The rule, e.g. ``Host(`app.b3.swarm`) && PathPrefix(`/api`)``.
    pub rule: String,
    /// Service name (`name` or `name@provider`).
    pub service: String,
    /// Middleware names, applied in order.
    #[serde(default)]
    pub middlewares: Vec<String>,
    /// Priority; 0 (the default) means the length of the rule.
    #[serde(default)]
    pub priority: i64,
    /// Present when the router serves HTTPS.
    #[serde(default)]
    pub tls: Option<RouterTls>,
}

/// A router's `tls` section. Certificates come from the TLS store (files or
/// the generated wildcard); `certResolver` is accepted for compatibility.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouterTls {
    /// Accepted for compatibility; ACME is not implemented, so it is ignored
    /// (reported in the API).
    #[serde(default)]
    pub cert_resolver: Option<String>,
    /// Accepted for compatibility.
    #[serde(default)]
    pub domains: Vec<Domain>,
    /// Accepted for compatibility.
    #[serde(default)]
    pub options: Option<String>,
}

/// A `tls.domains` entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Domain {
    /// Main domain.
    #[serde(default)]
    pub main: String,
    /// Alternative names.
    #[serde(default)]
    pub sans: Vec<String>,
}

/// A service: where requests go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", try_from = "ServiceRaw")]
#[allow(clippy::large_enum_variant)] // one per service, built once per reload
pub enum Service {
    /// Servers behind a load balancer.
    LoadBalancer(LoadBalancer),
    /// Other services, by weight.
    Weighted(Weighted),
}

// Enums are read through structs of options, so that "no kind", "two kinds"
// and "unknown kind" get clear messages in every format.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ServiceRaw {
    load_balancer: Option<LoadBalancer>,
    weighted: Option<Weighted>,
}

impl TryFrom<ServiceRaw> for Service {
    type Error = String;
    fn try_from(r: ServiceRaw) -> Result<Self, String> {
        match (r.load_balancer, r.weighted) {
            (Some(lb), None) => Ok(Service::LoadBalancer(lb)),
            (None, Some(w)) => Ok(Service::Weighted(w)),
            (None, None) => Err("a service needs a loadBalancer (or weighted) section".into()),
            (Some(_), Some(_)) => {
                Err("a service has either loadBalancer or weighted, not both".into())
            }
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MiddlewareRaw {
    redirect_scheme: Option<RedirectScheme>,
    strip_prefix: Option<StripPrefix>,
    add_prefix: Option<AddPrefix>,
    headers: Option<Headers>,
    basic_auth: Option<BasicAuth>,
    rate_limit: Option<RateLimit>,
    ip_allow_list: Option<IpAllowList>,
    ip_white_list: Option<IpAllowList>,
    compress: Option<Compress>,
    retry: Option<Retry>,
    chain: Option<Chain>,
}

impl TryFrom<MiddlewareRaw> for Middleware {
    type Error = String;
    fn try_from(r: MiddlewareRaw) -> Result<Self, String> {
        let all: Vec<Middleware> = [
            r.redirect_scheme.map(Middleware::RedirectScheme),
            r.strip_prefix.map(Middleware::StripPrefix),
            r.add_prefix.map(Middleware::AddPrefix),
            r.headers.map(Middleware::Headers),
            r.basic_auth.map(Middleware::BasicAuth),
            r.rate_limit.map(Middleware::RateLimit),
            r.ip_allow_list.map(Middleware::IpAllowList),
            r.ip_white_list.map(Middleware::IpWhiteList),
            r.compress.map(Middleware::Compress),
            r.retry.map(Middleware::Retry),
            r.chain.map(Middleware::Chain),
        ]
        .into_iter()
        .flatten()
        .collect();
        let mut it = all.into_iter();
        match (it.next(), it.next()) {
            (Some(m), None) => Ok(m),
            (None, _) => Err("a middleware needs exactly one kind, e.g. stripPrefix or headers".into()),
            (Some(a), Some(b)) => Err(format!(
                "one middleware has two kinds ({} and {}): define them as two middlewares and list both on the router",
                a.kind(),
                b.kind()
            )),
        }
    }
}

/// `loadBalancer` options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancer {
    /// The servers.
    #[serde(default)]
    pub servers: Vec<Server>,
    /// Forward the client's Host header (default true).
    #[serde(default = "yes")]
    pub pass_host_header: bool,
    /// Sticky sessions.
    #[serde(default)]
    pub sticky: Option<Sticky>,
    /// Active health check.
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
    /// Accepted for compatibility (transport options are global flags).
    #[serde(default)]
    pub servers_transport: Option<String>,
}

impl Default for LoadBalancer {
    fn default() -> Self {
        LoadBalancer {
            servers: Vec::new(),
            pass_host_header: true,
            sticky: None,
            health_check: None,
            servers_transport: None,
        }
    }
}

fn yes() -> bool {
    true
}

/// One server of a load balancer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Server {
    /// `http://host:port` (a path is not allowed).
    pub url: String,
    /// Weight for weighted round-robin (default 1).
    #[serde(default)]
    pub weight: Option<u32>,
}

/// `sticky` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Sticky {
    /// The cookie.
    pub cookie: StickyCookie,
}

/// Sticky cookie options.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StickyCookie {
    /// Cookie name (default derived from the service name).
    #[serde(default)]
    pub name: Option<String>,
    /// Secure attribute.
    #[serde(default)]
    pub secure: bool,
    /// HttpOnly attribute.
    #[serde(default)]
    pub http_only: bool,
    /// SameSite attribute (`none`, `lax`, `strict`).
    #[serde(default)]
    pub same_site: Option<String>,
    /// Max-Age in seconds.
    #[serde(default)]
    pub max_age: Option<i64>,
}

/// Active health check options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthCheck {
    /// Path requested.
    #[serde(default = "slash")]
    pub path: String,
    /// Time between checks (default 30s).
    #[serde(default)]
    pub interval: Option<Dur>,
    /// Time a check may take (default 5s).
    #[serde(default)]
    pub timeout: Option<Dur>,
    /// Expected status; when unset any 2xx or 3xx is healthy.
    #[serde(default)]
    pub status: Option<u16>,
    /// Port to check instead of the server's.
    #[serde(default)]
    pub port: Option<u16>,
    /// Host header of the check.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Extra headers of the check.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Accepted for compatibility (`http` only).
    #[serde(default)]
    pub scheme: Option<String>,
    /// HTTP method of the check (default GET).
    #[serde(default)]
    pub method: Option<String>,
}

fn slash() -> String {
    "/".into()
}

/// `weighted` service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Weighted {
    /// Services and their weights.
    pub services: Vec<WeightedService>,
}

/// One entry of a weighted service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WeightedService {
    /// Service name.
    pub name: String,
    /// Weight (default 1).
    #[serde(default)]
    pub weight: Option<u32>,
}

/// A middleware; exactly one kind per entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", try_from = "MiddlewareRaw")]
pub enum Middleware {
    /// Redirect to another scheme.
    RedirectScheme(RedirectScheme),
    /// Remove path prefixes.
    StripPrefix(StripPrefix),
    /// Prepend a path prefix.
    AddPrefix(AddPrefix),
    /// Custom headers, HSTS, CORS.
    Headers(Headers),
    /// HTTP basic authentication.
    BasicAuth(BasicAuth),
    /// Rate limit per client IP.
    RateLimit(RateLimit),
    /// Allow only some client networks.
    IpAllowList(IpAllowList),
    /// Traefik v2 name of ipAllowList.
    IpWhiteList(IpAllowList),
    /// gzip / brotli compression of responses.
    Compress(Compress),
    /// Retry on network errors.
    Retry(Retry),
    /// Several middlewares in a row.
    Chain(Chain),
}

impl Middleware {
    /// The Traefik name of the middleware's kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Middleware::RedirectScheme(_) => "redirectScheme",
            Middleware::StripPrefix(_) => "stripPrefix",
            Middleware::AddPrefix(_) => "addPrefix",
            Middleware::Headers(_) => "headers",
            Middleware::BasicAuth(_) => "basicAuth",
            Middleware::RateLimit(_) => "rateLimit",
            Middleware::IpAllowList(_) => "ipAllowList",
            Middleware::IpWhiteList(_) => "ipWhiteList",
            Middleware::Compress(_) => "compress",
            Middleware::Retry(_) => "retry",
            Middleware::Chain(_) => "chain",
        }
    }
}

/// `redirectScheme` options.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RedirectScheme {
    /// Target scheme (default https).
    #[serde(default)]
    pub scheme: Option<String>,
    /// Target port.
    #[serde(default)]
    pub port: Option<String>,
    /// 308/301 instead of 307/302.
    #[serde(default)]
    pub permanent: bool,
}

/// `stripPrefix` options.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StripPrefix {
    /// Prefixes to remove (the first that matches).
    pub prefixes: Vec<String>,
    /// Accepted for compatibility (deprecated in Traefik).
    #[serde(default)]
    pub force_slash: Option<bool>,
}

/// `addPrefix` options.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AddPrefix {
    /// Prefix to add.
    pub prefix: String,
}

/// `headers` options (the commonly used subset of Traefik's).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Headers {
    /// Headers set on the request (empty value removes).
    #[serde(default)]
    pub custom_request_headers: BTreeMap<String, String>,
    /// Headers set on the response (empty value removes).
    #[serde(default)]
    pub custom_response_headers: BTreeMap<String, String>,
    /// HSTS max-age; 0 disables.
    #[serde(default)]
    pub sts_seconds: u64,
    /// HSTS includeSubDomains.
    #[serde(default)]
    pub sts_include_subdomains: bool,
    /// HSTS preload.
    #[serde(default)]
    pub sts_preload: bool,
    /// Send HSTS on plain HTTP too.
    #[serde(default)]
    pub force_sts_header: bool,
    /// CORS allowed origins (`*` for any).
    #[serde(default)]
    pub access_control_allow_origin_list: Vec<String>,
    /// CORS allowed methods.
    #[serde(default)]
    pub access_control_allow_methods: Vec<String>,
    /// CORS allowed headers.
    #[serde(default)]
    pub access_control_allow_headers: Vec<String>,
    /// CORS exposed headers.
    #[serde(default)]
    pub access_control_expose_headers: Vec<String>,
    /// CORS credentials.
    #[serde(default)]
    pub access_control_allow_credentials: bool,
    /// CORS preflight max age in seconds.
    #[serde(default)]
    pub access_control_max_age: Option<i64>,
    /// Add `Vary: Origin`.
    #[serde(default)]
    pub add_vary_header: bool,
    /// X-Frame-Options: DENY.
    #[serde(default)]
    pub frame_deny: bool,
    /// X-Content-Type-Options: nosniff.
    #[serde(default)]
    pub content_type_nosniff: bool,
    /// Referrer-Policy value.
    #[serde(default)]
    pub referrer_policy: Option<String>,
    /// Content-Security-Policy value.
    #[serde(default)]
    pub content_security_policy: Option<String>,
}

/// `basicAuth` options.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BasicAuth {
    /// `user:hash` entries (htpasswd bcrypt `$2y$` or apr1 `$apr1$`).
    #[serde(default)]
    pub users: Vec<String>,
    /// File with one `user:hash` a line.
    #[serde(default)]
    pub users_file: Option<String>,
    /// Realm shown by browsers.
    #[serde(default)]
    pub realm: Option<String>,
    /// Remove the Authorization header before forwarding.
    #[serde(default)]
    pub remove_header: bool,
    /// Header to put the authenticated user name in.
    #[serde(default)]
    pub header_field: Option<String>,
}

/// `rateLimit` options.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimit {
    /// Requests per `period` allowed on average.
    pub average: u64,
    /// Requests allowed in a burst (default 1).
    #[serde(default)]
    pub burst: Option<u64>,
    /// Period of `average` (default 1s).
    #[serde(default)]
    pub period: Option<Dur>,
}

/// `ipAllowList` options.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IpAllowList {
    /// Allowed networks.
    pub source_range: Vec<String>,
}

/// `compress` options.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Compress {
    /// Content types never compressed.
    #[serde(default)]
    pub excluded_content_types: Vec<String>,
    /// Smallest response compressed (default 1024).
    #[serde(default)]
    pub min_response_body_bytes: Option<u64>,
}

/// `retry` options.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Retry {
    /// Attempts in total.
    pub attempts: u32,
    /// Wait before the first retry (doubles after each).
    #[serde(default)]
    pub initial_interval: Option<Dur>,
}

/// `chain` options.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Chain {
    /// Middleware names, applied in order.
    pub middlewares: Vec<String>,
}

/// The `tls` section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tls {
    /// Certificates from files.
    #[serde(default)]
    pub certificates: Vec<CertFiles>,
}

/// A certificate chain and its key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CertFiles {
    /// PEM certificate chain, leaf first.
    pub cert_file: String,
    /// PEM private key.
    pub key_file: String,
    /// Accepted for compatibility.
    #[serde(default)]
    pub stores: Vec<String>,
}

/// A duration written as `"10s"`, `"1m30s"`, `"250ms"` or a number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Dur(#[serde(serialize_with = "ser_dur")] pub Duration);

fn ser_dur<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Secs(s) => Ok(Dur(Duration::from_secs(s))),
            Raw::Text(t) => {
                if let Ok(s) = t.trim().parse::<u64>() {
                    return Ok(Dur(Duration::from_secs(s)));
                }
                humantime::parse_duration(t.trim()).map(Dur).map_err(|e| {
                    serde::de::Error::custom(format!(
                        "{t:?} is not a duration ({e}); write e.g. \"10s\", \"500ms\" or \"1m\""
                    ))
                })
            }
        }
    }
}

/// Format of a configuration file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// YAML (`.yml`, `.yaml`).
    Yaml,
    /// TOML (`.toml`).
    Toml,
}

impl Format {
    /// The format for a file name, from its extension.
    pub fn from_path(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "yml" | "yaml" => Some(Format::Yaml),
            "toml" => Some(Format::Toml),
            _ => None,
        }
    }
}

/// Parses a configuration document. The error says where and what.
pub fn parse(text: &str, format: Format) -> Result<Dynamic, String> {
    match format {
        Format::Yaml => {
            if text.trim().is_empty() {
                return Ok(Dynamic::default());
            }
            serde_yaml_ng::from_str(text).map_err(|e| e.to_string())
        }
        Format::Toml => toml::from_str(text).map_err(|e| e.to_string()),
    }
}

/// One problem found by [`validate`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// Where: e.g. `http.routers.app.rule`.
    pub path: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Splits `name@provider` into its parts.
pub fn split_qualified(name: &str) -> (&str, Option<&str>) {
    match name.rsplit_once('@') {
        Some((n, p)) => (n, Some(p)),
        None => (name, None),
    }
}

/// Checks a provider's configuration on its own (without I/O): rules parse,
/// references resolve (references to other providers, `name@other`, are
/// left to the merge), values are in range. Returns every problem found.
pub fn validate(cfg: &Dynamic, provider: &str) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut problem = |path: String, message: String| out.push(Problem { path, message });
    let local = |name: &str| -> Option<String> {
        match split_qualified(name) {
            (n, Some(p)) if p == provider => Some(n.to_string()),
            (_, Some(_)) => None,
            (n, None) => Some(n.to_string()),
        }
    };
    for (name, r) in &cfg.http.routers {
        let at = |f: &str| format!("http.routers.{name}.{f}");
        if let Err(e) = Rule::parse(&r.rule) {
            problem(at("rule"), format!("{e} (rule: {})", r.rule));
        }
        if r.service.is_empty() {
            problem(
                at("service"),
                "missing: name the service that answers".into(),
            );
        } else if let Some(s) = local(&r.service) {
            if !cfg.http.services.contains_key(&s) {
                problem(
                    at("service"),
                    format!(
                        "service {s:?} is not defined: add it under http.services or fix the name"
                    ),
                );
            }
        }
        for ep in &r.entry_points {
            if ep != WEB && ep != WEBSECURE {
                problem(
                    at("entryPoints"),
                    format!(
                        "unknown entry point {ep:?}: use \"web\" (HTTP) or \"websecure\" (HTTPS)"
                    ),
                );
            }
        }
        for m in &r.middlewares {
            if let Some(m) = local(m) {
                if !cfg.http.middlewares.contains_key(&m) {
                    problem(
                        at("middlewares"),
                        format!("middleware {m:?} is not defined: add it under http.middlewares or fix the name"),
                    );
                }
            }
        }
    }
    for (name, s) in &cfg.http.services {
        let at = |f: &str| format!("http.services.{name}.{f}");
        match s {
            Service::LoadBalancer(lb) => {
                for (i, srv) in lb.servers.iter().enumerate() {
                    if let Err(e) = parse_server_url(&srv.url) {
                        problem(at(&format!("loadBalancer.servers[{i}].url")), e);
                    }
                    if srv.weight == Some(0) {
                        problem(
                            at(&format!("loadBalancer.servers[{i}].weight")),
                            "weight 0 never receives traffic: remove the server or give it a weight ≥ 1".into(),
                        );
                    }
                }
                if let Some(hc) = &lb.health_check {
                    if !hc.path.starts_with('/') {
                        problem(
                            at("loadBalancer.healthCheck.path"),
                            format!("{:?} must start with '/'", hc.path),
                        );
                    }
                    if hc
                        .interval
                        .is_some_and(|d| d.0 < Duration::from_millis(100))
                    {
                        problem(
                            at("loadBalancer.healthCheck.interval"),
                            "shorter than 100ms: use at least \"1s\"".into(),
                        );
                    }
                    if let Some(st) = hc.status {
                        if !(100..=599).contains(&st) {
                            problem(
                                at("loadBalancer.healthCheck.status"),
                                format!("{st} is not an HTTP status"),
                            );
                        }
                    }
                    if hc.scheme.as_deref().is_some_and(|s| s != "http") {
                        problem(
                            at("loadBalancer.healthCheck.scheme"),
                            "only http health checks are supported".into(),
                        );
                    }
                }
                if let Some(st) = &lb.sticky {
                    if let Some(ss) = &st.cookie.same_site {
                        if !["none", "lax", "strict", ""]
                            .contains(&ss.to_ascii_lowercase().as_str())
                        {
                            problem(
                                at("loadBalancer.sticky.cookie.sameSite"),
                                format!("{ss:?}: use none, lax or strict"),
                            );
                        }
                    }
                }
            }
            Service::Weighted(w) => {
                if w.services.is_empty() {
                    problem(
                        at("weighted.services"),
                        "empty: list at least one service".into(),
                    );
                }
                for ws in &w.services {
                    if let Some(n) = local(&ws.name) {
                        if !cfg.http.services.contains_key(&n) {
                            problem(
                                at("weighted.services"),
                                format!("service {n:?} is not defined"),
                            );
                        } else if n == *name {
                            problem(
                                at("weighted.services"),
                                "a weighted service cannot contain itself".into(),
                            );
                        }
                    }
                }
            }
        }
    }
    for (name, m) in &cfg.http.middlewares {
        let at = |f: &str| format!("http.middlewares.{name}.{}.{f}", m.kind());
        match m {
            Middleware::RedirectScheme(r) => {
                if let Some(s) = &r.scheme {
                    if s != "http" && s != "https" {
                        problem(at("scheme"), format!("{s:?}: use http or https"));
                    }
                }
                if let Some(p) = &r.port {
                    if p.parse::<u16>().is_err() {
                        problem(at("port"), format!("{p:?} is not a port number"));
                    }
                }
            }
            Middleware::StripPrefix(s) => {
                for p in &s.prefixes {
                    if !p.starts_with('/') {
                        problem(at("prefixes"), format!("{p:?} must start with '/'"));
                    }
                }
            }
            Middleware::AddPrefix(a) => {
                if !a.prefix.starts_with('/') {
                    problem(at("prefix"), format!("{:?} must start with '/'", a.prefix));
                }
            }
            Middleware::Headers(h) => {
                for (k, v) in h
                    .custom_request_headers
                    .iter()
                    .chain(&h.custom_response_headers)
                {
                    if http::HeaderName::from_bytes(k.as_bytes()).is_err() {
                        problem(
                            at("customRequestHeaders"),
                            format!("{k:?} is not a valid header name"),
                        );
                    }
                    if http::HeaderValue::from_str(v).is_err() {
                        problem(
                            at("customRequestHeaders"),
                            format!("value of {k:?} is not a valid header value"),
                        );
                    }
                }
            }
            Middleware::BasicAuth(b) => {
                if b.users.is_empty() && b.users_file.is_none() {
                    problem(
                        at("users"),
                        "no users: add `user:hash` entries (htpasswd -nbB user pass)".into(),
                    );
                }
                for (i, u) in b.users.iter().enumerate() {
                    if let Err(e) = htpasswd::parse_line(u) {
                        problem(at(&format!("users[{i}]")), e);
                    }
                }
            }
            Middleware::RateLimit(r) => {
                if r.average == 0 {
                    problem(
                        at("average"),
                        "0 would block everything: set a positive rate, or remove the middleware"
                            .into(),
                    );
                }
                if r.period.is_some_and(|p| p.0.is_zero()) {
                    problem(at("period"), "must be positive".into());
                }
            }
            Middleware::IpAllowList(l) | Middleware::IpWhiteList(l) => {
                if l.source_range.is_empty() {
                    problem(
                        at("sourceRange"),
                        "empty: list allowed networks, e.g. 10.0.0.0/8".into(),
                    );
                }
                for s in &l.source_range {
                    if let Err(e) = rule::parse_net(s) {
                        problem(at("sourceRange"), format!("{s:?}: {e}"));
                    }
                }
            }
            Middleware::Compress(_) => {}
            Middleware::Retry(r) => {
                if r.attempts == 0 || r.attempts > 10 {
                    problem(
                        at("attempts"),
                        format!("{} is out of range: use 1 to 10", r.attempts),
                    );
                }
            }
            Middleware::Chain(c) => {
                for n in &c.middlewares {
                    if let Some(n) = local(n) {
                        if !cfg.http.middlewares.contains_key(&n) {
                            problem(
                                at("middlewares"),
                                format!("middleware {n:?} is not defined"),
                            );
                        }
                    }
                }
            }
        }
    }
    for (i, c) in cfg.tls.certificates.iter().enumerate() {
        if c.cert_file.is_empty() || c.key_file.is_empty() {
            problem(
                format!("tls.certificates[{i}]"),
                "needs both certFile and keyFile".into(),
            );
        }
    }
    out
}

/// A backend address parsed from a server URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrl {
    /// `host:port` authority.
    pub authority: http::uri::Authority,
    /// Host part.
    pub host: String,
    /// Port.
    pub port: u16,
    /// `https://`: TLS to the server.
    pub tls: bool,
}

/// Parses `http://host:port` or `https://host:port` (port defaults to 80 / 443).
pub fn parse_server_url(url: &str) -> Result<ServerUrl, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL ({e}); write e.g. http://10.0.1.5:8080"))?;
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        Some("h2c") => {
            return Err(format!(
                "{url:?}: h2c:// backends are not supported; use http:// (HTTP/1.1 with keep-alive)"
            ))
        }
        _ => {
            return Err(format!(
                "{url:?} has no http:// or https:// scheme; write e.g. http://10.0.1.5:8080"
            ))
        }
    };
    let Some(auth) = uri.authority() else {
        return Err(format!("{url:?} has no host"));
    };
    if uri.path() != "/" && !uri.path().is_empty() {
        return Err(format!(
            "{url:?}: a server URL cannot have a path; use the addPrefix middleware"
        ));
    }
    let port = auth.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let host = auth.host().to_string();
    let authority = format!("{}:{port}", auth.host())
        .parse()
        .map_err(|e| format!("{url:?}: {e}"))?;
    Ok(ServerUrl {
        authority,
        host,
        port,
        tls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = r#"
http:
  routers:
    app:
      rule: "Host(`app.b3.swarm`)"
      entryPoints: [websecure]
      service: app
      middlewares: [strip]
      tls: {}
  services:
    app:
      loadBalancer:
        servers:
          - url: "http://127.0.0.1:8081"
          - url: "http://127.0.0.1:8082"
            weight: 3
        healthCheck:
          path: /health
          interval: 10s
          timeout: 2s
        sticky:
          cookie:
            name: srv
  middlewares:
    strip:
      stripPrefix:
        prefixes: ["/api"]
tls:
  certificates:
    - certFile: /c.pem
      keyFile: /k.pem
"#;

    const TOML: &str = r#"
[http.routers.app]
rule = "Host(`app.b3.swarm`)"
entryPoints = ["websecure"]
service = "app"
middlewares = ["strip"]
[http.routers.app.tls]

[http.services.app.loadBalancer]
[[http.services.app.loadBalancer.servers]]
url = "http://127.0.0.1:8081"
[[http.services.app.loadBalancer.servers]]
url = "http://127.0.0.1:8082"
weight = 3
[http.services.app.loadBalancer.healthCheck]
path = "/health"
interval = "10s"
timeout = "2s"
[http.services.app.loadBalancer.sticky.cookie]
name = "srv"

[http.middlewares.strip.stripPrefix]
prefixes = ["/api"]

[[tls.certificates]]
certFile = "/c.pem"
keyFile = "/k.pem"
"#;

    #[test]
    fn yaml_and_toml_mean_the_same() {
        let y = parse(YAML, Format::Yaml).unwrap();
        let t = parse(TOML, Format::Toml).unwrap();
        assert_eq!(y, t);
        assert!(
            validate(&y, "file").is_empty(),
            "{:?}",
            validate(&y, "file")
        );
        let Service::LoadBalancer(lb) = &y.http.services["app"] else {
            panic!("not a load balancer")
        };
        assert_eq!(lb.servers[1].weight, Some(3));
        assert!(lb.pass_host_header);
        assert_eq!(
            lb.health_check.as_ref().unwrap().interval,
            Some(Dur(Duration::from_secs(10)))
        );
    }

    #[test]
    fn unknown_fields_are_reported_with_their_location() {
        let e = parse("http:\n  routers:\n    a:\n      rulez: x\n", Format::Yaml).unwrap_err();
        assert!(e.contains("rulez") && e.contains("line 4"), "{e}");
        let e = parse("[http.routers.a]\nrule = 3\n", Format::Toml).unwrap_err();
        assert!(e.contains("line 2") || e.contains("rule"), "{e}");
        let e = parse(
            "http:\n  middlewares:\n    m:\n      nope: {}\n",
            Format::Yaml,
        )
        .unwrap_err();
        assert!(e.contains("unknown field `nope`"), "{e}");
        let e = parse(
            "http:\n  services:\n    s:\n      loadBalancer:\n        healthCheck:\n          interval: soon\n",
            Format::Yaml,
        )
        .unwrap_err();
        assert!(e.contains("not a duration"), "{e}");
    }

    #[test]
    fn validation_names_each_problem() {
        let cfg = parse(
            r#"
http:
  routers:
    a: { rule: "Host(app)", service: missing, middlewares: [nomw], entryPoints: [webz] }
    b: { rule: "Host(`b`)", service: other@swarm }
  services:
    s: { loadBalancer: { servers: [ { url: "h2c://x" }, { url: "http://y/path" } ] } }
  middlewares:
    r: { rateLimit: { average: 0 } }
    i: { ipAllowList: { sourceRange: ["nope"] } }
"#,
            Format::Yaml,
        )
        .unwrap();
        let p = validate(&cfg, "file");
        let text = p
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join("\n");
        for want in [
            "http.routers.a.rule: at column 6",
            "http.routers.a.service: service \"missing\" is not defined",
            "http.routers.a.middlewares: middleware \"nomw\"",
            "http.routers.a.entryPoints: unknown entry point \"webz\"",
            "http.services.s.loadBalancer.servers[0].url",
            "http.services.s.loadBalancer.servers[1].url",
            "http.middlewares.r.rateLimit.average",
            "http.middlewares.i.ipAllowList.sourceRange",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
        // A reference to another provider is left to the merge.
        assert!(!text.contains("routers.b"), "{text}");
    }

    #[test]
    fn server_urls() {
        let u = parse_server_url("http://10.0.0.5:8080").unwrap();
        assert_eq!(u.authority.as_str(), "10.0.0.5:8080");
        assert_eq!(parse_server_url("http://app").unwrap().port, 80);
        assert!(parse_server_url("10.0.0.5:80").is_err());
        let s = parse_server_url("https://portainer").unwrap();
        assert!(s.tls && s.port == 443);
        assert!(parse_server_url("ftp://x").is_err());
    }

    #[test]
    fn empty_documents_are_empty_configs() {
        assert_eq!(parse("", Format::Yaml).unwrap(), Dynamic::default());
        assert_eq!(parse("", Format::Toml).unwrap(), Dynamic::default());
    }
}
