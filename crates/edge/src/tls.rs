//! Certificates: PEM files from the configuration, chosen by SNI and
//! reloaded when the files change, plus a default self-signed wildcard for
//! the configured domain (`*.b3.swarm`), generated once with rcgen and kept
//! in a directory every replica shares so they all serve the same one.
//! Unknown or missing SNI gets the default certificate.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use anyhow::Context;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Serialize;

use crate::config::CertFiles;

/// A loaded certificate and the names it covers.
#[derive(Clone)]
pub struct Loaded {
    key: Arc<CertifiedKey>,
    names: Vec<String>,
}

/// A certificate as the API shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertInfo {
    /// Where it comes from (file path or "generated").
    pub source: String,
    /// DNS names.
    pub names: Vec<String>,
    /// Load error, if the last attempt failed (the previous one is kept).
    pub error: Option<String>,
}

/// Per file pair: last seen mtimes, the last good certificate, the last error.
type FileState = (
    Option<(SystemTime, SystemTime)>,
    Option<Loaded>,
    Option<String>,
);

#[derive(Default)]
struct Table {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    info: Vec<CertInfo>,
}

/// The certificate store; cheap to share. Implements rustls's resolver.
pub struct CertStore {
    default: Loaded,
    default_source: String,
    table: RwLock<Arc<Table>>,
    // Per file pair: last seen mtimes and the last good certificate.
    files: std::sync::Mutex<HashMap<CertFiles, FileState>>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore")
            .field("default", &self.default.names)
            .finish()
    }
}

/// Loads a certificate chain and key from PEM bytes.
pub fn load_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Loaded, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("reading the certificate PEM: {e:?}"))?;
    if certs.is_empty() {
        return Err(
            "no CERTIFICATE block found: the file must hold a PEM certificate chain, leaf first"
                .into(),
        );
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
        format!("reading the private key PEM: {e:?} (PKCS#8, PKCS#1 and SEC1 keys are supported)")
    })?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("unsupported private key: {e}"))?;
    let ck = CertifiedKey::new(certs.clone(), signing);
    ck.keys_match()
        .map_err(|e| format!("the key does not belong to the certificate: {e}"))?;
    let names = cert_names(&certs[0]);
    Ok(Loaded {
        key: Arc::new(ck),
        names,
    })
}

fn cert_names(der: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der.as_ref()) else {
        return Vec::new();
    };
    let mut names: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|g| match g {
                x509_parser::extensions::GeneralName::DNSName(n) => Some(n.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if names.is_empty() {
        names = cert
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok().map(|s| s.to_ascii_lowercase()))
            .collect();
    }
    names
}

/// Loads (or makes, once) the default wildcard certificate for `domain`,
/// kept as `<dir>/<domain>.pem` (chain then key). Creation is atomic across
/// replicas sharing `dir`: the first one to link its file wins and the
/// others load it.
pub fn default_cert(dir: &Path, domain: &str) -> anyhow::Result<(Loaded, PathBuf)> {
    let path = dir.join(format!("{domain}.pem"));
    if let Ok(bytes) = std::fs::read(&path) {
        let l = load_pem(&bytes, &bytes).map_err(|e| {
            anyhow::anyhow!(
                "{}: {e}; delete the file to have a new one generated",
                path.display()
            )
        })?;
        return Ok((l, path));
    }
    let pem = generate_wildcard(domain)?;
    std::fs::create_dir_all(dir).with_context(|| {
        format!(
            "creating the certificate directory {} (set --cert-dir to a writable place)",
            dir.display()
        )
    })?;
    let tmp = dir.join(format!(".{domain}.pem.{}", std::process::id()));
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(pem.as_bytes())?;
        f.sync_all()?;
    }
    let linked = std::fs::hard_link(&tmp, &path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            tracing::info!(path = %path.display(), "generated the default wildcard certificate")
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("saving {}", path.display())),
    }
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let l = load_pem(&bytes, &bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok((l, path))
}

