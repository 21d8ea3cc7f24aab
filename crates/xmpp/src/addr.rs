//! Address validation: JIDs (RFC 7622) and domain names, and the one domain normaliser every
//! comparison of domains goes through.
//!
//! [`normalize_domain`] turns any spelling of a domain into one canonical form: UTS-46
//! processing (non-transitional, STD3 rules, bidi and joiner checks) to ASCII, so U-labels
//! become A-labels, letters are lowercase, full-width and ideographic dots are dots, and one
//! trailing dot (the fully qualified form) is dropped. `exämple.com`, `EXÄMPLE.COM.`,
//! `exämple。com` and `xn--exmple-cua.com` are all `xn--exmple-cua.com`. The framer's stream
//! headers, dialback, SASL EXTERNAL, the stanza checks, the privacy policy and the
//! configuration all use it, so a domain written one way can never slip past a rule or a
//! session written the other.

use std::borrow::Cow;

use idna::uts46::{AsciiDenyList, DnsLength, Hyphens, Uts46};

/// Why an address was rejected.
#[derive(Debug, thiserror::Error)]
pub enum AddrError {
    /// Not a valid JID.
    #[error("invalid JID {0:?}")]
    Jid(String),
    /// Not a valid domain name; the second field names the rule broken.
    #[error("invalid domain {0:?}: {1}")]
    Domain(String, &'static str),
}

/// Longest input [`normalize_domain`] looks at, in bytes. A domain is at most 253 characters
/// in ASCII form; a U-label spelling may take several bytes per character, and mapping may
/// drop ignorable ones (soft hyphens), so the bound is generous, but it keeps what a peer can
/// make UTS-46 processing chew on small.
pub const MAX_DOMAIN_INPUT: usize = 1024;

/// Longest domain in its normalised (ASCII, no trailing dot) form, per RFC 1035's 255-octet
/// wire limit.
pub const MAX_DOMAIN_LEN: usize = 253;

/// Longest JID RFC 7622 allows: three parts of 1023 bytes each and two separators.
const MAX_JID_LEN: usize = 3 * 1023 + 2;

/// Rules a domain may break (the second field of [`AddrError::Domain`]).
mod rule {
    pub const EMPTY: &str = "empty";
    pub const INPUT_TOO_LONG: &str = "longer than 1024 bytes before normalisation";
    pub const LDH: &str = "only letters, digits, hyphen and dot are allowed";
    pub const HYPHEN: &str = "label starts or ends with a hyphen";
    pub const A_LABEL: &str = "xn-- label is not the punycode of a valid label";
    pub const UTS46: &str =
        "not a valid internationalised name (disallowed character, or bidi or joiner rule)";
    pub const EMPTY_LABEL: &str = "empty label";
    pub const LABEL_TOO_LONG: &str = "label longer than 63 characters";
    pub const TOO_LONG: &str = "longer than 253 characters";
    pub const NUMERIC_TLD: &str = "last label starts with a digit (IP addresses are not domains)";
    pub const IP_LITERAL: &str = "an IP literal is not a federation domain";
}

/// A JID in parts, each prepared: the local part and resource by RFC 7622 (the `jid` crate's
/// nodeprep and resourceprep), the domain by [`normalize_domain`] (see [`jid_domain`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JidParts {
    /// The local part, if any.
    pub local: Option<String>,
    /// The domain part, normalised.
    pub domain: String,
    /// The resource, if any.
    pub resource: Option<String>,
}

/// Parse a JID into its prepared parts; refused as [`jid_domain`] refuses.
pub fn parse_jid(jid: &str) -> Result<JidParts, AddrError> {
    let (local, domain, resource) = split_jid(jid)?;
    Ok(JidParts {
        local: local.map(|l| l.as_str().to_owned()),
        domain: federation_domain(domain)?,
        resource: resource.map(|r| r.as_str().to_owned()),
    })
}

/// The federation domain of a JID: its domain part through [`normalize_domain`].
///
/// The local part and resource, when present, are checked with the `jid` crate (RFC 7622
/// nodeprep and resourceprep); the domain part is cut out by RFC 7622 3.2 and normalised here
/// rather than taken from the `jid` crate, whose IDNA2003 nameprep maps some names differently
/// (`faß.de` to `fass.de`, where UTS-46 non-transitional gives `xn--fa-hia.de`): a stanza's
/// domain must compare equal to the stream's authenticated one, spelt any way.
///
/// RFC 7622 allows IP literals (`192.0.2.1`, `[::1]`) as domain parts; server-to-server
/// domains never are, so they are refused here with a rule of their own.
pub fn jid_domain(jid: &str) -> Result<String, AddrError> {
    let (_, domain, _) = split_jid(jid)?;
    federation_domain(domain)
}

