//! Reading a Swarm service's labels into dynamic configuration.
//!
//! Two families are read, both case-insensitively as Traefik does:
//!
//! - Traefik v2/v3 labels, unchanged: `traefik.enable`,
//!   `traefik.http.routers.<r>.*`, `traefik.http.services.<s>.loadbalancer.*`,
//!   `traefik.http.middlewares.<m>.<type>.*`, `traefik.swarm.network`,
//!   `traefik.swarm.lbswarm` and the older `traefik.docker.network|lbswarm`.
//! - Our own `edge.*` labels: `edge.http.*` is the same tree as
//!   `traefik.http.*`; short forms (`edge.port`, `edge.host`, `edge.path`,
//!   `edge.rule`, `edge.tls`, `edge.entrypoints`, `edge.middlewares`,
//!   `edge.priority`) configure the service's implicit router and service.
//!
//! Parsing is pure and total: any label set gives a [`ServiceLabels`] whose
//! `issues` say what was wrong with which label and how to fix it. Option
//! names are checked against a schema of what the core supports, so a typo
//! or an option edge does not implement is reported, never silently dropped.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::config::{Http, LoadBalancer, Middleware, Router, Service};

/// Longest label value accepted, in bytes (rules have their own bound).
const MAX_VALUE_LEN: usize = 64 * 1024;
/// Most entries of an indexed list (`tls.domains[n]`).
const MAX_INDEX: usize = 64;

/// How bad an [`Issue`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The service (or the router named in the message) is not routed.
    Error,
    /// Routed, but something asked for is ignored.
    Warning,
}

/// One problem with a service's labels or backends, with its fix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Issue {
    /// Error or warning.
    pub severity: Severity,
    /// The label concerned, as written on the service, if one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl Issue {
    /// An error about `label`.
    pub fn error(label: Option<&str>, message: impl Into<String>) -> Issue {
        Issue {
            severity: Severity::Error,
            label: label.map(str::to_string),
            message: message.into(),
        }
    }

    /// A warning about `label`.
    pub fn warning(label: Option<&str>, message: impl Into<String>) -> Issue {
        Issue {
            severity: Severity::Warning,
            label: label.map(str::to_string),
            message: message.into(),
        }
    }
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        match &self.label {
            Some(l) => write!(f, "{sev}: label {l}: {}", self.message),
            None => write!(f, "{sev}: {}", self.message),
        }
    }
}

/// Settings that shape how labels are read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelOptions {
    /// Route services that have no `traefik.enable` / `edge.enable` label.
    pub exposed_by_default: bool,
    /// Rule of routers that have none. `{{ normalize .Name }}` and
    /// `{{ .Name }}` are replaced by the service name.
    pub default_rule: String,
}

impl LabelOptions {
    /// Traefik's default rule shape with `domain`: ``Host(`<name>.<domain>`)``.
    pub fn with_domain(domain: &str) -> LabelOptions {
        LabelOptions {
            exposed_by_default: false,
            default_rule: format!("Host(`{{{{ normalize .Name }}}}.{domain}`)"),
        }
    }
}

impl Default for LabelOptions {
    fn default() -> Self {
        LabelOptions::with_domain("b3.swarm")
    }
}

/// Which label family defined a router, service or middleware (for messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Family {
    /// `traefik.*`
    Traefik,
    /// `edge.*`
    Edge,
    /// Made by the provider (implicit router / service).
    Implicit,
}

impl Family {
    /// The label prefix, e.g. `traefik.`.
    pub fn prefix(self) -> &'static str {
        match self {
            Family::Traefik => "traefik.",
            Family::Edge | Family::Implicit => "edge.",
        }
    }
}

/// What one Swarm service's labels say.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceLabels {
    /// Whether the service is to be routed (enable label or the default).
    pub enabled: bool,
    /// Whether any `traefik.*` or `edge.*` label is present.
    pub has_labels: bool,
    /// Only `traefik.*` labels: messages suggest `traefik.*` fixes.
    pub traefik_style: bool,
    /// `edge.swarm.network` / `traefik.swarm.network` / `traefik.docker.network`.
    pub network: Option<String>,
    /// The label `network` came from, as written.
    pub network_label: Option<String>,
    /// Use the service VIP instead of task IPs.
    pub lb_swarm: bool,
    /// Routers, services (without servers) and middlewares.
    pub http: Http,
    /// Server port of each service, when known from labels.
    pub ports: BTreeMap<String, u16>,
    /// Server scheme of each service (`http` or `https`, lower case).
    pub schemes: BTreeMap<String, String>,
    /// Where each element came from, for messages: (`routers`|`services`|
    /// `middlewares`, name) → family.
    pub origin: BTreeMap<(String, String), Family>,
    /// Everything wrong; an [`Severity::Error`] means nothing is routed.
    pub issues: Vec<Issue>,
}

impl ServiceLabels {
    /// Whether an error keeps this service from being routed.
    pub fn has_errors(&self) -> bool {
        self.issues.iter().any(|i| i.severity == Severity::Error)
    }

    /// The label that sets `field` of element `kind`/`name`, for messages.
    pub fn label_for(&self, kind: &str, name: &str, field: &str) -> Option<String> {
        match self.origin.get(&(kind.to_string(), name.to_string()))? {
            Family::Implicit => None,
            f => Some(format!("{}http.{kind}.{name}.{field}", f.prefix())),
        }
    }
}

/// Traefik's `normalize`: runs of characters other than letters and digits
/// become one `-` (`shop_web` → `shop-web`).
pub fn normalize(name: &str) -> String {
    name.split(|c: char| !c.is_alphanumeric())
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("-")
}

