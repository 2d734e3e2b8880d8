//! The link's TLS policy, without I/O on the link: which files make TLS on, how they are
//! checked and loaded into rustls configurations, and the identity rule (a node registers
//! only under a name its certificate carries). The byte pumping is `linkio`'s.
//!
//! rustls with the ring provider, TLS 1.3 only, mutual authentication: the manager requires
//! a client certificate signed by `TrustedCertificateFile` with EKU clientAuth, the agent
//! requires the manager's certificate to chain to its `TrustedCertificateFile`, carry EKU
//! serverAuth and name `ManagerName` (DNS or IP SAN). Both check an optional CRL.

pub mod der;
mod verify;

use crate::bounds::{MAX_CERT_CHAIN_BYTES, MAX_CERT_CHAIN_LEN, MAX_PEM_FILE_SIZE};
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};
use std::fmt;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
pub use verify::Seen;

/// The TLS keys of one daemon's configuration (names as in systemd-journal-remote).
// [impl->req~tls.config~1]
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsFiles {
    /// `CertificateFile=`: this daemon's certificate (chain), PEM.
    pub certificate: Option<PathBuf>,
    /// `KeyFile=`: its private key, PEM; mode 0600 or stricter, owned by the daemon's user.
    pub key: Option<PathBuf>,
    /// `TrustedCertificateFile=`: the CA(s) that sign the peers' certificates, PEM.
    pub trusted: Option<PathBuf>,
    /// `RevocationListFile=`: CRL(s) of those CAs, PEM; optional.
    pub revocation_list: Option<PathBuf>,
}

impl TlsFiles {
    /// The config keys this struct holds.
    pub const KEYS: [&'static str; 4] = [
        "CertificateFile",
        "KeyFile",
        "TrustedCertificateFile",
        "RevocationListFile",
    ];

    /// Sets one of [`Self::KEYS`] (an empty value unsets it); false: not a TLS key.
    pub fn set(&mut self, key: &str, value: &str) -> bool {
        let slot = match key {
            "CertificateFile" => &mut self.certificate,
            "KeyFile" => &mut self.key,
            "TrustedCertificateFile" => &mut self.trusted,
            "RevocationListFile" => &mut self.revocation_list,
            _ => return false,
        };
        *slot = (!value.is_empty()).then(|| PathBuf::from(value));
        true
    }

    /// Whether TLS is on: all three files set. Some but not all is an error naming what is missing.
    pub fn enabled(&self) -> Result<bool, TlsError> {
        let required = [
            ("CertificateFile", &self.certificate),
            ("KeyFile", &self.key),
            ("TrustedCertificateFile", &self.trusted),
        ];
        let missing: Vec<&'static str> = required
            .iter()
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| *k)
            .collect();
        match missing.len() {
            0 => Ok(true),
            3 if self.revocation_list.is_none() => Ok(false),
            _ => Err(TlsError::Incomplete(missing)),
        }
    }
}

/// Why TLS could not be set up, or why a peer was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsError {
    /// Some of the three files are set, these are not.
    Incomplete(Vec<&'static str>),
    Read {
        key: &'static str,
        path: PathBuf,
        error: String,
    },
    TooLarge {
        key: &'static str,
        path: PathBuf,
    },
    Pem {
        key: &'static str,
        path: PathBuf,
        error: String,
    },
    KeyMode {
        path: PathBuf,
        mode: u32,
    },
    KeyOwner {
        path: PathBuf,
        owner: u32,
        user: u32,
    },
    /// The own certificate chain is longer than a peer would accept.
    ChainTooLong {
        len: usize,
        bytes: usize,
    },
    /// The own certificate does not carry the name this daemon uses.
    OwnName {
        name: String,
        why: String,
    },
    /// rustls refused the material.
    Setup(String),
    BadManagerName(String),
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Incomplete(missing) => {
                let missing: Vec<String> = missing.iter().map(|k| format!("{k}=")).collect();
                write!(
                    f,
                    "TLS needs CertificateFile=, KeyFile= and TrustedCertificateFile= together; \
                     missing: {}",
                    missing.join(", ")
                )
            }
            TlsError::Read { key, path, error } => {
                write!(f, "{key}={}: cannot read: {error}", path.display())
            }
            TlsError::TooLarge { key, path } => write!(
                f,
                "{key}={}: larger than {MAX_PEM_FILE_SIZE} bytes",
                path.display()
            ),
            TlsError::Pem { key, path, error } => {
                write!(f, "{key}={}: {error}", path.display())
            }
            TlsError::KeyMode { path, mode } => write!(
                f,
                "KeyFile={}: mode {mode:04o} lets group or others read it; \
                 it must be 0600 or stricter (chmod 0600)",
                path.display()
            ),
            TlsError::KeyOwner { path, owner, user } => write!(
                f,
                "KeyFile={}: owned by uid {owner}, not by this daemon's user (uid {user})",
                path.display()
            ),
            TlsError::ChainTooLong { len, bytes } => write!(
                f,
                "CertificateFile: chain of {len} certificates ({bytes} bytes) exceeds \
                 {MAX_CERT_CHAIN_LEN} certificates or {MAX_CERT_CHAIN_BYTES} bytes"
            ),
            TlsError::OwnName { name, why } => {
                write!(f, "CertificateFile: not usable for '{name}': {why}")
            }
            TlsError::Setup(e) => write!(f, "TLS setup failed: {e}"),
            TlsError::BadManagerName(n) => {
                write!(
                    f,
                    "ManagerName '{n}' is neither a DNS name nor an IP address"
                )
            }
        }
    }
}