/// A JID's prepared local part and resource (borrowed where preparation changed nothing) and
/// its domain part as written.
type SplitJid<'a> = (
    Option<Cow<'a, jid::NodeRef>>,
    &'a str,
    Option<Cow<'a, jid::ResourceRef>>,
);

/// Cut `jid` into its parts (RFC 7622 3.2), checking the local part and resource.
fn split_jid(jid: &str) -> Result<SplitJid<'_>, AddrError> {
    let bad_jid = || AddrError::Jid(jid.to_owned());
    if jid.len() > MAX_JID_LEN {
        return Err(bad_jid());
    }
    let (bare, resource) = match jid.split_once('/') {
        Some((bare, resource)) => (bare, Some(resource)),
        None => (jid, None),
    };
    let (local, domain) = match bare.split_once('@') {
        Some((local, domain)) => (Some(local), domain),
        None => (None, bare),
    };
    if domain.contains('@') {
        return Err(bad_jid());
    }
    let local = local
        .map(jid::NodePart::new)
        .transpose()
        .map_err(|_| bad_jid())?;
    let resource = resource
        .map(jid::ResourcePart::new)
        .transpose()
        .map_err(|_| bad_jid())?;
    Ok((local, domain, resource))
}

/// A JID's domain part as a federation domain: normalised, never an IP literal.
fn federation_domain(domain: &str) -> Result<String, AddrError> {
    if is_ip_literal(domain) {
        return Err(AddrError::Domain(domain.to_owned(), rule::IP_LITERAL));
    }
    normalize_domain(domain)
}

/// An IPv4 address or a bracketed IPv6 address, as RFC 7622 3.2 allows for a domain part.
fn is_ip_literal(domain: &str) -> bool {
    let d = domain.strip_suffix('.').unwrap_or(domain);
    d.parse::<std::net::Ipv4Addr>().is_ok()
        || d.strip_prefix('[')
            .and_then(|d| d.strip_suffix(']'))
            .is_some_and(|d| d.parse::<std::net::Ipv6Addr>().is_ok())
}

/// The canonical form of a domain, whoever wrote it (a peer, a core, an administrator).
///
/// In order: refuse empty input and input over [`MAX_DOMAIN_INPUT`] bytes (before any
/// Unicode processing); UTS-46 ToASCII, non-transitional, with the STD3 ASCII rules (letters,
/// digits and hyphen only) and no hyphen first or last in a label, U-label or A-label; lowercase;
/// drop one trailing dot; then on the ASCII form: labels of 1 to 63 characters, at most
/// [`MAX_DOMAIN_LEN`] characters, and a last label that does not start with a digit (so an
/// IPv4 address is never taken for a domain). Errors name the input as given and the rule.
pub fn normalize_domain(s: &str) -> Result<String, AddrError> {
    let fail = |rule: &'static str| Err(AddrError::Domain(s.to_owned(), rule));
    if s.is_empty() {
        return fail(rule::EMPTY);
    }
    if s.len() > MAX_DOMAIN_INPUT {
        return fail(rule::INPUT_TOO_LONG);
    }
    // An ASCII label keeps its length through UTS-46 (lowercase only), so one over 63 is
    // refused before processing: decoding a long `xn--` label costs time and memory that
    // grow faster than the label (found by fuzzing: 29 KB held for a 532-byte label).
    if s.split(['.', '\u{3002}', '\u{FF0E}', '\u{FF61}'])
        .any(|label| label.is_ascii() && label.len() > 63)
    {
        return fail(rule::LABEL_TOO_LONG);
    }
    let ascii = match to_ascii(s, Hyphens::CheckFirstLast) {
        Ok(a) => a,
        Err(()) => return fail(diagnose(s)),
    };
    let mut ascii = ascii.into_owned();
    ascii.make_ascii_lowercase();
    if ascii.ends_with('.') {
        ascii.pop();
    }
    match check_structure(&ascii) {
        Ok(()) => Ok(ascii),
        Err(rule) => fail(rule),
    }
}

