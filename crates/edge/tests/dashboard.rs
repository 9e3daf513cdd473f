//! The dashboard, loaded in headless Chromium: it renders the routers and
//! shows a failing server as down.

mod common;

use common::*;

#[test]
fn dashboard_lists_routers_and_shows_a_failing_server_down() {
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
    let dom = chromium_dom(&format!("http://127.0.0.1:{}/dashboard/", edge.admin));
    assert!(
        dom.contains("shop@file"),
        "router missing from the DOM:\n{dom}"
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
