//! QUIC transport with mutual TLS: one bidirectional stream per request,
//! one cached connection per peer.
//!
//! The server hands every request to a [`Service`] along with a [`Peer`]
//! saying whether the peer presented a certificate signed by the cluster
//! CA. A certificate from another CA fails the TLS handshake itself; a peer
//! without any certificate gets through the handshake only so that it can
//! ask to join — the service must refuse it everything else.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use tokio::sync::Mutex;

use super::identity::{IdentityError, SERVER_NAME};
use super::wire::{self, Frame, WireError};

/// Time a peer has to send its request once it opened a stream.
const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Who sent a request.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    /// Remote address.
    pub addr: SocketAddr,
    /// Presented a certificate signed by the cluster CA.
    pub authenticated: bool,
}

/// Boxed future returned by a [`Service`].
pub type ServiceFuture = Pin<Box<dyn Future<Output = (Vec<u8>, Bytes)> + Send>>;
/// Handles one request frame, returns the response (header, body).
pub type Service = Arc<dyn Fn(Peer, Frame) -> ServiceFuture + Send + Sync>;

/// Transport errors; each names the peer.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Could not set up the endpoint.
    #[error("QUIC endpoint on {addr}: {source} (is the port free? choose another with --listen)")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// TLS setup.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// Connection to a peer failed (unreachable, handshake refused...).
    #[error("connecting to {addr}: {reason}")]
    Connect {
        /// Peer.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The request did not complete in time.
    #[error("request to {addr} timed out after {after:?}")]
    Timeout {
        /// Peer.
        addr: SocketAddr,
        /// Budget.
        after: Duration,
    },
    /// The exchange broke.
    #[error("request to {addr}: {source}")]
    Wire {
        /// Peer.
        addr: SocketAddr,
        /// What went wrong.
        #[source]
        source: WireError,
    },
}

fn transport_config() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(Duration::from_secs(1)));
    // Dead peers are noticed within a few seconds.
    t.max_idle_timeout(quinn::IdleTimeout::try_from(Duration::from_secs(5)).ok());
    // Room for a whole 4 MiB chunk in flight per stream.
    t.stream_receive_window(quinn::VarInt::from_u32(8 << 20));
    t.receive_window(quinn::VarInt::from_u32(64 << 20));
    t.send_window(64 << 20);
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(256));
    // Path-MTU discovery above Ethernet size: on loopback (MTU 65536) or
    // jumbo-frame links datagrams grow to [`MTU_UPPER_BOUND`], so a 4 MiB
    // chunk is ~650 packets to build, encrypt and acknowledge instead of
    // ~3000. The handshake still starts at the safe 1200 bytes
    // (`initial_mtu`), probes that do not fit the path are just lost, and a
    // black hole (a path that later shrinks) drops back to 1200 and probes
    // again, so 1500-byte networks keep working unchanged.
    let mut mtud = quinn::MtuDiscoveryConfig::default();
    mtud.upper_bound(MTU_UPPER_BOUND);
    t.mtu_discovery_config(Some(mtud));
    Arc::new(t)
}

/// Largest UDP payload path-MTU discovery goes for. Not the 64 KiB
/// loopback allows: quinn 0.11 sends up to 10 datagrams per
/// segmentation-offload (GSO) `sendmsg`, and the kernel refuses a batch
/// over 64 KiB in total (`EMSGSIZE`, which quinn-udp drops silently as a
/// failed MTU probe). With 64 KiB datagrams every batch was lost, the path
/// was declared a black hole and fell back to 1200 bytes — worse than
/// Ethernet size. 10 × 6500 stays under the IPv6 limit of 65487 bytes.
const MTU_UPPER_BOUND: u16 = 6500;

/// Socket buffers asked of the kernel (it caps them at
/// `net.core.{r,w}mem_max`): room for a burst of large datagrams, so a
/// busy receiver does not drop them and make the sender back off.
const SOCKET_BUFFER: usize = 4 << 20;

/// Endpoint settings: advertises [`MTU_UPPER_BOUND`] as the largest
/// datagram we accept (the default, 1472, would cap the peer's path-MTU
/// discovery at Ethernet size even on loopback).
fn endpoint_config() -> quinn::EndpointConfig {
    let mut c = quinn::EndpointConfig::default();
    // In range by construction (1200..=65527).
    let _ = c.max_udp_payload_size(MTU_UPPER_BOUND);
    c
}

