//! Verification of federation peers' certificate chains (for SASL EXTERNAL,
//! XEP-0178), after the TLS handshake.
//!
//! The s2s TLS configurations accept any peer chain during the handshake
//! (while still verifying the handshake signatures, so the peer holds the
//! key of the leaf it presented). Afterwards the s2s layer asks
//! [`PeerTrust::verify_chain`] whether that chain is valid, and
//! [`crate::cert_matches_domain`] whether it names the peer's domain: both
//! true enables SASL EXTERNAL, otherwise dialback is used (or the stream is
//! refused when client certificates are required).

use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, SignatureVerificationAlgorithm, TrustAnchor,
    UnixTime,
};
use webpki::{
    CertRevocationList, EndEntityCert, ExpirationPolicy, KeyUsage, OwnedCertRevocationList,
    RevocationCheckDepth, RevocationOptionsBuilder, UnknownStatusPolicy,
};
use x509_parser::prelude::*;

use crate::files::{load_certs, read_file};
use crate::PkiError;

/// Why a peer's certificate chain was not accepted by
/// [`PeerTrust::verify_chain`].
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum CertError {
    /// The peer presented no certificate.
    #[error("no certificate presented")]
    NoCertificate,
    /// The chain does not lead to a trusted CA (self-signed, unknown CA, or
    /// a missing intermediate).
    #[error("certificate not issued by a trusted CA")]
    UnknownIssuer,
    /// A certificate of the chain is past its `notAfter`.
    #[error("certificate expired")]
    Expired,
    /// A certificate of the chain is before its `notBefore`.
    #[error("certificate not yet valid")]
    NotYetValid,
    /// A certificate of the chain is listed in a loaded CRL of its issuer.
    #[error("certificate revoked")]
    Revoked,
    /// The extended key usage does not allow this use (see
    /// [`PeerTrust::verify_chain`]).
    #[error("certificate not valid for this usage (extended key usage)")]
    BadUsage,
    /// A signature in the chain does not verify (for example a CA with the
    /// same name as a trusted one but another key).
    #[error("bad signature in certificate chain")]
    BadSignature,
    /// A certificate could not be parsed or has invalid fields.
    #[error("malformed certificate: {0}")]
    Malformed(String),
    /// Any other reason (unsupported algorithm or critical extension, a CA
    /// certificate presented as leaf, a CRL that does not verify...).
    #[error("certificate rejected: {0}")]
    Other(String),
}

/// Map a webpki error to ours.
fn cert_error(e: webpki::Error) -> CertError {
    use webpki::Error as E;
    #[allow(deprecated)]
    match e {
        E::UnknownIssuer => CertError::UnknownIssuer,
        E::CertExpired { .. } => CertError::Expired,
        E::CertNotValidYet { .. } => CertError::NotYetValid,
        E::CertRevoked => CertError::Revoked,
        E::RequiredEkuNotFound | E::RequiredEkuNotFoundContext(_) | E::EmptyEkuExtension => {
            CertError::BadUsage
        }
        E::InvalidSignatureForPublicKey | E::SignatureAlgorithmMismatch => CertError::BadSignature,
        E::BadDer
        | E::BadDerTime
        | E::TrailingData(_)
        | E::UnsupportedCertVersion
        | E::MalformedExtensions
        | E::ExtensionValueInvalid
        | E::InvalidCertValidity
        | E::InvalidSerialNumber => CertError::Malformed(format!("{e:?}")),
        other => CertError::Other(format!("{other:?}")),
    }
}

/// Trust material for verifying federation peers: a CA bundle (PEM file with
/// one or more CA certs) and optional CRL files (PEM or DER).
///
/// Every certificate of the bundle is a trust anchor. A self-signed peer
/// certificate put in the bundle is therefore trusted as such (pinning).
///
/// Build it once (at start-up or on reload) and share it (`Arc`): it is
/// immutable, and [`PeerTrust::verify_chain`] takes `&self`.
pub struct PeerTrust {
    anchors: Vec<TrustAnchor<'static>>,
    /// Subjects of the anchors, for logs and [`PeerTrust::warnings`].
    anchor_info: Vec<CaInfo>,
    crls: Vec<CertRevocationList<'static>>,
    /// DER of each CRL (same order as `crls`), for [`PeerTrust::warnings`].
    crl_ders: Vec<Vec<u8>>,
    algs: &'static [&'static dyn SignatureVerificationAlgorithm],
}

