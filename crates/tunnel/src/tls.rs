//! TLS helpers: PEM validation, tonic TLS configs and peer identity extraction.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;

use tonic::transport::{Certificate, ClientTlsConfig, Identity};
use x509_parser::extensions::GeneralName;

use crate::{TlsFiles, TunnelError};

/// Checks that the PEM blobs contain what they should, so configuration
/// mistakes surface as a clear [`TunnelError::Tls`] instead of a handshake
/// failure later.
pub(crate) fn validate(tls: &TlsFiles) -> Result<(), TunnelError> {
    let count = |pem: &[u8], what: &str| -> Result<usize, TunnelError> {
        let mut n = 0;
        for cert in CertificateDer::pem_slice_iter(pem) {
            cert.map_err(|e| TunnelError::Tls(format!("{what}: {e}")))?;
            n += 1;
        }
        Ok(n)
    };
    if count(&tls.cert_pem, "own certificate")? == 0 {
        return Err(TunnelError::Tls(
            "own certificate: no PEM certificate found".into(),
        ));
    }
    if count(&tls.ca_pem, "traversal CA")? == 0 {
        return Err(TunnelError::Tls(
            "traversal CA: no PEM certificate found".into(),
        ));
    }
    PrivateKeyDer::from_pem_slice(&tls.key_pem)
        .map_err(|e| TunnelError::Tls(format!("own private key: {e}")))?;
    Ok(())
}

/// The edge's TLS server config: its certificate, and client certificates required and
/// verified against every CA in `tls.ca_pem` (a bundle: during a CA rotation, the old and the
/// new CA). Built anew by [`crate::EdgeTunnel::set_tls`]: connections accepted afterwards
/// use it, established ones keep theirs.
pub(crate) fn server_config(tls: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, TunnelError> {
    validate(tls)?;
    let bad = |what: &str, e: &dyn std::fmt::Display| TunnelError::Tls(format!("{what}: {e}"));
    let certs = CertificateDer::pem_slice_iter(&tls.cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("own certificate", &e))?;
    let key =
        PrivateKeyDer::from_pem_slice(&tls.key_pem).map_err(|e| bad("own private key", &e))?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(&tls.ca_pem) {
        roots
            .add(ca.map_err(|e| bad("traversal CA", &e))?)
            .map_err(|e| bad("traversal CA", &e))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| bad("traversal CA", &e))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("TLS versions", &e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| bad("own certificate and key", &e))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

pub(crate) fn client_config(tls: &TlsFiles, server_name: &str) -> ClientTlsConfig {
    ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&tls.ca_pem))
        .identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem))
        .domain_name(server_name)
}

/// The identity a certificate asserts: its first DNS subject-alternative
/// name, or failing that its subject common name.
///
/// The edge uses this on the core's (already CA-verified) leaf certificate;
/// the core's hello must carry the same `core_id`.
pub fn peer_identity(cert_der: &[u8]) -> Result<String, TunnelError> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| TunnelError::Tls(format!("cannot parse peer certificate: {e}")))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| TunnelError::Tls(format!("bad subjectAltName: {e}")))?;
    if let Some(san) = san {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                return Ok((*dns).to_owned());
            }
        }
    }
    let cn = cert
        .subject()
        .iter_common_name()
        .find_map(|cn| cn.as_str().ok().map(str::to_owned));
    cn.ok_or_else(|| TunnelError::Tls("peer certificate has neither a DNS name nor a CN".into()))
}

/// Heuristic: does this error text describe a TLS / certificate failure?
pub(crate) fn looks_like_tls(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    [
        "certificate",
        "tls",
        "alert",
        "handshake",
        "unknownissuer",
        "unknownca",
    ]
    .iter()
    .any(|k| t.contains(k))
}
