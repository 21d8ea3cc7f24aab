//! IM&P discovery: which nodes serve a cluster's domains (DNS SRV in the internal view), which
//! domains a publisher serves (it accepts a stream to them), and which chat node aliases the
//! domains have (XEP-0030 over s2s); then the runner that keeps the node table fresh: at
//! start, every `refresh_secs`, on `core servers --refresh`, and health probes every
//! `health_secs` (crates/core/src/health.rs).
//!
//! Disco over s2s: core speaks for every remote domain towards the nodes, so it asks as
//! `discovery.probe_domain` (a name nobody federates with, `causeway-probe.invalid` by
//! default): `<iq type='get' from='causeway-probe.invalid' to='example.com'>` goes out like any
//! stanza from the tunnel, and the node's answer comes back to core's s2s listener, where
//! `deliver` hands it to [`Requests::take_answer`] before anything could reach the edge.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::bail;
use bytes::Bytes;
use causeway_s2s::{InboundStanza, OutboundStanza, S2s, LOG_MODULE};
use causeway_xmpp::{ns, Element, StanzaCondition};
use serde::Deserialize;
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use crate::nodes::{Changes, NodeTable, NodesConfig, Source};

/// The XEP-0030 namespaces.
pub const NS_DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
/// Items.
pub const NS_DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";

/// `[discovery]`: how core finds and watches its IM&P nodes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoverySection {
    /// The internal DNS view (ip:port); default: the system's resolv.conf.
    #[serde(default)]
    pub nameservers: Option<Vec<SocketAddr>>,
    /// Run discovery again this often (seconds; 0: only at start and on `servers --refresh`).
    #[serde(default = "default_refresh")]
    pub refresh_secs: u64,
    /// Probe every node this often (seconds).
    #[serde(default = "default_health")]
    pub health_secs: u64,
    /// A probe (and a disco request) not answered within this fails (seconds).
    #[serde(default = "default_probe_timeout")]
    pub probe_timeout_secs: u64,
    /// The domain core asks as (probes and disco); must not be a real domain.
    #[serde(default = "default_probe_domain")]
    pub probe_domain: String,
    /// s2s port of nodes found through `_xmpp-client._tcp` records or a publisher without one.
    #[serde(default = "default_node_port")]
    pub node_port: u16,
}

impl Default for DiscoverySection {
    fn default() -> Self {
        Self {
            nameservers: None,
            refresh_secs: default_refresh(),
            health_secs: default_health(),
            probe_timeout_secs: default_probe_timeout(),
            probe_domain: default_probe_domain(),
            node_port: default_node_port(),
        }
    }
}

fn default_refresh() -> u64 {
    300
}
fn default_health() -> u64 {
    15
}
fn default_probe_timeout() -> u64 {
    10
}
fn default_probe_domain() -> String {
    "causeway-probe.invalid".into()
}
fn default_node_port() -> u16 {
    causeway_dns::XMPP_SERVER_PORT
}

/// `[[clusters]]`: an IM&P cluster whose nodes core discovers; exactly one of the two.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// A local domain: its nodes are the targets of `_xmpp-server._tcp.<domain>` (else
    /// `_xmpp-client._tcp.<domain>` on `node_port`) in the internal DNS view.
    #[serde(default)]
    pub domain: Option<String>,
    /// A node, `host` or `host:port`: the domains it serves are found by asking it (its DNS
    /// parent domains, and `[[domains]]` entries without nodes), the other nodes from their
    /// SRV records.
    #[serde(default)]
    pub publisher: Option<String>,
}

/// `[discovery]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoverySettings {
    /// The internal DNS view; None: the system's.
    pub nameservers: Option<Vec<SocketAddr>>,
    /// Zero: no periodic discovery.
    pub refresh: Duration,
    /// Between health probes.
    pub health: Duration,
    /// Of one probe or disco request.
    pub probe_timeout: Duration,
    /// What core asks as.
    pub probe_domain: String,
    /// Port for nodes found without one.
    pub node_port: u16,
}

impl Default for DiscoverySettings {
    fn default() -> Self {
        Self {
            nameservers: None,
            refresh: Duration::from_secs(default_refresh()),
            health: Duration::from_secs(default_health()),
            probe_timeout: Duration::from_secs(default_probe_timeout()),
            probe_domain: default_probe_domain(),
            node_port: default_node_port(),
        }
    }
}

