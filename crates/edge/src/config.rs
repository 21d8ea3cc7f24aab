//! The edge's TOML configuration: parsed and validated before anything binds.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use causeway_policy::{Policy, PrivacyMode, Rule, RuleConfig, ScopedRuleConfig};
use serde::Deserialize;

use crate::listen::ListenAddrs;

/// How TLS is used on federation connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SecurityMode {
    /// No stanza or dialback crosses an unencrypted connection (the default).
    #[default]
    TlsRequired,
    /// Offer and try TLS; continue without it when the peer cannot.
    TlsOptional,
    /// Never negotiate TLS (for labs and peers that cannot; not for the internet).
    NoTls,
}

impl SecurityMode {
    /// The s2s layer's equivalent.
    pub fn tls_mode(self) -> causeway_s2s::TlsMode {
        match self {
            SecurityMode::TlsRequired => causeway_s2s::TlsMode::Required,
            SecurityMode::TlsOptional => causeway_s2s::TlsMode::Optional,
            SecurityMode::NoTls => causeway_s2s::TlsMode::Disabled,
        }
    }
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
    /// The local admin API (`edge status` and friends); default socket when absent.
    #[serde(default)]
    pub admin: causeway_app::admin::AdminSection,
    /// Prometheus metrics over HTTP; absent: off.
    #[serde(default)]
    pub metrics: Option<causeway_app::metrics::MetricsSection>,
    /// Deadlines and connection limits.
    #[serde(default)]
    pub limits: crate::limits::LimitsSection,
}

/// `[tunnel]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunnelSection {
    /// gRPC listen address or addresses (default 0.0.0.0:7400 and [::]:7400).
    #[serde(default = "default_tunnel_listen")]
    pub listen: ListenAddrs,
    /// The edge's traversal server certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The traversal CA that must have signed every core's client certificate.
    pub ca: PathBuf,
    /// CRLs of the traversal CA (PEM or DER files, e.g. kept by `edge pki revoke`): a core
    /// whose certificate they revoke is refused, and cut off when a reload loads them.
    #[serde(default)]
    pub crls: Vec<PathBuf>,
    /// Stanzas kept per core until acknowledged.
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
    /// Which core may announce which domains and chat node aliases (`[[tunnel.cores]]`).
    #[serde(default)]
    pub cores: Vec<CoreGrant>,
}

/// `[[tunnel.cores]]`: one core id and the names it may serve.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoreGrant {
    /// The core's id (the name in its traversal client certificate, `core.id` in its config).
    pub id: String,
    /// Local domains and chat node aliases it may announce: `example.com`, or
    /// `*.example.com` for the domain and all its subdomains.
    pub domains: Vec<String>,
}