/// A self-signed certificate for `*.domain` and `domain`, as PEM (chain + key).
pub fn generate_wildcard(domain: &str) -> anyhow::Result<String> {
    let mut params = rcgen::CertificateParams::new(vec![format!("*.{domain}"), domain.to_string()])
        .with_context(|| format!("domain {domain:?} is not a valid DNS name"))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("*.{domain}"));
    params.distinguished_name.push(
        rcgen::DnType::OrganizationName,
        "b3 stack edge (self-signed)",
    );
    let key = rcgen::KeyPair::generate().context("generating a key pair")?;
    let cert = params
        .self_signed(&key)
        .context("self-signing the certificate")?;
    Ok(format!("{}{}", cert.pem(), key.serialize_pem()))
}

impl CertStore {
    /// A store whose default certificate is `default`.
    pub fn new(default: Loaded, default_source: String) -> CertStore {
        let store = CertStore {
            default,
            default_source,
            table: RwLock::new(Arc::new(Table::default())),
            files: Default::default(),
        };
        store.rebuild();
        store
    }

    /// Sets the certificate files to serve; loads new and changed ones.
    /// A file that fails to load keeps its previous certificate and reports
    /// the error in [`CertStore::info`].
    pub fn set_files(&self, wanted: &[CertFiles]) {
        {
            let Ok(mut files) = self.files.lock() else {
                return;
            };
            files.retain(|k, _| wanted.contains(k));
            for w in wanted {
                files.entry(w.clone()).or_insert((None, None, None));
            }
        }
        self.reload_changed();
    }

    /// Reloads files whose modification time changed; returns whether any did.
    pub fn reload_changed(&self) -> bool {
        let mut changed = false;
        {
            let Ok(mut files) = self.files.lock() else {
                return false;
            };
            for (f, (mtimes, loaded, error)) in files.iter_mut() {
                let now = mtime(&f.cert_file).and_then(|a| mtime(&f.key_file).map(|b| (a, b)));
                if now.is_some() && now == *mtimes {
                    continue;
                }
                if now.is_none() && error.is_some() && mtimes.is_none() {
                    continue;
                }
                *mtimes = now;
                let res = std::fs::read(&f.cert_file)
                    .map_err(|e| format!("reading {}: {e}", f.cert_file))
                    .and_then(|c| {
                        std::fs::read(&f.key_file)
                            .map_err(|e| format!("reading {}: {e}", f.key_file))
                            .map(|k| (c, k))
                    })
                    .and_then(|(c, k)| {
                        load_pem(&c, &k).map_err(|e| format!("{}: {e}", f.cert_file))
                    });
                match res {
                    Ok(l) => {
                        tracing::info!(cert = %f.cert_file, names = ?l.names, "certificate loaded");
                        *loaded = Some(l);
                        *error = None;
                    }
                    Err(e) => {
                        tracing::warn!(cert = %f.cert_file, error = %e, "certificate not loaded; keeping the previous one if any");
                        *error = Some(e);
                    }
                }
                changed = true;
            }
        }
        if changed {
            self.rebuild();
        }
        changed
    }

    fn rebuild(&self) {
        let mut t = Table::default();
        t.info.push(CertInfo {
            source: self.default_source.clone(),
            names: self.default.names.clone(),
            error: None,
        });
        if let Ok(files) = self.files.lock() {
            let mut sorted: Vec<_> = files.iter().collect();
            sorted.sort_by(|a, b| a.0.cmp(b.0));
            for (f, (_, loaded, error)) in sorted {
                t.info.push(CertInfo {
                    source: f.cert_file.clone(),
                    names: loaded.as_ref().map(|l| l.names.clone()).unwrap_or_default(),
                    error: error.clone(),
                });
                let Some(l) = loaded else { continue };
                for n in &l.names {
                    match n.strip_prefix("*.") {
                        Some(suffix) => {
                            t.wildcard
                                .entry(suffix.to_string())
                                .or_insert_with(|| l.key.clone());
                        }
                        None => {
                            t.exact.entry(n.clone()).or_insert_with(|| l.key.clone());
                        }
                    }
                }
            }
        }
        if let Ok(mut w) = self.table.write() {
            *w = Arc::new(t);
        }
    }

    /// Certificates for the API.
    pub fn info(&self) -> Vec<CertInfo> {
        self.table
            .read()
            .map(|t| t.info.clone())
            .unwrap_or_default()
    }

