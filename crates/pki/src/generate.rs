//! Certificate generation with rcgen (ECDSA P-256).

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use time::{Duration, OffsetDateTime};

use crate::PkiError;

/// Validity of CAs made by [`generate_ca`], in days (10 years).
pub(crate) const CA_DAYS: u32 = 3650;

/// Backdating of `notBefore`, to tolerate clock skew between lab machines.
const BACKDATE: Duration = Duration::hours(1);

/// A certificate and its private key, both PEM-encoded.
///
/// The key is PKCS#8 (`-----BEGIN PRIVATE KEY-----`).
#[derive(Clone)]
pub struct CertPair {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PEM (PKCS#8).
    pub key_pem: String,
}

impl std::fmt::Debug for CertPair {
    // Never print the private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertPair")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// What a leaf certificate may be used for (its extended key usage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// TLS server (`id-kp-serverAuth`).
    Server,
    /// TLS client (`id-kp-clientAuth`).
    Client,
    /// Both: what an XMPP server needs for s2s, where it is server on inbound
    /// and client on outbound connections.
    ServerAndClient,
}

impl Usage {
    fn ekus(self) -> Vec<ExtendedKeyUsagePurpose> {
        match self {
            Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Usage::ServerAndClient => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        }
    }
}

fn gen_err(e: impl std::fmt::Display) -> PkiError {
    PkiError::Gen(e.to_string())
}

fn new_key() -> Result<KeyPair, PkiError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(gen_err)
}

fn validity(params: &mut CertificateParams, days: u32) -> Result<(), PkiError> {
    if days == 0 {
        return Err(PkiError::Gen("validity must be at least one day".into()));
    }
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + Duration::days(i64::from(days));
    Ok(())
}

/// Parameters of a leaf for `names` (first name also the CN).
fn leaf_params(names: &[&str], usage: Usage, days: u32) -> Result<CertificateParams, PkiError> {
    let first = names
        .first()
        .ok_or_else(|| PkiError::Gen("a leaf certificate needs at least one name".into()))?;
    if names.iter().any(|n| n.trim().is_empty()) {
        return Err(PkiError::Gen("empty certificate name".into()));
    }
    // `CertificateParams::new` makes IP literals iPAddress SANs, others dNSName.
    let mut params = CertificateParams::new(
        names
            .iter()
            .map(|n| n.trim().trim_end_matches('.').to_string())
            .collect::<Vec<_>>(),
    )
    .map_err(gen_err)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, first.trim().trim_end_matches('.'));
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = usage.ekus();
    validity(&mut params, days)?;
    Ok(params)
}

fn pair(cert: rcgen::Certificate, key: &KeyPair) -> CertPair {
    CertPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

/// A lab CA: self-signed, `CA:TRUE` (path length 0: it signs leaves only),
/// key usages keyCertSign + cRLSign + digitalSignature, ECDSA P-256, valid
/// for ten years from now (backdated one hour for clock skew).
pub fn generate_ca(common_name: &str) -> Result<CertPair, PkiError> {
    if common_name.trim().is_empty() {
        return Err(PkiError::Gen("CA common name is empty".into()));
    }
    let key = new_key()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name.trim());
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Causeway lab");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, CA_DAYS)?;
    let cert = params.self_signed(&key).map_err(gen_err)?;
    Ok(pair(cert, &key))
}

/// A leaf signed by `ca`, with DNS SANs = `names` (IP literals become IP
/// SANs; the first name is also the CN), EKU from `usage`, valid `days` from
/// now (backdated one hour for clock skew). Each call makes a fresh key.
///
/// Errors if `names` is empty or contains an invalid name, if `days` is 0,
/// or if `ca` cannot be parsed.
pub fn issue(ca: &CertPair, names: &[&str], usage: Usage, days: u32) -> Result<CertPair, PkiError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(|e| PkiError::Pem {
        path: "<CA key>".into(),
        msg: e.to_string(),
    })?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key).map_err(|e| PkiError::Pem {
        path: "<CA certificate>".into(),
        msg: e.to_string(),
    })?;
    let mut params = leaf_params(names, usage, days)?;
    params.use_authority_key_identifier_extension = true;
    let key = new_key()?;
    let cert = params.signed_by(&key, &issuer).map_err(gen_err)?;
    Ok(pair(cert, &key))
}

