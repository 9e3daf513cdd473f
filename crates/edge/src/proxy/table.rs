//! The routing table: every provider's configuration merged and compiled
//! into an immutable snapshot. Requests look up a snapshot, never a config
//! being changed; a reload builds a new one and swaps it in atomically.
//!
//! Lookup is indexed by host: routers whose rule pins the host (`Host(…)`)
//! sit in a hash map, the others in a short list; a request only evaluates
//! the candidates for its host, in priority order.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::Serialize;

use crate::config::{self, rule::RequestView, Dynamic, Problem, Rule};
use crate::proxy::balancer::{Balancer, ServerRegistry, StickyCookie};
use crate::proxy::middleware::{self, Mw};

/// A compiled router.
#[derive(Debug)]
pub struct Route {
    /// `name@provider`.
    pub name: String,
    /// The same, shared with metric labels.
    pub label: Arc<String>,
    /// Compiled rule.
    pub rule: Rule,
    /// Effective priority.
    pub priority: i64,
    /// Serves HTTPS.
    pub tls: bool,
    /// Target service.
    pub service: Arc<ServiceRt>,
    /// Middlewares, in order.
    pub middlewares: Vec<Arc<Mw>>,
}

/// A compiled service.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per service, behind an Arc
pub enum ServiceRt {
    /// Servers behind a balancer.
    Lb {
        /// `name@provider`.
        name: String,
        /// The same, shared with metric labels.
        label: Arc<String>,
        /// The balancer.
        lb: Balancer,
    },
    /// Other services by weight.
    Weighted {
        /// `name@provider`.
        name: String,
        /// Children.
        children: Vec<Arc<ServiceRt>>,
        /// Balancer over children (its servers are unused placeholders).
        schedule: Vec<u16>,
        /// Round-robin position.
        next: std::sync::atomic::AtomicUsize,
    },
}

impl ServiceRt {
    /// `name@provider`.
    pub fn name(&self) -> &str {
        match self {
            ServiceRt::Lb { name, .. } | ServiceRt::Weighted { name, .. } => name,
        }
    }

    /// Resolves weighted services down to a load balancer.
    pub fn resolve(&self) -> Option<(&Arc<String>, &Balancer)> {
        match self {
            ServiceRt::Lb { label, lb, .. } => Some((label, lb)),
            ServiceRt::Weighted {
                children,
                schedule,
                next,
                ..
            } => {
                if schedule.is_empty() {
                    return None;
                }
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % schedule.len();
                children.get(schedule[i] as usize)?.resolve()
            }
        }
    }
}

/// The routers of one kind of listener, indexed by host.
#[derive(Debug, Default)]
pub struct EntryTable {
    by_host: HashMap<String, Vec<Arc<Route>>>,
    any_host: Vec<Arc<Route>>,
}

fn order(a: &Arc<Route>, b: &Arc<Route>) -> std::cmp::Ordering {
    b.priority
        .cmp(&a.priority)
        .then_with(|| a.name.cmp(&b.name))
}

impl EntryTable {
    fn insert(&mut self, route: Arc<Route>) {
        match route.rule.required_hosts() {
            Some(hosts) => {
                for h in hosts {
                    self.by_host.entry(h).or_default().push(route.clone());
                }
            }
            None => self.any_host.push(route),
        }
    }

    fn finish(&mut self) {
        for v in self.by_host.values_mut() {
            v.sort_by(order);
        }
        self.any_host.sort_by(order);
    }

    /// The highest-priority route matching the request.
    pub fn find(&self, req: &RequestView<'_>) -> Option<&Arc<Route>> {
        let hosted: &[Arc<Route>] = self
            .by_host
            .get(req.host)
            .map(|v| v.as_slice())
            .unwrap_or(&[]);
        let (mut i, mut j) = (0, 0);
        let any = &self.any_host;
        // Merge the two priority-ordered lists.
        while i < hosted.len() || j < any.len() {
            let r = match (hosted.get(i), any.get(j)) {
                (Some(a), Some(b)) => {
                    if order(a, b) != std::cmp::Ordering::Greater {
                        i += 1;
                        a
                    } else {
                        j += 1;
                        b
                    }
                }
                (Some(a), None) => {
                    i += 1;
                    a
                }
                (None, Some(b)) => {
                    j += 1;
                    b
                }
                (None, None) => break,
            };
            if r.rule.matches(req) {
                return Some(r);
            }
        }
        None
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        let mut names: Vec<&str> = self
            .by_host
            .values()
            .flatten()
            .chain(&self.any_host)
            .map(|r| r.name.as_str())
            .collect();
        names.sort_unstable();
        names.dedup();
        names.len()
    }

