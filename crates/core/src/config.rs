//! core's TOML configuration: parsed and validated before anything binds.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoreConfig {
    /// This core's identity.
    pub core: CoreSection,
    /// The traversal tunnel to the edge.
    pub tunnel: TunnelSection,
    /// s2s with the internal IM&P nodes.
    pub s2s: S2sSection,
    /// Local domains and the nodes that serve them.
    #[serde(default)]
    pub domains: Vec<DomainSection>,
    /// IM&P clusters whose nodes and chat node aliases core discovers.
    #[serde(default)]
    pub clusters: Vec<crate::discovery::ClusterSection>,
    /// How nodes are discovered and health-checked.
    #[serde(default)]
    pub discovery: crate::discovery::DiscoverySection,
    /// Logging.
    #[serde(default)]
    pub log: LogSection,
    /// The local admin API (`core status` and friends); default socket when absent.
    #[serde(default)]
    pub admin: causeway_app::admin::AdminSection,
    /// Prometheus metrics over HTTP; absent: off.
    #[serde(default)]
    pub metrics: Option<causeway_app::metrics::MetricsSection>,
    /// Email address for federation; absent: off.
    #[serde(default)]
    pub email_translation: crate::email::EmailSection,
}

impl CoreConfig {
    /// The names core's s2s certificate must cover: its FQDN (`core.id`) and the chat node
    /// aliases of `[[domains]]`, normalized; errors name the setting.
    pub fn certificate_names(&self) -> anyhow::Result<causeway_app::cert::CertNames> {
        let mut aliases = Vec::new();
        for (i, d) in self.domains.iter().enumerate() {
            for (j, a) in d.chat_node_aliases.iter().enumerate() {
                aliases
                    .push(causeway_xmpp::addr::normalize_domain(a).map_err(|e| {
                        anyhow::anyhow!("domains[{i}].chat_node_aliases[{j}]: {e}")
                    })?);
            }
        }
        Ok(causeway_app::cert::CertNames {
            fqdn: Some(self.core.id.trim().to_ascii_lowercase()),
            domains: Vec::new(),
            aliases,
        })
    }
}

/// The certificate names of a config file, for `core cert csr`: parsed with the daemon's own
/// parser, but the files it names need not exist yet.
pub fn certificate_names(path: &Path) -> anyhow::Result<causeway_app::cert::CertNames> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config {}", path.display()))?;
    let raw: CoreConfig =
        toml::from_str(&text).with_context(|| format!("config {}", path.display()))?;
    raw.certificate_names()
}

/// `[core]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoreSection {
    /// The core's name: must equal the name in its traversal client certificate.
    pub id: String,
}

/// `[tunnel]`: one edge (`edge`, `edge_name`) or several (`[[tunnel.edges]]`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunnelSection {
    /// The edge's traversal address (host:port or ip:port), when there is one edge.
    #[serde(default)]
    pub edge: Option<String>,
    /// The name in that edge's traversal server certificate.
    #[serde(default)]
    pub edge_name: Option<String>,
    /// Every edge, when there are several (high availability); instead of `edge`.
    #[serde(default)]
    pub edges: Vec<EdgeEntry>,
    /// core's traversal client certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The traversal CA that signed the edge's certificate.
    pub ca: PathBuf,
    /// Stanzas kept until acknowledged.
    #[serde(default = "default_window")]
    pub window: usize,
    /// Bytes of stanzas kept until acknowledged (payload and domain names).
    #[serde(default = "default_window_bytes")]
    pub window_bytes: usize,
    /// Keepalive interval in seconds.
    #[serde(default = "default_keepalive")]
    pub keepalive_secs: u64,
    /// Seconds a planned stop (SIGTERM, `drain`) may take to hand everything over: sessions
    /// closed, queues written, the tunnel acknowledged (keep it under the unit's
    /// TimeoutStopSec=, 90 s). 1 to 600.
    #[serde(default = "default_drain")]
    pub drain_secs: u64,
}

/// `[[tunnel.edges]]`: one edge core keeps a tunnel to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeEntry {
    /// Its traversal address (host:port or ip:port).
    pub address: String,
    /// The name in its traversal server certificate.
    pub name: String,
}

