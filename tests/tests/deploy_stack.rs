//! `deploy/`: the stack file's essentials, `docker stack config`, and the
//! whole stack deployed on a real single-node swarm (the dockerd fixture):
//! image made by `deploy/build-image`, host side installed by
//! `deploy/install-host`, `docker stack deploy`, HTTPS through edge to the
//! demo service, a file written through the host's `/data` read back from
//! the store's admin port, the VIP held by the vip task, and
//! `docker stack rm` leaving nothing behind.
//!
//! Knobs: `B3_DEPLOY_TEST_BINS` = a directory with `store`, `edge`, `vip`
//! (e.g. `target/release`) to build the image from; default: the binaries
//! cargo built next to this test (debug, stripped into the image).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use b3_tests::dockerd::Dockerd;
use b3_tests::process::ChildGuard;
use b3_tests::{http, wait};
use serde_yaml_ng::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn stack_path() -> PathBuf {
    repo().join("deploy/stack.yml")
}

fn stack() -> Value {
    let text = std::fs::read_to_string(stack_path()).unwrap();
    let mut v: Value = serde_yaml_ng::from_str(&text).unwrap();
    v.apply_merge().unwrap();
    v
}

fn s<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    let mut cur = v;
    for p in path {
        cur = cur
            .get(*p)
            .unwrap_or_else(|| panic!("stack file: no {} (in {path:?})", p));
    }
    cur
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|seq| {
            seq.iter()
                .map(|x| match x {
                    Value::String(s) => s.clone(),
                    other => serde_yaml_ng::to_string(other).unwrap().trim().to_string(),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn env(v: &Value, service: &str, key: &str) -> String {
    s(v, &["services", service, "environment", key])
        .as_str()
        .unwrap_or_else(|| panic!("{service}: {key} is not a string"))
        .to_string()
}

#[test]
fn stack_file_has_the_essentials() {
    let v = stack();
    let services = [
        "store",
        "store-bootstrap",
        "edge",
        "vip",
        "vip-preferred",
        "demo",
    ];
    for svc in services {
        s(&v, &["services", svc]);
    }
    for svc in ["store", "store-bootstrap", "edge", "vip", "vip-preferred"] {
        assert_eq!(
            s(&v, &["services", svc, "deploy", "mode"]).as_str(),
            Some("global"),
            "{svc} runs on every node"
        );
    }

    // Host network: the stack's `hostnet` is Swarm's `host`.
    assert_eq!(
        s(&v, &["networks", "hostnet", "external"]).as_bool(),
        Some(true)
    );
    assert_eq!(
        s(&v, &["networks", "hostnet", "name"]).as_str(),
        Some("host")
    );
    for svc in ["store", "vip", "vip-preferred"] {
        assert_eq!(
            strings(s(&v, &["services", svc, "networks"])),
            ["hostnet"],
            "{svc} on the host network"
        );
    }

    // store: bootstrap mode, data in a host directory, the same one the
    // companion sees.
    let cmd = strings(s(&v, &["services", "store", "command"]));
    assert_eq!(cmd, ["store", "server", "--bootstrap"]);
    let data_dir = env(&v, "store", "STORE_DATA_DIR");
    for svc in ["store", "store-bootstrap"] {
        let vols = s(&v, &["services", svc, "volumes"]).as_sequence().unwrap();
        assert!(
            vols.iter()
                .any(|m| m.get("type").and_then(Value::as_str) == Some("bind")
                    && m.get("target").and_then(Value::as_str) == Some(data_dir.as_str())
                    && m.get("source").and_then(Value::as_str)
                        == Some("${B3_STORE_DIR:-/var/lib/b3/store}")),
            "{svc} binds the host's store directory on {data_dir}"
        );
        assert_eq!(env(&v, svc, "STORE_DATA_DIR"), data_dir);
    }
    assert_eq!(
        strings(s(&v, &["services", "store-bootstrap", "command"])),
        ["store", "bootstrap"]
    );
    assert_eq!(
        env(&v, "store-bootstrap", "STORE_BOOTSTRAP_PEERS"),
        "tasks.store-bootstrap"
    );
    assert_eq!(
        env(&v, "store-bootstrap", "STORE_BOOTSTRAP_NODE"),
        "{{.Node.ID}}"
    );
    // Only the companion is on the private, internal, encrypted overlay.
    let boot = s(&v, &["networks", "bootstrap"]);
    assert_eq!(s(boot, &["driver"]).as_str(), Some("overlay"));
    assert_eq!(s(boot, &["internal"]).as_bool(), Some(true));
    assert!(s(boot, &["driver_opts"]).get("encrypted").is_some());
    assert_ne!(boot.get("attachable").and_then(Value::as_bool), Some(true));
    for svc in services {
        let nets = strings(s(&v, &["services", svc, "networks"]));
        assert_eq!(
            nets.contains(&"bootstrap".to_string()),
            svc == "store-bootstrap",
            "{svc}: networks {nets:?}"
        );
    }

    // edge: 80 and 443 published in host mode, socket read-only, certs
    // under /data/edge, on the shared overlay.
    let ports = s(&v, &["services", "edge", "ports"]).as_sequence().unwrap();
    for target in [80, 443] {
        let p = ports
            .iter()
            .find(|p| p.get("target").and_then(Value::as_u64) == Some(target))
            .unwrap_or_else(|| panic!("edge publishes {target}"));
        assert_eq!(
            p.get("mode").and_then(Value::as_str),
            Some("host"),
            "{target} in host mode"
        );
    }
    let vols = s(&v, &["services", "edge", "volumes"])
        .as_sequence()
        .unwrap();
    let sock = vols
        .iter()
        .find(|m| m.get("target").and_then(Value::as_str) == Some("/var/run/docker.sock"))
        .expect("edge mounts the Docker socket");
    assert_eq!(sock.get("read_only").and_then(Value::as_bool), Some(true));
    assert!(vols
        .iter()
        .any(|m| m.get("target").and_then(Value::as_str) == Some("/data/edge")));
    assert!(env(&v, "edge", "EDGE_CERT_DIR").starts_with("/data/edge/"));
    assert_eq!(
        env(&v, "edge", "DOCKER_HOST"),
        "unix:///var/run/docker.sock"
    );
    assert_eq!(
        strings(s(&v, &["services", "edge", "networks"])),
        ["public"]
    );
    assert_eq!(
        s(&v, &["networks", "public", "driver"]).as_str(),
        Some("overlay")
    );

    // vip: capabilities, VIP from the environment, checks the local edge.
    for svc in ["vip", "vip-preferred"] {
        let caps = strings(s(&v, &["services", svc, "cap_add"]));
        assert!(
            caps.contains(&"NET_ADMIN".into()) && caps.contains(&"NET_RAW".into()),
            "{svc}: {caps:?}"
        );
        assert!(env(&v, svc, "VIP_VIRTUAL_IPS").starts_with("${B3_VIP:?"));
        assert!(env(&v, svc, "VIP_CHECKS").starts_with("https://127.0.0.1:${B3_HTTPS_PORT:-443}/"));
    }
    let prio = |svc| env(&v, svc, "VIP_PRIORITY");
    assert_ne!(prio("vip"), prio("vip-preferred"));

    // The demo is routed by edge.
    let labels = s(&v, &["services", "demo", "deploy", "labels"]);
    assert_eq!(s(labels, &["edge.enable"]).as_str(), Some("true"));
    assert_eq!(
        strings(s(&v, &["services", "demo", "networks"])),
        ["public"]
    );
}

fn stack_env(cmd: &mut Command, vars: &BTreeMap<&str, String>) {
    for (k, val) in vars {
        cmd.env(k, val);
    }
}

#[test]
fn dockerd_stack_config_validates() {
    let d = Dockerd::start().unwrap();
    let stack = stack_path();
    let mut vars = BTreeMap::new();
    vars.insert("B3_VIP", "192.168.1.100/24".to_string());
    let mut cmd = d.docker();
    cmd.args(["stack", "config", "-c"]).arg(&stack);
    stack_env(&mut cmd, &vars);
    let out = b3_tests::run(&mut cmd).unwrap();
    for want in [
        "mode: host",
        "published: 443",
        "published: 80",
        "192.168.1.100/24",
        "read_only: true",
        "mode: global",
    ] {
        assert!(
            out.contains(want),
            "`docker stack config` output lacks {want:?}:\n{out}"
        );
    }
    // The VIP has no sensible default: without it the stack is refused
    // with a message naming the variable.
    let out = d
        .docker()
        .args(["stack", "config", "-c"])
        .arg(&stack)
        .env_remove("B3_VIP")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("B3_VIP"), "{err}");
}

/// Removes the test's veth pair (and so its addresses) on drop.
struct Link(String);

impl Drop for Link {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.0])
            .stderr(Stdio::null())
            .status();
    }
}

