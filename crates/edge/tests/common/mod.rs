//! Test fixtures: an `edge` child process on free loopback ports (killed on
//! drop), in-process HTTP backends that can be killed, and `curl`.

#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A port that was free a moment ago, below the kernel's ephemeral range
/// (32768+) so that client sockets lingering in TIME-WAIT cannot collide
/// with it between this check and edge binding it.
pub fn free_port() -> u16 {
    use std::sync::atomic::AtomicU32;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let seed = std::process::id().wrapping_mul(2654435761)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
    for _ in 0..200 {
        let n = seed.wrapping_add(NEXT.fetch_add(7919, Ordering::Relaxed));
        let port = 20000 + (n % 12000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral port on 127.0.0.1")
}

/// A running edge.
pub struct Edge {
    pub child: Child,
    pub admin: u16,
    pub web: u16,
    pub secure: u16,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl Drop for Edge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Edge {
    /// Starts edge with `config` (YAML) written to a file in a fresh temp dir.
    pub fn start(config: &str, extra: &[&str]) -> Edge {
        let dir = tempfile::tempdir().expect("temp dir");
        let cfg = dir.path().join("edge.yml");
        std::fs::write(&cfg, config).expect("writing config");
        let (admin, web, secure) = (free_port(), free_port(), free_port());
        let log = std::fs::File::create(dir.path().join("edge.log")).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_edge"))
            .args([
                "--admin-addr",
                &format!("127.0.0.1:{admin}"),
                "--web-addr",
                &format!("127.0.0.1:{web}"),
                "--websecure-addr",
                &format!("127.0.0.1:{secure}"),
                "--cert-dir",
                &dir.path().join("certs").display().to_string(),
                "--config-file",
                &cfg.display().to_string(),
                "--watch-interval",
                "200ms",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting edge");
        let e = Edge {
            child,
            admin,
            web,
            secure,
            dir,
            config: cfg,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (_, body) = curl(&["-s", &format!("http://127.0.0.1:{admin}/api/overview")]);
            let generation = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["generation"].as_u64())
                .unwrap_or(0);
            if generation >= 1 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "edge did not start; log:\n{}",
                e.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        e
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("edge.log")).unwrap_or_default()
    }

    /// The generated default certificate (chain only), for `--cacert`.
    pub fn ca_file(&self) -> PathBuf {
        let pem = std::fs::read_to_string(self.dir.path().join("certs/b3.swarm.pem"))
            .expect("generated cert");
        let end = "-----END CERTIFICATE-----";
        let cert = &pem[..pem.find(end).expect("a certificate") + end.len()];
        let p = self.dir.path().join("ca.pem");
        std::fs::write(&p, format!("{cert}\n")).expect("writing ca");
        p
    }

    pub fn api(&self, path: &str) -> serde_json::Value {
        let (_, body) = curl(&["-s", &format!("http://127.0.0.1:{}{path}", self.admin)]);
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
    }

    pub fn rss_kib(&self, field: &str) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        s.lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    pub fn https(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}{path}", self.secure)
    }

    pub fn resolve(&self, host: &str) -> String {
        format!("{host}:{}:127.0.0.1", self.secure)
    }

    pub fn resolve_web(&self, host: &str) -> String {
        format!("{host}:{}:127.0.0.1", self.web)
    }
}

/// Runs curl (bounded by --max-time) and returns (exit code, stdout).
pub fn curl(args: &[&str]) -> (i32, String) {
    let out = Command::new("curl")
        .args(["--max-time", "30"])
        .args(args)
        .output()
        .expect("running curl (is it installed?)");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Waits until `f` holds, up to `secs`.
pub fn eventually(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

type Body = BoxBody<Bytes, std::io::Error>;

fn full(s: impl Into<Bytes>) -> Body {
    Full::new(s.into()).map_err(|e| match e {}).boxed()
}

/// An HTTP backend on a loopback port, running on its own thread.
pub struct Backend {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicU64>,
    pub uploaded: Arc<AtomicU64>,
    pub health_status: Arc<AtomicU16>,
    pub tls: bool,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Backend {
    pub fn url(&self) -> String {
        format!(
            "{}://{}",
            if self.tls { "https" } else { "http" },
            self.addr
        )
    }

    /// Stops it: listener closed, every connection dropped.
    pub fn kill(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

struct State {
    id: String,
    hits: Arc<AtomicU64>,
    uploaded: Arc<AtomicU64>,
    health: Arc<AtomicU16>,
}

/// Starts a backend answering `backend <id>` and a few test paths:
/// `/headers`, `/big?<bytes>`, `/upload`, `/slow`, `/health`, `/ws`.
pub fn backend(id: &str) -> Backend {
    backend_on(id, 0, false)
}

/// The same backend, speaking HTTPS with a self-signed certificate.
pub fn tls_backend(id: &str) -> Backend {
    backend_on(id, 0, true)
}

fn tls_acceptor() -> tokio_rustls::TlsAcceptor {
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("rcgen");
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("tls versions")
    .with_no_client_auth()
    .with_single_cert(vec![ck.cert.der().clone()], key)
    .expect("backend cert");
    tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
}

async fn serve_conn<IO>(io: IO, st: Arc<State>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        let st = st.clone();
        async move { Ok::<_, Infallible>(serve(st, req).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades()
        .await;
}

pub fn backend_on(id: &str, port: u16, tls: bool) -> Backend {
    let std_listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("binding backend");
    std_listener.set_nonblocking(true).expect("nonblocking");
    let addr = std_listener.local_addr().expect("addr");
    let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
    let acceptor = tls.then(tls_acceptor);
    let state = Arc::new(State {
        id: id.to_string(),
        hits: Arc::new(AtomicU64::new(0)),
        uploaded: Arc::new(AtomicU64::new(0)),
        health: Arc::new(AtomicU16::new(200)),
    });
    let (hits, uploaded, health_status) = (
        state.hits.clone(),
        state.uploaded.clone(),
        state.health.clone(),
    );
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("backend runtime");
        rt.block_on(async move {
            let listener = TcpListener::from_std(std_listener).expect("tokio listener");
            let mut conns = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    _ = &mut rx => break,
                    r = listener.accept() => {
                        let Ok((s, _)) = r else { continue };
                        let st = state.clone();
                        let acceptor = acceptor.clone();
                        conns.spawn(async move {
                            match acceptor {
                                Some(a) => {
                                    if let Ok(s) = a.accept(s).await {
                                        serve_conn(s, st).await;
                                    }
                                }
                                None => serve_conn(s, st).await,
                            }
                        });
                    }
                }
            }
            conns.shutdown().await;
        });
        rt.shutdown_timeout(Duration::from_millis(100));
    });
    Backend {
        addr,
        hits,
        uploaded,
        health_status,
        tls,
        stop: Some(tx),
        thread: Some(thread),
    }
}

async fn serve(st: Arc<State>, mut req: Request<Incoming>) -> Response<Body> {
    st.hits.fetch_add(1, Ordering::Relaxed);
    let path = req.uri().path().to_string();
    match path.as_str() {
        "/headers" => {
            let mut s = format!("uri: {}\n", req.uri());
            for (k, v) in req.headers() {
                s.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
            }
            Response::new(full(s))
        }
        "/big" => {
            let n: u64 = req.uri().query().and_then(|q| q.parse().ok()).unwrap_or(0);
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            let stream = futures_util::stream::unfold(n, move |left| {
                let chunk = chunk.clone();
                async move {
                    if left == 0 {
                        return None;
                    }
                    let take = left.min(chunk.len() as u64);
                    Some((
                        Ok::<_, std::io::Error>(Frame::data(chunk.slice(..take as usize))),
                        left - take,
                    ))
                }
            });
            let mut r = Response::new(StreamBody::new(stream).boxed());
            r.headers_mut().insert("content-length", n.into());
            r
        }
        "/upload" => {
            let mut body = req.into_body();
            let mut n = 0u64;
            while let Some(f) = body.frame().await {
                match f {
                    Ok(f) => {
                        if let Ok(d) = f.into_data() {
                            n += d.len() as u64;
                        }
                    }
                    Err(_) => break,
                }
            }
            st.uploaded.store(n, Ordering::Relaxed);
            Response::new(full(format!("received {n}\n")))
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            Response::new(full("slow done\n"))
        }
        "/health" => {
            let mut r = Response::new(full("health\n"));
            *r.status_mut() =
                StatusCode::from_u16(st.health.load(Ordering::Relaxed)).unwrap_or(StatusCode::OK);
            r
        }
        "/ws" => {
            let up = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(io) = up.await {
                    let _ = ws_echo(TokioIo::new(io)).await;
                }
            });
            let mut r = Response::new(full(""));
            *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            r.headers_mut()
                .insert("connection", "Upgrade".parse().unwrap());
            r.headers_mut()
                .insert("upgrade", "websocket".parse().unwrap());
            // RFC 6455's example key/accept pair (tests use that key).
            r.headers_mut().insert(
                "sec-websocket-accept",
                "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".parse().unwrap(),
            );
            r
        }
        _ => Response::new(full(format!("backend {}\n", st.id))),
    }
}

/// Echoes small WebSocket frames back (unmasked), until close.
async fn ws_echo<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut s: S,
) -> std::io::Result<()> {
    loop {
        let mut h = [0u8; 2];
        s.read_exact(&mut h).await?;
        let opcode = h[0] & 0x0f;
        let len = (h[1] & 0x7f) as usize;
        let mut mask = [0u8; 4];
        if h[1] & 0x80 != 0 {
            s.read_exact(&mut mask).await?;
        }
        let mut p = vec![0u8; len];
        s.read_exact(&mut p).await?;
        for (i, b) in p.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
        let mut out = vec![0x80 | opcode, len as u8];
        out.extend_from_slice(&p);
        s.write_all(&out).await?;
        if opcode == 8 {
            return Ok(());
        }
    }
}

/// A masked client text frame.
pub fn ws_frame(text: &str) -> Vec<u8> {
    let mask = [1u8, 2, 3, 4];
    let mut f = vec![0x81, 0x80 | text.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Writes a self-signed certificate for `name` to `dir`; returns (cert, key) paths.
pub fn write_cert(dir: &Path, file: &str, name: &str) -> (PathBuf, PathBuf) {
    let ck = rcgen::generate_simple_self_signed(vec![name.to_string()]).expect("rcgen");
    let c = dir.join(format!("{file}.crt"));
    let k = dir.join(format!("{file}.key"));
    // Write to temp names and rename, as operators (and cert-manager) do.
    std::fs::write(dir.join(".tmp.crt"), ck.cert.pem()).expect("cert");
    std::fs::write(dir.join(".tmp.key"), ck.signing_key.serialize_pem()).expect("key");
    std::fs::rename(dir.join(".tmp.key"), &k).expect("rename key");
    std::fs::rename(dir.join(".tmp.crt"), &c).expect("rename cert");
    (c, k)
}

/// The page at `url` after its scripts ran, as headless Chromium (Debian's
/// `chromium`, installed by scripts/test) renders it.
pub fn chromium_dom(url: &str) -> String {
    let browser = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|c| {
            Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect("chromium is not installed: scripts/test installs it (apt-get install chromium)");
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new("timeout")
        .args([
            "50",
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            &format!("--user-data-dir={}", profile.path().display()),
            "--virtual-time-budget=5000",
            "--dump-dom",
            url,
        ])
        .output()
        .expect("running chromium");
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        dom.contains("<html"),
        "chromium rendered nothing for {url}; stderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dom
}
