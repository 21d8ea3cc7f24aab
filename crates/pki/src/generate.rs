//! Certificate generation with rcgen (ECDSA P-256).

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, OtherNameValue,
    RevokedCertParams, SanType, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
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

/// Parameters of a leaf for `names` (first name also the CN) with the given
/// EKUs (none: no EKU extension at all).
fn leaf_params(
    names: &[&str],
    ekus: Vec<ExtendedKeyUsagePurpose>,
    days: u32,
) -> Result<CertificateParams, PkiError> {
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
    params.extended_key_usages = ekus;
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
    generate_ca_for(common_name, "Causeway lab")
}

/// A CA as [`generate_ca`] makes one, with `organization` in its subject (the traversal CA an
/// administrator creates for production, offline).
pub fn generate_ca_for(common_name: &str, organization: &str) -> Result<CertPair, PkiError> {
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
        .push(DnType::OrganizationName, organization);
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
    let issuer = ca_issuer(ca)?;
    sign_leaf(leaf_params(names, usage.ekus(), days)?, &issuer)
}

/// The rcgen issuer (key + subject) of a CA pair.
fn ca_issuer(ca: &CertPair) -> Result<Issuer<'static, KeyPair>, PkiError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(|e| PkiError::Pem {
        path: "<CA key>".into(),
        msg: e.to_string(),
    })?;
    Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key).map_err(|e| PkiError::Pem {
        path: "<CA certificate>".into(),
        msg: e.to_string(),
    })
}

/// Sign leaf `params` (with an authority key identifier) for a fresh key.
fn sign_leaf(
    mut params: CertificateParams,
    issuer: &Issuer<'_, KeyPair>,
) -> Result<CertPair, PkiError> {
    params.use_authority_key_identifier_extension = true;
    let key = new_key()?;
    let cert = params.signed_by(&key, issuer).map_err(gen_err)?;
    Ok(pair(cert, &key))
}

/// A certificate for the key of a certificate signing request (PEM), signed by `ca`: the
/// request's subject and DNS names (IP addresses too), with our own constraints: not a CA,
/// digitalSignature, the EKU of `usage`, valid `days` from now. What else the request asks
/// for is not granted. Returns the certificate PEM.
///
/// Errors if the request cannot be parsed, its signature is wrong, it names nothing, or `ca`
/// cannot be used.
pub fn sign_csr(ca: &CertPair, csr_pem: &str, usage: Usage, days: u32) -> Result<String, PkiError> {
    let issuer = ca_issuer(ca)?;
    let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(|e| PkiError::Gen(format!("certificate signing request: {e}")))?;
    let names: Vec<rcgen::SanType> = csr
        .params
        .subject_alt_names
        .iter()
        .filter(|n| matches!(n, rcgen::SanType::DnsName(_) | rcgen::SanType::IpAddress(_)))
        .cloned()
        .collect();
    if names.is_empty() {
        return Err(PkiError::Gen(
            "certificate signing request: no DNS name to certify".into(),
        ));
    }
    let mut params = CertificateParams::default();
    params.distinguished_name = csr.params.distinguished_name.clone();
    params.subject_alt_names = names;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = usage.ekus();
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, days)?;
    csr.params = params;
    let cert = csr.signed_by(&issuer).map_err(gen_err)?;
    Ok(cert.pem())
}

/// Like [`issue`], with an explicit extended key usage: `server_auth` adds
/// `id-kp-serverAuth`, `client_auth` adds `id-kp-clientAuth`; with neither,
/// the certificate has no EKU extension at all (good for any usage).
///
/// For tests and labs (e.g. the serverAuth-only certificates that public CAs
/// issue since 2026).
pub fn issue_with_eku(
    ca: &CertPair,
    names: &[&str],
    server_auth: bool,
    client_auth: bool,
    days: u32,
) -> Result<CertPair, PkiError> {
    let mut ekus = Vec::new();
    if server_auth {
        ekus.push(ExtendedKeyUsagePurpose::ServerAuth);
    }
    if client_auth {
        ekus.push(ExtendedKeyUsagePurpose::ClientAuth);
    }
    let issuer = ca_issuer(ca)?;
    sign_leaf(leaf_params(names, ekus, days)?, &issuer)
}

