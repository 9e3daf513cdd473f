//! End-to-end tests of the `edge` binary on loopback, with real curl.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

fn config(servers: &[&Backend], extra: &str) -> String {
    let list: String = servers
        .iter()
        .map(|b| format!("          - url: \"{}\"\n", b.url()))
        .collect();
    format!(
        r#"
http:
  routers:
    app:
      rule: "Host(`app.b3.swarm`)"
      service: app
      tls: {{}}
    plain:
      rule: "Host(`plain.b3.swarm`)"
      service: app
      entryPoints: [web]
{extra}
  services:
    app:
      loadBalancer:
        servers:
{list}"#
    )
}

#[test]
fn curl_http1_and_http2_over_tls_with_forwarded_headers() {
    let b = backend("one");
    let edge = Edge::start(&config(&[&b], ""), &[]);
    let ca = edge.ca_file();
    let ca = ca.to_str().unwrap();
    for (flag, want) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let (code, out) = curl(&[
            "-sS",
            flag,
            "--cacert",
            ca,
            "--resolve",
            &edge.resolve("app.b3.swarm"),
            "-w",
            "\n%{http_code} %{http_version}",
            &edge.https("app.b3.swarm", "/headers?x=1"),
        ]);
        assert_eq!(code, 0, "curl {flag} failed: {out}\n{}", edge.log());
        assert!(out.ends_with(&format!("200 {want}")), "{flag}: {out}");
        // What the backend saw.
        assert!(out.contains("uri: /headers?x=1"), "{out}");
        assert!(out.contains("x-forwarded-for: 127.0.0.1"), "{out}");
        assert!(out.contains("x-forwarded-proto: https"), "{out}");
        assert!(
            out.contains(&format!("x-forwarded-host: app.b3.swarm:{}", edge.secure)),
            "{out}"
        );
        assert!(
            out.contains("forwarded: for=127.0.0.1;proto=https"),
            "{out}"
        );
        assert!(
            out.contains(&format!("host: app.b3.swarm:{}", edge.secure)),
            "pass host header: {out}"
        );
    }
    // Unknown host: TLS works with the default certificate, then 404.
    let (code, out) = curl(&[
        "-s",
        "-k",
        "--resolve",
        &edge.resolve("nope.example"),
        "-w",
        "%{http_code}",
        "-o",
        "/dev/null",
        &edge.https("nope.example", "/"),
    ]);
    assert_eq!((code, out.as_str()), (0, "404"));
    // Plain HTTP for a TLS router: redirected to HTTPS, path and query kept.
    let (_, out) = curl(&[
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{redirect_url}",
        "--resolve",
        &edge.resolve_web("app.b3.swarm"),
        &format!("http://app.b3.swarm:{}/a?b=c", edge.web),
    ]);
    assert_eq!(
        out,
        format!("308 https://app.b3.swarm:{}/a?b=c", edge.secure)
    );
    // A plain router on web is served over plain HTTP.
    let (_, out) = curl(&[
        "-s",
        "--resolve",
        &edge.resolve_web("plain.b3.swarm"),
        &format!("http://plain.b3.swarm:{}/", edge.web),
    ]);
    assert_eq!(out, "backend one\n");
    // Metrics count requests by router and code.
    let (_, m) = curl(&["-s", &format!("http://127.0.0.1:{}/metrics", edge.admin)]);
    assert!(
        m.contains("edge_requests_total{entrypoint=\"websecure\",router=\"app@file\",service=\"app@file\",code=\"200\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("edge_tls_handshakes_total{result=\"ok\"}"),
        "{m}"
    );
}

