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

/// XmppAddr match: the whole value is the domain (no wildcards, no localpart
/// or resource). An XmppAddr is a UTF8String whose domain is written with
/// U-labels (RFC 7622 3.2.1), so both sides go through the gateway's one
/// domain normaliser (UTS-46 to A-labels, lowercase, no trailing dot) and
/// are compared in that form; a value it refuses never matches.
fn xmpp_addr_matches(presented: &str, reference: &str) -> bool {
    use causeway_xmpp::addr::normalize_domain;
    normalize_domain(presented).is_ok_and(|p| normalize_domain(reference).is_ok_and(|r| p == r))
}

/// SRV-ID match (RFC 6125 / RFC 4985): `_xmpp-server.<domain>`, service
/// label case-insensitive, domain exactly (no wildcards).
fn srv_id_matches(presented: &str, reference: &str) -> bool {
    match presented.split_once('.') {
        Some((service, name)) => {
            service.eq_ignore_ascii_case("_xmpp-server")
                && !name.contains('*')
                && normalize(name) == reference
        }
        None => false,
    }
}

/// RFC 6125 / XEP-0178: does the DER leaf certificate `leaf_der` authenticate
/// the XMPP server `domain`?
///
/// Presented identifiers that count, from the subjectAltName extension:
///
/// * DNS-ID (`dNSName`), matched with [`name_matches`]: case-insensitive, a
///   wildcard only as the whole left-most label, standing for exactly one
///   label (`*.example.com` covers `chat.example.com`, not
///   `a.chat.example.com` nor `example.com`);
/// * XmppAddr (`id-on-xmppAddr` otherName): the value must be exactly the
///   domain, compared after UTS-46 normalisation (`bücher.test` names
///   `xn--bcher-kva.test`; a JID with a localpart never matches);
/// * SRV-ID (`id-on-dnsSRV` otherName): `_xmpp-server.<domain>` exactly
///   (`_xmpp-client.` does not authenticate a server).
///
/// The subject CN (same rules as a DNS-ID) is consulted only when the
/// certificate has no subjectAltName extension at all. URI-IDs, IP
/// addresses and other names never match. An unparsable certificate or an
/// empty or wildcard `domain` never matches. DNS-IDs and SRV-IDs are ASCII
/// (A-labels) in certificates and are compared with `domain` as given, which
/// the s2s layer passes normalised (A-labels); XmppAddrs are normalised.
///
/// This does not verify the chain: use [`crate::PeerTrust::verify_chain`].
pub fn cert_matches_domain(leaf_der: &[u8], domain: &str) -> bool {
    let Ok(cert) = parse(leaf_der) else {
        return false;
    };
    let reference = normalize(domain);
    if reference.is_empty() || reference.contains('*') {
        return false;
    }
    match cert.subject_alternative_name() {
        Err(_) => false,
        Ok(Some(san)) => san.value.general_names.iter().any(|gn| match gn {
            GeneralName::DNSName(d) => name_matches(d, &reference),
            GeneralName::OtherName(oid, value) => {
                let oid = oid.to_id_string();
                if oid == ID_ON_XMPP_ADDR {
                    other_name_string(value).is_some_and(|s| xmpp_addr_matches(&s, &reference))
                } else if oid == ID_ON_DNS_SRV {
                    other_name_string(value).is_some_and(|s| srv_id_matches(&s, &reference))
                } else {
                    false
                }
            }
            _ => false,
        }),
        Ok(None) => cert
            .subject()
            .iter_common_name()
            .any(|cn| cn.as_str().is_ok_and(|s| name_matches(s, &reference))),
    }
}