/// Unmounts a leftover mount on drop (the fixture also unmounts under its
/// directory; this keeps the order: mount gone before dockerd stops).
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .stderr(Stdio::null())
            .status();
    }
}

fn bins_dir() -> PathBuf {
    match std::env::var_os("B3_DEPLOY_TEST_BINS") {
        Some(d) => PathBuf::from(d),
        None => b3_tests::bins::bin("store")
            .unwrap()
            .parent()
            .unwrap()
            .to_path_buf(),
    }
}

fn curl(args: &[&str]) -> Option<(u16, String)> {
    let out = Command::new("curl")
        .args(["-sk", "--max-time", "5", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n')?;
    Some((code.trim().parse().ok()?, body.to_string()))
}

fn is_mounted(dir: &Path) -> bool {
    let d = dir.to_string_lossy();
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(d.as_ref()))
}

/// The value of `Key=` in a systemd unit (first occurrence), with systemd's
/// `$$` turned back into `$`.
fn unit_value(unit: &str, key: &str) -> String {
    unit.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("unit has no {key}=:\n{unit}"))
        .replace("$$", "$")
}

#[test]
fn dockerd_stack_deploys_end_to_end() {
    let d = Dockerd::start().unwrap();
    d.swarm_init().unwrap();
    let dir = d.dir().to_path_buf();
    let logs = |d: &Dockerd| {
        let mut out = String::new();
        for svc in ["store", "store-bootstrap", "edge", "vip", "demo"] {
            let ps = d
                .run(&["service", "ps", "--no-trunc", &format!("b3t_{svc}")])
                .unwrap_or_default();
            let log = d
                .docker()
                .args([
                    "service",
                    "logs",
                    "--raw",
                    "--tail",
                    "30",
                    &format!("b3t_{svc}"),
                ])
                .output()
                .map(|o| {
                    format!(
                        "{}{}",
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    )
                })
                .unwrap_or_default();
            out.push_str(&format!("--- {svc}\n{ps}{log}\n"));
        }
        out
    };

    // The image, made here as a user without a registry would.
    let out = Command::new(repo().join("deploy/build-image"))
        .env("B3_IMAGE_BIN_DIR", bins_dir())
        .env("B3_IMAGE_TAG", "b3test")
        .env("DOCKER_HOST", d.docker_host())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "deploy/build-image failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    d.import_busybox("b3/busybox:test").unwrap();

    // The host side, installed into the fixture's directory.
    // (Not `data`: that is the fixture dockerd's data-root.)
    let store_dir = dir.join("b3-store");
    let data = dir.join("b3-data");
    let prefix = dir.join("prefix");
    let units = dir.join("units");
    let out = Command::new(repo().join("deploy/install-host"))
        .env("B3_IMAGE", "b3test:latest")
        .env("B3_STORE_DIR", &store_dir)
        .env("B3_DATA", &data)
        .env("B3_PREFIX", &prefix)
        .env("B3_SYSTEMD_DIR", &units)
        .env("B3_MOUNT_HELPER_DIR", dir.join("sbin"))
        .env("B3_NO_START", "1")
        .env("DOCKER_HOST", d.docker_host())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "deploy/install-host failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(store_dir.is_dir() && data.is_dir());
    let unit = std::fs::read_to_string(units.join("b3-data.service")).unwrap();

    // A veth pair of our own for the VIP: VRRP adverts go only to its peer.
    let n = std::process::id() % 200 + 20;
    let link = Link(format!("b3dep{n}"));
    b3_tests::run(Command::new("ip").args([
        "link",
        "add",
        &link.0,
        "type",
        "veth",
        "peer",
        "name",
        &format!("{}p", link.0),
    ]))
    .unwrap();
    b3_tests::run(Command::new("ip").args(["link", "set", &format!("{}p", link.0), "up"])).unwrap();
    b3_tests::run(Command::new("ip").args([
        "addr",
        "add",
        &format!("10.213.{n}.1/24"),
        "dev",
        &link.0,
    ]))
    .unwrap();
    b3_tests::run(Command::new("ip").args(["link", "set", &link.0, "up"])).unwrap();
    let vip = format!("10.213.{n}.100");

    let port = || http::free_port().unwrap().to_string();
    let (store_port, admin_port, http_port, https_port, edge_admin, vip_admin) =
        (port(), port(), port(), port(), port(), port());
    let mut vars: BTreeMap<&str, String> = BTreeMap::new();
    vars.insert("B3_IMAGE", "b3test:latest".into());
    vars.insert("B3_STORE_DIR", store_dir.display().to_string());
    vars.insert("B3_DATA", data.display().to_string());
    vars.insert("B3_STORE_BIND", "127.0.0.1".into());
    vars.insert("B3_STORE_PORT", store_port.clone());
    vars.insert("B3_STORE_ADMIN_PORT", admin_port.clone());
    vars.insert("B3_STORE_EXPECT", "1".into());
    vars.insert("B3_STORE_SIZE", "1".into());
    vars.insert("B3_STORE_MIN_SIZE", "1".into());
    vars.insert("B3_HTTP_PORT", http_port.clone());
    vars.insert("B3_HTTPS_PORT", https_port.clone());
    vars.insert("B3_EDGE_ADMIN_PORT", edge_admin.clone());
    vars.insert("B3_DOCKER_SOCK", d.socket().display().to_string());
    vars.insert("B3_VIP", format!("{vip}/32"));
    vars.insert("B3_VIP_INTERFACE", link.0.clone());
    vars.insert("B3_VIP_ADMIN_PORT", vip_admin.clone());
    vars.insert("B3_DEMO_IMAGE", "b3/busybox:test".into());
    vars.insert("B3_DEMO_ENTRYPOINT", "/bin/b3-demo".into());
    let mut cmd = d.docker();
    cmd.args(["stack", "deploy", "-c"])
        .arg(stack_path())
        .arg("b3t");
    stack_env(&mut cmd, &vars);
    b3_tests::run(&mut cmd).unwrap();

    // The store founds its cluster by itself and becomes healthy.
    let admin: std::net::SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    wait::until(
        "the store task to have a metadata leader",
        Duration::from_secs(90),
        Duration::from_millis(500),
        || {
            let r = http::get(admin, "/v1/status").ok()?;
            let v: serde_json::Value = serde_json::from_str(&r.body).ok()?;
            (r.status == 200 && v["quorum"] == true && v["nodes_total"] == 1).then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&d)));
    assert!(
        store_dir.join("identity/founder").exists(),
        "the companion founded the cluster in the host directory"
    );

    // The companions find each other through Swarm's DNS on their private
    // overlay, and nothing outside Swarm can attach to it.
    let boot_ips = d.task_ips("b3t_store-bootstrap", "b3t_bootstrap").unwrap();
    assert_eq!(boot_ips.len(), 1, "one companion task: {boot_ips:?}");
    d.run(&[
        "service",
        "create",
        "--detach",
        "--name",
        "b3t-dnscheck",
        "--restart-condition",
        "none",
        "--network",
        "b3t_bootstrap",
        "b3/busybox:test",
        "nslookup",
        "tasks.store-bootstrap",
    ])
    .unwrap();
    wait::until(
        "tasks.store-bootstrap to resolve on the bootstrap overlay",
        Duration::from_secs(60),
        Duration::from_millis(500),
        || {
            let out = d.run(&["service", "logs", "--raw", "b3t-dnscheck"]).ok()?;
            out.contains(&format!("Address: {}", boot_ips[0]))
                .then_some(())
        },
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n{}",
            d.run(&["service", "logs", "--raw", "b3t-dnscheck"])
                .unwrap_or_default()
        )
    });
    d.run(&["service", "rm", "b3t-dnscheck"]).unwrap();
    let attach = d
        .docker()
        .args([
            "run",
            "--rm",
            "--network",
            "b3t_bootstrap",
            "b3/busybox:test",
            "true",
        ])
        .output()
        .unwrap();
    assert!(
        !attach.status.success(),
        "a plain container attached to the bootstrap overlay"
    );

    // /data on the host, exactly as the unit runs it.
    let exec = unit_value(&unit, "ExecStart");
    let argv: Vec<&str> = exec.split_whitespace().collect();
    let _unmount = Unmount(data.clone());
    let mount_log = std::fs::File::create(dir.join("mount.log")).unwrap();
    let mut mount = ChildGuard::spawn(
        "store mount",
        Command::new(argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(mount_log.try_clone().unwrap())
            .stderr(mount_log),
    )
    .unwrap();
    let mount_log = || std::fs::read_to_string(dir.join("mount.log")).unwrap_or_default();
    wait::until(
        "/data to be mounted",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || (is_mounted(&data) || !mount.is_running()).then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}\nmount log:\n{}", mount_log()));
    assert!(
        is_mounted(&data),
        "`{exec}` exited without mounting:\n{}",
        mount_log()
    );
    let post = unit_value(&unit, "ExecStartPost");
    let script = post
        .strip_prefix("/bin/sh -c '")
        .and_then(|p| p.strip_suffix('\''))
        .unwrap_or_else(|| panic!("unexpected ExecStartPost: {post}"));
    let out = Command::new("timeout")
        .args(["60", "sh", "-c", script])
        .output()
        .unwrap();
    assert!(
        out.status.success() && is_mounted(&data) && data.join("edge").is_dir(),
        "the unit's ExecStartPost failed: {}\nmount log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        mount_log()
    );

    // HTTPS through edge (started once /data/edge exists) to the demo.
    let resolve = format!("demo.b3.swarm:{https_port}:127.0.0.1");
    let url = format!("https://demo.b3.swarm:{https_port}/");
    let (_, body) = wait::until(
        "https://demo.b3.swarm/ to answer through edge",
        Duration::from_secs(90),
        Duration::from_millis(500),
        || {
            curl(&["--resolve", &resolve, &url])
                .filter(|(code, body)| *code == 200 && body.contains("hello from"))
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&d)));
    assert!(body.starts_with("hello from"), "{body}");
    // Plain HTTP is redirected to HTTPS, never served.
    let http_resolve = format!("demo.b3.swarm:{http_port}:127.0.0.1");
    let (code, _) = curl(&[
        "--resolve",
        &http_resolve,
        &format!("http://demo.b3.swarm:{http_port}/"),
    ])
    .unwrap();
    assert!((301..=308).contains(&code), "plain HTTP answered {code}");
    // The certificate edge generated lives in /data, shared by all nodes.
    let certs: Vec<_> = std::fs::read_dir(data.join("edge/certs"))
        .unwrap()
        .flatten()
        .collect();
    assert!(
        !certs.is_empty(),
        "edge keeps its certificate under /data/edge/certs"
    );

    // A file written through the host's /data, read from the store's API.
    std::fs::create_dir_all(data.join("deploy-test")).unwrap();
    let content = format!(
        "written on the host at {:?}\n",
        std::time::SystemTime::now()
    );
    std::fs::write(data.join("deploy-test/hello.txt"), &content).unwrap();
    wait::until(
        "GET /v1/fs/deploy-test/hello.txt",
        Duration::from_secs(30),
        Duration::from_millis(300),
        || {
            let r = http::get(admin, "/v1/fs/deploy-test/hello.txt").ok()?;
            (r.status == 200 && r.body == content).then_some(())
        },
    )
    .unwrap();

    // The vip task holds the VIP on our link (its check reaches edge).
    let holds_vip = || {
        b3_tests::run(Command::new("ip").args(["-4", "addr", "show", "dev", &link.0]))
            .map(|o| o.contains(&format!("{vip}/32")))
            .unwrap_or(false)
    };
    wait::until(
        "the vip task to hold the VIP",
        Duration::from_secs(60),
        Duration::from_millis(300),
        || holds_vip().then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&d)));

    // The images' health checks (`store status`, `vip status`) pass.
    wait::until(
        "the store and vip tasks to be healthy",
        Duration::from_secs(60),
        Duration::from_secs(1),
        || {
            let out = d
                .run(&["ps", "--filter", "health=healthy", "--format", "{{.Names}}"])
                .ok()?;
            let healthy = |svc: &str| out.lines().any(|l| l.starts_with(&format!("b3t_{svc}.")));
            (healthy("store") && healthy("vip")).then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", d.run(&["ps"]).unwrap_or_default()));

    // `docker stack rm` takes everything away.
    d.run(&["stack", "rm", "b3t"]).unwrap();
    wait::until(
        "the stack's services, containers and networks to go",
        Duration::from_secs(90),
        Duration::from_millis(500),
        || {
            let services = d.run(&["service", "ls", "-q"]).ok()?;
            let containers = d
                .run(&[
                    "ps",
                    "-aq",
                    "--filter",
                    "label=com.docker.stack.namespace=b3t",
                ])
                .ok()?;
            let networks = d
                .run(&[
                    "network",
                    "ls",
                    "-q",
                    "--filter",
                    "label=com.docker.stack.namespace=b3t",
                ])
                .ok()?;
            (services.trim().is_empty()
                && containers.trim().is_empty()
                && networks.trim().is_empty())
            .then_some(())
        },
    )
    .unwrap();
    assert!(!holds_vip(), "the stopped vip task released the VIP");
    assert!(
        http::get(admin, "/health").is_err(),
        "the store task stopped"
    );
}
