//! Several cores per edge: which cores serve each local domain, which one carries an inbound
//! stanza, and what happens to the stanzas of a core that is gone.
//!
//! * Every core's hello says which domains and chat node aliases it serves; a domain may be
//!   served by several cores ([`DomainCores`]).
//! * An inbound stanza goes to a *connected* core serving its `to` domain, chosen by
//!   rendezvous hashing of its `(from, to)` pair ([`causeway_tunnel::ha::pick`]), so a pair
//!   stays on one core while that core is connected and moves when it disconnects. With none
//!   connected it waits in the window of the core that announced the domain last (the
//!   single-core behaviour).
//! * A core that stays disconnected for a grace period (three times the keepalive) while every
//!   domain it announced has another connected core is taken for gone: the stanzas it left
//!   unacknowledged are taken back ([`causeway_tunnel::EdgeTunnel::take_unacked`]) and routed
//!   again. A core that had delivered some of them without its acknowledgement reaching the
//!   edge makes those arrive twice; nothing is lost.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use causeway_s2s::{S2s, LOG_MODULE};
use causeway_tunnel::ha::{self, Failover};
use causeway_tunnel::CoreHello;
use causeway_xmpp::addr::normalize_domain;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::EdgeHost;

/// Local domain or chat node alias (normalised, see [`normalize_domain`]) -> the cores that
/// announced it, the latest hello last. Lookups take normalised names (what the s2s layer
/// hands the edge).
#[derive(Debug, Clone, Default)]
pub struct DomainCores {
    map: HashMap<String, Vec<String>>,
}

impl DomainCores {
    /// A core's hello: it serves exactly the domains and aliases it lists now (a core that
    /// announces fewer domains than before stops serving the others). Names are normalised;
    /// one that does not normalise is not a domain and is skipped (the grants, applied first,
    /// refuse and log it).
    pub fn announce(&mut self, hello: &CoreHello) {
        self.map.retain(|_, cores| {
            cores.retain(|c| *c != hello.core_id);
            !cores.is_empty()
        });
        let names = hello.domains.iter().chain(&hello.chat_node_aliases);
        for d in names.filter_map(|d| normalize_domain(d).ok()) {
            let cores = self.map.entry(d).or_default();
            if !cores.contains(&hello.core_id) {
                cores.push(hello.core_id.clone());
            }
        }
    }

    /// Some core announced `domain`.
    pub fn serves(&self, domain: &str) -> bool {
        self.map.contains_key(domain)
    }

    /// `core` announced `domain`.
    pub fn announced_by(&self, domain: &str, core: &str) -> bool {
        self.map
            .get(domain)
            .is_some_and(|c| c.iter().any(|x| x == core))
    }

    /// The core for a stanza from `from` to the local domain `to`: a connected one by
    /// rendezvous hashing of the pair, else the one that announced `to` last; None when no
    /// core serves `to`.
    pub fn choose(&self, from: &str, to: &str, connected: impl Fn(&str) -> bool) -> Option<&str> {
        let cores = self.map.get(to)?;
        ha::pick(cores, |c| c, |c| connected(c), from, to)
            .filter(|c| connected(c))
            .or(cores.last())
            .map(String::as_str)
    }

    /// Every (domain, core) pair, by domain then core.
    pub fn entries(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .map
            .iter()
            .flat_map(|(d, cores)| cores.iter().map(move |c| (d.clone(), c.clone())))
            .collect();
        out.sort();
        out
    }

    /// Every domain `core` announced has another core for which `connected` is true.
    fn covered_without(&self, core: &str, connected: impl Fn(&str) -> bool) -> bool {
        self.map
            .values()
            .filter(|cores| cores.iter().any(|c| c == core))
            .all(|cores| cores.iter().any(|c| c != core && connected(c)))
    }
}

