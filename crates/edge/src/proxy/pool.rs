//! Keep-alive HTTP/1.1 connections to backend servers: one small pool of
//! idle connections per server ([`Pool`], kept in the server's
//! [`ServerState`](super::balancer::ServerState)) and a [`Client`] that
//! takes a connection from it, or opens one, and sends a request.
//!
//! This replaces hyper-util's general-purpose client, which for every
//! request hashed a pool key under a shared lock, boxed its futures, raced a
//! pool checkout against a lazily built connect future and spawned a task
//! to put the connection back: ~3 % of edge's CPU time in a profile of
//! 1 KiB responses (perf), before counting the extra task.
//! Here the server is already known (the balancer picked it), so the pool
//! is a short list under an uncontended lock, and a connection goes back
//! when its response body has been read to the end.
//!
//! Behaviour kept from the old client: a request sent on a reused
//! connection that the server closed meanwhile (before any of it was
//! written) is sent again on a new connection; idle connections are kept
//! for a while and bounded in number; upgrades (WebSocket) work, the
//! connection then leaves the pool for good.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri};
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use tower_service::Service as _;

use crate::proxy::connector::Connector;
use crate::proxy::{Body, BoxError};

/// Idle connections of one server, most recently used last.
#[derive(Debug, Default)]
pub struct Pool {
    idle: Mutex<VecDeque<Idle>>,
}

#[derive(Debug)]
struct Idle {
    sender: SendRequest<Body>,
    since: Instant,
}

impl Pool {
    /// The most recently used idle connection that is still open, if any.
    /// Expired and closed ones met on the way are dropped (which closes
    /// them).
    fn take(&self, idle_timeout: Duration) -> Option<SendRequest<Body>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(c) = idle.pop_back() {
            if !c.sender.is_closed() && c.since.elapsed() < idle_timeout {
                return Some(c.sender);
            }
        }
        None
    }

    /// Returns a connection whose exchange is complete.
    fn put(&self, sender: SendRequest<Body>, max_idle: usize, idle_timeout: Duration) {
        if sender.is_closed() || max_idle == 0 {
            return;
        }
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        // Oldest first: drop what expired or would go over the bound.
        while let Some(front) = idle.front() {
            if idle.len() >= max_idle || now.duration_since(front.since) >= idle_timeout {
                idle.pop_front();
            } else {
                break;
            }
        }
        idle.push_back(Idle { sender, since: now });
    }

    /// Drops idle connections that expired or were closed by the server.
    pub fn sweep(&self, idle_timeout: Duration) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|c| !c.sender.is_closed() && c.since.elapsed() < idle_timeout);
    }

    /// Number of idle connections (for tests and the dashboard).
    pub fn idle_count(&self) -> usize {
        self.idle.lock().map(|i| i.len()).unwrap_or(0)
    }
}

/// Why a request to a backend failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No connection could be made (refused, timed out, TLS handshake).
    #[error("connect error")]
    Connect(#[source] BoxError),
    /// The connection failed during the exchange.
    #[error(transparent)]
    Request(#[from] hyper::Error),
}

impl Error {
    /// The server could not be reached at all (the request never left).
    pub fn is_connect(&self) -> bool {
        matches!(self, Error::Connect(_))
    }
}

/// Sends requests to backend servers over pooled HTTP/1.1 connections.
pub struct Client {
    connector: Connector,
    h1: http1::Builder,
    max_idle: usize,
    idle_timeout: Duration,
}

impl Client {
    /// A client connecting with `connector`, keeping at most `max_idle`
    /// idle connections per pool for `idle_timeout`, and reading at most
    /// `max_buf` bytes of a response before its head must be complete.
    pub fn new(
        connector: Connector,
        max_idle: usize,
        idle_timeout: Duration,
        max_buf: usize,
    ) -> Client {
        let mut h1 = http1::Builder::new();
        h1.max_buf_size(max_buf);
        Client {
            connector,
            h1,
            max_idle,
            idle_timeout,
        }
    }

    /// How long idle connections are kept.
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    async fn connect(&self, target: &Uri) -> Result<SendRequest<Body>, Error> {
        let io = self
            .connector
            .clone()
            .call(target.clone())
            .await
            .map_err(Error::Connect)?;
        let (sender, conn) = self.h1.handshake(io).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "backend connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// Sends `req` (origin-form URI, `Host` set) to the server at `target`
    /// (scheme and authority), on an idle connection of `pool` if there is
    /// one, else on a new connection (which joins `pool` afterwards).
    /// Without a pool the connection is used once.
    pub async fn send(
        &self,
        pool: Option<&Arc<Pool>>,
        target: &Uri,
        mut req: Request<Body>,
    ) -> Result<Response<PooledBody>, Error> {
        loop {
            let reused = pool.and_then(|p| p.take(self.idle_timeout));
            let is_reused = reused.is_some();
            let mut sender = match reused {
                Some(mut s) => {
                    // Normally ready at once: the connection's task has
                    // finished the previous exchange.
                    if s.ready().await.is_err() {
                        continue;
                    }
                    s
                }
                None => self.connect(target).await?,
            };
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let keep = match pool {
                        Some(p) if resp.status() != StatusCode::SWITCHING_PROTOCOLS => {
                            Some((sender, p.clone()))
                        }
                        _ => None,
                    };
                    let (parts, inner) = resp.into_parts();
                    let mut body = PooledBody {
                        inner,
                        back: keep,
                        max_idle: self.max_idle,
                        idle_timeout: self.idle_timeout,
                    };
                    if body.inner.is_end_stream() {
                        body.give_back();
                    }
                    return Ok(Response::from_parts(parts, body));
                }
                Err(mut e) => match e.take_message() {
                    // The server closed an idle connection as we sent on
                    // it, and none of the request left: try another one.
                    Some(r) if is_reused => {
                        req = r;
                        continue;
                    }
                    _ => return Err(Error::Request(e.into_error())),
                },
            }
        }
    }
}

