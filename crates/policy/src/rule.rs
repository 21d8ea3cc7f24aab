//! Policy entries ("policy exceptions" in Cisco IM&P terms): a domain pattern
//! plus the traffic direction it applies to, their parsing and validation,
//! and the serde form embedded in configuration files.

use std::borrow::Cow;
use std::fmt;

use causeway_xmpp::addr::AddrError;

use crate::{normalize_domain, Direction, PolicyError};

/// The domain part of a [`Rule`].
///
/// Built by [`Pattern::parse`] (or [`Rule::parse`]), the inner string is the domain's
/// normalized form ([`crate::normalize_domain`]: A-labels, lowercase, no trailing dot).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Pattern {
    /// Exactly this domain (`partner.test`).
    Exact(String),
    /// Written `*.partner.test`, stored as `partner.test`: matches
    /// `partner.test` itself and every subdomain of it (`a.partner.test`,
    /// `b.a.partner.test`), but not `evilpartner.test`.
    Suffix(String),
}

/// Which traffic a [`Rule`] applies to.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize, serde::Serialize,
)]
pub enum RuleDirection {
    /// Both directions (the default). Also accepted as `"both"`.
    #[default]
    #[serde(rename = "all", alias = "both")]
    All,
    /// Only traffic from the remote domain to us. Also accepted as `"inbound"`.
    #[serde(rename = "incoming", alias = "inbound")]
    Inbound,
    /// Only traffic from us to the remote domain. Also accepted as `"outbound"`.
    #[serde(rename = "outgoing", alias = "outbound")]
    Outbound,
}

/// One allow or deny entry: a domain pattern scoped to a direction.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule {
    /// The domain(s) the rule is about.
    pub pattern: Pattern,
    /// The traffic it applies to.
    pub direction: RuleDirection,
}

/// The serde (TOML / JSON) form of a [`Rule`], for embedding in a config file:
///
/// ```toml
/// allow = [
///     "partner.test",                                      # all traffic
///     "*.partner2.test",                                   # all traffic
///     { domain = "*.vendor.test", direction = "incoming" },
///     { domain = "feeds.test", direction = "outgoing" },
/// ]
/// ```
///
/// Deserializing does not validate the domain; [`RuleConfig::to_rule`] (or
/// [`crate::Policy::from_config`]) does, and names the entry in its error.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(untagged)]
pub enum RuleConfig {
    /// A plain string: the pattern, applying to all traffic.
    Domain(String),
    /// A table with the pattern and a direction.
    Scoped(ScopedRuleConfig),
}

/// The table form of a [`RuleConfig`]: `{ domain = "...", direction = "..." }`.
/// Unknown keys are refused (a misspelt `direction` must not silently widen a
/// rule to all traffic).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScopedRuleConfig {
    /// `partner.test` or `*.partner.test`.
    pub domain: String,
    /// `all` (default), `incoming` or `outgoing`.
    #[serde(default)]
    pub direction: RuleDirection,
}

impl RuleDirection {
    /// Does a rule with this scope apply to traffic in `direction`?
    pub fn covers(self, direction: Direction) -> bool {
        matches!(
            (self, direction),
            (RuleDirection::All, _)
                | (RuleDirection::Inbound, Direction::Inbound)
                | (RuleDirection::Outbound, Direction::Outbound)
        )
    }

    /// Is there a direction both scopes apply to?
    pub fn overlaps(self, other: RuleDirection) -> bool {
        self == RuleDirection::All || other == RuleDirection::All || self == other
    }

    /// Does this scope apply to every direction `other` applies to?
    pub fn includes(self, other: RuleDirection) -> bool {
        self == RuleDirection::All || self == other
    }
}

impl fmt::Display for RuleDirection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RuleDirection::All => "all",
            RuleDirection::Inbound => "incoming",
            RuleDirection::Outbound => "outgoing",
        })
    }
}

impl From<Direction> for RuleDirection {
    fn from(d: Direction) -> Self {
        match d {
            Direction::Inbound => RuleDirection::Inbound,
            Direction::Outbound => RuleDirection::Outbound,
        }
    }
}

/// The comparable form of a possibly hand-built pattern string: trimmed, one trailing dot
/// dropped (and, for a suffix, a leading `*.`). ASCII stays as written (compared
/// ASCII-case-insensitively); anything else goes through the normaliser, and a pattern it
/// refuses matches nothing.
fn comparable(p: &str, suffix: bool) -> Cow<'_, str> {
    let p = p.trim();
    let p = if suffix {
        p.strip_prefix("*.").unwrap_or(p)
    } else {
        p
    };
    if p.is_ascii() {
        return Cow::Borrowed(p.strip_suffix('.').unwrap_or(p));
    }
    Cow::Owned(normalize_domain(p).unwrap_or_default())
}