/// `[federation]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederationSection {
    /// s2s listen address or addresses (default 0.0.0.0:5269 and [::]:5269).
    #[serde(default = "default_s2s_listen")]
    pub listen: ListenAddrs,
    /// Direct TLS (XEP-0368) s2s listen address or addresses, e.g. 0.0.0.0:5270. Off unless
    /// set.
    #[serde(default)]
    pub direct_tls_listen: Option<ListenAddrs>,
    /// Try a remote domain's `_xmpps-server._tcp` (direct TLS) endpoints before STARTTLS.
    #[serde(default = "default_true")]
    pub direct_tls_outbound: bool,
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
    /// During a rollover of the secret: the one used before, still accepted when a peer
    /// asks us to verify a key (XEP-0220 `db:verify`). Remove it once every edge has the new
    /// `dialback_secret` (see README, "Dialback secret rollover").
    #[serde(default)]
    pub dialback_secret_previous: Option<String>,
    /// Or a file holding it (first line).
    #[serde(default)]
    pub dialback_secret_previous_file: Option<PathBuf>,
    /// TLS use.
    #[serde(default)]
    pub security_mode: SecurityMode,
    /// CAs trusted for federation peers' certificates (PEM bundle). Without it no peer
    /// certificate is trusted: SASL EXTERNAL is never offered and peers use dialback.
    #[serde(default)]
    pub ca_bundle: Option<PathBuf>,
    /// Certificate revocation lists (PEM or DER) checked against peers' certificates.
    #[serde(default)]
    pub crls: Vec<PathBuf>,
    /// Refuse peers without a valid certificate naming their domain (needs `ca_bundle`).
    #[serde(default)]
    pub require_client_certs: bool,
    /// Offer and use SASL EXTERNAL (XEP-0178) where certificates allow; dialback otherwise.
    #[serde(default = "default_true")]
    pub sasl_external: bool,
    /// Offer XEP-0198 stream management on inbound streams authenticated with SASL, so peers
    /// that keep unacknowledged stanzas resend them elsewhere if this edge dies.
    #[serde(default = "default_true")]
    pub stream_management: bool,
    /// Largest stanza accepted, in bytes.
    #[serde(default = "default_max_stanza")]
    pub max_stanza_bytes: usize,
    /// Close sessions idle this long (seconds).
    #[serde(default = "default_idle")]
    pub idle_timeout_secs: u64,
    /// Whitespace keepalive interval (seconds).
    #[serde(default = "default_s2s_keepalive")]
    pub keepalive_secs: u64,
    /// XEP-0199 ping to each peer this often (seconds)...
    #[serde(default = "default_ping")]
    pub ping_interval_secs: u64,
    /// ...which must answer within this (seconds), or its sessions close as dead.
    #[serde(default = "default_ping")]
    pub ping_timeout_secs: u64,
    /// This edge's FQDN: subject CN and first name of `edge cert csr`.
    #[serde(default)]
    pub fqdn: Option<String>,
    /// Names the federation certificate must cover: the XMPP federation domains (used by
    /// `edge cert csr` and the start-up expiry/coverage warnings; the domains served are still
    /// learnt from the cores).
    #[serde(default)]
    pub domains: Vec<String>,
    /// Names the federation certificate must cover: the chat node aliases (MUC services).
    #[serde(default)]
    pub chat_node_aliases: Vec<String>,
    /// Networks (CIDR, or single addresses) the edge may connect to when DNS names an address
    /// in them although it is loopback, link-local, private or shared space (partners on
    /// private networks; the lab on 127.0.0.0/8). Static routes need no entry.
    #[serde(default)]
    pub outbound_allow_networks: Vec<String>,
    /// Dialback verifications running at once; more fail at once without network traffic.
    #[serde(default = "default_max_verifications")]
    pub max_verifications: usize,
    /// Dialback verifications running at once for one remote domain.
    #[serde(default = "default_max_verifications_per_domain")]
    pub max_verifications_per_domain: usize,
}

impl FederationSection {
    /// The names the federation certificate must cover (`fqdn`, `domains`,
    /// `chat_node_aliases`), normalized; errors name the setting.
    pub fn certificate_names(&self) -> anyhow::Result<causeway_app::cert::CertNames> {
        let norm = |key: &str, d: &str| {
            causeway_xmpp::addr::normalize_domain(d).map_err(|e| anyhow::anyhow!("{key}: {e}"))
        };
        let list = |key: &str, v: &[String]| -> anyhow::Result<Vec<String>> {
            v.iter()
                .enumerate()
                .map(|(i, d)| norm(&format!("{key}[{i}]"), d))
                .collect()
        };
        Ok(causeway_app::cert::CertNames {
            fqdn: self
                .fqdn
                .as_deref()
                .map(|f| norm("federation.fqdn", f))
                .transpose()?,
            domains: list("federation.domains", &self.domains)?,
            aliases: list("federation.chat_node_aliases", &self.chat_node_aliases)?,
        })
    }
}

/// The certificate names of a config file, for `edge cert csr`: parsed with the daemon's own
/// parser, but the files it names need not exist yet.
pub fn certificate_names(path: &Path) -> anyhow::Result<causeway_app::cert::CertNames> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config {}", path.display()))?;
    let raw: EdgeConfig =
        toml::from_str(&text).with_context(|| format!("config {}", path.display()))?;
    raw.federation.certificate_names()
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
    /// Allowed in allow-list mode: "partner.test", "*.partner.test" (the domain and its
    /// subdomains), or { domain = "...", direction = "incoming" | "outgoing" | "all" }.
    #[serde(default)]
    pub allow: Vec<toml::Value>,
    /// Refused (in either list mode; a deny always wins): same forms as `allow`.
    #[serde(default)]
    pub deny: Vec<toml::Value>,
}

/// `[[static_routes]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticRoute {
    /// The remote domain.
    pub domain: String,
    /// Its servers, tried in turn (ip:port).
    pub addresses: Vec<SocketAddr>,
    /// Those servers speak direct TLS (XEP-0368) rather than STARTTLS.
    #[serde(default)]
    pub direct_tls: bool,
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

