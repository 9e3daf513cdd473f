//! Entry points: accept loops for `web` (plain HTTP) and `websecure` (TLS),
//! serving HTTP/1.1 and HTTP/2 (chosen by ALPN or the HTTP/2 preface) with
//! bounded connections, header sizes and timeouts, and a graceful drain on
//! shutdown.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::proxy::coalesce::Coalesce;
use crate::proxy::metrics::{EntrypointLabels, HandshakeLabels};
use crate::proxy::{handle, ConnInfo, Runtime};

/// Time in-flight requests get to finish on shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A bound entry point.
pub struct EntryPoint {
    /// `web` or `websecure`.
    pub name: &'static str,
    /// The socket.
    pub listener: TcpListener,
    /// TLS, for `websecure`.
    pub tls: Option<TlsAcceptor>,
}

fn builder(rt: &Runtime) -> auto::Builder<TokioExecutor> {
    let o = &rt.opts;
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(o.header_read_timeout)
        .max_buf_size(o.max_header_bytes.max(8192))
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(o.max_h2_streams)
        .max_header_list_size(o.max_header_bytes as u32)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20))
        // Rapid reset (CVE-2023-44487): bound resets a client may cause.
        .max_pending_accept_reset_streams(Some(64))
        .max_local_error_reset_streams(Some(256));
    b
}

/// Serves `ep` until `shutdown` fires, then drains.
pub async fn serve(ep: EntryPoint, rt: Arc<Runtime>, mut shutdown: b3_common::Shutdown) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let limit = Arc::new(Semaphore::new(rt.opts.max_connections));
    let builder = builder(&rt);
    let local_port = ep.listener.local_addr().map(|a| a.port()).unwrap_or(0);
    let name = ep.name;
    let open = rt
        .metrics
        .open_connections
        .get_or_create(&EntrypointLabels { entrypoint: name })
        .clone();
    loop {
        let permit = tokio::select! {
            _ = shutdown.wait() => break,
            p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.wait() => break,
            r = ep.listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(entrypoint = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let conn = ConnInfo {
            entrypoint: name,
            tls: ep.tls.is_some(),
            peer,
            local_port,
        };
        let rt = rt.clone();
        let rt_hs = rt.clone();
        let handshake_timeout = rt.opts.handshake_timeout;
        let tls = ep.tls.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let open = open.clone();
        tokio::spawn(async move {
            open.inc();
            let service = hyper::service::service_fn(move |req| {
                let rt = rt.clone();
                async move { Ok::<_, Infallible>(handle(rt.clone(), conn, req).await) }
            });
            let result = match tls {
                Some(acceptor) => {
                    // Deferred flushes during the handshake: the session
                    // ticket that ends it leaves with the first response
                    // (see coalesce.rs); the server's first flight still
                    // leaves before we wait for the client's answer.
                    let hs = tokio::time::timeout(
                        // A slow handshake is a slowloris too.
                        handshake_timeout,
                        acceptor
                            .accept(Coalesce::deferring_flush(stream))
                            .into_fallible(),
                    )
                    .await;
                    match hs {
                        Ok(Ok(mut s)) => {
                            count_handshake(&rt_hs, "ok");
                            // From now on a flush writes at once (HTTP/1
                            // flushes once per response), but TLS 1.3's
                            // ticket waits for the first response; what
                            // ends a TLS 1.2 handshake goes at the next read
                            // (the client waits for it).
                            let tls13 = s.get_ref().1.protocol_version()
                                == Some(rustls::ProtocolVersion::TLSv1_3);
                            s.get_mut().0.hold_until_write(tls13);
                            // ALPN already chose the protocol: skip sniffing for the HTTP/2 preface.
                            match s.get_ref().1.alpn_protocol() {
                                Some(b"h2") => {
                                    // HTTP/2 writes frame by frame: coalesce them into records.
                                    let io = TokioIo::new(Coalesce::deferring_flush(s));
                                    let builder = builder.http2_only();
                                    let c = builder.serve_connection_with_upgrades(io, service);
                                    watcher.watch(c.into_owned()).await
                                }
                                Some(b"http/1.1") => {
                                    let builder = builder.http1_only();
                                    let c = builder
                                        .serve_connection_with_upgrades(TokioIo::new(s), service);
                                    watcher.watch(c.into_owned()).await
                                }
                                _ => {
                                    let c = builder
                                        .serve_connection_with_upgrades(TokioIo::new(s), service);
                                    watcher.watch(c.into_owned()).await
                                }
                            }
                        }
                        Ok(Err((e, mut io))) => {
                            count_handshake(&rt_hs, "error");
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            // The alert saying why is still held back: send it.
                            let _ = tokio::time::timeout(
                                Duration::from_secs(1),
                                tokio::io::AsyncWriteExt::shutdown(&mut io),
                            )
                            .await;
                            Ok(())
                        }
                        Err(_) => {
                            count_handshake(&rt_hs, "timeout");
                            Ok(())
                        }
                    }
                }
                None => {
                    let c = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    watcher.watch(c.into_owned()).await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            open.dec();
            drop(permit);
        });
    }
    drop(ep.listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            entrypoint = name,
            "requests still running after the drain timeout"
        );
    }
}

/// Counts a handshake (kept separate so the hot path does not clone metrics).
pub fn count_handshake(rt: &Runtime, result: &'static str) {
    rt.metrics
        .handshakes
        .get_or_create(&HandshakeLabels { result })
        .inc();
}
