//! Live reconfiguration of core: read the config file again and apply what changed.
//!
//! Applied live: local domains and their switches, chat node aliases, static nodes and
//! discovered clusters (the node table), discovery and health settings, and the s2s settings
//! (certificate, TLS, limits, timeouts, dialback secret) through [`S2s::reconfigure`], which
//! closes only the sessions the new config no longer allows. Reported as needing a restart:
//! the s2s listen address, the tunnel settings, `core.id`, `[admin]`, `[metrics]`, `[log]`.
//! A config that does not validate (or whose certificate does not load) is refused and the
//! running one stays.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use causeway_s2s::{S2s, S2sConfig, LOG_MODULE};
use tracing::{info, warn};

use crate::config::Validated;
use crate::nodes::NodeTable;
use crate::Core;

/// The s2s settings of a validated config (loads the certificate and key): used by `start`
/// and by every reload.
pub fn s2s_config(cfg: &Validated) -> anyhow::Result<S2sConfig> {
    let s = &cfg.raw.s2s;
    let certs = causeway_pki::load_certs(&s.cert)?;
    let key = causeway_pki::load_key(&s.key)?;
    let tls_server = causeway_pki::s2s_server_config(certs, key)?;
    let tls_client = causeway_pki::s2s_client_config_dialback()?;
    let mut s2s_cfg = S2sConfig::new(cfg.dialback_secret.clone(), Some(tls_server), tls_client);
    s2s_cfg.dialback_previous = cfg.dialback_previous.clone();
    s2s_cfg.tls_mode = if s.require_tls {
        causeway_s2s::TlsMode::Required
    } else {
        causeway_s2s::TlsMode::Optional
    };
    s2s_cfg.limits.max_stanza_bytes = s.max_stanza_bytes;
    s2s_cfg.idle_timeout = Duration::from_secs(s.idle_timeout_secs);
    // Core's peers are its own servers, on private networks: no outbound address filter...
    s2s_cfg.outbound_filter = None;
    // ...and no verification caps: a node verifies its own domain once per remote domain it
    // federates with, all at once after a restart, which the edge's caps would refuse. Inbound
    // connections and each stream's pending verifications still bound them.
    s2s_cfg.max_verifications = usize::MAX;
    s2s_cfg.max_verifications_per_domain = usize::MAX;
    Ok(s2s_cfg)
}

/// The settings a running core cannot change, as they were applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartOnly {
    settings: Vec<(&'static str, String)>,
}

impl RestartOnly {
    /// From a validated config.
    pub fn of(cfg: &Validated) -> Self {
        let r = &cfg.raw;
        Self {
            settings: vec![
                ("core.id", r.core.id.clone()),
                ("s2s.listen", r.s2s.listen.to_string()),
                // Not the certificate, key and CAs: a reload applies them.
                (
                    "tunnel",
                    format!(
                        "{:?} {:?} {:?} {} {} {} {}",
                        r.tunnel.edge,
                        r.tunnel.edge_name,
                        r.tunnel.edges,
                        r.tunnel.window,
                        r.tunnel.window_bytes,
                        r.tunnel.keepalive_secs,
                        r.tunnel.drain_secs
                    ),
                ),
                ("admin", format!("{:?}", r.admin)),
                ("metrics", format!("{:?}", r.metrics)),
                ("log", format!("{:?}", r.log)),
            ],
        }
    }

    /// The settings that differ in `next`.
    pub fn changed(&self, next: &RestartOnly) -> Vec<&'static str> {
        self.settings
            .iter()
            .zip(&next.settings)
            .filter(|(a, b)| a != b)
            .map(|(a, _)| a.0)
            .collect()
    }
}

