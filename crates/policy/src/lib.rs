//! causeway-policy: the federation privacy policy of the gateway.
//!
//! Pure decision logic, no I/O. A [`Policy`] answers one question: may the
//! gateway exchange traffic with a given remote XMPP domain in a given
//! [`Direction`]? It mirrors the "federation privacy mode" of Cisco
//! Expressway:
//!
//! * [`PrivacyMode::Off`]: every remote domain is allowed.
//! * [`PrivacyMode::AllowList`] (the default): only domains on the allow list,
//!   or domains that have a static route configured, are allowed.
//! * [`PrivacyMode::DenyList`]: every domain is allowed except those on the
//!   deny list.
//!
//! Matching is exact and case-insensitive; a trailing dot (fully qualified
//! form) is ignored.
//!
//! # Future extension (TODO)
//!
//! Wildcard entries (`*.example.com`, matching `example.com` and all of its
//! subdomains) and per-entry direction scopes (all / inbound / outbound) are
//! planned. They will be parsed from the same `allow` / `deny` strings (for
//! example `"*.example.com"` or `"*.example.com inbound"`) inside
//! [`Policy::new`], and matched in the private `entry_matches` helper, which
//! already receives the [`Direction`]; [`Policy::check`]'s signature will not
//! change. Until then an entry is a plain domain compared exactly.

#![forbid(unsafe_code)]

use std::fmt;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// A remote domain connects to / sends stanzas to us.
    Inbound,
    /// We connect to / send stanzas to a remote domain.
    Outbound,
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

/// Why a domain was denied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DenyReason {
    /// Allow-list mode and the domain is neither listed nor statically routed.
    NotOnAllowList,
    /// The domain is explicitly on the deny list.
    OnDenyList,
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DenyReason::NotOnAllowList => f.write_str("domain is not on the federation allow list"),
            DenyReason::OnDenyList => f.write_str("domain is on the federation deny list"),
        }
    }
}

/// Errors from building a [`Policy`].
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The same (normalized) domain appears on both lists.
    #[error("domain {0:?} is both allowed and denied")]
    Conflict(String),
}

/// The federation privacy policy.
///
/// Build it with [`Policy::new`], which normalizes and validates the lists.
/// The fields are public for inspection; a `Policy` assembled by hand still
/// works because [`Policy::check`] compares entries case-insensitively and
/// ignores trailing dots on both sides.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Which list governs.
    pub mode: PrivacyMode,
    /// Allowed domains (used in [`PrivacyMode::AllowList`]).
    pub allow: Vec<String>,
    /// Denied domains (used in [`PrivacyMode::DenyList`]; an explicit deny also
    /// overrides the automatic static-route allowance in allow-list mode).
    pub deny: Vec<String>,
    /// Domains that have a static route; allowed automatically in allow-list mode.
    pub static_route_domains: Vec<String>,
}

/// Normalize a domain: trim surrounding whitespace, lowercase, strip one
/// trailing dot.
pub fn normalize_domain(domain: &str) -> String {
    let d = domain.trim();
    let d = d.strip_suffix('.').unwrap_or(d);
    d.to_lowercase()
}

fn normalize_list(list: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    for entry in list {
        let n = normalize_domain(&entry);
        if !n.is_empty() && !out.contains(&n) {
            out.push(n);
        }
    }
    out
}

/// Does a policy entry match the (already normalized) remote domain?
///
/// Entries are plain domains today. This is the single place where wildcard
/// (`*.example.com`) and direction-scoped entries will be interpreted later,
/// which is why it already takes the direction.
fn entry_matches(entry: &str, remote: &str, _direction: Direction) -> bool {
    normalize_domain(entry) == remote
}

fn list_matches(list: &[String], remote: &str, direction: Direction) -> bool {
    list.iter().any(|e| entry_matches(e, remote, direction))
}

impl Policy {
    /// Normalize (trim, lowercase, strip trailing dot, drop empty entries and
    /// duplicates) and validate: a domain in both `allow` and `deny` is an error.
    pub fn new(
        mode: PrivacyMode,
        allow: Vec<String>,
        deny: Vec<String>,
        static_route_domains: Vec<String>,
    ) -> Result<Self, PolicyError> {
        let allow = normalize_list(allow);
        let deny = normalize_list(deny);
        let static_route_domains = normalize_list(static_route_domains);
        if let Some(both) = allow.iter().find(|a| deny.contains(a)) {
            return Err(PolicyError::Conflict(both.clone()));
        }
        Ok(Policy {
            mode,
            allow,
            deny,
            static_route_domains,
        })
    }

