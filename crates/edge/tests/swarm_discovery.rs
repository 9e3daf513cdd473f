//! The Swarm provider against a real dockerd (single-node swarm from the
//! `b3-tests` fixture): labelled services show up with their task IPs,
//! follow scaling and removal within about a second, broken labels stay
//! contained, and a dockerd restart is survived.
//!
//! The provider runs in-process with `DOCKER_HOST` = the fixture's socket
//! and `--swarm-network labnet` (edge itself runs on the host here, not in
//! a container). Requests to the servers it lists are made from a
//! container on the overlay network, since task IPs are not reachable from
//! the host.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use b3_tests::dockerd::Dockerd;
use b3_tests::process::ChildGuard;
use b3_tests::wait;
use edge::config::Service;
use edge::swarm::{self, Status, SwarmConfig, SwarmSnapshot};
use tokio::sync::watch;

const IMAGE: &str = "b3/busybox:test";
const NET: &str = "labnet";

/// The provider running on its own runtime; stops when dropped.
struct Provider {
    rx: watch::Receiver<SwarmSnapshot>,
    trigger: b3_common::shutdown::ShutdownTrigger,
    rt: Option<tokio::runtime::Runtime>,
}

impl Provider {
    fn start(d: &Dockerd) -> Provider {
        let cfg = SwarmConfig {
            docker_host: d.docker_host(),
            networks: vec![NET.into()],
            container: Some("not-a-container".into()),
            ..SwarmConfig::default()
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (tx, rx) = watch::channel(SwarmSnapshot::default());
        let (trigger, shutdown) = b3_common::shutdown::channel();
        rt.spawn(async move {
            if let Err(e) = swarm::run(cfg, tx, shutdown).await {
                panic!("provider failed: {e}");
            }
        });
        Provider {
            rx,
            trigger,
            rt: Some(rt),
        }
    }

    fn now(&self) -> SwarmSnapshot {
        self.rx.borrow().clone()
    }

    /// Waits for a snapshot satisfying `f`.
    fn until<T>(
        &self,
        what: &str,
        timeout: Duration,
        f: impl Fn(&SwarmSnapshot) -> Option<T>,
    ) -> T {
        wait::until(what, timeout, Duration::from_millis(20), || {
            f(&self.rx.borrow())
        })
        .unwrap_or_else(|e| panic!("{e}; last snapshot:\n{:#?}", self.now()))
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        self.trigger.trigger();
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

fn servers(s: &SwarmSnapshot, service: &str) -> Vec<String> {
    match s.dynamic.http.services.get(service) {
        Some(Service::LoadBalancer(lb)) => lb.servers.iter().map(|s| s.url.clone()).collect(),
        _ => Vec::new(),
    }
}

fn ips_of(urls: &[String]) -> BTreeSet<String> {
    urls.iter()
        .filter_map(|u| {
            u.strip_prefix("http://")?
                .rsplit_once(':')
                .map(|(ip, _)| ip.to_string())
        })
        .collect()
}

fn setup() -> Dockerd {
    let d = Dockerd::start().unwrap();
    d.swarm_init().unwrap();
    d.import_busybox(IMAGE).unwrap();
    d.run(&[
        "network",
        "create",
        "--driver",
        "overlay",
        "--attachable",
        NET,
    ])
    .unwrap();
    d
}

fn create(d: &Dockerd, name: &str, replicas: u32, labels: &[&str]) {
    let mut args: Vec<String> = [
        "service",
        "create",
        "--detach",
        "--name",
        name,
        "--network",
        NET,
        "--replicas",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(replicas.to_string());
    for l in labels {
        args.push("--label".into());
        args.push(l.to_string());
    }
    args.push(IMAGE.into());
    args.push("/bin/b3-demo".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    d.run(&args).unwrap();
}

/// Asks every server from a container on the overlay; returns the bodies.
fn ask_all(d: &Dockerd, urls: &[String]) -> String {
    let script = urls
        .iter()
        .filter_map(|u| u.strip_prefix("http://")?.rsplit_once(':'))
        .map(|(ip, port)| format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {ip} {port}"))
        .collect::<Vec<_>>()
        .join("; ");
    wait::until(
        "the servers to answer",
        Duration::from_secs(30),
        Duration::from_millis(500),
        || {
            let out = d
                .run(&["run", "--rm", "--network", NET, IMAGE, "sh", "-c", &script])
                .ok()?;
            (out.matches("hello from").count() == urls.len()).then_some(out)
        },
    )
    .unwrap()
}

#[test]
fn swarm_services_are_discovered_scaled_and_removed() {
    let d = setup();
    let p = Provider::start(&d);
    create(&d, "demo", 2, &["edge.enable=true", "edge.port=8000"]);

    let urls = p.until("demo with 2 servers", Duration::from_secs(60), |s| {
        let v = servers(s, "demo");
        (v.len() == 2).then_some(v)
    });
    let snap = p.now();
    assert_eq!(
        snap.dynamic.http.routers["demo"].rule,
        "Host(`demo.b3.swarm`)"
    );
    let want: BTreeSet<String> = d.task_ips("demo", NET).unwrap().into_iter().collect();
    assert_eq!(ips_of(&urls), want, "servers are the task IPs on {NET}");
    assert_eq!(snap.service("demo").unwrap().status, Status::Routed);
    // Both servers really answer, each from a different task.
    let out = ask_all(&d, &urls);
    let hosts: BTreeSet<&str> = out
        .lines()
        .filter(|l| l.starts_with("hello from"))
        .collect();
    assert_eq!(hosts.len(), 2, "{out}");

    // Scale up: the new tasks are added once they run.
    d.run(&["service", "scale", "--detach", "demo=4"]).unwrap();
    let urls = p.until("demo with 4 servers", Duration::from_secs(60), |s| {
        let v = servers(s, "demo");
        (v.len() == 4).then_some(v)
    });
    let want: BTreeSet<String> = wait::until(
        "4 task IPs",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || {
            let ips: BTreeSet<String> = d.task_ips("demo", NET).ok()?.into_iter().collect();
            (ips.len() == 4).then_some(ips)
        },
    )
    .unwrap();
    assert_eq!(ips_of(&urls), want);

    // Scale down: the tasks being stopped leave at once (desired state
    // shutdown), before they are gone.
    let t = Instant::now();
    d.run(&["service", "scale", "--detach", "demo=1"]).unwrap();
    p.until("demo with 1 server", Duration::from_secs(10), |s| {
        (servers(s, "demo").len() == 1).then_some(())
    });
    let took = t.elapsed();
    assert!(
        took < Duration::from_millis(1500),
        "scale down took {took:?}"
    );

    // Removal: gone within a second.
    let t = Instant::now();
    d.run(&["service", "rm", "demo"]).unwrap();
    p.until("demo to disappear", Duration::from_secs(10), |s| {
        (!s.dynamic.http.routers.contains_key("demo") && s.service("demo").is_none()).then_some(())
    });
    let took = t.elapsed();
    assert!(took < Duration::from_millis(1000), "removal took {took:?}");
}

#[test]
fn swarm_broken_labels_affect_only_their_service() {
    let d = setup();
    let p = Provider::start(&d);
    create(&d, "good", 1, &["edge.enable=true", "edge.port=8000"]);
    create(
        &d,
        "shop",
        1,
        &[
            "traefik.enable=true",
            "traefik.http.routers.shop.rule=Host(shop)",
            "traefik.http.services.shop.loadbalancer.server.port=8000",
        ],
    );
    create(&d, "noport", 1, &["traefik.enable=true"]);
    // A Traefik-labelled service, labels as in a Traefik stack file.
    create(
        &d,
        "whoami",
        1,
        &[
            "traefik.enable=true",
            "traefik.swarm.network=labnet",
            "traefik.http.routers.whoami.rule=Host(`whoami.example.com`) && PathPrefix(`/`)",
            "traefik.http.routers.whoami.entrypoints=websecure",
            "traefik.http.routers.whoami.tls=true",
            "traefik.http.routers.whoami.tls.certresolver=le",
            "traefik.http.routers.whoami.middlewares=whoami-strip",
            "traefik.http.middlewares.whoami-strip.stripprefix.prefixes=/api",
            "traefik.http.services.whoami.loadbalancer.server.port=8000",
        ],
    );

    let snap = p.until("good and whoami routed", Duration::from_secs(60), |s| {
        (servers(s, "good").len() == 1 && servers(s, "whoami").len() == 1).then(|| s.clone())
    });
    let shop = snap.service("shop").unwrap();
    assert_eq!(shop.status, Status::Error, "{shop:#?}");
    assert!(!snap.dynamic.http.routers.contains_key("shop"));
    let text = swarm::explain::render(&snap, Some("shop")).unwrap();
    assert!(
        text.contains("label traefik.http.routers.shop.rule on service shop")
            && text.contains("write Host(`shop`)"),
        "{text}"
    );
    let noport = snap.service("noport").unwrap();
    assert_eq!(noport.status, Status::NoServers);
    assert!(
        noport.reason.contains("loadbalancer.server.port"),
        "{}",
        noport.reason
    );
    let w = &snap.dynamic.http.routers["whoami"];
    assert_eq!(w.middlewares, vec!["whoami-strip"]);
    assert!(w.tls.is_some());
    assert_eq!(snap.service("good").unwrap().status, Status::Routed);

    // The explain command reads dockerd itself and says the same.
    let cfg = SwarmConfig {
        docker_host: d.docker_host(),
        networks: vec![NET.into()],
        container: Some("not-a-container".into()),
        ..SwarmConfig::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let text = rt
        .block_on(swarm::explain::explain(&cfg, Some("shop"), false))
        .unwrap();
    assert!(
        text.contains("NOT ROUTED") && text.contains("write Host(`shop`)"),
        "{text}"
    );
    let all = rt
        .block_on(swarm::explain::explain(&cfg, None, false))
        .unwrap();
    assert!(
        all.contains("service noport") && all.contains("good "),
        "{all}"
    );
    let json = rt
        .block_on(swarm::explain::explain(&cfg, None, true))
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["services"].as_array().unwrap().len(), 4);

    // Through a socket proxy on TCP that allows GET only, as
    // docker-socket-proxy does: same answer.
    let proxy = GetOnlyProxy::start(d.socket());
    let cfg = SwarmConfig {
        docker_host: format!("tcp://{}", proxy.addr),
        ..cfg
    };
    let text = rt
        .block_on(swarm::explain::explain(&cfg, Some("shop"), false))
        .unwrap();
    assert!(text.contains("write Host(`shop`)"), "{text}");
    assert!(proxy.requests.load(std::sync::atomic::Ordering::SeqCst) >= 3);
    assert_eq!(proxy.refused.load(std::sync::atomic::Ordering::SeqCst), 0);
}

/// A TCP → unix-socket forwarder that refuses anything but GET, like
/// docker-socket-proxy with POST=0. Its threads end with the test process.
struct GetOnlyProxy {
    addr: std::net::SocketAddr,
    requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    refused: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl GetOnlyProxy {
    fn start(socket: &std::path::Path) -> GetOnlyProxy {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let refused = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (req, bad, socket) = (requests.clone(), refused.clone(), socket.to_path_buf());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut client) = conn else { return };
                let mut head = [0u8; 4];
                if client.read_exact(&mut head).is_err() {
                    continue;
                }
                if &head != b"GET " {
                    bad.fetch_add(1, Ordering::SeqCst);
                    let _ =
                        client.write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n");
                    continue;
                }
                req.fetch_add(1, Ordering::SeqCst);
                let Ok(mut daemon) = std::os::unix::net::UnixStream::connect(&socket) else {
                    continue;
                };
                let _ = daemon.write_all(&head);
                let (Ok(mut c2), Ok(mut d2)) = (client.try_clone(), daemon.try_clone()) else {
                    continue;
                };
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c2, &mut d2);
                    let _ = d2.shutdown(std::net::Shutdown::Write);
                });
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut daemon, &mut client);
                    let _ = client.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        GetOnlyProxy {
            addr,
            requests,
            refused,
        }
    }
}

#[test]
fn swarm_provider_survives_a_dockerd_restart() {
    // Declared before the fixture so that it drops after it: the fixture's
    // teardown talks to (and then kills) the restarted daemon.
    let restarted: ChildGuard;
    let d = setup();
    let p = Provider::start(&d);
    create(&d, "before", 1, &["edge.enable=true", "edge.port=8000"]);
    p.until("before routed", Duration::from_secs(60), |s| {
        (servers(s, "before").len() == 1).then_some(())
    });

    // Stop dockerd (the fixture's daemon, by the pid it wrote).
    let pidfile = d.dir().join("docker.pid");
    let pid = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .to_string();
    b3_tests::run(Command::new("kill").args(["-TERM", &pid])).unwrap();
    wait::until(
        "dockerd to stop",
        Duration::from_secs(40),
        Duration::from_millis(100),
        || {
            // The fixture holds the daemon as its child: once it exits it stays a
            // zombie until the fixture reaps it, so look at its state.
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat.rsplit_once(") ").and_then(|(_, r)| r.chars().next());
            matches!(state, None | Some('Z') | Some('X')).then_some(())
        },
    )
    .unwrap();
    // The provider notices, and keeps the last configuration.
    let snap = p.until("the provider to notice", Duration::from_secs(10), |s| {
        s.docker_error.clone().map(|_| s.clone())
    });
    assert!(snap.dynamic.http.routers.contains_key("before"));
    assert!(snap
        .docker_error
        .as_deref()
        .unwrap_or_default()
        .contains("dockerd"));

    // Start it again on the same data.
    let dir = d.dir().to_path_buf();
    let log = std::fs::File::create(dir.join("dockerd-restarted.log")).unwrap();
    restarted = ChildGuard::spawn(
        "dockerd (restarted)",
        Command::new("dockerd")
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(&pidfile)
            .arg("-H")
            .arg(d.docker_host())
            .args(["--iptables=false", "--bridge=none"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log),
    )
    .unwrap();
    wait::until(
        "the swarm to be back",
        Duration::from_secs(60),
        Duration::from_millis(250),
        || d.run(&["service", "ls"]).ok(),
    )
    .unwrap();
    // A change made after the restart is picked up.
    create(&d, "after", 1, &["edge.enable=true", "edge.port=8000"]);
    let snap = p.until("after routed", Duration::from_secs(60), |s| {
        (servers(s, "after").len() == 1 && s.docker_error.is_none()).then(|| s.clone())
    });
    assert!(snap.dynamic.http.routers.contains_key("before"));
    drop(p);
    drop(d);
    drop(restarted);
}

#[test]
fn swarm_rolling_update_always_keeps_a_server() {
    let d = setup();
    let p = Provider::start(&d);
    create(&d, "roll", 2, &["edge.enable=true", "edge.port=8000"]);
    let before = p.until("roll with 2 servers", Duration::from_secs(60), |s| {
        let v = servers(s, "roll");
        (v.len() == 2).then(|| ips_of(&v))
    });
    // Record the server count of every snapshot published during the update.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<usize>::new()));
    let mut rx = p.rx.clone();
    let rec = seen.clone();
    let recorder = p.rt.as_ref().unwrap().spawn(async move {
        while rx.changed().await.is_ok() {
            let n = servers(&rx.borrow_and_update(), "roll").len();
            rec.lock().unwrap().push(n);
        }
    });
    d.run(&[
        "service",
        "update",
        "--detach",
        "--force",
        "--update-order",
        "start-first",
        "--update-parallelism",
        "1",
        "roll",
    ])
    .unwrap();
    let after = p.until("both tasks replaced", Duration::from_secs(80), |s| {
        let ips = ips_of(&servers(s, "roll"));
        (ips.len() == 2 && ips.is_disjoint(&before)).then_some(ips)
    });
    recorder.abort();
    let counts = seen.lock().unwrap().clone();
    assert!(!counts.is_empty());
    assert!(
        counts.iter().all(|n| *n >= 1),
        "a snapshot had no server: {counts:?}"
    );
    // The replaced tasks left the snapshot as soon as Swarm marked them for
    // shutdown; their containers linger until they exit (busybox httpd as
    // PID 1 ignores SIGTERM, so ~10 s), then only the new ones remain.
    let want: BTreeSet<String> = wait::until(
        "the old containers to be gone",
        Duration::from_secs(40),
        Duration::from_millis(200),
        || {
            let ips: BTreeSet<String> = d.task_ips("roll", NET).ok()?.into_iter().collect();
            (ips.len() == 2).then_some(ips)
        },
    )
    .unwrap();
    assert_eq!(after, want);
}

/// A stack file as written for Traefik's swarm provider: labels unchanged.
const TRAEFIK_STACK: &str = r#"
version: "3.8"
services:
  whoami:
    image: b3/busybox:test
    command: ["/bin/b3-demo"]
    networks: [front]
    deploy:
      replicas: 2
      labels:
        - "traefik.enable=true"
        - "traefik.swarm.network=shop_front"
        - "traefik.constraint-label=public"
        - "traefik.http.routers.whoami.rule=Host(`whoami.example.com`)"
        - "traefik.http.routers.whoami.entrypoints=websecure"
        - "traefik.http.routers.whoami.tls=true"
        - "traefik.http.routers.whoami.tls.certresolver=le"
        - "traefik.http.routers.whoami.middlewares=whoami-auth,whoami-headers"
        - "traefik.http.middlewares.whoami-auth.basicauth.users=admin:$$apr1$$H6uskkkW$$IgXLP6ewTrSuBkTrqE8wj/"
        - "traefik.http.middlewares.whoami-headers.headers.customresponseheaders.X-Served-By=edge"
        - "traefik.http.routers.whoami-http.rule=Host(`whoami.example.com`)"
        - "traefik.http.routers.whoami-http.entrypoints=web"
        - "traefik.http.routers.whoami-http.middlewares=to-https"
        - "traefik.http.middlewares.to-https.redirectscheme.scheme=https"
        - "traefik.http.services.whoami.loadbalancer.server.port=8000"
        - "traefik.http.services.whoami.loadbalancer.sticky.cookie.name=srv"
networks:
  front:
    driver: overlay
    attachable: true
"#;

#[test]
fn swarm_a_traefik_stack_file_is_served_unchanged() {
    let d = Dockerd::start().unwrap();
    d.swarm_init().unwrap();
    d.import_busybox(IMAGE).unwrap();
    let file = d.dir().join("traefik-stack.yml");
    std::fs::write(&file, TRAEFIK_STACK).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (tx, rx) = watch::channel(SwarmSnapshot::default());
    let (trigger, shutdown) = b3_common::shutdown::channel();
    // The network does not exist yet when edge starts: it is picked up
    // once the stack creates it.
    let cfg = SwarmConfig {
        docker_host: d.docker_host(),
        networks: vec!["shop_front".into()],
        container: Some("not-a-container".into()),
        constraints: Some("Label(`traefik.constraint-label`, `public`)".into()),
        ..SwarmConfig::default()
    };
    rt.spawn(swarm::run(cfg, tx, shutdown));
    d.run(&[
        "stack",
        "deploy",
        "--resolve-image",
        "never",
        "-c",
        file.to_str().unwrap(),
        "shop",
    ])
    .unwrap();
    let snap = wait::until(
        "shop_whoami routed to 2 tasks",
        Duration::from_secs(60),
        Duration::from_millis(50),
        || {
            let s = rx.borrow();
            (servers(&s, "whoami").len() == 2).then(|| s.clone())
        },
    )
    .unwrap();
    let diag = snap.service("shop_whoami").unwrap();
    assert_eq!(diag.status, Status::Routed, "{diag:#?}");
    assert!(
        diag.issues
            .iter()
            .all(|i| i.severity == swarm::labels::Severity::Warning),
        "{diag:#?}"
    );
    let http = &snap.dynamic.http;
    assert_eq!(
        http.routers["whoami"].middlewares,
        vec!["whoami-auth", "whoami-headers"]
    );
    assert_eq!(http.routers["whoami-http"].middlewares, vec!["to-https"]);
    assert!(http.middlewares.contains_key("to-https"));
    assert!(snap.global.is_empty(), "{:?}", snap.global);
    assert!(edge::config::validate(&snap.dynamic, "swarm").is_empty());
    let want: BTreeSet<String> = d
        .task_ips("shop_whoami", "shop_front")
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(ips_of(&servers(&snap, "whoami")), want);
    trigger.trigger();
    rt.shutdown_timeout(Duration::from_secs(5));
}