impl Pattern {
    /// Parse and validate `*.example.com` (suffix) or `example.com` (exact).
    ///
    /// Input is trimmed; the domain (after `*.` for a wildcard) goes through the one domain
    /// normaliser, [`crate::normalize_domain`]: UTS-46 to A-labels, lowercase, one trailing
    /// dot dropped, so `exämple.com`, `EXÄMPLE.COM.` and `xn--exmple-cua.com` are the same
    /// pattern. Refused, with [`PolicyError::BadPattern`] naming `entry` as given and the rule
    /// broken: an empty entry, a lone `*`, a `*` anywhere but a leading `*.` label, a wildcard
    /// over a single label (`*.com`), whitespace inside the entry, and whatever the normaliser
    /// refuses (characters other than letters, digits, `-` and `.` after mapping, bad
    /// `xn--` labels, empty labels, labels over 63 characters or starting or ending with `-`,
    /// a last label starting with a digit (IP addresses), domains over 253 characters).
    pub fn parse(entry: &str) -> Result<Pattern, PolicyError> {
        let bad = |reason: &'static str| PolicyError::BadPattern {
            entry: entry.to_owned(),
            reason,
        };
        let core = entry.trim();
        if core.is_empty() || core == "." {
            return Err(bad("empty entry"));
        }
        if core == "*" || core == "*." {
            return Err(bad(
                "a lone \"*\" would match every domain (use privacy mode off or deny-list instead)",
            ));
        }
        let (suffix, domain) = match core.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, core),
        };
        if domain.contains('*') {
            return Err(bad("\"*\" is only allowed as a leading \"*.\" label"));
        }
        if domain.chars().any(char::is_whitespace) {
            return Err(bad("whitespace inside the entry (give a direction with the table form { domain = \"...\", direction = \"incoming\" })"));
        }
        let domain = normalize_domain(domain).map_err(|e| match e {
            AddrError::Domain(_, rule) => bad(rule),
            AddrError::Jid(_) => bad("not a domain"),
        })?;
        if suffix {
            if !domain.contains('.') {
                return Err(bad("wildcard over a top-level domain"));
            }
            Ok(Pattern::Suffix(domain))
        } else {
            Ok(Pattern::Exact(domain))
        }
    }

    /// Does the pattern match `domain` (normalized here with [`crate::normalize_domain`])?
    /// A domain the normaliser refuses (empty, malformed) never matches.
    pub fn matches(&self, domain: &str) -> bool {
        normalize_domain(domain).is_ok_and(|d| self.matches_normalized(&d))
    }

    /// Matching against an already normalized remote domain. Tolerates a hand-built pattern
    /// (see [`comparable`]): compared ASCII-case-insensitively, ignoring surrounding
    /// whitespace, a trailing dot and (for a suffix) a leading `*.`. An empty pattern matches
    /// nothing.
    pub(crate) fn matches_normalized(&self, remote: &str) -> bool {
        let remote = remote.as_bytes();
        match self {
            Pattern::Exact(p) => {
                let p = comparable(p, false);
                !p.is_empty() && remote.eq_ignore_ascii_case(p.as_bytes())
            }
            Pattern::Suffix(p) => {
                let p = comparable(p, true);
                let p = p.as_bytes();
                if p.is_empty() || remote.len() < p.len() {
                    return false;
                }
                let split = remote.len() - p.len();
                remote[split..].eq_ignore_ascii_case(p)
                    && (split == 0 || (split >= 2 && remote[split - 1] == b'.'))
            }
        }
    }

    /// Is every domain this pattern matches also matched by `other`?
    pub fn is_covered_by(&self, other: &Pattern) -> bool {
        match (self, other) {
            (Pattern::Exact(a), Pattern::Exact(b)) => a == b,
            (Pattern::Suffix(_), Pattern::Exact(_)) => false,
            (Pattern::Exact(a) | Pattern::Suffix(a), Pattern::Suffix(_)) => {
                other.matches_normalized(a)
            }
        }
    }

    /// The normalized, validated form of a possibly hand-built pattern.
    fn validated(&self) -> Result<Pattern, PolicyError> {
        match self {
            Pattern::Exact(d) => match Pattern::parse(d)? {
                // A hand-built `Exact("*.x")` is not an exact domain.
                Pattern::Suffix(_) => Err(PolicyError::BadPattern {
                    entry: d.clone(),
                    reason: "\"*\" is not allowed in an exact domain",
                }),
                exact => Ok(exact),
            },
            Pattern::Suffix(d) => {
                let d = d.trim();
                Pattern::parse(&format!("*.{}", d.strip_prefix("*.").unwrap_or(d)))
            }
        }
    }
}

