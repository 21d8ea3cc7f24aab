//! The node table: which IM&P nodes serve which local domains and chat node aliases, and
//! whether each node is healthy.
//!
//! A *cluster* is a set of IM&P nodes that all accept the traffic of the same local domains and
//! chat node aliases (Cisco IM&P clusters, a Prosody or ejabberd cluster, or a single server).
//! Clusters come from the config ([`NodesConfig`], validated with the rest of it): a
//! `[[domains]]` entry with `nodes` is a static cluster; `[[clusters]]` entries are discovered
//! (crates/core/src/discovery.rs fills in their nodes and aliases). Every node has a state,
//! kept up to date by the health checks (crates/core/src/health.rs).
//!
//! Routing rules, in one place ([`NodeTable::resolve`] and friends):
//! * stanzas for a domain or alias go only to the ACTIVE nodes of its cluster; when none is
//!   active every node is tried (the health check may be behind), and the log says so;
//! * a domain federates only when both its `im_presence` and `xmpp_federation` switches are on;
//!   its aliases follow it. A domain that does not federate is still *local*: core never
//!   answers for it as a remote domain, never announces it, and refuses its traffic;
//! * while discovery asks a node about a disco item (a candidate chat node alias), that name is
//!   routed to the cluster and its server may authenticate to core, but it is neither announced
//!   nor federated.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{OnceLock, RwLock};
use std::time::SystemTime;

use anyhow::bail;
use causeway_s2s::LOG_MODULE;
use tracing::warn;

use crate::config::CoreConfig;
use crate::discovery::{DiscoverySettings, Requests};

/// Whether a node takes traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    /// Its last health probe succeeded.
    Active,
    /// Its last health probe failed (or it was not probed yet).
    Inactive,
}

impl NodeState {
    /// "active" / "inactive", as administrators read it.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Active => "active",
            NodeState::Inactive => "inactive",
        }
    }
}

/// A local domain and its switches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainSettings {
    /// The domain, lowercase.
    pub name: String,
    /// IM and presence service on (Expressway's "IM and Presence" switch).
    pub im_presence: bool,
    /// XMPP federation on for it.
    pub xmpp_federation: bool,
}

impl DomainSettings {
    /// Both switches on by default.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            im_presence: true,
            xmpp_federation: true,
        }
    }

    /// Federation happens only with both switches on.
    pub fn federated(&self) -> bool {
        self.im_presence && self.xmpp_federation
    }
}

/// Where a cluster's nodes come from; also its identity across discoveries and reloads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    /// A `[[domains]]` entry with `nodes`: fixed addresses.
    Static {
        /// The entry's domain.
        domain: String,
    },
    /// `[[clusters]] domain`: the SRV records of the domain in the internal DNS view.
    Dns {
        /// The domain.
        domain: String,
    },
    /// `[[clusters]] publisher`: one node named by the administrator; the domains it serves are
    /// found by asking it, the other nodes from those domains' SRV records.
    Publisher {
        /// Its host name (or IP literal).
        host: String,
        /// Its s2s port.
        port: u16,
    },
}

impl Source {
    /// "static", "dns" or "publisher".
    pub fn kind(&self) -> &'static str {
        match self {
            Source::Static { .. } => "static",
            Source::Dns { .. } => "dns",
            Source::Publisher { .. } => "publisher",
        }
    }

    /// A name for listings: the domain, or the publisher's host.
    pub fn name(&self) -> String {
        match self {
            Source::Static { domain } | Source::Dns { domain } => domain.clone(),
            Source::Publisher { host, port } => format!("{host}:{port}"),
        }
    }
}

/// A chat node alias (MUC service) and the domain it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alias {
    /// The alias, lowercase.
    pub name: String,
    /// The local domain whose switches it follows.
    pub domain: String,
    /// Found by XEP-0030 discovery (false: configured).
    pub discovered: bool,
}

/// One IM&P node.
#[derive(Debug, Clone)]
pub struct Node {
    /// Its s2s address.
    pub addr: SocketAddr,
    /// The name it was found under (SRV target, publisher), or the address.
    pub host: String,
    /// Whether it takes traffic.
    pub state: NodeState,
    /// Why its last probe failed.
    pub last_error: Option<String>,
    /// When it was last probed.
    pub last_probe: Option<SystemTime>,
    /// Since when it is in `state`.
    pub since: SystemTime,
}

