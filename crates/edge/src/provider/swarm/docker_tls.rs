//! TLS to dockerd the way the Docker CLI does it: `DOCKER_TLS_VERIFY=1`
//! and `DOCKER_CERT_PATH=<dir>` holding `ca.pem` (the CA dockerd's
//! certificate must be signed by), `cert.pem` and `key.pem` (edge's client
//! certificate, which dockerd's `--tlsverify` demands).
//!
//! TLS without verifying dockerd (`DOCKER_TLS=1` alone) is refused: the
//! Docker API is root on the host, so a connection an attacker in the
//! middle could take over is worse than none.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A loaded client configuration for dockerd's TLS port.
#[derive(Clone)]
pub struct DockerTls {
    /// The connector (server verified against `ca.pem`, client cert sent).
    pub connector: tokio_rustls::TlsConnector,
    /// `DOCKER_CERT_PATH`, for messages.
    pub dir: PathBuf,
}

impl std::fmt::Debug for DockerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerTls").field("dir", &self.dir).finish()
    }
}

/// Where the Docker CLI looks when `DOCKER_CERT_PATH` is unset: `~/.docker`.
pub fn default_cert_path() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
        .join(".docker")
}

/// Loads `ca.pem`, `cert.pem` and `key.pem` from `dir`. Errors name the
/// file, the problem and the fix.
pub fn load(dir: &Path) -> Result<DockerTls, String> {
    let read = |name: &str, what: &str| {
        let path = dir.join(name);
        std::fs::read(&path).map_err(|e| {
            format!(
                "DOCKER_CERT_PATH {}: cannot read {name} ({what}): {e} — put the Docker CLI's \
                 ca.pem, cert.pem and key.pem there, or set DOCKER_CERT_PATH / --docker-cert-path \
                 to the directory holding them",
                dir.display()
            )
        })
    };
    let ca_pem = read("ca.pem", "the CA that signed dockerd's certificate")?;
    let cert_pem = read("cert.pem", "edge's client certificate")?;
    let key_pem = read("key.pem", "the client certificate's private key")?;
    let file = |name: &str| dir.join(name).display().to_string();

    let mut roots = rustls::RootCertStore::empty();
    let cas: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&ca_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not a PEM certificate file: {e:?}", file("ca.pem")))?;
    let (added, _) = roots.add_parsable_certificates(cas);
    if added == 0 {
        return Err(format!(
            "{}: no usable CERTIFICATE block: it must hold the CA certificate dockerd's \
             --tlscert was signed with",
            file("ca.pem")
        ));
    }

    // Same checks as edge's own certificates (chain present, key readable
    // and matching the certificate).
    crate::tls::load_pem(&cert_pem, &key_pem).map_err(|e| {
        format!(
            "{} / {}: {e} — use the client certificate and key made together for Docker",
            file("cert.pem"),
            file("key.pem")
        )
    })?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e:?}", file("cert.pem")))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| format!("{}: {e:?}", file("key.pem")))?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("configuring TLS to dockerd: {e}"))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| {
            format!(
                "{} / {}: cannot use them as a client certificate: {e}",
                file("cert.pem"),
                file("key.pem")
            )
        })?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(DockerTls {
        connector: tokio_rustls::TlsConnector::from(Arc::new(cfg)),
        dir: dir.to_path_buf(),
    })
}

/// Turns a TLS failure into a message saying what to fix. `text` is the
/// error with its sources; `host` the name dialled.
pub fn explain_failure(text: &str, host: &str, dir: &Path) -> Option<String> {
    let ca = dir.join("ca.pem");
    let cert = dir.join("cert.pem");
    if text.contains("UnknownIssuer") || text.contains("BadSignature") {
        return Some(format!(
            "dockerd's certificate is not signed by {}: copy the CA that signed dockerd's \
             --tlscert into DOCKER_CERT_PATH",
            ca.display()
        ));
    }
    if text.contains("NotValidForName") {
        return Some(format!(
            "dockerd's certificate does not name {host:?}: connect with a name or IP in its \
             subject alternative names, or reissue it with {host} added"
        ));
    }
    if text.contains("Expired") || text.contains("NotValidYet") {
        return Some(
            "dockerd's certificate is expired or not yet valid: renew it (or check the clock)"
                .into(),
        );
    }
    let alert = [
        "BadCertificate",
        "UnknownCA",
        "CertificateRequired",
        "UnsupportedCertificate",
        "CertificateUnknown",
        "DecryptError",
    ];
    if text.contains("alert") && alert.iter().any(|a| text.contains(a)) {
        return Some(format!(
            "dockerd refused edge's client certificate {}: it must be signed by the CA dockerd \
             trusts (its --tlscacert), as the Docker CLI's cert.pem is",
            cert.display()
        ));
    }
    if text.contains("InvalidContentType") || text.contains("CorruptMessage") {
        return Some(
            "dockerd does not speak TLS on this port: use its TLS port (2376), or unset \
             DOCKER_TLS_VERIFY for a plain tcp:// endpoint"
                .into(),
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let e = load(dir.path()).unwrap_err();
        assert!(
            e.contains("ca.pem") && e.contains("DOCKER_CERT_PATH"),
            "{e}"
        );
    }

    #[test]
    fn a_key_from_another_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = rcgen::generate_simple_self_signed(vec!["a".into()]).unwrap();
        let b = rcgen::KeyPair::generate().unwrap();
        std::fs::write(dir.path().join("ca.pem"), a.cert.pem()).unwrap();
        std::fs::write(dir.path().join("cert.pem"), a.cert.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), b.serialize_pem()).unwrap();
        let e = load(dir.path()).unwrap_err();
        assert!(
            e.contains("key.pem") && e.contains("does not belong"),
            "{e}"
        );
        std::fs::write(dir.path().join("key.pem"), a.signing_key.serialize_pem()).unwrap();
        load(dir.path()).unwrap();
    }

    #[test]
    fn handshake_failures_say_what_to_fix() {
        let d = Path::new("/certs");
        let e = explain_failure("invalid peer certificate: UnknownIssuer", "h", d).unwrap();
        assert!(e.contains("/certs/ca.pem"), "{e}");
        let e = explain_failure("received fatal alert: BadCertificate", "h", d).unwrap();
        assert!(e.contains("/certs/cert.pem"), "{e}");
        assert!(explain_failure("connection reset", "h", d).is_none());
    }
}
