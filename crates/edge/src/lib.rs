//! The edge daemon as a library: federation sockets on the internet side, the traversal tunnel
//! to the cores on the other.
//!
//! Inbound: s2s stanza from a federated server -> [`EdgeHost::deliver`] -> the tunnel to a
//! connected core that announced the `to` domain (see [`cores`]). Outbound: tunnel stanza from a
//! core -> checks (the core announced the `from` domain; the privacy policy allows the `to`
//! domain) -> [`S2s::send`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use anyhow::Context;
use causeway_policy::{Policy, Verdict};
use causeway_s2s::{
    BoxFuture, Direction, Handled, Host, InboundStanza, OutboundStanza, S2s, S2sConfig, Target,
    LOG_MODULE,
};
use causeway_tunnel::{EdgeEvent, EdgeTunnel, TlsFiles, TunnelOptions, TunnelStanza};
use causeway_xmpp::addr::normalize_domain;
use causeway_xmpp::StanzaCondition;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tracing::{info, warn};

pub mod admin;
pub mod cli;
pub mod config;
pub mod cores;
pub mod drain;
pub mod grants;
pub mod http;
pub mod limits;
pub mod listen;
pub mod metrics;
pub mod reload;

/// The part of the edge's decisions a reload replaces whole.
pub struct Rules {
    /// The privacy policy.
    pub policy: Policy,
    /// Static routes by domain.
    pub routes: HashMap<String, Vec<SocketAddr>>,
    /// Static routes whose servers speak direct TLS.
    pub direct_tls_routes: std::collections::HashSet<String>,
    /// Try `_xmpps-server` endpoints first.
    pub direct_tls_outbound: bool,
    /// DNS for remote servers.
    pub resolver: causeway_dns::Resolver,
    /// Which core may announce what.
    pub grants: grants::Grants,
}

impl Rules {
    /// The rules a validated config asks for.
    pub fn from_config(cfg: &config::Validated) -> anyhow::Result<Self> {
        let nameservers =
            (!cfg.raw.dns.nameservers.is_empty()).then(|| cfg.raw.dns.nameservers.clone());
        Ok(Self {
            policy: cfg.policy.clone(),
            routes: cfg.routes.clone(),
            direct_tls_routes: cfg.direct_tls_routes.clone(),
            direct_tls_outbound: cfg.raw.federation.direct_tls_outbound,
            resolver: causeway_dns::Resolver::new(nameservers).context("dns.nameservers")?,
            grants: cfg.grants.clone(),
        })
    }
}

/// What the edge knows and decides; the [`Host`] of its s2s service.
pub struct EdgeHost {
    /// Local domain or chat node alias -> the cores that serve it.
    domains: RwLock<cores::DomainCores>,
    /// Policy, routes and DNS: replaced whole by a reload.
    rules: RwLock<Arc<Rules>>,
    tunnel: OnceLock<EdgeTunnel>,
    /// DNS lookups for remote servers (metrics).
    dns_lookups: std::sync::atomic::AtomicU64,
    /// Each core's latest hello and when it arrived (its session's start), for the admin API.
    hellos: RwLock<HashMap<String, (causeway_tunnel::CoreHello, std::time::SystemTime)>>,
    /// Refusing stanzas for the inside is logged once a minute.
    unavailable_logged: causeway_s2s::every::Every,
}

/// How long an inbound stanza waits for room in a connected core's tunnel window before it is
/// answered with `resource-constraint` (its stream is not read meanwhile).
pub const CORE_WAIT: Duration = Duration::from_secs(30);

