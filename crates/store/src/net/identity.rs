//! Cluster identity: the cluster CA, this node's certificate, join tokens,
//! and the rustls configurations built from them.
//!
//! `store init` makes a cluster id, a CA (rcgen, ECDSA P-256) and the first
//! node's certificate. A join token is `B3S1-<ca sha256>-<expiry>-<mac>`: the
//! joining node pins the CA by its fingerprint (so it cannot be fooled by a
//! rogue server), and any member proves the token genuine by recomputing
//! the mac with the cluster's join key. A member that accepts a token signs
//! the joiner's certificate request and hands it the cluster's CA, join key
//! and settings — every member can admit new nodes, as every Swarm manager
//! can.
//!
//! Files under `<data-dir>/identity/`: `cluster.json`, `node.json`,
//! `ca.pem`, `ca.key`, `node.pem`, `node.key`, `join.key` (keys mode 0600).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// TLS server name every node certificate carries.
pub const SERVER_NAME: &str = "store.b3";
/// ALPN protocol of the cluster transport.
pub const ALPN: &[u8] = b"b3s/1";

/// Errors about identities and tokens.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// `store init` on a directory that already has an identity.
    #[error(
        "{0} already holds a cluster identity; use another --data-dir, or delete it to start over"
    )]
    AlreadyInitialised(String),
    /// No identity where one was expected.
    #[error("{0} holds no cluster identity; run `store init` on the first node, or start with --join <token> to join a cluster")]
    Missing(String),
    /// The join token cannot be parsed.
    #[error("join token is malformed ({0}); copy the whole line printed by `store join-token`")]
    MalformedToken(&'static str),
    /// Token for another cluster.
    #[error("join token is for another cluster (CA fingerprint {token_ca}, this cluster is {ours}); get a token from a node of the cluster you want to join")]
    WrongCluster {
        /// Fingerprint in the token.
        token_ca: String,
        /// Our fingerprint.
        ours: String,
    },
    /// Token past its expiry.
    #[error("join token expired {0} s ago; make a new one with `store join-token`")]
    Expired(u64),
    /// Token mac does not verify.
    #[error("join token secret is wrong (not made by this cluster, or altered); make a new one with `store join-token`")]
    BadSecret,
    /// Certificate generation or signing failed.
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
    /// A PEM file or blob did not parse.
    #[error("{what}: not valid PEM ({detail})")]
    Pem {
        /// What was parsed.
        what: String,
        /// Parser's word.
        detail: String,
    },
    /// rustls rejected the configuration.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// File I/O.
    #[error("{action} {path}: {source}")]
    Io {
        /// What.
        action: &'static str,
        /// Which file.
        path: String,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file did not parse.
    #[error("{path}: {source}")]
    Json {
        /// Which file.
        path: String,
        /// Parser error.
        #[source]
        source: serde_json::Error,
    },
}

/// Cluster-wide settings fixed at `store init`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSettings {
    /// Random id of the cluster.
    pub cluster_id: String,
    /// Copies of each chunk.
    pub size: usize,
    /// Fewest durable copies before a write is acknowledged.
    pub min_size: usize,
    /// Number of placement groups.
    pub pg_count: u32,
}

/// Everything a granting member sends a joining node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinGrant {
    /// Cluster settings.
    pub settings: ClusterSettings,
    /// CA certificate (PEM).
    pub ca_cert_pem: String,
    /// CA key (PEM): every member can admit nodes.
    pub ca_key_pem: String,
    /// The joiner's signed certificate (PEM).
    pub cert_pem: String,
    /// Join key (hex) to verify future tokens.
    pub join_key: String,
}

/// A node's identity in its cluster.
#[derive(Clone)]
pub struct Identity {
    /// Cluster settings.
    pub settings: ClusterSettings,
    /// This node's id (also the Raft node id).
    pub node_id: u64,
    ca_cert_pem: String,
    ca_key_pem: String,
    cert_pem: String,
    key_pem: String,
    join_key: [u8; 32],
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("cluster_id", &self.settings.cluster_id)
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize)]
struct NodeFile {
    node_id: u64,
}

fn identity_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("identity")
}