    /// Whether there are no routes.
    pub fn is_empty(&self) -> bool {
        self.by_host.is_empty() && self.any_host.is_empty()
    }
}

/// A router as the API shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouterInfo {
    /// `name@provider`.
    pub name: String,
    /// Provider.
    pub provider: String,
    /// Rule text.
    pub rule: String,
    /// Effective priority.
    pub priority: i64,
    /// Entry points it serves.
    pub entry_points: Vec<String>,
    /// Service (qualified).
    pub service: String,
    /// Middlewares (qualified).
    pub middlewares: Vec<String>,
    /// Has TLS.
    pub tls: bool,
    /// `enabled` or `disabled`.
    pub status: &'static str,
    /// Why it is disabled.
    pub error: Option<String>,
}

/// A middleware as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct MiddlewareInfo {
    /// `name@provider`.
    pub name: String,
    /// Provider.
    pub provider: String,
    /// Kind (Traefik's name).
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Its configuration.
    pub config: config::Middleware,
    /// `enabled` or `disabled`.
    pub status: &'static str,
    /// Why it is disabled.
    pub error: Option<String>,
}

/// A service's configuration and error for the API (live state comes from
/// the compiled service).
#[derive(Debug, Clone, Serialize)]
pub struct ServiceInfo {
    /// `name@provider`.
    pub name: String,
    /// Provider.
    pub provider: String,
    /// Its configuration.
    pub config: config::Service,
    /// Why it is disabled.
    pub error: Option<String>,
}

/// One immutable routing snapshot.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Plain HTTP routers (entry point `web`).
    pub web: EntryTable,
    /// TLS routers (entry point `websecure`).
    pub websecure: EntryTable,
    /// TLS routers reachable from `web`: a plain request matching one of
    /// these (and no plain router) is redirected to HTTPS.
    pub redirect: EntryTable,
    /// Routers for the API.
    pub routers: BTreeMap<String, RouterInfo>,
    /// Compiled services.
    pub services: BTreeMap<String, Arc<ServiceRt>>,
    /// Services for the API.
    pub service_info: BTreeMap<String, ServiceInfo>,
    /// Middlewares for the API.
    pub middlewares: BTreeMap<String, MiddlewareInfo>,
    /// Certificates wanted by the configuration.
    pub certificates: Vec<config::CertFiles>,
    /// Configuration problems found while compiling.
    pub problems: Vec<Problem>,
}

fn qualify(name: &str, provider: &str) -> String {
    if name.contains('@') {
        name.to_string()
    } else {
        format!("{name}@{provider}")
    }
}