    /// Decide whether traffic with `remote_domain` in `direction` may flow.
    ///
    /// Exact, case-insensitive match (as Cisco Expressway). In allow-list mode
    /// a domain with a static route is allowed automatically, unless it is
    /// explicitly on the deny list. [`PrivacyMode::Off`] always allows.
    /// An empty remote domain never matches any entry.
    pub fn check(&self, remote_domain: &str, direction: Direction) -> Verdict {
        let remote = normalize_domain(remote_domain);
        match self.mode {
            PrivacyMode::Off => Verdict::Allow,
            PrivacyMode::DenyList => {
                if !remote.is_empty() && list_matches(&self.deny, &remote, direction) {
                    Verdict::Deny(DenyReason::OnDenyList)
                } else {
                    Verdict::Allow
                }
            }
            PrivacyMode::AllowList => {
                if remote.is_empty() {
                    return Verdict::Deny(DenyReason::NotOnAllowList);
                }
                if list_matches(&self.allow, &remote, direction) {
                    return Verdict::Allow;
                }
                if list_matches(&self.deny, &remote, direction) {
                    return Verdict::Deny(DenyReason::OnDenyList);
                }
                if list_matches(&self.static_route_domains, &remote, direction) {
                    return Verdict::Allow;
                }
                Verdict::Deny(DenyReason::NotOnAllowList)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn default_mode_is_allow_list() {
        assert_eq!(PrivacyMode::default(), PrivacyMode::AllowList);
        let p = Policy::default();
        assert_eq!(
            p.check("example.com", Direction::Inbound),
            Verdict::Deny(DenyReason::NotOnAllowList)
        );
    }

    #[test]
    fn off_allows_everything() {
        let p = Policy::new(PrivacyMode::Off, vec![], s(&["bad.example"]), vec![])
            .expect("valid policy");
        assert_eq!(p.check("bad.example", Direction::Inbound), Verdict::Allow);
        assert_eq!(
            p.check("anything.test", Direction::Outbound),
            Verdict::Allow
        );
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
        assert_eq!(p.allow, s(&["partner.example", "other.test"]));
        for dir in [Direction::Inbound, Direction::Outbound] {
            assert_eq!(p.check("partner.example", dir), Verdict::Allow);
            assert_eq!(p.check("PARTNER.EXAMPLE", dir), Verdict::Allow);
            assert_eq!(p.check("partner.example.", dir), Verdict::Allow);
            assert_eq!(p.check("other.test", dir), Verdict::Allow);
            // Exact match only: no subdomains, no parents, no suffix tricks.
            assert_eq!(
                p.check("chat.partner.example", dir),
                Verdict::Deny(DenyReason::NotOnAllowList)
            );
            assert_eq!(
                p.check("example", dir),
                Verdict::Deny(DenyReason::NotOnAllowList)
            );
            assert_eq!(
                p.check("evilpartner.example", dir),
                Verdict::Deny(DenyReason::NotOnAllowList)
            );
            assert_eq!(p.check("", dir), Verdict::Deny(DenyReason::NotOnAllowList));
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
        assert_eq!(p.check("routed.test", Direction::Outbound), Verdict::Allow);
        assert_eq!(p.check("routed.test", Direction::Inbound), Verdict::Allow);
        // An explicit deny wins over the automatic static-route allowance.
        assert_eq!(
            p.check("blocked.test", Direction::Outbound),
            Verdict::Deny(DenyReason::OnDenyList)
        );
        assert_eq!(
            p.check("b.test", Direction::Outbound),
            Verdict::Deny(DenyReason::NotOnAllowList)
        );
    }

    #[test]
    fn deny_list_mode() {
        let p = Policy::new(
            PrivacyMode::DenyList,
            vec![],
            s(&["Bad.Example"]),
            s(&["bad.example"]),
        )
        .expect("valid policy");
        assert_eq!(
            p.check("bad.example", Direction::Inbound),
            Verdict::Deny(DenyReason::OnDenyList)
        );
        assert_eq!(
            p.check("BAD.example.", Direction::Outbound),
            Verdict::Deny(DenyReason::OnDenyList)
        );
        assert_eq!(
            p.check("sub.bad.example", Direction::Inbound),
            Verdict::Allow
        );
        assert_eq!(p.check("good.example", Direction::Inbound), Verdict::Allow);
        assert!(p.check("good.example", Direction::Inbound).is_allowed());
        assert!(!p.check("bad.example", Direction::Inbound).is_allowed());
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
        match &err {
            PolicyError::Conflict(d) => assert_eq!(d, "both.test"),
        }
        assert_eq!(
            err.to_string(),
            "domain \"both.test\" is both allowed and denied"
        );
    }

    #[test]
    fn normalization_drops_empty_and_duplicates() {
        let p = Policy::new(
            PrivacyMode::AllowList,
            s(&["A.test", "a.test.", "", "  "]),
            vec![],
            vec![],
        )
        .expect("valid policy");
        assert_eq!(p.allow, s(&["a.test"]));
    }

    #[test]
    fn hand_built_policy_still_matches_case_insensitively() {
        let p = Policy {
            mode: PrivacyMode::AllowList,
            allow: s(&["Mixed.Case.Test."]),
            ..Policy::default()
        };
        assert_eq!(
            p.check("mixed.case.test", Direction::Inbound),
            Verdict::Allow
        );
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
}
