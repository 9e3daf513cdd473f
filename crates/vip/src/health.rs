//! Health checks that move the VIP: TCP connect, HTTP(S) GET with an
//! expected status, and a command's exit code. Each check runs as its own
//! task at its interval, counts successes and failures in a row (rise /
//! fall) and publishes every change; [`effective`] turns the results into
//! the priority and fault flag the state machine gets.
//!
//! Weights follow keepalived: a positive weight is added while the check is
//! up, a negative one while it is down, and a check with weight 0 puts the
//! node in FAULT while it is down.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::config::{CheckSpec, Probe};

/// A check's current result, as status shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CheckStatus {
    /// The check as configured.
    pub name: String,
    /// Up (after `rise` successes) or down (after `fall` failures).
    pub up: bool,
    /// Its weight.
    pub weight: i32,
    /// Consecutive successes (> 0) or failures (< 0).
    pub streak: i64,
    /// Why the last probe failed.
    pub last_error: Option<String>,
}

/// Effective priority and fault flag from the base priority and results.
/// The address owner (255) keeps 255; others stay within 1–254.
pub fn effective(base: u8, checks: &[CheckStatus]) -> (u8, bool) {
    let fault = checks.iter().any(|c| c.weight == 0 && !c.up);
    if base == 255 {
        return (255, fault);
    }
    let delta: i32 = checks
        .iter()
        .map(|c| match (c.up, c.weight) {
            (true, w) if w > 0 => w,
            (false, w) if w < 0 => w,
            _ => 0,
        })
        .sum();
    ((i32::from(base) + delta).clamp(1, 254) as u8, fault)
}

/// Starts one task per check; the receiver sees the list of results after
/// every change. The tasks end when `shutdown` fires.
pub fn spawn(
    specs: Vec<CheckSpec>,
    shutdown: b3_common::Shutdown,
) -> watch::Receiver<Vec<CheckStatus>> {
    let initial: Vec<CheckStatus> = specs
        .iter()
        .map(|s| CheckStatus {
            name: s.name.clone(),
            // Optimistic until the first probe (run at once) says otherwise.
            up: true,
            weight: s.weight,
            streak: 0,
            last_error: None,
        })
        .collect();
    let (tx, rx) = watch::channel(initial);
    let tx = Arc::new(tx);
    for (i, spec) in specs.into_iter().enumerate() {
        let tx = tx.clone();
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut first = true;
            let mut ticker = tokio::time::interval(spec.interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.wait() => return,
                    _ = ticker.tick() => {}
                }
                let result = tokio::select! {
                    _ = shutdown.wait() => return,
                    r = tokio::time::timeout(spec.timeout, probe(&spec.probe)) => match r {
                        Ok(r) => r,
                        Err(_) => Err(format!("timed out after {:?}", spec.timeout)),
                    },
                };
                tx.send_if_modified(|all| {
                    let Some(c) = all.get_mut(i) else {
                        return false;
                    };
                    let before = c.clone();
                    match &result {
                        Ok(()) => {
                            c.streak = c.streak.max(0) + 1;
                            c.last_error = None;
                            if first || c.streak >= i64::from(spec.rise) {
                                c.up = true;
                            }
                        }
                        Err(e) => {
                            c.streak = c.streak.min(0) - 1;
                            c.last_error = Some(e.clone());
                            if first || -c.streak >= i64::from(spec.fall) {
                                c.up = false;
                            }
                        }
                    }
                    // Publish state changes; streaks alone are not worth a wake-up.
                    before.up != c.up || before.last_error.is_some() != c.last_error.is_some()
                });
                first = false;
            }
        });
    }
    rx
}

