//! `edge explain [SERVICE]`: why a Swarm service is (not) routed, with the
//! fix — rendered from the same diagnostics the API serves.
//!
//! The command computes the answer itself, straight from dockerd, with the
//! same flags and `EDGE_*` environment as the daemon: `docker exec <edge
//! container> edge explain shop` inherits the container's environment, so
//! it sees exactly what the running edge sees, and it works even when edge's
//! admin port is unreachable or the proxy is the thing being debugged.

use std::fmt::Write as _;

use super::labels::Severity;
use super::{build, docker, ServiceDiagnostic, Status, SwarmConfig, SwarmSnapshot};

/// The JSON the admin API serves at `/api/swarm/services`.
pub fn to_json(snapshot: &SwarmSnapshot) -> serde_json::Value {
    serde_json::json!({
        "generation": snapshot.generation,
        "dockerError": snapshot.docker_error,
        "global": snapshot.global,
        "services": snapshot.diagnostics,
    })
}

fn status_word(s: Status) -> &'static str {
    match s {
        Status::Routed => "routed",
        Status::NoServers => "NO SERVERS",
        Status::Error => "NOT ROUTED",
        Status::Excluded => "excluded",
        Status::Disabled => "disabled",
    }
}

/// A full report on one service.
pub fn render_service(d: &ServiceDiagnostic) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "service {} ({}): {}",
        d.service,
        super::backends::short_id(&d.id),
        status_word(d.status)
    );
    // The reason repeats the first error, which is listed below anyway.
    match d.status {
        Status::Error if !d.issues.is_empty() => {}
        Status::NoServers if !d.issues.is_empty() => {
            let _ = writeln!(out, "  published without servers: requests get 503");
        }
        _ => {
            let _ = writeln!(out, "  {}", d.reason);
        }
    }
    if !d.routers.is_empty() {
        let _ = writeln!(out, "  routers:");
        for (name, rule) in &d.routers {
            let _ = writeln!(out, "    {name}@swarm: {rule}");
        }
    }
    if !d.servers.is_empty() {
        let _ = writeln!(
            out,
            "  servers on {}: {}",
            d.network.as_deref().unwrap_or("?"),
            d.servers.join(", ")
        );
    }
    if matches!(d.status, Status::Routed | Status::NoServers | Status::Error) {
        let desired = d
            .tasks
            .desired
            .map(|n| n.to_string())
            .unwrap_or_else(|| "global".into());
        let mut line = format!("  tasks: {} running of {desired}", d.tasks.running);
        for (state, n) in &d.tasks.other {
            let _ = write!(line, ", {n} {state}");
        }
        let _ = writeln!(out, "{line}");
    }
    for i in &d.issues {
        let sev = match i.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        match &i.label {
            Some(l) => {
                let _ = writeln!(
                    out,
                    "  {sev}: label {l} on service {}: {}",
                    d.service, i.message
                );
            }
            None => {
                let _ = writeln!(out, "  {sev}: {}", i.message);
            }
        }
    }
    out
}

/// The report for `service`, or for every service that needs attention
/// (and a one-line summary of the others) when `service` is `None`.
pub fn render(snapshot: &SwarmSnapshot, service: Option<&str>) -> Result<String, String> {
    let mut out = String::new();
    if let Some(e) = &snapshot.docker_error {
        let _ = writeln!(out, "dockerd: {e}\n");
    }
    for g in &snapshot.global {
        let _ = writeln!(out, "error: {g}");
    }
    if let Some(name) = service {
        let Some(d) = snapshot.service(name) else {
            let known: Vec<&str> = snapshot
                .diagnostics
                .iter()
                .map(|d| d.service.as_str())
                .collect();
            return Err(format!(
                "no Swarm service named {name:?}; services: {}",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ));
        };
        out.push_str(&render_service(d));
        return Ok(out);
    }
    let (attention, fine): (Vec<_>, Vec<_>) = snapshot
        .diagnostics
        .iter()
        .partition(|d| d.needs_attention());
    for d in &attention {
        out.push_str(&render_service(d));
        out.push('\n');
    }
    for d in fine {
        let _ = writeln!(
            out,
            "{:<32} {:<10} {}",
            d.service,
            status_word(d.status),
            d.reason
        );
    }
    if snapshot.diagnostics.is_empty() {
        out.push_str("no Swarm services\n");
    }
    Ok(out)
}

/// Reads the cluster once and explains `service` (or every service).
pub async fn explain(
    cfg: &SwarmConfig,
    service: Option<&str>,
    json: bool,
) -> anyhow::Result<String> {
    let client = cfg.docker_client().map_err(anyhow::Error::msg)?;
    let container = cfg.container.clone().or_else(docker::detect_own_container);
    let state = client.fetch_state(container.as_deref()).await?;
    let snapshot = build(&state, cfg);
    if json {
        let v = match service {
            Some(name) => serde_json::to_value(
                snapshot
                    .service(name)
                    .ok_or_else(|| anyhow::anyhow!("no Swarm service named {name:?}"))?,
            )?,
            None => to_json(&snapshot),
        };
        return Ok(serde_json::to_string_pretty(&v)? + "\n");
    }
    render(&snapshot, service).map_err(anyhow::Error::msg)
}