impl fmt::Display for Pattern {
    /// `partner.test` or `*.partner.test`, as written in a config file.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Exact(d) => f.write_str(d),
            Pattern::Suffix(d) => write!(f, "*.{d}"),
        }
    }
}

impl Rule {
    /// Parse a pattern (see [`Pattern::parse`]) into a rule for all traffic.
    pub fn parse(s: &str) -> Result<Rule, PolicyError> {
        Rule::with_direction(s, RuleDirection::All)
    }

    /// Parse a pattern into a rule for the given traffic.
    pub fn with_direction(s: &str, direction: RuleDirection) -> Result<Rule, PolicyError> {
        Ok(Rule {
            pattern: Pattern::parse(s)?,
            direction,
        })
    }

    /// Does the rule apply to `domain` (normalized here) in `direction`?
    pub fn matches(&self, domain: &str, direction: Direction) -> bool {
        self.direction.covers(direction) && self.pattern.matches(domain)
    }

    pub(crate) fn matches_normalized(&self, remote: &str, direction: Direction) -> bool {
        self.direction.covers(direction) && self.pattern.matches_normalized(remote)
    }

    /// The normalized, validated form of a possibly hand-built rule.
    pub(crate) fn validated(&self) -> Result<Rule, PolicyError> {
        Ok(Rule {
            pattern: self.pattern.validated()?,
            direction: self.direction,
        })
    }
}

impl fmt::Display for Rule {
    /// `*.partner.test`, or `*.partner.test (incoming only)` when scoped.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.direction {
            RuleDirection::All => write!(f, "{}", self.pattern),
            d => write!(f, "{} ({d} only)", self.pattern),
        }
    }
}

impl std::str::FromStr for Rule {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Rule::parse(s)
    }
}

impl RuleConfig {
    /// Validate into a [`Rule`]; the error names the `domain` as written.
    pub fn to_rule(&self) -> Result<Rule, PolicyError> {
        match self {
            RuleConfig::Domain(d) => Rule::parse(d),
            RuleConfig::Scoped(s) => Rule::with_direction(&s.domain, s.direction),
        }
    }
}

impl TryFrom<&RuleConfig> for Rule {
    type Error = PolicyError;
    fn try_from(c: &RuleConfig) -> Result<Self, Self::Error> {
        c.to_rule()
    }
}

