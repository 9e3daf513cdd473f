//! Hostile and broken clients get a clean error, and edge keeps serving
//! everyone else.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

fn cfg(b: &Backend) -> String {
    format!(
        r#"
http:
  routers:
    app: {{ rule: "Host(`app.b3.swarm`)", service: app, tls: {{}} }}
    plain: {{ rule: "PathPrefix(`/`)", service: app, entryPoints: [web] }}
  services:
    app: {{ loadBalancer: {{ servers: [ {{ url: "{}" }} ] }} }}
"#,
        b.url()
    )
}

fn raw(port: u16, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn still_serving(edge: &Edge) {
    let (_, out) = curl(&[
        "-sk",
        "--resolve",
        &edge.resolve("app.b3.swarm"),
        &edge.https("app.b3.swarm", "/"),
    ]);
    assert_eq!(
        out,
        "backend one\n",
        "edge stopped serving; log:\n{}",
        edge.log()
    );
    let (_, out) = curl(&["-s", &format!("http://127.0.0.1:{}/", edge.web)]);
    assert_eq!(out, "backend one\n");
}

#[test]
fn malformed_requests_oversized_headers_and_long_uris() {
    let b = backend("one");
    let edge = Edge::start(
        &cfg(&b),
        &[
            "--max-header-bytes",
            "16384",
            "--max-uri-bytes",
            "4096",
            "--max-body-bytes",
            "100000",
        ],
    );
    let r = raw(edge.web, b"NOT HTTP AT ALL\r\n\r\n");
    assert!(r.is_empty() || r.starts_with("HTTP/1.1 400"), "{r}");
    let r = raw(
        edge.web,
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n",
    );
    assert!(r.is_empty() || r.starts_with("HTTP/1.1 400"), "{r}");
    let r = raw(
        edge.web,
        b"GET / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 7\r\nHost: x\r\n\r\nhello",
    );
    assert!(
        r.is_empty() || r.starts_with("HTTP/1.1 400"),
        "conflicting lengths: {r}"
    );
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let r = raw(edge.web, big.as_bytes());
    assert!(r.is_empty() || r.starts_with("HTTP/1.1 431"), "{r}");
    // A declared body over --max-body-bytes is refused before it is read.
    let body = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\nConnection: close\r\n\r\n{}",
        "b".repeat(1000)
    );
    let r = raw(edge.web, body.as_bytes());
    assert!(r.starts_with("HTTP/1.1 413"), "{r}");
    let long = format!(
        "GET /{} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "p".repeat(8000)
    );
    let r = raw(edge.web, long.as_bytes());
    assert!(r.starts_with("HTTP/1.1 414"), "{r}");
    still_serving(&edge);
}

#[test]
fn slowloris_is_cut_off_and_others_are_served() {
    let b = backend("one");
    let edge = Edge::start(
        &cfg(&b),
        &["--header-read-timeout", "1s", "--handshake-timeout", "1s"],
    );
    let mut slow: Vec<TcpStream> = (0..50)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", edge.web)).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
            s
        })
        .collect();
    // Idle TLS connections that never say hello.
    let idle_tls: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(("127.0.0.1", edge.secure)).unwrap())
        .collect();
    still_serving(&edge);
    let t = Instant::now();
    for s in &mut slow {
        // Trickle one more header byte; the deadline is for the whole head.
        let _ = s.write_all(b"X");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 256];
        let n = match s.read(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("slowloris connection still open after the header timeout")
            }
            Err(_) => 0, // reset: closed too
        };
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(n == 0 || text.starts_with("HTTP/1.1 408"), "{text}");
    }
    for mut s in idle_tls {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 16];
        match s.read(&mut buf) {
            Ok(n) => assert_eq!(n, 0, "idle TLS connection got data"),
            Err(e) => assert!(
                !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
                "idle TLS connection still open after the handshake timeout"
            ),
        }
    }
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "took {:?}",
        t.elapsed()
    );
    still_serving(&edge);
}

#[test]
fn garbage_tls_and_odd_sni() {
    let b = backend("one");
    let edge = Edge::start(&cfg(&b), &[]);
    let r = raw(
        edge.secure,
        b"GET / HTTP/1.1\r\nHost: plain-text-on-tls\r\n\r\n",
    );
    assert!(!r.contains("backend one"), "{r}");
    let r = raw(edge.secure, &[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5]);
    assert!(!r.contains("backend"), "truncated hello");
    for sni in ["-bad-.example", "x", "a..b", "APP.B3.SWARM"] {
        // openssl sends whatever it is given; edge answers with some certificate or closes.
        let _ = std::process::Command::new("timeout")
            .args([
                "5",
                "openssl",
                "s_client",
                "-connect",
                &format!("127.0.0.1:{}", edge.secure),
                "-servername",
                sni,
            ])
            .stdin(std::process::Stdio::null())
            .output();
    }
    let (_, out) = curl(&[
        "-sk",
        "--resolve",
        &edge.resolve("APP.B3.SWARM"),
        &edge.https("APP.B3.SWARM", "/"),
    ]);
    assert_eq!(out, "backend one\n", "hosts match case-insensitively");
    still_serving(&edge);
    let m = curl(&["-s", &format!("http://127.0.0.1:{}/metrics", edge.admin)]).1;
    assert!(
        m.contains("edge_tls_handshakes_total{result=\"error\"}"),
        "{m}"
    );
}

#[test]
fn http2_rapid_reset_does_not_hurt_others() {
    let b = backend("one");
    let edge = Edge::start(&cfg(&b), &[]);
    let port = edge.web;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (sent, alive) = rt.block_on(async move {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut sent = 0u32;
        let mut alive = true;
        'conns: for _ in 0..3 {
            let Ok(tcp) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
                break;
            };
            let Ok((mut tx, conn)) = hyper::client::conn::http2::handshake(
                hyper_util::rt::TokioExecutor::new(),
                hyper_util::rt::TokioIo::new(tcp),
            )
            .await
            else {
                break;
            };
            let conn = tokio::spawn(conn);
            for _ in 0..1000 {
                if Instant::now() > deadline {
                    break 'conns;
                }
                let req = http::Request::builder()
                    .uri(format!("http://127.0.0.1:{port}/slow"))
                    .body(http_body_util::Empty::<bytes::Bytes>::new())
                    .unwrap();
                if tx.ready().await.is_err() {
                    alive = false;
                    continue 'conns;
                }
                // Start the request and drop it at once: the client resets the stream.
                let _ = tokio::time::timeout(Duration::from_micros(1), tx.send_request(req)).await;
                sent += 1;
            }
            conn.abort();
        }
        (sent, alive)
    });
    assert!(sent > 100, "sent {sent}");
    let _ = alive; // edge may GOAWAY an abusive connection; either way others are served
    still_serving(&edge);
}