impl Node {
    /// A node not probed yet: inactive until its first probe says otherwise.
    pub fn new(addr: SocketAddr, host: &str) -> Self {
        Self {
            addr,
            host: host.to_owned(),
            state: NodeState::Inactive,
            last_error: Some("not probed yet".into()),
            last_probe: None,
            since: SystemTime::now(),
        }
    }
}

/// A cluster as configured (validated, before discovery).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSpec {
    /// Where its nodes come from.
    pub source: Source,
    /// Domains known from the config.
    pub domains: Vec<DomainSettings>,
    /// Configured chat node aliases.
    pub aliases: Vec<Alias>,
    /// Static node addresses.
    pub nodes: Vec<SocketAddr>,
}

/// The node-related part of the config: clusters, domain switches, discovery settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodesConfig {
    /// Every cluster, static ones first, in config order.
    pub clusters: Vec<ClusterSpec>,
    /// Switches of every `[[domains]]` entry (domains a publisher reveals are looked up here;
    /// absent ones have both switches on).
    pub settings: Vec<DomainSettings>,
    /// `[discovery]`.
    pub discovery: DiscoverySettings,
    /// Config warnings (logged at start and by `core check`).
    pub warnings: Vec<String>,
}

impl NodesConfig {
    /// Validate `[[domains]]` switches, `[[clusters]]` and `[discovery]`; `domains` are the
    /// `[[domains]]` names, already normalized and checked. Errors name the setting.
    pub fn validate(raw: &CoreConfig, domains: &[String]) -> anyhow::Result<Self> {
        let discovery = DiscoverySettings::validate(&raw.discovery)?;
        let mut clusters = Vec::new();
        let mut settings = Vec::new();
        let mut warnings = Vec::new();
        let mut dns_domains: Vec<String> = Vec::new();
        for (i, c) in raw.clusters.iter().enumerate() {
            let source = crate::discovery::cluster_source(c, i)?;
            let duplicate = clusters.iter().any(|s: &ClusterSpec| s.source == source);
            if duplicate {
                bail!("clusters[{i}]: {} is configured twice", source.name());
            }
            if let Source::Dns { domain } = &source {
                if domain == &discovery.probe_domain {
                    bail!("clusters[{i}].domain: {domain} is discovery.probe_domain");
                }
                dns_domains.push(domain.clone());
            }
            clusters.push(ClusterSpec {
                source,
                domains: Vec::new(),
                aliases: Vec::new(),
                nodes: Vec::new(),
            });
        }
        let mut statics = Vec::new();
        for (i, d) in raw.domains.iter().enumerate() {
            let name = domains.get(i).cloned().unwrap_or_default();
            let s = DomainSettings {
                name: name.clone(),
                im_presence: d.im_presence,
                xmpp_federation: d.xmpp_federation,
            };
            if s.xmpp_federation && !s.im_presence {
                warnings.push(format!(
                    "domains[{i}] {name}: XMPP federation is on but IM and presence is off, so \
                     {name} does not federate (turn IM and presence on, or federation off)"
                ));
            }
            if name == discovery.probe_domain {
                bail!("discovery.probe_domain: {name} is a local domain");
            }
            let aliases: Vec<Alias> = d
                .chat_node_aliases
                .iter()
                .filter_map(|a| causeway_xmpp::addr::normalize_domain(a).ok())
                .map(|a| Alias {
                    name: a,
                    domain: name.clone(),
                    discovered: false,
                })
                .collect();
            if aliases.iter().any(|a| a.name == discovery.probe_domain) {
                bail!(
                    "discovery.probe_domain: {} is a local chat node alias",
                    discovery.probe_domain
                );
            }
            settings.push(s.clone());
            if !d.nodes.is_empty() {
                if dns_domains.contains(&name) {
                    bail!(
                        "domains[{i}].nodes: {name} is also discovered by a [[clusters]] entry; \
                         give either static nodes or discovery"
                    );
                }
                statics.push(ClusterSpec {
                    source: Source::Static {
                        domain: name.clone(),
                    },
                    domains: vec![s],
                    aliases,
                    nodes: d.nodes.clone(),
                });
                continue;
            }
            // No static nodes: a discovered domain; these are its settings and extra aliases.
            let target = clusters
                .iter_mut()
                .position(|c| matches!(&c.source, Source::Dns { domain } if *domain == name))
                .or_else(|| {
                    clusters
                        .iter()
                        .position(|c| matches!(c.source, Source::Publisher { .. }))
                });
            let Some(target) = target else {
                bail!(
                    "domains[{i}].nodes: at least one IM&P node address (or a [[clusters]] entry \
                     that discovers {name})"
                );
            };
            if let Some(c) = clusters.get_mut(target) {
                if matches!(c.source, Source::Dns { .. }) {
                    c.domains.push(s);
                }
                c.aliases.extend(aliases);
            }
        }
        for c in clusters.iter_mut() {
            if let Source::Dns { domain } = &c.source {
                if c.domains.is_empty() {
                    c.domains.push(DomainSettings::new(domain));
                }
            }
        }
        statics.extend(clusters);
        if statics.is_empty() {
            bail!("domains: at least one [[domains]] or [[clusters]] entry is needed");
        }
        Ok(Self {
            clusters: statics,
            settings,
            discovery,
            warnings,
        })
    }