fn read(path: &Path) -> Result<String, IdentityError> {
    fs::read_to_string(path).map_err(|source| IdentityError::Io {
        action: "reading",
        path: path.display().to_string(),
        source,
    })
}

fn write(path: &Path, contents: &[u8], secret: bool) -> Result<(), IdentityError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let io = |source| IdentityError::Io {
        action: "writing",
        path: path.display().to_string(),
        source,
    };
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(io)?;
    f.write_all(contents)
        .and_then(|()| f.sync_all())
        .map_err(io)?;
    fs::rename(&tmp, path).map_err(io)
}

fn node_params(node_id: u64) -> Result<CertificateParams, IdentityError> {
    let mut params = CertificateParams::new(vec![
        SERVER_NAME.to_string(),
        format!("node-{node_id:016x}.{SERVER_NAME}"),
    ])?;
    params
        .distinguished_name
        .push(DnType::CommonName, format!("store node {node_id:016x}"));
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

fn random_node_id() -> u64 {
    // Never 0: reserved as "no node".
    rand::random::<u64>().max(1) >> 1
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Identity {
    /// Creates a new cluster: CA, first node, settings. Fails if `data_dir`
    /// already has an identity.
    pub fn init(data_dir: &Path, size: usize, min_size: usize) -> Result<Self, IdentityError> {
        let dir = identity_dir(data_dir);
        if dir.join("node.json").exists() {
            return Err(IdentityError::AlreadyInitialised(
                data_dir.display().to_string(),
            ));
        }
        let cluster_id = hex::encode(rand::random::<[u8; 8]>());
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.distinguished_name.push(
            DnType::CommonName,
            format!("b3 store cluster {cluster_id} CA"),
        );
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let node_id = random_node_id();
        let node_key = KeyPair::generate()?;
        let issuer = Issuer::new(ca_params, &ca_key);
        let cert = node_params(node_id)?.signed_by(&node_key, &issuer)?;
        let id = Identity {
            settings: ClusterSettings {
                cluster_id,
                size,
                min_size,
                pg_count: crate::placement::DEFAULT_PG_COUNT,
            },
            node_id,
            ca_cert_pem: ca_cert.pem(),
            ca_key_pem: ca_key.serialize_pem(),
            cert_pem: cert.pem(),
            key_pem: node_key.serialize_pem(),
            join_key: rand::random(),
        };
        id.save(data_dir)?;
        Ok(id)
    }

    /// Loads the identity in `data_dir`; `Ok(None)` when there is none.
    pub fn load(data_dir: &Path) -> Result<Option<Self>, IdentityError> {
        let dir = identity_dir(data_dir);
        let node_path = dir.join("node.json");
        if !node_path.exists() {
            return Ok(None);
        }
        let json = |path: PathBuf| -> Result<serde_json::Value, IdentityError> {
            serde_json::from_str(&read(&path)?).map_err(|source| IdentityError::Json {
                path: path.display().to_string(),
                source,
            })
        };
        let node: NodeFile =
            serde_json::from_value(json(node_path.clone())?).map_err(|source| {
                IdentityError::Json {
                    path: node_path.display().to_string(),
                    source,
                }
            })?;
        let settings_path = dir.join("cluster.json");
        let settings: ClusterSettings = serde_json::from_value(json(settings_path.clone())?)
            .map_err(|source| IdentityError::Json {
                path: settings_path.display().to_string(),
                source,
            })?;
        let join_key = parse_key(&read(&dir.join("join.key"))?)?;
        Ok(Some(Identity {
            settings,
            node_id: node.node_id,
            ca_cert_pem: read(&dir.join("ca.pem"))?,
            ca_key_pem: read(&dir.join("ca.key"))?,
            cert_pem: read(&dir.join("node.pem"))?,
            key_pem: read(&dir.join("node.key"))?,
            join_key,
        }))
    }

    /// Loads the identity, or explains how to make one.
    pub fn require(data_dir: &Path) -> Result<Self, IdentityError> {
        Self::load(data_dir)?.ok_or_else(|| IdentityError::Missing(data_dir.display().to_string()))
    }

    /// Writes the identity files (node.json last: its presence marks a
    /// complete identity).
    pub fn save(&self, data_dir: &Path) -> Result<(), IdentityError> {
        let dir = identity_dir(data_dir);
        fs::create_dir_all(&dir).map_err(|source| IdentityError::Io {
            action: "creating",
            path: dir.display().to_string(),
            source,
        })?;
        let settings = serde_json::to_vec_pretty(&self.settings).unwrap_or_default();
        write(&dir.join("cluster.json"), &settings, false)?;
        write(&dir.join("ca.pem"), self.ca_cert_pem.as_bytes(), false)?;
        write(&dir.join("ca.key"), self.ca_key_pem.as_bytes(), true)?;
        write(&dir.join("node.pem"), self.cert_pem.as_bytes(), false)?;
        write(&dir.join("node.key"), self.key_pem.as_bytes(), true)?;
        write(
            &dir.join("join.key"),
            hex::encode(self.join_key).as_bytes(),
            true,
        )?;
        let node = serde_json::to_vec(&NodeFile {
            node_id: self.node_id,
        })
        .unwrap_or_default();
        write(&dir.join("node.json"), &node, false)
    }

    /// SHA-256 of the CA certificate (hex): what tokens pin.
    pub fn ca_fingerprint(&self) -> Result<String, IdentityError> {
        Ok(hex::encode(Sha256::digest(
            pem_cert(&self.ca_cert_pem, "CA certificate")?.as_ref(),
        )))
    }

    /// A join token valid for `ttl`.
    pub fn join_token(&self, ttl: Duration) -> Result<String, IdentityError> {
        let fp = self.ca_fingerprint()?;
        let expiry = now_unix().saturating_add(ttl.as_secs());
        Ok(format!(
            "B3S1-{fp}-{expiry}-{}",
            token_mac(&self.join_key, &fp, expiry)
        ))
    }

    /// Checks a join token made by this cluster at time `now` (unix s).
    pub fn verify_token(&self, token: &str, now: u64) -> Result<(), IdentityError> {
        let parsed = Token::parse(token)?;
        let ours = self.ca_fingerprint()?;
        if parsed.ca_fingerprint != ours {
            return Err(IdentityError::WrongCluster {
                token_ca: parsed.ca_fingerprint,
                ours,
            });
        }
        let mac = token_mac(&self.join_key, &parsed.ca_fingerprint, parsed.expiry);
        if !constant_time_eq(mac.as_bytes(), parsed.mac.as_bytes()) {
            return Err(IdentityError::BadSecret);
        }
        if parsed.expiry < now {
            return Err(IdentityError::Expired(now - parsed.expiry));
        }
        Ok(())
    }

    /// Admits a joiner: checks its token, signs a certificate for
    /// `node_id` with the public key of `csr_pem` (nothing else from the
    /// request is trusted), and returns what it needs.
    pub fn grant(
        &self,
        token: &str,
        node_id: u64,
        csr_pem: &str,
    ) -> Result<JoinGrant, IdentityError> {
        self.verify_token(token, now_unix())?;
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)?;
        let ca_key = KeyPair::from_pem(&self.ca_key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&self.ca_cert_pem, &ca_key)?;
        let cert = node_params(node_id)?.signed_by(&csr.public_key, &issuer)?;
        Ok(JoinGrant {
            settings: self.settings.clone(),
            ca_cert_pem: self.ca_cert_pem.clone(),
            ca_key_pem: self.ca_key_pem.clone(),
            cert_pem: cert.pem(),
            join_key: hex::encode(self.join_key),
        })
    }

    /// The identity a joiner builds from a grant and its own key.
    pub fn from_grant(
        grant: JoinGrant,
        pending: PendingJoin,
        token: &str,
    ) -> Result<Self, IdentityError> {
        let id = Identity {
            settings: grant.settings,
            node_id: pending.node_id,
            ca_cert_pem: grant.ca_cert_pem,
            ca_key_pem: grant.ca_key_pem,
            cert_pem: grant.cert_pem,
            key_pem: pending.key.serialize_pem(),
            join_key: parse_key(&grant.join_key)?,
        };
        // The grant must come from the CA the token pinned.
        let pinned = Token::parse(token)?.ca_fingerprint;
        let got = id.ca_fingerprint()?;
        if pinned != got {
            return Err(IdentityError::WrongCluster {
                token_ca: pinned,
                ours: got,
            });
        }
        Ok(id)
    }

    fn roots(&self) -> Result<RootCertStore, IdentityError> {
        let mut roots = RootCertStore::empty();
        roots.add(pem_cert(&self.ca_cert_pem, "CA certificate")?)?;
        Ok(roots)
    }

    fn chain(
        &self,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), IdentityError> {
        let chain = vec![
            pem_cert(&self.cert_pem, "node certificate")?,
            pem_cert(&self.ca_cert_pem, "CA certificate")?,
        ];
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(|e| {
            IdentityError::Pem {
                what: "node key".into(),
                detail: e.to_string(),
            }
        })?;
        Ok((chain, key))
    }

    /// Server side: requires a client certificate signed by the cluster
    /// CA, except that a client without any certificate may connect — the
    /// transport serves such a client nothing but the token-checked join.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, IdentityError> {
        let provider = provider();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(self.roots()?),
            provider.clone(),
        )
        .allow_unauthenticated()
        .build()
        .map_err(|e| IdentityError::Tls(rustls::Error::General(e.to_string())))?;
        let (chain, key) = self.chain()?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)?;
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        Ok(cfg)
    }

    /// Client side: trusts only the cluster CA and presents our certificate.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, IdentityError> {
        let (chain, key) = self.chain()?;
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(chain, key)?;
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        Ok(cfg)
    }
}

