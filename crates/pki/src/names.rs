//! Certificate inspection and RFC 6125 name matching.

use x509_parser::asn1_rs::{Any, Class, FromDer, Tag};
use x509_parser::prelude::*;

use crate::PkiError;

/// OID of the XmppAddr otherName (RFC 6120 13.7.1.4), `id-on-xmppAddr`.
pub const ID_ON_XMPP_ADDR: &str = "1.3.6.1.5.5.7.8.5";
/// OID of the SRVName otherName (RFC 4985), `id-on-dnsSRV`.
pub const ID_ON_DNS_SRV: &str = "1.3.6.1.5.5.7.8.7";

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, PkiError> {
    let (_, cert) = parse_x509_certificate(der)
        .map_err(|e| PkiError::Gen(format!("cannot parse certificate: {e}")))?;
    Ok(cert)
}

/// Decode the value of an otherName: `[0] EXPLICIT` around a string type.
fn other_name_string(value: &[u8]) -> Option<String> {
    let (_, outer) = Any::from_der(value).ok()?;
    if outer.class() != Class::ContextSpecific || outer.tag() != Tag(0) {
        return None;
    }
    let (_, inner) = Any::from_der(outer.data).ok()?;
    // UTF8String (XmppAddr) or IA5String (SRVName); both are UTF-8 compatible.
    if inner.class() != Class::Universal
        || !(inner.tag() == Tag::Utf8String || inner.tag() == Tag::Ia5String)
    {
        return None;
    }
    std::str::from_utf8(inner.data).ok().map(str::to_string)
}

/// Names of a DER leaf certificate, for XMPP domain verification:
///
/// * every `dNSName` subjectAltName;
/// * every XmppAddr otherName (`id-on-xmppAddr`), as its string;
/// * every SRVName otherName (`id-on-dnsSRV`) for `_xmpp-server`, as the
///   domain after the `_xmpp-server.` prefix;
/// * only if none of the above exists: the subject CN(s), as a legacy fallback.
///
/// Names are returned as presented (order kept, duplicates removed); compare
/// them with [`name_matches`].
pub fn cert_names(der: &[u8]) -> Result<Vec<String>, PkiError> {
    let cert = parse(der)?;
    let mut names: Vec<String> = Vec::new();
    fn push(names: &mut Vec<String>, n: String) {
        if !n.is_empty() && !names.contains(&n) {
            names.push(n);
        }
    }
    let san = cert
        .subject_alternative_name()
        .map_err(|e| PkiError::Gen(format!("bad subjectAltName: {e}")))?;
    if let Some(san) = san {
        for gn in &san.value.general_names {
            match gn {
                GeneralName::DNSName(d) => push(&mut names, d.to_string()),
                GeneralName::OtherName(oid, value) => {
                    let oid = oid.to_id_string();
                    if oid == ID_ON_XMPP_ADDR {
                        if let Some(s) = other_name_string(value) {
                            push(&mut names, s);
                        }
                    } else if oid == ID_ON_DNS_SRV {
                        if let Some(domain) = other_name_string(value)
                            .and_then(|s| s.strip_prefix("_xmpp-server.").map(str::to_string))
                        {
                            push(&mut names, domain);
                        }
                    }
                }
                _ => {}
            }
        }
    }
    if names.is_empty() {
        for cn in cert.subject().iter_common_name() {
            if let Ok(s) = cn.as_str() {
                push(&mut names, s.to_string());
            }
        }
    }
    Ok(names)
}

/// `notAfter` of a DER certificate, as unix seconds.
pub fn cert_not_after(der: &[u8]) -> Result<i64, PkiError> {
    Ok(parse(der)?.validity().not_after.timestamp())
}

fn normalize(name: &str) -> String {
    let n = name.trim();
    n.strip_suffix('.').unwrap_or(n).to_ascii_lowercase()
}