/// Wraps the admin API's handler so that it also serves the diagnostics:
/// `GET /api/swarm/services` (everything, as [`to_json`]) and
/// `GET /api/swarm/services/<name or ID>` (one service). With no provider
/// (`rx` is `None`) those paths answer 404 saying how to turn it on.
pub fn admin_handler(
    rx: Option<tokio::sync::watch::Receiver<SwarmSnapshot>>,
    inner: b3_common::admin::Handler,
) -> b3_common::admin::Handler {
    use b3_common::admin;
    use hyper::{Method, StatusCode};
    std::sync::Arc::new(move |req| {
        let path = req.uri().path();
        let ours = path == "/api/swarm/services" || path.starts_with("/api/swarm/services/");
        if !ours || !(req.method() == Method::GET || req.method() == Method::HEAD) {
            return inner(req);
        }
        let resp = match &rx {
            None => admin::text(
                StatusCode::NOT_FOUND,
                "the Swarm provider is off: start edge with --swarm on (or mount the Docker socket)\n",
            ),
            Some(rx) => {
                let snap = rx.borrow();
                match path.strip_prefix("/api/swarm/services/") {
                    None => admin::json(StatusCode::OK, &to_json(&snap)),
                    Some(name) => match snap.service(name) {
                        Some(d) => admin::json(StatusCode::OK, d),
                        None => admin::text(
                            StatusCode::NOT_FOUND,
                            format!("no Swarm service named {name:?}\n"),
                        ),
                    },
                }
            }
        };
        Box::pin(async move { resp })
    })
}

#[cfg(test)]
mod tests {
    use super::super::{build, SwarmNetwork, SwarmService, SwarmState};
    use super::*;

    #[test]
    fn reports_name_the_service_the_label_and_the_fix() {
        let st = SwarmState {
            services: vec![
                SwarmService {
                    id: "abcdef0123456789".into(),
                    name: "shop".into(),
                    labels: [
                        ("traefik.enable".to_string(), "true".to_string()),
                        ("traefik.http.routers.web.rule".into(), "Host(shop)".into()),
                        (
                            "traefik.http.services.web.loadbalancer.server.port".into(),
                            "80".into(),
                        ),
                    ]
                    .into(),
                    networks: vec!["n".into()],
                    ..SwarmService::default()
                },
                SwarmService {
                    id: "x1".into(),
                    name: "quiet".into(),
                    ..SwarmService::default()
                },
            ],
            networks: vec![SwarmNetwork {
                id: "n".into(),
                name: "public".into(),
                ingress: false,
            }],
            edge_networks: Some(vec!["n".into()]),
            ..SwarmState::default()
        };
        let snap = build(&st, &SwarmConfig::default());
        let text = render(&snap, Some("shop")).unwrap();
        assert!(
            text.starts_with("service shop (abcdef012345): NOT ROUTED"),
            "{text}"
        );
        assert!(
            text.contains("error: label traefik.http.routers.web.rule on service shop: router web: rule: at column 6"),
            "{text}"
        );
        assert_eq!(text.matches("at column 6").count(), 1, "{text}");
        // By ID prefix too; unknown names list the known ones.
        assert!(render(&snap, Some("abcdef")).is_ok());
        let e = render(&snap, Some("nope")).unwrap_err();
        assert!(
            e.contains("services: quiet, shop") || e.contains("services: shop, quiet"),
            "{e}"
        );
        let all = render(&snap, None).unwrap();
        assert!(
            all.contains("service shop") && all.contains("quiet") && all.contains("disabled"),
            "{all}"
        );
        let v = to_json(&snap);
        assert_eq!(v["services"][1]["status"], "error");
        assert_eq!(
            v["services"][1]["issues"][0]["label"],
            "traefik.http.routers.web.rule"
        );
    }

    #[tokio::test]
    async fn the_admin_api_serves_the_diagnostics() {
        let mut snap = SwarmSnapshot {
            generation: 7,
            ..SwarmSnapshot::default()
        };
        snap.diagnostics.push(ServiceDiagnostic {
            service: "shop".into(),
            id: "abcdef012345".into(),
            status: Status::NoServers,
            reason: "no running task".into(),
            routers: Default::default(),
            servers: vec![],
            network: None,
            tasks: Default::default(),
            issues: vec![],
        });
        let (_tx, rx) = tokio::sync::watch::channel(snap);
        let inner: b3_common::admin::Handler = std::sync::Arc::new(|_req| {
            Box::pin(async { b3_common::admin::text(hyper::StatusCode::IM_A_TEAPOT, "inner\n") })
        });
        let registry = b3_common::admin::registry("edge", "test");
        let health: b3_common::Health = std::sync::Arc::new(|| b3_common::HealthStatus::Ok);
        let server = b3_common::AdminServer::bind(
            "127.0.0.1:0".parse().unwrap(),
            "edge",
            "test",
            registry,
            health,
        )
        .await
        .unwrap()
        .with_handler(admin_handler(Some(rx), inner));
        let addr = server.local_addr().unwrap();
        let (trigger, shutdown) = b3_common::shutdown::channel();
        let task = tokio::spawn(server.serve(shutdown));
        let get = |path: &'static str| {
            tokio::task::spawn_blocking(move || b3_tests::http::get(addr, path).unwrap())
        };
        let all = get("/api/swarm/services").await.unwrap();
        assert_eq!(all.status, 200);
        assert!(
            all.body.contains("\"generation\": 7") && all.body.contains("\"noServers\""),
            "{}",
            all.body
        );
        let one = get("/api/swarm/services/shop").await.unwrap();
        assert!(
            one.status == 200 && one.body.contains("no running task"),
            "{}",
            one.body
        );
        assert_eq!(get("/api/swarm/services/nope").await.unwrap().status, 404);
        assert_eq!(get("/api/http/routers").await.unwrap().status, 418);
        trigger.trigger();
        let _ = task.await;
    }
}