/// The joiner's half of a join: its fresh key and the request to send.
pub struct PendingJoin {
    /// Node id the joiner asks for.
    pub node_id: u64,
    /// Certificate signing request (PEM).
    pub csr_pem: String,
    key: KeyPair,
}

impl PendingJoin {
    /// A new key pair and CSR.
    pub fn new() -> Result<Self, IdentityError> {
        let node_id = random_node_id();
        let key = KeyPair::generate()?;
        // Only the public key of the request is used by the signer.
        let csr_pem = CertificateParams::new(vec![SERVER_NAME.to_string()])?
            .serialize_request(&key)?
            .pem()?;
        Ok(Self {
            node_id,
            csr_pem,
            key,
        })
    }
}

/// Client config for a joiner: no client certificate; the server must show
/// a chain ending in the CA whose fingerprint the token carries.
pub fn join_client_config(token: &str) -> Result<rustls::ClientConfig, IdentityError> {
    let fp = Token::parse(token)?.ca_fingerprint;
    let provider = provider();
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCa { fp, provider }))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    Ok(cfg)
}

/// The ring provider: the workspace builds rustls without aws-lc.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

struct Token {
    ca_fingerprint: String,
    expiry: u64,
    mac: String,
}

impl Token {
    fn parse(token: &str) -> Result<Token, IdentityError> {
        let mut parts = token.trim().split('-');
        if parts.next() != Some("B3S1") {
            return Err(IdentityError::MalformedToken("it must start with B3S1-"));
        }
        let fp = parts
            .next()
            .filter(|f| f.len() == 64 && f.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or(IdentityError::MalformedToken("bad CA fingerprint"))?;
        let expiry = parts
            .next()
            .and_then(|e| e.parse().ok())
            .ok_or(IdentityError::MalformedToken("bad expiry"))?;
        let mac = parts
            .next()
            .filter(|m| m.len() == 32)
            .ok_or(IdentityError::MalformedToken("bad secret"))?;
        if parts.next().is_some() {
            return Err(IdentityError::MalformedToken("trailing fields"));
        }
        Ok(Token {
            ca_fingerprint: fp.to_ascii_lowercase(),
            expiry,
            mac: mac.to_ascii_lowercase(),
        })
    }
}

/// HMAC-SHA256 of "fingerprint-expiry", truncated to 128 bits (hex).
fn token_mac(key: &[u8; 32], fp: &str, expiry: u64) -> String {
    let mut ipad = [0x36u8; 64];
    let mut opad = [0x5cu8; 64];
    for (i, k) in key.iter().enumerate() {
        ipad[i] ^= k;
        opad[i] ^= k;
    }
    let inner = Sha256::new()
        .chain_update(ipad)
        .chain_update(format!("{fp}-{expiry}"))
        .finalize();
    let outer = Sha256::new()
        .chain_update(opad)
        .chain_update(inner)
        .finalize();
    hex::encode(&outer[..16])
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn parse_key(s: &str) -> Result<[u8; 32], IdentityError> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s.trim(), &mut out).map_err(|e| IdentityError::Pem {
        what: "join key".into(),
        detail: e.to_string(),
    })?;
    Ok(out)
}