impl From<&Rule> for RuleConfig {
    /// The plain string form for all-traffic rules, the table form otherwise.
    fn from(r: &Rule) -> Self {
        match r.direction {
            RuleDirection::All => RuleConfig::Domain(r.pattern.to_string()),
            direction => RuleConfig::Scoped(ScopedRuleConfig {
                domain: r.pattern.to_string(),
                direction,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(d: &str) -> Pattern {
        Pattern::Exact(d.into())
    }
    fn suffix(d: &str) -> Pattern {
        Pattern::Suffix(d.into())
    }

    #[test]
    fn parse_exact_and_wildcard() {
        assert_eq!(
            Rule::parse("partner.test").expect("valid"),
            Rule {
                pattern: exact("partner.test"),
                direction: RuleDirection::All
            }
        );
        assert_eq!(
            Rule::parse("*.partner.test").expect("valid"),
            Rule {
                pattern: suffix("partner.test"),
                direction: RuleDirection::All
            }
        );
        // Normalization: trim, lowercase, one trailing dot.
        assert_eq!(
            Pattern::parse("  *.Partner.TEST. ").expect("valid"),
            suffix("partner.test")
        );
        assert_eq!(
            Pattern::parse("Partner.Test.").expect("valid"),
            exact("partner.test")
        );
        let r: Rule = "a.test".parse().expect("valid");
        assert_eq!(r.pattern, exact("a.test"));
        assert_eq!(
            Rule::with_direction("*.a.test", RuleDirection::Inbound)
                .expect("valid")
                .direction,
            RuleDirection::Inbound
        );
    }

    #[test]
    fn parse_accepts_valid_syntax() {
        for ok in [
            "localhost",
            "a-b.test",
            "1a.test",
            "xn--bcher-kva.test",
            "*.xn--bcher-kva.test",
            "*.a.b.c.test",
            "a1.b2.test",
        ] {
            Pattern::parse(ok).unwrap_or_else(|e| panic!("{ok:?} refused: {e}"));
        }
        let label63 = "a".repeat(63);
        Pattern::parse(&format!("{label63}.test")).expect("63-character label");
        // 253 characters in total: 3 * 63 + 61 + 3 dots.
        let long = format!("{label63}.{label63}.{label63}.{}", "a".repeat(61));
        assert_eq!(long.len(), 253);
        Pattern::parse(&long).expect("253 characters");
        Pattern::parse(&format!("{long}.")).expect("253 characters plus the trailing dot");
    }

    #[test]
    fn idn_patterns_are_stored_as_a_labels() {
        for entry in [
            "exämple.com",
            "EXÄMPLE.COM.",
            "exämple\u{3002}com",
            "xn--exmple-cua.com",
            " XN--Exmple-CUA.com ",
        ] {
            assert_eq!(
                Pattern::parse(entry).expect("valid"),
                exact("xn--exmple-cua.com"),
                "{entry:?}"
            );
        }
        assert_eq!(
            Pattern::parse("*.Bücher.test").expect("valid"),
            suffix("xn--bcher-kva.test")
        );
        assert_eq!(
            Pattern::parse("*.xn--bcher-kva.test").expect("valid"),
            suffix("xn--bcher-kva.test")
        );
        // U+212A KELVIN SIGN is a K under UTS-46: the rule is k.test, on both sides.
        assert_eq!(
            Pattern::parse("\u{212A}.test").expect("valid"),
            exact("k.test")
        );
        let p = suffix("xn--bcher-kva.test");
        for yes in ["bücher.test", "muc.BÜCHER.test.", "xn--bcher-kva.test"] {
            assert!(p.matches(yes), "{yes}");
        }
        assert!(!p.matches("bucher.test"));
        // A hand-built pattern in U-label form is normalised when matching.
        assert!(exact("exämple.com").matches("xn--exmple-cua.com"));
        assert!(suffix("*.Bücher.test").matches("a.xn--bcher-kva.test"));
        assert!(!exact("bad\u{FFFD}.test").matches("bad.test"));
    }

    #[test]
    fn parse_refusals_name_entry_and_reason() {
        let label64 = "a".repeat(64);
        let long = format!("{}.test", ["abc"; 63].join("."));
        assert!(long.len() > 253);
        let cases: Vec<(String, &str)> = vec![
            ("".into(), "empty entry"),
            ("   ".into(), "empty entry"),
            (".".into(), "empty entry"),
            ("*".into(), "a lone \"*\""),
            ("*.".into(), "a lone \"*\""),
            ("*.com".into(), "wildcard over a top-level domain"),
            ("*.test.".into(), "wildcard over a top-level domain"),
            ("*.*.a.test".into(), "leading \"*.\" label"),
            ("**.a.test".into(), "leading \"*.\" label"),
            ("*a.test".into(), "leading \"*.\" label"),
            ("a.*.test".into(), "leading \"*.\" label"),
            ("partner.*".into(), "leading \"*.\" label"),
            ("*..a.test".into(), "empty label"),
            ("a..test".into(), "empty label"),
            (".a.test".into(), "empty label"),
            ("a.test..".into(), "empty label"),
            ("-a.test".into(), "hyphen"),
            ("a-.test".into(), "hyphen"),
            ("*.a.test-".into(), "hyphen"),
            (format!("{label64}.test"), "longer than 63"),
            (long, "longer than 253"),
            ("a_b.test".into(), "only letters"),
            ("a.test/x".into(), "only letters"),
            ("a.test incoming".into(), "whitespace"),
            ("192.0.2.1".into(), "last label starts with a digit"),
            ("a.1test".into(), "last label starts with a digit"),
            ("xn--zz.test".into(), "xn-- label"),
            ("*.xn--zz.test".into(), "xn-- label"),
            ("bad\u{FFFD}.test".into(), "internationalised"),
            ("\u{05D0}a.test".into(), "bidi"),
            ("*.-bücher.test".into(), "hyphen"),
        ];
        for (entry, want) in cases {
            match Rule::parse(&entry) {
                Err(PolicyError::BadPattern { entry: e, reason }) => {
                    assert_eq!(e, entry, "error names the entry as written");
                    assert!(
                        reason.contains(want),
                        "{entry:?}: reason {reason:?} lacks {want:?}"
                    );
                }
                other => panic!("{entry:?}: expected BadPattern, got {other:?}"),
            }
        }
        let err = Rule::parse("*.com").expect_err("refused");
        assert_eq!(
            err.to_string(),
            "bad policy entry \"*.com\": wildcard over a top-level domain"
        );
    }

    #[test]
    fn wildcard_matches_domain_and_subdomains_only() {
        let p = suffix("example.com");
        for yes in [
            "example.com",
            "a.example.com",
            "b.a.example.com",
            "A.Example.COM.",
        ] {
            assert!(p.matches(yes), "{yes}");
        }
        for no in [
            "evilexample.com",
            "com",
            "example.com.evil",
            "example.co",
            "xample.com",
            ".example.com",
            "",
        ] {
            assert!(!p.matches(no), "{no}");
        }
        let e = exact("example.com");
        assert!(e.matches("EXAMPLE.com."));
        assert!(!e.matches("a.example.com"));
        assert!(!e.matches(""));
    }

    #[test]
    fn chat_node_aliases_are_plain_domains() {
        // A chat node alias (conference.partner.test) is matched like any
        // domain: by the wildcard, not by the exact parent.
        let wild = Rule::parse("*.partner.test").expect("valid");
        let parent = Rule::parse("partner.test").expect("valid");
        for dir in [Direction::Inbound, Direction::Outbound] {
            assert!(wild.matches("conference.partner.test", dir));
            assert!(!parent.matches("conference.partner.test", dir));
        }
    }

    #[test]
    fn direction_scopes() {
        use Direction::{Inbound, Outbound};
        let all = RuleDirection::All;
        let inc = RuleDirection::Inbound;
        let out = RuleDirection::Outbound;
        assert!(all.covers(Inbound) && all.covers(Outbound));
        assert!(inc.covers(Inbound) && !inc.covers(Outbound));
        assert!(out.covers(Outbound) && !out.covers(Inbound));
        assert!(all.overlaps(inc) && inc.overlaps(all) && inc.overlaps(inc));
        assert!(!inc.overlaps(out) && !out.overlaps(inc));
        assert!(all.includes(inc) && inc.includes(inc) && !inc.includes(all));
        assert_eq!(RuleDirection::default(), all);
        assert_eq!(RuleDirection::from(Inbound), inc);
        assert_eq!(RuleDirection::from(Outbound), out);

        let r = Rule::with_direction("partner.test", inc).expect("valid");
        assert!(r.matches("partner.test", Inbound));
        assert!(!r.matches("partner.test", Outbound));
    }

    #[test]
    fn display_forms() {
        assert_eq!(suffix("a.test").to_string(), "*.a.test");
        assert_eq!(exact("a.test").to_string(), "a.test");
        let r = Rule::with_direction("*.a.test", RuleDirection::Outbound).expect("valid");
        assert_eq!(r.to_string(), "*.a.test (outgoing only)");
        assert_eq!(Rule::parse("a.test").expect("valid").to_string(), "a.test");
    }

    #[test]
    fn covered_by() {
        assert!(exact("a.x.test").is_covered_by(&suffix("x.test")));
        assert!(exact("x.test").is_covered_by(&suffix("x.test")));
        assert!(suffix("a.x.test").is_covered_by(&suffix("x.test")));
        assert!(suffix("x.test").is_covered_by(&suffix("x.test")));
        assert!(!suffix("x.test").is_covered_by(&suffix("a.x.test")));
        assert!(!suffix("x.test").is_covered_by(&exact("x.test")));
        assert!(!exact("ax.test").is_covered_by(&suffix("x.test")));
        assert!(exact("x.test").is_covered_by(&exact("x.test")));
        assert!(!exact("y.test").is_covered_by(&exact("x.test")));
    }

    #[test]
    fn hand_built_patterns_are_tolerated_when_matching() {
        assert!(exact(" Mixed.Case.Test. ").matches("mixed.case.test"));
        assert!(suffix("*.Partner.Test.").matches("a.partner.test"));
        assert!(!exact("").matches(""));
        assert!(!suffix("").matches("a.test"));
        assert!(!suffix("*.").matches("a.test"));
    }

    #[test]
    fn config_to_rule_and_back() {
        let plain = RuleConfig::Domain("*.Partner.Test".into());
        let rule = plain.to_rule().expect("valid");
        assert_eq!(rule, Rule::parse("*.partner.test").expect("valid"));
        assert_eq!(
            RuleConfig::from(&rule),
            RuleConfig::Domain("*.partner.test".into())
        );
        let scoped = RuleConfig::Scoped(ScopedRuleConfig {
            domain: "feeds.test".into(),
            direction: RuleDirection::Outbound,
        });
        let rule = Rule::try_from(&scoped).expect("valid");
        assert_eq!(rule.direction, RuleDirection::Outbound);
        assert_eq!(RuleConfig::from(&rule), scoped);
        match RuleConfig::Domain("*.com".into()).to_rule() {
            Err(PolicyError::BadPattern { entry, .. }) => assert_eq!(entry, "*.com"),
            other => panic!("expected BadPattern, got {other:?}"),
        }
    }
}