impl DiscoverySettings {
    /// Check `[discovery]`; errors name the setting.
    pub fn validate(s: &DiscoverySection) -> anyhow::Result<Self> {
        if s.health_secs == 0 {
            bail!("discovery.health_secs: must be at least 1");
        }
        if s.probe_timeout_secs == 0 {
            bail!("discovery.probe_timeout_secs: must be at least 1");
        }
        if s.node_port == 0 {
            bail!("discovery.node_port: must not be 0");
        }
        if s.nameservers.as_ref().is_some_and(Vec::is_empty) {
            bail!("discovery.nameservers: empty list (leave it out for the system's resolver)");
        }
        let probe_domain = causeway_xmpp::addr::normalize_domain(&s.probe_domain)
            .map_err(|e| anyhow::anyhow!("discovery.probe_domain: {e}"))?;
        Ok(Self {
            nameservers: s.nameservers.clone(),
            refresh: Duration::from_secs(s.refresh_secs),
            health: Duration::from_secs(s.health_secs),
            probe_timeout: Duration::from_secs(s.probe_timeout_secs),
            probe_domain,
            node_port: s.node_port,
        })
    }

    /// How long a disco request may take (first contact costs three connections and two
    /// dialback rounds).
    fn disco_timeout(&self) -> Duration {
        self.probe_timeout.max(Duration::from_secs(5))
    }
}

/// The source of `clusters[i]`; errors name the setting.
pub fn cluster_source(c: &ClusterSection, i: usize) -> anyhow::Result<Source> {
    match (&c.domain, &c.publisher) {
        (Some(d), None) => {
            let domain = causeway_xmpp::addr::normalize_domain(d)
                .map_err(|e| anyhow::anyhow!("clusters[{i}].domain: {e}"))?;
            Ok(Source::Dns { domain })
        }
        (None, Some(p)) => {
            let (host, port) = match p.rsplit_once(':') {
                Some((h, port)) if !h.contains(':') || h.starts_with('[') => {
                    let port: u16 = port.parse().map_err(|_| {
                        anyhow::anyhow!("clusters[{i}].publisher: bad port in {p:?}")
                    })?;
                    (h.trim_start_matches('[').trim_end_matches(']'), port)
                }
                _ => (p.as_str(), causeway_dns::XMPP_SERVER_PORT),
            };
            let host = if host.parse::<std::net::IpAddr>().is_ok() {
                host.to_owned()
            } else {
                causeway_xmpp::addr::normalize_domain(host)
                    .map_err(|e| anyhow::anyhow!("clusters[{i}].publisher: {e}"))?
            };
            Ok(Source::Publisher { host, port })
        }
        (Some(_), Some(_)) => bail!("clusters[{i}]: give either domain or publisher, not both"),
        (None, None) => bail!("clusters[{i}]: domain or publisher is required"),
    }
}

/// What came back for a request.
#[derive(Debug)]
enum Answer {
    /// The answering stanza.
    Stanza(Element),
    /// The request could not be sent.
    Bounced(StanzaCondition),
}

struct Pending {
    /// The domain the answer must come from.
    from: String,
    tx: oneshot::Sender<Answer>,
}

/// Discovery's outstanding IQ requests, by id.
pub struct Requests {
    probe_domain: RwLock<String>,
    pending: Mutex<HashMap<String, Pending>>,
    next: AtomicU64,
}

/// Ids of discovery's requests start with this.
const ID_PREFIX: &str = "causeway-disco-";

impl Requests {
    /// None outstanding; asking as `probe_domain`.
    pub fn new(probe_domain: &str) -> Self {
        Self {
            probe_domain: RwLock::new(probe_domain.to_owned()),
            pending: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
        }
    }

