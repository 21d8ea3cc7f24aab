//! causeway-policy: the federation privacy policy of the gateway.
//!
//! Pure decision logic, no I/O. A [`Policy`] answers one question: may the
//! gateway exchange traffic with a given remote XMPP domain in a given
//! [`Direction`]? It mirrors the "federation privacy mode" of Cisco
//! Expressway and the "policy exceptions" of Cisco IM&P:
//!
//! * [`PrivacyMode::Off`]: every remote domain is allowed.
//! * [`PrivacyMode::AllowList`] (the default): only domains matched by an
//!   allow rule, or domains that have a static route configured, are allowed.
//! * [`PrivacyMode::DenyList`]: every domain is allowed except those matched
//!   by a deny rule.
//!
//! # Rules
//!
//! Each allow / deny entry is a [`Rule`]: a [`Pattern`], either an exact
//! domain (`partner.test`) or a wildcard (`*.partner.test`, matching
//! `partner.test` itself and every subdomain of it), scoped to a
//! [`RuleDirection`]: all traffic (the default), incoming only or outgoing
//! only. Chat node aliases (`conference.partner.test`) are ordinary domains:
//! `*.partner.test` matches them, `partner.test` does not.
//!
//! # Domain forms
//!
//! Rules and remote domains both go through the one domain normaliser of the
//! gateway, [`normalize_domain`] (`causeway_xmpp::addr`): UTS-46
//! non-transitional processing to A-labels, lowercase, one trailing dot
//! dropped. A rule may be written in either form (`exämple.com` or
//! `xn--exmple-cua.com`) and matches the domain however the peer spells it
//! (`EXÄMPLE.COM.`, `exämple。com`). A remote domain the normaliser refuses
//! matches no rule and is always denied ([`DenyReason::Malformed`]), whatever
//! the mode.
//!
//! In configuration files an entry is a [`RuleConfig`]: a plain string (all
//! traffic) or a table `{ domain = "*.partner.test", direction = "incoming" }`.
//!
//! # Precedence
//!
//! * A malformed remote domain: deny, whatever the mode.
//! * Off: allow, whatever the lists say.
//! * Allow-list: a deny rule matching the domain in this direction wins over
//!   everything (an allow rule, however specific, and a static route). Else an
//!   allow rule matching in this direction allows; else a static route allows
//!   (in both directions); else deny.
//! * Deny-list: a deny rule matching in this direction denies; else allow.
//!   Allow rules and static routes are not consulted.
//!
//! A pattern on both lists with overlapping directions is refused when the
//! policy is built ([`PolicyError::Conflict`]); overlaps of different patterns
//! (`*.partner.test` allowed, `bad.partner.test` denied) are legitimate and
//! resolved by the rules above. [`Policy::shadowed_allow_rules`] lists allow
//! rules that can never take effect, for a startup warning.

#![forbid(unsafe_code)]

use std::fmt;

use causeway_xmpp::addr::AddrError;

mod rule;

pub use causeway_xmpp::addr::normalize_domain;

pub use rule::{Pattern, Rule, RuleConfig, RuleDirection, ScopedRuleConfig};

/// Which list, if any, governs federation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum PrivacyMode {
    /// No restriction: every remote domain is allowed.
    Off,
    /// Only listed domains (and statically routed domains) are allowed.
    #[default]
    AllowList,
    /// Every domain is allowed except the listed ones.
    DenyList,
}

/// Direction of the traffic being checked, seen from our side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// A remote domain connects to / sends stanzas to us.
    Inbound,
    /// We connect to / send stanzas to a remote domain.
    Outbound,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Inbound => "incoming",
            Direction::Outbound => "outgoing",
        })
    }
}

/// Result of a policy check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Traffic may flow.
    Allow,
    /// Traffic must be refused, for the given reason.
    Deny(DenyReason),
}

impl Verdict {
    /// `true` for [`Verdict::Allow`].
    pub fn is_allowed(&self) -> bool {
        matches!(self, Verdict::Allow)
    }
}

/// Why a domain was denied; its [`Display`](fmt::Display) is meant for logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DenyReason {
    /// Allow-list mode: no allow rule matches the domain in this direction
    /// and it has no static route.
    NotOnAllowList {
        /// The direction checked.
        direction: Direction,
        /// An allow rule that matches the domain but is scoped to the other
        /// direction only, if any: the usual cause of a surprise.
        other_direction: Option<Rule>,
    },
    /// A deny rule matches the domain in this direction.
    OnDenyList {
        /// The direction checked.
        direction: Direction,
        /// The (first) deny rule that matched.
        rule: Rule,
    },
    /// The remote domain is not a domain at all ([`normalize_domain`] refused
    /// it: empty, malformed, an IP address): it matches no rule and is denied
    /// in every mode.
    Malformed {
        /// The direction checked.
        direction: Direction,
        /// The rule of the normaliser it broke.
        rule: &'static str,
    },
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DenyReason::NotOnAllowList {
                direction,
                other_direction,
            } => {
                write!(
                    f,
                    "no federation allow rule matches the domain for {direction} traffic and it has no static route"
                )?;
                if let Some(rule) = other_direction {
                    write!(
                        f,
                        " (allow rule \"{}\" covers {} traffic only)",
                        rule.pattern, rule.direction
                    )?;
                }
                Ok(())
            }
            DenyReason::OnDenyList { direction, rule } => {
                write!(
                    f,
                    "federation deny rule \"{}\" matches the domain",
                    rule.pattern
                )?;
                match rule.direction {
                    RuleDirection::All => write!(f, " (all traffic)"),
                    _ => write!(f, " for {direction} traffic"),
                }
            }
            DenyReason::Malformed { direction, rule } => {
                write!(
                    f,
                    "the remote domain of this {direction} traffic is malformed: {rule}"
                )
            }
        }
    }
}

