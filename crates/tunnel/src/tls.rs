//! TLS helpers: PEM validation, tonic TLS configs and peer identity extraction.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};
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

pub(crate) fn server_config(tls: &TlsFiles) -> ServerTlsConfig {
    ServerTlsConfig::new()
        .identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem))
        .client_ca_root(Certificate::from_pem(&tls.ca_pem))
        .client_auth_optional(false)
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