/// A self-signed leaf (not a CA) for `names`, usable as server and client
/// (EKU serverAuth + clientAuth), valid `days` from now.
pub fn self_signed(names: &[&str], days: u32) -> Result<CertPair, PkiError> {
    let params = leaf_params(names, Usage::ServerAndClient, days)?;
    let key = new_key()?;
    let cert = params.self_signed(&key).map_err(gen_err)?;
    Ok(pair(cert, &key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::*;

    fn der_of(pem: &str) -> Vec<u8> {
        use rustls_pki_types::pem::PemObject;
        rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
            .expect("valid PEM")
            .to_vec()
    }

    #[test]
    fn ca_is_a_ca() {
        let ca = generate_ca("Test CA").expect("ca");
        let der = der_of(&ca.cert_pem);
        let (_, x) = parse_x509_certificate(&der).expect("parse");
        let bc = x.basic_constraints().expect("bc ok").expect("bc present");
        assert!(bc.value.ca);
        let ku = x.key_usage().expect("ku ok").expect("ku present");
        assert!(ku.value.key_cert_sign());
        assert_eq!(x.subject(), x.issuer());
        assert!(x.subject().to_string().contains("CN=Test CA"));
        assert!(ca.key_pem.contains("BEGIN PRIVATE KEY"));
        // Signed by itself.
        x.verify_signature(None).expect("self signature");
    }

    #[test]
    fn issued_leaf_has_names_usage_and_issuer() {
        let ca = generate_ca("Test CA").expect("ca");
        let leaf = issue(
            &ca,
            &["xmpp.example.test", "*.chat.example.test"],
            Usage::Server,
            30,
        )
        .expect("leaf");
        let ca_der = der_of(&ca.cert_pem);
        let (_, cax) = parse_x509_certificate(&ca_der).expect("parse ca");
        let der = der_of(&leaf.cert_pem);
        let (_, x) = parse_x509_certificate(&der).expect("parse leaf");
        assert_eq!(x.issuer(), cax.subject());
        assert!(x.subject().to_string().contains("CN=xmpp.example.test"));
        x.verify_signature(Some(cax.public_key()))
            .expect("signed by CA");
        let eku = x
            .extended_key_usage()
            .expect("eku ok")
            .expect("eku present");
        assert!(eku.value.server_auth);
        assert!(!eku.value.client_auth);
        let bc = x.basic_constraints().expect("bc ok").expect("bc present");
        assert!(!bc.value.ca);
        let span = x.validity().not_after.timestamp() - x.validity().not_before.timestamp();
        assert_eq!(span, 30 * 86400 + 3600);
        let sans: Vec<String> = x
            .subject_alternative_name()
            .expect("san ok")
            .expect("san present")
            .value
            .general_names
            .iter()
            .filter_map(|g| match g {
                GeneralName::DNSName(d) => Some(d.to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(sans, ["xmpp.example.test", "*.chat.example.test"]);
    }

    #[test]
    fn client_and_dual_usage() {
        let ca = generate_ca("Test CA").expect("ca");
        for (usage, server, client) in [
            (Usage::Client, false, true),
            (Usage::ServerAndClient, true, true),
        ] {
            let leaf = issue(&ca, &["core.internal.test"], usage, 1).expect("leaf");
            let der = der_of(&leaf.cert_pem);
            let (_, x) = parse_x509_certificate(&der).expect("parse leaf");
            let eku = x
                .extended_key_usage()
                .expect("eku ok")
                .expect("eku present");
            assert_eq!(eku.value.server_auth, server, "{usage:?}");
            assert_eq!(eku.value.client_auth, client, "{usage:?}");
        }
    }

    #[test]
    fn each_leaf_gets_a_fresh_key_and_serial() {
        let ca = generate_ca("Test CA").expect("ca");
        let a = issue(&ca, &["a.test"], Usage::Server, 1).expect("a");
        let b = issue(&ca, &["a.test"], Usage::Server, 1).expect("b");
        assert_ne!(a.key_pem, b.key_pem);
        let (da, db) = (der_of(&a.cert_pem), der_of(&b.cert_pem));
        let (_, xa) = parse_x509_certificate(&da).expect("a");
        let (_, xb) = parse_x509_certificate(&db).expect("b");
        assert_ne!(xa.raw_serial(), xb.raw_serial());
    }

    #[test]
    fn bad_inputs_are_errors() {
        let ca = generate_ca("Test CA").expect("ca");
        assert!(matches!(
            issue(&ca, &[], Usage::Server, 1),
            Err(PkiError::Gen(_))
        ));
        assert!(matches!(
            issue(&ca, &["a.test"], Usage::Server, 0),
            Err(PkiError::Gen(_))
        ));
        assert!(matches!(
            issue(&ca, &[" "], Usage::Server, 1),
            Err(PkiError::Gen(_))
        ));
        assert!(matches!(self_signed(&[], 1), Err(PkiError::Gen(_))));
        assert!(matches!(generate_ca(""), Err(PkiError::Gen(_))));
        let broken = CertPair {
            cert_pem: ca.cert_pem.clone(),
            key_pem: "not a key".into(),
        };
        assert!(matches!(
            issue(&broken, &["a.test"], Usage::Server, 1),
            Err(PkiError::Pem { .. })
        ));
        let broken = CertPair {
            cert_pem: "garbage".into(),
            key_pem: ca.key_pem.clone(),
        };
        assert!(matches!(
            issue(&broken, &["a.test"], Usage::Server, 1),
            Err(PkiError::Pem { .. })
        ));
    }

    #[test]
    fn debug_redacts_key() {
        let ss = self_signed(&["a.test"], 1).expect("ss");
        let dbg = format!("{ss:?}");
        assert!(!dbg.contains("PRIVATE KEY"));
        assert!(dbg.contains("<redacted>"));
    }
}