impl std::error::Error for TlsError {}

fn setup(e: impl fmt::Display) -> TlsError {
    TlsError::Setup(e.to_string())
}

/// The one crypto provider: ring (builds with a C compiler only, no cmake/Go/perl as
/// aws-lc-rs needs, which keeps offline distribution builds simple).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a PEM file of at most [`MAX_PEM_FILE_SIZE`] bytes.
// [impl->req~tls.bounds~1]
fn read_bounded(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let read_err = |e: std::io::Error| TlsError::Read {
        key,
        path: path.to_path_buf(),
        error: e.to_string(),
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut bytes = Vec::new();
    let limit = u64::try_from(MAX_PEM_FILE_SIZE).unwrap_or(u64::MAX);
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() > MAX_PEM_FILE_SIZE {
        return Err(TlsError::TooLarge {
            key,
            path: path.to_path_buf(),
        });
    }
    Ok(bytes)
}

/// Every PEM section of type `T` in the file; at least one.
fn read_pem<T: PemObject>(key: &'static str, path: &Path) -> Result<Vec<T>, TlsError> {
    let bytes = read_bounded(key, path)?;
    let pem = |error: String| TlsError::Pem {
        key,
        path: path.to_path_buf(),
        error,
    };
    let items = T::pem_slice_iter(&bytes)
        .collect::<Result<Vec<T>, _>>()
        .map_err(|e| pem(format!("not valid PEM: {e}")))?;
    if items.is_empty() {
        return Err(pem("holds no PEM section of the expected type".to_string()));
    }
    Ok(items)
}

/// A key file readable or writable by group or others, or owned by another user, is refused.
// [impl->req~tls.key-file~1]
pub fn check_key_file(path: &Path) -> Result<(), TlsError> {
    let meta = std::fs::metadata(path).map_err(|e| TlsError::Read {
        key: "KeyFile",
        path: path.to_path_buf(),
        error: e.to_string(),
    })?;
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(TlsError::KeyMode {
            path: path.to_path_buf(),
            mode,
        });
    }
    let user = nix::unistd::geteuid().as_raw();
    if meta.uid() != user {
        return Err(TlsError::KeyOwner {
            path: path.to_path_buf(),
            owner: meta.uid(),
            user,
        });
    }
    Ok(())
}

/// A chain within [`MAX_CERT_CHAIN_LEN`] certificates and [`MAX_CERT_CHAIN_BYTES`] bytes.
// [impl->req~tls.bounds~1]
pub fn check_chain_size(chain_len: usize, chain_bytes: usize) -> Result<(), TlsError> {
    if chain_len > MAX_CERT_CHAIN_LEN || chain_bytes > MAX_CERT_CHAIN_BYTES {
        return Err(TlsError::ChainTooLong {
            len: chain_len,
            bytes: chain_bytes,
        });
    }
    Ok(())
}

/// What both daemons load from their files.
struct Material {
    own: Arc<CertifiedKey>,
    roots: Arc<RootCertStore>,
    crls: Vec<CertificateRevocationListDer<'static>>,
    provider: Arc<CryptoProvider>,
}

