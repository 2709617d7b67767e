//! The TLS client configuration of one host, built here rather than by reqwest so that the
//! moment a handshake starts can be seen (docs/telemetry.md, "Where a slow request spent its
//! time"): rustls asks the session store for a resumption ticket and a key-exchange hint as it
//! writes its ClientHello, which it does the instant the TCP connection is up. The store below
//! marks that moment in the request's phases and otherwise is rustls' own in-memory cache.
//!
//! What reqwest would build is built the same way: the platform verifier (the system's roots)
//! with the host's extra CAs, or no verification at all for `skip_verify`; the client
//! certificate of a hosts.toml or certs.d directory; ALPN `h2` then `http/1.1`; TLS 1.2 and 1.3.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientSessionMemoryCache, ClientSessionStore, Resumption};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, NamedGroup, SignatureScheme};

use crate::{Error, Result};

/// rustls' default number of remembered sessions (reqwest's too).
const REMEMBERED_SESSIONS: usize = 256;

/// A host's TLS client configuration. `what` names the host in errors.
pub(crate) fn client_config(
    what: &str,
    ca_pems: &[Vec<u8>],
    skip_verify: bool,
    identity: Option<&[u8]>,
) -> Result<rustls::ClientConfig> {
    let provider =
        CryptoProvider::get_default().cloned().unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    let invalid = |problem: String| Error::Tls { what: what.to_string(), problem };
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(rustls::ALL_VERSIONS)
        .map_err(|e| invalid(e.to_string()))?
        .dangerous();
    let builder = if skip_verify {
        builder.with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
    } else {
        let verifier = if ca_pems.is_empty() {
            rustls_platform_verifier::Verifier::new(provider)
        } else {
            rustls_platform_verifier::Verifier::new_with_extra_roots(certificates(what, ca_pems)?, provider)
        }
        .map_err(|e| invalid(format!("system trust store: {e}")))?;
        builder.with_custom_certificate_verifier(Arc::new(verifier))
    };
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some(pem) => {
            let chain = certificates(what, &[pem.to_vec()])?;
            let key = PrivateKeyDer::from_pem_slice(pem)
                .map_err(|e| invalid(format!("client certificate's private key: {e}")))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| invalid(format!("client certificate: {e}")))?
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.resumption = Resumption::store(Arc::new(HandshakeStart(ClientSessionMemoryCache::new(REMEMBERED_SESSIONS))));
    Ok(config)
}

/// Every certificate of the PEM bundles; a bundle without one is an error, as in reqwest.
fn certificates(what: &str, pems: &[Vec<u8>]) -> Result<Vec<CertificateDer<'static>>> {
    let mut all = Vec::new();
    for pem in pems {
        let found = CertificateDer::pem_slice_iter(pem)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::Tls { what: what.to_string(), problem: format!("PEM certificate: {e}") })?;
        if found.is_empty() {
            return Err(Error::Tls { what: what.to_string(), problem: "no PEM certificate found".into() });
        }
        all.extend(found);
    }
    Ok(all)
}

/// rustls' session cache, marking the start of each handshake: rustls asks for a key-exchange
/// hint and a session to resume as it builds the ClientHello, right after TCP connected.
#[derive(Debug)]
struct HandshakeStart(ClientSessionMemoryCache);

impl ClientSessionStore for HandshakeStart {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.0.set_kx_hint(server_name, group);
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        super::phases::record_handshake_start();
        self.0.kx_hint(server_name)
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: rustls::client::Tls12ClientSessionValue) {
        self.0.set_tls12_session(server_name, value);
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<rustls::client::Tls12ClientSessionValue> {
        super::phases::record_handshake_start();
        self.0.tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.0.remove_tls12_session(server_name);
    }

    fn insert_tls13_ticket(&self, server_name: ServerName<'static>, value: rustls::client::Tls13ClientSessionValue) {
        self.0.insert_tls13_ticket(server_name, value);
    }

    fn take_tls13_ticket(&self, server_name: &ServerName<'static>) -> Option<rustls::client::Tls13ClientSessionValue> {
        super::phases::record_handshake_start();
        self.0.take_tls13_ticket(server_name)
    }
}

/// `skip_verify` (hosts.toml) / `insecure` (registries.conf): any certificate, as containerd's
/// `InsecureSkipVerify`. Signatures are still checked, so the handshake itself stays sound.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_without_a_certificate_is_refused_by_name_without_its_content() {
        let e = client_config("registry.example", &[b"not a certificate: s3cret".to_vec()], false, None)
            .expect_err("no certificate");
        let text = e.to_string();
        assert!(text.contains("registry.example") && text.contains("no PEM certificate"), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
    }

    #[test]
    fn both_http_versions_are_offered_and_sessions_are_remembered() {
        let config = client_config("r", &[], true, None).expect("skip_verify needs no trust store");
        assert_eq!(config.alpn_protocols, [b"h2".to_vec(), b"http/1.1".to_vec()]);
        assert!(format!("{:?}", config.resumption).contains("HandshakeStart"));
    }
}