#[test]
fn weighted_round_robin_and_sticky_cookie() {
    let a = backend("a");
    let b = backend("b");
    let cfg = format!(
        r#"
http:
  routers:
    app: {{ rule: "Host(`app.b3.swarm`)", service: app, tls: {{}} }}
    sticky: {{ rule: "Host(`sticky.b3.swarm`)", service: sticky, tls: {{}} }}
  services:
    app:
      loadBalancer:
        servers: [ {{ url: "{}", weight: 3 }}, {{ url: "{}", weight: 1 }} ]
    sticky:
      loadBalancer:
        servers: [ {{ url: "{}" }}, {{ url: "{}" }} ]
        sticky: {{ cookie: {{ name: srv, httpOnly: true }} }}
"#,
        a.url(),
        b.url(),
        a.url(),
        b.url()
    );
    let edge = Edge::start(&cfg, &[]);
    let mut count = (0, 0);
    for _ in 0..40 {
        let (_, out) = curl(&[
            "-sk",
            "--resolve",
            &edge.resolve("app.b3.swarm"),
            &edge.https("app.b3.swarm", "/"),
        ]);
        match out.as_str() {
            "backend a\n" => count.0 += 1,
            "backend b\n" => count.1 += 1,
            o => panic!("unexpected {o:?}"),
        }
    }
    assert_eq!(count, (30, 10));
    let jar = edge.dir.path().join("jar");
    let jar = jar.to_str().unwrap();
    let mut seen = Vec::new();
    for _ in 0..6 {
        let (_, out) = curl(&[
            "-sk",
            "-b",
            jar,
            "-c",
            jar,
            "--resolve",
            &edge.resolve("sticky.b3.swarm"),
            &edge.https("sticky.b3.swarm", "/"),
        ]);
        seen.push(out);
    }
    assert!(seen.iter().all(|s| *s == seen[0]), "sticky: {seen:?}");
    let jar_text = std::fs::read_to_string(edge.dir.path().join("jar")).unwrap();
    assert!(jar_text.contains("srv"), "{jar_text}");
}

#[test]
fn backend_killed_mid_test_is_retried_then_502_never_a_hang() {
    let a = backend("a");
    let mut b = backend("b");
    let edge = Edge::start(&config(&[&a, &b], ""), &[]);
    let get = || {
        curl(&[
            "-sk",
            "-w",
            " %{http_code}",
            "--resolve",
            &edge.resolve("app.b3.swarm"),
            &edge.https("app.b3.swarm", "/"),
        ])
        .1
    };
    // Warm both (pooled keep-alive connections to both backends).
    for _ in 0..4 {
        assert!(get().ends_with("200"));
    }
    b.kill();
    for i in 0..20 {
        let out = get();
        assert_eq!(out, "backend a\n 200", "request {i} after b died");
    }
    let services = edge.api("/api/http/services");
    let servers = services[0]["servers"].as_array().unwrap();
    let bs = servers.iter().find(|s| s["url"] == b.url()).unwrap();
    assert_eq!(bs["status"], "ejected", "{services}");
    assert!(
        bs["last_error"].as_str().unwrap().contains("refused"),
        "{bs}"
    );
    // Everything dead: a quick 502, not a hang.
    let mut a = a;
    a.kill();
    let t = Instant::now();
    let out = get();
    assert!(out.ends_with("502") || out.ends_with("503"), "{out}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
}

#[test]
fn active_health_check_takes_a_failing_server_out() {
    let a = backend("a");
    let b = backend("b");
    let cfg = format!(
        r#"
http:
  routers:
    app: {{ rule: "Host(`app.b3.swarm`)", service: app, tls: {{}} }}
  services:
    app:
      loadBalancer:
        servers: [ {{ url: "{}" }}, {{ url: "{}" }} ]
        healthCheck: {{ path: /health, interval: 200ms, timeout: 1s }}
"#,
        a.url(),
        b.url()
    );
    let edge = Edge::start(&cfg, &[]);
    b.health_status
        .store(500, std::sync::atomic::Ordering::Relaxed);
    eventually(10, "b marked down", || {
        let s = edge.api("/api/http/services/app@file");
        s["serverStatus"][b.url()] == "DOWN"
    });
    for _ in 0..10 {
        let (_, out) = curl(&[
            "-sk",
            "--resolve",
            &edge.resolve("app.b3.swarm"),
            &edge.https("app.b3.swarm", "/"),
        ]);
        assert_eq!(out, "backend a\n");
    }
    b.health_status
        .store(200, std::sync::atomic::Ordering::Relaxed);
    eventually(10, "b back up", || {
        edge.api("/api/http/services/app@file")["serverStatus"][b.url()] == "UP"
    });
    let (_, m) = curl(&["-s", &format!("http://127.0.0.1:{}/metrics", edge.admin)]);
    assert!(m.contains("edge_backend_up{service=\"app@file\""), "{m}");
}

#[test]
fn websocket_upgrade_is_tunnelled() {
    let b = backend("ws");
    let edge = Edge::start(&config(&[&b], ""), &[]);
    let mut s = TcpStream::connect(("127.0.0.1", edge.web)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: plain.b3.swarm\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    for msg in ["hello", "edge", "a longer message through the tunnel"] {
        s.write_all(&ws_frame(msg)).unwrap();
        let mut h = [0u8; 2];
        s.read_exact(&mut h).unwrap();
        assert_eq!(h[0], 0x81);
        let mut p = vec![0u8; (h[1] & 0x7f) as usize];
        s.read_exact(&mut p).unwrap();
        assert_eq!(String::from_utf8(p).unwrap(), msg);
    }
}

#[test]
fn large_streaming_upload_and_download_keep_rss_flat() {
    let b = backend("big");
    let edge = Edge::start(&config(&[&b], ""), &[]);
    let size: u64 = 512 * 1024 * 1024;
    let base = edge.rss_kib("VmRSS:");
    let (code, out) = curl(&[
        "-sSk",
        "-o",
        "/dev/null",
        "-w",
        "%{size_download} %{http_code}",
        "--resolve",
        &edge.resolve("app.b3.swarm"),
        &edge.https("app.b3.swarm", &format!("/big?{size}")),
    ]);
    assert_eq!((code, out), (0, format!("{size} 200")));
    let cmd = format!(
        "head -c {size} /dev/zero | curl --max-time 50 -sSk -T - --resolve {} {}",
        edge.resolve("app.b3.swarm"),
        edge.https("app.b3.swarm", "/upload")
    );
    let up = std::process::Command::new("bash")
        .args(["-c", &cmd])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&up.stdout),
        format!("received {size}\n")
    );
    let peak = edge.rss_kib("VmHWM:");
    // Half a GiB each way through a proxy whose peak RSS stays far below it.
    assert!(
        peak < base + 48 * 1024,
        "peak RSS {peak} KiB (start {base} KiB)"
    );
}

