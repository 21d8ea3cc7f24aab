//! The edge's TOML configuration: parsed and validated before anything binds.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use causeway_policy::{Policy, PrivacyMode};
use serde::Deserialize;

/// How TLS is used on federation connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SecurityMode {
    /// No stanza or dialback crosses an unencrypted connection (the default).
    #[default]
    TlsRequired,
    /// Offer and try TLS; continue without it when the peer cannot.
    TlsOptional,
}

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfig {
    /// The traversal tunnel to the cores.
    pub tunnel: TunnelSection,
    /// Federation (s2s) on the internet side.
    pub federation: FederationSection,
    /// DNS used to find remote servers.
    #[serde(default)]
    pub dns: DnsSection,
    /// Privacy policy.
    #[serde(default)]
    pub policy: PolicySection,
    /// Static routes: domains whose servers are configured instead of looked up in DNS.
    #[serde(default)]
    pub static_routes: Vec<StaticRoute>,
    /// Logging.
    #[serde(default)]
    pub log: LogSection,
}

/// `[tunnel]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunnelSection {
    /// gRPC listen address (default 0.0.0.0:7400).
    #[serde(default = "default_tunnel_listen")]
    pub listen: SocketAddr,
    /// The edge's traversal server certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The traversal CA that must have signed every core's client certificate.
    pub ca: PathBuf,
    /// Stanzas kept per core until acknowledged.
    #[serde(default = "default_window")]
    pub window: usize,
    /// Keepalive interval in seconds.
    #[serde(default = "default_keepalive")]
    pub keepalive_secs: u64,
}

/// `[federation]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederationSection {
    /// s2s listen address (default 0.0.0.0:5269).
    #[serde(default = "default_s2s_listen")]
    pub listen: SocketAddr,
    /// Federation certificate chain (PEM), presented to peers.
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The XEP-0185 dialback secret, shared by every edge of the deployment.
    #[serde(default)]
    pub dialback_secret: Option<String>,
    /// Or a file holding it (first line).
    #[serde(default)]
    pub dialback_secret_file: Option<PathBuf>,
    /// TLS use.
    #[serde(default)]
    pub security_mode: SecurityMode,
    /// Largest stanza accepted, in bytes.
    #[serde(default = "default_max_stanza")]
    pub max_stanza_bytes: usize,
    /// Close sessions idle this long (seconds).
    #[serde(default = "default_idle")]
    pub idle_timeout_secs: u64,
    /// Whitespace keepalive interval (seconds).
    #[serde(default = "default_s2s_keepalive")]
    pub keepalive_secs: u64,
}

/// `[dns]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsSection {
    /// Nameservers to ask (ip:port). Empty: the system's resolv.conf.
    #[serde(default)]
    pub nameservers: Vec<SocketAddr>,
}

/// `[policy]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySection {
    /// off, allow-list (default), deny-list.
    #[serde(default)]
    pub privacy_mode: PrivacyMode,
    /// Domains allowed in allow-list mode.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Domains refused in deny-list mode.
    #[serde(default)]
    pub deny: Vec<String>,
}

/// `[[static_routes]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticRoute {
    /// The remote domain.
    pub domain: String,
    /// Its servers, tried in turn (ip:port).
    pub addresses: Vec<SocketAddr>,
}

/// `[log]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    /// text (default) or json.
    #[serde(default = "default_log_format")]
    pub format: String,
    /// An env-filter directive, e.g. "info" or "info,causeway_s2s=debug".
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

fn default_tunnel_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 7400))
}
fn default_s2s_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 5269))
}
fn default_window() -> usize {
    4096
}
fn default_keepalive() -> u64 {
    10
}
fn default_max_stanza() -> usize {
    262_144
}
fn default_idle() -> u64 {
    600
}
fn default_s2s_keepalive() -> u64 {
    60
}
fn default_log_format() -> String {
    "text".into()
}
fn default_log_level() -> String {
    "info".into()
}

/// The config after validation: everything the edge needs, resolved.
pub struct Validated {
    /// The parsed file.
    pub raw: EdgeConfig,
    /// The privacy policy.
    pub policy: Policy,
    /// Static routes by lowercased domain.
    pub routes: HashMap<String, Vec<SocketAddr>>,
    /// The dialback secret.
    pub dialback_secret: String,
}

/// Read, parse and validate a config file. Relative paths in it are taken from the file's
/// directory. Errors name the setting.
pub fn load(path: &Path) -> anyhow::Result<Validated> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config {}", path.display()))?;
    let mut raw: EdgeConfig =
        toml::from_str(&text).with_context(|| format!("config {}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    for p in [
        &mut raw.tunnel.cert,
        &mut raw.tunnel.key,
        &mut raw.tunnel.ca,
        &mut raw.federation.cert,
        &mut raw.federation.key,
    ] {
        *p = base.join(&*p);
    }
    if let Some(p) = raw.federation.dialback_secret_file.as_mut() {
        *p = base.join(&*p);
    }
    validate(raw)
}

fn validate(raw: EdgeConfig) -> anyhow::Result<Validated> {
    for (key, p) in [
        ("tunnel.cert", &raw.tunnel.cert),
        ("tunnel.key", &raw.tunnel.key),
        ("tunnel.ca", &raw.tunnel.ca),
        ("federation.cert", &raw.federation.cert),
        ("federation.key", &raw.federation.key),
    ] {
        if !p.is_file() {
            bail!("{key}: file {} does not exist", p.display());
        }
    }
    let dialback_secret = causeway_app::resolve_secret(
        "federation",
        raw.federation.dialback_secret.as_deref(),
        raw.federation.dialback_secret_file.as_deref(),
    )?;
    if raw.federation.max_stanza_bytes < 10_000 {
        bail!("federation.max_stanza_bytes: at least 10000 (RFC 6120 13.12)");
    }
    let mut routes: HashMap<String, Vec<SocketAddr>> = HashMap::new();
    for (i, r) in raw.static_routes.iter().enumerate() {
        let d = causeway_xmpp::addr::normalize_domain(&r.domain)
            .map_err(|e| anyhow::anyhow!("static_routes[{i}].domain: {e}"))?;
        if r.addresses.is_empty() {
            bail!("static_routes[{i}].addresses: at least one address");
        }
        routes
            .entry(d)
            .or_default()
            .extend(r.addresses.iter().copied());
    }
    let check_list = |key: &str, list: &[String]| -> anyhow::Result<Vec<String>> {
        list.iter()
            .enumerate()
            .map(|(i, d)| {
                causeway_xmpp::addr::normalize_domain(d)
                    .map_err(|e| anyhow::anyhow!("policy.{key}[{i}]: {e}"))
            })
            .collect()
    };
    let allow = check_list("allow", &raw.policy.allow)?;
    let deny = check_list("deny", &raw.policy.deny)?;
    let policy = Policy::new(
        raw.policy.privacy_mode,
        allow,
        deny,
        routes.keys().cloned().collect(),
    )
    .map_err(|e| anyhow::anyhow!("policy: {e}"))?;
    match raw.log.format.as_str() {
        "text" | "json" => {}
        other => bail!("log.format: {other:?} is not text or json"),
    }
    Ok(Validated {
        raw,
        policy,
        routes,
        dialback_secret,
    })
}