impl EdgeHost {
    /// The rules in force.
    pub fn rules(&self) -> Arc<Rules> {
        match self.rules.read() {
            Ok(r) => r.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Put new rules in force (reload).
    pub fn set_rules(&self, rules: Rules) {
        match self.rules.write() {
            Ok(mut r) => *r = Arc::new(rules),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(rules),
        }
    }

    /// Which cores serve which domains, now.
    pub fn domain_cores(&self) -> std::sync::RwLockReadGuard<'_, cores::DomainCores> {
        match self.domains.read() {
            Ok(d) => d,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The core for a stanza from `from_domain` to the local `to_domain` (see [`cores`]): one
    /// that is connected and not draining, else a connected one.
    fn core_for(&self, from_domain: &str, to_domain: &str) -> Option<String> {
        let tunnel = self.tunnel()?;
        let cores = self.domain_cores();
        cores
            .choose(from_domain, to_domain, |c| tunnel.is_usable(c))
            .filter(|c| tunnel.is_usable(c))
            .or_else(|| cores.choose(from_domain, to_domain, |c| tunnel.is_connected(c)))
            .map(str::to_owned)
    }

    fn tunnel(&self) -> Option<&EdgeTunnel> {
        self.tunnel.get()
    }

    /// Send a stanza towards the inside, to the core serving `to_domain`; the receipt settles
    /// when that core has it. A connected core's window with no room is waited for (the
    /// partner's stream pauses) up to [`CORE_WAIT`]; a disconnected core's window keeps what
    /// fits (replayed when it is back) and refuses the rest at once. Refused stanzas are
    /// answered with the returned stanza error, so a core outage costs bounded memory and the
    /// partners learn of it instead of their streams blocking.
    async fn to_core(
        &self,
        from_domain: String,
        to_domain: String,
        payload: bytes::Bytes,
    ) -> Result<causeway_tunnel::Receipt, StanzaCondition> {
        let (Some(core), Some(tunnel)) = (self.core_for(&from_domain, &to_domain), self.tunnel())
        else {
            self.inside_unavailable(&to_domain, "no core serves this domain");
            return Err(StanzaCondition::ServiceUnavailable);
        };
        let connected = tunnel.is_connected(&core);
        let stanza = TunnelStanza {
            from_domain,
            to_domain,
            payload,
        };
        let to_domain = stanza.to_domain.clone();
        let wait = if connected { CORE_WAIT } else { Duration::ZERO };
        // Sending is cancel-safe (a stanza is either in the window or not), and a timeout
        // polls it once before looking at the clock: with no wait, it goes in if there is room.
        match tokio::time::timeout(wait, tunnel.send_tracked(&core, stanza)).await {
            Ok(Ok(receipt)) => Ok(receipt),
            Ok(Err(e)) => {
                warn!(module = LOG_MODULE, core = %core, error = %e, "tunnel send failed; stanza answered with an error");
                Err(StanzaCondition::ServiceUnavailable)
            }
            Err(_) if connected => {
                self.inside_unavailable(&to_domain, "the core's tunnel window stayed full");
                Err(StanzaCondition::ResourceConstraint)
            }
            Err(_) => {
                self.inside_unavailable(
                    &to_domain,
                    "its core is disconnected and its window is full",
                );
                Err(StanzaCondition::ServiceUnavailable)
            }
        }
    }

    /// Log (at most once a minute) that stanzas to a local domain are being refused.
    fn inside_unavailable(&self, to_domain: &str, why: &str) {
        if !self.unavailable_logged.due() {
            tracing::debug!(module = LOG_MODULE, to = %to_domain, reason = why, "stanza for the inside refused");
            return;
        }
        warn!(module = LOG_MODULE, to = %to_domain, reason = why, "stanzas for the inside are refused and answered with stanza errors (logged once a minute)");
    }

    fn policy_allows(&self, remote: &str, direction: Direction) -> bool {
        let dir = match direction {
            Direction::Inbound => causeway_policy::Direction::Inbound,
            Direction::Outbound => causeway_policy::Direction::Outbound,
        };
        matches!(self.rules().policy.check(remote, dir), Verdict::Allow)
    }

    /// Like [`EdgeHost::to_core`] but in a task of its own: bounces may be raised by the task
    /// that drains the tunnel, which must never wait for tunnel window room (if both windows
    /// were full, neither side would drain: deadlock).
    fn to_core_detached(&self, from_domain: String, to_domain: String, payload: bytes::Bytes) {
        let (Some(core), Some(tunnel)) = (
            self.core_for(&from_domain, &to_domain),
            self.tunnel().cloned(),
        ) else {
            warn!(module = LOG_MODULE, to = %to_domain, "no core serves this domain; bounce dropped");
            return;
        };
        let stanza = TunnelStanza {
            from_domain,
            to_domain,
            payload,
        };
        tokio::spawn(async move {
            if let Err(e) = tunnel.send(&core, stanza).await {
                warn!(module = LOG_MODULE, core = %core, error = %e, "tunnel send failed; bounce dropped");
            }
        });
    }

    /// Take a core's hello: it serves the names it announced that its grant allows and that
    /// are not remote domains the edge has sessions with; the others are refused and logged.
    pub fn announce(&self, s2s: &S2s, hello: &causeway_tunnel::CoreHello) {
        let remote_now: std::collections::HashSet<String> = s2s
            .sessions()
            .into_iter()
            .flat_map(|s| s.pairs.into_iter().map(|(remote, _)| remote))
            .collect();
        let filtered = self
            .rules()
            .grants
            .filter(hello, |name| remote_now.contains(name));
        for name in &filtered.refused {
            warn!(module = LOG_MODULE, core = %hello.core_id, domain = %name, "a core announced a domain it is not granted ([[tunnel.cores]]) or that is a remote domain: refused");
        }
        if let Ok(mut map) = self.domains.write() {
            map.announce(&filtered.hello);
        }
    }

    /// Apply the grants in force to every core's last hello (after a reload).
    pub fn reapply_grants(&self, s2s: &S2s) {
        let hellos: Vec<causeway_tunnel::CoreHello> = match self.hellos.read() {
            Ok(h) => h.values().map(|(hello, _)| hello.clone()).collect(),
            Err(_) => return,
        };
        for hello in &hellos {
            self.announce(s2s, hello);
        }
    }
}

impl Host for EdgeHost {
    fn serves(&self, domain: &str) -> bool {
        self.domain_cores().serves(domain)
    }

    fn peer_allowed(&self, remote: &str, direction: Direction) -> bool {
        !self.serves(remote) && self.policy_allows(remote, direction)
    }

    /// A static route's addresses (configured: never filtered), else DNS's (judged by the
    /// outbound address filter when connecting).
    fn resolve<'a>(&'a self, domain: &'a str) -> BoxFuture<'a, Result<Vec<Target>, String>> {
        Box::pin(async move {
            let rules = self.rules();
            if let Some(addrs) = rules.routes.get(domain) {
                // A static route never falls back to DNS.
                if rules.direct_tls_routes.contains(domain) {
                    return Ok(Vec::new());
                }
                return Ok(addrs.iter().copied().map(Target::configured).collect());
            }
            self.dns_lookups
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let targets = rules
                .resolver
                .resolve_xmpp_server(domain)
                .await
                .map_err(|e| e.to_string())?;
            let addrs = dns_targets(&targets);
            if addrs.is_empty() {
                return Err(format!("no s2s service found for {domain}"));
            }
            Ok(addrs)
        })
    }

    fn resolve_direct_tls<'a>(&'a self, domain: &'a str) -> BoxFuture<'a, Vec<Target>> {
        Box::pin(async move {
            let rules = self.rules();
            if let Some(addrs) = rules.routes.get(domain) {
                return if rules.direct_tls_routes.contains(domain) {
                    addrs.iter().copied().map(Target::configured).collect()
                } else {
                    Vec::new()
                };
            }
            if !rules.direct_tls_outbound {
                return Vec::new();
            }
            self.dns_lookups
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            match rules.resolver.resolve_xmpps_server(domain).await {
                Ok(targets) => dns_targets(&targets),
                Err(e) => {
                    tracing::debug!(module = LOG_MODULE, remote = %domain, error = %e, "no direct TLS endpoints");
                    Vec::new()
                }
            }
        })
    }

    fn deliver(&self, stanza: InboundStanza) -> BoxFuture<'_, Result<(), StanzaCondition>> {
        Box::pin(async move {
            self.to_core(stanza.from_domain, stanza.to_domain, stanza.payload)
                .await
                .map(drop)
        })
    }

    fn deliver_tracked(
        &self,
        stanza: InboundStanza,
    ) -> BoxFuture<'_, Result<Option<Handled>, StanzaCondition>> {
        Box::pin(async move {
            let receipt = self
                .to_core(stanza.from_domain, stanza.to_domain, stanza.payload)
                .await?;
            Ok(Some(Box::pin(receipt.settled()) as Handled))
        })
    }

    fn bounce(&self, stanza: OutboundStanza, condition: StanzaCondition) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let Some(reply) = causeway_s2s::error_reply(&stanza.payload, condition) else {
                return;
            };
            self.to_core_detached(stanza.to_domain, stanza.from_domain, reply);
        })
    }
}

