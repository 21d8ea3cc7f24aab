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
//! * Certificate inspection ([`cert_names`], [`cert_not_after`]) and RFC 6125
//!   DNS-ID matching ([`name_matches`]).

mod files;
mod generate;
mod names;
mod tls;

pub use files::{lab_init, load_certs, load_key, read_file};
pub use generate::{generate_ca, issue, self_signed, CertPair, Usage};
pub use names::{cert_names, cert_not_after, name_matches, ID_ON_DNS_SRV, ID_ON_XMPP_ADDR};
pub use tls::{
    ring_provider, s2s_client_config_dialback, s2s_client_config_dialback_with_cert,
    s2s_server_config,
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