/// The failover task: once a second, takes back the unacknowledged stanzas of cores that are
/// gone and routes them again (a wiring loop around [`Failover`]).
pub(crate) async fn supervise(
    host: Arc<EdgeHost>,
    s2s: Arc<S2s>,
    grace: Duration,
    beat: causeway_http::Beat,
) {
    let Some(tunnel) = host.tunnel().cloned() else {
        return;
    };
    let mut failover = Failover::new(grace);
    let mut tick = tokio::time::interval(grace.min(Duration::from_secs(1)));
    loop {
        tick.tick().await;
        let now = Instant::now();
        beat.beat();
        for core in tunnel.stats().links.keys() {
            // A core that said it drains is gone as soon as it leaves.
            failover.observe(
                core,
                tunnel.is_connected(core),
                tunnel.peer_draining(core),
                now,
            );
        }
        for core in failover.gone(now) {
            let covered = host
                .domain_cores()
                .covered_without(&core, |c| tunnel.is_connected(c));
            if !covered {
                continue;
            }
            let stanzas = tunnel.take_unacked(&core);
            if stanzas.is_empty() {
                continue;
            }
            warn!(module = LOG_MODULE, %core, stanzas = stanzas.len(), "core gone: routing its unacknowledged stanzas to the other cores (those it delivered unacknowledged arrive twice)");
            let (host, s2s) = (host.clone(), s2s.clone());
            tokio::spawn(async move {
                for st in stanzas {
                    let payload = st.payload.clone();
                    if let Err(condition) =
                        host.to_core(st.from_domain, st.to_domain, st.payload).await
                    {
                        s2s.answer_undeliverable(&payload, condition).await;
                    }
                }
                info!(module = LOG_MODULE, "failover re-send done");
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(core: &str, domains: &[&str], aliases: &[&str]) -> CoreHello {
        CoreHello {
            core_id: core.into(),
            domains: domains.iter().map(|d| d.to_string()).collect(),
            chat_node_aliases: aliases.iter().map(|d| d.to_string()).collect(),
            version: "t".into(),
            protocol: 2,
        }
    }

    #[test]
    fn a_domain_served_by_two_cores_goes_to_a_connected_one() {
        let mut d = DomainCores::default();
        d.announce(&hello(
            "core1",
            &["Example.com"],
            &["conference.example.com"],
        ));
        d.announce(&hello("core2", &["example.com."], &["bad_alias.test"]));
        assert!(d.serves("example.com") && d.serves("conference.example.com"));
        assert!(!d.serves("bad_alias.test"));
        assert!(d.announced_by("example.com", "core2"));
        assert!(!d.announced_by("conference.example.com", "core2"));
        assert!(!d.serves("partner.test"));
        assert_eq!(d.choose("partner.test", "nowhere.test", |_| true), None);

        // Both up: pairs spread and stay.
        let pairs: Vec<String> = (0..100).map(|i| format!("p{i}.test")).collect();
        let both = |from: &str| d.choose(from, "example.com", |_| true).map(str::to_owned);
        let on1 = pairs
            .iter()
            .filter(|p| both(p).as_deref() == Some("core1"))
            .count();
        assert!((20..80).contains(&on1), "spread: {on1} of 100 on core1");
        for p in &pairs {
            assert_eq!(both(p), both(p));
        }
        // core1 down: everything to core2; the alias only core1 serves waits for core1.
        for p in &pairs {
            assert_eq!(d.choose(p, "example.com", |c| c == "core2"), Some("core2"));
        }
        assert_eq!(
            d.choose("p.test", "conference.example.com", |c| c == "core2"),
            Some("core1")
        );
        // Nobody up: the core that announced it last.
        assert_eq!(d.choose("p.test", "example.com", |_| false), Some("core2"));
        d.announce(&hello("core1", &["example.com"], &[]));
        assert_eq!(d.choose("p.test", "example.com", |_| false), Some("core1"));
        // core1 no longer announces the alias.
        assert!(!d.serves("conference.example.com"));
        assert_eq!(
            d.entries(),
            vec![
                ("example.com".to_owned(), "core1".to_owned()),
                ("example.com".to_owned(), "core2".to_owned()),
            ]
        );
    }

    #[test]
    fn a_core_is_replaceable_only_when_all_its_domains_have_another_connected_core() {
        let mut d = DomainCores::default();
        d.announce(&hello(
            "core1",
            &["example.com"],
            &["conference.example.com"],
        ));
        d.announce(&hello("core2", &["example.com"], &[]));
        assert!(!d.covered_without("core1", |c| c == "core2"), "the alias");
        assert!(d.covered_without("core2", |c| c == "core1"));
        assert!(!d.covered_without("core2", |_| false));
        d.announce(&hello(
            "core2",
            &["example.com"],
            &["conference.example.com"],
        ));
        assert!(d.covered_without("core1", |c| c == "core2"));
    }
}