/// Runs one probe.
pub async fn probe(p: &Probe) -> Result<(), String> {
    match p {
        Probe::Tcp(addr) => tokio::net::TcpStream::connect(addr)
            .await
            .map(drop)
            .map_err(|e| format!("connect {addr}: {e}")),
        Probe::Http {
            addr,
            tls,
            host,
            path,
            expect,
        } => {
            let tcp = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| format!("connect {addr}: {e}"))?;
            let request = format!(
                "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: b3-vip\r\nConnection: close\r\n\r\n"
            );
            let status = if *tls {
                let server_name = match addr.ip() {
                    std::net::IpAddr::V4(ip) => rustls_pki_types::ServerName::IpAddress(ip.into()),
                    std::net::IpAddr::V6(ip) => rustls_pki_types::ServerName::IpAddress(ip.into()),
                };
                let stream = tls_connector()
                    .connect(server_name, tcp)
                    .await
                    .map_err(|e| format!("TLS handshake with {addr}: {e}"))?;
                status_of(stream, &request).await?
            } else {
                status_of(tcp, &request).await?
            };
            match expect {
                Some(want) if *want != status => {
                    Err(format!("GET {path}: status {status}, expected {want}"))
                }
                _ => Ok(()),
            }
        }
        Probe::Command(argv) => {
            let (program, args) = argv.split_first().ok_or("empty command")?;
            let status = tokio::process::Command::new(program)
                .args(args)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .status()
                .await
                .map_err(|e| format!("running {program}: {e}"))?;
            if status.success() {
                Ok(())
            } else {
                Err(format!("{program} exited with {status}"))
            }
        }
    }
}

/// Sends `request` and reads the status code of the response.
async fn status_of<S>(mut s: S, request: &str) -> Result<u16, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    s.write_all(request.as_bytes())
        .await
        .map_err(|e| format!("sending request: {e}"))?;
    let mut buf = [0u8; 64];
    let mut have = 0;
    // The status line fits in 64 bytes; read until it is complete.
    while have < 12 {
        let n = s
            .read(&mut buf[have..])
            .await
            .map_err(|e| format!("reading response: {e}"))?;
        if n == 0 {
            break;
        }
        have += n;
    }
    parse_status(&buf[..have]).ok_or_else(|| "no HTTP status line in the response".to_string())
}

/// Parses `HTTP/1.x NNN` at the start of a response.
pub fn parse_status(head: &[u8]) -> Option<u16> {
    let rest = head.strip_prefix(b"HTTP/1.")?;
    let code = rest.get(2..5)?;
    if rest.get(1) != Some(&b' ') || !code.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(code).ok()?.parse().ok()
}

fn tls_connector() -> tokio_rustls::TlsConnector {
    use std::sync::OnceLock;
    static CONNECTOR: OnceLock<tokio_rustls::TlsConnector> = OnceLock::new();
    CONNECTOR
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map(|b| {
                    b.dangerous()
                        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
                        .with_no_client_auth()
                });
            match config {
                Ok(c) => tokio_rustls::TlsConnector::from(Arc::new(c)),
                // The ring provider supports the default versions; this
                // branch is unreachable in practice but must not panic.
                Err(_) => tokio_rustls::TlsConnector::from(Arc::new(
                    rustls::ClientConfig::builder()
                        .with_root_certificates(rustls::RootCertStore::empty())
                        .with_no_client_auth(),
                )),
            }
        })
        .clone()
}