/// OID arcs of `id-on-xmppAddr` (RFC 6120 13.7.1.4).
const XMPP_ADDR_ARCS: [u64; 9] = [1, 3, 6, 1, 5, 5, 7, 8, 5];

/// A leaf signed by `ca` whose only subjectAltName is an XmppAddr otherName
/// (`id-on-xmppAddr`, UTF8String) for `domain`, as XEP-0178 describes. The
/// subject CN is `domain` too (ignored by matchers, since a SAN exists). EKU
/// serverAuth + clientAuth, valid `days` from now.
pub fn issue_xmpp_addr(ca: &CertPair, domain: &str, days: u32) -> Result<CertPair, PkiError> {
    let domain = domain.trim().trim_end_matches('.');
    if domain.is_empty() {
        return Err(PkiError::Gen("empty XmppAddr domain".into()));
    }
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::OtherName((
        XMPP_ADDR_ARCS.to_vec(),
        OtherNameValue::Utf8String(domain.to_string()),
    ))];
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, domain);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = Usage::ServerAndClient.ekus();
    validity(&mut params, days)?;
    let issuer = ca_issuer(ca)?;
    sign_leaf(params, &issuer)
}

/// Validity of CRLs made by [`make_crl`] (`nextUpdate`), in days.
const CRL_DAYS: i64 = 30;

/// A CRL (DER) signed by `ca` that revokes the given leaf certificates (PEM,
/// each issued by `ca`), revocation time now. `thisUpdate` is backdated one
/// hour, `nextUpdate` is 30 days ahead, the CRL number is the current unix
/// time (so later CRLs get larger numbers). An empty list makes a valid CRL
/// that revokes nothing.
///
/// Errors if a PEM is not a certificate or was not issued by `ca` (matched by
/// issuer name), or if `ca` cannot be parsed.
pub fn make_crl(ca: &CertPair, revoked_leaf_pems: &[&str]) -> Result<Vec<u8>, PkiError> {
    let mut serials = Vec::with_capacity(revoked_leaf_pems.len());
    for (i, pem) in revoked_leaf_pems.iter().enumerate() {
        serials.push(issued_serial(
            ca,
            pem,
            &format!("revoked certificate #{i}"),
        )?);
    }
    make_crl_serials(ca, &serials)
}

/// The serial number of `leaf_pem` (raw bytes), checked to be issued by `ca` (matched by issuer
/// name); `label` names it in errors.
pub fn issued_serial(ca: &CertPair, leaf_pem: &str, label: &str) -> Result<Vec<u8>, PkiError> {
    use x509_parser::prelude::*;
    let ca_der =
        CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).map_err(|e| PkiError::Pem {
            path: "<CA certificate>".into(),
            msg: e.to_string(),
        })?;
    let (_, ca_x) = parse_x509_certificate(&ca_der)
        .map_err(|e| PkiError::Gen(format!("cannot parse CA certificate: {e}")))?;
    let der = CertificateDer::from_pem_slice(leaf_pem.as_bytes()).map_err(|e| PkiError::Pem {
        path: format!("<{label}>"),
        msg: e.to_string(),
    })?;
    let (_, x) = parse_x509_certificate(&der)
        .map_err(|e| PkiError::Gen(format!("cannot parse {label}: {e}")))?;
    if x.issuer().as_raw() != ca_x.subject().as_raw() {
        return Err(PkiError::Gen(format!(
            "{label} ({}) was not issued by {}",
            x.subject(),
            ca_x.subject()
        )));
    }
    Ok(x.raw_serial().to_vec())
}