    /// The certificate for `sni` (lower case), or the default.
    pub fn lookup(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        if let Some(name) = sni {
            let name = name.to_ascii_lowercase();
            if let Ok(t) = self.table.read() {
                if let Some(k) = t.exact.get(&name) {
                    return k.clone();
                }
                if let Some((_, parent)) = name.split_once('.') {
                    if let Some(k) = t.wildcard.get(parent) {
                        return k.clone();
                    }
                }
            }
        }
        self.default.key.clone()
    }
}

fn mtime(p: &str) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// rustls resolver backed by a [`CertStore`].
#[derive(Debug)]
pub struct Resolver(pub Arc<CertStore>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.lookup(hello.server_name()))
    }
}

/// The rustls server configuration: TLS 1.2 and 1.3, ALPN h2 and
/// http/1.1, session tickets and a resumption cache.
pub fn server_config(store: Arc<CertStore>) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    // AES-128-GCM first, chosen by us rather than the client: as strong in
    // practice and cheaper per handshake (its SHA-256 key schedule uses the
    // CPU's SHA extensions where SHA-384's does not).
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.sort_by_key(|cs| {
        !matches!(
            cs.suite(),
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
                | rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                | rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        )
    });
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("configuring TLS 1.2 and 1.3")?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Resolver(store)));
    cfg.ignore_client_order = true;
    // One resumption ticket per handshake is enough for a client to resume.
    cfg.send_tls13_tickets = 1;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    cfg.ticketer =
        rustls::crypto::ring::Ticketer::new().context("creating the TLS session ticketer")?;
    cfg.session_storage = rustls::server::ServerSessionMemoryCache::new(10_000);
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_cert_is_generated_once_and_shared() {
        let dir = tempfile::tempdir().unwrap();
        let (a, path) = default_cert(dir.path(), "b3.swarm").unwrap();
        assert!(a.names.contains(&"*.b3.swarm".to_string()), "{:?}", a.names);
        let (b, _) = default_cert(dir.path(), "b3.swarm").unwrap();
        assert_eq!(
            a.key.cert[0], b.key.cert[0],
            "second start loads the same certificate"
        );
        std::fs::write(&path, "garbage").unwrap();
        let e = default_cert(dir.path(), "b3.swarm")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("delete the file"), "{e}");
    }

    #[test]
    fn sni_picks_exact_then_wildcard_then_default() {
        let dir = tempfile::tempdir().unwrap();
        let (def, _) = default_cert(dir.path(), "b3.swarm").unwrap();
        let store = CertStore::new(def.clone(), "generated".into());
        let write = |name: &str, sans: Vec<String>| {
            let ck = rcgen::generate_simple_self_signed(sans).unwrap();
            let c = dir.path().join(format!("{name}.crt"));
            let k = dir.path().join(format!("{name}.key"));
            std::fs::write(&c, ck.cert.pem()).unwrap();
            std::fs::write(&k, ck.signing_key.serialize_pem()).unwrap();
            CertFiles {
                cert_file: c.display().to_string(),
                key_file: k.display().to_string(),
                stores: vec![],
            }
        };
        let shop = write("shop", vec!["shop.example".into()]);
        let wild = write("wild", vec!["*.example".into()]);
        store.set_files(&[shop.clone(), wild.clone()]);
        let leaf = |sni: Option<&str>| store.lookup(sni).cert[0].clone();
        let shop_leaf = leaf(Some("shop.example"));
        assert_ne!(shop_leaf, def.key.cert[0]);
        assert_ne!(leaf(Some("other.example")), def.key.cert[0]);
        assert_ne!(leaf(Some("other.example")), shop_leaf);
        assert_eq!(leaf(Some("unknown.test")), def.key.cert[0]);
        assert_eq!(leaf(None), def.key.cert[0]);

        // A broken rewrite keeps the old certificate and reports the error.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&shop.cert_file, "not a pem").unwrap();
        assert!(store.reload_changed());
        assert_eq!(leaf(Some("shop.example")), shop_leaf);
        assert!(store.info().iter().any(|i| i.error.is_some()));
        // A good rewrite is picked up.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let _ = write("shop", vec!["shop.example".into()]);
        assert!(store.reload_changed());
        assert_ne!(leaf(Some("shop.example")), shop_leaf);
        assert!(store.info().iter().all(|i| i.error.is_none()));
    }
}