/// `[s2s]`: the internal leg.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S2sSection {
    /// Where the IM&P nodes connect (their federation route points here).
    #[serde(default = "default_s2s_listen")]
    pub listen: SocketAddr,
    /// Certificate presented to the nodes (PEM).
    pub cert: PathBuf,
    /// Its key (PEM).
    pub key: PathBuf,
    /// The XEP-0185 dialback secret, shared by every core of the deployment.
    #[serde(default)]
    pub dialback_secret: Option<String>,
    /// Or a file holding it (first line).
    #[serde(default)]
    pub dialback_secret_file: Option<PathBuf>,
    /// During a rollover of the secret: the one used before, still accepted when a node asks
    /// core to verify a key. Remove it once the rollover is done.
    #[serde(default)]
    pub dialback_secret_previous: Option<String>,
    /// Or a file holding it (first line).
    #[serde(default)]
    pub dialback_secret_previous_file: Option<PathBuf>,
    /// Require TLS with the nodes (default true).
    #[serde(default = "default_true")]
    pub require_tls: bool,
    /// Largest stanza accepted, in bytes.
    #[serde(default = "default_max_stanza")]
    pub max_stanza_bytes: usize,
    /// Close sessions idle this long (seconds).
    #[serde(default = "default_idle")]
    pub idle_timeout_secs: u64,
}

/// `[[domains]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainSection {
    /// The local XMPP domain, e.g. example.com.
    pub name: String,
    /// s2s addresses of the IM&P nodes serving it (ip:port); empty when a `[[clusters]]`
    /// entry discovers them.
    #[serde(default)]
    pub nodes: Vec<SocketAddr>,
    /// Chat node aliases (MUC services) hosted by those nodes.
    #[serde(default)]
    pub chat_node_aliases: Vec<String>,
    /// IM and presence service on for this domain (default true).
    #[serde(default = "default_true")]
    pub im_presence: bool,
    /// XMPP federation on for this domain (default true; with `im_presence` off it does not
    /// federate, and a warning is logged).
    #[serde(default = "default_true")]
    pub xmpp_federation: bool,
}

/// `[log]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    /// text (default) or json.
    #[serde(default = "default_log_format")]
    pub format: String,
    /// An env-filter directive.
    #[serde(default = "default_log_level")]
    pub level: String,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            format: default_log_format(),
            level: default_log_level(),
        }
    }
}

fn default_window() -> usize {
    4096
}
fn default_window_bytes() -> usize {
    causeway_tunnel::DEFAULT_WINDOW_BYTES
}
fn default_drain() -> u64 {
    causeway_app::DEFAULT_DRAIN_SECS
}

fn default_keepalive() -> u64 {
    10
}
fn default_s2s_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 5269))
}
fn default_true() -> bool {
    true
}
fn default_max_stanza() -> usize {
    262_144
}
fn default_idle() -> u64 {
    600
}
fn default_log_format() -> String {
    "text".into()
}
fn default_log_level() -> String {
    "info".into()
}

/// The config after validation.
pub struct Validated {
    /// Where it was read from (reloads read it again).
    pub path: PathBuf,
    /// The parsed file.
    pub raw: CoreConfig,
    /// Local domain or alias (lowercase) -> node addresses.
    pub nodes: HashMap<String, Vec<SocketAddr>>,
    /// Local domains (lowercase).
    pub domains: Vec<String>,
    /// Chat node aliases (lowercase).
    pub aliases: Vec<String>,
    /// Clusters of IM&P nodes, domain switches, discovery and health settings, warnings.
    pub node_config: crate::nodes::NodesConfig,
    /// The dialback secret.
    pub dialback_secret: String,
    /// The previous dialback secret, during a rollover.
    pub dialback_previous: Option<String>,
    /// `[tunnel] drain_secs`, checked.
    pub drain_within: std::time::Duration,
    /// Email address for federation (`[email_translation]`): its directory file loaded, or its
    /// LDAP settings checked.
    pub email: crate::email::EmailConfig,
    /// The edges to keep a tunnel to, in config order (`tunnel.edge` or `[[tunnel.edges]]`).
    pub edges: Vec<EdgeEntry>,
}

/// What `check` warns about in a valid config.
pub fn warnings(cfg: &Validated) -> Vec<String> {
    let mut out = cfg.node_config.warnings.clone();
    out.extend(causeway_app::metrics::MetricsSection::warnings(
        cfg.raw.metrics.as_ref(),
        crate::http::DEFAULT_PORT,
    ));
    out
}