impl Material {
    fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        let (Some(cert), Some(key), Some(trusted)) =
            (&files.certificate, &files.key, &files.trusted)
        else {
            return Err(TlsError::Incomplete(vec![]));
        };
        check_key_file(key)?;
        let chain: Vec<CertificateDer<'static>> = read_pem("CertificateFile", cert)?;
        let bytes = chain.iter().map(|c| c.len()).sum();
        check_chain_size(chain.len(), bytes)?;
        let private = read_pem::<PrivateKeyDer<'static>>("KeyFile", key)?
            .into_iter()
            .next()
            .ok_or_else(|| setup("KeyFile holds no key"))?;
        let provider = provider();
        let own = CertifiedKey::from_der(chain, private, &provider).map_err(|e| TlsError::Pem {
            key: "KeyFile",
            path: key.clone(),
            error: format!("does not fit CertificateFile: {e}"),
        })?;
        let mut roots = RootCertStore::empty();
        for ca in read_pem::<CertificateDer<'static>>("TrustedCertificateFile", trusted)? {
            roots.add(ca).map_err(|e| TlsError::Pem {
                key: "TrustedCertificateFile",
                path: trusted.clone(),
                error: format!("not a usable CA certificate: {e}"),
            })?;
        }
        let crls = match &files.revocation_list {
            Some(p) => read_pem("RevocationListFile", p)?,
            None => Vec::new(),
        };
        Ok(Material {
            own: Arc::new(own),
            roots: Arc::new(roots),
            crls,
            provider,
        })
    }

    fn own_names(&self) -> Result<der::CertNames, TlsError> {
        let leaf = self.own.end_entity_cert().map_err(setup)?;
        der::parse_certificate(leaf).map_err(setup)
    }
}

/// The manager's side: accepts agents whose certificates chain to the trusted CAs.
pub struct ServerPolicy {
    material: Material,
    verifier: Arc<dyn ClientCertVerifier>,
}

impl ServerPolicy {
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        let material = Material::load(files)?;
        // EKU clientAuth, validity and (with a CRL) revocation of the agent's certificate
        // are webpki's checks; a CRL must cover the CA that signed each node certificate.
        let verifier = WebPkiClientVerifier::builder_with_provider(
            material.roots.clone(),
            material.provider.clone(),
        )
        .with_crls(material.crls.clone())
        .only_check_end_entity_revocation()
        .build()
        .map_err(setup)?;
        Ok(ServerPolicy { material, verifier })
    }

    /// A fresh server session, and where its verifier notes the subject it was shown.
    // [impl->req~tls.link~1]
    pub fn session(&self) -> Result<(ServerConnection, Arc<Seen>), TlsError> {
        let seen = Arc::new(Seen::default());
        let verifier = Arc::new(verify::GuardedClient::new(
            self.verifier.clone(),
            seen.clone(),
        ));
        let mut config = ServerConfig::builder_with_provider(self.material.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(setup)?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(SingleCertAndKey::from(self.material.own.clone())));
        // Every link is one long session: no resumption, no tickets to keep.
        config.send_tls13_tickets = 0;
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        let conn = ServerConnection::new(Arc::new(config)).map_err(setup)?;
        Ok((conn, seen))
    }

    /// Checks an established session's peer chain again, e.g. against a new CRL.
    // [impl->req~tls.reload~1]
    pub fn recheck(&self, chain: &[CertificateDer<'_>]) -> Result<(), String> {
        let (leaf, intermediates) = chain.split_first().ok_or("no certificate")?;
        self.verifier
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// The agent's side: talks only to a manager whose certificate names `ManagerName`.
pub struct ClientPolicy {
    material: Material,
    verifier: Arc<dyn ServerCertVerifier>,
    manager_name: ServerName<'static>,
}

impl ClientPolicy {
    /// `node_name` must be carried by the own certificate (else the manager refuses it anyway).
    pub fn load(files: &TlsFiles, manager_name: &str, node_name: &str) -> Result<Self, TlsError> {
        let manager = ServerName::try_from(manager_name.to_string())
            .map_err(|_| TlsError::BadManagerName(manager_name.to_string()))?;
        let material = Material::load(files)?;
        check_node_name(&material.own_names()?, node_name).map_err(|why| TlsError::OwnName {
            name: node_name.to_string(),
            why: why.to_string(),
        })?;
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            material.roots.clone(),
            material.provider.clone(),
        )
        .with_crls(material.crls.clone())
        .only_check_end_entity_revocation()
        .build()
        .map_err(setup)?;
        Ok(ClientPolicy {
            material,
            verifier,
            manager_name: manager,
        })
    }

    /// A fresh client session, and where its verifier notes the subject it was shown.
    // [impl->req~tls.link~1]
    pub fn session(&self) -> Result<(ClientConnection, Arc<Seen>), TlsError> {
        let seen = Arc::new(Seen::default());
        let verifier = Arc::new(verify::GuardedServer::new(
            self.verifier.clone(),
            seen.clone(),
        ));
        // "dangerous" only in rustls' naming: the verifier is webpki's, with a chain-size bound
        // and a note of the subject in front of it.
        let mut config = ClientConfig::builder_with_provider(self.material.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(setup)?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(self.material.own.clone())));
        config.resumption = rustls::client::Resumption::disabled();
        let conn =
            ClientConnection::new(Arc::new(config), self.manager_name.clone()).map_err(setup)?;
        Ok((conn, seen))
    }

    /// Checks an established session's manager chain again, e.g. against a new CRL.
    // [impl->req~tls.reload~1]
    pub fn recheck(&self, chain: &[CertificateDer<'_>]) -> Result<(), String> {
        let (leaf, intermediates) = chain.split_first().ok_or("no certificate")?;
        self.verifier
            .verify_server_cert(
                leaf,
                intermediates,
                &self.manager_name,
                &[],
                UnixTime::now(),
            )
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// Why a certificate does not carry a node name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameMismatch {
    /// Its subjectAltName lists these DNS names, none equal to the node name.
    NotInSan(Vec<String>),
    /// It has no subjectAltName, and its common name differs.
    CommonName(Option<String>),
}

impl fmt::Display for NameMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameMismatch::NotInSan(names) => write!(
                f,
                "certificate names [{}] in its subjectAltName",
                names.join(", ")
            ),
            NameMismatch::CommonName(Some(cn)) => {
                write!(f, "certificate has no subjectAltName and CN '{cn}'")
            }
            NameMismatch::CommonName(None) => {
                write!(f, "certificate has neither subjectAltName nor CN")
            }
        }
    }
}