#[test]
fn middlewares_end_to_end() {
    let b = backend("mw");
    let hash = "alice:$apr1$saltsalt$LrttParrLPdxvgutaSXWJ0"; // password: secret
    let extra = format!(
        r#"    api:
      rule: "Host(`app.b3.swarm`) && PathPrefix(`/api`)"
      service: app
      tls: {{}}
      middlewares: [auth, strip, sec, gz]
    limited:
      rule: "Host(`limited.b3.swarm`)"
      service: app
      tls: {{}}
      middlewares: [limit]
  middlewares:
    auth: {{ basicAuth: {{ users: ["{hash}"] }} }}
    strip: {{ stripPrefix: {{ prefixes: [/api] }} }}
    sec: {{ headers: {{ stsSeconds: 60, customResponseHeaders: {{ X-Edge: yes }} }} }}
    gz: {{ compress: {{ minResponseBodyBytes: 10 }} }}
    limit: {{ rateLimit: {{ average: 1, burst: 2, period: 10s }} }}
"#
    );
    let edge = Edge::start(&config(&[&b], &extra), &[]);
    let r = edge.resolve("app.b3.swarm");
    let (_, out) = curl(&[
        "-sk",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--resolve",
        &r,
        &edge.https("app.b3.swarm", "/api/headers"),
    ]);
    assert_eq!(out, "401");
    let (_, out) = curl(&[
        "-sk",
        "-i",
        "--compressed",
        "-u",
        "alice:secret",
        "--resolve",
        &r,
        &edge.https("app.b3.swarm", "/api/headers"),
    ]);
    let lower = out.to_lowercase();
    assert!(
        lower.contains("strict-transport-security: max-age=60"),
        "{out}"
    );
    assert!(lower.contains("x-edge: yes"), "{out}");
    assert!(
        lower.contains("content-encoding: br"),
        "curl offers br, edge prefers it: {out}"
    );
    assert!(out.contains("uri: /headers"), "prefix stripped: {out}");
    let codes: Vec<String> = (0..4)
        .map(|_| {
            curl(&[
                "-sk",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--resolve",
                &edge.resolve("limited.b3.swarm"),
                &edge.https("limited.b3.swarm", "/"),
            ])
            .1
        })
        .collect();
    assert_eq!(codes, ["200", "200", "429", "429"]);
}