    /// Local domains named by `[[clusters]] domain` entries and not by `[[domains]]`.
    pub fn cluster_domains(&self) -> Vec<String> {
        self.clusters
            .iter()
            .filter_map(|c| match &c.source {
                Source::Dns { domain } if !self.settings.iter().any(|s| s.name == *domain) => {
                    Some(domain.clone())
                }
                _ => None,
            })
            .collect()
    }

    /// The switches of `domain` (both on when it has no `[[domains]]` entry).
    pub fn settings_of(&self, domain: &str) -> DomainSettings {
        self.settings
            .iter()
            .find(|s| s.name == domain)
            .cloned()
            .unwrap_or_else(|| DomainSettings::new(domain))
    }
}

/// A cluster at run time.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// Where its nodes come from (and its identity).
    pub source: Source,
    /// The local domains it serves.
    pub domains: Vec<DomainSettings>,
    /// Its chat node aliases, configured and discovered.
    pub aliases: Vec<Alias>,
    /// Its nodes.
    pub nodes: Vec<Node>,
    /// Names routed to it while discovery asks about them (not announced, not federated).
    pub probing: Vec<String>,
    /// When discovery last ran for it.
    pub discovered: Option<SystemTime>,
    /// What went wrong in that run.
    pub discovery_error: Option<String>,
}

impl Cluster {
    fn from_spec(spec: &ClusterSpec) -> Self {
        Self {
            source: spec.source.clone(),
            domains: spec.domains.clone(),
            aliases: spec.aliases.clone(),
            nodes: spec
                .nodes
                .iter()
                .map(|a| Node::new(*a, &a.to_string()))
                .collect(),
            probing: Vec::new(),
            discovered: None,
            discovery_error: None,
        }
    }

    /// Its domain settings for `name`, if it serves that domain.
    pub fn domain(&self, name: &str) -> Option<&DomainSettings> {
        self.domains.iter().find(|d| d.name == name)
    }

    /// Does an alias belonging to `domain` federate?
    fn federates(&self, domain: &str) -> bool {
        self.domain(domain).is_some_and(DomainSettings::federated)
    }
}

/// How a name is routed.
#[derive(Debug, Clone, Copy)]
struct Route {
    cluster: usize,
    federated: bool,
    probing: bool,
}

#[derive(Default)]
struct Tables {
    clusters: Vec<Cluster>,
    index: HashMap<String, Route>,
}

impl Tables {
    /// Rebuild the name index (after any change to names or switches). First cluster wins a
    /// name claimed twice; probing names never shadow real ones.
    fn reindex(&mut self) {
        let mut index = HashMap::new();
        for (i, c) in self.clusters.iter().enumerate() {
            for d in &c.domains {
                index.entry(d.name.clone()).or_insert(Route {
                    cluster: i,
                    federated: d.federated(),
                    probing: false,
                });
            }
            for a in &c.aliases {
                index.entry(a.name.clone()).or_insert(Route {
                    cluster: i,
                    federated: c.federates(&a.domain),
                    probing: false,
                });
            }
        }
        for (i, c) in self.clusters.iter().enumerate() {
            for p in &c.probing {
                index.entry(p.clone()).or_insert(Route {
                    cluster: i,
                    federated: false,
                    probing: true,
                });
            }
        }
        self.index = index;
    }

    fn cluster_mut(&mut self, source: &Source) -> Option<&mut Cluster> {
        self.clusters.iter_mut().find(|c| c.source == *source)
    }
}

