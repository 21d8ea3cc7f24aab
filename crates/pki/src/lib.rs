//! causeway-pki: certificates and TLS configuration for Causeway.
//!
//! * Generation of a lab PKI with [`rcgen`]: a CA ([`generate_ca`]), leaves
//!   signed by it ([`issue`]), self-signed leaves ([`self_signed`]) and a whole
//!   directory of files for the edge/core tunnel and federation
//!   ([`lab_init`]). Keys are ECDSA P-256 with SHA-256 signatures, which
//!   rustls+ring, OpenSSL, Prosody and ejabberd all accept.
//! * Loading PEM files ([`load_certs`], [`load_key`], [`read_file`]).
//! * rustls configurations for XMPP server-to-server links
//!   ([`s2s_server_config`], [`s2s_client_config_dialback`]), always built on
//!   the ring provider explicitly (never the process default provider).
//! * Certificate inspection ([`cert_names`], [`cert_not_after`],
//!   [`cert_warnings`]) and RFC 6125 matching ([`name_matches`] for one
//!   DNS-ID, [`cert_matches_domain`] for a whole certificate: DNS-ID,
//!   XmppAddr, SRV-ID, CN fallback).
//! * Certificate-based peer authentication (SASL EXTERNAL, XEP-0178): the
//!   s2s TLS configurations that request or present client certificates
//!   ([`s2s_server_config_requesting_client_cert`],
//!   [`s2s_client_config_presenting`]) accept any chain during the
//!   handshake; afterwards [`PeerTrust::verify_chain`] checks the peer's
//!   chain against a CA bundle and CRLs, and [`cert_matches_domain`] its
//!   names.
//! * Certificate signing requests for our own certificates ([`csr`]): DNS
//!   and XmppAddr subjectAltNames, a fresh P-256 key.
//! * Lab helpers for those tests: [`issue_with_eku`], [`issue_xmpp_addr`],
//!   [`make_crl`].

mod csr;
mod files;
mod generate;
mod names;
mod peer;
mod revoke;
mod tls;

pub use csr::csr;
pub use files::{lab_init, load_certs, load_key, read_file};
pub use generate::{
    crl_serials, generate_ca, generate_ca_for, issue, issue_with_eku, issue_xmpp_addr,
    issued_serial, make_crl, make_crl_serials, self_signed, sign_csr, CertPair, Usage,
};
pub use names::{
    cert_matches_domain, cert_names, cert_not_after, cert_warnings, name_matches, ID_ON_DNS_SRV,
    ID_ON_XMPP_ADDR,
};
pub use peer::{CertError, PeerTrust};
pub use revoke::{revoke, Revoked};
pub use tls::{
    ring_provider, s2s_client_config_dialback, s2s_client_config_dialback_with_cert,
    s2s_client_config_presenting, s2s_server_config, s2s_server_config_requesting_client_cert,
    ALPN_XMPP_SERVER,
};

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file concerned.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file (or in-memory PEM text) did not contain what was expected.
    #[error("{path}: {msg}")]
    Pem {
        /// The file concerned (or a description such as `"<CA certificate>"`).
        path: String,
        /// What was wrong.
        msg: String,
    },
    /// Generating or signing a certificate failed, or a certificate could not
    /// be parsed.
    #[error("certificate generation: {0}")]
    Gen(String),
    /// Building a rustls configuration failed.
    #[error("TLS config: {0}")]
    Tls(String),
}