/// A UDP socket bound to `addr` with large buffers (best effort).
fn udp_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        let _ = socket.set_only_v6(false);
    }
    if let Err(e) = socket.set_recv_buffer_size(SOCKET_BUFFER) {
        tracing::debug!(error = %e, "could not raise the UDP receive buffer");
    }
    if let Err(e) = socket.set_send_buffer_size(SOCKET_BUFFER) {
        tracing::debug!(error = %e, "could not raise the UDP send buffer");
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

fn endpoint(
    addr: SocketAddr,
    server: Option<quinn::ServerConfig>,
) -> std::io::Result<quinn::Endpoint> {
    quinn::Endpoint::new(
        endpoint_config(),
        server,
        udp_socket(addr)?,
        Arc::new(quinn::TokioRuntime),
    )
}

/// A QUIC endpoint that calls peers and (optionally) serves requests.
pub struct Transport {
    endpoint: quinn::Endpoint,
    conns: std::sync::Mutex<HashMap<SocketAddr, Arc<Mutex<Option<quinn::Connection>>>>>,
}

impl Transport {
    /// Binds a serving endpoint on `addr`.
    pub fn bind(
        addr: SocketAddr,
        server: rustls::ServerConfig,
        client: rustls::ClientConfig,
    ) -> Result<Arc<Self>, NetError> {
        let crypto = QuicServerConfig::try_from(server)
            .map_err(|e| IdentityError::Tls(rustls::Error::General(e.to_string())))?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server_config.transport_config(transport_config());
        let mut endpoint = endpoint(addr, Some(server_config))
            .map_err(|source| NetError::Bind { addr, source })?;
        endpoint.set_default_client_config(client_config(client)?);
        Ok(Arc::new(Self {
            endpoint,
            conns: Default::default(),
        }))
    }

    /// A client-only endpoint (CLI, joiner).
    pub fn client(client: rustls::ClientConfig) -> Result<Arc<Self>, NetError> {
        let addr: SocketAddr = ([0, 0, 0, 0], 0).into();
        let mut endpoint =
            endpoint(addr, None).map_err(|source| NetError::Bind { addr, source })?;
        endpoint.set_default_client_config(client_config(client)?);
        Ok(Arc::new(Self {
            endpoint,
            conns: Default::default(),
        }))
    }

    /// Local address of the endpoint.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.endpoint.local_addr().ok()
    }

    /// Sends one request and waits for its response, within `timeout`.
    pub async fn call(
        &self,
        addr: SocketAddr,
        header: &[u8],
        body: &[u8],
        timeout: Duration,
    ) -> Result<Frame, NetError> {
        // The stream copies the bytes anyway; here once, up front.
        self.call_bytes(addr, header, Bytes::copy_from_slice(body), timeout)
            .await
    }

    /// [`Transport::call`] with an owned body, handed to the stream
    /// without a copy (chunk data).
    pub async fn call_bytes(
        &self,
        addr: SocketAddr,
        header: &[u8],
        body: Bytes,
        timeout: Duration,
    ) -> Result<Frame, NetError> {
        match tokio::time::timeout(timeout, self.call_inner(addr, header, body)).await {
            Ok(r) => r,
            Err(_) => Err(NetError::Timeout {
                addr,
                after: timeout,
            }),
        }
    }

    /// Sends raw bytes as a request (may be a malformed or truncated
    /// frame) and reads the reply: for tests and diagnostics.
    pub async fn call_raw(
        &self,
        addr: SocketAddr,
        raw: &[u8],
        timeout: Duration,
    ) -> Result<Frame, NetError> {
        let run = async {
            let conn = self.connection(addr).await?;
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| NetError::Connect {
                addr,
                reason: e.to_string(),
            })?;
            send.write_all(raw).await.map_err(|e| NetError::Wire {
                addr,
                source: WireError::Io(e.into()),
            })?;
            let _ = send.finish();
            wire::read_frame(&mut recv)
                .await
                .map_err(|source| NetError::Wire { addr, source })
        };
        tokio::time::timeout(timeout, run)
            .await
            .unwrap_or(Err(NetError::Timeout {
                addr,
                after: timeout,
            }))
    }

    async fn call_inner(
        &self,
        addr: SocketAddr,
        header: &[u8],
        body: Bytes,
    ) -> Result<Frame, NetError> {
        let conn = self.connection(addr).await?;
        let wire_err = |source| NetError::Wire { addr, source };
        let (mut send, mut recv) = match conn.open_bi().await {
            Ok(s) => s,
            Err(e) => {
                self.forget(addr);
                return Err(NetError::Connect {
                    addr,
                    reason: e.to_string(),
                });
            }
        };
        send_frame(&mut send, header, body)
            .await
            .map_err(wire_err)?;
        let _ = send.finish();
        wire::read_frame(&mut recv).await.map_err(wire_err)
    }

    async fn connection(&self, addr: SocketAddr) -> Result<quinn::Connection, NetError> {
        let slot = {
            let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
            conns.entry(addr).or_default().clone()
        };
        let mut slot = slot.lock().await;
        if let Some(c) = slot.as_ref() {
            if c.close_reason().is_none() {
                return Ok(c.clone());
            }
        }
        let connect_err = |reason: String| NetError::Connect { addr, reason };
        let conn = self
            .endpoint
            .connect(addr, SERVER_NAME)
            .map_err(|e| connect_err(e.to_string()))?
            .await
            .map_err(|e| connect_err(e.to_string()))?;
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Current path MTU towards `addr`, when connected (diagnostics).
    pub fn path_mtu(&self, addr: SocketAddr) -> Option<u16> {
        let slot = {
            let conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
            conns.get(&addr)?.clone()
        };
        let guard = slot.try_lock().ok()?;
        guard.as_ref().map(|c| c.stats().path.current_mtu)
    }

    fn forget(&self, addr: SocketAddr) {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        conns.remove(&addr);
    }

    /// Serves incoming connections until `shutdown` fires.
    pub async fn serve(self: Arc<Self>, service: Service, mut shutdown: b3_common::Shutdown) {
        loop {
            let incoming = tokio::select! {
                _ = shutdown.wait() => break,
                i = self.endpoint.accept() => match i { Some(i) => i, None => break },
            };
            let service = service.clone();
            tokio::spawn(async move {
                let remote = incoming.remote_address();
                match incoming.await {
                    Ok(conn) => serve_connection(conn, service).await,
                    Err(e) => {
                        tracing::info!(peer = %remote, error = %e, "refused QUIC connection (TLS handshake failed)")
                    }
                }
            });
        }
        self.endpoint
            .close(quinn::VarInt::from_u32(0), b"shutting down");
    }

    /// Closes every connection at once.
    pub fn close(&self) {
        self.endpoint.close(quinn::VarInt::from_u32(0), b"closing");
    }
}