fn pem_cert(pem: &str, what: &str) -> Result<CertificateDer<'static>, IdentityError> {
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| IdentityError::Pem {
        what: what.into(),
        detail: e.to_string(),
    })
}

/// Accepts a server whose chain ends in the pinned CA and verifies against it.
#[derive(Debug)]
struct PinnedCa {
    fp: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates.last() else {
            return Err(rustls::Error::General(
                "server sent no CA certificate to check against the join token".into(),
            ));
        };
        if hex::encode(Sha256::digest(ca.as_ref())) != self.fp {
            return Err(rustls::Error::General(
                "server's CA does not match the join token's fingerprint".into(),
            ));
        }
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_load_and_refuse_reinit() {
        let dir = tempfile::tempdir().unwrap();
        let id = Identity::init(dir.path(), 3, 2).unwrap();
        let loaded = Identity::require(dir.path()).unwrap();
        assert_eq!(loaded.node_id, id.node_id);
        assert_eq!(loaded.settings, id.settings);
        let err = Identity::init(dir.path(), 3, 2).unwrap_err();
        assert!(err.to_string().contains("already holds"), "{err}");
        let empty = tempfile::tempdir().unwrap();
        let err = Identity::require(empty.path()).unwrap_err();
        assert!(err.to_string().contains("store init"), "{err}");
    }

