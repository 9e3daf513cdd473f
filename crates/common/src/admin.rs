//! The admin HTTP endpoint every daemon serves on its admin port:
//! `GET /health` (JSON, 200 when serving, 503 when not) and `GET /metrics`
//! (Prometheus/OpenMetrics text). A daemon adds its own routes (dashboard,
//! status, object API) through a [`Handler`]; anything neither matches is 404.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::shutdown::Shutdown;

/// Error type carried by admin response bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Response body type of the admin endpoint (streaming allowed).
pub type Body = BoxBody<Bytes, BoxError>;
/// Boxed future returned by a [`Handler`].
pub type HandlerFuture = Pin<Box<dyn Future<Output = Response<Body>> + Send>>;
/// A daemon's own routes, tried after `/health` and `/metrics`.
pub type Handler = Arc<dyn Fn(Request<Incoming>) -> HandlerFuture + Send + Sync>;
/// Reports the daemon's health for `/health`.
pub type Health = Arc<dyn Fn() -> HealthStatus + Send + Sync>;

/// Most connections the admin endpoint serves at once; more wait in accept.
const MAX_CONNECTIONS: usize = 256;
/// Time a client has to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Time in-flight admin requests get to finish on shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// What `/health` reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", content = "detail", rename_all = "lowercase")]
pub enum HealthStatus {
    /// Serving normally.
    Ok,
    /// Serving, with a problem worth a look (still HTTP 200).
    Degraded(String),
    /// Not serving (HTTP 503): orchestrators should not send traffic here.
    Failing(String),
}

/// A body holding `bytes` in full.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|e| match e {}).boxed()
}

/// A small text response, for handlers.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// A JSON response, for handlers.
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    match serde_json::to_vec_pretty(value) {
        Ok(mut bytes) => {
            bytes.push(b'\n');
            let mut resp = Response::new(full(bytes));
            *resp.status_mut() = status;
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            resp
        }
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding JSON: {e}\n"),
        ),
    }
}

/// A registry with the `b3_build_info{binary,version}` metric already in it.
pub fn registry(binary: &'static str, version: &'static str) -> Registry {
    let mut registry = Registry::default();
    registry.register(
        "b3_build",
        "Build of this daemon",
        Info::new(vec![("binary", binary), ("version", version)]),
    );
    registry
}

struct State {
    binary: &'static str,
    version: &'static str,
    registry: Arc<Registry>,
    health: Health,
    handler: Option<Handler>,
}

/// The admin HTTP server, bound and ready to [`serve`](AdminServer::serve).
pub struct AdminServer {
    listener: TcpListener,
    state: Arc<State>,
}

impl AdminServer {
    /// Binds the admin port. Fails with a message naming the address.
    pub async fn bind(
        addr: SocketAddr,
        binary: &'static str,
        version: &'static str,
        registry: Registry,
        health: Health,
    ) -> anyhow::Result<Self> {
        use anyhow::Context;
        let listener = TcpListener::bind(addr).await.with_context(|| {
            format!("binding the admin endpoint on {addr} (is another process using it? pick another with --admin-addr)")
        })?;
        Ok(Self {
            listener,
            state: Arc::new(State {
                binary,
                version,
                registry: Arc::new(registry),
                health,
                handler: None,
            }),
        })
    }