fn client_config(client: rustls::ClientConfig) -> Result<quinn::ClientConfig, NetError> {
    let crypto = QuicClientConfig::try_from(client)
        .map_err(|e| IdentityError::Tls(rustls::Error::General(e.to_string())))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    cfg.transport_config(transport_config());
    Ok(cfg)
}

/// Writes one frame (see [`wire`]); the body goes to the stream as is,
/// without the copy `write_all` would make.
async fn send_frame(
    send: &mut quinn::SendStream,
    header: &[u8],
    body: Bytes,
) -> Result<(), WireError> {
    let mut head = Vec::with_capacity(8 + header.len());
    head.extend_from_slice(&(header.len() as u32).to_be_bytes());
    head.extend_from_slice(&(body.len() as u32).to_be_bytes());
    head.extend_from_slice(header);
    send.write_all(&head)
        .await
        .map_err(|e| WireError::Io(e.into()))?;
    // Nothing more to write for an empty body: touching the stream again
    // could meet the peer's STOP_SENDING (it stops reading once it has the
    // whole frame) and turn a complete request into an error.
    if body.is_empty() {
        return Ok(());
    }
    send.write_chunk(body)
        .await
        .map_err(|e| WireError::Io(e.into()))
}

async fn serve_connection(conn: quinn::Connection, service: Service) {
    let peer = Peer {
        addr: conn.remote_address(),
        // The verifier only lets through chains signed by the cluster CA,
        // so any certificate here is a valid one.
        authenticated: conn
            .peer_identity()
            .and_then(|id| {
                id.downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>()
                    .ok()
            })
            .is_some_and(|certs| !certs.is_empty()),
    };
    loop {
        let (mut send, mut recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(_) => return,
        };
        let service = service.clone();
        tokio::spawn(async move {
            let frame =
                match tokio::time::timeout(REQUEST_READ_TIMEOUT, wire::read_frame(&mut recv)).await
                {
                    Ok(Ok(f)) => f,
                    Ok(Err(e)) => {
                        tracing::info!(peer = %peer.addr, error = %e, "bad request frame");
                        let _ = send.reset(quinn::VarInt::from_u32(1));
                        return;
                    }
                    Err(_) => {
                        let _ = send.reset(quinn::VarInt::from_u32(2));
                        return;
                    }
                };
            let (header, body) = service(peer, frame).await;
            if send_frame(&mut send, &header, body).await.is_ok() {
                let _ = send.finish();
                // Let the response drain before the stream is dropped.
                let _ = send.stopped().await;
            }
        });
    }
}