/// The identity rule: a SAN dNSName exactly equal to the node name; the CN only when the
/// certificate has no subjectAltName at all.
// [impl->req~tls.identity~1]
pub fn check_node_name(names: &der::CertNames, node: &str) -> Result<(), NameMismatch> {
    if names.has_san {
        if names.dns_names.iter().any(|n| n == node) {
            return Ok(());
        }
        return Err(NameMismatch::NotInSan(names.dns_names.clone()));
    }
    match &names.common_name {
        Some(cn) if cn == node => Ok(()),
        other => Err(NameMismatch::CommonName(other.clone())),
    }
}

/// A verified peer as log lines name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    pub names: der::CertNames,
    /// `CN=...`, or `(no CN)`.
    pub subject: String,
    /// SHA-256 of the DER certificate, colon-separated hex.
    pub fingerprint: String,
    /// The whole chain as presented, to check again after SIGHUP.
    pub chain: Vec<CertificateDer<'static>>,
}

impl PeerIdentity {
    pub fn from_chain(chain: &[CertificateDer<'_>]) -> Result<Self, String> {
        let leaf = chain.first().ok_or("no certificate")?;
        let names = der::parse_certificate(leaf).map_err(|e| e.to_string())?;
        Ok(PeerIdentity {
            subject: subject_text(&names),
            fingerprint: fingerprint(leaf),
            names,
            chain: chain.iter().map(|c| c.clone().into_owned()).collect(),
        })
    }

    /// Whether the certificate's validity period has ended (`now`: seconds since the epoch).
    pub fn expired_at(&self, now: i64) -> bool {
        now > self.names.not_after
    }

    /// Whether the certificate's validity period has ended by the wall clock.
    pub fn expired(&self) -> bool {
        self.expired_at(now_epoch_secs())
    }

    /// How long until the certificate has expired by the wall clock (zero once it has): the
    /// deadline a link thread sleeps towards while its session is idle. A wall-clock step is
    /// caught at the next wake-up of any kind (the peer's next heartbeat at the latest).
    pub fn valid_for(&self) -> std::time::Duration {
        let left = self
            .names
            .not_after
            .saturating_add(1)
            .saturating_sub(now_epoch_secs());
        std::time::Duration::from_secs(u64::try_from(left).unwrap_or(0))
    }
}

fn now_epoch_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A certificate's subject as log lines print it.
pub fn subject_text(names: &der::CertNames) -> String {
    match &names.common_name {
        Some(cn) => format!("CN={cn}"),
        None => "(no CN)".to_string(),
    }
}

/// SHA-256 fingerprint, as `openssl x509 -fingerprint -sha256` prints it.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The policy in force, replaced as a whole on SIGHUP; sessions notice the new generation.
pub struct Reloadable<T> {
    current: Mutex<(u64, Arc<T>)>,
}

impl<T> Reloadable<T> {
    pub fn new(policy: T) -> Self {
        Reloadable {
            current: Mutex::new((0, Arc::new(policy))),
        }
    }

    /// The policy in force and its generation.
    pub fn get(&self) -> (u64, Arc<T>) {
        let c = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        (c.0, c.1.clone())
    }

    pub fn replace(&self, policy: T) {
        let mut c = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        *c = (c.0.wrapping_add(1), Arc::new(policy));
    }
}

#[cfg(test)]
mod tests;