/// Errors from building a [`Policy`] or parsing a [`Rule`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The same (normalized) pattern is on both lists with overlapping
    /// directions. Holds the pattern as `partner.test` or `*.partner.test`.
    #[error("domain {0:?} is both allowed and denied")]
    Conflict(String),
    /// An entry is not a valid domain or wildcard.
    #[error("bad policy entry {entry:?}: {reason}")]
    BadPattern {
        /// The entry as written.
        entry: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// The federation privacy policy.
///
/// Build it with [`Policy::new`], [`Policy::from_rules`] or
/// [`Policy::from_config`], which normalize and validate the lists. The
/// fields are public for inspection; a `Policy` assembled by hand still
/// works because [`Policy::check`] compares ASCII patterns
/// case-insensitively, ignores trailing dots, and normalizes patterns
/// written with other characters (U-labels) before comparing.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Which list governs.
    pub mode: PrivacyMode,
    /// Allow rules (used in [`PrivacyMode::AllowList`]).
    pub allow: Vec<Rule>,
    /// Deny rules (used in [`PrivacyMode::DenyList`]; in allow-list mode a
    /// matching deny rule overrides both allow rules and static routes).
    pub deny: Vec<Rule>,
    /// Domains that have a static route; allowed automatically, in both
    /// directions, in allow-list mode. Matched exactly.
    pub static_route_domains: Vec<String>,
}

/// Validate and normalize a rule list, dropping exact duplicates.
fn validate_rules(list: Vec<Rule>) -> Result<Vec<Rule>, PolicyError> {
    let mut out: Vec<Rule> = Vec::with_capacity(list.len());
    for rule in list {
        let rule = rule.validated()?;
        if !out.contains(&rule) {
            out.push(rule);
        }
    }
    Ok(out)
}

/// Normalize static route domains, dropping blank entries and duplicates; a
/// malformed one is a [`PolicyError::BadPattern`].
fn normalize_list(list: Vec<String>) -> Result<Vec<String>, PolicyError> {
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    for entry in list {
        let trimmed = entry.trim();
        if trimmed.is_empty() {
            continue;
        }
        let n = normalize_domain(trimmed).map_err(|e| PolicyError::BadPattern {
            reason: addr_rule(&e),
            entry: entry.clone(),
        })?;
        if !out.contains(&n) {
            out.push(n);
        }
    }
    Ok(out)
}

/// The rule an [`AddrError`] names.
fn addr_rule(e: &AddrError) -> &'static str {
    match e {
        AddrError::Domain(_, rule) => rule,
        AddrError::Jid(_) => "not a domain",
    }
}

/// Is the (possibly hand-built) `entry` the normalized `remote` domain?
fn same_domain(entry: &str, remote: &str) -> bool {
    Pattern::Exact(entry.to_owned()).matches_normalized(remote)
}

fn first_match<'a>(rules: &'a [Rule], remote: &str, direction: Direction) -> Option<&'a Rule> {
    rules
        .iter()
        .find(|r| r.matches_normalized(remote, direction))
}

impl Policy {
    /// Build from plain strings (`partner.test` or `*.partner.test`), each a
    /// rule for all traffic. Same validation as [`Policy::from_rules`]; an
    /// empty or malformed entry is a [`PolicyError::BadPattern`].
    pub fn new(
        mode: PrivacyMode,
        allow: Vec<String>,
        deny: Vec<String>,
        static_route_domains: Vec<String>,
    ) -> Result<Self, PolicyError> {
        let parse = |list: Vec<String>| -> Result<Vec<Rule>, PolicyError> {
            list.iter().map(|s| Rule::parse(s)).collect()
        };
        Policy::from_rules(mode, parse(allow)?, parse(deny)?, static_route_domains)
    }

    /// Build from configuration entries (see [`RuleConfig`]). Errors name the
    /// offending entry as written.
    pub fn from_config(
        mode: PrivacyMode,
        allow: &[RuleConfig],
        deny: &[RuleConfig],
        static_route_domains: Vec<String>,
    ) -> Result<Self, PolicyError> {
        let convert = |list: &[RuleConfig]| -> Result<Vec<Rule>, PolicyError> {
            list.iter().map(RuleConfig::to_rule).collect()
        };
        Policy::from_rules(mode, convert(allow)?, convert(deny)?, static_route_domains)
    }

    /// Build from rules. Every rule is validated and normalized again (rules
    /// may be built by hand), exact duplicates within a list are dropped, and
    /// the same pattern on both lists with overlapping directions is a
    /// [`PolicyError::Conflict`] (whatever the mode). Static route domains are
    /// normalized; blank ones are dropped, malformed ones refused.
    pub fn from_rules(
        mode: PrivacyMode,
        allow: Vec<Rule>,
        deny: Vec<Rule>,
        static_route_domains: Vec<String>,
    ) -> Result<Self, PolicyError> {
        let allow = validate_rules(allow)?;
        let deny = validate_rules(deny)?;
        for a in &allow {
            if deny
                .iter()
                .any(|d| d.pattern == a.pattern && d.direction.overlaps(a.direction))
            {
                return Err(PolicyError::Conflict(a.pattern.to_string()));
            }
        }
        Ok(Policy {
            mode,
            allow,
            deny,
            static_route_domains: normalize_list(static_route_domains)?,
        })
    }