/// A backend response body; its connection goes back to the pool once the
/// body has been read to the end (a body dropped before that closes it).
#[derive(Debug)]
pub struct PooledBody {
    inner: Incoming,
    back: Option<(SendRequest<Body>, Arc<Pool>)>,
    max_idle: usize,
    idle_timeout: Duration,
}

impl PooledBody {
    fn give_back(&mut self) {
        if let Some((sender, pool)) = self.back.take() {
            pool.put(sender, self.max_idle, self.idle_timeout);
        }
    }
}

impl hyper::body::Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(None) => self.give_back(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.give_back(),
            Poll::Ready(Some(Err(_))) => self.back = None,
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use hyper_util::client::legacy::connect::HttpConnector;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A backend answering `GET` with "ok"; counts connections and closes
    /// each after `per_conn` responses.
    async fn backend(per_conn: usize) -> (Uri, Arc<AtomicUsize>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let c2 = conns.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                c2.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    for _ in 0..per_conn {
                        let mut got = Vec::new();
                        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                            match s.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => got.extend_from_slice(&buf[..n]),
                            }
                        }
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .await;
                    }
                    // Closes without saying so, as an idle timeout would.
                });
            }
        });
        (format!("http://{addr}/").parse().unwrap(), conns)
    }

    fn client() -> Client {
        let connector = Connector::new(HttpConnector::new(), false).unwrap();
        Client::new(connector, 8, Duration::from_secs(90), 64 * 1024)
    }

    fn get() -> Request<Body> {
        let mut r = Request::new(crate::proxy::empty());
        *r.uri_mut() = Uri::from_static("/");
        r.headers_mut()
            .insert(http::header::HOST, http::HeaderValue::from_static("b"));
        r
    }

    async fn fetch(c: &Client, pool: &Arc<Pool>, target: &Uri) -> String {
        let resp = c.send(Some(pool), target, get()).await.unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8_lossy(&body).into_owned()
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_response_is_read() {
        let (target, conns) = backend(100).await;
        let (c, pool) = (client(), Arc::new(Pool::default()));
        for _ in 0..5 {
            assert_eq!(fetch(&c, &pool, &target).await, "ok");
        }
        assert_eq!(conns.load(Ordering::SeqCst), 1, "one connection for all");
        assert_eq!(pool.idle_count(), 1);
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_is_replaced() {
        let (target, conns) = backend(1).await;
        let (c, pool) = (client(), Arc::new(Pool::default()));
        for _ in 0..3 {
            assert_eq!(fetch(&c, &pool, &target).await, "ok");
            // Let the close reach the connection's task.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(conns.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn an_unread_response_does_not_return_its_connection() {
        let (target, conns) = backend(100).await;
        let (c, pool) = (client(), Arc::new(Pool::default()));
        let resp = c.send(Some(&pool), &target, get()).await.unwrap();
        drop(resp);
        assert_eq!(pool.idle_count(), 0);
        assert_eq!(fetch(&c, &pool, &target).await, "ok");
        assert_eq!(conns.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let target: Uri = format!("http://{}/", l.local_addr().unwrap())
            .parse()
            .unwrap();
        drop(l);
        let c = client();
        let e = c.send(None, &target, get()).await.unwrap_err();
        assert!(e.is_connect(), "{e}");
        assert!(
            crate::proxy::error_chain(&e).contains("refused"),
            "{}",
            crate::proxy::error_chain(&e)
        );
    }

    #[tokio::test]
    async fn idle_connections_are_bounded_and_expire() {
        let (target, _) = backend(100).await;
        let c = client();
        let pool = Pool::default();
        for _ in 0..3 {
            let s = c.connect(&target).await.unwrap();
            pool.put(s, 2, Duration::from_secs(90));
        }
        assert_eq!(pool.idle_count(), 2, "bounded");
        assert!(pool.take(Duration::from_secs(90)).is_some());
        assert_eq!(pool.idle_count(), 1);
        assert!(pool.take(Duration::ZERO).is_none(), "expired");
        assert_eq!(pool.idle_count(), 0);
    }
}
