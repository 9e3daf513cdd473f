//! The Swarm provider against a real dockerd listening with TLS, as set up
//! for the Docker CLI (`DOCKER_HOST=tcp://…:2376`, `DOCKER_TLS_VERIFY=1`,
//! `DOCKER_CERT_PATH` with ca.pem, cert.pem, key.pem).
//!
//! The certificates are made here with rcgen: a CA signs dockerd's
//! certificate (SAN 127.0.0.1) and edge's client certificate; a second CA
//! signs a client certificate dockerd must refuse, and stands in for a
//! ca.pem that did not sign dockerd's certificate. Every failure must be an
//! error naming the file to fix, reported within seconds, never a hang.

use std::path::{Path, PathBuf};
use std::time::Duration;

use b3_tests::dockerd::Dockerd;
use b3_tests::wait;
use edge::config::Service;
use edge::swarm::{self, SwarmConfig, SwarmSnapshot};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tokio::sync::watch;

const IMAGE: &str = "b3/busybox:test";
const NET: &str = "tlsnet";

/// A CA able to sign server and client certificates.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Ca { issuer }
    }

    fn pem(&self) -> String {
        self.issuer.as_ref().pem()
    }

    /// (certificate PEM, key PEM) for `sans`, for TLS `purpose`.
    fn issue(&self, cn: &str, sans: &[&str], purpose: ExtendedKeyUsagePurpose) -> (String, String) {
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![purpose];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// Writes a DOCKER_CERT_PATH directory.
fn cert_dir(root: &Path, name: &str, ca_pem: &str, client: &(String, String)) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("ca.pem"), ca_pem).unwrap();
    std::fs::write(dir.join("cert.pem"), &client.0).unwrap();
    std::fs::write(dir.join("key.pem"), &client.1).unwrap();
    dir
}

/// The provider running on its own runtime; stops when dropped.
struct Provider {
    rx: watch::Receiver<SwarmSnapshot>,
    trigger: b3_common::shutdown::ShutdownTrigger,
    rt: Option<tokio::runtime::Runtime>,
}

impl Provider {
    fn start(cfg: SwarmConfig) -> Provider {
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

    fn until<T>(
        &self,
        what: &str,
        timeout: Duration,
        f: impl Fn(&SwarmSnapshot) -> Option<T>,
    ) -> T {
        wait::until(what, timeout, Duration::from_millis(20), || {
            f(&self.rx.borrow())
        })
        .unwrap_or_else(|e| panic!("{e}; last snapshot:\n{:#?}", self.rx.borrow().clone()))
    }

    /// The error the provider reports (it keeps retrying).
    fn error(&self) -> String {
        self.until(
            "the provider to report an error",
            Duration::from_secs(20),
            |s| s.docker_error.clone(),
        )
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

fn config(host: &str, certs: &Path) -> SwarmConfig {
    SwarmConfig {
        docker_host: host.to_string(),
        docker_tls_verify: true,
        docker_cert_path: Some(certs.to_path_buf()),
        networks: vec![NET.into()],
        container: Some("not-a-container".into()),
        // Long enough that only the event stream can announce a change.
        refresh: Duration::from_secs(600),
        ..SwarmConfig::default()
    }
}

#[test]
fn swarm_provider_talks_to_dockerd_over_tls_with_a_client_certificate() {
    let pki = tempfile::tempdir().unwrap();
    let ca = Ca::new("b3 test docker CA");
    let rogue = Ca::new("some other CA");
    let (server_cert, server_key) = ca.issue(
        "dockerd",
        &["127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let client = ca.issue("edge", &[], ExtendedKeyUsagePurpose::ClientAuth);
    let rogue_client = rogue.issue("intruder", &[], ExtendedKeyUsagePurpose::ClientAuth);
    let good = cert_dir(pki.path(), "good", &ca.pem(), &client);
    let foreign_client = cert_dir(pki.path(), "foreign-client", &ca.pem(), &rogue_client);
    let wrong_ca = cert_dir(pki.path(), "wrong-ca", &rogue.pem(), &client);
    let server = pki.path().join("server");
    std::fs::create_dir_all(&server).unwrap();
    std::fs::write(server.join("cert.pem"), server_cert).unwrap();
    std::fs::write(server.join("key.pem"), server_key).unwrap();

    let port = b3_tests::http::free_port().unwrap();
    let listen = format!("tcp://127.0.0.1:{port}");
    let ca_file = good.join("ca.pem");
    let server_cert = server.join("cert.pem");
    let server_key = server.join("key.pem");
    let d = Dockerd::start_with_args(&[
        "-H",
        &listen,
        "--tlsverify",
        "--tlscacert",
        ca_file.to_str().unwrap(),
        "--tlscert",
        server_cert.to_str().unwrap(),
        "--tlskey",
        server_key.to_str().unwrap(),
    ])
    .unwrap();
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

    // The right certificates: connected, then a service created afterwards
    // arrives through the event stream (the re-list is 10 minutes away).
    let p = Provider::start(config(&listen, &good));
    p.until("the provider to connect", Duration::from_secs(20), |s| {
        (s.generation > 0 && s.docker_error.is_none()).then_some(())
    });
    d.run(&[
        "service",
        "create",
        "--detach",
        "--name",
        "tlsdemo",
        "--network",
        NET,
        "--label",
        "edge.enable=true",
        "--label",
        "edge.port=8000",
        IMAGE,
        "/bin/b3-demo",
    ])
    .unwrap();
    let snap = p.until(
        "tlsdemo with a server",
        Duration::from_secs(60),
        |s| match s.dynamic.http.services.get("tlsdemo") {
            Some(Service::LoadBalancer(lb)) if lb.servers.len() == 1 => Some(s.clone()),
            _ => None,
        },
    );
    assert_eq!(
        snap.dynamic.http.routers["tlsdemo"].rule,
        "Host(`tlsdemo.b3.swarm`)"
    );
    assert!(snap.docker_error.is_none());
    drop(p);

    // A client certificate from another CA: dockerd refuses it.
    let e = Provider::start(config(&listen, &foreign_client)).error();
    assert!(
        e.contains("refused edge's client certificate")
            && e.contains(&foreign_client.join("cert.pem").display().to_string()),
        "{e}"
    );

    // A ca.pem that did not sign dockerd's certificate: edge refuses dockerd.
    let e = Provider::start(config(&listen, &wrong_ca)).error();
    assert!(
        e.contains("not signed by") && e.contains(&wrong_ca.join("ca.pem").display().to_string()),
        "{e}"
    );

    // Plain HTTP to the TLS port: told to turn TLS on.
    let plain = SwarmConfig {
        docker_tls_verify: false,
        ..config(&listen, &good)
    };
    let e = Provider::start(plain).error();
    assert!(e.contains("DOCKER_TLS_VERIFY=1"), "{e}");

    // Missing files fail at start, naming the file.
    let empty = pki.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let e = config(&listen, &empty).docker_client().unwrap_err();
    assert!(
        e.contains("ca.pem") && e.contains("DOCKER_CERT_PATH"),
        "{e}"
    );

    // TLS without verifying dockerd is refused, with the fix.
    let unverified = SwarmConfig {
        docker_tls_verify: false,
        docker_tls: true,
        ..config(&listen, &good)
    };
    let e = unverified.validate().unwrap_err();
    assert!(e.contains("DOCKER_TLS_VERIFY=1"), "{e}");
}