/// UTS-46 ToASCII as [`normalize_domain`] runs it; length checks are left to the caller, so
/// that their failures can be named.
fn to_ascii(s: &str, hyphens: Hyphens) -> Result<Cow<'_, str>, ()> {
    Uts46::new()
        .to_ascii(
            s.as_bytes(),
            AsciiDenyList::STD3,
            hyphens,
            DnsLength::Ignore,
        )
        .map_err(|_| ())
}

/// Which rule an input UTS-46 refused broke (the `idna` crate does not say). Runs only on
/// refused input, already bounded by [`MAX_DOMAIN_INPUT`].
fn diagnose(s: &str) -> &'static str {
    if s.bytes()
        .any(|b| b.is_ascii() && !(b.is_ascii_alphanumeric() || b == b'-' || b == b'.'))
    {
        return rule::LDH;
    }
    if to_ascii(s, Hyphens::Allow).is_ok() {
        return rule::HYPHEN;
    }
    let bad_a_label = s
        .split(['.', '\u{3002}', '\u{FF0E}', '\u{FF61}'])
        .filter(|label| {
            label
                .get(..4)
                .is_some_and(|p| p.eq_ignore_ascii_case("xn--"))
        })
        .any(|label| to_ascii(label, Hyphens::CheckFirstLast).is_err());
    if bad_a_label {
        return rule::A_LABEL;
    }
    rule::UTS46
}

/// The structural rules, on the lowercase ASCII form without its trailing dot.
fn check_structure(d: &str) -> Result<(), &'static str> {
    if d.is_empty() {
        return Err(rule::EMPTY);
    }
    if d.len() > MAX_DOMAIN_LEN {
        return Err(rule::TOO_LONG);
    }
    for label in d.split('.') {
        check_label(label)?;
    }
    if d.rsplit('.')
        .next()
        .is_some_and(|last| last.starts_with(|c: char| c.is_ascii_digit()))
    {
        return Err(rule::NUMERIC_TLD);
    }
    Ok(())
}