/// The addresses of SRV targets, in SRV order, each target's address families interleaved
/// (RFC 8305), all marked as learnt from DNS.
fn dns_targets(targets: &[causeway_dns::Target]) -> Vec<Target> {
    targets
        .iter()
        .flat_map(|t| {
            causeway_s2s::connect::interleave_families(&t.addrs)
                .into_iter()
                .map(move |ip| Target::from_dns(SocketAddr::new(ip, t.port)))
        })
        .collect()
}

/// A running edge.
pub struct Edge {
    /// The s2s service.
    pub s2s: Arc<S2s>,
    /// Its host state.
    pub host: Arc<EdgeHost>,
    /// The tunnel server.
    pub tunnel: EdgeTunnel,
    /// Where s2s listens (the first of `listening.s2s`).
    pub s2s_addr: SocketAddr,
    /// Where direct-TLS s2s listens, if configured (the first of `listening.direct_tls`).
    pub direct_tls_addr: Option<SocketAddr>,
    /// Where the tunnel listens (the first of `listening.tunnel`).
    pub tunnel_addr: SocketAddr,
    /// Every bound address, and the settings they came from.
    pub listening: Listening,
    /// The config file (reloads read it again).
    pub config_path: std::path::PathBuf,
    /// When it started.
    pub started: std::time::SystemTime,
    /// The loops `/healthz` watches (crates/http/src/health.rs).
    pub heartbeats: Arc<causeway_http::Heartbeats>,
    /// How long a planned stop may take (`[tunnel] drain_secs`, read at start).
    pub drain_within: Duration,
}