/// RFC 6125 DNS-ID match of `reference` (the domain we expect) against one
/// `presented` name from a certificate.
///
/// * Exact match, ASCII case-insensitive, ignoring one trailing dot.
/// * A wildcard is honoured only as the complete left-most label (`*.`) and
///   matches exactly one non-empty label: `*.example.com` matches
///   `chat.example.com` but neither `a.b.example.com` nor `example.com`.
/// * Partial-label wildcards (`x*.example.com`), wildcards elsewhere and
///   wildcards directly above a single label (`*.com`) never match.
/// * Empty names never match.
pub fn name_matches(presented: &str, reference: &str) -> bool {
    let p = normalize(presented);
    let r = normalize(reference);
    if p.is_empty() || r.is_empty() || r.contains('*') {
        return false;
    }
    match p.strip_prefix("*.") {
        None => !p.contains('*') && p == r,
        Some(parent) => {
            if parent.contains('*') || !parent.contains('.') || parent.split('.').any(str::is_empty)
            {
                return false;
            }
            match r.split_once('.') {
                Some((label, rest)) => !label.is_empty() && rest == parent,
                None => false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{generate_ca, issue, self_signed, Usage};
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;

    fn der(pem: &str) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem.as_bytes())
            .expect("pem")
            .to_vec()
    }

    #[test]
    fn exact_matches() {
        assert!(name_matches("example.com", "example.com"));
        assert!(name_matches("Example.COM", "example.com"));
        assert!(name_matches("example.com.", "EXAMPLE.com"));
        assert!(!name_matches("example.com", "example.org"));
        assert!(!name_matches("example.com", "www.example.com"));
        assert!(!name_matches("www.example.com", "example.com"));
        assert!(!name_matches("", ""));
        assert!(!name_matches("example.com", ""));
        assert!(!name_matches("", "example.com"));
    }

    #[test]
    fn wildcard_matches_exactly_one_label() {
        assert!(name_matches("*.example.com", "chat.example.com"));
        assert!(name_matches("*.Example.com", "CHAT.example.com."));
        // Not two labels.
        assert!(!name_matches("*.example.com", "a.chat.example.com"));
        // Not the bare parent.
        assert!(!name_matches("*.example.com", "example.com"));
        // Not an empty label.
        assert!(!name_matches("*.example.com", ".example.com"));
        // Not another domain with the same suffix text.
        assert!(!name_matches("*.example.com", "chat.badexample.com"));
        // Wildcard only as the complete left-most label.
        assert!(!name_matches("c*.example.com", "chat.example.com"));
        assert!(!name_matches("chat.*.com", "chat.example.com"));
        assert!(!name_matches("*", "com"));
        assert!(!name_matches("*.com", "example.com"));
        assert!(!name_matches("*.*.example.com", "a.b.example.com"));
        // The reference is never a pattern.
        assert!(!name_matches("chat.example.com", "*.example.com"));
        assert!(!name_matches("*.example.com", "*.example.com"));
    }

    #[test]
    fn cert_names_returns_sans_not_cn() {
        let ca = generate_ca("Names CA").expect("ca");
        let leaf = issue(
            &ca,
            &[
                "example.test",
                "*.example.test",
                "192.0.2.7",
                "example.test",
            ],
            Usage::ServerAndClient,
            2,
        )
        .expect("leaf");
        let d = der(&leaf.cert_pem);
        // IP SANs are skipped; duplicates removed.
        assert_eq!(
            cert_names(&d).expect("names"),
            ["example.test", "*.example.test"]
        );
        let ss = self_signed(&["solo.test"], 2).expect("ss");
        assert_eq!(
            cert_names(&der(&ss.cert_pem)).expect("names"),
            ["solo.test"]
        );
    }

    fn custom_cert(params: rcgen::CertificateParams) -> Vec<u8> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        params.self_signed(&key).expect("sign").der().to_vec()
    }

    #[test]
    fn cert_names_reads_xmpp_addr_and_srv_name() {
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = vec![
            rcgen::SanType::OtherName((
                vec![1, 3, 6, 1, 5, 5, 7, 8, 5],
                rcgen::OtherNameValue::Utf8String("xmpp.example.test".into()),
            )),
            rcgen::SanType::OtherName((
                vec![1, 3, 6, 1, 5, 5, 7, 8, 7],
                rcgen::OtherNameValue::Utf8String("_xmpp-server.srv.example.test".into()),
            )),
            rcgen::SanType::OtherName((
                vec![1, 3, 6, 1, 5, 5, 7, 8, 7],
                rcgen::OtherNameValue::Utf8String("_xmpp-client.client.example.test".into()),
            )),
            // Some unrelated otherName (UPN) is ignored.
            rcgen::SanType::OtherName((
                vec![1, 3, 6, 1, 4, 1, 311, 20, 2, 3],
                rcgen::OtherNameValue::Utf8String("user@example.test".into()),
            )),
            rcgen::SanType::DnsName("dns.example.test".try_into().expect("ia5")),
        ];
        let names = cert_names(&custom_cert(params)).expect("names");
        assert_eq!(
            names,
            ["xmpp.example.test", "srv.example.test", "dns.example.test"]
        );
    }

    #[test]
    fn cert_names_falls_back_to_cn_only_without_san() {
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "legacy.example.test");
        assert_eq!(
            cert_names(&custom_cert(params.clone())).expect("names"),
            ["legacy.example.test"]
        );
        params.subject_alt_names = vec![rcgen::SanType::DnsName(
            "san.example.test".try_into().expect("ia5"),
        )];
        assert_eq!(
            cert_names(&custom_cert(params)).expect("names"),
            ["san.example.test"]
        );
    }

    #[test]
    fn not_after_is_days_from_now() {
        let ss = self_signed(&["a.test"], 10).expect("ss");
        let na = cert_not_after(&der(&ss.cert_pem)).expect("not after");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs() as i64;
        let expected = now + 10 * 86400;
        assert!((na - expected).abs() < 120, "{na} vs {expected}");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(matches!(
            cert_names(b"not a certificate"),
            Err(PkiError::Gen(_))
        ));
        assert!(matches!(
            cert_not_after(&[0x30, 0x82, 0xff]),
            Err(PkiError::Gen(_))
        ));
        assert!(cert_names(&[]).is_err());
    }
}