/// Expiry and coverage warnings for our own certificate (for status pages
/// and start-up logs), at `now_unix`:
///
/// * not yet valid, expired, or expiring within `warn_days` days (with the
///   number of days left and the `notAfter` date);
/// * each of `names` that the leaf does not cover per
///   [`cert_matches_domain`].
///
/// Empty when all is well. An unparsable certificate gives one warning.
pub fn cert_warnings(
    leaf_der: &[u8],
    names: &[&str],
    now_unix: u64,
    warn_days: u32,
) -> Vec<String> {
    let cert = match parse(leaf_der) {
        Ok(c) => c,
        Err(e) => return vec![e.to_string()],
    };
    let now = i64::try_from(now_unix).unwrap_or(i64::MAX);
    let mut out = Vec::new();
    let not_before = cert.validity().not_before.timestamp();
    let not_after = cert.validity().not_after.timestamp();
    let when = crate::peer::fmt_time;
    if now < not_before {
        out.push(format!(
            "certificate is not valid before {}",
            when(not_before)
        ));
    }
    if now >= not_after {
        let days = (now - not_after) / 86400;
        out.push(format!(
            "certificate expired on {} ({days} day{} ago)",
            when(not_after),
            if days == 1 { "" } else { "s" }
        ));
    } else {
        let left = not_after - now;
        if left < i64::from(warn_days) * 86400 {
            let days = left / 86400;
            let span = match days {
                0 => "less than a day".to_string(),
                1 => "1 day".to_string(),
                d => format!("{d} days"),
            };
            out.push(format!(
                "certificate expires in {span} (on {})",
                when(not_after)
            ));
        }
    }
    let presented = cert_names(leaf_der).unwrap_or_default();
    for name in names {
        if !cert_matches_domain(leaf_der, name) {
            out.push(format!(
                "certificate does not cover {name} (it names: {})",
                if presented.is_empty() {
                    "nothing usable".to_string()
                } else {
                    presented.join(", ")
                }
            ));
        }
    }
    out
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

    /// DER of a SubjectAltName extension value holding one otherName with
    /// an IA5String value (rcgen only writes UTF8String otherNames; RFC 4985
    /// SRVName is an IA5String).
    fn san_other_name_ia5(oid_der: &[u8], value: &str) -> Vec<u8> {
        fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
            assert!(body.len() < 128, "short form lengths only");
            let mut v = vec![tag, u8::try_from(body.len()).expect("len")];
            v.extend_from_slice(body);
            v
        }
        let mut other = tlv(0x06, oid_der);
        other.extend(tlv(0xa0, &tlv(0x16, value.as_bytes())));
        // GeneralNames ::= SEQUENCE OF GeneralName; otherName is [0] IMPLICIT.
        tlv(0x30, &tlv(0xa0, &other))
    }

    /// A CA-signed leaf with the given SANs (or none) and CN (or none).
    fn leaf_with(
        ca: &crate::CertPair,
        sans: Vec<rcgen::SanType>,
        raw_san: Option<Vec<u8>>,
        cn: Option<&str>,
    ) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = sans;
        if let Some(raw) = raw_san {
            params
                .custom_extensions
                .push(rcgen::CustomExtension::from_oid_content(
                    &[2, 5, 29, 17],
                    raw,
                ));
        }
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
        }
        let ca_key = rcgen::KeyPair::from_pem(&ca.key_pem).expect("ca key");
        let issuer = rcgen::Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key).expect("issuer");
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        params
            .signed_by(&key, &issuer)
            .expect("sign")
            .der()
            .to_vec()
    }

    fn dns(name: &str) -> rcgen::SanType {
        rcgen::SanType::DnsName(name.try_into().expect("ia5"))
    }

    #[test]
    fn domain_matching_dns_ids() {
        let ca = generate_ca("Match CA").expect("ca");
        let leaf = issue(
            &ca,
            &["example.test", "*.chat.example.test"],
            Usage::ServerAndClient,
            2,
        )
        .expect("leaf");
        let d = der(&leaf.cert_pem);
        // Exact, case-insensitive, trailing dot.
        assert!(cert_matches_domain(&d, "example.test"));
        assert!(cert_matches_domain(&d, "EXAMPLE.Test."));
        assert!(!cert_matches_domain(&d, "other.test"));
        assert!(!cert_matches_domain(&d, "sub.example.test"));
        // Wildcard: exactly one label.
        assert!(cert_matches_domain(&d, "muc.chat.example.test"));
        assert!(cert_matches_domain(&d, "MUC.Chat.Example.Test"));
        assert!(!cert_matches_domain(&d, "a.muc.chat.example.test"));
        // Not the bare parent.
        assert!(!cert_matches_domain(&d, "chat.example.test"));
        // The reference is never a pattern; empty never matches.
        assert!(!cert_matches_domain(&d, "*.chat.example.test"));
        assert!(!cert_matches_domain(&d, ""));
        // Garbage never matches.
        assert!(!cert_matches_domain(b"junk", "example.test"));
    }

    #[test]
    fn domain_matching_xmpp_addr() {
        let ca = generate_ca("Match CA").expect("ca");
        let leaf = crate::issue_xmpp_addr(&ca, "xmpp.example.test", 2).expect("leaf");
        let d = der(&leaf.cert_pem);
        assert_eq!(cert_names(&d).expect("names"), ["xmpp.example.test"]);
        // The only SAN is the XmppAddr (no dNSName).
        let (_, x) = parse_x509_certificate(&d).expect("parse");
        let san = x.subject_alternative_name().expect("ok").expect("san");
        assert_eq!(san.value.general_names.len(), 1);
        assert!(matches!(
            san.value.general_names[0],
            GeneralName::OtherName(..)
        ));
        assert!(cert_matches_domain(&d, "xmpp.example.test"));
        assert!(cert_matches_domain(&d, "XMPP.example.test"));
        assert!(!cert_matches_domain(&d, "chat.xmpp.example.test"));
        assert!(!cert_matches_domain(&d, "example.test"));

        // XmppAddr: exact match only, no wildcard, no localpart.
        let xa = |v: &str| {
            rcgen::SanType::OtherName((
                vec![1, 3, 6, 1, 5, 5, 7, 8, 5],
                rcgen::OtherNameValue::Utf8String(v.into()),
            ))
        };
        let d = leaf_with(
            &ca,
            vec![xa("*.wild.test"), xa("user@jid.test")],
            None,
            None,
        );
        assert!(!cert_matches_domain(&d, "a.wild.test"));
        assert!(!cert_matches_domain(&d, "jid.test"));
        // An XmppAddr carries U-labels: it names the domain in A-label form.
        let d = leaf_with(&ca, vec![xa("Bücher.test.")], None, None);
        assert!(cert_matches_domain(&d, "xn--bcher-kva.test"));
        assert!(cert_matches_domain(&d, "bücher.test"));
        assert!(!cert_matches_domain(&d, "bucher.test"));
        let d = leaf_with(&ca, vec![xa("xn--zz.test")], None, None);
        assert!(!cert_matches_domain(&d, "xn--zz.test"));
        // An unrelated otherName (UPN) with the domain does not count.
        let upn = rcgen::SanType::OtherName((
            vec![1, 3, 6, 1, 4, 1, 311, 20, 2, 3],
            rcgen::OtherNameValue::Utf8String("upn.test".into()),
        ));
        let d = leaf_with(&ca, vec![upn], None, Some("upn.test"));
        assert!(!cert_matches_domain(&d, "upn.test"));
    }

    #[test]
    fn domain_matching_srv_id() {
        let ca = generate_ca("Match CA").expect("ca");
        // id-on-dnsSRV, 1.3.6.1.5.5.7.8.7
        let oid = [0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x08, 0x07];
        let d = leaf_with(
            &ca,
            Vec::new(),
            Some(san_other_name_ia5(&oid, "_xmpp-server.srv.example.test")),
            None,
        );
        assert_eq!(cert_names(&d).expect("names"), ["srv.example.test"]);
        assert!(cert_matches_domain(&d, "srv.example.test"));
        assert!(cert_matches_domain(&d, "SRV.example.test"));
        assert!(!cert_matches_domain(&d, "example.test"));
        assert!(!cert_matches_domain(&d, "_xmpp-server.srv.example.test"));
        // A client SRV-ID does not authenticate a server.
        let d = leaf_with(
            &ca,
            Vec::new(),
            Some(san_other_name_ia5(&oid, "_xmpp-client.c.example.test")),
            None,
        );
        assert!(!cert_matches_domain(&d, "c.example.test"));
        // Service label case-insensitive.
        let d = leaf_with(
            &ca,
            Vec::new(),
            Some(san_other_name_ia5(&oid, "_XMPP-Server.s.example.test")),
            None,
        );
        assert!(cert_matches_domain(&d, "s.example.test"));
    }

    #[test]
    fn domain_matching_cn_only_without_san() {
        let ca = generate_ca("Match CA").expect("ca");
        let d = leaf_with(&ca, Vec::new(), None, Some("Legacy.example.test"));
        assert!(cert_matches_domain(&d, "legacy.example.test"));
        assert!(!cert_matches_domain(&d, "other.example.test"));
        // With any SAN, the CN is ignored...
        let d = leaf_with(
            &ca,
            vec![dns("san.example.test")],
            None,
            Some("cn.example.test"),
        );
        assert!(cert_matches_domain(&d, "san.example.test"));
        assert!(!cert_matches_domain(&d, "cn.example.test"));
        // ...even one with no usable identifier (an IP address).
        let d = leaf_with(
            &ca,
            vec![rcgen::SanType::IpAddress([192, 0, 2, 1].into())],
            None,
            Some("cn.example.test"),
        );
        assert!(!cert_matches_domain(&d, "cn.example.test"));
        // A wildcard CN follows the DNS-ID rules.
        let d = leaf_with(&ca, Vec::new(), None, Some("*.w.example.test"));
        assert!(cert_matches_domain(&d, "a.w.example.test"));
        assert!(!cert_matches_domain(&d, "w.example.test"));
        // No SAN and no CN: nothing matches.
        let d = leaf_with(&ca, Vec::new(), None, None);
        assert!(!cert_matches_domain(&d, "example.test"));
    }

    #[test]
    fn warnings_for_expiry_and_coverage() {
        let ca = generate_ca("Warn CA").expect("ca");
        let leaf = issue(
            &ca,
            &["example.test", "*.example.test"],
            Usage::ServerAndClient,
            10,
        )
        .expect("leaf");
        let d = der(&leaf.cert_pem);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        assert!(cert_warnings(&d, &["example.test", "muc.example.test"], now, 5).is_empty());
        // Within the warning window.
        let w = cert_warnings(&d, &["example.test"], now + 3600, 30);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("expires in 9 days"), "{w:?}");
        let w = cert_warnings(&d, &[], now + 9 * 86400 + 600, 30);
        assert!(w[0].contains("expires in less than a day"), "{w:?}");
        // Expired.
        let w = cert_warnings(&d, &[], now + 11 * 86400 + 3600, 30);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("expired on") && w[0].contains("1 day ago"),
            "{w:?}"
        );
        // Not yet valid.
        let w = cert_warnings(&d, &[], now - 86400, 0);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("not valid before"), "{w:?}");
        // Coverage.
        let w = cert_warnings(
            &d,
            &["example.test", "a.b.example.test", "other.test"],
            now,
            0,
        );
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("a.b.example.test"), "{w:?}");
        assert!(w[0].contains("example.test, *.example.test"), "{w:?}");
        assert!(w[1].contains("other.test"), "{w:?}");
        // Garbage.
        let w = cert_warnings(b"junk", &["example.test"], now, 30);
        assert_eq!(w.len(), 1, "{w:?}");
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