/// Compiles every provider's configuration into a snapshot. Never fails as
/// a whole: a router with a problem is disabled (and reported), the others
/// keep working. Providers that want all-or-nothing (the file provider)
/// check with [`config::validate`] before pushing.
pub fn compile(configs: &BTreeMap<String, Dynamic>, registry: &ServerRegistry) -> Snapshot {
    let mut snap = Snapshot::default();
    // Services first (load balancers, then weighted ones over them).
    registry.rebuild(|get| {
        for (provider, cfg) in configs {
            for (name, svc) in &cfg.http.services {
                let q = qualify(name, provider);
                snap.service_info.insert(
                    q.clone(),
                    ServiceInfo {
                        name: q.clone(),
                        provider: provider.clone(),
                        config: svc.clone(),
                        error: None,
                    },
                );
                let config::Service::LoadBalancer(lbc) = svc else {
                    continue;
                };
                let mut servers = Vec::new();
                let mut weights = Vec::new();
                let mut error = None;
                for s in &lbc.servers {
                    match config::parse_server_url(&s.url) {
                        Ok(addr) => {
                            servers.push(get(&q, &s.url, addr));
                            weights.push(s.weight.unwrap_or(1).max(1));
                        }
                        Err(e) => error = Some(e),
                    }
                }
                let mut lb = Balancer::new(servers, &weights);
                lb.pass_host_header = lbc.pass_host_header;
                lb.health_check = lbc.health_check.clone();
                lb.sticky = lbc.sticky.as_ref().map(|s| sticky_cookie(&q, &s.cookie));
                if let Some(e) = error {
                    snap.problems.push(Problem {
                        path: format!("{q}: servers"),
                        message: e.clone(),
                    });
                    if let Some(i) = snap.service_info.get_mut(&q) {
                        i.error = Some(e);
                    }
                }
                let label = Arc::new(q.clone());
                snap.services
                    .insert(q.clone(), Arc::new(ServiceRt::Lb { name: q, label, lb }));
            }
        }
    });
    for (provider, cfg) in configs {
        for (name, svc) in &cfg.http.services {
            let config::Service::Weighted(w) = svc else {
                continue;
            };
            let q = qualify(name, provider);
            let mut children = Vec::new();
            let mut weights = Vec::new();
            let mut error = None;
            for ws in &w.services {
                let cq = qualify(&ws.name, provider);
                match snap.services.get(&cq) {
                    Some(c) if matches!(**c, ServiceRt::Lb { .. }) => {
                        children.push(c.clone());
                        weights.push(ws.weight.unwrap_or(1).max(1));
                    }
                    Some(_) => {
                        error = Some(format!("{cq} is weighted too: nest load balancers only"))
                    }
                    None => error = Some(format!("service {cq} is not defined")),
                }
            }
            if let Some(e) = &error {
                snap.problems.push(Problem {
                    path: format!("{q}: weighted"),
                    message: e.clone(),
                });
                if let Some(i) = snap.service_info.get_mut(&q) {
                    i.error = Some(e.clone());
                }
            }
            snap.services.insert(
                q.clone(),
                Arc::new(ServiceRt::Weighted {
                    name: q,
                    schedule: crate::proxy::balancer::smooth_schedule(&weights),
                    children,
                    next: Default::default(),
                }),
            );
        }
    }
    // Middlewares.
    let mut mws: HashMap<String, Result<Arc<Mw>, String>> = HashMap::new();
    let mut mw_cfg: HashMap<String, &config::Middleware> = HashMap::new();
    for (provider, cfg) in configs {
        for (name, m) in &cfg.http.middlewares {
            let q = qualify(name, provider);
            mw_cfg.insert(q.clone(), m);
            let compiled = match m {
                config::Middleware::Chain(_) => Err("chain".to_string()),
                m => middleware::compile(m).map(Arc::new),
            };
            let error = match &compiled {
                Err(e) if e != "chain" => Some(e.clone()),
                _ => None,
            };
            snap.middlewares.insert(
                q.clone(),
                MiddlewareInfo {
                    name: q.clone(),
                    provider: provider.clone(),
                    kind: m.kind(),
                    config: m.clone(),
                    status: if error.is_some() {
                        "disabled"
                    } else {
                        "enabled"
                    },
                    error,
                },
            );
            mws.insert(q, compiled);
        }
    }
    for cfg in configs.values() {
        for c in &cfg.tls.certificates {
            if !snap.certificates.contains(c) {
                snap.certificates.push(c.clone());
            }
        }
    }
    // Routers.
    for (provider, cfg) in configs {
        for (name, r) in &cfg.http.routers {
            let q = qualify(name, provider);
            let service_name = qualify(&r.service, provider);
            let mut info = RouterInfo {
                name: q.clone(),
                provider: provider.clone(),
                rule: r.rule.clone(),
                priority: if r.priority != 0 {
                    r.priority
                } else {
                    r.rule.len() as i64
                },
                entry_points: if r.entry_points.is_empty() {
                    vec![config::WEB.into(), config::WEBSECURE.into()]
                } else {
                    r.entry_points.clone()
                },
                service: service_name.clone(),
                middlewares: Vec::new(),
                tls: r.tls.is_some(),
                status: "enabled",
                error: None,
            };
            let built = (|| -> Result<Route, String> {
                let rule = Rule::parse(&r.rule).map_err(|e| format!("rule: {e}"))?;
                let service = snap
                    .services
                    .get(&service_name)
                    .cloned()
                    .ok_or_else(|| format!("service {service_name} is not defined"))?;
                let mut names = Vec::new();
                let lookup = |n: &str| {
                    let qn = qualify(n, provider);
                    mw_cfg.get(&qn).map(|m| (qn, *m))
                };
                middleware::flatten(&r.middlewares, &lookup, 0, &mut names)?;
                let mut middlewares = Vec::new();
                for n in &names {
                    match mws.get(n) {
                        Some(Ok(m)) => middlewares.push(m.clone()),
                        Some(Err(e)) => return Err(format!("middleware {n}: {e}")),
                        None => return Err(format!("middleware {n} is not defined")),
                    }
                }
                Ok(Route {
                    name: q.clone(),
                    label: Arc::new(q.clone()),
                    rule,
                    priority: info.priority,
                    tls: r.tls.is_some(),
                    service,
                    middlewares,
                })
            })();
            info.middlewares = r.middlewares.iter().map(|m| qualify(m, provider)).collect();
            match built {
                Ok(route) => {
                    let route = Arc::new(route);
                    let on = |ep: &str| info.entry_points.iter().any(|e| e == ep);
                    // A TLS entry point serves every router listed on it
                    // (like Traefik's entryPoints.websecure.http.tls); a plain
                    // request for one of those is redirected to HTTPS.
                    if on(config::WEBSECURE) && (route.tls || !r.entry_points.is_empty()) {
                        snap.websecure.insert(route.clone());
                        snap.redirect.insert(route.clone());
                    }
                    if on(config::WEB) && !route.tls {
                        snap.web.insert(route);
                    }
                }
                Err(e) => {
                    snap.problems.push(Problem {
                        path: format!("router {q}"),
                        message: e.clone(),
                    });
                    info.status = "disabled";
                    info.error = Some(e);
                }
            }
            snap.routers.insert(q, info);
        }
    }
    snap.web.finish();
    snap.websecure.finish();
    snap.redirect.finish();
    snap
}