/// Parses a boolean as Go's `strconv.ParseBool` does (Traefik's parser).
pub fn parse_bool(v: &str) -> Option<bool> {
    match v.trim() {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// The schema: which options exist, their canonical (camelCase) names, and
// their types. Names are matched case-insensitively, as Traefik does.

#[derive(Debug, Clone, Copy)]
enum Ty {
    Str,
    Bool,
    U16,
    U32,
    U64,
    I64,
    Dur,
    /// Comma-separated list.
    List,
    /// Free keys (case kept), string values: `customrequestheaders.X-A=b`.
    Map,
    Obj(&'static [F]),
    /// `name[0].field=...`
    ObjList(&'static [F]),
    /// A Traefik option edge accepts and ignores (warning).
    Ignored(&'static str),
    /// A Traefik option edge does not implement (error).
    Unsupported(&'static str),
}

#[derive(Debug, Clone, Copy)]
struct F {
    name: &'static str,
    ty: Ty,
}

const fn f(name: &'static str, ty: Ty) -> F {
    F { name, ty }
}

const DOMAIN: &[F] = &[f("main", Ty::Str), f("sans", Ty::List)];
const ROUTER_TLS: &[F] = &[
    f("certResolver", Ty::Str),
    f("domains", Ty::ObjList(DOMAIN)),
    f("options", Ty::Str),
];
const ROUTER: &[F] = &[
    f("rule", Ty::Str),
    f("entryPoints", Ty::List),
    f("middlewares", Ty::List),
    f("priority", Ty::I64),
    f("service", Ty::Str),
    f("tls", Ty::Obj(ROUTER_TLS)),
    f(
        "ruleSyntax",
        Ty::Ignored("edge reads both the v2 and v3 rule syntax"),
    ),
    f(
        "observability",
        Ty::Ignored("per-router observability switches are not implemented; metrics and access logs cover every router"),
    ),
];
const SERVER: &[F] = &[
    f("port", Ty::U16),
    f("scheme", Ty::Str),
    f("weight", Ty::U32),
    f(
        "url",
        Ty::Unsupported("a server URL in labels is not supported: set server.port; the address is the task's IP"),
    ),
    f(
        "preservePath",
        Ty::Unsupported("server.preservepath is not supported: use the addPrefix middleware"),
    ),
];
const HEALTH: &[F] = &[
    f("path", Ty::Str),
    f("interval", Ty::Dur),
    f("timeout", Ty::Dur),
    f("status", Ty::U16),
    f("port", Ty::U16),
    f("hostname", Ty::Str),
    f("headers", Ty::Map),
    f("scheme", Ty::Str),
    f("method", Ty::Str),
    f(
        "followRedirects",
        Ty::Ignored("health checks never follow redirects; a 3xx counts as healthy"),
    ),
    f(
        "mode",
        Ty::Unsupported("only HTTP health checks are supported (mode=grpc is not)"),
    ),
    f(
        "unhealthyInterval",
        Ty::Ignored("unhealthy servers are checked at the normal interval"),
    ),
];
const COOKIE: &[F] = &[
    f("name", Ty::Str),
    f("secure", Ty::Bool),
    f("httpOnly", Ty::Bool),
    f("sameSite", Ty::Str),
    f("maxAge", Ty::I64),
    f(
        "path",
        Ty::Ignored("the sticky cookie is always set for path /"),
    ),
    f(
        "domain",
        Ty::Ignored("the sticky cookie is always a host-only cookie"),
    ),
];
const STICKY: &[F] = &[f("cookie", Ty::Obj(COOKIE))];
const LB: &[F] = &[
    f("server", Ty::Obj(SERVER)),
    f("passHostHeader", Ty::Bool),
    f("healthCheck", Ty::Obj(HEALTH)),
    f("sticky", Ty::Obj(STICKY)),
    f("serversTransport", Ty::Str),
    f(
        "responseForwarding",
        Ty::Ignored("responses are always streamed without buffering"),
    ),
    f(
        "strategy",
        Ty::Ignored("edge balances with weighted round-robin"),
    ),
];
const SERVICE: &[F] = &[
    f("loadBalancer", Ty::Obj(LB)),
    f(
        "weighted",
        Ty::Unsupported("weighted services cannot be defined in labels: use the file provider"),
    ),
    f(
        "mirroring",
        Ty::Unsupported("mirroring services are not supported"),
    ),
    f(
        "failover",
        Ty::Unsupported("failover services are not supported"),
    ),
];
const REDIRECT_SCHEME: &[F] = &[
    f("scheme", Ty::Str),
    f("port", Ty::Str),
    f("permanent", Ty::Bool),
];
const STRIP_PREFIX: &[F] = &[f("prefixes", Ty::List), f("forceSlash", Ty::Bool)];
const ADD_PREFIX: &[F] = &[f("prefix", Ty::Str)];
const HEADERS: &[F] = &[
    f("customRequestHeaders", Ty::Map),
    f("customResponseHeaders", Ty::Map),
    f("stsSeconds", Ty::U64),
    f("stsIncludeSubdomains", Ty::Bool),
    f("stsPreload", Ty::Bool),
    f("forceStsHeader", Ty::Bool),
    f("accessControlAllowOriginList", Ty::List),
    f("accessControlAllowMethods", Ty::List),
    f("accessControlAllowHeaders", Ty::List),
    f("accessControlExposeHeaders", Ty::List),
    f("accessControlAllowCredentials", Ty::Bool),
    f("accessControlMaxAge", Ty::I64),
    f("addVaryHeader", Ty::Bool),
    f("frameDeny", Ty::Bool),
    f("contentTypeNosniff", Ty::Bool),
    f("referrerPolicy", Ty::Str),
    f("contentSecurityPolicy", Ty::Str),
    f(
        "sslRedirect",
        Ty::Unsupported("headers.sslredirect was removed in Traefik v3: use a redirectScheme middleware"),
    ),
    f(
        "browserXssFilter",
        Ty::Unsupported("headers.browserxssfilter is not supported: set X-XSS-Protection with customresponseheaders"),
    ),
    f(
        "customFrameOptionsValue",
        Ty::Unsupported("headers.customframeoptionsvalue is not supported: set X-Frame-Options with customresponseheaders"),
    ),
    f(
        "permissionsPolicy",
        Ty::Unsupported("headers.permissionspolicy is not supported: set Permissions-Policy with customresponseheaders"),
    ),
    f(
        "hostsProxyHeaders",
        Ty::Unsupported("headers.hostsproxyheaders is not supported"),
    ),
    f(
        "allowedHosts",
        Ty::Unsupported("headers.allowedhosts is not supported: restrict hosts in the router rule"),
    ),
];
const BASIC_AUTH: &[F] = &[
    f("users", Ty::List),
    f("usersFile", Ty::Str),
    f("realm", Ty::Str),
    f("removeHeader", Ty::Bool),
    f("headerField", Ty::Str),
];
const RATE_LIMIT: &[F] = &[
    f("average", Ty::U64),
    f("burst", Ty::U64),
    f("period", Ty::Dur),
    f(
        "sourceCriterion",
        Ty::Unsupported("rateLimit.sourcecriterion is not supported: the limit is per client IP"),
    ),
];
const IP_ALLOW: &[F] = &[
    f("sourceRange", Ty::List),
    f(
        "ipStrategy",
        Ty::Unsupported("ipstrategy is not supported: the client IP is the TCP peer address"),
    ),
    f(
        "rejectStatusCode",
        Ty::Unsupported("rejectstatuscode is not supported: rejected clients get 403"),
    ),
];
const COMPRESS: &[F] = &[
    f("excludedContentTypes", Ty::List),
    f("minResponseBodyBytes", Ty::U64),
    f(
        "includedContentTypes",
        Ty::Unsupported("compress.includedcontenttypes is not supported: use excludedcontenttypes"),
    ),
    f(
        "defaultEncoding",
        Ty::Ignored("the encoding follows the client's Accept-Encoding"),
    ),
    f(
        "encodings",
        Ty::Ignored("the encoding follows the client's Accept-Encoding"),
    ),
];
const RETRY: &[F] = &[f("attempts", Ty::U32), f("initialInterval", Ty::Dur)];
const CHAIN: &[F] = &[f("middlewares", Ty::List)];
const MIDDLEWARE: &[F] = &[
    f("redirectScheme", Ty::Obj(REDIRECT_SCHEME)),
    f("stripPrefix", Ty::Obj(STRIP_PREFIX)),
    f("addPrefix", Ty::Obj(ADD_PREFIX)),
    f("headers", Ty::Obj(HEADERS)),
    f("basicAuth", Ty::Obj(BASIC_AUTH)),
    f("rateLimit", Ty::Obj(RATE_LIMIT)),
    f("ipAllowList", Ty::Obj(IP_ALLOW)),
    f("ipWhiteList", Ty::Obj(IP_ALLOW)),
    f("compress", Ty::Obj(COMPRESS)),
    f("retry", Ty::Obj(RETRY)),
    f("chain", Ty::Obj(CHAIN)),
];
/// Traefik middleware kinds edge does not implement.
const UNSUPPORTED_MIDDLEWARES: &[&str] = &[
    "forwardAuth",
    "errors",
    "circuitBreaker",
    "buffering",
    "inFlightReq",
    "passTLSClientCert",
    "redirectRegex",
    "replacePath",
    "replacePathRegex",
    "stripPrefixRegex",
    "contentType",
    "digestAuth",
    "grpcWeb",
    "plugin",
];

// ---------------------------------------------------------------------------
// Label entries and the schema-driven decoder.

/// One path segment: `domains[0]` is name `domains`, index 0.
#[derive(Debug, Clone)]
struct Seg {
    name: String,
    index: Option<usize>,
}

/// One label under `<family>.http.`, split into segments.
#[derive(Debug, Clone)]
struct Entry<'a> {
    key: &'a str,
    path: Vec<Seg>,
    value: &'a str,
}

fn split_path(rest: &str) -> Result<Vec<Seg>, String> {
    let mut out = Vec::new();
    for part in rest.split('.') {
        if part.is_empty() {
            return Err("has an empty part (two dots in a row, or a trailing dot)".into());
        }
        let seg = match part.split_once('[') {
            Some((name, idx)) => {
                let Some(idx) = idx.strip_suffix(']') else {
                    return Err(format!("{part:?}: an index is written name[0]"));
                };
                let index: usize = idx
                    .parse()
                    .map_err(|_| format!("{part:?}: the index must be a number, e.g. name[0]"))?;
                if index >= MAX_INDEX {
                    return Err(format!("{part:?}: index above {}", MAX_INDEX - 1));
                }
                Seg {
                    name: name.to_string(),
                    index: Some(index),
                }
            }
            None => Seg {
                name: part.to_string(),
                index: None,
            },
        };
        out.push(seg);
    }
    Ok(out)
}

struct Decoder<'i> {
    issues: &'i mut Vec<Issue>,
}

impl Decoder<'_> {
    fn err<'k>(&mut self, label: impl Into<Option<&'k str>>, msg: impl Into<String>) {
        self.issues.push(Issue::error(label.into(), msg));
    }

    fn warn<'k>(&mut self, label: impl Into<Option<&'k str>>, msg: impl Into<String>) {
        self.issues.push(Issue::warning(label.into(), msg));
    }

    /// Decodes the entries below an object with fields `fields` at `depth`.
    /// `what` names the object in messages ("router", "middleware headers").
    fn obj(
        &mut self,
        fields: &'static [F],
        entries: &[&Entry<'_>],
        depth: usize,
        what: &str,
    ) -> Option<Value> {
        let mut out = Map::new();
        let mut enabled = false;
        // Entries ending here set the object itself: `tls=true`.
        let mut groups: BTreeMap<String, Vec<&Entry<'_>>> = BTreeMap::new();
        for e in entries {
            if e.path.len() == depth {
                match parse_bool(e.value) {
                    Some(true) => enabled = true,
                    Some(false) => {}
                    None => self.err(
                        e.key,
                        format!(
                            "{what} takes options below it, or true/false, not {:?}",
                            e.value
                        ),
                    ),
                }
            } else {
                groups
                    .entry(e.path[depth].name.to_ascii_lowercase())
                    .or_default()
                    .push(e);
            }
        }
        let mut any = false;
        for (lname, group) in groups {
            let Some(field) = fields.iter().find(|f| f.name.eq_ignore_ascii_case(&lname)) else {
                let names: Vec<String> = fields
                    .iter()
                    .filter(|f| !matches!(f.ty, Ty::Ignored(_) | Ty::Unsupported(_)))
                    .map(|f| f.name.to_ascii_lowercase())
                    .collect();
                let seg = &group[0].path[depth].name;
                self.err(
                    group[0].key,
                    format!(
                        "unknown option {seg:?} for {what}: use one of {}",
                        names.join(", ")
                    ),
                );
                continue;
            };
            if let Some(v) = self.field(field, &group, depth, what) {
                out.insert(field.name.to_string(), v);
                any = true;
            }
        }
        (any || enabled).then_some(Value::Object(out))
    }

    fn field(
        &mut self,
        field: &F,
        group: &[&Entry<'_>],
        depth: usize,
        what: &str,
    ) -> Option<Value> {
        let first = group[0];
        match field.ty {
            Ty::Ignored(why) => {
                for e in group {
                    self.warn(e.key, format!("ignored: {why}"));
                }
                return None;
            }
            Ty::Unsupported(why) => {
                for e in group {
                    self.err(e.key, format!("not supported by edge: {why}"));
                }
                return None;
            }
            Ty::Obj(fields) => {
                if let Some(e) = group.iter().find(|e| e.path[depth].index.is_some()) {
                    self.err(
                        e.key,
                        format!("{} is not a list: remove the [index]", field.name),
                    );
                    return None;
                }
                let what = format!("{what} {}", field.name.to_ascii_lowercase());
                return self.obj(fields, group, depth + 1, &what);
            }
            Ty::ObjList(fields) => {
                let mut items: BTreeMap<usize, Vec<&Entry<'_>>> = BTreeMap::new();
                for e in group {
                    match e.path[depth].index {
                        Some(i) if e.path.len() > depth + 1 => items.entry(i).or_default().push(e),
                        _ => {
                            self.err(
                                e.key,
                                format!(
                                    "{} is a list of objects: write {}[0].{}=…",
                                    field.name.to_ascii_lowercase(),
                                    field.name.to_ascii_lowercase(),
                                    fields[0].name.to_ascii_lowercase()
                                ),
                            );
                        }
                    }
                }
                let what = format!("{what} {}", field.name.to_ascii_lowercase());
                let list: Vec<Value> = items
                    .values()
                    .filter_map(|es| self.obj(fields, es, depth + 1, &what))
                    .collect();
                return (!list.is_empty()).then_some(Value::Array(list));
            }
            Ty::Map => {
                let mut m = Map::new();
                for e in group {
                    if e.path.len() != depth + 2 || e.path[depth + 1].index.is_some() {
                        self.err(
                            e.key,
                            format!(
                                "{} takes one name per label, e.g. {}.X-Name=value",
                                field.name.to_ascii_lowercase(),
                                field.name.to_ascii_lowercase()
                            ),
                        );
                        continue;
                    }
                    let k = e.path[depth + 1].name.clone();
                    if m.insert(k.clone(), Value::String(e.value.to_string()))
                        .is_some()
                    {
                        self.err(e.key, format!("{k:?} is set twice"));
                    }
                }
                return (!m.is_empty()).then_some(Value::Object(m));
            }
            _ => {}
        }
        // Scalars and lists: exactly one label ending here.
        if group.len() > 1 {
            let keys: Vec<&str> = group.iter().map(|e| e.key).collect();
            self.err(
                first.key,
                format!(
                    "set by {} labels ({}): keep one (option names are case-insensitive)",
                    group.len(),
                    keys.join(", ")
                ),
            );
            return None;
        }
        if first.path.len() != depth + 1 || first.path[depth].index.is_some() {
            self.err(
                first.key,
                format!(
                    "{} in {what} is a single value, not a group",
                    field.name.to_ascii_lowercase()
                ),
            );
            return None;
        }
        let v = first.value.trim();
        let bad = |kind: &str| {
            format!(
                "{} in {what} expects {kind}, got {v:?}",
                field.name.to_ascii_lowercase()
            )
        };
        let value = match field.ty {
            Ty::Str => Value::String(v.to_string()),
            Ty::Bool => match parse_bool(v) {
                Some(b) => Value::Bool(b),
                None => {
                    self.err(first.key, bad("true or false"));
                    return None;
                }
            },
            Ty::U16 => match v.parse::<u16>() {
                Ok(n) => Value::from(n),
                Err(_) => {
                    self.err(first.key, bad("a number from 0 to 65535"));
                    return None;
                }
            },
            Ty::U32 => match v.parse::<u32>() {
                Ok(n) => Value::from(n),
                Err(_) => {
                    self.err(first.key, bad("a positive whole number"));
                    return None;
                }
            },
            Ty::U64 => match v.parse::<u64>() {
                Ok(n) => Value::from(n),
                Err(_) => {
                    self.err(first.key, bad("a positive whole number"));
                    return None;
                }
            },
            Ty::I64 => match v.parse::<i64>() {
                Ok(n) => Value::from(n),
                Err(_) => {
                    self.err(first.key, bad("a whole number"));
                    return None;
                }
            },
            Ty::Dur => {
                if v.parse::<u64>().is_err() && humantime::parse_duration(v).is_err() {
                    self.err(first.key, bad("a duration such as 10s, 500ms or 1m"));
                    return None;
                }
                Value::String(v.to_string())
            }
            Ty::List => Value::Array(
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| Value::String(s.to_string()))
                    .collect(),
            ),
            Ty::Map | Ty::Obj(_) | Ty::ObjList(_) | Ty::Ignored(_) | Ty::Unsupported(_) => {
                return None
            }
        };
        Some(value)
    }
}

/// Elements of `<family>.http.<kind>.<name>.…`, grouped by kind and name.
type Elements<'a> = BTreeMap<(String, String), (Family, Vec<Entry<'a>>)>;

/// Short `edge.*` forms that configure the implicit router.
#[derive(Debug, Default)]
struct Short<'a> {
    port: Option<(&'a str, &'a str)>,
    host: Option<(&'a str, &'a str)>,
    path: Option<(&'a str, &'a str)>,
    rule: Option<(&'a str, &'a str)>,
    tls: Option<(&'a str, &'a str)>,
    entrypoints: Option<(&'a str, &'a str)>,
    middlewares: Option<(&'a str, &'a str)>,
    priority: Option<(&'a str, &'a str)>,
}