/// Accepts any certificate: the check asks "does the local edge complete a
/// TLS handshake", not "is its certificate trusted" (it is often
/// self-signed). Signatures are still verified, so the handshake is real.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_check;
    use std::time::Duration;

    fn st(up: bool, weight: i32) -> CheckStatus {
        CheckStatus {
            name: "x".into(),
            up,
            weight,
            streak: 0,
            last_error: None,
        }
    }

    #[test]
    fn weights_follow_keepalived() {
        assert_eq!(effective(100, &[]), (100, false));
        assert_eq!(effective(100, &[st(true, 20), st(false, 20)]), (120, false));
        assert_eq!(
            effective(100, &[st(false, -30), st(true, -30)]),
            (70, false)
        );
        assert_eq!(effective(100, &[st(false, 0)]), (100, true));
        assert_eq!(effective(240, &[st(true, 50)]), (254, false));
        assert_eq!(effective(10, &[st(false, -50)]), (1, false));
        assert_eq!(effective(255, &[st(false, -50)]), (255, false));
    }

    #[test]
    fn status_line() {
        assert_eq!(parse_status(b"HTTP/1.1 204 No Content\r\n"), Some(204));
        assert_eq!(parse_status(b"HTTP/1.0 200 OK"), Some(200));
        assert_eq!(parse_status(b"HTTP/2 200"), None);
        assert_eq!(parse_status(b"HTTP/1.1 2x0"), None);
        assert_eq!(parse_status(b""), None);
    }

    #[tokio::test]
    async fn probes_tcp_http_and_commands() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            for _ in 0..3 {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(b"HTTP/1.1 503 Busy\r\n\r\n").await;
            }
        });
        let tcp = parse_check(&format!("tcp:{addr}")).unwrap();
        assert!(probe(&tcp.probe).await.is_ok());
        let http = parse_check(&format!("http://{addr}/health")).unwrap();
        let e = probe(&http.probe).await.unwrap_err();
        assert!(e.contains("503"), "{e}");
        let any = parse_check(&format!("http://{addr}/,status=any")).unwrap();
        assert!(probe(&any.probe).await.is_ok());

        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let dead = parse_check(&format!("tcp:{closed}")).unwrap();
        assert!(probe(&dead.probe).await.is_err());
        assert!(probe(&parse_check("cmd:true").unwrap().probe).await.is_ok());
        assert!(probe(&parse_check("cmd:false").unwrap().probe)
            .await
            .is_err());
        assert!(probe(&parse_check("cmd:/nonexistent/x").unwrap().probe)
            .await
            .is_err());
    }

    /// The HTTPS probe completes a real handshake with a self-signed
    /// certificate (the local edge's case) and reads the status.
    #[tokio::test]
    async fn probes_https_with_a_self_signed_certificate() {
        let ck = rcgen::generate_simple_self_signed(vec!["edge.local".into()]).unwrap();
        let key = rustls_pki_types::PrivateKeyDer::Pkcs8(
            rustls_pki_types::PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()),
        );
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            for _ in 0..2 {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    continue;
                };
                let mut buf = [0u8; 512];
                let _ = tls.read(&mut buf).await;
                let _ = tls.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await;
                let _ = tls.shutdown().await;
            }
        });
        let ok = parse_check(&format!("https://{addr}/,status=204")).unwrap();
        assert_eq!(probe(&ok.probe).await, Ok(()));
        let wrong = parse_check(&format!("https://{addr}/")).unwrap();
        let e = probe(&wrong.probe).await.unwrap_err();
        assert!(e.contains("204"), "{e}");
        // Plain TCP on a port that speaks no TLS fails the handshake.
        let plain = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let paddr = plain.local_addr().unwrap();
        tokio::spawn(async move {
            if let Ok((mut s, _)) = plain.accept().await {
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await;
            }
        });
        let e = probe(&parse_check(&format!("https://{paddr}/")).unwrap().probe)
            .await
            .unwrap_err();
        assert!(e.contains("TLS"), "{e}");
    }

    #[tokio::test]
    async fn fall_and_rise_gate_changes() {
        let dir = tempfile::tempdir().unwrap();
        let flag = dir.path().join("ok");
        std::fs::write(&flag, "").unwrap();
        let spec = parse_check(&format!(
            "cmd:test -f {},interval=20ms,fall=3,rise=2,weight=-10",
            flag.display()
        ))
        .unwrap();
        let (trigger, shutdown) = b3_common::shutdown::channel();
        let mut rx = spawn(vec![spec], shutdown);
        let wait_for = |rx: &mut watch::Receiver<Vec<CheckStatus>>, up: bool| {
            let mut rx = rx.clone();
            async move {
                tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|v| v[0].up == up))
                    .await
                    .expect("check changed in time")
                    .expect("channel open");
            }
        };
        // Let the first probe succeed (it alone decides the initial result).
        for _ in 0..1000 {
            if rx.borrow().first().is_some_and(|c| c.streak > 0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(rx.borrow()[0].streak > 0, "the first probe ran");
        std::fs::remove_file(&flag).unwrap();
        let t = std::time::Instant::now();
        wait_for(&mut rx, false).await;
        assert!(t.elapsed() >= Duration::from_millis(40), "needs 3 failures");
        assert_eq!(effective(100, &rx.borrow()), (90, false));
        std::fs::write(&flag, "").unwrap();
        wait_for(&mut rx, true).await;
        trigger.trigger();
    }
}
