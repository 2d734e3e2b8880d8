//! webpki's verifiers with two things in front: the certificate-chain size bound, checked
//! before any signature work, and a note of the subject presented, so that a refused
//! handshake's log line can name it (rustls keeps no peer certificate of a failed handshake).

use super::{check_chain_size, der, subject_text};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};
use std::sync::{Arc, Mutex, PoisonError};

/// The subject of the certificate one session's peer presented, once it has presented one.
#[derive(Debug, Default)]
pub struct Seen(Mutex<Option<String>>);

impl Seen {
    /// `CN=...`, or `(none)` when the peer presented no certificate.
    pub fn subject(&self) -> String {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .unwrap_or_else(|| "(none)".to_string())
    }

    /// Notes the subject and checks the chain-size bound.
    // [impl->req~tls.bounds~1]
    pub(super) fn note(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<(), Error> {
        let subject = der::parse_certificate(end_entity)
            .map(|n| subject_text(&n))
            .unwrap_or_else(|e| format!("({e})"));
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(subject);
        let len = intermediates.len().saturating_add(1);
        let bytes = intermediates
            .iter()
            .map(|c| c.len())
            .fold(end_entity.len(), usize::saturating_add);
        check_chain_size(len, bytes).map_err(|e| Error::General(e.to_string()))
    }
}

#[derive(Debug)]
pub(super) struct GuardedClient {
    inner: Arc<dyn ClientCertVerifier>,
    seen: Arc<Seen>,
}

impl GuardedClient {
    pub(super) fn new(inner: Arc<dyn ClientCertVerifier>, seen: Arc<Seen>) -> Self {
        GuardedClient { inner, seen }
    }
}

impl ClientCertVerifier for GuardedClient {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.seen.note(end_entity, intermediates)?;
        self.inner
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[derive(Debug)]
pub(super) struct GuardedServer {
    inner: Arc<dyn ServerCertVerifier>,
    seen: Arc<Seen>,
}

impl GuardedServer {
    pub(super) fn new(inner: Arc<dyn ServerCertVerifier>, seen: Arc<Seen>) -> Self {
        GuardedServer { inner, seen }
    }
}

impl ServerCertVerifier for GuardedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        self.seen.note(end_entity, intermediates)?;
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn root_hint_subjects(&self) -> Option<&[DistinguishedName]> {
        self.inner.root_hint_subjects()
    }
}
