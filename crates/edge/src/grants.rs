//! Which core may announce which local domains and chat node aliases (`[[tunnel.cores]]`).
//!
//! A core's traversal certificate says who it is; it does not say what it may serve. Without
//! grants, any core holding a certificate from the traversal CA could announce another core's
//! domain (and take its inbound traffic) or a remote partner's domain (and cut federation
//! with it: the edge would take the partner for a local domain). The edge keeps only the
//! granted names of each hello and logs the rest; a name the edge federates with as a remote
//! (a static route, or an exact allow-list entry) can never be granted.
//!
//! Names are written and matched like privacy-policy entries ([`Pattern`]).
//!
//! Pure: the edge applies it to each hello in the tunnel pump.

use std::collections::HashMap;

use causeway_policy::Pattern;
use causeway_tunnel::CoreHello;
use causeway_xmpp::addr::normalize_domain;

/// The grants of every core id.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    by_core: HashMap<String, Vec<Pattern>>,
}

/// A hello with only its granted names, and the names refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filtered {
    /// The hello as the edge takes it.
    pub hello: CoreHello,
    /// Names it announced and may not serve.
    pub refused: Vec<String>,
}

impl Grants {
    /// Grants from `(core id, names)` entries; `remote` are names the edge federates with as
    /// remote domains (none of them may be granted). Errors name the entry (`tunnel.cores[i]`).
    pub fn new(entries: &[(String, Vec<String>)], remote: &[String]) -> Result<Self, String> {
        if entries.is_empty() {
            return Err(
                "tunnel.cores: grant each core the domains and chat node aliases it may \
                 announce ([[tunnel.cores]] with id and domains)"
                    .into(),
            );
        }
        let mut by_core: HashMap<String, Vec<Pattern>> = HashMap::new();
        for (i, (id, names)) in entries.iter().enumerate() {
            if id.trim().is_empty() {
                return Err(format!("tunnel.cores[{i}].id: empty"));
            }
            if by_core.contains_key(id) {
                return Err(format!("tunnel.cores[{i}].id: {id} is listed twice"));
            }
            if names.is_empty() {
                return Err(format!("tunnel.cores[{i}].domains: at least one"));
            }
            let mut patterns = Vec::new();
            for (j, name) in names.iter().enumerate() {
                let p = Pattern::parse(name)
                    .map_err(|e| format!("tunnel.cores[{i}].domains[{j}]: {e}"))?;
                if let Some(r) = remote.iter().find(|r| p.matches(r)) {
                    return Err(format!(
                        "tunnel.cores[{i}].domains[{j}]: {name} covers {r}, which the edge \
                         federates with as a remote domain (static route or allow-list entry)"
                    ));
                }
                patterns.push(p);
            }
            by_core.insert(id.clone(), patterns);
        }
        Ok(Self { by_core })
    }

    /// May `core` serve `name`?
    pub fn allows(&self, core: &str, name: &str) -> bool {
        self.by_core
            .get(core)
            .is_some_and(|ps| ps.iter().any(|p| p.matches(name)))
    }

