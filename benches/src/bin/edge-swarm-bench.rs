//! Time to route with the Swarm provider, on a private single-node swarm
//! (the `b3-tests` dockerd fixture):
//!
//! - `docker service create` returning → the provider's snapshot lists a
//!   server for it (includes Swarm scheduling and starting the container);
//! - `docker service rm` returning → the service is gone from the snapshot;
//! - building the configuration for 100 services × 10 routers (1,000
//!   routers) from their labels.
//!
//! Traefik's swarm provider polls (default every 15 s), so its expected
//! delay for either change is half the period, 7.5 s: that *modeled*
//! number is the reference column (no Traefik image is reachable here).
//! Needs root (dockerd). Run with `benches/run edge-swarm`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use b3_benches::{median, percentile, render, Better, Row};
use b3_tests::dockerd::Dockerd;
use edge::config::Service;
use edge::swarm::{
    self, SwarmConfig, SwarmNetwork, SwarmService, SwarmSnapshot, SwarmState, SwarmTask,
};
use tokio::sync::watch;

const ROUNDS: usize = 10;
const TRAEFIK_EXPECTED: f64 = 7.5;

fn has_server(s: &SwarmSnapshot, name: &str) -> bool {
    matches!(s.dynamic.http.services.get(name), Some(Service::LoadBalancer(lb)) if !lb.servers.is_empty())
}

fn wait_for(
    rx: &watch::Receiver<SwarmSnapshot>,
    timeout: Duration,
    f: impl Fn(&SwarmSnapshot) -> bool,
) -> anyhow::Result<Duration> {
    let t = Instant::now();
    while t.elapsed() < timeout {
        if f(&rx.borrow()) {
            return Ok(t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    anyhow::bail!("timed out after {timeout:?}")
}

fn build_1000_routers() -> f64 {
    let mut state = SwarmState {
        networks: vec![SwarmNetwork {
            id: "n".into(),
            name: "public".into(),
            ingress: false,
        }],
        edge_networks: Some(vec!["n".into()]),
        ..SwarmState::default()
    };
    for s in 0..100 {
        let mut labels = BTreeMap::new();
        labels.insert("traefik.enable".to_string(), "true".to_string());
        labels.insert(
            format!("traefik.http.services.s{s}.loadbalancer.server.port"),
            "80".into(),
        );
        for r in 0..10 {
            labels.insert(
                format!("traefik.http.routers.s{s}r{r}.rule"),
                format!("Host(`s{s}.example.com`) && PathPrefix(`/r{r}`)"),
            );
        }
        state.services.push(SwarmService {
            id: format!("id{s}"),
            name: format!("svc{s}"),
            labels,
            networks: vec!["n".into()],
            replicas: Some(2),
            ..SwarmService::default()
        });
        for t in 0..2 {
            state.tasks.push(SwarmTask {
                id: format!("t{s}-{t}"),
                service_id: format!("id{s}"),
                state: "running".into(),
                desired_state: "running".into(),
                addresses: vec![(
                    "n".into(),
                    format!("10.0.{s}.{}", t + 2)
                        .parse()
                        .unwrap_or([10, 0, 0, 1].into()),
                )],
                ..SwarmTask::default()
            });
        }
    }
    let cfg = SwarmConfig::default();
    let snap = swarm::build(&state, &cfg);
    assert_eq!(snap.dynamic.http.routers.len(), 1000, "{:?}", snap.global);
    let mut samples = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let _ = swarm::build(&state, &cfg);
        samples.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    median(&samples).unwrap_or(f64::NAN)
}

fn main() -> anyhow::Result<()> {
    let build_ms = build_1000_routers();

    let d = Dockerd::start()?;
    d.swarm_init()?;
    d.import_busybox("b3/busybox:test")?;
    d.run(&[
        "network",
        "create",
        "--driver",
        "overlay",
        "--attachable",
        "labnet",
    ])?;
    let rt = tokio::runtime::Runtime::new()?;
    let (tx, rx) = watch::channel(SwarmSnapshot::default());
    let (trigger, shutdown) = b3_common::shutdown::channel();
    let cfg = SwarmConfig {
        docker_host: d.docker_host(),
        networks: vec!["labnet".into()],
        container: Some("none".into()),
        ..SwarmConfig::default()
    };
    rt.spawn(swarm::run(cfg, tx, shutdown));

    let (mut up, mut down) = (Vec::new(), Vec::new());
    for i in 0..ROUNDS {
        let name = format!("bench{i}");
        d.run(&[
            "service",
            "create",
            "--detach",
            "--name",
            &name,
            "--network",
            "labnet",
            "--label",
            "edge.enable=true",
            "--label",
            "edge.port=8000",
            "b3/busybox:test",
            "/bin/b3-demo",
        ])?;
        up.push(wait_for(&rx, Duration::from_secs(60), |s| has_server(s, &name))?.as_secs_f64());
        d.run(&["service", "rm", &name])?;
        down.push(
            wait_for(&rx, Duration::from_secs(30), |s| {
                !s.dynamic.http.routers.contains_key(&name)
            })?
            .as_secs_f64(),
        );
    }
    trigger.trigger();
    rt.shutdown_timeout(Duration::from_secs(5));

    let row = |w: &str, v: f64, reference: Option<f64>, name: &str| Row {
        workload: w.into(),
        unit: "s".into(),
        ours: v,
        reference_name: name.into(),
        reference,
        better: Better::Lower,
        target: reference.map(|_| 1.0),
    };
    let rows = vec![
        row(
            "service create -> routed, median",
            median(&up).unwrap_or(f64::NAN),
            Some(TRAEFIK_EXPECTED),
            "traefik*",
        ),
        row(
            "service create -> routed, p90",
            percentile(&up, 90.0).unwrap_or(f64::NAN),
            None,
            "",
        ),
        row(
            "service rm -> gone, median",
            median(&down).unwrap_or(f64::NAN),
            Some(TRAEFIK_EXPECTED),
            "traefik*",
        ),
        row(
            "service rm -> gone, p90",
            percentile(&down, 90.0).unwrap_or(f64::NAN),
            None,
            "",
        ),
        Row {
            workload: "build 1000 routers (100 services)".into(),
            unit: "ms".into(),
            ours: build_ms,
            reference_name: String::new(),
            reference: None,
            better: Better::Lower,
            target: None,
        },
    ];
    print!("{}", render("edge swarm provider: time to route", &rows));
    println!("* traefik: modeled, not measured: half of its default 15 s polling period");
    println!("targets (issue 6): median <= 1 s for create -> 200 and rm -> 404");
    Ok(())
}