    /// The domain requests are sent from.
    pub fn probe_domain(&self) -> String {
        match self.probe_domain.read() {
            Ok(d) => d.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set_probe_domain(&self, domain: &str) {
        match self.probe_domain.write() {
            Ok(mut d) => domain.clone_into(&mut d),
            Err(poisoned) => domain.clone_into(&mut poisoned.into_inner()),
        }
    }

    fn register(&self, from: &str) -> (String, oneshot::Receiver<Answer>) {
        let id = format!(
            "{ID_PREFIX}{:x}-{}",
            std::process::id(),
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        let (tx, rx) = oneshot::channel();
        if let Ok(mut map) = self.pending.lock() {
            map.insert(
                id.clone(),
                Pending {
                    from: from.to_owned(),
                    tx,
                },
            );
        }
        (id, rx)
    }

    fn forget(&self, id: &str) {
        if let Ok(mut map) = self.pending.lock() {
            map.remove(id);
        }
    }

    /// A stanza to the probe domain: an answer to one of our requests goes to its waiter;
    /// anything else to that domain is dropped. True when the stanza was ours to take.
    pub fn take_answer(&self, stanza: &InboundStanza) -> bool {
        if stanza.to_domain != self.probe_domain() {
            return false;
        }
        let Some(el) = causeway_s2s::parse_stanza(&stanza.payload) else {
            return true;
        };
        let is_answer = el.name == "iq" && matches!(el.attr("type"), Some("result" | "error"));
        let id = el.attr("id").unwrap_or_default();
        if !is_answer || !id.starts_with(ID_PREFIX) {
            debug!(module = LOG_MODULE, from = %stanza.from_domain, stanza = %el.name, "stanza to the probe domain dropped");
            return true;
        }
        let waiter = self.pending.lock().ok().and_then(|mut map| {
            let from_ok = map.get(id).is_some_and(|p| p.from == stanza.from_domain);
            if from_ok {
                map.remove(id)
            } else {
                None
            }
        });
        match waiter {
            Some(p) => {
                let _ = p.tx.send(Answer::Stanza(el));
            }
            None => {
                debug!(module = LOG_MODULE, from = %stanza.from_domain, id, "late or unexpected disco answer dropped");
            }
        }
        true
    }

    /// A request that could not be sent: wake its waiter now. True when it was ours.
    pub fn take_bounce(&self, stanza: &OutboundStanza, condition: StanzaCondition) -> bool {
        if stanza.from_domain != self.probe_domain() {
            return false;
        }
        let id = causeway_s2s::parse_stanza(&stanza.payload)
            .and_then(|el| el.attr("id").map(str::to_owned))
            .unwrap_or_default();
        let waiter = self.pending.lock().ok().and_then(|mut map| map.remove(&id));
        if let Some(p) = waiter {
            let _ = p.tx.send(Answer::Bounced(condition));
        }
        true
    }
}

/// What the runner needs to know that `core reload` may change.
struct Runtime {
    settings: DiscoverySettings,
    config: NodesConfig,
    resolver: Option<causeway_dns::Resolver>,
    resolver_error: Option<String>,
}

/// The wait before the next discovery run: `refresh` (zero: none) after a complete run;
/// after `incomplete` incomplete runs in a row, 5 s doubling each time, up to `refresh` (or
/// 5 minutes when periodic discovery is off: an incomplete start is still completed).
fn retry_after(refresh: Duration, incomplete: u32) -> Duration {
    if incomplete == 0 {
        return refresh;
    }
    let cap = if refresh.is_zero() {
        Duration::from_secs(300)
    } else {
        refresh
    };
    let backoff = Duration::from_secs(5).saturating_mul(1 << (incomplete - 1).min(10));
    backoff.min(cap)
}

/// The discovery and health runner of a core.
pub struct Discovery {
    table: Arc<NodeTable>,
    s2s: Arc<S2s>,
    runtime: RwLock<Arc<Runtime>>,
    /// One discovery run at a time (periodic, refresh, reload).
    running: tokio::sync::Mutex<()>,
    /// Wakes the loops when the intervals change.
    wake: tokio::sync::Notify,
    /// The tunnel is attached ([`Discovery::spawn`]): changes must be announced again (before,
    /// the first hello carries them).
    attached: std::sync::atomic::AtomicBool,
    /// Discovery runs in a row that were incomplete (a node down, DNS failing): the next run
    /// comes sooner than `refresh_secs` ([`retry_after`]), so that a core started before its
    /// IM&P servers learns their chat node aliases when they come up, not minutes later.
    incomplete_runs: std::sync::atomic::AtomicU32,
    /// The restart-only settings in force since start (every reload reports the ones the file
    /// changed since).
    restart_only: Mutex<crate::reload::RestartOnly>,
}

impl Discovery {
    /// For a validated config; logs its warnings (e.g. federation on with IM and presence off).
    pub fn new(cfg: &crate::config::Validated, table: Arc<NodeTable>, s2s: Arc<S2s>) -> Arc<Self> {
        for w in &cfg.node_config.warnings {
            warn!(module = LOG_MODULE, warning = %w, "config warning");
        }
        Arc::new(Self {
            table,
            s2s,
            runtime: RwLock::new(Arc::new(runtime(&cfg.node_config))),
            running: tokio::sync::Mutex::new(()),
            wake: tokio::sync::Notify::new(),
            attached: std::sync::atomic::AtomicBool::new(false),
            incomplete_runs: std::sync::atomic::AtomicU32::new(0),
            restart_only: Mutex::new(crate::reload::RestartOnly::of(cfg)),
        })
    }

    /// The restart-only settings in force.
    pub fn applied_restart_only(&self) -> crate::reload::RestartOnly {
        match self.restart_only.lock() {
            Ok(r) => r.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Probe every node now.
    pub async fn probe_now(&self) {
        crate::health::probe_all(&self.table, &self.s2s, &self.rt().settings).await;
    }

    /// The node table.
    pub fn nodes(&self) -> &Arc<NodeTable> {
        &self.table
    }

    fn rt(&self) -> Arc<Runtime> {
        match self.runtime.read() {
            Ok(r) => r.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Use a new config's discovery settings (`core reload`); the node table is changed by the
    /// caller.
    pub fn reconfigure(&self, cfg: &NodesConfig) {
        let next = Arc::new(runtime(cfg));
        self.table
            .requests()
            .set_probe_domain(&next.settings.probe_domain);
        match self.runtime.write() {
            Ok(mut r) => *r = next,
            Err(poisoned) => *poisoned.into_inner() = next,
        }
        self.wake.notify_waiters();
    }

    /// Before the first hello: probe every node and run discovery once, so that the edge
    /// learns the discovered domains and aliases at once. Bounded by the probe timeouts.
    /// Returns the names to announce.
    pub async fn initial(&self) -> (Vec<String>, Vec<String>) {
        crate::health::probe_all(&self.table, &self.s2s, &self.rt().settings).await;
        let changes = self.refresh().await;
        if !changes.is_empty() || !changes.errors.is_empty() {
            info!(module = LOG_MODULE, changes = %changes.summary(), errors = ?changes.errors, "initial IM&P discovery");
        }
        self.table.domains_and_aliases()
    }

    /// After the tunnel is attached: let stanzas through, then keep probing and discovering.
    /// The health loop beats in `heartbeats` (a probe round that hangs makes `/healthz` fail).
    pub fn spawn(self: &Arc<Self>, heartbeats: &causeway_http::Heartbeats) {
        self.attached.store(true, Ordering::Relaxed);
        self.table.open_delivery();
        let me = self.clone();
        let beat = heartbeats.register("node health", self.health_round());
        tokio::spawn(async move { me.health_loop(beat).await });
        let me = self.clone();
        tokio::spawn(async move { me.refresh_loop().await });
    }

    /// The longest a health round should take: the pause between rounds and a probe timeout.
    fn health_round(&self) -> Duration {
        let settings = &self.rt().settings;
        settings.health + settings.probe_timeout
    }

    async fn health_loop(self: Arc<Self>, beat: causeway_http::Beat) {
        loop {
            beat.set_every(self.health_round());
            beat.beat();
            let every = self.rt().settings.health;
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = self.wake.notified() => continue,
            }
            crate::health::probe_all(&self.table, &self.s2s, &self.rt().settings).await;
        }
    }

    async fn refresh_loop(self: Arc<Self>) {
        loop {
            let every = retry_after(
                self.rt().settings.refresh,
                self.incomplete_runs.load(Ordering::Relaxed),
            );
            let sleep = async {
                if every.is_zero() {
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep(every).await;
            };
            tokio::select! {
                _ = sleep => {}
                _ = self.wake.notified() => continue,
            }
            let changes = self.refresh().await;
            if !changes.is_empty() {
                info!(module = LOG_MODULE, changes = %changes.summary(), "IM&P discovery changed the node table");
            }
        }
    }

    /// Run discovery for every discovered cluster now and apply what it finds (new nodes are
    /// probed at once). Announces the names again when they changed. Returns the changes.
    pub async fn refresh(&self) -> Changes {
        let _one_at_a_time = self.running.lock().await;
        let rt = self.rt();
        let before = self.table.domains_and_aliases();
        let mut changes = Changes::default();
        if let Some(e) = &rt.resolver_error {
            changes.errors.push(e.clone());
        }
        for cluster in self.table.clusters() {
            let (c, error) = self.discover_cluster(&rt, &cluster.source).await;
            if let Some(e) = &error {
                warn!(module = LOG_MODULE, cluster = %cluster.source.name(), error = %e, "IM&P discovery incomplete; what was known before is kept");
                changes
                    .errors
                    .push(format!("{}: {e}", cluster.source.name()));
            }
            if !matches!(cluster.source, Source::Static { .. }) || error.is_some() {
                self.table.set_discovery_result(&cluster.source, error);
            }
            changes.merge(c);
        }
        if changes.errors.is_empty() {
            self.incomplete_runs.store(0, Ordering::Relaxed);
        } else {
            self.incomplete_runs.fetch_add(1, Ordering::Relaxed);
        }
        let attached = self.attached.load(Ordering::Relaxed);
        if attached && self.table.domains_and_aliases() != before {
            crate::reload::announce_domains(&self.table);
        }
        changes
    }

    /// Discover one cluster: nodes (DNS, publisher), then aliases (disco). Returns the changes
    /// and the first error.
    async fn discover_cluster(&self, rt: &Runtime, source: &Source) -> (Changes, Option<String>) {
        let mut changes = Changes::default();
        let mut errors: Vec<String> = Vec::new();
        match source {
            // Fixed nodes and aliases: nothing to discover.
            Source::Static { .. } => return (changes, None),
            Source::Dns { domain } => match self.srv_nodes(rt, domain).await {
                Ok(found) => changes.merge(self.table.set_nodes(source, &found)),
                Err(e) => errors.push(e),
            },
            Source::Publisher { host, port } => match self.publisher(rt, source, host, *port).await
            {
                Ok((domains, nodes)) => {
                    changes.merge(self.table.set_domains(source, &domains, &rt.config));
                    changes.merge(self.table.set_nodes(source, &nodes));
                }
                Err(e) => errors.push(e),
            },
        }
        // New nodes are probed before anyone is asked anything.
        if !changes.added_nodes.is_empty() {
            crate::health::probe_all(&self.table, &self.s2s, &rt.settings).await;
        }
        let Some(cluster) = self
            .table
            .clusters()
            .into_iter()
            .find(|c| c.source == *source)
        else {
            return (changes, errors.into_iter().next());
        };
        let any_active = cluster
            .nodes
            .iter()
            .any(|n| n.state == crate::nodes::NodeState::Active);
        if !any_active {
            errors.push("no active node to ask for chat node aliases".into());
            return (changes, errors.into_iter().next());
        }
        for d in cluster.domains.iter().filter(|d| d.federated()) {
            match self.aliases_of(rt, source, &d.name).await {
                Ok(found) => {
                    changes.merge(self.table.set_discovered_aliases(source, &d.name, &found))
                }
                Err(e) => errors.push(format!("disco of {}: {e}", d.name)),
            }
        }
        (changes, errors.into_iter().next())
    }

    /// The nodes of `domain` from its SRV records (`_xmpp-server._tcp`, else `_xmpp-client._tcp`
    /// targets on `node_port`), ordered by priority then address.
    async fn srv_nodes(
        &self,
        rt: &Runtime,
        domain: &str,
    ) -> Result<Vec<(SocketAddr, String)>, String> {
        let resolver = rt
            .resolver
            .as_ref()
            .ok_or_else(|| rt.resolver_error.clone().unwrap_or_default())?;
        let mut records = resolver
            .lookup_srv("_xmpp-server._tcp", domain)
            .await
            .map_err(|e| e.to_string())?;
        if records.is_empty() {
            records = resolver
                .lookup_srv("_xmpp-client._tcp", domain)
                .await
                .map_err(|e| e.to_string())?;
            for r in records.iter_mut() {
                r.port = rt.settings.node_port;
            }
        }
        records.retain(|r| !r.target.is_empty() && r.target != ".");
        if records.is_empty() {
            return Err(format!(
                "no _xmpp-server._tcp or _xmpp-client._tcp SRV records for {domain}"
            ));
        }
        let mut found: Vec<(u16, SocketAddr, String)> = Vec::new();
        let mut failures = Vec::new();
        for r in records {
            match resolver.lookup_ip(&r.target).await {
                Ok(ips) => {
                    for ip in ips {
                        let addr = SocketAddr::new(ip, r.port);
                        if !found.iter().any(|(_, a, _)| *a == addr) {
                            found.push((r.priority, addr, r.target.clone()));
                        }
                    }
                }
                Err(e) => failures.push(e.to_string()),
            }
        }
        if found.is_empty() {
            return Err(format!(
                "no SRV target of {domain} resolves: {}",
                failures.join("; ")
            ));
        }
        found.sort_by_key(|(prio, addr, _)| (*prio, *addr));
        Ok(found.into_iter().map(|(_, a, h)| (a, h)).collect())
    }

    /// The domains a publisher serves (those it accepts a stream to, among its DNS parent
    /// domains and the `[[domains]]` entries without nodes) and the cluster's nodes (the
    /// publisher, and the SRV targets of those domains).
    async fn publisher(
        &self,
        rt: &Runtime,
        source: &Source,
        host: &str,
        port: u16,
    ) -> Result<(Vec<String>, Vec<(SocketAddr, String)>), String> {
        let resolver = rt
            .resolver
            .as_ref()
            .ok_or_else(|| rt.resolver_error.clone().unwrap_or_default())?;
        let ips = resolver.lookup_ip(host).await.map_err(|e| e.to_string())?;
        let mut nodes: Vec<(SocketAddr, String)> = ips
            .iter()
            .map(|ip| (SocketAddr::new(*ip, port), host.to_owned()))
            .collect();
        let Some(first) = nodes.first().map(|(a, _)| *a) else {
            return Err(format!("{host} has no address"));
        };
        let claimed = self.table.clusters();
        let mut candidates: Vec<String> = parent_domains(host);
        for s in &rt.config.settings {
            if !candidates.contains(&s.name) {
                candidates.push(s.name.clone());
            }
        }
        // Names another cluster serves are not this publisher's to claim.
        candidates.retain(|d| {
            !claimed.iter().any(|c| {
                c.source != *source
                    && (c.domain(d).is_some() || c.aliases.iter().any(|a| a.name == *d))
            })
        });
        let mut domains = Vec::new();
        let mut last_error = None;
        for d in candidates {
            let probe = crate::health::probe(
                first,
                &d,
                &rt.settings.probe_domain,
                rt.settings.probe_timeout,
            )
            .await;
            match probe {
                Ok(()) => domains.push(d),
                Err(e) => last_error = Some(e),
            }
        }
        if domains.is_empty() {
            return Err(format!(
                "{host} serves none of the candidate domains (last answer: {})",
                last_error.unwrap_or_default()
            ));
        }
        for d in &domains {
            if let Ok(more) = self.srv_nodes(rt, d).await {
                for (a, h) in more {
                    if !nodes.iter().any(|(x, _)| *x == a) {
                        nodes.push((a, h));
                    }
                }
            }
        }
        Ok((domains, nodes))
    }

    /// The chat node aliases of `domain`: its disco#items whose disco#info has an identity of
    /// category `conference`.
    async fn aliases_of(
        &self,
        rt: &Runtime,
        source: &Source,
        domain: &str,
    ) -> Result<Vec<String>, String> {
        let items = self.iq_get(rt, domain, NS_DISCO_ITEMS).await?;
        let known = self.table.clusters();
        let mut candidates: Vec<String> = Vec::new();
        for item in items
            .child("query", NS_DISCO_ITEMS)
            .into_iter()
            .flat_map(|q| q.elements())
            .filter(|e| e.name == "item" && e.attr("node").is_none())
        {
            let Some(jid) = item.attr("jid") else {
                continue;
            };
            if jid.contains(['@', '/']) {
                continue;
            }
            let Ok(name) = causeway_xmpp::addr::normalize_domain(jid) else {
                continue;
            };
            let elsewhere = known.iter().any(|c| {
                c.source != *source
                    && (c.domain(&name).is_some() || c.aliases.iter().any(|a| a.name == name))
            });
            if name != domain
                && !elsewhere
                && !candidates.contains(&name)
                && name != rt.settings.probe_domain
            {
                candidates.push(name);
            }
        }
        self.table.begin_probing(source, &candidates);
        let mut aliases = Vec::new();
        for name in &candidates {
            match self.iq_get(rt, name, NS_DISCO_INFO).await {
                Ok(info) if is_conference(&info) => aliases.push(name.clone()),
                Ok(_) => {
                    debug!(module = LOG_MODULE, item = %name, "disco item is not a conference service")
                }
                Err(e) => {
                    debug!(module = LOG_MODULE, item = %name, error = %e, "disco#info failed")
                }
            }
        }
        self.table.end_probing(source);
        aliases.sort();
        Ok(aliases)
    }

    /// Send `<iq type='get'><query xmlns=query_ns/></iq>` to `to` as the probe domain and wait
    /// for the result.
    async fn iq_get(&self, rt: &Runtime, to: &str, query_ns: &str) -> Result<Element, String> {
        let from = rt.settings.probe_domain.clone();
        let requests = self.table.requests();
        let (id, rx) = requests.register(to);
        let iq = Element::new("iq", ns::SERVER)
            .with_attr("type", "get")
            .with_attr("id", &id)
            .with_attr("from", &from)
            .with_attr("to", to)
            .with_child(Element::new("query", query_ns));
        self.s2s
            .send(OutboundStanza {
                from_domain: from,
                to_domain: to.to_owned(),
                payload: Bytes::from(iq.to_xml(ns::SERVER)),
            })
            .await;
        let timeout = rt.settings.disco_timeout();
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Answer::Stanza(el))) if el.attr("type") == Some("result") => Ok(el),
            Ok(Ok(Answer::Stanza(el))) => {
                let condition = el
                    .child("error", ns::SERVER)
                    .and_then(|e| e.elements().next())
                    .map(|c| c.name.clone())
                    .unwrap_or_else(|| "unknown".into());
                Err(format!("{to} answered with an error: {condition}"))
            }
            Ok(Ok(Answer::Bounced(c))) => Err(format!("could not reach {to}: {}", c.as_str())),
            Ok(Err(_)) => Err("request dropped".into()),
            Err(_) => {
                requests.forget(&id);
                Err(format!("no answer from {to} within {}s", timeout.as_secs()))
            }
        }
    }
}

fn runtime(cfg: &NodesConfig) -> Runtime {
    let needs_dns = cfg
        .clusters
        .iter()
        .any(|c| !matches!(c.source, Source::Static { .. }));
    let (resolver, resolver_error) = if needs_dns {
        let opts = causeway_dns::ResolverOptions {
            nameservers: cfg.discovery.nameservers.clone(),
            // Discovery runs rarely and must see changes at once.
            cache: false,
            ..causeway_dns::ResolverOptions::default()
        };
        match causeway_dns::Resolver::with_options(opts) {
            Ok(r) => (Some(r), None),
            Err(e) => (None, Some(format!("discovery DNS resolver: {e}"))),
        }
    } else {
        (None, None)
    };
    Runtime {
        settings: cfg.discovery.clone(),
        config: cfg.clone(),
        resolver,
        resolver_error,
    }
}

/// `imp1.dc1.example.com` -> `dc1.example.com`, `example.com` (names of two labels or more).
pub fn parent_domains(host: &str) -> Vec<String> {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Vec::new();
    }
    let labels: Vec<&str> = host.split('.').collect();
    (1..labels.len().saturating_sub(1))
        .map(|i| labels[i..].join("."))
        .collect()
}

/// A disco#info result with an identity of category `conference`.
pub fn is_conference(info: &Element) -> bool {
    info.child("query", NS_DISCO_INFO).is_some_and(|q| {
        q.elements()
            .any(|e| e.name == "identity" && e.attr("category") == Some("conference"))
    })
}

/// When something was last done, for listings ("never" is 0).
pub fn unix(t: Option<SystemTime>) -> u64 {
    t.map(causeway_app::admin::unix_secs).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_incomplete_discovery_is_retried_sooner_with_backoff() {
        let five_min = Duration::from_secs(300);
        let s = Duration::from_secs;
        assert_eq!(retry_after(five_min, 0), five_min, "complete: the period");
        assert_eq!(
            retry_after(Duration::ZERO, 0),
            Duration::ZERO,
            "complete, periodic off"
        );
        let waits: Vec<Duration> = (1..=8).map(|n| retry_after(five_min, n)).collect();
        assert_eq!(
            waits,
            [s(5), s(10), s(20), s(40), s(80), s(160), s(300), s(300)]
        );
        assert_eq!(retry_after(s(30), 4), s(30), "never later than the period");
        assert_eq!(
            retry_after(Duration::ZERO, 1),
            s(5),
            "completed even with periodic off"
        );
        assert_eq!(retry_after(Duration::ZERO, 40), five_min);
    }

    #[test]
    fn parents_of_a_publisher() {
        assert_eq!(
            parent_domains("imp1.dc1.example.com"),
            vec!["dc1.example.com".to_owned(), "example.com".to_owned()]
        );
        assert!(parent_domains("example.com").is_empty());
        assert!(parent_domains("10.0.0.1").is_empty());
    }

    #[test]
    fn cluster_sources() {
        let c = |domain: Option<&str>, publisher: Option<&str>| ClusterSection {
            domain: domain.map(str::to_owned),
            publisher: publisher.map(str::to_owned),
        };
        assert_eq!(
            cluster_source(&c(Some("Example.COM"), None), 0).ok(),
            Some(Source::Dns {
                domain: "example.com".into()
            })
        );
        assert_eq!(
            cluster_source(&c(None, Some("imp1.example.com:5270")), 0).ok(),
            Some(Source::Publisher {
                host: "imp1.example.com".into(),
                port: 5270
            })
        );
        assert_eq!(
            cluster_source(&c(None, Some("10.0.0.1")), 0).ok(),
            Some(Source::Publisher {
                host: "10.0.0.1".into(),
                port: 5269
            })
        );
        for bad in [c(None, None), c(Some("a.b"), Some("c.d"))] {
            let e = cluster_source(&bad, 3)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains("clusters[3]"), "{e}");
        }
    }

    #[test]
    fn answers_to_our_requests_are_taken_and_others_left() {
        let r = Requests::new("causeway-probe.invalid");
        let (id, mut rx) = r.register("example.com");
        let answer = |from: &str, to: &str, id: &str| InboundStanza {
            from_domain: from.into(),
            to_domain: to.into(),
            payload: Bytes::from(format!(
                "<iq xmlns='jabber:server' type='result' id='{id}' from='{from}' to='{to}'/>"
            )),
        };
        // Not to the probe domain: not ours.
        assert!(!r.take_answer(&answer("example.com", "partner.test", &id)));
        // From another domain: taken (dropped) but the waiter still waits.
        assert!(r.take_answer(&answer("evil.test", "causeway-probe.invalid", &id)));
        assert!(rx.try_recv().is_err());
        assert!(r.take_answer(&answer("example.com", "causeway-probe.invalid", &id)));
        assert!(matches!(rx.try_recv(), Ok(Answer::Stanza(_))));
    }

    #[test]
    fn conference_identities() {
        let info = Element::new("iq", ns::SERVER).with_child(
            Element::new("query", NS_DISCO_INFO).with_child(
                Element::new("identity", NS_DISCO_INFO)
                    .with_attr("category", "conference")
                    .with_attr("type", "text"),
            ),
        );
        assert!(is_conference(&info));
        let server = Element::new("iq", ns::SERVER).with_child(
            Element::new("query", NS_DISCO_INFO).with_child(
                Element::new("identity", NS_DISCO_INFO)
                    .with_attr("category", "server")
                    .with_attr("type", "im"),
            ),
        );
        assert!(!is_conference(&server));
    }
}