    /// Adds the daemon's own routes.
    pub fn with_handler(mut self, handler: Handler) -> Self {
        if let Some(state) = Arc::get_mut(&mut self.state) {
            state.handler = Some(handler);
        }
        self
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` fires, then lets in-flight requests finish
    /// (bounded by a short drain timeout).
    pub async fn serve(self, mut shutdown: Shutdown) {
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let addr = self.listener.local_addr().ok();
        tracing::info!(addr = ?addr, "admin endpoint listening");
        loop {
            let permit = tokio::select! {
                _ = shutdown.wait() => break,
                p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            };
            let (stream, peer) = tokio::select! {
                _ = shutdown.wait() => break,
                r = self.listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "admin accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            // Streamed responses on keep-alive connections would otherwise
            // wait ~40 ms for Nagle + delayed ACK.
            let _ = stream.set_nodelay(true);
            let state = self.state.clone();
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&state, req).await) }
            });
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(64 * 1024);
            let conn = builder
                .serve_connection(TokioIo::new(stream), service)
                .into_owned();
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(%peer, error = %e, "admin connection ended with an error");
                }
                drop(permit);
            });
        }
        if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("admin endpoint: requests still running after the drain timeout");
        }
    }
}

async fn route(state: &State, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    let is_read = req.method() == Method::GET || req.method() == Method::HEAD;
    match path {
        "/health" if is_read => {
            let status = (state.health)();
            let code = match status {
                HealthStatus::Failing(_) => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::OK,
            };
            #[derive(Serialize)]
            struct Report<'a> {
                binary: &'a str,
                version: &'a str,
                #[serde(flatten)]
                health: HealthStatus,
            }
            json(
                code,
                &Report {
                    binary: state.binary,
                    version: state.version,
                    health: status,
                },
            )
        }
        "/metrics" if is_read => {
            let mut out = String::with_capacity(4096);
            match encode(&mut out, &state.registry) {
                Ok(()) => {
                    let mut resp = text(StatusCode::OK, out);
                    resp.headers_mut().insert(
                        header::CONTENT_TYPE,
                        header::HeaderValue::from_static(
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        ),
                    );
                    resp
                }
                Err(e) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("encoding metrics: {e}\n"),
                ),
            }
        }
        "/health" | "/metrics" => {
            let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
            resp.headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
            resp
        }
        _ => match &state.handler {
            Some(handler) => handler(req).await,
            None => text(
                StatusCode::NOT_FOUND,
                "not found: try /health or /metrics\n",
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, request: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_health_metrics_and_custom_routes() {
        let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let f = failing.clone();
        let health: Health = Arc::new(move || {
            if f.load(std::sync::atomic::Ordering::SeqCst) {
                HealthStatus::Failing("disk gone".into())
            } else {
                HealthStatus::Ok
            }
        });
        let handler: Handler = Arc::new(|req| {
            Box::pin(async move {
                if req.uri().path() == "/hello" {
                    text(StatusCode::OK, "hi\n")
                } else {
                    text(StatusCode::NOT_FOUND, "nope\n")
                }
            })
        });
        let server = AdminServer::bind(
            "127.0.0.1:0".parse().unwrap(),
            "test",
            "9.9.9",
            registry("test", "9.9.9"),
            health,
        )
        .await
        .unwrap()
        .with_handler(handler);
        let addr = server.local_addr().unwrap();
        let (trigger, shutdown) = crate::shutdown::channel();
        let task = tokio::spawn(server.serve(shutdown));

        let r = get(
            addr,
            "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(r.contains("\"status\": \"ok\""), "{r}");
        failing.store(true, std::sync::atomic::Ordering::SeqCst);
        let r = get(
            addr,
            "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 503"), "{r}");
        assert!(r.contains("disk gone"), "{r}");

        let r = get(
            addr,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(
            r.contains("b3_build_info{binary=\"test\",version=\"9.9.9\"} 1"),
            "{r}"
        );
        assert!(r.contains("# EOF"), "{r}");

        let r = get(
            addr,
            "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 405"), "{r}");
        let r = get(
            addr,
            "GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 200") && r.ends_with("hi\n"), "{r}");

        // A garbage request gets an error, and the server keeps serving.
        let r = get(addr, "NOT HTTP AT ALL\r\n\r\n").await;
        assert!(r.is_empty() || r.starts_with("HTTP/1.1 400"), "{r}");
        let r = get(
            addr,
            "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 503"), "{r}");

        trigger.trigger();
        tokio::time::timeout(Duration::from_secs(6), task)
            .await
            .unwrap()
            .unwrap();
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }
}
