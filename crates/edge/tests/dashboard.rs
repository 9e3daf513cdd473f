//! The dashboard, loaded in headless Chromium: it renders the routers and
//! shows a failing server as down.

mod common;

use std::process::Command;

use common::*;

fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser"].into_iter().find(|c| {
        Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

#[test]
fn dashboard_lists_routers_and_shows_a_failing_server_down() {
    let Some(browser) = chromium() else {
        eprintln!("SKIPPED: chromium is not installed (apt-get install chromium)");
        return;
    };
    let a = backend("a");
    let b = backend("b");
    let cfg = format!(
        r#"
http:
  routers:
    shop: {{ rule: "Host(`shop.b3.swarm`)", service: shop, tls: {{}} }}
    broken: {{ rule: "Host(`x`)", service: missing@swarm }}
  services:
    shop:
      loadBalancer:
        servers: [ {{ url: "{}" }}, {{ url: "{}" }} ]
        healthCheck: {{ path: /health, interval: 200ms }}
"#,
        a.url(),
        b.url()
    );
    let edge = Edge::start(&cfg, &[]);
    b.health_status
        .store(503, std::sync::atomic::Ordering::Relaxed);
    eventually(10, "b down in the API", || {
        edge.api("/api/http/services/shop@file")["serverStatus"][b.url()] == "DOWN"
    });
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
            &format!("http://127.0.0.1:{}/dashboard/", edge.admin),
        ])
        .output()
        .expect("running chromium");
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains("shop@file"),
        "router missing from the DOM:\n{dom}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dom.contains("Host(`shop.b3.swarm`)"), "{dom}");
    // The broken router is listed with its error.
    assert!(
        dom.contains("broken@file") && dom.contains("missing@swarm is not defined"),
        "{dom}"
    );
    // The failing server's row says down; the healthy one up.
    let row = |url: &str| {
        dom.split("<tr")
            .find(|r| r.contains(url))
            .unwrap_or_else(|| panic!("no row for {url}:\n{dom}"))
            .to_string()
    };
    assert!(
        row(&b.url()).contains("class=\"down\""),
        "{}",
        row(&b.url())
    );
    assert!(row(&a.url()).contains("class=\"up\""), "{}", row(&a.url()));
}