impl Core {
    /// Re-read the config file and apply it. A bad config is refused and the running one kept.
    /// Returns what changed (and what needs a restart).
    pub async fn reload(&self) -> anyhow::Result<String> {
        let next = crate::config::load(&self.config_path)?;
        let s2s_cfg = s2s_config(&next)?;
        // The next tunnel connection uses the files as they are now (a CA rotation, a
        // renewal); the established sessions keep theirs.
        self.tunnel
            .set_tls(&crate::tunnel_tls(&next.raw.tunnel)?)
            .map_err(|e| anyhow::anyhow!("tunnel.cert, tunnel.key or tunnel.ca: {e}"))?;
        let discovery = &self.discovery;
        let table = discovery.nodes();
        for w in &next.node_config.warnings {
            warn!(module = LOG_MODULE, warning = %w, "config warning");
        }
        let restart = discovery
            .applied_restart_only()
            .changed(&RestartOnly::of(&next));
        let names_before = table.domains_and_aliases();
        let nodes_before = table.node_addrs();
        let clusters_before: Vec<_> = table.clusters().into_iter().map(|c| c.source).collect();

        let mut changes = table.reconfigure(&next.node_config);
        discovery.reconfigure(&next.node_config);
        close_removed(&self.s2s, &nodes_before, &table.node_addrs());
        // Sessions re-check themselves against the new settings and node table.
        self.s2s.reconfigure(s2s_cfg);

        let names_after = table.domains_and_aliases();
        crate::nodes::diff(
            &names_before.0,
            &names_after.0,
            &mut changes.added_domains,
            &mut changes.removed_domains,
        );
        crate::nodes::diff(
            &names_before.1,
            &names_after.1,
            &mut changes.added_aliases,
            &mut changes.removed_aliases,
        );
        if names_after != names_before {
            announce_domains(table);
        }
        // Probe new nodes now, and discover new clusters, without holding up the reply.
        let new_clusters = table
            .clusters()
            .iter()
            .any(|c| !clusters_before.contains(&c.source));
        let d = discovery.clone();
        tokio::spawn(async move {
            if new_clusters {
                d.refresh().await;
            } else {
                d.probe_now().await;
            }
        });

        let mut summary = format!("config applied: {}", changes.summary());
        if !restart.is_empty() {
            summary.push_str(&format!(
                "; changed settings that need a restart: {}",
                restart.join(", ")
            ));
        }
        info!(module = LOG_MODULE, summary = %summary, "config reloaded");
        Ok(summary)
    }
}

/// Close the sessions of nodes that left the table.
fn close_removed(s2s: &S2s, before: &[SocketAddr], after: &[SocketAddr]) {
    for addr in before.iter().filter(|a| !after.contains(a)) {
        let n = s2s.close_sessions_with(*addr);
        info!(module = LOG_MODULE, node = %addr, sessions_closed = n, "IM&P node removed from the node table");
    }
}

/// The local domains or chat node aliases changed (discovery, reload): the edges must learn
/// the new lists, [`NodeTable::domains_and_aliases`], through the announcer the tunnel side
/// installed with [`NodeTable::set_announcer`].
///
/// TODO(HA tunnel): the tunnel sends its hello only when it (re)connects and installs no
/// announcer yet. It should build the hello from `domains_and_aliases()` at every (re)connect
/// and install a re-announce (a reconnect is acceptable: the tunnel replays, nothing is lost)
/// with `host.nodes.set_announcer(..)` in `start`, after the tunnels exist. Until then the
/// edges learn a change at the tunnel's next reconnect or core's next start.
pub fn announce_domains(table: &Arc<NodeTable>) {
    let (domains, aliases) = table.domains_and_aliases();
    match table.announcer() {
        Some(announce) => {
            info!(module = LOG_MODULE, domains = ?domains, aliases = ?aliases, "local domains or chat node aliases changed: announcing them to the edges");
            announce(domains, aliases);
        }
        None => {
            warn!(module = LOG_MODULE, domains = ?domains, aliases = ?aliases, "local domains or chat node aliases changed: the edges learn them when the tunnel next connects (no re-announce yet)");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use crate::nodes::{ClusterSpec, DomainSettings, NodeTable, NodesConfig, Source};

    #[test]
    fn changes_are_announced_through_the_installed_announcer() {
        let cfg = NodesConfig {
            clusters: vec![ClusterSpec {
                source: Source::Static {
                    domain: "example.com".into(),
                },
                domains: vec![DomainSettings::new("example.com")],
                aliases: Vec::new(),
                nodes: vec!["10.0.0.1:5269".parse().expect("addr")],
            }],
            settings: Vec::new(),
            discovery: Default::default(),
            warnings: Vec::new(),
        };
        let table = Arc::new(NodeTable::new(&cfg));
        // Without an announcer: only logged.
        super::announce_domains(&table);
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        assert!(table.set_announcer(move |domains, aliases| {
            assert_eq!(domains, vec!["example.com".to_owned()]);
            assert!(aliases.is_empty());
            seen.fetch_add(1, Ordering::Relaxed);
        }));
        assert!(
            !table.set_announcer(|_, _| {}),
            "a second announcer is refused"
        );
        super::announce_domains(&table);
        assert_eq!(calls.load(Ordering::Relaxed), 1);
    }
}