    #[test]
    fn tokens_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let id = Identity::init(dir.path(), 3, 2).unwrap();
        let token = id.join_token(Duration::from_secs(60)).unwrap();
        id.verify_token(&token, now_unix()).unwrap();

        let err = id.verify_token(&token, now_unix() + 3600).unwrap_err();
        assert!(matches!(err, IdentityError::Expired(_)), "{err}");
        assert!(err.to_string().contains("store join-token"), "{err}");

        let mut forged = token.clone();
        let last = forged.pop().unwrap();
        forged.push(if last == '0' { '1' } else { '0' });
        assert!(matches!(
            id.verify_token(&forged, now_unix()),
            Err(IdentityError::BadSecret)
        ));
        // Pushing the expiry out breaks the mac too.
        let parts: Vec<_> = token.split('-').collect();
        let extended = format!("B3S1-{}-{}-{}", parts[1], u64::MAX, parts[3]);
        assert!(matches!(
            id.verify_token(&extended, now_unix()),
            Err(IdentityError::BadSecret)
        ));

        let other = tempfile::tempdir().unwrap();
        let other = Identity::init(other.path(), 3, 2).unwrap();
        let foreign = other.join_token(Duration::from_secs(60)).unwrap();
        assert!(matches!(
            id.verify_token(&foreign, now_unix()),
            Err(IdentityError::WrongCluster { .. })
        ));
        for bad in ["", "hello", "B3S1-zz-1-2", "B3S1-", &format!("{token}-x")] {
            assert!(
                matches!(
                    id.verify_token(bad, now_unix()),
                    Err(IdentityError::MalformedToken(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn grant_makes_a_working_identity() {
        let dir = tempfile::tempdir().unwrap();
        let id = Identity::init(dir.path(), 3, 2).unwrap();
        let token = id.join_token(Duration::from_secs(60)).unwrap();
        let pending = PendingJoin::new().unwrap();
        let node_id = pending.node_id;
        let grant = id.grant(&token, node_id, &pending.csr_pem).unwrap();
        let joined = Identity::from_grant(grant, pending, &token).unwrap();
        assert_eq!(joined.node_id, node_id);
        assert_eq!(joined.settings, id.settings);
        joined.server_config().unwrap();
        joined.client_config().unwrap();
        join_client_config(&token).unwrap();
        let err = id.grant("B3S1-nope", 5, "x").unwrap_err();
        assert!(matches!(err, IdentityError::MalformedToken(_)));
    }
}
