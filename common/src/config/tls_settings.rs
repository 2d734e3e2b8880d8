//! The TLS file keys, the same in both daemons (`CertificateFile=`, `KeyFile=`,
//! `TrustedCertificateFile=`, `RevocationListFile=`); what they mean is `crate::tls`'s.

use super::entry::{bad, single, Entry};
use super::error::ConfigError;
use crate::tls::TlsFiles;

/// Applies a TLS file key; `Ok(false)` if the key is not one of them.
// [impl->req~tls.config~1]
pub(super) fn apply_tls(tls: &mut TlsFiles, e: &Entry) -> Result<bool, ConfigError> {
    if !TlsFiles::KEYS.contains(&e.key.as_str()) {
        return Ok(false);
    }
    let v = single(e)?;
    if !v.is_empty() && !v.starts_with('/') {
        return Err(bad(e, "expected an absolute path"));
    }
    tls.set(&e.key, v);
    Ok(true)
}

/// Some but not all of the three files set: the daemon refuses to start, naming what is missing.
pub(super) fn validate_tls(tls: &TlsFiles) -> Result<(), ConfigError> {
    tls.enabled().map(|_| ()).map_err(|e| ConfigError::Invalid {
        reason: e.to_string(),
    })
}