fn sticky_cookie(service: &str, c: &config::StickyCookie) -> StickyCookie {
    let name = c.name.clone().unwrap_or_else(|| {
        // Traefik derives a name from the service; keep it a valid token.
        let h: String = service
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect();
        format!("_edge_{h}")
    });
    let mut attributes = String::from("; Path=/");
    if c.secure {
        attributes.push_str("; Secure");
    }
    if c.http_only {
        attributes.push_str("; HttpOnly");
    }
    if let Some(s) = &c.same_site {
        match s.to_ascii_lowercase().as_str() {
            "none" => attributes.push_str("; SameSite=None"),
            "lax" => attributes.push_str("; SameSite=Lax"),
            "strict" => attributes.push_str("; SameSite=Strict"),
            _ => {}
        }
    }
    if let Some(m) = c.max_age {
        attributes.push_str(&format!("; Max-Age={m}"));
    }
    StickyCookie { name, attributes }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse, Format};
    use http::{HeaderMap, Method};

    fn snap(yaml: &str) -> Snapshot {
        let mut m = BTreeMap::new();
        m.insert("file".to_string(), parse(yaml, Format::Yaml).unwrap());
        compile(&m, &ServerRegistry::default())
    }

    fn find<'a>(t: &'a EntryTable, host: &str, path: &str) -> Option<&'a str> {
        let h = HeaderMap::new();
        let v = RequestView {
            method: &Method::GET,
            host,
            path,
            query: None,
            headers: &h,
            client_ip: "127.0.0.1".parse().unwrap(),
        };
        t.find(&v).map(|r| r.name.as_str())
    }

    const CFG: &str = r#"
http:
  routers:
    app: { rule: "Host(`app.b3.swarm`)", service: s, tls: {} }
    api: { rule: "Host(`app.b3.swarm`) && PathPrefix(`/api`)", service: s, tls: {} }
    plain: { rule: "Host(`plain.b3.swarm`)", service: s, entryPoints: [web] }
    catchall: { rule: "PathPrefix(`/`)", service: s, priority: 1, entryPoints: [web] }
    wellknown: { rule: "PathPrefix(`/.well-known/`)", service: s, entryPoints: [web] }
    broken: { rule: "Host(nope)", service: s }
    secureonly: { rule: "Host(`s.b3.swarm`)", service: s, entryPoints: [websecure] }
  services:
    s: { loadBalancer: { servers: [ { url: "http://127.0.0.1:1" } ] } }