fn check_label(label: &str) -> Result<(), &'static str> {
    if label.is_empty() {
        return Err(rule::EMPTY_LABEL);
    }
    if label.len() > 63 {
        return Err(rule::LABEL_TOO_LONG);
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(rule::HYPHEN);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(s: &str) -> Option<&'static str> {
        match normalize_domain(s) {
            Err(AddrError::Domain(d, rule)) => {
                assert_eq!(d, s, "the error names the input as given");
                Some(rule)
            }
            Err(AddrError::Jid(_)) => panic!("wrong error kind"),
            Ok(_) => None,
        }
    }

    fn norm(s: &str) -> Option<String> {
        normalize_domain(s).ok()
    }

    #[test]
    fn ascii_domains_are_lowercased() {
        assert_eq!(
            norm("XMPP.Example.COM").as_deref(),
            Some("xmpp.example.com")
        );
        assert_eq!(norm("a-b.c1").as_deref(), Some("a-b.c1"));
        assert_eq!(norm("localhost").as_deref(), Some("localhost"));
        // Hyphens inside a label, even in the third and fourth place, are fine.
        assert_eq!(
            norm("r3---sn-a.example").as_deref(),
            Some("r3---sn-a.example")
        );
    }

    #[test]
    fn every_spelling_of_an_idn_is_one_a_label() {
        for spelling in [
            "exämple.com",
            "EXÄMPLE.COM",
            "Exämple.Com.",
            "exämple\u{3002}com",
            "exämple\u{FF0E}com",
            "exämple\u{FF61}com",
            "xn--exmple-cua.com",
            "XN--EXMPLE-CUA.COM",
            "xn--exmple-cua.com.",
            // A decomposed ä (a + combining diaeresis) is composed (NFC) first.
            "exa\u{0308}mple.com",
        ] {
            assert_eq!(
                norm(spelling).as_deref(),
                Some("xn--exmple-cua.com"),
                "{spelling:?}"
            );
        }
    }

    #[test]
    fn mapping_is_uts46_non_transitional() {
        // U+212A KELVIN SIGN maps to an ASCII k.
        assert_eq!(norm("\u{212A}.test").as_deref(), Some("k.test"));
        // Full-width letters map to ASCII; a soft hyphen is ignored.
        assert_eq!(
            norm("\u{FF25}\u{FF38}ample.com").as_deref(),
            Some("example.com")
        );
        assert_eq!(norm("exa\u{00AD}mple.com").as_deref(), Some("example.com"));
        // Non-transitional: ß stays ß (an A-label), not "ss".
        assert_eq!(norm("faß.de").as_deref(), Some("xn--fa-hia.de"));
        assert_eq!(norm("Faß.DE").as_deref(), Some("xn--fa-hia.de"));
    }

    #[test]
    fn one_trailing_dot_is_dropped() {
        assert_eq!(norm("example.com.").as_deref(), Some("example.com"));
        assert_eq!(norm("example.com\u{3002}").as_deref(), Some("example.com"));
        assert_eq!(rule("."), Some("empty"));
        assert_eq!(rule("\u{3002}"), Some("empty"));
        assert_eq!(rule(".."), Some("empty label"));
        assert_eq!(rule("example.com.."), Some("empty label"));
    }

    #[test]
    fn each_rule_is_named() {
        assert_eq!(rule(""), Some("empty"));
        assert_eq!(rule("a..b"), Some("empty label"));
        assert_eq!(rule(".a.com"), Some("empty label"));
        assert_eq!(rule("-a.com"), Some(rule::HYPHEN));
        assert_eq!(rule("a-.com"), Some(rule::HYPHEN));
        assert_eq!(rule("-ä.com"), Some(rule::HYPHEN));
        assert_eq!(
            rule(&format!("{}.com", "a".repeat(64))),
            Some("label longer than 63 characters")
        );
        assert_eq!(
            rule(&format!("{}.com", "ä".repeat(60))),
            Some(rule::LABEL_TOO_LONG)
        );
        // A long A-label is refused before it is decoded (the fuzzer's finding).
        assert_eq!(
            rule(&format!("xn--{}.com", "g".repeat(600))),
            Some(rule::LABEL_TOO_LONG)
        );
        assert_eq!(
            rule(&format!("{}\u{3002}com", "a".repeat(64))),
            Some(rule::LABEL_TOO_LONG)
        );
        for ascii in [
            "a_b.com",
            "a b.com",
            "a.com/x",
            "[::1]",
            "a@b.com",
            "a\u{0}.com",
        ] {
            assert_eq!(rule(ascii), Some(rule::LDH), "{ascii:?}");
        }
        assert_eq!(rule("10.0.0.1"), Some(rule::NUMERIC_TLD));
        assert_eq!(rule("a.1com"), Some(rule::NUMERIC_TLD));
        assert_eq!(norm("1a.com").as_deref(), Some("1a.com"));
    }

    #[test]
    fn lengths_are_bounded_before_and_after_processing() {
        // 253 characters: fine; 254 (without a trailing dot): refused.
        let label63 = "a".repeat(63);
        let d253 = format!("{label63}.{label63}.{label63}.{}", "a".repeat(61));
        assert_eq!(d253.len(), 253);
        assert_eq!(norm(&d253).as_deref(), Some(d253.as_str()));
        assert_eq!(norm(&format!("{d253}.")).as_deref(), Some(d253.as_str()));
        let d254 = format!("{d253}a");
        assert_eq!(rule(&d254), Some(rule::TOO_LONG));
        // Over the input bound: refused before UTS-46 looks at it.
        let huge = "ä".repeat(MAX_DOMAIN_INPUT / 2 + 1);
        assert_eq!(rule(&huge), Some(rule::INPUT_TOO_LONG));
        let exactly = format!("{}.com", "a".repeat(MAX_DOMAIN_INPUT - 4));
        assert_eq!(rule(&exactly), Some(rule::LABEL_TOO_LONG));
        let many_labels = vec!["abc"; MAX_DOMAIN_INPUT / 4].join(".");
        assert_eq!(rule(&many_labels), Some(rule::TOO_LONG));
        // Soft hyphens vanish in mapping: the ASCII form is what the length rules judge.
        let soft = format!("a{}.com", "\u{00AD}".repeat(400));
        assert_eq!(norm(&soft).as_deref(), Some("a.com"));
    }

    #[test]
    fn uts46_refusals_are_named() {
        assert_eq!(rule("xn--zz"), Some(rule::A_LABEL));
        assert_eq!(rule("xn--zz.com"), Some(rule::A_LABEL));
        assert_eq!(rule("xn--.com"), Some(rule::A_LABEL));
        // An A-label of an all-ASCII label is not an A-label.
        assert_eq!(rule("xn--abc-.com"), Some(rule::A_LABEL));
        // Disallowed code points.
        assert_eq!(rule("\u{FFFD}.com"), Some(rule::UTS46));
        assert_eq!(rule("a\u{2028}b.com"), Some(rule::UTS46));
        // A zero width joiner outside its context (CONTEXTJ).
        assert_eq!(rule("a\u{200D}b.com"), Some(rule::UTS46));
        // Bidi rule: a right-to-left label with a left-to-right letter, or starting with a
        // digit.
        assert_eq!(rule("\u{05D0}a.com"), Some(rule::UTS46));
        assert_eq!(rule("0\u{05D0}.com"), Some(rule::UTS46));
        // A right-to-left label that follows the rules is fine.
        assert_eq!(norm("\u{05D0}.com").as_deref(), Some("xn--4db.com"));
        // Full-width underscore maps to a disallowed ASCII character.
        assert_eq!(rule("a\u{FF3F}b.com"), Some(rule::UTS46));
    }

    #[test]
    fn normalising_twice_changes_nothing() {
        for s in [
            "exämple.com",
            "Faß.de.",
            "\u{212A}.TEST",
            "a-b.c1",
            "xn--4db.com",
        ] {
            let once = norm(s).expect("valid");
            assert_eq!(norm(&once).as_deref(), Some(once.as_str()), "{s:?}");
        }
    }

    #[test]
    fn jid_domains() {
        assert_eq!(
            jid_domain("user@Example.ORG/res").ok().as_deref(),
            Some("example.org")
        );
        assert_eq!(
            jid_domain("example.org").ok().as_deref(),
            Some("example.org")
        );
        assert_eq!(
            jid_domain("example.org./res").ok().as_deref(),
            Some("example.org")
        );
        // The same normaliser as for stream and dialback domains, whatever the spelling.
        for jid in [
            "user@exämple.com",
            "user@EXÄMPLE.com/r",
            "exämple\u{3002}com",
            "user@xn--exmple-cua.com/a@b/c",
        ] {
            assert_eq!(
                jid_domain(jid).ok().as_deref(),
                Some("xn--exmple-cua.com"),
                "{jid:?}"
            );
        }
        // Where nameprep (IDNA2003) would say fass.de.
        assert_eq!(
            jid_domain("user@faß.de").ok(),
            normalize_domain("faß.de").ok()
        );
        assert!(matches!(jid_domain("@example.org"), Err(AddrError::Jid(_))));
        assert!(matches!(jid_domain("example.org/"), Err(AddrError::Jid(_))));
        assert!(matches!(jid_domain("a@b@c"), Err(AddrError::Jid(_))));
        assert!(matches!(
            jid_domain("a b@example.org"),
            Err(AddrError::Jid(_))
        ));
        let huge = format!("{}@example.org", "a".repeat(MAX_JID_LEN));
        assert!(matches!(jid_domain(&huge), Err(AddrError::Jid(_))));
        assert!(matches!(
            jid_domain(""),
            Err(AddrError::Domain(_, rule::EMPTY))
        ));
        assert!(matches!(
            jid_domain("user@a_b.example"),
            Err(AddrError::Domain(_, rule::LDH))
        ));
    }

    #[test]
    fn jids_in_parts() {
        assert_eq!(
            parse_jid("Ana@BÜCHER.test./phone").ok(),
            Some(JidParts {
                local: Some("ana".into()),
                domain: "xn--bcher-kva.test".into(),
                resource: Some("phone".into()),
            })
        );
        assert_eq!(
            parse_jid("bücher.test").ok(),
            Some(JidParts {
                local: None,
                domain: "xn--bcher-kva.test".into(),
                resource: None,
            })
        );
        // A resource may hold '@' and '/'.
        assert_eq!(
            parse_jid("a@b.test/c@d/e").ok().and_then(|p| p.resource),
            Some("c@d/e".into())
        );
        assert!(matches!(parse_jid("a@@b.test"), Err(AddrError::Jid(_))));
        assert!(matches!(
            parse_jid("a@[::1]"),
            Err(AddrError::Domain(_, rule::IP_LITERAL))
        ));
    }

    #[test]
    fn ip_literal_jids_are_not_federation_domains() {
        for jid in [
            "user@192.0.2.1",
            "192.0.2.1/r",
            "user@[::1]",
            "[2001:db8::1]",
        ] {
            assert!(
                matches!(jid_domain(jid), Err(AddrError::Domain(_, rule::IP_LITERAL))),
                "{jid:?}"
            );
        }
    }

    #[test]
    fn error_messages_name_the_problem() {
        let e = normalize_domain("-x").err().map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("invalid domain \"-x\": label starts or ends with a hyphen")
        );
    }
}