#[test]
fn hot_reload_of_config_and_certificates_without_dropping_requests() {
    let a = backend("a");
    let b = backend("b");
    let edge = Edge::start(&config(&[&a], ""), &[]);
    let get = |path: &str| {
        curl(&[
            "-sk",
            "--resolve",
            &edge.resolve("app.b3.swarm"),
            &edge.https("app.b3.swarm", path),
        ])
        .1
    };
    assert_eq!(get("/"), "backend a\n");
    // A slow request in flight across the reload completes.
    let slow_cmd = (
        edge.resolve("app.b3.swarm"),
        edge.https("app.b3.swarm", "/slow"),
    );
    let slow = std::thread::spawn(move || curl(&["-sk", "--resolve", &slow_cmd.0, &slow_cmd.1]).1);
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(&edge.config, config(&[&b], "")).unwrap();
    eventually(10, "reload to backend b", || get("/") == "backend b\n");
    assert_eq!(slow.join().unwrap(), "slow done\n");
    // A bad change is rejected; the last good configuration keeps serving.
    std::fs::write(
        &edge.config,
        config(&[&b], "").replace("Host(`app.b3.swarm`)", "Host(app.b3.swarm)"),
    )
    .unwrap();
    eventually(10, "rejection reported", || {
        edge.api("/api/overview")["providers"]["file"]["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("http.routers.app.rule") && e.contains("not quoted"))
    });
    assert_eq!(get("/"), "backend b\n");
    let health = edge.api("/health");
    assert_eq!(health["status"], "degraded", "{health}");

    // Certificates from files, chosen by SNI, reloaded when rewritten.
    let dir = edge.dir.path();
    let (crt, key) = write_cert(dir, "shop", "shop.example");
    let cfg = config(
        &[&b],
        "    shop:\n      rule: \"Host(`shop.example`)\"\n      service: app\n      tls: {}\n",
    ) + &format!(
        "tls:\n  certificates:\n    - certFile: {}\n      keyFile: {}\n",
        crt.display(),
        key.display()
    );
    std::fs::write(&edge.config, &cfg).unwrap();
    let shop = |ca: &std::path::Path| {
        curl(&[
            "-sS",
            "--cacert",
            ca.to_str().unwrap(),
            "--resolve",
            &format!("shop.example:{}:127.0.0.1", edge.secure),
            &format!("https://shop.example:{}/", edge.secure),
        ])
    };
    eventually(10, "shop certificate served", || {
        shop(&crt).1 == "backend b\n"
    });
    let old = dir.join("old.crt");
    std::fs::copy(&crt, &old).unwrap();
    write_cert(dir, "shop", "shop.example");
    eventually(10, "new shop certificate served", || {
        shop(&crt).1 == "backend b\n"
    });
    assert_ne!(shop(&old).0, 0, "the old certificate is no longer served");
}

#[test]
fn https_backends_verified_or_explicitly_not() {
    let b = tls_backend("secure");
    let cfg = config(&[&b], "");
    // Self-signed backend certificate: refused by default (502 naming TLS)...
    let edge = Edge::start(&cfg, &[]);
    let (_, out) = curl(&[
        "-sk",
        "--resolve",
        &edge.resolve("app.b3.swarm"),
        &edge.https("app.b3.swarm", "/"),
    ]);
    assert!(
        out.starts_with("502 bad gateway") && out.contains("TLS"),
        "{out}"
    );
    drop(edge);
    // ...accepted with --backend-insecure-skip-verify.
    let edge = Edge::start(&cfg, &["--backend-insecure-skip-verify", "true"]);
    let (_, out) = curl(&[
        "-sk",
        "--resolve",
        &edge.resolve("app.b3.swarm"),
        &edge.https("app.b3.swarm", "/headers"),
    ]);
    assert!(out.contains("x-forwarded-proto: https"), "{out}");
}

/// Many HTTP/2 streams on one connection, small and large responses, with
/// edge on its single-threaded event loop: every response arrives whole
/// (HTTP/2 writes are coalesced and their flush deferred to the next poll
/// of the connection, so a lost or late flush would hang or cut one).
#[test]
fn http2_multiplexed_streams_on_one_worker_thread() {
    let b = backend("mux");
    let edge = Edge::start(&config(&[&b], ""), &["--worker-threads", "1"]);
    let resolve = edge.resolve("app.b3.swarm");
    let mut sizes = Vec::new();
    for i in 0..60u64 {
        // Mostly small (several per TLS record), some past a record (16 KiB)
        // and past the initial HTTP/2 window (64 KiB).
        sizes.push(match i % 6 {
            0 => 300_000,
            1 => 20_000,
            _ => 1_000 + i,
        });
    }
    let urls: Vec<String> = sizes
        .iter()
        .map(|n| edge.https("app.b3.swarm", &format!("/big?{n}")))
        .collect();
    let mut args: Vec<&str> = vec![
        "-sSk",
        "--http2",
        "-Z",
        "--parallel-max",
        "60",
        "--parallel-immediate",
        "--max-time",
        "30",
        "--resolve",
        &resolve,
        "-w",
        "%{size_download} %{http_code} %{http_version}\n",
    ];
    for u in &urls {
        args.extend(["-o", "/dev/null", u.as_str()]);
    }
    let (code, out) = curl(&args);
    assert_eq!(code, 0, "curl failed: {out}\n{}", edge.log());
    let mut got: Vec<String> = out.lines().map(String::from).collect();
    let mut want: Vec<String> = sizes.iter().map(|n| format!("{n} 200 2")).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
}