/// The addresses the edge's listeners are bound to, and the settings that asked for them (a
/// reload that changes those needs a restart).
#[derive(Debug, Clone)]
pub struct Listening {
    /// Federation (STARTTLS) addresses.
    pub s2s: Vec<SocketAddr>,
    /// Direct TLS federation addresses.
    pub direct_tls: Vec<SocketAddr>,
    /// Tunnel addresses.
    pub tunnel: Vec<SocketAddr>,
    /// `federation.listen`, `federation.direct_tls_listen`, `tunnel.listen` as configured.
    pub configured: (
        listen::ListenAddrs,
        Option<listen::ListenAddrs>,
        listen::ListenAddrs,
    ),
}

/// The check of cores' certificates against the traversal CA's CRLs (`tunnel.crls`), if any.
pub fn tunnel_peer_check(
    trust: Option<Arc<causeway_pki::PeerTrust>>,
) -> Option<causeway_tunnel::PeerCheck> {
    let trust = trust?;
    Some(causeway_tunnel::PeerCheck(Arc::new(move |chain| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        trust
            .verify_chain(chain, true, now)
            .map_err(|e| e.to_string())
    })))
}

/// Bound addresses, for logs and status.
pub fn addr_list(addrs: &[SocketAddr]) -> String {
    let list: Vec<String> = addrs.iter().map(SocketAddr::to_string).collect();
    list.join(", ")
}