/// What [`PeerTrust::warnings`] needs to know about a trusted CA.
struct CaInfo {
    subject: String,
    not_after: i64,
}

impl std::fmt::Debug for PeerTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTrust")
            .field(
                "cas",
                &self
                    .anchor_info
                    .iter()
                    .map(|c| c.subject.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("crls", &self.crls.len())
            .finish()
    }
}

fn pem_err(path: &str, msg: impl std::fmt::Display) -> PkiError {
    PkiError::Pem {
        path: path.to_string(),
        msg: msg.to_string(),
    }
}

fn anchors_of(
    certs: &[CertificateDer<'_>],
    label: &str,
) -> Result<(Vec<TrustAnchor<'static>>, Vec<CaInfo>), PkiError> {
    if certs.is_empty() {
        return Err(pem_err(label, "no certificate found"));
    }
    let mut anchors = Vec::with_capacity(certs.len());
    let mut info = Vec::with_capacity(certs.len());
    for (i, cert) in certs.iter().enumerate() {
        let anchor = webpki::anchor_from_trusted_cert(cert)
            .map_err(|e| pem_err(label, format!("certificate #{}: {e:?}", i + 1)))?;
        anchors.push(anchor.to_owned());
        let (_, x) = parse_x509_certificate(cert)
            .map_err(|e| pem_err(label, format!("certificate #{}: {e}", i + 1)))?;
        info.push(CaInfo {
            subject: x.subject().to_string(),
            not_after: x.validity().not_after.timestamp(),
        });
    }
    Ok((anchors, info))
}

fn parse_crl(
    der: Vec<u8>,
    label: &str,
) -> Result<(CertRevocationList<'static>, Vec<u8>), PkiError> {
    let crl = OwnedCertRevocationList::from_der(&der)
        .map_err(|e| pem_err(label, format!("invalid CRL: {e:?}")))?;
    Ok((CertRevocationList::Owned(crl), der))
}

/// The CRLs of one file: every `X509 CRL` PEM block, or the whole file as
/// DER when it does not look like PEM.
pub(crate) fn crl_ders_of_file(bytes: &[u8], label: &str) -> Result<Vec<Vec<u8>>, PkiError> {
    if bytes.first() == Some(&0x30) {
        return Ok(vec![bytes.to_vec()]);
    }
    let ders = CertificateRevocationListDer::pem_slice_iter(bytes)
        .map(|r| r.map(|d| d.to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(label, e))?;
    if ders.is_empty() {
        return Err(pem_err(label, "no X509 CRL found (neither PEM nor DER)"));
    }
    Ok(ders)
}

/// Format unix seconds as `YYYY-MM-DD HH:MM UTC`.
pub(crate) fn fmt_time(unix: i64) -> String {
    match ::time::OffsetDateTime::from_unix_timestamp(unix) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02} UTC",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute()
        ),
        Err(_) => format!("@{unix}"),
    }
}

/// Which extended key usages [`PeerTrust::verify_chain`] tries, in order.
fn usages(is_initiator: bool) -> &'static [KeyUsage] {
    static RECEIVER: [KeyUsage; 1] = [KeyUsage::server_auth()];
    static INITIATOR: [KeyUsage; 2] = [KeyUsage::server_auth(), KeyUsage::client_auth()];
    if is_initiator {
        &INITIATOR
    } else {
        &RECEIVER
    }
}