fn default_tunnel_listen() -> ListenAddrs {
    ListenAddrs::wildcards(7400)
}
fn default_s2s_listen() -> ListenAddrs {
    ListenAddrs::wildcards(5269)
}
fn default_ping() -> u64 {
    10
}
fn default_true() -> bool {
    true
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
fn default_max_verifications() -> usize {
    256
}
fn default_max_verifications_per_domain() -> usize {
    8
}
fn default_log_level() -> String {
    "info".into()
}

/// The config after validation: everything the edge needs, resolved.
pub struct Validated {
    /// Where it was read from (reloads read it again).
    pub path: PathBuf,
    /// The parsed file.
    pub raw: EdgeConfig,
    /// The privacy policy.
    pub policy: Policy,
    /// Static routes by lowercased domain.
    pub routes: HashMap<String, Vec<SocketAddr>>,
    /// Static routes whose servers speak direct TLS.
    pub direct_tls_routes: std::collections::HashSet<String>,
    /// The dialback secret.
    pub dialback_secret: String,
    /// The previous dialback secret, during a rollover.
    pub dialback_previous: Option<String>,
    /// `[tunnel] drain_secs`, checked.
    pub drain_within: std::time::Duration,
    /// Trust for peer certificates, if a CA bundle is configured.
    pub peer_trust: Option<std::sync::Arc<causeway_pki::PeerTrust>>,
    /// The traversal CA with its CRLs, if `tunnel.crls` lists any.
    pub tunnel_trust: Option<std::sync::Arc<causeway_pki::PeerTrust>>,
    /// The outbound address filter (`federation.outbound_allow_networks`).
    pub outbound_filter: causeway_s2s::addrfilter::AddrFilter,
    /// Which core may announce what.
    pub grants: crate::grants::Grants,
}

/// What `check` warns about in a valid config.
pub fn warnings(cfg: &Validated) -> Vec<String> {
    let mut out = Vec::new();
    let (t, f) = (&cfg.raw.tunnel, &cfg.raw.federation);
    let listeners = [
        ("tunnel.listen", Some(&t.listen)),
        ("federation.listen", Some(&f.listen)),
        ("federation.direct_tls_listen", f.direct_tls_listen.as_ref()),
    ];
    for (key, addrs) in listeners {
        if let Some(low) = addrs
            .into_iter()
            .flat_map(|a| a.addrs())
            .find(|a| a.port() < 1024)
        {
            out.push(format!(
                "{key}: {low} is a port below 1024: the packaged unit runs without capabilities; \
                 give it CAP_NET_BIND_SERVICE in a drop-in (`systemctl edit causeway-edge`)"
            ));
        }
    }
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
    if let Some(p) = raw.federation.dialback_secret_previous_file.as_mut() {
        *p = base.join(&*p);
    }
    if let Some(p) = raw.federation.dialback_secret_file.as_mut() {
        *p = base.join(&*p);
    }
    if let Some(p) = raw.federation.ca_bundle.as_mut() {
        *p = base.join(&*p);
    }
    for p in raw
        .federation
        .crls
        .iter_mut()
        .chain(raw.tunnel.crls.iter_mut())
    {
        *p = base.join(&*p);
    }
    raw.admin.resolve_paths(base);
    let mut validated = validate(raw)?;
    validated.path = path.to_owned();
    Ok(validated)
}

/// The outbound address filter and the verification caps of `[federation]`.
fn validate_outbound(
    fed: &FederationSection,
) -> anyhow::Result<causeway_s2s::addrfilter::AddrFilter> {
    let filter = causeway_s2s::addrfilter::AddrFilter::parse(&fed.outbound_allow_networks)
        .map_err(|e| anyhow::anyhow!("federation.outbound_allow_networks{e}"))?;
    if fed.max_verifications == 0 {
        bail!("federation.max_verifications: at least 1");
    }
    if fed.max_verifications_per_domain == 0
        || fed.max_verifications_per_domain > fed.max_verifications
    {
        bail!(
            "federation.max_verifications_per_domain: 1 to federation.max_verifications ({})",
            fed.max_verifications
        );
    }
    Ok(filter)
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
    let peer_trust = match &raw.federation.ca_bundle {
        Some(bundle) => Some(std::sync::Arc::new(
            causeway_pki::PeerTrust::load(bundle, &raw.federation.crls)
                .map_err(|e| anyhow::anyhow!("federation.ca_bundle / federation.crls: {e}"))?,
        )),
        None if !raw.federation.crls.is_empty() => {
            bail!("federation.crls: needs federation.ca_bundle")
        }
        None => None,
    };
    let tunnel_trust = if raw.tunnel.crls.is_empty() {
        None
    } else {
        Some(std::sync::Arc::new(
            causeway_pki::PeerTrust::load(&raw.tunnel.ca, &raw.tunnel.crls)
                .map_err(|e| anyhow::anyhow!("tunnel.crls: {e}"))?,
        ))
    };
    if raw.federation.require_client_certs && peer_trust.is_none() {
        bail!("federation.require_client_certs: needs federation.ca_bundle (the CAs to trust)");
    }
    let dialback_secret = causeway_app::resolve_secret(
        "federation",
        raw.federation.dialback_secret.as_deref(),
        raw.federation.dialback_secret_file.as_deref(),
    )?;
    let dialback_previous = causeway_app::previous_secret(
        "federation",
        raw.federation.dialback_secret_previous.as_deref(),
        raw.federation.dialback_secret_previous_file.as_deref(),
        &dialback_secret,
    )?;
    if raw.federation.max_stanza_bytes < 10_000 {
        bail!("federation.max_stanza_bytes: at least 10000 (RFC 6120 13.12)");
    }
    raw.federation.certificate_names()?;
    let outbound_filter = validate_outbound(&raw.federation)?;
    raw.limits.validate(raw.federation.max_stanza_bytes)?;
    causeway_tunnel::TunnelOptions::check_window(raw.tunnel.window, raw.tunnel.window_bytes)
        .map_err(anyhow::Error::msg)?;
    let mut routes: HashMap<String, Vec<SocketAddr>> = HashMap::new();
    let mut direct_tls_routes = std::collections::HashSet::new();
    for (i, r) in raw.static_routes.iter().enumerate() {
        let d = causeway_xmpp::addr::normalize_domain(&r.domain)
            .map_err(|e| anyhow::anyhow!("static_routes[{i}].domain: {e}"))?;
        if r.addresses.is_empty() {
            bail!("static_routes[{i}].addresses: at least one address");
        }
        if r.direct_tls {
            direct_tls_routes.insert(d.clone());
        }
        routes
            .entry(d)
            .or_default()
            .extend(r.addresses.iter().copied());
    }
    // Entries are parsed one by one so an error names the entry (serde's untagged enums
    // would only say "did not match any variant").
    let rules = |key: &str, list: &[toml::Value]| -> anyhow::Result<Vec<Rule>> {
        list.iter()
            .enumerate()
            .map(|(i, v)| {
                let config = match v {
                    toml::Value::String(s) => RuleConfig::Domain(s.clone()),
                    other => RuleConfig::Scoped(
                        other
                            .clone()
                            .try_into::<ScopedRuleConfig>()
                            .map_err(|e| anyhow::anyhow!("policy.{key}[{i}]: {e}"))?,
                    ),
                };
                config
                    .to_rule()
                    .map_err(|e| anyhow::anyhow!("policy.{key}[{i}]: {e}"))
            })
            .collect()
    };
    let allow = rules("allow", &raw.policy.allow)?;
    let grants = grants(&raw, &routes, &allow)?;
    let deny = rules("deny", &raw.policy.deny)?;
    let policy = Policy::from_rules(
        raw.policy.privacy_mode,
        allow,
        deny,
        routes.keys().cloned().collect(),
    )
    .map_err(|e| anyhow::anyhow!("policy: {e}"))?;
    raw.admin.validate()?;
    let drain_within = causeway_app::drain_within(raw.tunnel.drain_secs)?;
    match raw.log.format.as_str() {
        "text" | "json" => {}
        other => bail!("log.format: {other:?} is not text or json"),
    }
    Ok(Validated {
        path: PathBuf::new(),
        raw,
        policy,
        routes,
        direct_tls_routes,
        dialback_secret,
        dialback_previous,
        drain_within,
        peer_trust,
        tunnel_trust,
        outbound_filter,
        grants,
    })
}

/// The cores' grants, checked against the names the edge federates with as remotes: static
/// routes and exact allow-list entries.
fn grants(
    raw: &EdgeConfig,
    routes: &HashMap<String, Vec<SocketAddr>>,
    allow: &[Rule],
) -> anyhow::Result<crate::grants::Grants> {
    let exact_allows = allow.iter().filter_map(|r| match &r.pattern {
        causeway_policy::Pattern::Exact(d) => Some(d.clone()),
        causeway_policy::Pattern::Suffix(_) => None,
    });
    let remote: Vec<String> = routes.keys().cloned().chain(exact_allows).collect();
    let entries: Vec<(String, Vec<String>)> = raw
        .tunnel
        .cores
        .iter()
        .map(|c| (c.id.clone(), c.domains.clone()))
        .collect();
    crate::grants::Grants::new(&entries, &remote).map_err(|e| anyhow::anyhow!(e))
}