    /// Decide whether traffic with `remote_domain` in `direction` may flow.
    ///
    /// See the crate documentation for the precedence. `remote_domain` may be
    /// in any form the normaliser takes; one it refuses (empty, malformed) is
    /// [`DenyReason::Malformed`] in every mode.
    pub fn check(&self, remote_domain: &str, direction: Direction) -> Verdict {
        let remote = match normalize_domain(remote_domain) {
            Ok(remote) => remote,
            Err(e) => {
                return Verdict::Deny(DenyReason::Malformed {
                    direction,
                    rule: addr_rule(&e),
                })
            }
        };
        match self.mode {
            PrivacyMode::Off => Verdict::Allow,
            PrivacyMode::DenyList => match first_match(&self.deny, &remote, direction) {
                Some(rule) => Verdict::Deny(DenyReason::OnDenyList {
                    direction,
                    rule: rule.clone(),
                }),
                None => Verdict::Allow,
            },
            PrivacyMode::AllowList => {
                if let Some(rule) = first_match(&self.deny, &remote, direction) {
                    return Verdict::Deny(DenyReason::OnDenyList {
                        direction,
                        rule: rule.clone(),
                    });
                }
                if first_match(&self.allow, &remote, direction).is_some() {
                    return Verdict::Allow;
                }
                if self
                    .static_route_domains
                    .iter()
                    .any(|d| same_domain(d, &remote))
                {
                    return Verdict::Allow;
                }
                let other_direction = self
                    .allow
                    .iter()
                    .find(|r| r.pattern.matches_normalized(&remote))
                    .cloned();
                Verdict::Deny(DenyReason::NotOnAllowList {
                    direction,
                    other_direction,
                })
            }
        }
    }