/// Read, parse and validate a config file. Relative paths in it are taken from the file's
/// directory. Errors name the setting.
pub fn load(path: &Path) -> anyhow::Result<Validated> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config {}", path.display()))?;
    let mut raw: CoreConfig =
        toml::from_str(&text).with_context(|| format!("config {}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    for p in [
        &mut raw.tunnel.cert,
        &mut raw.tunnel.key,
        &mut raw.tunnel.ca,
        &mut raw.s2s.cert,
        &mut raw.s2s.key,
    ] {
        *p = base.join(&*p);
    }
    if let Some(p) = raw.s2s.dialback_secret_previous_file.as_mut() {
        *p = base.join(&*p);
    }
    if let Some(p) = raw.s2s.dialback_secret_file.as_mut() {
        *p = base.join(&*p);
    }
    raw.admin.resolve_paths(base);
    raw.email_translation.resolve_paths(base);
    let mut validated = validate(raw)?;
    validated.path = path.to_owned();
    Ok(validated)
}

fn validate(raw: CoreConfig) -> anyhow::Result<Validated> {
    for (key, p) in [
        ("tunnel.cert", &raw.tunnel.cert),
        ("tunnel.key", &raw.tunnel.key),
        ("tunnel.ca", &raw.tunnel.ca),
        ("s2s.cert", &raw.s2s.cert),
        ("s2s.key", &raw.s2s.key),
    ] {
        if !p.is_file() {
            bail!("{key}: file {} does not exist", p.display());
        }
    }
    let dialback_secret = causeway_app::resolve_secret(
        "s2s",
        raw.s2s.dialback_secret.as_deref(),
        raw.s2s.dialback_secret_file.as_deref(),
    )?;
    let dialback_previous = causeway_app::previous_secret(
        "s2s",
        raw.s2s.dialback_secret_previous.as_deref(),
        raw.s2s.dialback_secret_previous_file.as_deref(),
        &dialback_secret,
    )?;
    causeway_tunnel::TunnelOptions::check_window(raw.tunnel.window, raw.tunnel.window_bytes)
        .map_err(anyhow::Error::msg)?;
    if raw.domains.is_empty() && raw.clusters.is_empty() {
        bail!("domains: at least one [[domains]] (or [[clusters]]) entry is needed");
    }
    let mut nodes: HashMap<String, Vec<SocketAddr>> = HashMap::new();
    let mut domains = Vec::new();
    let mut aliases = Vec::new();
    for (i, d) in raw.domains.iter().enumerate() {
        let name = causeway_xmpp::addr::normalize_domain(&d.name)
            .map_err(|e| anyhow::anyhow!("domains[{i}].name: {e}"))?;
        let discovered = raw.clusters.iter().any(|c| {
            c.publisher.is_some()
                || c.domain.as_deref().is_some_and(|x| {
                    causeway_xmpp::addr::normalize_domain(x).is_ok_and(|x| x == name)
                })
        });
        if d.nodes.is_empty() && !discovered {
            bail!(
                "domains[{i}].nodes: at least one IM&P node address (or a [[clusters]] entry \
                 that discovers {name})"
            );
        }
        insert_unique(&mut nodes, &name, &d.nodes, &format!("domains[{i}].name"))?;
        domains.push(name);
        for (j, a) in d.chat_node_aliases.iter().enumerate() {
            let key = format!("domains[{i}].chat_node_aliases[{j}]");
            let alias = causeway_xmpp::addr::normalize_domain(a)
                .map_err(|e| anyhow::anyhow!("{key}: {e}"))?;
            insert_unique(&mut nodes, &alias, &d.nodes, &key)?;
            aliases.push(alias);
        }
    }
    let node_config = crate::nodes::NodesConfig::validate(&raw, &domains)?;
    domains.extend(node_config.cluster_domains());
    let edges = crate::edges::edges_of(&raw.tunnel)?;
    raw.admin.validate()?;
    let drain_within = causeway_app::drain_within(raw.tunnel.drain_secs)?;
    let email = crate::email::EmailConfig::from_section(&raw.email_translation, &domains)?;
    match raw.log.format.as_str() {
        "text" | "json" => {}
        other => bail!("log.format: {other:?} is not text or json"),
    }
    Ok(Validated {
        path: PathBuf::new(),
        raw,
        nodes,
        domains,
        aliases,
        node_config,
        dialback_secret,
        dialback_previous,
        drain_within,
        edges,
        email,
    })
}

fn insert_unique(
    map: &mut HashMap<String, Vec<SocketAddr>>,
    name: &str,
    nodes: &[SocketAddr],
    key: &str,
) -> anyhow::Result<()> {
    if map.insert(name.to_owned(), nodes.to_vec()).is_some() {
        bail!("{key}: {name} is configured twice");
    }
    Ok(())
}
