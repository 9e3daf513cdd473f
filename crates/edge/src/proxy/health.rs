//! Active health checks: every server of a service with a `healthCheck`
//! is probed at its interval; a failing probe takes the server out of
//! rotation until a probe passes again. Also keeps the `edge_backend_up`
//! gauge current for every server.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{header, HeaderValue, Method, Request};
use http_body_util::BodyExt;

use crate::proxy::balancer::ServerState;
use crate::proxy::metrics::ServerLabels;
use crate::proxy::table::ServiceRt;
use crate::proxy::{empty, Runtime};

/// How often the scheduler looks for due checks.
const TICK: Duration = Duration::from_millis(250);
/// How often idle backend connections are looked over.
const SWEEP: Duration = Duration::from_secs(10);

/// Runs until `shutdown` fires.
pub async fn run(rt: Arc<Runtime>, mut shutdown: b3_common::Shutdown) {
    let mut last: HashMap<(String, String), Instant> = HashMap::new();
    let mut running: HashMap<(String, String), tokio::task::JoinHandle<()>> = HashMap::new();
    let mut last_sweep = Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.wait() => break,
            _ = tokio::time::sleep(TICK) => {}
        }
        let snap = rt.snapshot();
        // Close backend connections that sat idle too long (a busy pool
        // does this as it goes; this is for pools nobody uses any more).
        let sweep = last_sweep.elapsed() >= SWEEP;
        if sweep {
            last_sweep = Instant::now();
        }
        let mut seen = Vec::new();
        for svc in snap.services.values() {
            let ServiceRt::Lb { name, lb, .. } = &**svc else {
                continue;
            };
            for s in &lb.servers {
                if sweep {
                    s.pool.sweep(rt.client.idle_timeout());
                }
                rt.metrics
                    .backend_up
                    .get_or_create(&ServerLabels {
                        service: name.clone(),
                        url: s.url.clone(),
                    })
                    .set(i64::from(s.is_available()));
                let Some(hc) = &lb.health_check else { continue };
                let key = (name.clone(), s.url.clone());
                seen.push(key.clone());
                let interval = hc.interval.map(|d| d.0).unwrap_or(Duration::from_secs(30));
                if last.get(&key).is_some_and(|t| t.elapsed() < interval) {
                    continue;
                }
                if running.get(&key).is_some_and(|h| !h.is_finished()) {
                    continue;
                }
                last.insert(key.clone(), Instant::now());
                let (rt2, s2, hc2, svc_name) = (rt.clone(), s.clone(), hc.clone(), name.clone());
                running.insert(
                    key,
                    tokio::spawn(async move { check(&rt2, &svc_name, &s2, &hc2).await }),
                );
            }
        }
        last.retain(|k, _| seen.contains(k));
        running.retain(|k, _| seen.contains(k));
    }
    for (_, h) in running {
        h.abort();
    }
}

async fn check(rt: &Runtime, service: &str, s: &Arc<ServerState>, hc: &crate::config::HealthCheck) {
    let timeout = hc.timeout.map(|d| d.0).unwrap_or(Duration::from_secs(5));
    let port = hc.port.unwrap_or(s.addr.port);
    let tls = match hc.scheme.as_deref() {
        Some(sc) => sc == "https",
        None => s.addr.tls,
    };
    let uri = format!(
        "{}://{}:{port}{}",
        if tls { "https" } else { "http" },
        s.addr.host,
        hc.path
    );
    let result: Result<(), String> = async {
        let full: http::Uri = uri
            .parse()
            .map_err(|e| format!("bad health check URL {uri}: {e}"))?;
        let mut parts = full.into_parts();
        let origin_form: http::Uri = parts
            .path_and_query
            .take()
            .map(http::Uri::from)
            .unwrap_or_else(|| http::Uri::from_static("/"));
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        let target =
            http::Uri::from_parts(parts).map_err(|e| format!("bad health check URL {uri}: {e}"))?;
        let mut req = Request::new(empty());
        *req.uri_mut() = origin_form;
        *req.method_mut() = hc
            .method
            .as_deref()
            .map(|m| Method::from_bytes(m.as_bytes()))
            .transpose()
            .map_err(|_| "bad method".to_string())?
            .unwrap_or(Method::GET);
        let host = hc
            .hostname
            .clone()
            .unwrap_or_else(|| format!("{}:{port}", s.addr.host));
        if let Ok(v) = HeaderValue::from_str(&host) {
            req.headers_mut().insert(header::HOST, v);
        }
        for (k, v) in &hc.headers {
            if let (Ok(k), Ok(v)) = (
                header::HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v),
            ) {
                req.headers_mut().insert(k, v);
            }
        }
        // The server's own pool when the check goes where requests go.
        let pool = (port == s.addr.port && tls == s.addr.tls).then_some(&s.pool);
        let resp = tokio::time::timeout(timeout, rt.client.send(pool, &target, req))
            .await
            .map_err(|_| format!("health check {uri}: no answer within {timeout:?}"))?
            .map_err(|e| format!("health check {uri}: {}", super::error_chain(&e)))?;
        let status = resp.status();
        // Drain (bounded by the timeout) so the connection can be reused.
        let _ = tokio::time::timeout(timeout, resp.into_body().collect()).await;
        let ok = match hc.status {
            Some(want) => status.as_u16() == want,
            None => status.is_success() || status.is_redirection(),
        };
        if ok {
            Ok(())
        } else {
            Err(format!("health check {uri}: status {status}"))
        }
    }
    .await;
    let ok = result.is_ok();
    let err = result.err();
    if s.set_healthy(ok, err.clone()) {
        if ok {
            tracing::info!(service, server = %s.url, "server is healthy again");
        } else {
            tracing::warn!(service, server = %s.url, error = ?err, "server failed its health check; out of rotation");
        }
    }
}