    /// Keep the names of `hello` its core is granted and that are not `remote_now` (remote
    /// domains the edge has sessions with at this moment), in their normalised form
    /// ([`normalize_domain`]). A name that does not normalise is refused, as written.
    pub fn filter(&self, hello: &CoreHello, remote_now: impl Fn(&str) -> bool) -> Filtered {
        let mut refused = Vec::new();
        let mut keep = |names: &[String]| -> Vec<String> {
            let mut kept = Vec::new();
            for n in names {
                match normalize_domain(n) {
                    Ok(name) if self.allows(&hello.core_id, &name) && !remote_now(&name) => {
                        kept.push(name);
                    }
                    Ok(name) => refused.push(name),
                    Err(_) => refused.push(n.clone()),
                }
            }
            kept
        };
        let domains = keep(&hello.domains);
        let chat_node_aliases = keep(&hello.chat_node_aliases);
        Filtered {
            hello: CoreHello {
                domains,
                chat_node_aliases,
                ..hello.clone()
            },
            refused,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants() -> Grants {
        Grants::new(
            &[
                (
                    "core1.example.com".into(),
                    vec!["example.com".into(), "*.example.com".into()],
                ),
                ("core2.example.com".into(), vec!["example.org".into()]),
            ],
            &["partner.test".into()],
        )
        .expect("grants")
    }

    fn hello(core: &str, domains: &[&str], aliases: &[&str]) -> CoreHello {
        CoreHello {
            core_id: core.into(),
            domains: domains.iter().map(|d| d.to_string()).collect(),
            chat_node_aliases: aliases.iter().map(|d| d.to_string()).collect(),
            version: String::new(),
            protocol: 2,
        }
    }

    #[test]
    fn a_core_keeps_only_what_it_is_granted() {
        let g = grants();
        let f = g.filter(
            &hello(
                "core1.example.com",
                &["example.com", "Example.ORG", "partner.test"],
                &["conference.example.com", "notexample.com"],
            ),
            |_| false,
        );
        assert_eq!(f.hello.domains, vec!["example.com"]);
        assert_eq!(f.hello.chat_node_aliases, vec!["conference.example.com"]);
        assert_eq!(
            f.refused,
            vec!["example.org", "partner.test", "notexample.com"]
        );
        // An unknown core is granted nothing.
        let f = g.filter(&hello("evil", &["example.com"], &[]), |_| false);
        assert!(f.hello.domains.is_empty());
        assert_eq!(f.refused, vec!["example.com"]);
    }

    #[test]
    fn names_are_granted_and_kept_in_their_normalised_form() {
        let g = Grants::new(
            &[(
                "core1".into(),
                vec!["bücher.example".into(), "*.xn--exmple-cua.com".into()],
            )],
            &["partner.test".into()],
        )
        .expect("grants");
        let f = g.filter(
            &hello(
                "core1",
                &["XN--BCHER-KVA.example.", "exämple.com"],
                &[
                    "muc.EXÄMPLE\u{3002}com",
                    "bad_name.example",
                    "xn--zz.example",
                ],
            ),
            |_| false,
        );
        assert_eq!(
            f.hello.domains,
            vec!["xn--bcher-kva.example", "xn--exmple-cua.com"]
        );
        assert_eq!(f.hello.chat_node_aliases, vec!["muc.xn--exmple-cua.com"]);
        assert_eq!(f.refused, vec!["bad_name.example", "xn--zz.example"]);
        // A remote domain in U-label form is still the remote domain.
        let err = Grants::new(
            &[("c".into(), vec!["*.pärtner.test".into()])],
            &["xn--prtner-bua.test".into()],
        )
        .expect_err("covers a remote");
        assert!(err.contains("covers xn--prtner-bua.test"), "{err}");
    }

    #[test]
    fn a_domain_the_edge_federates_with_is_never_taken() {
        let g = grants();
        let f = g.filter(&hello("core1.example.com", &["a.example.com"], &[]), |d| {
            d == "a.example.com"
        });
        assert!(f.hello.domains.is_empty());
        let err = Grants::new(
            &[("c".into(), vec!["*.partner.test".into()])],
            &["partner.test".into()],
        )
        .expect_err("covers a remote");
        assert!(err.starts_with("tunnel.cores[0].domains[0]"), "{err}");
    }

    #[test]
    fn config_errors_name_the_entry() {
        assert!(Grants::new(&[], &[]).is_err());
        let twice = vec![
            ("c".to_string(), vec!["a.example".to_string()]),
            ("c".to_string(), vec!["b.example".to_string()]),
        ];
        let err = Grants::new(&twice, &[]).expect_err("twice");
        assert!(err.starts_with("tunnel.cores[1].id"), "{err}");
        let err =
            Grants::new(&[("c".into(), vec!["bad domain".into()])], &[]).expect_err("bad name");
        assert!(err.starts_with("tunnel.cores[0].domains[0]"), "{err}");
        let err = Grants::new(&[("c".into(), vec![])], &[]).expect_err("empty");
        assert!(err.starts_with("tunnel.cores[0].domains"), "{err}");
    }
}