/// What a change to the table did, for logs and `core servers --refresh`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Nodes added ("address (cluster)").
    pub added_nodes: Vec<String>,
    /// Nodes removed.
    pub removed_nodes: Vec<String>,
    /// Chat node aliases added.
    pub added_aliases: Vec<String>,
    /// Chat node aliases removed.
    pub removed_aliases: Vec<String>,
    /// Local domains added.
    pub added_domains: Vec<String>,
    /// Local domains removed.
    pub removed_domains: Vec<String>,
    /// What went wrong (discovery errors; the previous data was kept).
    pub errors: Vec<String>,
}

impl Changes {
    /// Nothing was added or removed.
    pub fn is_empty(&self) -> bool {
        self.added_nodes.is_empty()
            && self.removed_nodes.is_empty()
            && self.added_aliases.is_empty()
            && self.removed_aliases.is_empty()
            && self.added_domains.is_empty()
            && self.removed_domains.is_empty()
    }

    /// Add another change set to this one.
    pub fn merge(&mut self, other: Changes) {
        self.added_nodes.extend(other.added_nodes);
        self.removed_nodes.extend(other.removed_nodes);
        self.added_aliases.extend(other.added_aliases);
        self.removed_aliases.extend(other.removed_aliases);
        self.added_domains.extend(other.added_domains);
        self.removed_domains.extend(other.removed_domains);
        self.errors.extend(other.errors);
    }

    /// One line: "added node X; removed alias Y", or "no change".
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        for (what, list) in [
            ("added node", &self.added_nodes),
            ("removed node", &self.removed_nodes),
            ("added domain", &self.added_domains),
            ("removed domain", &self.removed_domains),
            ("added chat node alias", &self.added_aliases),
            ("removed chat node alias", &self.removed_aliases),
        ] {
            if !list.is_empty() {
                parts.push(format!("{what}{} {}", plural(list.len()), list.join(", ")));
            }
        }
        if parts.is_empty() {
            parts.push("no change".into());
        }
        parts.join("; ")
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// A node's state changed.
#[derive(Debug, Clone)]
pub struct Transition {
    /// The node.
    pub addr: SocketAddr,
    /// Its new state.
    pub state: NodeState,
    /// The probe error, when inactive.
    pub error: Option<String>,
}

/// Tells the edges the names to announce (domains, chat node aliases): the tunnel's
/// re-announce, installed with [`NodeTable::set_announcer`].
pub type Announcer = Box<dyn Fn(Vec<String>, Vec<String>) + Send + Sync>;

/// The shared node table; every method takes the lock briefly and never across an await.
pub struct NodeTable {
    tables: RwLock<Tables>,
    /// Discovery's outstanding disco requests (answers are taken out of `deliver`).
    requests: Requests,
    /// Opened once the tunnel is attached: until then `deliver` waits (core serves s2s early
    /// so that discovery can talk to the nodes before the first hello).
    ready: tokio::sync::watch::Sender<bool>,
    /// The tunnel's re-announce, once the tunnel side installs one.
    announcer: OnceLock<Announcer>,
}

impl NodeTable {
    /// The table for a validated config, before discovery and health checks.
    pub fn new(cfg: &NodesConfig) -> Self {
        let mut tables = Tables {
            clusters: cfg.clusters.iter().map(Cluster::from_spec).collect(),
            index: HashMap::new(),
        };
        tables.reindex();
        Self {
            tables: RwLock::new(tables),
            requests: Requests::new(&cfg.discovery.probe_domain),
            ready: tokio::sync::watch::channel(false).0,
            announcer: OnceLock::new(),
        }
    }

    /// Install the tunnel's re-announce: called with [`NodeTable::domains_and_aliases`]
    /// whenever discovery or a reload changes them after start. False if one was already set.
    pub fn set_announcer(
        &self,
        announce: impl Fn(Vec<String>, Vec<String>) + Send + Sync + 'static,
    ) -> bool {
        self.announcer.set(Box::new(announce)).is_ok()
    }

    /// The installed re-announce, if any.
    pub fn announcer(&self) -> Option<&Announcer> {
        self.announcer.get()
    }

    fn read<T>(&self, f: impl FnOnce(&Tables) -> T) -> T {
        match self.tables.read() {
            Ok(t) => f(&t),
            Err(poisoned) => f(&poisoned.into_inner()),
        }
    }