    /// Allow rules that can never allow anything in allow-list mode, because
    /// a deny rule covers every domain and direction they do, paired with
    /// (the first) such deny rule. Meant for a warning at startup; e.g.
    /// `chat.partner.test` allowed while `*.partner.test` is denied.
    pub fn shadowed_allow_rules(&self) -> Vec<(&Rule, &Rule)> {
        self.allow
            .iter()
            .filter_map(|a| {
                self.deny
                    .iter()
                    .find(|d| {
                        a.pattern.is_covered_by(&d.pattern) && d.direction.includes(a.direction)
                    })
                    .map(|d| (a, d))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Direction::{Inbound, Outbound};

    const BOTH: [Direction; 2] = [Inbound, Outbound];

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn rule(p: &str, d: RuleDirection) -> Rule {
        Rule::with_direction(p, d).expect("valid rule")
    }

    fn not_listed(direction: Direction) -> Verdict {
        Verdict::Deny(DenyReason::NotOnAllowList {
            direction,
            other_direction: None,
        })
    }

    fn malformed(rule: &'static str, direction: Direction) -> Verdict {
        Verdict::Deny(DenyReason::Malformed { direction, rule })
    }

    fn denied_by(p: &str, d: RuleDirection, direction: Direction) -> Verdict {
        Verdict::Deny(DenyReason::OnDenyList {
            direction,
            rule: rule(p, d),
        })
    }

    #[test]
    fn default_mode_is_allow_list() {
        assert_eq!(PrivacyMode::default(), PrivacyMode::AllowList);
        let p = Policy::default();
        assert_eq!(p.check("example.com", Inbound), not_listed(Inbound));
    }

    #[test]
    fn off_allows_everything() {
        let p = Policy::new(
            PrivacyMode::Off,
            vec![],
            s(&["bad.example", "*.worse.example"]),
            vec![],
        )
        .expect("valid policy");
        for dir in BOTH {
            assert_eq!(p.check("bad.example", dir), Verdict::Allow);
            assert_eq!(p.check("a.worse.example", dir), Verdict::Allow);
            assert_eq!(p.check("anything.test", dir), Verdict::Allow);
        }
    }

    #[test]
    fn allow_list_exact_case_insensitive() {
        let p = Policy::new(
            PrivacyMode::AllowList,
            s(&["Partner.Example.", " other.test "]),
            vec![],
            vec![],
        )
        .expect("valid policy");
        assert_eq!(
            p.allow,
            vec![
                rule("partner.example", RuleDirection::All),
                rule("other.test", RuleDirection::All)
            ]
        );
        for dir in BOTH {
            assert_eq!(p.check("partner.example", dir), Verdict::Allow);
            assert_eq!(p.check("PARTNER.EXAMPLE", dir), Verdict::Allow);
            assert_eq!(p.check("partner.example.", dir), Verdict::Allow);
            assert_eq!(p.check("other.test", dir), Verdict::Allow);
            // Exact match only: no subdomains, no parents, no suffix tricks.
            assert_eq!(p.check("chat.partner.example", dir), not_listed(dir));
            assert_eq!(p.check("example", dir), not_listed(dir));
            assert_eq!(p.check("evilpartner.example", dir), not_listed(dir));
            assert_eq!(p.check("", dir), malformed("empty", dir));
        }
    }

    #[test]
    fn allow_list_wildcard() {
        let p = Policy::new(
            PrivacyMode::AllowList,
            s(&["*.partner.test"]),
            vec![],
            vec![],
        )
        .expect("valid policy");
        for dir in BOTH {
            for yes in [
                "partner.test",
                "a.partner.test",
                "b.a.partner.test",
                "X.Partner.Test.",
            ] {
                assert_eq!(p.check(yes, dir), Verdict::Allow, "{yes}");
            }
            for no in ["evilpartner.test", "test", "partner.test.evil"] {
                assert_eq!(p.check(no, dir), not_listed(dir), "{no}");
            }
            assert!(matches!(
                p.check(".partner.test", dir),
                Verdict::Deny(DenyReason::Malformed { .. })
            ));
        }
    }

    #[test]
    fn chat_node_alias_is_matched_like_any_domain() {
        let wild = Policy::new(
            PrivacyMode::AllowList,
            s(&["*.partner.test"]),
            vec![],
            vec![],
        )
        .expect("valid policy");
        let exact = Policy::new(PrivacyMode::AllowList, s(&["partner.test"]), vec![], vec![])
            .expect("valid policy");
        for dir in BOTH {
            assert_eq!(wild.check("conference.partner.test", dir), Verdict::Allow);
            assert_eq!(exact.check("conference.partner.test", dir), not_listed(dir));
            assert_eq!(exact.check("partner.test", dir), Verdict::Allow);
        }
        let deny = Policy::new(
            PrivacyMode::DenyList,
            vec![],
            s(&["*.partner.test"]),
            vec![],
        )
        .expect("valid policy");
        assert_eq!(
            deny.check("conference.partner.test", Inbound),
            denied_by("*.partner.test", RuleDirection::All, Inbound)
        );
    }

    #[test]
    fn allow_list_direction_scopes() {
        let p = Policy::from_rules(
            PrivacyMode::AllowList,
            vec![
                rule("*.in.test", RuleDirection::Inbound),
                rule("out.test", RuleDirection::Outbound),
                rule("all.test", RuleDirection::All),
            ],
            vec![],
            vec![],
        )
        .expect("valid policy");
        assert_eq!(p.check("a.in.test", Inbound), Verdict::Allow);
        assert_eq!(
            p.check("a.in.test", Outbound),
            Verdict::Deny(DenyReason::NotOnAllowList {
                direction: Outbound,
                other_direction: Some(rule("*.in.test", RuleDirection::Inbound)),
            })
        );
        assert_eq!(p.check("out.test", Outbound), Verdict::Allow);
        assert_eq!(
            p.check("out.test", Inbound),
            Verdict::Deny(DenyReason::NotOnAllowList {
                direction: Inbound,
                other_direction: Some(rule("out.test", RuleDirection::Outbound)),
            })
        );
        for dir in BOTH {
            assert_eq!(p.check("all.test", dir), Verdict::Allow);
        }
    }

    #[test]
    fn allow_list_static_routes_are_allowed() {
        let p = Policy::new(
            PrivacyMode::AllowList,
            s(&["a.test"]),
            s(&["blocked.test"]),
            s(&["Routed.Test", "blocked.test"]),
        )
        .expect("valid policy");
        assert_eq!(p.static_route_domains, s(&["routed.test", "blocked.test"]));
        for dir in BOTH {
            assert_eq!(p.check("routed.test", dir), Verdict::Allow);
            // Static routes are exact: no subdomains.
            assert_eq!(p.check("x.routed.test", dir), not_listed(dir));
            // An explicit deny wins over the automatic static-route allowance.
            assert_eq!(
                p.check("blocked.test", dir),
                denied_by("blocked.test", RuleDirection::All, dir)
            );
            assert_eq!(p.check("b.test", dir), not_listed(dir));
        }
    }

    #[test]
    fn allow_list_precedence_deny_wins() {
        let p = Policy::from_rules(
            PrivacyMode::AllowList,
            vec![
                rule("*.partner.test", RuleDirection::All),
                rule("good.vendor.test", RuleDirection::All),
                rule("*.routed.test", RuleDirection::All),
            ],
            vec![
                // A narrower deny carves an exception out of a wildcard allow.
                rule("bad.partner.test", RuleDirection::All),
                // A wider deny beats a narrower allow (deny always wins).
                rule("*.vendor.test", RuleDirection::All),
                // A deny scoped to one direction only bites in that direction,
                // even over a static route.
                rule("routed.test", RuleDirection::Outbound),
            ],
            s(&["routed.test"]),
        )
        .expect("valid policy");
        for dir in BOTH {
            assert_eq!(p.check("partner.test", dir), Verdict::Allow);
            assert_eq!(p.check("chat.partner.test", dir), Verdict::Allow);
            assert_eq!(
                p.check("bad.partner.test", dir),
                denied_by("bad.partner.test", RuleDirection::All, dir)
            );
            // Exact deny: the subdomain of the denied domain is still allowed.
            assert_eq!(p.check("x.bad.partner.test", dir), Verdict::Allow);
            assert_eq!(
                p.check("good.vendor.test", dir),
                denied_by("*.vendor.test", RuleDirection::All, dir)
            );
        }
        assert_eq!(p.check("routed.test", Inbound), Verdict::Allow);
        assert_eq!(
            p.check("routed.test", Outbound),
            denied_by("routed.test", RuleDirection::Outbound, Outbound)
        );
        // The only dead allow rule is the one a deny fully covers.
        let shadowed = p.shadowed_allow_rules();
        assert_eq!(
            shadowed,
            vec![(&p.allow[1], &p.deny[1])],
            "good.vendor.test is shadowed by *.vendor.test"
        );
    }

    #[test]
    fn shadowing_respects_directions() {
        let p = Policy::from_rules(
            PrivacyMode::AllowList,
            vec![
                rule("a.x.test", RuleDirection::Inbound),
                rule("b.x.test", RuleDirection::All),
                rule("*.y.test", RuleDirection::All),
            ],
            vec![
                rule("*.x.test", RuleDirection::Inbound),
                rule("z.y.test", RuleDirection::All),
            ],
            vec![],
        )
        .expect("valid policy");
        // a.x.test (incoming) is dead; b.x.test still works outgoing;
        // *.y.test still works for everything but z.y.test.
        assert_eq!(p.shadowed_allow_rules(), vec![(&p.allow[0], &p.deny[0])]);
    }

    #[test]
    fn deny_list_mode() {
        let p = Policy::new(
            PrivacyMode::DenyList,
            s(&["allowed.test"]),
            s(&["Bad.Example"]),
            s(&["bad.example"]),
        )
        .expect("valid policy");
        for dir in BOTH {
            assert_eq!(
                p.check("bad.example", dir),
                denied_by("bad.example", RuleDirection::All, dir)
            );
            assert_eq!(
                p.check("BAD.example.", dir),
                denied_by("bad.example", RuleDirection::All, dir)
            );
            assert_eq!(p.check("sub.bad.example", dir), Verdict::Allow);
            assert_eq!(p.check("good.example", dir), Verdict::Allow);
            assert_eq!(p.check("", dir), malformed("empty", dir));
        }
        assert!(p.check("good.example", Inbound).is_allowed());
        assert!(!p.check("bad.example", Inbound).is_allowed());
    }

    #[test]
    fn deny_list_wildcard_and_directions() {
        let p = Policy::from_config(
            PrivacyMode::DenyList,
            &[],
            &[
                RuleConfig::Domain("*.spam.test".into()),
                RuleConfig::Scoped(ScopedRuleConfig {
                    domain: "noisy.test".into(),
                    direction: RuleDirection::Inbound,
                }),
            ],
            vec![],
        )
        .expect("valid policy");
        for dir in BOTH {
            assert_eq!(
                p.check("spam.test", dir),
                denied_by("*.spam.test", RuleDirection::All, dir)
            );
            assert_eq!(
                p.check("a.b.spam.test", dir),
                denied_by("*.spam.test", RuleDirection::All, dir)
            );
            assert_eq!(p.check("notspam.test", dir), Verdict::Allow);
        }
        assert_eq!(
            p.check("noisy.test", Inbound),
            denied_by("noisy.test", RuleDirection::Inbound, Inbound)
        );
        assert_eq!(p.check("noisy.test", Outbound), Verdict::Allow);
    }

    #[test]
    fn conflict_is_detected_after_normalization() {
        let err = Policy::new(
            PrivacyMode::AllowList,
            s(&["x.test", "Both.Test."]),
            s(&["both.test"]),
            vec![],
        )
        .expect_err("conflict expected");
        assert_eq!(err, PolicyError::Conflict("both.test".into()));
        assert_eq!(
            err.to_string(),
            "domain \"both.test\" is both allowed and denied"
        );
        // Whatever the mode: it is a configuration error.
        let err = Policy::new(
            PrivacyMode::Off,
            s(&["*.Both.Test"]),
            s(&["*.both.test."]),
            vec![],
        )
        .expect_err("conflict expected");
        assert_eq!(err, PolicyError::Conflict("*.both.test".into()));
    }

    #[test]
    fn conflict_needs_same_pattern_and_overlapping_directions() {
        use RuleDirection::{All, Inbound as In, Outbound as Out};
        let build =
            |a: Rule, d: Rule| Policy::from_rules(PrivacyMode::AllowList, vec![a], vec![d], vec![]);
        for (ad, dd) in [(All, All), (All, In), (Out, All), (In, In), (Out, Out)] {
            assert_eq!(
                build(rule("p.test", ad), rule("P.test.", dd)).expect_err("conflict"),
                PolicyError::Conflict("p.test".into()),
                "{ad} vs {dd}"
            );
        }
        // Disjoint directions: fine (p.test allowed incoming, denied outgoing).
        let p = build(rule("p.test", In), rule("p.test", Out)).expect("no conflict");
        assert_eq!(p.check("p.test", Inbound), Verdict::Allow);
        assert_eq!(
            p.check("p.test", Outbound),
            denied_by("p.test", Out, Outbound)
        );
        // Exact and wildcard are different patterns: not a conflict.
        build(rule("p.test", All), rule("*.p.test", All)).expect("no conflict");
        build(rule("*.p.test", All), rule("p.test", All)).expect("no conflict");
    }

    #[test]
    fn bad_entries_are_refused_by_every_constructor() {
        let err = Policy::new(
            PrivacyMode::AllowList,
            s(&["ok.test", "*.com"]),
            vec![],
            vec![],
        )
        .expect_err("bad pattern");
        assert_eq!(
            err,
            PolicyError::BadPattern {
                entry: "*.com".into(),
                reason: "wildcard over a top-level domain"
            }
        );
        let err = Policy::new(PrivacyMode::DenyList, vec![], s(&[""]), vec![]).expect_err("empty");
        assert!(
            matches!(err, PolicyError::BadPattern { ref entry, reason: "empty entry" } if entry.is_empty())
        );
        let err = Policy::from_config(
            PrivacyMode::AllowList,
            &[RuleConfig::Scoped(ScopedRuleConfig {
                domain: "a.*.test".into(),
                direction: RuleDirection::Inbound,
            })],
            &[],
            vec![],
        )
        .expect_err("bad pattern");
        assert!(matches!(err, PolicyError::BadPattern { ref entry, .. } if entry == "a.*.test"));
        // Hand-built rules are validated too.
        for bad in [
            Pattern::Exact("*.a.test".into()),
            Pattern::Exact("a b.test".into()),
            Pattern::Suffix("com".into()),
            Pattern::Suffix(String::new()),
        ] {
            let r = Rule {
                pattern: bad.clone(),
                direction: RuleDirection::All,
            };
            let err = Policy::from_rules(PrivacyMode::AllowList, vec![r], vec![], vec![])
                .expect_err("bad hand-built pattern");
            assert!(
                matches!(err, PolicyError::BadPattern { .. }),
                "{bad:?}: {err:?}"
            );
        }
    }

    #[test]
    fn hand_built_rules_are_normalized_and_deduplicated() {
        let p = Policy::from_rules(
            PrivacyMode::AllowList,
            vec![
                Rule {
                    pattern: Pattern::Exact(" A.Test. ".into()),
                    direction: RuleDirection::All,
                },
                rule("a.test", RuleDirection::All),
                rule("a.test", RuleDirection::Inbound),
                Rule {
                    pattern: Pattern::Suffix("*.B.test".into()),
                    direction: RuleDirection::All,
                },
            ],
            vec![],
            s(&["R.test.", "", "r.test"]),
        )
        .expect("valid policy");
        assert_eq!(
            p.allow,
            vec![
                rule("a.test", RuleDirection::All),
                rule("a.test", RuleDirection::Inbound),
                rule("*.b.test", RuleDirection::All),
            ]
        );
        assert_eq!(p.static_route_domains, s(&["r.test"]));
    }

    #[test]
    fn hand_built_policy_still_matches_case_insensitively() {
        let p = Policy {
            mode: PrivacyMode::AllowList,
            allow: vec![
                Rule {
                    pattern: Pattern::Exact("Mixed.Case.Test.".into()),
                    direction: RuleDirection::All,
                },
                Rule {
                    pattern: Pattern::Suffix("Wild.Test".into()),
                    direction: RuleDirection::Inbound,
                },
            ],
            static_route_domains: s(&["Routed.Test."]),
            ..Policy::default()
        };
        assert_eq!(p.check("mixed.case.test", Inbound), Verdict::Allow);
        assert_eq!(p.check("a.wild.test", Inbound), Verdict::Allow);
        assert_eq!(p.check("routed.test", Outbound), Verdict::Allow);
        assert!(!p.check("a.wild.test", Outbound).is_allowed());
    }

    #[test]
    fn kelvin_sign_folds_onto_k_on_both_sides() {
        // U+212A KELVIN SIGN is a 'k' under UTS-46, in rules and in remote
        // domains alike: one normaliser, so nothing slips between them.
        let p = Policy::new(PrivacyMode::DenyList, vec![], s(&["k.test"]), vec![])
            .expect("valid policy");
        assert_eq!(
            normalize_domain("\u{212A}.TEST.").ok().as_deref(),
            Some("k.test")
        );
        assert!(!p.check("\u{212A}.test", Inbound).is_allowed());
        assert!(!p.check("K.test", Inbound).is_allowed());
        let p = Policy::new(PrivacyMode::DenyList, vec![], s(&["\u{212A}.test"]), vec![])
            .expect("valid policy");
        assert!(!p.check("k.test", Outbound).is_allowed());
    }

    /// Every spelling of exämple.com a peer might use.
    const EXAMPLE_SPELLINGS: [&str; 6] = [
        "xn--exmple-cua.com",
        "XN--EXMPLE-CUA.COM.",
        "exämple.com",
        "EXÄMPLE.com.",
        "exämple\u{3002}com",
        "exämple\u{FF0E}com",
    ];

    #[test]
    fn a_deny_rule_in_either_form_denies_every_spelling() {
        for rule_form in ["exämple.com", "xn--exmple-cua.com", "EXÄMPLE.COM."] {
            // In allow-list mode a wildcard allow covers the domain: the deny
            // rule must be what refuses it.
            for (mode, allow) in [
                (PrivacyMode::DenyList, vec![]),
                (PrivacyMode::AllowList, s(&["*.xn--exmple-cua.com"])),
            ] {
                let p = Policy::new(mode, allow, s(&[rule_form]), vec![]).expect("valid policy");
                for remote in EXAMPLE_SPELLINGS {
                    for dir in BOTH {
                        assert_eq!(
                            p.check(remote, dir),
                            denied_by("xn--exmple-cua.com", RuleDirection::All, dir),
                            "rule {rule_form:?} ({mode:?}), remote {remote:?}"
                        );
                    }
                }
                if mode == PrivacyMode::DenyList {
                    // Plain example.com is another domain.
                    assert_eq!(p.check("example.com", Inbound), Verdict::Allow);
                }
            }
        }
        // A wildcard deny covers subdomains in any spelling, and a deny beats
        // an allow written in the other form.
        let p = Policy::new(
            PrivacyMode::AllowList,
            s(&["*.xn--exmple-cua.com"]),
            s(&["*.bad.exämple.com"]),
            vec![],
        )
        .expect("valid policy");
        assert_eq!(p.check("chat.EXÄMPLE.com", Inbound), Verdict::Allow);
        assert_eq!(
            p.check("x.BAD.exämple\u{3002}com.", Inbound),
            denied_by("*.bad.xn--exmple-cua.com", RuleDirection::All, Inbound)
        );
    }

    #[test]
    fn an_allow_rule_in_either_form_allows_every_spelling() {
        for rule_form in ["exämple.com", "xn--exmple-cua.com"] {
            let p = Policy::new(PrivacyMode::AllowList, s(&[rule_form]), vec![], vec![])
                .expect("valid policy");
            for remote in EXAMPLE_SPELLINGS {
                assert_eq!(p.check(remote, Outbound), Verdict::Allow, "{remote:?}");
            }
            assert_eq!(p.check("example.com", Outbound), not_listed(Outbound));
        }
        // Static routes too.
        let p = Policy::new(PrivacyMode::AllowList, vec![], vec![], s(&["Bücher.test."]))
            .expect("valid policy");
        assert_eq!(p.static_route_domains, s(&["xn--bcher-kva.test"]));
        assert_eq!(p.check("BÜCHER.test", Inbound), Verdict::Allow);
    }

    #[test]
    fn a_malformed_remote_is_denied_in_every_mode() {
        let modes = [
            PrivacyMode::Off,
            PrivacyMode::AllowList,
            PrivacyMode::DenyList,
        ];
        for mode in modes {
            let p = Policy::new(mode, s(&["*.partner.test"]), vec![], vec![]).expect("valid");
            for (remote, rule) in [
                ("", "empty"),
                ("a_b.partner.test", "only letters"),
                ("xn--zz.partner.test", "xn--"),
                ("bad\u{FFFD}.partner.test", "internationalised"),
                ("192.0.2.1", "last label starts with a digit"),
                ("partner.test..", "empty label"),
            ] {
                match p.check(remote, Inbound) {
                    Verdict::Deny(DenyReason::Malformed {
                        direction: Inbound,
                        rule: r,
                    }) => assert!(r.contains(rule), "{remote:?}: {r}"),
                    other => panic!("{mode:?} {remote:?}: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn malformed_idn_entries_and_routes_are_refused_naming_them() {
        let err = Policy::from_config(
            PrivacyMode::DenyList,
            &[],
            &[RuleConfig::Domain("*.xn--zz.test".into())],
            vec![],
        )
        .expect_err("bad punycode");
        assert!(
            err.to_string()
                .starts_with("bad policy entry \"*.xn--zz.test\": xn-- label"),
            "{err}"
        );
        let err = Policy::new(PrivacyMode::AllowList, vec![], vec![], s(&["a_b.test"]))
            .expect_err("bad route");
        assert!(
            matches!(err, PolicyError::BadPattern { ref entry, .. } if entry == "a_b.test"),
            "{err:?}"
        );
    }

    #[test]
    fn deny_reasons_explain_themselves() {
        assert_eq!(
            not_listed(Inbound).clone_reason().to_string(),
            "no federation allow rule matches the domain for incoming traffic and it has no static route"
        );
        let r = DenyReason::NotOnAllowList {
            direction: Outbound,
            other_direction: Some(rule("*.in.test", RuleDirection::Inbound)),
        };
        assert_eq!(
            r.to_string(),
            "no federation allow rule matches the domain for outgoing traffic and it has no static route \
             (allow rule \"*.in.test\" covers incoming traffic only)"
        );
        assert_eq!(
            denied_by("*.spam.test", RuleDirection::All, Inbound)
                .clone_reason()
                .to_string(),
            "federation deny rule \"*.spam.test\" matches the domain (all traffic)"
        );
        assert_eq!(
            denied_by("noisy.test", RuleDirection::Outbound, Outbound)
                .clone_reason()
                .to_string(),
            "federation deny rule \"noisy.test\" matches the domain for outgoing traffic"
        );
        assert_eq!(
            malformed("empty", Outbound).clone_reason().to_string(),
            "the remote domain of this outgoing traffic is malformed: empty"
        );
        assert_eq!(Inbound.to_string(), "incoming");
        assert_eq!(Outbound.to_string(), "outgoing");
    }

    impl Verdict {
        fn clone_reason(&self) -> DenyReason {
            match self {
                Verdict::Deny(r) => r.clone(),
                Verdict::Allow => panic!("not a denial"),
            }
        }
    }

    #[test]
    fn privacy_mode_serde_kebab_case() {
        #[derive(serde::Deserialize, serde::Serialize, Debug, PartialEq)]
        struct W {
            mode: PrivacyMode,
        }
        for (mode, name) in [
            (PrivacyMode::Off, "off"),
            (PrivacyMode::AllowList, "allow-list"),
            (PrivacyMode::DenyList, "deny-list"),
        ] {
            let json = serde_json::to_string(&W { mode }).expect("serialize");
            assert_eq!(json, format!("{{\"mode\":\"{name}\"}}"));
            let back: W = serde_json::from_str(&json).expect("deserialize");
            assert_eq!(back.mode, mode);
        }
        assert!(serde_json::from_str::<W>(r#"{"mode":"AllowList"}"#).is_err());
    }

    /// What the edge embeds in its `[policy]` section.
    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct PolicySection {
        #[serde(default)]
        privacy_mode: PrivacyMode,
        #[serde(default)]
        allow: Vec<RuleConfig>,
        #[serde(default)]
        deny: Vec<RuleConfig>,
    }

    #[derive(serde::Deserialize, Debug)]
    struct File {
        policy: PolicySection,
    }

    fn section(toml_text: &str) -> Result<PolicySection, toml::de::Error> {
        toml::from_str::<File>(toml_text).map(|f| f.policy)
    }

    #[test]
    fn toml_mixed_string_and_table_entries() {
        let sec = section(
            r#"
            [policy]
            privacy_mode = "allow-list"
            allow = [
                "partner.test",
                "*.Partner2.test",
                { domain = "*.vendor.test", direction = "incoming" },
                { domain = "feeds.test", direction = "outgoing" },
                { domain = "plain.test" },
                { domain = "both.test", direction = "all" },
                { domain = "alias1.test", direction = "inbound" },
                { domain = "alias2.test", direction = "outbound" },
                { domain = "alias3.test", direction = "both" },
            ]
            deny = [{ domain = "bad.vendor.test", direction = "all" }, "*.spam.test"]
            "#,
        )
        .expect("parses");
        assert_eq!(sec.privacy_mode, PrivacyMode::AllowList);
        assert_eq!(sec.allow[0], RuleConfig::Domain("partner.test".into()));
        assert_eq!(
            sec.allow[2],
            RuleConfig::Scoped(ScopedRuleConfig {
                domain: "*.vendor.test".into(),
                direction: RuleDirection::Inbound
            })
        );
        let p = Policy::from_config(sec.privacy_mode, &sec.allow, &sec.deny, s(&["routed.test"]))
            .expect("valid policy");
        let dirs: Vec<RuleDirection> = p.allow.iter().map(|r| r.direction).collect();
        use RuleDirection::{All, Inbound as In, Outbound as Out};
        assert_eq!(dirs, [All, All, In, Out, All, All, In, Out, All]);
        assert_eq!(p.allow[1], rule("*.partner2.test", All));

        for dir in BOTH {
            assert_eq!(p.check("partner.test", dir), Verdict::Allow);
            assert_eq!(p.check("muc.partner2.test", dir), Verdict::Allow);
            assert_eq!(p.check("routed.test", dir), Verdict::Allow);
            assert_eq!(
                p.check("bad.vendor.test", dir),
                denied_by("bad.vendor.test", All, dir)
            );
            assert_eq!(
                p.check("x.spam.test", dir),
                denied_by("*.spam.test", All, dir)
            );
        }
        assert_eq!(p.check("im.vendor.test", Inbound), Verdict::Allow);
        assert!(!p.check("im.vendor.test", Outbound).is_allowed());
        assert_eq!(p.check("feeds.test", Outbound), Verdict::Allow);
        assert!(!p.check("feeds.test", Inbound).is_allowed());
    }

    #[test]
    fn toml_refuses_malformed_entries() {
        for (what, text) in [
            (
                "unknown direction",
                r#"allow = [{ domain = "a.test", direction = "sideways" }]"#,
            ),
            (
                "misspelt direction key",
                r#"allow = [{ domain = "a.test", directon = "incoming" }]"#,
            ),
            ("missing domain", r#"allow = [{ direction = "incoming" }]"#),
            ("number", r#"allow = [42]"#),
            (
                "capitalized direction",
                r#"allow = [{ domain = "a.test", direction = "Incoming" }]"#,
            ),
        ] {
            let err = section(&format!("[policy]\n{text}\n")).expect_err(what);
            // toml locates the entry; untagged serde cannot say more than this.
            assert!(err.to_string().contains("RuleConfig"), "{what}: {err}");
        }
        // Syntactically fine TOML, bad domain: refused when the policy is
        // built, naming the entry.
        let sec = section("[policy]\nprivacy_mode = \"deny-list\"\ndeny = [\"*.com\"]\n")
            .expect("parses");
        let err = Policy::from_config(sec.privacy_mode, &sec.allow, &sec.deny, vec![])
            .expect_err("bad pattern");
        assert_eq!(
            err.to_string(),
            "bad policy entry \"*.com\": wildcard over a top-level domain"
        );
        // An empty section is the default lockdown.
        let sec = section("[policy]\n").expect("parses");
        let p = Policy::from_config(sec.privacy_mode, &sec.allow, &sec.deny, vec![])
            .expect("valid policy");
        assert!(!p.check("a.test", Inbound).is_allowed());
    }

    #[test]
    fn rule_config_serializes_back_to_the_short_forms() {
        let rules = [
            rule("*.partner.test", RuleDirection::All),
            rule("feeds.test", RuleDirection::Outbound),
        ];
        let cfg: Vec<RuleConfig> = rules.iter().map(RuleConfig::from).collect();
        let json = serde_json::to_string(&cfg).expect("serialize");
        assert_eq!(
            json,
            r#"["*.partner.test",{"domain":"feeds.test","direction":"outgoing"}]"#
        );
        let back: Vec<RuleConfig> = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, cfg);
    }
}
