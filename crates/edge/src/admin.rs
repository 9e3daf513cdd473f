//! The admin port's own routes (besides `/health` and `/metrics`): the
//! dashboard page and the JSON API behind it, shaped like Traefik's API
//! (`/api/overview`, `/api/http/routers`, `/api/http/services`,
//! `/api/http/middlewares`, `/api/entrypoints`) so its tooling maps over.

use std::sync::Arc;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Serialize;
use serde_json::json;

use b3_common::admin::{self, Body, Handler};

use crate::proxy::balancer::ServerReport;
use crate::proxy::table::ServiceRt;
use crate::proxy::Runtime;

const DASHBOARD: &str = include_str!("dashboard.html");

/// A service as the API shows it: configuration plus live server state.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceView {
    /// `name@provider`.
    pub name: String,
    /// Provider.
    pub provider: String,
    /// `enabled`, or `disabled` with `error`.
    pub status: &'static str,
    /// Why disabled.
    pub error: Option<String>,
    /// Configuration.
    pub config: Option<crate::config::Service>,
    /// Servers and their health.
    pub servers: Vec<ServerReport>,
    /// Traefik-style `url → UP|DOWN`.
    pub server_status: std::collections::BTreeMap<String, &'static str>,
    /// Routers using it.
    pub used_by: Vec<String>,
}

/// Services with live state.
pub fn services(rt: &Runtime) -> Vec<ServiceView> {
    let snap = rt.snapshot();
    snap.service_info
        .values()
        .map(|info| {
            let servers: Vec<ServerReport> = match snap.services.get(&info.name).map(|s| &**s) {
                Some(ServiceRt::Lb { lb, .. }) => lb.servers.iter().map(|s| s.report()).collect(),
                _ => Vec::new(),
            };
            let server_status = servers
                .iter()
                .map(|s| (s.url.clone(), if s.status == "up" { "UP" } else { "DOWN" }))
                .collect();
            ServiceView {
                name: info.name.clone(),
                provider: info.provider.clone(),
                status: if info.error.is_some() {
                    "disabled"
                } else {
                    "enabled"
                },
                error: info.error.clone(),
                config: Some(info.config.clone()),
                servers,
                server_status,
                used_by: snap
                    .routers
                    .values()
                    .filter(|r| r.service == info.name)
                    .map(|r| r.name.clone())
                    .collect(),
            }
        })
        .collect()
}

/// The overview document.
pub fn overview(rt: &Runtime) -> serde_json::Value {
    let snap = rt.snapshot();
    let svcs = services(rt);
    let servers: Vec<&ServerReport> = svcs.iter().flat_map(|s| &s.servers).collect();
    let providers = rt.providers.lock().map(|p| p.clone()).unwrap_or_default();
    let eps = rt
        .entry_points
        .lock()
        .map(|e| e.clone())
        .unwrap_or_default();
    json!({
        "entryPoints": eps.iter().map(|(n, a)| json!({"name": n, "address": a})).collect::<Vec<_>>(),
        "http": {
            "routers": {
                "total": snap.routers.len(),
                "enabled": snap.routers.values().filter(|r| r.status == "enabled").count(),
                "disabled": snap.routers.values().filter(|r| r.status != "enabled").count(),
            },
            "services": {
                "total": svcs.len(),
                "serversUp": servers.iter().filter(|s| s.status == "up").count(),
                "serversDown": servers.iter().filter(|s| s.status != "up").count(),
            },
            "middlewares": { "total": snap.middlewares.len() },
        },
        "providers": providers,
        "problems": snap.problems.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        "certificates": rt.certs.info(),
        "generation": rt.generation.load(std::sync::atomic::Ordering::Relaxed),
        "version": env!("CARGO_PKG_VERSION"),
    })
}

fn not_found(what: &str) -> Response<Body> {
    admin::text(StatusCode::NOT_FOUND, format!("{what} not found\n"))
}

/// The admin handler for `b3_common::AdminServer`.
pub fn handler(rt: Arc<Runtime>) -> Handler {
    Arc::new(move |req: Request<Incoming>| {
        let rt = rt.clone();
        Box::pin(async move { route(&rt, &req) })
    })
}

fn route(rt: &Runtime, req: &Request<Incoming>) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return admin::text(
            StatusCode::METHOD_NOT_ALLOWED,
            "the API is read-only: use GET\n",
        );
    }
    let path = req.uri().path();
    let ok = |v: &dyn erased::Json| v.respond();
    match path {
        "/" => {
            let mut r = admin::text(StatusCode::FOUND, "see /dashboard/\n");
            r.headers_mut()
                .insert(header::LOCATION, HeaderValue::from_static("/dashboard/"));
            r
        }
        "/dashboard" | "/dashboard/" => {
            let mut r = admin::text(StatusCode::OK, DASHBOARD);
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            r
        }
        "/api/overview" => ok(&overview(rt)),
        "/api/http/routers" => ok(&rt.snapshot().routers.values().cloned().collect::<Vec<_>>()),
        "/api/http/services" => ok(&services(rt)),
        "/api/http/middlewares" => ok(&rt
            .snapshot()
            .middlewares
            .values()
            .cloned()
            .collect::<Vec<_>>()),
        "/api/entrypoints" => ok(&overview(rt)["entryPoints"]),
        "/api/tls/certificates" => ok(&rt.certs.info()),
        "/api/providers" => ok(&rt.providers.lock().map(|p| p.clone()).unwrap_or_default()),
        p => {
            if let Some(name) = p.strip_prefix("/api/http/routers/") {
                match rt.snapshot().routers.get(name) {
                    Some(r) => ok(r),
                    None => not_found(&format!("router {name:?}")),
                }
            } else if let Some(name) = p.strip_prefix("/api/http/services/") {
                match services(rt).into_iter().find(|s| s.name == name) {
                    Some(s) => ok(&s),
                    None => not_found(&format!("service {name:?}")),
                }
            } else if let Some(name) = p.strip_prefix("/api/http/middlewares/") {
                match rt.snapshot().middlewares.get(name) {
                    Some(m) => ok(m),
                    None => not_found(&format!("middleware {name:?}")),
                }
            } else {
                not_found("page (try /dashboard/, /api/overview, /health or /metrics)")
            }
        }
    }
}

mod erased {
    use super::*;
    /// Lets one closure serialize values of different types.
    pub trait Json {
        fn respond(&self) -> Response<Body>;
    }
    impl<T: Serialize> Json for T {
        fn respond(&self) -> Response<Body> {
            admin::json(StatusCode::OK, self)
        }
    }
}