/// The serial numbers a CRL (DER) revokes, raw bytes.
pub fn crl_serials(crl_der: &[u8]) -> Result<Vec<Vec<u8>>, PkiError> {
    use x509_parser::prelude::*;
    let (_, crl) =
        parse_x509_crl(crl_der).map_err(|e| PkiError::Gen(format!("cannot parse CRL: {e}")))?;
    Ok(crl
        .iter_revoked_certificates()
        .map(|r| r.raw_serial().to_vec())
        .collect())
}

/// Like [`make_crl`], from raw serial numbers (e.g. those of an earlier CRL and one more).
pub fn make_crl_serials(ca: &CertPair, serials: &[Vec<u8>]) -> Result<Vec<u8>, PkiError> {
    let now = OffsetDateTime::now_utc();
    let revoked_certs = serials
        .iter()
        .map(|serial| RevokedCertParams {
            serial_number: SerialNumber::from_slice(serial),
            revocation_time: now,
            reason_code: None,
            invalidity_date: None,
        })
        .collect();
    let crl_number = u64::try_from(now.unix_timestamp()).unwrap_or(1).max(1);
    let params = CertificateRevocationListParams {
        this_update: now - BACKDATE,
        next_update: now + Duration::days(CRL_DAYS),
        crl_number: SerialNumber::from(crl_number),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let issuer = ca_issuer(ca)?;
    let crl = params.signed_by(&issuer).map_err(gen_err)?;
    Ok(crl.der().to_vec())
}

/// Test helper: a serverAuth + clientAuth leaf signed by `ca` with an
/// explicit validity window (e.g. entirely in the past).
#[cfg(test)]
pub(crate) fn issue_valid_between(
    ca: &CertPair,
    names: &[&str],
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<CertPair, PkiError> {
    let mut params = leaf_params(names, Usage::ServerAndClient.ekus(), 1)?;
    params.not_before = not_before;
    params.not_after = not_after;
    sign_leaf(params, &ca_issuer(ca)?)
}

/// A self-signed leaf (not a CA) for `names`, usable as server and client
/// (EKU serverAuth + clientAuth), valid `days` from now.
pub fn self_signed(names: &[&str], days: u32) -> Result<CertPair, PkiError> {
    let params = leaf_params(names, Usage::ServerAndClient.ekus(), days)?;
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
    fn a_csr_is_signed_with_its_names_and_our_constraints() {
        let ca = generate_ca_for("Traversal CA", "Example").expect("ca");
        let (csr_pem, key_pem) =
            crate::csr(&["core1.example.com".to_owned()], &[], "core1.example.com").expect("csr");
        let cert = sign_csr(&ca, &csr_pem, Usage::Client, 397).expect("signed");
        let der = der_of(&cert);
        let (_, x) = parse_x509_certificate(&der).expect("parse");
        let ca_der = der_of(&ca.cert_pem);
        let (_, cax) = parse_x509_certificate(&ca_der).expect("parse ca");
        x.verify_signature(Some(cax.public_key()))
            .expect("signed by the CA");
        assert!(cax.subject().to_string().contains("O=Example"));
        assert!(x.subject().to_string().contains("CN=core1.example.com"));
        let eku = x.extended_key_usage().expect("eku").expect("present");
        assert!(eku.value.client_auth && !eku.value.server_auth);
        assert!(
            !x.basic_constraints()
                .expect("bc")
                .expect("present")
                .value
                .ca
        );
        let span = x.validity().not_after.timestamp() - x.validity().not_before.timestamp();
        assert_eq!(span, 397 * 86400 + 3600);
        // The certificate is for the request's key.
        let key = rcgen::KeyPair::from_pem(&key_pem).expect("key");
        assert_eq!(
            x.public_key().subject_public_key.data.as_ref(),
            key.public_key_raw()
        );
        // Garbage and a tampered request are refused.
        assert!(sign_csr(&ca, "not a csr", Usage::Server, 1).is_err());
        let tampered = csr_pem.replacen("MII", "MIJ", 1);
        assert!(sign_csr(&ca, &tampered, Usage::Server, 1).is_err());
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