    fn write<T>(&self, f: impl FnOnce(&mut Tables) -> T) -> T {
        match self.tables.write() {
            Ok(mut t) => f(&mut t),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// A local domain or chat node alias (federated or not), or a name being probed: core
    /// never answers for these as a remote domain.
    pub fn is_known(&self, name: &str) -> bool {
        self.read(|t| t.index.contains_key(name))
    }

    /// A local domain or alias that federates.
    pub fn federates(&self, name: &str) -> bool {
        self.read(|t| t.index.get(name).is_some_and(|r| r.federated))
    }

    /// May a server authenticate to core as `name`: a federating local name, or a name
    /// discovery is asking about.
    pub fn peer_allowed(&self, name: &str) -> bool {
        self.read(|t| t.index.get(name).is_some_and(|r| r.federated || r.probing))
    }

    /// The s2s addresses to try for `name`: its cluster's active nodes, in table order; all
    /// of them when none is active (logged); an error when `name` is not routable.
    pub fn resolve(&self, name: &str) -> Result<Vec<SocketAddr>, String> {
        self.read(|t| {
            let Some(route) = t.index.get(name) else {
                return Err(format!("{name} is not a local domain"));
            };
            if !route.federated && !route.probing {
                return Err(format!("{name}: XMPP federation is off for this domain"));
            }
            let Some(cluster) = t.clusters.get(route.cluster) else {
                return Err(format!("{name}: no cluster"));
            };
            if cluster.nodes.is_empty() {
                let why = cluster
                    .discovery_error
                    .as_deref()
                    .unwrap_or("discovery has not found any yet");
                return Err(format!("{name}: no IM&P node known ({why})"));
            }
            let active: Vec<SocketAddr> = cluster
                .nodes
                .iter()
                .filter(|n| n.state == NodeState::Active)
                .map(|n| n.addr)
                .collect();
            if active.is_empty() {
                let all: Vec<SocketAddr> = cluster.nodes.iter().map(|n| n.addr).collect();
                warn!(module = LOG_MODULE, domain = %name, nodes = ?all, "no active IM&P node (every one failed its last health probe): trying them all");
                return Ok(all);
            }
            Ok(active)
        })
    }

    /// The names to announce to the edge: federating local domains and their chat node
    /// aliases, sorted. The tunnel's hello carries them.
    pub fn domains_and_aliases(&self) -> (Vec<String>, Vec<String>) {
        self.read(|t| {
            let mut domains = Vec::new();
            let mut aliases = Vec::new();
            for c in &t.clusters {
                for d in c.domains.iter().filter(|d| d.federated()) {
                    if !domains.contains(&d.name) {
                        domains.push(d.name.clone());
                    }
                }
                for a in c.aliases.iter().filter(|a| c.federates(&a.domain)) {
                    if !aliases.contains(&a.name) {
                        aliases.push(a.name.clone());
                    }
                }
            }
            domains.sort();
            aliases.sort();
            (domains, aliases)
        })
    }

    /// A snapshot of every cluster, for status views and discovery.
    pub fn clusters(&self) -> Vec<Cluster> {
        self.read(|t| t.clusters.clone())
    }

    /// Every node with a domain of its cluster to probe it with (nodes of a cluster that knows
    /// no domain yet are skipped). A node in several clusters is listed once.
    pub fn probe_targets(&self) -> Vec<(SocketAddr, String)> {
        self.read(|t| {
            let mut out: Vec<(SocketAddr, String)> = Vec::new();
            for c in &t.clusters {
                let Some(domain) = c.domains.first() else {
                    continue;
                };
                for n in &c.nodes {
                    if !out.iter().any(|(a, _)| *a == n.addr) {
                        out.push((n.addr, domain.name.clone()));
                    }
                }
            }
            out
        })
    }

    /// Record a probe of `addr`; returns the transition if its state changed.
    pub fn record_probe(&self, addr: SocketAddr, result: Result<(), String>) -> Option<Transition> {
        let now = SystemTime::now();
        let state = if result.is_ok() {
            NodeState::Active
        } else {
            NodeState::Inactive
        };
        let error = result.err();
        self.write(|t| {
            let mut changed = false;
            for n in t
                .clusters
                .iter_mut()
                .flat_map(|c| c.nodes.iter_mut())
                .filter(|n| n.addr == addr)
            {
                // The first probe of a node is news either way.
                if n.state != state || n.last_probe.is_none() {
                    changed = true;
                }
                if n.state != state {
                    n.since = now;
                }
                n.state = state;
                n.last_error.clone_from(&error);
                n.last_probe = Some(now);
            }
            changed.then(|| Transition {
                addr,
                state,
                error: error.clone(),
            })
        })
    }

    /// Replace the nodes of a discovered cluster, keeping the state of nodes it already had
    /// (new ones are inactive until probed). Returns what changed.
    pub fn set_nodes(&self, source: &Source, found: &[(SocketAddr, String)]) -> Changes {
        let mut changes = Changes::default();
        self.write(|t| {
            let Some(c) = t.cluster_mut(source) else {
                return;
            };
            let name = source.name();
            c.nodes.retain(|n| {
                let keep = found.iter().any(|(a, _)| *a == n.addr);
                if !keep {
                    changes.removed_nodes.push(format!("{} ({name})", n.addr));
                }
                keep
            });
            for (addr, host) in found {
                if !c.nodes.iter().any(|n| n.addr == *addr) {
                    c.nodes.push(Node::new(*addr, host));
                    changes.added_nodes.push(format!("{addr} ({name})"));
                }
            }
        });
        changes
    }

    /// Replace the domains of a publisher cluster (switches from `cfg`). Returns what changed.
    pub fn set_domains(&self, source: &Source, found: &[String], cfg: &NodesConfig) -> Changes {
        let mut changes = Changes::default();
        self.write(|t| {
            let Some(c) = t.cluster_mut(source) else {
                return;
            };
            c.domains.retain(|d| {
                let keep = found.contains(&d.name);
                if !keep {
                    changes.removed_domains.push(d.name.clone());
                }
                keep
            });
            for d in found {
                if c.domain(d).is_none() {
                    c.domains.push(cfg.settings_of(d));
                    changes.added_domains.push(d.clone());
                }
            }
            let domains: Vec<String> = c.domains.iter().map(|d| d.name.clone()).collect();
            c.aliases
                .retain(|a| domains.contains(&a.domain) || !a.discovered);
            t.reindex();
        });
        changes
    }

    /// Replace the discovered aliases of `domain` in a cluster (configured ones stay).
    pub fn set_discovered_aliases(
        &self,
        source: &Source,
        domain: &str,
        found: &[String],
    ) -> Changes {
        let mut changes = Changes::default();
        self.write(|t| {
            let Some(c) = t.cluster_mut(source) else {
                return;
            };
            c.aliases.retain(|a| {
                let stale = a.discovered && a.domain == domain && !found.contains(&a.name);
                if stale {
                    changes.removed_aliases.push(a.name.clone());
                }
                !stale
            });
            for name in found {
                if !c.aliases.iter().any(|a| a.name == *name) {
                    c.aliases.push(Alias {
                        name: name.clone(),
                        domain: domain.to_owned(),
                        discovered: true,
                    });
                    changes.added_aliases.push(name.clone());
                }
            }
            t.reindex();
        });
        changes
    }

    /// Route `names` to a cluster while discovery asks about them (see the module docs).
    pub fn begin_probing(&self, source: &Source, names: &[String]) {
        self.write(|t| {
            if let Some(c) = t.cluster_mut(source) {
                c.probing = names.to_vec();
            }
            t.reindex();
        });
    }

    /// Stop routing the cluster's probed names.
    pub fn end_probing(&self, source: &Source) {
        self.begin_probing(source, &[]);
    }

    /// Note a discovery run of a cluster and its error, if any.
    pub fn set_discovery_result(&self, source: &Source, error: Option<String>) {
        self.write(|t| {
            if let Some(c) = t.cluster_mut(source) {
                c.discovered = Some(SystemTime::now());
                c.discovery_error = error;
            }
        });
    }

    /// Apply a new config: clusters it no longer has go, new ones come (static nodes
    /// inactive until probed), clusters it keeps keep what discovery found and the state of
    /// the nodes they keep. Returns what changed.
    pub fn reconfigure(&self, cfg: &NodesConfig) -> Changes {
        let mut changes = Changes::default();
        self.write(|t| {
            let before = t.clusters.clone();
            let mut next = Vec::new();
            for spec in &cfg.clusters {
                let mut c = Cluster::from_spec(spec);
                if let Some(old) = before.iter().find(|o| o.source == spec.source) {
                    if !matches!(spec.source, Source::Static { .. }) {
                        // Discovered data stays until the next discovery run.
                        c.nodes.clone_from(&old.nodes);
                        for a in old.aliases.iter().filter(|a| a.discovered) {
                            if !c.aliases.iter().any(|x| x.name == a.name) {
                                c.aliases.push(a.clone());
                            }
                        }
                        if matches!(spec.source, Source::Publisher { .. }) {
                            c.domains = old
                                .domains
                                .iter()
                                .map(|d| cfg.settings_of(&d.name))
                                .collect();
                        }
                        c.discovered = old.discovered;
                        c.discovery_error.clone_from(&old.discovery_error);
                    }
                    for n in c.nodes.iter_mut() {
                        if let Some(o) = old.nodes.iter().find(|o| o.addr == n.addr) {
                            *n = o.clone();
                        }
                    }
                }
                next.push(c);
            }
            let nodes = |cs: &[Cluster]| -> Vec<String> {
                cs.iter()
                    .flat_map(|c| {
                        let name = c.source.name();
                        c.nodes.iter().map(move |n| format!("{} ({name})", n.addr))
                    })
                    .collect()
            };
            diff(
                &nodes(&before),
                &nodes(&next),
                &mut changes.added_nodes,
                &mut changes.removed_nodes,
            );
            t.clusters = next;
            t.reindex();
        });
        changes
    }

    /// Node addresses in the table.
    pub fn node_addrs(&self) -> Vec<SocketAddr> {
        self.read(|t| {
            let mut out: Vec<SocketAddr> = Vec::new();
            for n in t.clusters.iter().flat_map(|c| c.nodes.iter()) {
                if !out.contains(&n.addr) {
                    out.push(n.addr);
                }
            }
            out
        })
    }

    /// Discovery's outstanding requests.
    pub fn requests(&self) -> &Requests {
        &self.requests
    }

    /// An inbound stanza that answers one of discovery's requests, or is addressed to the
    /// probe domain at all: consumed here (true), never forwarded to the edge.
    pub fn intercept_answer(&self, stanza: &causeway_s2s::InboundStanza) -> bool {
        self.requests.take_answer(stanza)
    }

    /// A bounce of one of discovery's requests: consumed here (true).
    pub fn intercept_bounce(
        &self,
        stanza: &causeway_s2s::OutboundStanza,
        condition: causeway_xmpp::StanzaCondition,
    ) -> bool {
        self.requests.take_bounce(stanza, condition)
    }

    /// Let `deliver` forward stanzas (the tunnel is attached).
    pub fn open_delivery(&self) {
        self.ready.send_replace(true);
    }

    /// Wait until [`NodeTable::open_delivery`] was called.
    pub async fn wait_ready(&self) {
        let mut rx = self.ready.subscribe();
        let _ = rx.wait_for(|open| *open).await;
    }
}

/// Names in `after` and not `before` go to `added`, the reverse to `removed`.
pub fn diff(
    before: &[String],
    after: &[String],
    added: &mut Vec<String>,
    removed: &mut Vec<String>,
) {
    added.extend(after.iter().filter(|x| !before.contains(x)).cloned());
    removed.extend(before.iter().filter(|x| !after.contains(x)).cloned());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    fn table() -> NodeTable {
        let cfg = NodesConfig {
            clusters: vec![
                ClusterSpec {
                    source: Source::Static {
                        domain: "example.com".into(),
                    },
                    domains: vec![DomainSettings::new("example.com")],
                    aliases: vec![Alias {
                        name: "conference.example.com".into(),
                        domain: "example.com".into(),
                        discovered: false,
                    }],
                    nodes: vec![addr("10.0.0.1:5269"), addr("10.0.0.2:5269")],
                },
                ClusterSpec {
                    source: Source::Static {
                        domain: "quiet.example".into(),
                    },
                    domains: vec![DomainSettings {
                        name: "quiet.example".into(),
                        im_presence: true,
                        xmpp_federation: false,
                    }],
                    aliases: vec![Alias {
                        name: "muc.quiet.example".into(),
                        domain: "quiet.example".into(),
                        discovered: false,
                    }],
                    nodes: vec![addr("10.0.0.3:5269")],
                },
            ],
            settings: Vec::new(),
            discovery: DiscoverySettings::default(),
            warnings: Vec::new(),
        };
        NodeTable::new(&cfg)
    }

    #[test]
    fn only_active_nodes_take_traffic_and_all_when_none_is() {
        let t = table();
        // Nobody probed yet: every node is tried.
        assert_eq!(
            t.resolve("example.com"),
            Ok(vec![addr("10.0.0.1:5269"), addr("10.0.0.2:5269")])
        );
        assert!(t.record_probe(addr("10.0.0.2:5269"), Ok(())).is_some());
        // A first probe is news even when it fails; the same failure again is not.
        assert!(t
            .record_probe(addr("10.0.0.1:5269"), Err("refused".into()))
            .is_some());
        assert!(t
            .record_probe(addr("10.0.0.1:5269"), Err("refused".into()))
            .is_none());
        assert_eq!(t.resolve("example.com"), Ok(vec![addr("10.0.0.2:5269")]));
        // Aliases route to the cluster's nodes too.
        assert_eq!(
            t.resolve("conference.example.com"),
            Ok(vec![addr("10.0.0.2:5269")])
        );
        // Node 1 comes back and is used again.
        let back = t.record_probe(addr("10.0.0.1:5269"), Ok(()));
        assert_eq!(back.map(|b| b.state), Some(NodeState::Active));
        assert_eq!(
            t.resolve("example.com"),
            Ok(vec![addr("10.0.0.1:5269"), addr("10.0.0.2:5269")])
        );
        assert!(t.resolve("partner.test").is_err());
    }

    #[test]
    fn a_domain_without_federation_is_local_but_neither_routed_nor_announced() {
        let t = table();
        assert!(t.is_known("quiet.example") && t.is_known("muc.quiet.example"));
        assert!(!t.federates("quiet.example") && !t.federates("muc.quiet.example"));
        assert!(!t.peer_allowed("quiet.example"));
        assert!(t.resolve("quiet.example").is_err());
        assert_eq!(
            t.domains_and_aliases(),
            (
                vec!["example.com".to_owned()],
                vec!["conference.example.com".to_owned()]
            )
        );
    }

    #[test]
    fn probing_names_route_without_being_announced() {
        let t = table();
        let src = Source::Static {
            domain: "example.com".into(),
        };
        t.begin_probing(&src, &["upload.example.com".to_owned()]);
        assert!(t.peer_allowed("upload.example.com"));
        assert!(!t.federates("upload.example.com"));
        assert!(t.resolve("upload.example.com").is_ok());
        t.end_probing(&src);
        assert!(!t.is_known("upload.example.com"));
        let ch = t.set_discovered_aliases(&src, "example.com", &["chat.example.com".to_owned()]);
        assert_eq!(ch.added_aliases, vec!["chat.example.com".to_owned()]);
        assert!(t.federates("chat.example.com"));
        let ch = t.set_discovered_aliases(&src, "example.com", &[]);
        assert_eq!(ch.removed_aliases, vec!["chat.example.com".to_owned()]);
        // Configured aliases are never removed by discovery.
        assert!(t.federates("conference.example.com"));
    }

    #[test]
    fn discovered_nodes_keep_their_state() {
        let cfg = NodesConfig {
            clusters: vec![ClusterSpec {
                source: Source::Dns {
                    domain: "example.com".into(),
                },
                domains: vec![DomainSettings::new("example.com")],
                aliases: Vec::new(),
                nodes: Vec::new(),
            }],
            settings: Vec::new(),
            discovery: DiscoverySettings::default(),
            warnings: Vec::new(),
        };
        let t = NodeTable::new(&cfg);
        let src = cfg.clusters[0].source.clone();
        assert!(t.resolve("example.com").is_err());
        let a = (addr("10.0.0.1:5269"), "imp1.example.com".to_owned());
        let b = (addr("10.0.0.2:5269"), "imp2.example.com".to_owned());
        let ch = t.set_nodes(&src, std::slice::from_ref(&a));
        assert_eq!(ch.added_nodes.len(), 1);
        t.record_probe(a.0, Ok(()));
        let ch = t.set_nodes(&src, &[a.clone(), b.clone()]);
        assert_eq!(
            ch.added_nodes,
            vec!["10.0.0.2:5269 (example.com)".to_owned()]
        );
        assert_eq!(t.resolve("example.com"), Ok(vec![a.0]));
        let ch = t.set_nodes(&src, std::slice::from_ref(&b));
        assert_eq!(
            ch.removed_nodes,
            vec!["10.0.0.1:5269 (example.com)".to_owned()]
        );
        // A reload with the same cluster keeps what discovery found.
        let ch = t.reconfigure(&cfg);
        assert!(ch.is_empty(), "{ch:?}");
        assert_eq!(t.clusters()[0].nodes.len(), 1);
    }
}