impl PeerTrust {
    /// Load the CA bundle `ca_bundle` (PEM, one or more certificates) and
    /// the CRL files `crls` (each PEM with one or more `X509 CRL` blocks, or
    /// a single DER CRL). Errors name the file at fault.
    pub fn load(ca_bundle: &Path, crls: &[PathBuf]) -> Result<Self, PkiError> {
        let label = ca_bundle.display().to_string();
        let certs = load_certs(ca_bundle)?;
        let (anchors, anchor_info) = anchors_of(&certs, &label)?;
        let mut list = Vec::new();
        let mut ders = Vec::new();
        for path in crls {
            let label = path.display().to_string();
            let bytes = read_file(path)?;
            for der in crl_ders_of_file(&bytes, &label)? {
                let (crl, der) = parse_crl(der, &label)?;
                list.push(crl);
                ders.push(der);
            }
        }
        Ok(Self::new(anchors, anchor_info, list, ders))
    }

    /// Build from in-memory material: `ca_pem` holds one or more CA
    /// certificates (PEM), `crl_ders` zero or more DER CRLs. For tests and
    /// callers that already read the files.
    pub fn from_pem(ca_pem: &[u8], crl_ders: Vec<Vec<u8>>) -> Result<Self, PkiError> {
        let label = "<CA bundle>";
        let certs = CertificateDer::pem_slice_iter(ca_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_err(label, e))?;
        let (anchors, anchor_info) = anchors_of(&certs, label)?;
        let mut list = Vec::new();
        let mut ders = Vec::new();
        for (i, der) in crl_ders.into_iter().enumerate() {
            let (crl, der) = parse_crl(der, &format!("<CRL #{}>", i + 1))?;
            list.push(crl);
            ders.push(der);
        }
        Ok(Self::new(anchors, anchor_info, list, ders))
    }

    fn new(
        anchors: Vec<TrustAnchor<'static>>,
        anchor_info: Vec<CaInfo>,
        crls: Vec<CertRevocationList<'static>>,
        crl_ders: Vec<Vec<u8>>,
    ) -> Self {
        PeerTrust {
            anchors,
            anchor_info,
            crls,
            crl_ders,
            algs: rustls::crypto::ring::default_provider()
                .signature_verification_algorithms
                .all,
        }
    }

    /// Number of trusted CA certificates.
    pub fn ca_count(&self) -> usize {
        self.anchors.len()
    }

    /// Number of loaded CRLs.
    pub fn crl_count(&self) -> usize {
        self.crls.len()
    }