fn bound_addrs(listeners: &[TcpListener]) -> anyhow::Result<Vec<SocketAddr>> {
    Ok(listeners
        .iter()
        .map(TcpListener::local_addr)
        .collect::<Result<_, _>>()?)
}

/// Start the edge from a validated config: bind both listeners, spawn everything, and return
/// once bound (a wiring function).
pub async fn start(
    cfg: config::Validated,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Edge> {
    let fed = &cfg.raw.federation;
    let s2s_cfg = s2s_config(&cfg)?;
    cfg.raw.limits.raise_descriptor_limit();
    causeway_app::cert::log_certificate_warnings([
        (&fed.cert, fed.certificate_names()?.all()),
        (&cfg.raw.tunnel.cert, Vec::new()),
    ]);
    let rules = Rules::from_config(&cfg)?;
    warn_shadowed(&rules.policy);
    let host = Arc::new(EdgeHost {
        domains: RwLock::new(cores::DomainCores::default()),
        rules: RwLock::new(Arc::new(rules)),
        tunnel: OnceLock::new(),
        hellos: RwLock::new(HashMap::new()),
        unavailable_logged: causeway_s2s::every::Every::new(Duration::from_secs(60)),
        dns_lookups: Default::default(),
    });
    let s2s = S2s::new(s2s_cfg, host.clone());

    let s2s_listeners = fed.listen.bind("federation.listen").await?;
    let tunnel_listeners = cfg.raw.tunnel.listen.bind("tunnel.listen").await?;
    let s2s_addrs = bound_addrs(&s2s_listeners)?;
    let tunnel_addrs = bound_addrs(&tunnel_listeners)?;
    let (Some(&s2s_addr), Some(&tunnel_addr)) = (s2s_addrs.first(), tunnel_addrs.first()) else {
        anyhow::bail!("federation.listen and tunnel.listen: no address could be bound");
    };

    let tls = tunnel_tls(&cfg)?;
    let opts = TunnelOptions {
        window: cfg.raw.tunnel.window,
        window_bytes: cfg.raw.tunnel.window_bytes,
        keepalive: Duration::from_secs(cfg.raw.tunnel.keepalive_secs),
        handshake_timeout: Duration::from_secs(cfg.raw.limits.tunnel_handshake_secs),
        max_connections: cfg.raw.limits.max_tunnel_connections,
        peer_check: tunnel_peer_check(cfg.tunnel_trust.clone()),
        ..TunnelOptions::default()
    };
    // A core silent this long is gone (see cores.rs).
    let failover_grace = opts.dead_after();
    let (events_tx, events_rx) = mpsc::channel(1024);
    let shutdown = futures::FutureExt::shared(Box::pin(shutdown));
    let (tunnel, _server) =
        EdgeTunnel::serve_all(tunnel_listeners, tls, opts, events_tx, shutdown.clone())?;
    let _ = host.tunnel.set(tunnel.clone());

    let mut direct_tls_addrs = Vec::new();
    if let Some(addrs) = &fed.direct_tls_listen {
        for listener in addrs.bind("federation.direct_tls_listen").await? {
            direct_tls_addrs.push(listener.local_addr()?);
            tokio::spawn(s2s.clone().serve_direct_tls(listener, shutdown.clone()));
        }
    }
    let direct_tls_addr = direct_tls_addrs.first().copied();
    for listener in s2s_listeners {
        tokio::spawn(s2s.clone().serve(listener, shutdown.clone()));
    }
    tokio::spawn(pump_tunnel(host.clone(), s2s.clone(), events_rx));
    let heartbeats = causeway_http::Heartbeats::new();
    let failover_beat = heartbeats.register("failover", failover_grace.min(Duration::from_secs(1)));
    tokio::spawn(cores::supervise(
        host.clone(),
        s2s.clone(),
        failover_grace,
        failover_beat,
    ));
    info!(module = LOG_MODULE, s2s = %addr_list(&s2s_addrs), direct_tls = %addr_list(&direct_tls_addrs), tunnel = %addr_list(&tunnel_addrs), "edge listening");
    let listening = Listening {
        s2s: s2s_addrs,
        direct_tls: direct_tls_addrs,
        tunnel: tunnel_addrs,
        configured: (
            fed.listen.clone(),
            fed.direct_tls_listen.clone(),
            cfg.raw.tunnel.listen.clone(),
        ),
    };
    Ok(Edge {
        s2s,
        host,
        tunnel,
        s2s_addr,
        direct_tls_addr,
        tunnel_addr,
        listening,
        config_path: cfg.path.clone(),
        started: std::time::SystemTime::now(),
        heartbeats,
        drain_within: cfg.drain_within,
    })
}

/// The tunnel's certificate, key and trusted CAs, read from the files the config names.
pub fn tunnel_tls(cfg: &config::Validated) -> anyhow::Result<TlsFiles> {
    let t = &cfg.raw.tunnel;
    Ok(TlsFiles {
        cert_pem: causeway_pki::read_file(&t.cert)?,
        key_pem: causeway_pki::read_file(&t.key)?,
        ca_pem: causeway_pki::read_file(&t.ca)?,
    })
}

/// The s2s settings a validated config asks for (loads the federation certificate).
pub fn s2s_config(cfg: &config::Validated) -> anyhow::Result<S2sConfig> {
    let fed = &cfg.raw.federation;
    let certs = causeway_pki::load_certs(&fed.cert).context("federation.cert")?;
    let key = causeway_pki::load_key(&fed.key).context("federation.key")?;
    let tls_server = if cfg.peer_trust.is_some() {
        causeway_pki::s2s_server_config_requesting_client_cert(
            certs.clone(),
            key.clone_key(),
            false,
        )?
    } else {
        causeway_pki::s2s_server_config(certs.clone(), key.clone_key())?
    };
    // Our certificate is presented when we initiate, for SASL EXTERNAL.
    let tls_client = causeway_pki::s2s_client_config_presenting(certs, key, false)?;
    let mut s2s_cfg = S2sConfig::new(cfg.dialback_secret.clone(), Some(tls_server), tls_client);
    s2s_cfg.dialback_previous = cfg.dialback_previous.clone();
    s2s_cfg.peer_trust = cfg.peer_trust.clone();
    s2s_cfg.require_peer_certs = fed.require_client_certs;
    s2s_cfg.sasl_external = fed.sasl_external;
    s2s_cfg.stream_management = fed.stream_management;
    s2s_cfg.presents_client_cert = true;
    s2s_cfg.tls_mode = fed.security_mode.tls_mode();
    s2s_cfg.limits.max_stanza_bytes = fed.max_stanza_bytes;
    s2s_cfg.idle_timeout = Duration::from_secs(fed.idle_timeout_secs);
    s2s_cfg.keepalive = Duration::from_secs(fed.keepalive_secs);
    s2s_cfg.ping_interval = Duration::from_secs(fed.ping_interval_secs.max(1));
    s2s_cfg.ping_timeout = Duration::from_secs(fed.ping_timeout_secs.max(1));
    s2s_cfg.outbound_filter = Some(cfg.outbound_filter.clone());
    s2s_cfg.max_verifications = fed.max_verifications;
    s2s_cfg.max_verifications_per_domain = fed.max_verifications_per_domain;
    cfg.raw.limits.apply(&mut s2s_cfg);
    Ok(s2s_cfg)
}

/// Log allow rules that a deny rule makes useless.
pub fn warn_shadowed(policy: &Policy) {
    for (allow, deny) in policy.shadowed_allow_rules() {
        warn!(module = LOG_MODULE, %allow, %deny, "policy: this allow rule never applies, a deny rule covers it");
    }
}

/// Events from the cores: hellos teach the edge its domains; stanzas go out over s2s.
async fn pump_tunnel(host: Arc<EdgeHost>, s2s: Arc<S2s>, mut events: mpsc::Receiver<EdgeEvent>) {
    while let Some(ev) = events.recv().await {
        match ev {
            EdgeEvent::CoreUp(hello) => {
                info!(module = LOG_MODULE, core = %hello.core_id, domains = ?hello.domains, aliases = ?hello.chat_node_aliases, "core connected");
                host.announce(&s2s, &hello);
                if let Ok(mut hellos) = host.hellos.write() {
                    let now = std::time::SystemTime::now();
                    hellos.insert(hello.core_id.clone(), (hello, now));
                }
            }
            EdgeEvent::CoreDown { core_id } => {
                // Its domains stay: stanzas for it wait in the tunnel's replay window.
                warn!(module = LOG_MODULE, core = %core_id, "core disconnected");
            }
            EdgeEvent::Stanza { core_id, stanza } => {
                outbound_from_core(&host, &s2s, &core_id, stanza).await;
            }
        }
    }
}

/// A stanza a core sends out: checked (the core announced the `from` domain, the `to` domain
/// is remote and the policy allows it), then handed to s2s. Both domains are normalised first,
/// so the announced names, the policy and the s2s sessions all see one form.
async fn outbound_from_core(host: &EdgeHost, s2s: &Arc<S2s>, core_id: &str, st: TunnelStanza) {
    let from_domain = normalize_domain(&st.from_domain)
        .ok()
        .filter(|d| host.domain_cores().announced_by(d, core_id));
    let Some(from_domain) = from_domain else {
        warn!(module = LOG_MODULE, core = %core_id, from = %st.from_domain, "stanza from a domain this core did not announce: dropped");
        s2s.counters.refuse(causeway_s2s::RefusalReason::Spoofed);
        return;
    };
    let to_domain = match normalize_domain(&st.to_domain) {
        Ok(d) => d,
        Err(e) => {
            warn!(module = LOG_MODULE, core = %core_id, to = %st.to_domain, error = %e, "stanza to a malformed domain: bounced");
            s2s.counters.refuse(causeway_s2s::RefusalReason::Unroutable);
            let out = OutboundStanza {
                from_domain,
                to_domain: st.to_domain,
                payload: st.payload,
            };
            host.bounce(out, StanzaCondition::JidMalformed).await;
            return;
        }
    };
    let out = OutboundStanza {
        from_domain,
        to_domain,
        payload: st.payload,
    };
    if host.serves(&out.to_domain) {
        // Both ends are local: internal federation is core's job, never a loop through here.
        warn!(module = LOG_MODULE, core = %core_id, to = %out.to_domain, "stanza between two local domains: dropped");
        return;
    }
    if let Verdict::Deny(reason) = host
        .rules()
        .policy
        .check(&out.to_domain, causeway_policy::Direction::Outbound)
    {
        warn!(module = LOG_MODULE, direction = "outgoing", remote = %out.to_domain, %reason, "domain refused by the federation policy; stanza bounced");
        s2s.counters.refuse(causeway_s2s::RefusalReason::Policy);
        host.bounce(out, StanzaCondition::ServiceUnavailable).await;
        return;
    }
    s2s.send(out).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An edge host without a tunnel whose core1 announced example.com, with `policy`.
    fn host_with(policy: Policy) -> Arc<EdgeHost> {
        let resolver =
            causeway_dns::Resolver::new(Some(vec!["127.0.0.1:53".parse().expect("addr")]))
                .expect("resolver");
        let host = Arc::new(EdgeHost {
            domains: RwLock::new(cores::DomainCores::default()),
            rules: RwLock::new(Arc::new(Rules {
                policy,
                routes: HashMap::new(),
                direct_tls_routes: Default::default(),
                direct_tls_outbound: false,
                resolver,
                grants: grants::Grants::default(),
            })),
            tunnel: OnceLock::new(),
            dns_lookups: Default::default(),
            hellos: RwLock::new(HashMap::new()),
            unavailable_logged: causeway_s2s::every::Every::new(Duration::from_secs(60)),
        });
        if let Ok(mut d) = host.domains.write() {
            d.announce(&causeway_tunnel::CoreHello {
                core_id: "core1".into(),
                domains: vec!["example.com".into()],
                chat_node_aliases: Vec::new(),
                version: String::new(),
                protocol: 2,
            });
        }
        host
    }

    fn refused(s2s: &S2s) -> Vec<(&'static str, u64)> {
        s2s.counters
            .refused_by_reason()
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    #[tokio::test]
    async fn stanzas_from_a_core_are_judged_on_normalised_domains() {
        let policy = Policy::new(
            causeway_policy::PrivacyMode::DenyList,
            vec![],
            vec!["exämple.org".into()],
            vec![],
        )
        .expect("policy");
        let host = host_with(policy);
        let tls = causeway_pki::s2s_client_config_dialback().expect("tls");
        let s2s = S2s::new(
            S2sConfig::new("secret-edge-0001".into(), None, tls),
            host.clone(),
        );
        let stanza = |from: &str, to: &str| TunnelStanza {
            from_domain: from.into(),
            to_domain: to.into(),
            payload: bytes::Bytes::from_static(b"<message/>"),
        };
        // The announced domain spelt otherwise is still announced; the deny rule written as a
        // U-label refuses the remote domain however the core spells it.
        outbound_from_core(
            &host,
            &s2s,
            "core1",
            stanza("EXAMPLE.com.", "xn--exmple-cua.org"),
        )
        .await;
        outbound_from_core(
            &host,
            &s2s,
            "core1",
            stanza("example.com", "EXÄMPLE\u{3002}org"),
        )
        .await;
        assert_eq!(refused(&s2s), vec![("policy", 2)]);
        // A malformed or unannounced from is spoofed; a malformed to is unroutable.
        outbound_from_core(&host, &s2s, "core1", stanza("example_.com", "partner.test")).await;
        outbound_from_core(&host, &s2s, "core2", stanza("example.com", "partner.test")).await;
        outbound_from_core(&host, &s2s, "core1", stanza("example.com", "xn--zz.test")).await;
        assert_eq!(
            refused(&s2s),
            vec![("spoofed", 2), ("unroutable", 1), ("policy", 2)]
        );
        assert_eq!(s2s.outgoing_count(), 0);
    }

    #[test]
    fn dns_targets_keep_srv_order_and_interleave_families_per_target() {
        let ip = |s: &str| -> std::net::IpAddr { s.parse().expect("test address") };
        let target = |host: &str, port, addrs: &[&str]| causeway_dns::Target {
            host: host.into(),
            port,
            addrs: addrs.iter().map(|a| ip(a)).collect(),
        };
        // The primary has IPv4 only: the backup's IPv6 address must not jump ahead of it.
        let got = dns_targets(&[
            target("primary", 5269, &["192.0.2.1"]),
            target("backup", 5270, &["192.0.2.2", "2001:db8::2", "192.0.2.3"]),
        ]);
        let want: Vec<Target> = [
            "192.0.2.1:5269",
            "[2001:db8::2]:5270",
            "192.0.2.2:5270",
            "192.0.2.3:5270",
        ]
        .iter()
        .map(|a| Target::from_dns(a.parse().expect("test address")))
        .collect();
        assert_eq!(got, want);
    }
}
