//! Certificate signing requests (PKCS#10) for our own certificates, to be
//! signed by the CA of the deployment's choice.

use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
    OtherNameValue, SanType, PKCS_ECDSA_P256_SHA256,
};

use crate::PkiError;

/// OID arcs of `id-on-xmppAddr` (RFC 6120 13.7.1.4).
const XMPP_ADDR_ARCS: [u64; 9] = [1, 3, 6, 1, 5, 5, 7, 8, 5];

fn gen_err(e: impl std::fmt::Display) -> PkiError {
    PkiError::Gen(e.to_string())
}

/// `name` without surrounding blanks and one trailing dot; an error naming
/// `what` if nothing is left or it holds characters no certificate name may.
fn clean<'a>(name: &'a str, what: &str) -> Result<&'a str, PkiError> {
    let n = name.trim();
    let n = n.strip_suffix('.').unwrap_or(n);
    if n.is_empty() {
        return Err(PkiError::Gen(format!("empty {what}")));
    }
    if n.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(PkiError::Gen(format!(
            "{what} {n:?}: blanks are not allowed"
        )));
    }
    Ok(n)
}

/// Push `n` unless a name equal to it ignoring ASCII case is already there.
fn push_unique(list: &mut Vec<String>, n: &str) {
    if !list.iter().any(|x| x.eq_ignore_ascii_case(n)) {
        list.push(n.to_string());
    }
}

/// A fresh ECDSA P-256 private key and a PKCS#10 request signed with it.
///
/// * `names` become `dNSName` subjectAltNames (IP literals become
///   `iPAddress` ones), in order, duplicates (ignoring case) and one
///   trailing dot removed; a wildcard (`*.example.com`) is passed through.
/// * `xmpp_addrs` become `id-on-xmppAddr` otherName subjectAltNames
///   (OID 1.3.6.1.5.5.7.8.5, UTF8String), as RFC 6120 13.7.1.4 and
///   XEP-0178 describe; they may not be wildcards or carry a localpart or
///   resource.
/// * `common_name` is the subject's CN (the server's FQDN).
///
/// The request asks for key usage digitalSignature and extended key usages
/// serverAuth + clientAuth (an XMPP server is a TLS client when it
/// initiates); the CA decides what the certificate finally carries.
///
/// Returns `(csr_pem, key_pem)`: `-----BEGIN CERTIFICATE REQUEST-----` and
/// the PKCS#8 key (`-----BEGIN PRIVATE KEY-----`), which the caller must
/// store privately.
///
/// Errors if there is no name at all, a name is empty or malformed, or the
/// common name is empty.
pub fn csr(
    names: &[String],
    xmpp_addrs: &[String],
    common_name: &str,
) -> Result<(String, String), PkiError> {
    let cn = clean(common_name, "common name")?;
    let mut dns = Vec::new();
    for n in names {
        push_unique(&mut dns, clean(n, "certificate name")?);
    }
    let mut xmpp = Vec::new();
    for a in xmpp_addrs {
        let a = clean(a, "XmppAddr")?;
        if a.contains(['*', '@', '/']) {
            return Err(PkiError::Gen(format!(
                "XmppAddr {a:?}: a bare domain is needed (no wildcard, localpart or resource)"
            )));
        }
        push_unique(&mut xmpp, a);
    }
    if dns.is_empty() && xmpp.is_empty() {
        return Err(PkiError::Gen(
            "a certificate request needs at least one name".into(),
        ));
    }
    // `CertificateParams::new` checks each name (IA5) and makes IP literals iPAddress SANs.
    let mut params = CertificateParams::new(dns).map_err(gen_err)?;
    params.subject_alt_names.extend(
        xmpp.into_iter()
            .map(|a| SanType::OtherName((XMPP_ADDR_ARCS.to_vec(), OtherNameValue::Utf8String(a)))),
    );
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
    let request = params.serialize_request(&key).map_err(gen_err)?;
    let pem = request.pem().map_err(gen_err)?;
    Ok((pem, key.serialize_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// (DNS SANs, XmppAddr SANs, subject) of a CSR, after checking its
    /// signature.
    fn inspect(pem: &str) -> (Vec<String>, Vec<String>, String) {
        let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("pem");
        assert_eq!(p.label, "CERTIFICATE REQUEST");
        let (_, req) = X509CertificationRequest::from_der(&p.contents).expect("csr");
        req.verify_signature().expect("self-signed with its key");
        let mut dns = Vec::new();
        let mut xmpp = Vec::new();
        for ext in req.requested_extensions().expect("extension request") {
            if let ParsedExtension::SubjectAlternativeName(san) = ext {
                for gn in &san.general_names {
                    match gn {
                        GeneralName::DNSName(d) => dns.push(d.to_string()),
                        GeneralName::OtherName(oid, value) => {
                            assert_eq!(oid.to_id_string(), crate::ID_ON_XMPP_ADDR);
                            // [0] EXPLICIT UTF8String
                            let (_, outer) =
                                x509_parser::asn1_rs::Any::from_der(value).expect("outer");
                            let (_, inner) =
                                x509_parser::asn1_rs::Any::from_der(outer.data).expect("inner");
                            assert_eq!(inner.tag(), x509_parser::asn1_rs::Tag::Utf8String);
                            xmpp.push(String::from_utf8(inner.data.to_vec()).expect("utf8"));
                        }
                        other => panic!("unexpected SAN {other:?}"),
                    }
                }
            }
        }
        (
            dns,
            xmpp,
            req.certification_request_info.subject.to_string(),
        )
    }

    #[test]
    fn dns_names_in_order_without_duplicates() {
        let (csr_pem, key_pem) = csr(
            &strings(&[
                "edge.example.com",
                "example.com.",
                "Example.com",
                "conference.example.com",
            ]),
            &[],
            "edge.example.com",
        )
        .expect("csr");
        assert!(key_pem.contains("BEGIN PRIVATE KEY"));
        KeyPair::from_pem(&key_pem).expect("key parses");
        let (dns, xmpp, subject) = inspect(&csr_pem);
        assert_eq!(
            dns,
            ["edge.example.com", "example.com", "conference.example.com"]
        );
        assert!(xmpp.is_empty());
        assert_eq!(subject, "CN=edge.example.com");
    }

    #[test]
    fn xmpp_addrs_become_other_names() {
        let (csr_pem, _) = csr(
            &strings(&["edge.example.com", "example.com"]),
            &strings(&["example.com", "conference.example.com"]),
            "edge.example.com",
        )
        .expect("csr");
        let (dns, xmpp, _) = inspect(&csr_pem);
        assert_eq!(dns, ["edge.example.com", "example.com"]);
        assert_eq!(xmpp, ["example.com", "conference.example.com"]);
    }

    #[test]
    fn bad_input_is_refused() {
        let none: [String; 0] = [];
        assert!(csr(&none, &none, "cn.test").is_err());
        assert!(csr(&strings(&["a.test"]), &none, " ").is_err());
        assert!(csr(&strings(&["a.test", ""]), &none, "a.test").is_err());
        assert!(csr(&strings(&["a b.test"]), &none, "a.test").is_err());
        for bad in ["*.a.test", "user@a.test", "a.test/res"] {
            assert!(
                csr(&strings(&["a.test"]), &strings(&[bad]), "a.test").is_err(),
                "{bad}"
            );
        }
        // A wildcard DNS name is fine.
        let (pem, _) = csr(&strings(&["*.a.test"]), &none, "a.test").expect("wildcard");
        assert_eq!(inspect(&pem).0, ["*.a.test"]);
    }
}