    /// Verify a presented chain (leaf first, as from
    /// `ServerConnection::peer_certificates()` /
    /// `ClientConnection::peer_certificates()`) at time `now_unix`:
    ///
    /// * it chains (through the presented intermediates, in any order) to a
    ///   CA of the bundle, with valid signatures, basic constraints and name
    ///   constraints;
    /// * every certificate of the path is within its validity period;
    /// * no certificate of the path (leaf and intermediates) is revoked by a
    ///   loaded CRL. Revocation is checked only against the CRLs loaded
    ///   here: when no loaded CRL is authoritative for a certificate's
    ///   issuer, its status is unknown and that is accepted (no OCSP, no
    ///   fetching of distribution points). A loaded CRL past its
    ///   `nextUpdate` is still used (see [`PeerTrust::warnings`]);
    /// * the extended key usage fits the role of the peer. A peer that
    ///   RECEIVED our connection (`is_initiator = false`) must be a TLS
    ///   server: `id-kp-serverAuth`. A peer that INITIATED the connection to
    ///   us (`is_initiator = true`) may present `id-kp-clientAuth` OR
    ///   `id-kp-serverAuth`, since public CAs issue serverAuth-only
    ///   certificates from 2026 on and servers present them when they
    ///   connect (Prosody and ejabberd accept them too). A certificate
    ///   without an EKU extension is good for any usage. The same EKU must
    ///   be allowed by every intermediate that carries an EKU extension;
    ///   `anyExtendedKeyUsage` is not treated as a wildcard.
    ///
    /// It does not check names: use [`crate::cert_matches_domain`] on the
    /// leaf for that.
    pub fn verify_chain(
        &self,
        chain: &[CertificateDer<'_>],
        is_initiator: bool,
        now_unix: u64,
    ) -> Result<(), CertError> {
        let (leaf, intermediates) = chain.split_first().ok_or(CertError::NoCertificate)?;
        let ee = EndEntityCert::try_from(leaf).map_err(|e| match cert_error(e) {
            CertError::Other(m) => CertError::Malformed(m),
            other => other,
        })?;
        let time = UnixTime::since_unix_epoch(Duration::from_secs(now_unix));
        let crl_refs: Vec<&CertRevocationList<'_>> = self.crls.iter().collect();
        let mut result = Err(CertError::BadUsage);
        for usage in usages(is_initiator) {
            let revocation = match RevocationOptionsBuilder::new(&crl_refs) {
                Ok(b) => Some(
                    b.with_depth(RevocationCheckDepth::Chain)
                        .with_status_policy(UnknownStatusPolicy::Allow)
                        .with_expiration_policy(ExpirationPolicy::Ignore)
                        .build(),
                ),
                // No CRL loaded.
                Err(_) => None,
            };
            result = ee
                .verify_for_usage(
                    self.algs,
                    &self.anchors,
                    intermediates,
                    time,
                    usage,
                    revocation,
                    None,
                )
                .map(|_| ())
                .map_err(cert_error);
            // Only a usage mismatch is worth another try with the next usage.
            if result != Err(CertError::BadUsage) {
                break;
            }
        }
        result
    }

    /// Operator warnings about the trust material at `now_unix`: loaded CRLs
    /// past their `nextUpdate` (revocations published since are unknown to
    /// us) and trusted CAs that have expired.
    pub fn warnings(&self, now_unix: u64) -> Vec<String> {
        let now = i64::try_from(now_unix).unwrap_or(i64::MAX);
        let mut out = Vec::new();
        for ca in &self.anchor_info {
            if ca.not_after < now {
                out.push(format!(
                    "trusted CA {} expired on {}",
                    ca.subject,
                    fmt_time(ca.not_after)
                ));
            }
        }
        for der in &self.crl_ders {
            if let Ok((_, crl)) = parse_x509_crl(der) {
                if let Some(next) = crl.next_update() {
                    if next.timestamp() < now {
                        out.push(format!(
                            "CRL of {} is stale: its nextUpdate {} has passed",
                            crl.issuer(),
                            fmt_time(next.timestamp())
                        ));
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::issue_valid_between;
    use crate::{generate_ca, issue, issue_with_eku, make_crl, self_signed, CertPair, Usage};
    use ::time::OffsetDateTime;

    fn chain(pair: &CertPair) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(pair.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("certs")
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs()
    }

    fn trust(ca: &CertPair) -> PeerTrust {
        PeerTrust::from_pem(ca.cert_pem.as_bytes(), Vec::new()).expect("trust")
    }

    #[test]
    fn valid_chain_ok_for_both_roles() {
        let ca = generate_ca("Fed CA").expect("ca");
        let leaf = issue(&ca, &["a.example.test"], Usage::ServerAndClient, 30).expect("leaf");
        let t = trust(&ca);
        assert_eq!(t.ca_count(), 1);
        assert_eq!(t.crl_count(), 0);
        for initiator in [true, false] {
            assert_eq!(t.verify_chain(&chain(&leaf), initiator, now()), Ok(()));
        }
        // Also with the CA included in the presented chain.
        let mut full = chain(&leaf);
        full.extend(chain(&ca));
        assert_eq!(t.verify_chain(&full, false, now()), Ok(()));
        assert_eq!(
            t.verify_chain(&[], true, now()),
            Err(CertError::NoCertificate)
        );
    }

    #[test]
    fn untrusted_issuers() {
        let ca = generate_ca("Fed CA").expect("ca");
        let t = trust(&ca);
        let ss = self_signed(&["a.example.test"], 30).expect("ss");
        assert_eq!(
            t.verify_chain(&chain(&ss), true, now()),
            Err(CertError::UnknownIssuer)
        );
        let other = generate_ca("Other CA").expect("other");
        let stranger = issue(&other, &["a.example.test"], Usage::ServerAndClient, 30).expect("l");
        assert_eq!(
            t.verify_chain(&chain(&stranger), false, now()),
            Err(CertError::UnknownIssuer)
        );
        // Presenting the foreign CA as intermediate does not help.
        let mut with_other = chain(&stranger);
        with_other.extend(chain(&other));
        assert_eq!(
            t.verify_chain(&with_other, false, now()),
            Err(CertError::UnknownIssuer)
        );
        // A CA with the same name as the trusted one but another key.
        let impostor = generate_ca("Fed CA").expect("impostor");
        let forged = issue(&impostor, &["a.example.test"], Usage::ServerAndClient, 30).expect("l");
        assert_eq!(
            t.verify_chain(&chain(&forged), false, now()),
            Err(CertError::BadSignature)
        );
        // The CA certificate itself is not a leaf.
        assert!(matches!(
            t.verify_chain(&chain(&ca), true, now()),
            Err(CertError::Other(_))
        ));
    }

    #[test]
    fn pinned_self_signed_peer() {
        let ss = self_signed(&["pinned.example.test"], 30).expect("ss");
        let t = PeerTrust::from_pem(ss.cert_pem.as_bytes(), Vec::new()).expect("trust");
        assert_eq!(t.verify_chain(&chain(&ss), false, now()), Ok(()));
    }

    #[test]
    fn validity_period() {
        let ca = generate_ca("Fed CA").expect("ca");
        let t = trust(&ca);
        let n = OffsetDateTime::now_utc();
        let old = issue_valid_between(
            &ca,
            &["a.example.test"],
            n - ::time::Duration::days(30),
            n - ::time::Duration::days(1),
        )
        .expect("old");
        assert_eq!(
            t.verify_chain(&chain(&old), true, now()),
            Err(CertError::Expired)
        );
        let future = issue_valid_between(
            &ca,
            &["a.example.test"],
            n + ::time::Duration::days(1),
            n + ::time::Duration::days(30),
        )
        .expect("future");
        assert_eq!(
            t.verify_chain(&chain(&future), true, now()),
            Err(CertError::NotYetValid)
        );
        // A current certificate, checked at a later and an earlier time.
        let leaf = issue(&ca, &["a.example.test"], Usage::ServerAndClient, 10).expect("leaf");
        assert_eq!(
            t.verify_chain(&chain(&leaf), false, now() + 11 * 86400),
            Err(CertError::Expired)
        );
        assert_eq!(
            t.verify_chain(&chain(&leaf), false, now() - 2 * 3600),
            Err(CertError::NotYetValid)
        );
        // Expiry wins over an unknown issuer (the leaf is checked first).
        let other = generate_ca("Other CA").expect("other");
        let old_foreign = issue_valid_between(
            &other,
            &["a.example.test"],
            n - ::time::Duration::days(30),
            n - ::time::Duration::days(1),
        )
        .expect("old foreign");
        assert_eq!(
            t.verify_chain(&chain(&old_foreign), true, now()),
            Err(CertError::Expired)
        );
    }

    #[test]
    fn revocation_by_loaded_crl() {
        let ca = generate_ca("Fed CA").expect("ca");
        let bad = issue(&ca, &["bad.example.test"], Usage::ServerAndClient, 30).expect("bad");
        let good = issue(&ca, &["good.example.test"], Usage::ServerAndClient, 30).expect("good");
        let crl = make_crl(&ca, &[&bad.cert_pem]).expect("crl");
        let with_crl = PeerTrust::from_pem(ca.cert_pem.as_bytes(), vec![crl]).expect("trust");
        assert_eq!(with_crl.crl_count(), 1);
        for initiator in [true, false] {
            assert_eq!(
                with_crl.verify_chain(&chain(&bad), initiator, now()),
                Err(CertError::Revoked)
            );
            assert_eq!(
                with_crl.verify_chain(&chain(&good), initiator, now()),
                Ok(())
            );
        }
        // Without the CRL, the revoked certificate is accepted.
        assert_eq!(trust(&ca).verify_chain(&chain(&bad), true, now()), Ok(()));
        // A CRL of another CA says nothing about ours: unknown status = OK.
        let other = generate_ca("Other CA").expect("other");
        let other_leaf = issue(&other, &["x.test"], Usage::Server, 30).expect("x");
        let other_crl = make_crl(&other, &[&other_leaf.cert_pem]).expect("crl");
        let t = PeerTrust::from_pem(ca.cert_pem.as_bytes(), vec![other_crl]).expect("trust");
        assert_eq!(t.verify_chain(&chain(&bad), true, now()), Ok(()));
        // An empty CRL of our CA revokes nothing.
        let empty = make_crl(&ca, &[]).expect("empty crl");
        let t = PeerTrust::from_pem(ca.cert_pem.as_bytes(), vec![empty]).expect("trust");
        assert_eq!(t.verify_chain(&chain(&bad), false, now()), Ok(()));
        // A leaf of another CA cannot be put in our CRL.
        assert!(matches!(
            make_crl(&ca, &[&other_leaf.cert_pem]),
            Err(PkiError::Gen(_))
        ));
    }

    #[test]
    fn extended_key_usage_by_role() {
        let ca = generate_ca("Fed CA").expect("ca");
        let t = trust(&ca);
        let names = ["a.example.test"];
        let server_only = issue_with_eku(&ca, &names, true, false, 30).expect("server");
        let client_only = issue_with_eku(&ca, &names, false, true, 30).expect("client");
        let both = issue_with_eku(&ca, &names, true, true, 30).expect("both");
        let none = issue_with_eku(&ca, &names, false, false, 30).expect("none");
        // serverAuth-only: accepted as initiator (2026 public CA certs) and
        // as receiver.
        assert_eq!(t.verify_chain(&chain(&server_only), true, now()), Ok(()));
        assert_eq!(t.verify_chain(&chain(&server_only), false, now()), Ok(()));
        // clientAuth-only: initiator only.
        assert_eq!(t.verify_chain(&chain(&client_only), true, now()), Ok(()));
        assert_eq!(
            t.verify_chain(&chain(&client_only), false, now()),
            Err(CertError::BadUsage)
        );
        for pair in [&both, &none] {
            for initiator in [true, false] {
                assert_eq!(t.verify_chain(&chain(pair), initiator, now()), Ok(()));
            }
        }
        // A usage problem does not hide a revocation (or vice versa).
        let crl = make_crl(&ca, &[&client_only.cert_pem]).expect("crl");
        let t = PeerTrust::from_pem(ca.cert_pem.as_bytes(), vec![crl]).expect("trust");
        assert_eq!(
            t.verify_chain(&chain(&client_only), true, now()),
            Err(CertError::Revoked)
        );
    }

    #[test]
    fn eku_extension_present_or_absent() {
        let ca = generate_ca("Fed CA").expect("ca");
        let none = issue_with_eku(&ca, &["a.test"], false, false, 3).expect("none");
        let der = chain(&none).remove(0);
        let (_, x) = parse_x509_certificate(&der).expect("parse");
        assert!(x.extended_key_usage().expect("eku ok").is_none());
        let server = issue_with_eku(&ca, &["a.test"], true, false, 3).expect("server");
        let der = chain(&server).remove(0);
        let (_, x) = parse_x509_certificate(&der).expect("parse");
        let eku = x.extended_key_usage().expect("ok").expect("present");
        assert!(eku.value.server_auth && !eku.value.client_auth);
    }

    #[test]
    fn malformed_leaf() {
        let ca = generate_ca("Fed CA").expect("ca");
        let t = trust(&ca);
        let junk = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x01]);
        assert!(matches!(
            t.verify_chain(&[junk], true, now()),
            Err(CertError::Malformed(_))
        ));
    }

    #[test]
    fn from_pem_errors() {
        assert!(matches!(
            PeerTrust::from_pem(b"nothing here", Vec::new()),
            Err(PkiError::Pem { .. })
        ));
        let ca = generate_ca("Fed CA").expect("ca");
        let err = PeerTrust::from_pem(ca.cert_pem.as_bytes(), vec![b"junk".to_vec()])
            .expect_err("bad CRL");
        assert!(err.to_string().contains("<CRL #1>"), "{err}");
    }

    #[test]
    fn load_from_files() {
        let dir = std::env::temp_dir().join(format!("causeway-pki-peer-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let ca1 = generate_ca("CA one").expect("ca1");
        let ca2 = generate_ca("CA two").expect("ca2");
        let l1 = issue(&ca1, &["one.test"], Usage::ServerAndClient, 30).expect("l1");
        let l2 = issue(&ca2, &["two.test"], Usage::ServerAndClient, 30).expect("l2");
        let l3 = issue(&ca2, &["three.test"], Usage::ServerAndClient, 30).expect("l3");
        let bundle = dir.join("bundle.pem");
        std::fs::write(&bundle, format!("{}{}", ca1.cert_pem, ca2.cert_pem)).expect("write");
        // One DER CRL and one PEM CRL.
        let der_crl = dir.join("one.crl");
        std::fs::write(&der_crl, make_crl(&ca1, &[&l1.cert_pem]).expect("crl")).expect("write");
        let pem_crl = dir.join("two.pem");
        let crl2 = ::pem::Pem::new("X509 CRL", make_crl(&ca2, &[&l2.cert_pem]).expect("crl"));
        std::fs::write(&pem_crl, ::pem::encode(&crl2)).expect("write");
        let t = PeerTrust::load(&bundle, &[der_crl.clone(), pem_crl.clone()]).expect("load");
        assert_eq!((t.ca_count(), t.crl_count()), (2, 2));
        assert_eq!(
            t.verify_chain(&chain(&l1), true, now()),
            Err(CertError::Revoked)
        );
        assert_eq!(
            t.verify_chain(&chain(&l2), true, now()),
            Err(CertError::Revoked)
        );
        assert_eq!(t.verify_chain(&chain(&l3), true, now()), Ok(()));
        assert!(format!("{t:?}").contains("CA two"));

        // Errors name the file.
        let missing = dir.join("missing.pem");
        let err = PeerTrust::load(&missing, &[]).expect_err("missing");
        assert!(err.to_string().contains("missing.pem"), "{err}");
        let junk = dir.join("junk.crl");
        std::fs::write(&junk, "hello").expect("write");
        let err = PeerTrust::load(&bundle, &[junk]).expect_err("junk");
        assert!(err.to_string().contains("junk.crl"), "{err}");
        let bad_der = dir.join("bad.der");
        std::fs::write(&bad_der, [0x30, 0x01, 0x00]).expect("write");
        let err = PeerTrust::load(&bundle, &[bad_der]).expect_err("bad der");
        assert!(err.to_string().contains("bad.der"), "{err}");
        let err = PeerTrust::load(&pem_crl, &[]).expect_err("not a bundle");
        assert!(err.to_string().contains("two.pem"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn warnings_for_stale_crl_and_expired_ca() {
        let ca = generate_ca("Fed CA").expect("ca");
        let crl = make_crl(&ca, &[]).expect("crl");
        let t = PeerTrust::from_pem(ca.cert_pem.as_bytes(), vec![crl]).expect("trust");
        assert!(t.warnings(now()).is_empty());
        let w = t.warnings(now() + 31 * 86400);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("stale") && w[0].contains("Fed CA"), "{w:?}");
        let w = t.warnings(now() + 3651 * 86400);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("expired"), "{w:?}");
        // A stale CRL is still used.
        let bad = issue(&ca, &["bad.test"], Usage::Server, 60).expect("bad");
        let crl = make_crl(&ca, &[&bad.cert_pem]).expect("crl");
        let t = PeerTrust::from_pem(ca.cert_pem.as_bytes(), vec![crl]).expect("trust");
        assert_eq!(
            t.verify_chain(&chain(&bad), false, now() + 40 * 86400),
            Err(CertError::Revoked)
        );
    }

    #[test]
    fn time_format() {
        assert_eq!(fmt_time(0), "1970-01-01 00:00 UTC");
        assert_eq!(fmt_time(1_767_225_600), "2026-01-01 00:00 UTC");
    }
}