impl Short<'_> {
    fn router_labels(&self) -> Vec<&str> {
        [
            self.host,
            self.path,
            self.rule,
            self.tls,
            self.entrypoints,
            self.middlewares,
            self.priority,
        ]
        .into_iter()
        .flatten()
        .map(|(k, _)| k)
        .collect()
    }
}

/// Reads the labels of Swarm service `service` (its `Spec.Name`).
pub fn parse(
    service: &str,
    labels: &BTreeMap<String, String>,
    opts: &LabelOptions,
) -> ServiceLabels {
    let mut out = ServiceLabels::default();
    let mut issues = Vec::new();
    let mut enable_edge: Option<bool> = None;
    let mut enable_traefik: Option<bool> = None;
    let mut swarm_net: Option<(&str, &str)> = None;
    let mut docker_net: Option<(&str, &str)> = None;
    let mut edge_net: Option<(&str, &str)> = None;
    let mut lb: [Option<bool>; 3] = [None; 3]; // edge, swarm, docker
    let mut short = Short::default();
    let mut elements: Elements<'_> = BTreeMap::new();

    for (key, value) in labels {
        let lower = key.to_ascii_lowercase();
        let (family, rest) = if lower.starts_with("traefik.") {
            (Family::Traefik, &key["traefik.".len()..])
        } else if lower.starts_with("edge.") {
            (Family::Edge, &key["edge.".len()..])
        } else {
            continue;
        };
        out.has_labels = true;
        if value.len() > MAX_VALUE_LEN {
            issues.push(Issue::error(
                Some(key),
                format!("value longer than {MAX_VALUE_LEN} bytes"),
            ));
            continue;
        }
        let path = match split_path(rest) {
            Ok(p) => p,
            Err(e) => {
                issues.push(Issue::error(
                    Some(key),
                    format!("malformed label name: {e}"),
                ));
                continue;
            }
        };
        let names: Vec<String> = path.iter().map(|s| s.name.to_ascii_lowercase()).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let v = value.as_str();
        let bool_of = |issues: &mut Vec<Issue>| -> Option<bool> {
            let b = parse_bool(v);
            if b.is_none() {
                issues.push(Issue::error(
                    Some(key),
                    format!("expected true or false, got {v:?}"),
                ));
            }
            b
        };
        match (family, names.as_slice()) {
            (Family::Edge, ["enable"]) => enable_edge = bool_of(&mut issues),
            (Family::Traefik, ["enable"]) => enable_traefik = bool_of(&mut issues),
            (Family::Edge, ["swarm", "network"]) => edge_net = Some((key, v)),
            (Family::Traefik, ["swarm", "network"]) => swarm_net = Some((key, v)),
            (Family::Traefik, ["docker", "network"]) => docker_net = Some((key, v)),
            (Family::Edge, ["swarm", "lbswarm"]) => lb[0] = bool_of(&mut issues),
            (Family::Traefik, ["swarm", "lbswarm"]) => lb[1] = bool_of(&mut issues),
            (Family::Traefik, ["docker", "lbswarm"]) => lb[2] = bool_of(&mut issues),
            (Family::Traefik, ["docker" | "swarm", "allownonrunning"]) => issues.push(Issue::warning(
                Some(key),
                "ignored: only running tasks receive traffic",
            )),
            (_, ["swarm" | "docker", ..]) => issues.push(Issue::error(
                Some(key),
                format!(
                    "unknown option: the {}swarm.* labels are network and lbswarm",
                    family.prefix()
                ),
            )),
            (Family::Edge, ["port"]) => short.port = Some((key, v)),
            (Family::Edge, ["host"]) => short.host = Some((key, v)),
            (Family::Edge, ["path"]) => short.path = Some((key, v)),
            (Family::Edge, ["rule"]) => short.rule = Some((key, v)),
            (Family::Edge, ["tls"]) => short.tls = Some((key, v)),
            (Family::Edge, ["entrypoints"]) => short.entrypoints = Some((key, v)),
            (Family::Edge, ["middlewares"]) => short.middlewares = Some((key, v)),
            (Family::Edge, ["priority"]) => short.priority = Some((key, v)),
            (_, ["http", kind @ ("routers" | "services" | "middlewares"), _name, _, ..]) => {
                let name = path[2].name.clone();
                let entry = Entry {
                    key,
                    path: path[3..].to_vec(),
                    value: v,
                };
                let slot = elements
                    .entry((kind.to_string(), name))
                    .or_insert_with(|| (family, Vec::new()));
                if slot.0 != family {
                    issues.push(Issue::error(
                        Some(key),
                        format!(
                            "{kind} {:?} is defined by both traefik.* and edge.* labels: use one family per element",
                            path[2].name
                        ),
                    ));
                    continue;
                }
                slot.1.push(entry);
            }
            (_, ["http", "routers" | "services" | "middlewares", ..]) => issues.push(Issue::error(
                Some(key),
                format!(
                    "incomplete: write {p}http.routers.<name>.<option>, {p}http.services.<name>.loadbalancer.<option> or {p}http.middlewares.<name>.<type>.<option>",
                    p = family.prefix()
                ),
            )),
            (_, ["http", "serverstransports", ..]) => issues.push(Issue::warning(
                Some(key),
                "ignored: servers transports are global settings of edge",
            )),
            (_, ["tcp" | "udp", ..]) => issues.push(Issue::warning(
                Some(key),
                "ignored: edge routes HTTP only (TCP and UDP routers are not supported)",
            )),
            (_, ["http", ..]) => issues.push(Issue::error(
                Some(key),
                format!(
                    "unknown label: {p}http.* labels are {p}http.routers.<name>.<option>, {p}http.services.<name>.loadbalancer.<option> and {p}http.middlewares.<name>.<type>.<option>",
                    p = family.prefix()
                ),
            )),
            (Family::Traefik, [first, ..])
                if ["port", "frontend", "backend", "protocol", "weight", "tags", "domain", "backends", "frontends"]
                    .contains(first) =>
            {
                issues.push(Issue::error(
                    Some(key),
                    "Traefik v1 label, not read by edge: use traefik.http.routers.<name>.rule and traefik.http.services.<name>.loadbalancer.server.port",
                ))
            }
            // Other traefik.* labels are not routing labels (Traefik ignores
            // them too); stacks use some for constraints, e.g.
            // traefik.constraint-label.
            (Family::Traefik, _) => issues.push(Issue::warning(
                Some(key),
                "not a Traefik routing label, so edge does not read it (fine if your constraints use it)",
            )),
            (Family::Edge, _) => issues.push(Issue::error(
                Some(key),
                "unknown label: edge.* labels are edge.enable, edge.port, edge.host, edge.path, edge.rule, edge.tls, edge.entrypoints, edge.middlewares, edge.priority, edge.swarm.network, edge.swarm.lbswarm and edge.http.*",
            )),
            (Family::Implicit, _) => {}
        }
    }

    out.enabled = enable_edge
        .or(enable_traefik)
        .unwrap_or(opts.exposed_by_default);
    if let (Some(e), Some(t)) = (enable_edge, enable_traefik) {
        if e != t {
            issues.push(Issue::warning(
                Some("edge.enable"),
                format!("edge.enable={e} and traefik.enable={t} disagree: edge.enable wins"),
            ));
        }
    }
    if swarm_net.is_some() && docker_net.is_some() {
        issues.push(Issue::warning(
            docker_net.map(|(k, _)| k),
            "both traefik.swarm.network and traefik.docker.network are set: traefik.swarm.network wins",
        ));
    }
    let net = edge_net.or(swarm_net).or(docker_net);
    out.network = net
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| !v.is_empty());
    out.network_label = net.map(|(k, _)| k.to_string());
    out.lb_swarm = lb[0].or(lb[1]).or(lb[2]).unwrap_or(false);

    // Decode every router, service and middleware through the schema, then
    // into the configuration types.
    let default_name = normalize(service);
    let mut dec = Decoder {
        issues: &mut issues,
    };
    for ((kind, name), (family, entries)) in &elements {
        let refs: Vec<&Entry<'_>> = entries.iter().collect();
        out.origin.insert((kind.clone(), name.clone()), *family);
        match kind.as_str() {
            "routers" => {
                let what = format!("router {name}");
                let Some(Value::Object(mut m)) = dec.obj(ROUTER, &refs, 0, &what) else {
                    continue;
                };
                m.entry("rule").or_insert(Value::String(String::new()));
                m.entry("service").or_insert(Value::String(String::new()));
                match serde_json::from_value::<Router>(Value::Object(m)) {
                    Ok(r) => {
                        out.http.routers.insert(name.clone(), r);
                    }
                    Err(e) => dec.err(entries[0].key, format!("router {name}: {e}")),
                }
            }
            "services" => {
                let what = format!("service {name}");
                let Some(Value::Object(mut m)) = dec.obj(SERVICE, &refs, 0, &what) else {
                    continue;
                };
                let mut lbm = match m.remove("loadBalancer") {
                    Some(Value::Object(lbm)) => lbm,
                    _ => Map::new(),
                };
                if let Some(Value::Object(server)) = lbm.remove("server") {
                    if let Some(p) = server.get("port").and_then(Value::as_u64) {
                        out.ports.insert(name.clone(), p as u16);
                    }
                    if let Some(s) = server.get("scheme").and_then(Value::as_str) {
                        out.schemes
                            .insert(name.clone(), s.trim().to_ascii_lowercase());
                    }
                    if server.contains_key("weight") {
                        dec.warn(
                            entries[0].key,
                            format!("service {name}: server.weight is ignored: every task gets the same weight"),
                        );
                    }
                }
                if lbm.contains_key("serversTransport") {
                    dec.warn(
                        entries[0].key,
                        format!("service {name}: serverstransport is ignored: transport settings are global flags of edge"),
                    );
                    lbm.remove("serversTransport");
                }
                match serde_json::from_value::<LoadBalancer>(Value::Object(lbm)) {
                    Ok(lb) => {
                        out.http
                            .services
                            .insert(name.clone(), Service::LoadBalancer(lb));
                    }
                    Err(e) => dec.err(entries[0].key, format!("service {name}: {e}")),
                }
            }
            _ => {
                if let Some(e) = refs.iter().find(|e| {
                    e.path.first().is_some_and(|s| {
                        UNSUPPORTED_MIDDLEWARES
                            .iter()
                            .any(|u| u.eq_ignore_ascii_case(&s.name))
                    })
                }) {
                    dec.err(
                        e.key,
                        format!(
                            "middleware type {} is not supported by edge; supported: redirectscheme, stripprefix, addprefix, headers, basicauth, ratelimit, ipallowlist, compress, retry, chain",
                            e.path[0].name
                        ),
                    );
                    continue;
                }
                let what = format!("middleware {name}");
                let Some(v) = dec.obj(MIDDLEWARE, &refs, 0, &what) else {
                    continue;
                };
                match serde_json::from_value::<Middleware>(v) {
                    Ok(m) => {
                        out.http.middlewares.insert(name.clone(), m);
                    }
                    Err(e) => dec.err(entries[0].key, format!("middleware {name}: {e}")),
                }
            }
        }
    }

    // The short edge.* forms.
    let edge_family = labels
        .keys()
        .any(|k| k.to_ascii_lowercase().starts_with("edge."));
    out.traefik_style = out.has_labels && !edge_family;
    let edge_router_labels = short.router_labels();
    let uses_short_router = !edge_router_labels.is_empty();
    let mut short_router = Router::default();
    if let Some((k, v)) = short.rule {
        if short.host.is_some() || short.path.is_some() {
            dec.err(
                k,
                "edge.rule replaces edge.host and edge.path: keep either edge.rule or edge.host/edge.path",
            );
        }
        short_router.rule = v.trim().to_string();
    } else {
        let mut parts = Vec::new();
        if let Some((k, v)) = short.host {
            let hosts: Vec<&str> = v
                .split(',')
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .collect();
            if hosts.is_empty() || hosts.iter().any(|h| h.contains(['`', '"', ' ', '/'])) {
                dec.err(
                    k,
                    format!("expected host names separated by commas, e.g. shop.example.com,www.shop.example.com; got {v:?}"),
                );
            } else {
                let any = hosts
                    .iter()
                    .map(|h| format!("Host(`{h}`)"))
                    .collect::<Vec<_>>()
                    .join(" || ");
                parts.push(if hosts.len() > 1 {
                    format!("({any})")
                } else {
                    any
                });
            }
        }
        if let Some((k, v)) = short.path {
            let v = v.trim();
            if !v.starts_with('/') || v.contains(['`', '"', ' ']) {
                dec.err(k, format!("expected a path prefix such as /api, got {v:?}"));
            } else {
                if short.host.is_none() {
                    parts.push(default_rule(opts, service));
                }
                parts.push(format!("PathPrefix(`{v}`)"));
            }
        }
        short_router.rule = parts.join(" && ");
    }
    if let Some((k, v)) = short.tls {
        match parse_bool(v) {
            Some(true) => short_router.tls = Some(Default::default()),
            Some(false) => {}
            None => dec.err(k, format!("expected true or false, got {v:?}")),
        }
    } else {
        // edge.* services serve HTTPS unless told otherwise.
        short_router.tls = Some(Default::default());
    }
    if let Some((_, v)) = short.entrypoints {
        short_router.entry_points = split_list(v);
    }
    if let Some((_, v)) = short.middlewares {
        short_router.middlewares = split_list(v);
    }
    if let Some((k, v)) = short.priority {
        match v.trim().parse::<i64>() {
            Ok(p) => short_router.priority = p,
            Err(_) => dec.err(k, format!("expected a whole number, got {v:?}")),
        }
    }
    let short_port = match short.port {
        Some((k, v)) => match v.trim().parse::<u16>() {
            Ok(p) if p > 0 => Some(p),
            _ => {
                dec.err(
                    k,
                    format!("expected a port number from 1 to 65535, got {v:?}"),
                );
                None
            }
        },
        None => None,
    };

    // Traefik's defaults: an implicit service named after the Swarm service,
    // an implicit router when there is none, a router without a service
    // uses the only service.
    if out.http.services.is_empty() {
        out.http.services.insert(
            default_name.clone(),
            Service::LoadBalancer(LoadBalancer::default()),
        );
        out.origin
            .insert(("services".into(), default_name.clone()), Family::Implicit);
    }
    if let Some(p) = short_port {
        let names: Vec<String> = out.http.services.keys().cloned().collect();
        for n in names {
            out.ports.entry(n).or_insert(p);
        }
    }
    if out.http.routers.is_empty() {
        if out.http.services.len() > 1 {
            dec.warn(
                None,
                format!(
                    "no router: the labels define {} services ({}), so no implicit router is made; add traefik.http.routers.<name>.rule and .service",
                    out.http.services.len(),
                    out.http.services.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            );
        } else {
            let r = if uses_short_router {
                short_router.clone()
            } else {
                Router {
                    // Services labelled with edge.* are served over HTTPS
                    // unless edge.tls=false says otherwise.
                    tls: edge_family.then(Default::default),
                    ..Router::default()
                }
            };
            out.http.routers.insert(default_name.clone(), r);
            out.origin
                .insert(("routers".into(), default_name.clone()), Family::Implicit);
        }
    } else if uses_short_router {
        for k in edge_router_labels.iter().copied() {
            dec.err(
                k,
                format!(
                    "edge.{} configures the implicit router, but the labels define routers ({}): set the option on those routers instead",
                    k.get("edge.".len()..).unwrap_or(k),
                    out.http.routers.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            );
        }
    }
    let only_service = (out.http.services.len() == 1)
        .then(|| out.http.services.keys().next().cloned())
        .flatten();
    let mut unlinked = Vec::new();
    for (name, r) in out.http.routers.iter_mut() {
        if r.rule.trim().is_empty() {
            r.rule = default_rule(opts, service);
        }
        if r.service.is_empty() {
            match &only_service {
                Some(s) => r.service = s.clone(),
                None => unlinked.push(name.clone()),
            }
        }
    }
    for name in unlinked {
        let label = out.label_for("routers", &name, "service");
        dec.err(
            label.as_deref(),
            format!(
                "router {name} has no service and the labels define several ({}): set {}",
                out.http
                    .services
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
                label.as_deref().unwrap_or("its service label")
            ),
        );
        out.http.routers.remove(&name);
    }
    for (name, scheme) in &out.schemes {
        if scheme != "http" && scheme != "https" {
            let label = out.label_for("services", name, "loadbalancer.server.scheme");
            dec.err(
                label.as_deref(),
                format!("scheme {scheme:?} is not supported: use http, or https for tasks that only speak TLS"),
            );
        }
    }
    out.issues = issues;
    out
}

fn split_list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// The default rule for `service`, from the template in `opts`.
pub fn default_rule(opts: &LabelOptions, service: &str) -> String {
    opts.default_rule
        .replace("{{ normalize .Name }}", &normalize(service))
        .replace("{{normalize .Name}}", &normalize(service))
        .replace("{{ .Name }}", service)
        .replace("{{.Name}}", service)
}

/// Checks that every schema name is a field the configuration types know
/// (used by tests; the schema and the model must not drift apart).
#[cfg(test)]
fn schema_names_match_model() -> Result<(), String> {
    fn sample(fields: &'static [F]) -> Value {
        let mut m = Map::new();
        for f in fields {
            let v = match f.ty {
                Ty::Str => Value::String("x".into()),
                Ty::Bool => Value::Bool(true),
                Ty::U16 | Ty::U32 | Ty::U64 | Ty::I64 => Value::from(1u8),
                Ty::Dur => Value::String("1s".into()),
                Ty::List => Value::Array(vec![Value::String("x".into())]),
                Ty::Map => serde_json::json!({"X-A": "b"}),
                Ty::Obj(inner) => sample(inner),
                Ty::ObjList(inner) => Value::Array(vec![sample(inner)]),
                Ty::Ignored(_) | Ty::Unsupported(_) => continue,
            };
            m.insert(f.name.to_string(), v);
        }
        Value::Object(m)
    }
    serde_json::from_value::<Router>(sample(ROUTER)).map_err(|e| format!("router: {e}"))?;
    let mut lb = sample(LB);
    if let Value::Object(m) = &mut lb {
        m.remove("server");
        m.remove("serversTransport");
    }
    serde_json::from_value::<LoadBalancer>(lb).map_err(|e| format!("loadBalancer: {e}"))?;
    for mw in MIDDLEWARE {
        let Ty::Obj(inner) = mw.ty else { continue };
        let v = serde_json::json!({ mw.name: sample(inner) });
        serde_json::from_value::<Middleware>(v).map_err(|e| format!("{}: {e}", mw.name))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn parse_ok(service: &str, pairs: &[(&str, &str)]) -> ServiceLabels {
        let l = parse(service, &labels(pairs), &LabelOptions::default());
        assert!(!l.has_errors(), "unexpected errors: {:#?}", l.issues);
        l
    }

    fn errors(l: &ServiceLabels) -> String {
        l.issues
            .iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn schema_matches_the_configuration_model() {
        schema_names_match_model().unwrap();
    }

    #[test]
    fn traefik_defaults_make_one_router_and_service_named_after_the_service() {
        let l = parse_ok(
            "shop_web",
            &[
                ("traefik.enable", "true"),
                ("traefik.http.services.x.loadbalancer.server.port", "8080"),
            ],
        );
        assert!(l.enabled);
        let r = &l.http.routers["shop-web"];
        assert_eq!(r.rule, "Host(`shop-web.b3.swarm`)");
        assert_eq!(r.service, "x");
        assert_eq!(r.tls, None, "Traefik labels: TLS only when asked");
        assert_eq!(l.ports["x"], 8080);
    }

    #[test]
    fn no_enable_label_means_not_routed_unless_exposed_by_default() {
        let pairs = labels(&[("traefik.http.routers.a.rule", "Host(`a`)")]);
        assert!(!parse("a", &pairs, &LabelOptions::default()).enabled);
        let opts = LabelOptions {
            exposed_by_default: true,
            ..LabelOptions::default()
        };
        assert!(parse("a", &pairs, &opts).enabled);
        assert!(!parse("a", &labels(&[("traefik.enable", "false")]), &opts).enabled);
        assert!(
            parse(
                "a",
                &labels(&[("edge.enable", "1")]),
                &LabelOptions::default()
            )
            .enabled
        );
    }

    #[test]
    fn keys_are_case_insensitive_but_names_keep_their_case() {
        let l = parse_ok(
            "app",
            &[
                ("Traefik.Enable", "TRUE"),
                (
                    "traefik.HTTP.Routers.MyRouter.Rule",
                    "Host(`a.example.com`)",
                ),
                (
                    "traefik.http.routers.MyRouter.EntryPoints",
                    "websecure, web",
                ),
                ("traefik.http.routers.MyRouter.TLS.CertResolver", "le"),
                ("traefik.http.Services.Svc.LoadBalancer.Server.Port", "80"),
                (
                    "traefik.http.services.Svc.loadbalancer.passHostHeader",
                    "false",
                ),
            ],
        );
        let r = &l.http.routers["MyRouter"];
        assert_eq!(r.entry_points, vec!["websecure", "web"]);
        assert_eq!(r.tls.as_ref().unwrap().cert_resolver.as_deref(), Some("le"));
        assert_eq!(r.service, "Svc");
        let Service::LoadBalancer(lb) = &l.http.services["Svc"] else {
            panic!()
        };
        assert!(!lb.pass_host_header);
    }

    #[test]
    fn a_real_traefik_stack_file_is_read_unchanged() {
        // The labels of a typical Traefik v2/v3 stack file (whoami + auth +
        // redirect + sticky + health check), verbatim.
        let l = parse_ok(
            "whoami_whoami",
            &[
                ("traefik.enable", "true"),
                ("traefik.swarm.network", "traefik-public"),
                ("traefik.constraint-label", "traefik-public"),
                (
                    "traefik.http.routers.whoami-http.rule",
                    "Host(`whoami.example.com`)",
                ),
                ("traefik.http.routers.whoami-http.entrypoints", "web"),
                (
                    "traefik.http.routers.whoami-http.middlewares",
                    "https-redirect",
                ),
                (
                    "traefik.http.middlewares.https-redirect.redirectscheme.scheme",
                    "https",
                ),
                (
                    "traefik.http.middlewares.https-redirect.redirectscheme.permanent",
                    "true",
                ),
                (
                    "traefik.http.routers.whoami-https.rule",
                    "Host(`whoami.example.com`) && PathPrefix(`/api`)",
                ),
                ("traefik.http.routers.whoami-https.entrypoints", "websecure"),
                ("traefik.http.routers.whoami-https.tls", "true"),
                ("traefik.http.routers.whoami-https.tls.certresolver", "le"),
                (
                    "traefik.http.routers.whoami-https.tls.domains[0].main",
                    "example.com",
                ),
                (
                    "traefik.http.routers.whoami-https.tls.domains[0].sans",
                    "*.example.com,www.example.com",
                ),
                (
                    "traefik.http.routers.whoami-https.middlewares",
                    "auth,strip@swarm",
                ),
                ("traefik.http.routers.whoami-https.priority", "42"),
                (
                    "traefik.http.middlewares.auth.basicauth.users",
                    "admin:$$apr1$$H6uskkkW$$IgXLP6ewTrSuBkTrqE8wj/",
                ),
                (
                    "traefik.http.middlewares.strip.stripprefix.prefixes",
                    "/api,/v1",
                ),
                (
                    "traefik.http.middlewares.hdr.headers.customrequestheaders.X-Script-Name",
                    "test",
                ),
                (
                    "traefik.http.middlewares.hdr.headers.stsseconds",
                    "31536000",
                ),
                ("traefik.http.middlewares.limit.ratelimit.average", "100"),
                ("traefik.http.middlewares.limit.ratelimit.period", "1m"),
                (
                    "traefik.http.services.whoami.loadbalancer.server.port",
                    "80",
                ),
                (
                    "traefik.http.services.whoami.loadbalancer.sticky.cookie.name",
                    "srv",
                ),
                (
                    "traefik.http.services.whoami.loadbalancer.sticky.cookie.httponly",
                    "true",
                ),
                (
                    "traefik.http.services.whoami.loadbalancer.healthcheck.path",
                    "/health",
                ),
                (
                    "traefik.http.services.whoami.loadbalancer.healthcheck.interval",
                    "10s",
                ),
            ],
        );
        // traefik.constraint-label is a user label used by constraints: it
        // must not be reported as an error (it is only a warning-free pass).
        assert_eq!(l.network.as_deref(), Some("traefik-public"));
        assert_eq!(l.http.routers.len(), 2);
        let https = &l.http.routers["whoami-https"];
        assert_eq!(https.service, "whoami");
        assert_eq!(https.priority, 42);
        assert_eq!(https.middlewares, vec!["auth", "strip@swarm"]);
        let tls = https.tls.as_ref().unwrap();
        assert_eq!(tls.domains[0].main, "example.com");
        assert_eq!(
            tls.domains[0].sans,
            vec!["*.example.com", "www.example.com"]
        );
        assert_eq!(l.http.routers["whoami-http"].tls, None);
        assert!(matches!(
            &l.http.middlewares["https-redirect"],
            Middleware::RedirectScheme(r) if r.permanent && r.scheme.as_deref() == Some("https")
        ));
        let Middleware::Headers(h) = &l.http.middlewares["hdr"] else {
            panic!()
        };
        assert_eq!(h.custom_request_headers["X-Script-Name"], "test");
        assert_eq!(h.sts_seconds, 31536000);
        let Service::LoadBalancer(lb) = &l.http.services["whoami"] else {
            panic!()
        };
        assert_eq!(
            lb.sticky.as_ref().unwrap().cookie.name.as_deref(),
            Some("srv")
        );
        assert_eq!(lb.health_check.as_ref().unwrap().path, "/health");
        assert_eq!(l.ports["whoami"], 80);
    }

    #[test]
    fn unknown_and_unsupported_options_are_reported_with_their_label() {
        let l = parse(
            "shop",
            &labels(&[
                ("traefik.enable", "true"),
                ("traefik.http.routers.web.rulez", "Host(`a`)"),
                (
                    "traefik.http.middlewares.fa.forwardauth.address",
                    "http://auth",
                ),
                ("traefik.http.middlewares.h.headers.sslredirect", "true"),
                ("traefik.http.services.s.loadbalancer.server.port", "eighty"),
                ("traefik.port", "80"),
                ("traefik.http.routers.web.observability.accesslogs", "false"),
            ]),
            &LabelOptions::default(),
        );
        let text = errors(&l);
        for want in [
            "label traefik.http.routers.web.rulez: unknown option \"rulez\" for router web: use one of rule, entrypoints",
            "label traefik.http.middlewares.fa.forwardauth.address: middleware type forwardauth is not supported",
            "label traefik.http.middlewares.h.headers.sslredirect: not supported by edge",
            "label traefik.http.services.s.loadbalancer.server.port: port in service s loadbalancer server expects a number from 0 to 65535, got \"eighty\"",
            "label traefik.port: Traefik v1 label",
            "warning: label traefik.http.routers.web.observability.accesslogs: ignored",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
        assert!(l.has_errors());
    }

    #[test]
    fn edge_short_forms_configure_the_implicit_router_with_tls() {
        let l = parse_ok(
            "demo",
            &[
                ("edge.enable", "true"),
                ("edge.port", "8000"),
                ("edge.host", "demo.example.com, www.example.com"),
                ("edge.path", "/app"),
                ("edge.middlewares", "auth@file"),
                ("edge.entrypoints", "websecure"),
                ("edge.priority", "7"),
            ],
        );
        let r = &l.http.routers["demo"];
        assert_eq!(
            r.rule,
            "(Host(`demo.example.com`) || Host(`www.example.com`)) && PathPrefix(`/app`)"
        );
        crate::config::Rule::parse(&r.rule).unwrap();
        assert!(r.tls.is_some());
        assert_eq!(r.service, "demo");
        assert_eq!(r.middlewares, vec!["auth@file"]);
        assert_eq!(r.entry_points, vec!["websecure"]);
        assert_eq!(r.priority, 7);
        assert_eq!(l.ports["demo"], 8000);

        let l = parse_ok("demo", &[("edge.enable", "true"), ("edge.port", "8000")]);
        assert_eq!(l.http.routers["demo"].rule, "Host(`demo.b3.swarm`)");
        assert!(l.http.routers["demo"].tls.is_some());
        let l = parse_ok(
            "demo",
            &[
                ("edge.enable", "true"),
                ("edge.tls", "false"),
                ("edge.path", "/x"),
            ],
        );
        assert!(l.http.routers["demo"].tls.is_none());
        assert_eq!(
            l.http.routers["demo"].rule,
            "Host(`demo.b3.swarm`) && PathPrefix(`/x`)"
        );
    }

    #[test]
    fn edge_http_tree_is_traefiks_tree() {
        let a = parse_ok(
            "s",
            &[
                ("edge.http.routers.r.rule", "Path(`/`)"),
                ("edge.http.services.s.loadbalancer.server.port", "81"),
            ],
        );
        let b = parse_ok(
            "s",
            &[
                ("traefik.http.routers.r.rule", "Path(`/`)"),
                ("traefik.http.services.s.loadbalancer.server.port", "81"),
            ],
        );
        assert_eq!(a.http, b.http);
        assert_eq!(a.ports, b.ports);
    }

    #[test]
    fn conflicts_and_misuse_are_errors() {
        let l = parse(
            "s",
            &labels(&[
                ("traefik.http.routers.r.rule", "Path(`/a`)"),
                ("traefik.http.routers.r.Rule", "Path(`/b`)"),
                ("edge.host", "x.example.com"),
                ("edge.rule", "Path(`/`)"),
            ]),
            &LabelOptions::default(),
        );
        let text = errors(&l);
        assert!(text.contains("set by 2 labels"), "{text}");
        assert!(text.contains("edge.rule replaces edge.host"), "{text}");
        let l = parse(
            "s",
            &labels(&[
                ("traefik.http.routers.r.rule", "Path(`/a`)"),
                ("edge.host", "x.example.com"),
            ]),
            &LabelOptions::default(),
        );
        let text = errors(&l);
        assert!(
            text.contains(
                "edge.host configures the implicit router, but the labels define routers (r)"
            ),
            "{text}"
        );
    }

    #[test]
    fn router_without_service_among_several_is_an_error() {
        let l = parse(
            "s",
            &labels(&[
                ("traefik.http.routers.r.rule", "Path(`/`)"),
                ("traefik.http.services.a.loadbalancer.server.port", "1"),
                ("traefik.http.services.b.loadbalancer.server.port", "2"),
            ]),
            &LabelOptions::default(),
        );
        assert!(
            errors(&l).contains("router r has no service"),
            "{}",
            errors(&l)
        );
        assert!(l.http.routers.is_empty());
    }

    #[test]
    fn bad_schemes_and_bad_bools_are_errors() {
        let l = parse(
            "s",
            &labels(&[
                ("traefik.enable", "yes"),
                ("traefik.http.services.a.loadbalancer.server.scheme", "h2c"),
            ]),
            &LabelOptions::default(),
        );
        let text = errors(&l);
        assert!(
            text.contains("label traefik.enable: expected true or false, got \"yes\""),
            "{text}"
        );
        assert!(text.contains("scheme \"h2c\" is not supported"), "{text}");
        let l = parse_ok(
            "s",
            &[(
                "traefik.http.services.a.loadbalancer.server.scheme",
                "HTTPS",
            )],
        );
        assert_eq!(l.schemes["a"], "https");
    }

    #[test]
    fn swarm_labels_and_their_precedence() {
        let l = parse_ok(
            "s",
            &[
                ("traefik.docker.network", "old"),
                ("traefik.swarm.network", "new"),
                ("traefik.docker.lbswarm", "true"),
            ],
        );
        assert_eq!(l.network.as_deref(), Some("new"));
        assert!(l.lb_swarm);
        let l = parse_ok(
            "s",
            &[("edge.swarm.network", "e"), ("traefik.swarm.network", "t")],
        );
        assert_eq!(l.network.as_deref(), Some("e"));
    }

    #[test]
    fn normalize_is_traefiks() {
        assert_eq!(normalize("shop_web"), "shop-web");
        assert_eq!(normalize("__a..b__"), "a-b");
        assert_eq!(normalize("Ünï"), "Ünï");
    }

    #[test]
    fn tls_false_leaves_tls_off_and_indices_are_checked() {
        let l = parse_ok(
            "s",
            &[
                ("traefik.http.routers.r.tls", "false"),
                ("traefik.http.routers.r.rule", "Path(`/`)"),
            ],
        );
        assert!(l.http.routers["r"].tls.is_none());
        let l = parse(
            "s",
            &labels(&[("traefik.http.routers.r.tls.domains.main", "a")]),
            &LabelOptions::default(),
        );
        assert!(
            errors(&l).contains("domains is a list of objects"),
            "{}",
            errors(&l)
        );
        let l = parse(
            "s",
            &labels(&[("traefik.http.routers.r.tls.domains[x].main", "a")]),
            &LabelOptions::default(),
        );
        assert!(
            errors(&l).contains("malformed label name"),
            "{}",
            errors(&l)
        );
    }

    proptest! {
        // Any label set parses without panicking, and every error names a
        // label or says why none applies.
        #[test]
        fn parsing_is_total(
            keys in proptest::collection::vec(
                "(traefik|edge|Traefik)\\.(enable|http|swarm|docker|port|tcp)(\\.(routers|services|middlewares|network|lbswarm|rule|x)){0,1}(\\.[a-zA-Z\\[\\]0-9]{1,8}){0,4}",
                0..12,
            ),
            values in proptest::collection::vec("[ -~]{0,24}", 12),
        ) {
            let map: BTreeMap<String, String> = keys
                .into_iter()
                .zip(values)
                .collect();
            let l = parse("svc", &map, &LabelOptions::default());
            for i in &l.issues {
                prop_assert!(!i.message.is_empty());
            }
            // Routers always have a rule and a service.
            for r in l.http.routers.values() {
                prop_assert!(!r.rule.is_empty());
                prop_assert!(!r.service.is_empty());
            }
        }

        // Router options survive any capitalisation of their names.
        #[test]
        fn option_names_ignore_case(mask in proptest::collection::vec(any::<bool>(), 40)) {
            // Every part but the router name (names keep their case).
            let mut bits = mask.iter().cycle();
            let mut up = |s: &str| -> String {
                s.chars()
                    .map(|c| if *bits.next().unwrap_or(&false) { c.to_ascii_uppercase() } else { c })
                    .collect()
            };
            let key = format!("{}r{}", up("traefik.http.routers."), up(".entrypoints"));
            let l = parse("s", &labels(&[(key.as_str(), "websecure")]), &LabelOptions::default());
            prop_assert!(!l.has_errors(), "{:?}", l.issues);
            prop_assert_eq!(&l.http.routers["r"].entry_points, &vec!["websecure".to_string()]);
        }
    }
}
