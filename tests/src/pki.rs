//! A PKI made at test time with rcgen: a CA, node and manager certificates, CRLs, written as
//! PEM files (keys 0600) for the daemons' `CertificateFile=`, `KeyFile=`,
//! `TrustedCertificateFile=` and `RevocationListFile=`.

use crate::HarnessError;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams,
    SerialNumber,
};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Serial numbers, unique within the test process.
static SERIAL: AtomicU64 = AtomicU64::new(1000);

/// The extended key usage a certificate carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// clientAuth: an agent's certificate.
    Client,
    /// serverAuth: the manager's certificate.
    Server,
}

/// When a certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    Current,
    Expired,
    NotYetValid,
}

/// What to put in a certificate.
#[derive(Debug, Clone)]
pub struct Spec {
    /// subjectAltName entries (IP addresses become IP SANs); empty: no SAN extension.
    pub names: Vec<String>,
    pub common_name: String,
    pub usage: Usage,
    pub validity: Validity,
}

impl Spec {
    /// An agent's certificate for `node`: SAN dNSName = CN = node, clientAuth, valid now.
    pub fn node(node: &str) -> Spec {
        Spec {
            names: vec![node.to_string()],
            common_name: node.to_string(),
            usage: Usage::Client,
            validity: Validity::Current,
        }
    }

    /// The manager's certificate for these names (DNS or IP), serverAuth, valid now.
    pub fn manager(names: &[&str]) -> Spec {
        Spec {
            names: names.iter().map(|n| n.to_string()).collect(),
            common_name: "hirte-manager".to_string(),
            usage: Usage::Server,
            validity: Validity::Current,
        }
    }
}

/// A certificate and key on disk.
#[derive(Debug, Clone)]
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
    serial: u64,
    der: Vec<u8>,
}

impl Leaf {
    /// The DER bytes of the certificate.
    pub fn der(&self) -> &[u8] {
        &self.der
    }
}

/// A certificate authority and the directory its files go to.
pub struct Pki {
    dir: PathBuf,
    name: String,
    cert: Certificate,
    key: KeyPair,
}

fn err(what: &str, e: impl std::fmt::Display) -> HarnessError {
    HarnessError::io(what, std::io::Error::other(e.to_string()))
}

fn write(path: &Path, text: &str, mode: u32) -> Result<(), HarnessError> {
    std::fs::write(path, text)
        .and_then(|()| std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)))
        .map_err(|e| HarnessError::io(format!("writing {}", path.display()), e))
}

fn validity(p: &mut CertificateParams, v: Validity) {
    let (from, to) = match v {
        Validity::Current => ((2020, 1, 1), (2099, 1, 1)),
        Validity::Expired => ((2020, 1, 1), (2021, 1, 1)),
        Validity::NotYetValid => ((2098, 1, 1), (2099, 1, 1)),
    };
    p.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
    p.not_after = rcgen::date_time_ymd(to.0, to.1, to.2);
}

impl Pki {
    /// A new CA named `name`, its certificate in `dir/<name>-ca.pem`.
    pub fn new(dir: &Path, name: &str) -> Result<Pki, HarnessError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| HarnessError::io(format!("creating {}", dir.display()), e))?;
        let mut p = CertificateParams::new(Vec::<String>::new()).map_err(|e| err("CA", e))?;
        p.distinguished_name
            .push(DnType::CommonName, format!("{name} CA"));
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut p, Validity::Current);
        let key = KeyPair::generate().map_err(|e| err("CA key", e))?;
        let cert = p.self_signed(&key).map_err(|e| err("CA", e))?;
        let pki = Pki {
            dir: dir.to_path_buf(),
            name: name.to_string(),
            cert,
            key,
        };
        write(&pki.ca_file(), &pki.cert.pem(), 0o644)?;
        Ok(pki)
    }

    /// The CA certificate, for `TrustedCertificateFile=`.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join(format!("{}-ca.pem", self.name))
    }

    /// A certificate signed by this CA, as `dir/<file>.pem` and `dir/<file>.key`.
    pub fn issue(&self, file: &str, spec: &Spec) -> Result<Leaf, HarnessError> {
        let params = Self::params(spec)?;
        let key = KeyPair::generate().map_err(|e| err("key", e))?;
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .map_err(|e| err("certificate", e))?;
        self.write_leaf(file, &cert, &key)
    }

    /// A self-signed certificate with the same contents (signed by no CA).
    pub fn self_signed(&self, file: &str, spec: &Spec) -> Result<Leaf, HarnessError> {
        let key = KeyPair::generate().map_err(|e| err("key", e))?;
        let cert = Self::params(spec)?
            .self_signed(&key)
            .map_err(|e| err("certificate", e))?;
        self.write_leaf(file, &cert, &key)
    }

    fn params(spec: &Spec) -> Result<CertificateParams, HarnessError> {
        let mut p = CertificateParams::new(spec.names.clone()).map_err(|e| err("names", e))?;
        p.distinguished_name
            .push(DnType::CommonName, spec.common_name.clone());
        p.extended_key_usages = vec![match spec.usage {
            Usage::Client => ExtendedKeyUsagePurpose::ClientAuth,
            Usage::Server => ExtendedKeyUsagePurpose::ServerAuth,
        }];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.serial_number = Some(SerialNumber::from(SERIAL.fetch_add(1, Ordering::Relaxed)));
        validity(&mut p, spec.validity);
        Ok(p)
    }

    fn write_leaf(
        &self,
        file: &str,
        cert: &Certificate,
        key: &KeyPair,
    ) -> Result<Leaf, HarnessError> {
        let serial = cert
            .params()
            .serial_number
            .as_ref()
            .map(|s| {
                s.as_ref()
                    .iter()
                    .fold(0u64, |a, b| (a << 8) | u64::from(*b))
            })
            .unwrap_or(0);
        let leaf = Leaf {
            cert: self.dir.join(format!("{file}.pem")),
            key: self.dir.join(format!("{file}.key")),
            serial,
            der: cert.der().to_vec(),
        };
        write(&leaf.cert, &cert.pem(), 0o644)?;
        write(&leaf.key, &key.serialize_pem(), 0o600)?;
        Ok(leaf)
    }

    /// Writes this CA's CRL listing `revoked` to `path` (replacing it).
    pub fn write_crl(&self, path: &Path, revoked: &[&Leaf]) -> Result<(), HarnessError> {
        let crl = CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2020, 1, 1),
            next_update: rcgen::date_time_ymd(2099, 1, 1),
            crl_number: SerialNumber::from(SERIAL.fetch_add(1, Ordering::Relaxed)),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|l| RevokedCertParams {
                    serial_number: SerialNumber::from(l.serial),
                    revocation_time: rcgen::date_time_ymd(2021, 1, 1),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&self.cert, &self.key)
        .map_err(|e| err("CRL", e))?;
        write(path, &crl.pem().map_err(|e| err("CRL PEM", e))?, 0o644)
    }
}