"#;

    #[test]
    fn priority_is_rule_length_and_hosts_are_indexed() {
        let s = snap(CFG);
        assert_eq!(
            find(&s.websecure, "app.b3.swarm", "/api/x"),
            Some("api@file")
        );
        assert_eq!(
            find(&s.websecure, "app.b3.swarm", "/other"),
            Some("app@file")
        );
        assert_eq!(find(&s.websecure, "x.b3.swarm", "/"), None);
        assert_eq!(find(&s.web, "plain.b3.swarm", "/"), Some("plain@file"));
        // A longer host-less rule beats a shorter one; explicit priority 1 loses.
        assert_eq!(
            find(&s.web, "any", "/.well-known/x"),
            Some("wellknown@file")
        );
        assert_eq!(
            find(&s.web, "plain.b3.swarm", "/.well-known/x"),
            Some("wellknown@file")
        );
        assert_eq!(find(&s.web, "any", "/"), Some("catchall@file"));
        // TLS routers are not served on web, but are redirect targets.
        assert_eq!(find(&s.web, "app.b3.swarm", "/"), Some("catchall@file"));
        assert_eq!(find(&s.redirect, "app.b3.swarm", "/"), Some("app@file"));
        // Listed on websecure only, without a tls section: still HTTPS.
        assert_eq!(
            find(&s.websecure, "s.b3.swarm", "/"),
            Some("secureonly@file")
        );
    }

    #[test]
    fn a_broken_router_is_disabled_and_the_rest_keep_working() {
        let s = snap(CFG);
        let b = &s.routers["broken@file"];
        assert_eq!(b.status, "disabled");
        assert!(b.error.as_deref().unwrap().contains("not quoted"), "{b:?}");
        assert_eq!(s.routers["app@file"].status, "enabled");
        assert_eq!(
            s.routers["app@file"].priority,
            "Host(`app.b3.swarm`)".len() as i64
        );
    }

    #[test]
    fn chains_flatten_and_cycles_are_rejected() {
        let s = snap(
            r#"
http:
  routers:
    a: { rule: "Host(`a`)", service: s, middlewares: [c] }
    b: { rule: "Host(`b`)", service: s, middlewares: [loop] }
  services:
    s: { loadBalancer: { servers: [ { url: "http://127.0.0.1:1" } ] } }
  middlewares:
    c: { chain: { middlewares: [x, y] } }
    x: { addPrefix: { prefix: /x } }
    y: { stripPrefix: { prefixes: [/y] } }
    loop: { chain: { middlewares: [loop] } }
"#,
        );
        let r = find(&s.web, "a", "/").unwrap();
        assert_eq!(r, "a@file");
        assert_eq!(s.routers["b@file"].status, "disabled");
        assert!(s.routers["b@file"]
            .error
            .as_deref()
            .unwrap()
            .contains("nested"));
    }

    #[test]
    fn weighted_services_split_by_weight() {
        let s = snap(
            r#"
http:
  routers:
    a: { rule: "Host(`a`)", service: canary }
  services:
    canary: { weighted: { services: [ { name: stable, weight: 3 }, { name: next, weight: 1 } ] } }
    stable: { loadBalancer: { servers: [ { url: "http://127.0.0.1:1" } ] } }
    next: { loadBalancer: { servers: [ { url: "http://127.0.0.1:2" } ] } }
"#,
        );
        let svc = &s.services["canary@file"];
        let mut stable = 0;
        for _ in 0..400 {
            let (name, _) = svc.resolve().unwrap();
            if name.as_str() == "stable@file" {
                stable += 1;
            }
        }
        assert_eq!(stable, 300);
        assert_eq!(s.routers["a@file"].status, "enabled");
    }

    #[test]
    fn many_routers_are_found_by_host() {
        let mut yaml = String::from("http:\n  routers:\n");
        for i in 0..1000 {
            yaml.push_str(&format!(
                "    r{i}: {{ rule: \"Host(`h{i}.b3.swarm`)\", service: s }}\n"
            ));
        }
        yaml.push_str("  services:\n    s: { loadBalancer: { servers: [ { url: \"http://127.0.0.1:1\" } ] } }\n");
        let s = snap(&yaml);
        assert_eq!(s.web.len(), 1000);
        assert_eq!(find(&s.web, "h777.b3.swarm", "/"), Some("r777@file"));
        assert!(s.web.any_host.is_empty());
    }
}
