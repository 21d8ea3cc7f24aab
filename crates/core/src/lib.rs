//! The core daemon as a library: s2s with the internal IM&P nodes on one side, the traversal
//! tunnel to the edge on the other.
//!
//! Outbound: an IM&P node routes its federation to core's s2s listener; core authenticates the
//! node's domain with dialback (asking the node itself, the authoritative server), checks every
//! stanza, and puts it on the tunnel. Inbound: a stanza from the tunnel goes to an IM&P node of
//! its `to` domain over an s2s session that core opens as the remote domain.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use causeway_s2s::{
    BoxFuture, Direction, Host, InboundStanza, OutboundStanza, S2s, Target, LOG_MODULE,
};
use causeway_tunnel::{CoreHello, Delivered, TlsFiles, TunnelOptions, TunnelStanza};
use causeway_xmpp::StanzaCondition;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tracing::{info, warn};

pub mod admin;
pub mod backlog;
pub mod cli;
pub mod config;
pub mod discovery;
pub mod drain;
pub mod edges;
pub mod email;
pub mod health;
pub mod http;
pub mod metrics;
pub mod nodes;
pub mod reload;
pub mod servers;

/// What core knows; the [`Host`] of its s2s service towards the IM&P nodes.
pub struct CoreHost {
    /// Local domains, chat node aliases and the IM&P nodes that serve them, with their health
    /// (crates/core/src/nodes.rs).
    nodes: Arc<nodes::NodeTable>,
    /// The tunnels to the edges.
    tunnel: OnceLock<edges::Edges>,
    /// Refusing stanzas for the internet is logged once a minute.
    unavailable_logged: causeway_s2s::every::Every,
    /// Email address for federation (off unless configured).
    email: email::Translation,
    /// core's own s2s service, for internal federation (stanzas between two local domains go
    /// straight to the other domain's nodes, never through an edge).
    s2s: OnceLock<std::sync::Weak<S2s>>,
}

impl CoreHost {
    /// A local domain or chat node alias that federates (see crates/core/src/nodes.rs).
    fn is_local(&self, domain: &str) -> bool {
        self.nodes.federates(domain)
    }

    async fn to_edge(
        &self,
        from_domain: String,
        to_domain: String,
        payload: bytes::Bytes,
    ) -> Result<(), StanzaCondition> {
        let Some(tunnel) = self.tunnel.get() else {
            return Err(StanzaCondition::RemoteServerTimeout);
        };
        let stanza = TunnelStanza {
            from_domain,
            to_domain,
            payload,
        };
        tunnel.send_bounded(stanza).await.map_err(|refused| {
            self.outside_unavailable(&refused);
            refused.condition()
        })
    }

    /// Log (at most once a minute) that stanzas for the internet are being refused.
    fn outside_unavailable(&self, refused: &edges::Refused) {
        if !self.unavailable_logged.due() {
            tracing::debug!(module = LOG_MODULE, reason = ?refused, "stanza for the internet refused");
            return;
        }
        warn!(module = LOG_MODULE, reason = ?refused, "stanzas for the internet are refused and answered with stanza errors: no edge takes them (logged once a minute)");
    }

    /// Like [`CoreHost::to_edge`] but in a task of its own: bounces may be raised by the task
    /// that drains the tunnel, which must never wait for tunnel window room (if both windows
    /// were full, neither side would drain: deadlock).
    fn to_edge_detached(&self, from_domain: String, to_domain: String, payload: bytes::Bytes) {
        let Some(tunnel) = self.tunnel.get().cloned() else {
            return;
        };
        let stanza = TunnelStanza {
            from_domain,
            to_domain,
            payload,
        };
        tokio::spawn(async move {
            if let Err(e) = tunnel.send(stanza).await {
                warn!(module = LOG_MODULE, error = %e, "tunnel send failed; bounce dropped");
            }
        });
    }
}

impl CoreHost {
    /// Internal federation: a stanza from one local domain to another goes over s2s straight
    /// to the nodes of the other (Expressway cannot do internal and external federation
    /// together). Email translation does not apply: this is not federated traffic.
    async fn internal(&self, stanza: InboundStanza) {
        if stanza.from_domain == stanza.to_domain {
            warn!(module = LOG_MODULE, domain = %stanza.to_domain, "stanza from a domain to itself through core: dropped");
            return;
        }
        let Some(s2s) = self.s2s.get().and_then(std::sync::Weak::upgrade) else {
            return;
        };
        tracing::debug!(module = LOG_MODULE, from = %stanza.from_domain, to = %stanza.to_domain, "internal federation");
        s2s.send(OutboundStanza {
            from_domain: stanza.from_domain,
            to_domain: stanza.to_domain,
            payload: stanza.payload,
        })
        .await;
    }
}

impl Host for CoreHost {
    /// Towards the nodes, core speaks for every remote domain, and for each local domain
    /// towards the nodes of the others (internal federation).
    fn serves(&self, domain: &str) -> bool {
        causeway_xmpp::addr::normalize_domain(domain).is_ok()
    }

    /// Only the local domains' nodes are peers of core.
    fn peer_allowed(&self, remote: &str, _direction: Direction) -> bool {
        self.nodes.peer_allowed(remote)
    }

    /// The node table's addresses: configured, or discovered in the internal DNS view the
    /// administrator runs; core applies no outbound address filter either way.
    fn resolve<'a>(&'a self, domain: &'a str) -> BoxFuture<'a, Result<Vec<Target>, String>> {
        Box::pin(async move {
            let addrs = self.nodes.resolve(domain)?;
            Ok(addrs.into_iter().map(Target::configured).collect())
        })
    }

    fn deliver(&self, stanza: InboundStanza) -> BoxFuture<'_, Result<(), StanzaCondition>> {
        Box::pin(async move {
            // Answers to discovery's disco requests are core's own (crates/core/src/discovery.rs).
            if self.nodes.intercept_answer(&stanza) {
                return Ok(());
            }
            self.nodes.wait_ready().await;
            if self.is_local(&stanza.to_domain) {
                self.internal(stanza).await;
                return Ok(());
            }
            let stanza = self.email.outbound(stanza);
            self.to_edge(stanza.from_domain, stanza.to_domain, stanza.payload)
                .await
        })
    }

    fn bounce(&self, stanza: OutboundStanza, condition: StanzaCondition) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if self.nodes.intercept_bounce(&stanza, condition) {
                return;
            }
            let stanza = self.email.bounced(stanza);
            let Some(reply) = causeway_s2s::error_reply(&stanza.payload, condition) else {
                return;
            };
            if self.is_local(&stanza.from_domain) && self.is_local(&stanza.to_domain) {
                // Internal federation: the error goes back to the sender's own nodes.
                let Some(s2s) = self.s2s.get().and_then(std::sync::Weak::upgrade) else {
                    return;
                };
                let back = OutboundStanza {
                    from_domain: stanza.to_domain,
                    to_domain: stanza.from_domain,
                    payload: reply,
                };
                tokio::spawn(async move { s2s.send(back).await });
                return;
            }
            self.to_edge_detached(stanza.to_domain, stanza.from_domain, reply);
        })
    }
}

/// A running core.
pub struct Core {
    /// s2s towards the IM&P nodes.
    pub s2s: Arc<S2s>,
    /// The tunnels to the edges.
    pub tunnel: edges::Edges,
    /// Where s2s listens.
    pub s2s_addr: SocketAddr,
    /// The config file (reloads read it again).
    pub config_path: std::path::PathBuf,
    /// When it started.
    pub started: std::time::SystemTime,
    /// IM&P discovery and health checks, and the node table.
    pub discovery: Arc<discovery::Discovery>,
    /// The loops `/healthz` watches (crates/http/src/health.rs).
    pub heartbeats: Arc<causeway_http::Heartbeats>,
    /// How long a planned stop may take (`[tunnel] drain_secs`, read at start).
    pub drain_within: Duration,
}

/// The tunnel's certificate, key and trusted CAs, read from the files `[tunnel]` names.
pub fn tunnel_tls(t: &config::TunnelSection) -> anyhow::Result<TlsFiles> {
    Ok(TlsFiles {
        cert_pem: causeway_pki::read_file(&t.cert)?,
        key_pem: causeway_pki::read_file(&t.key)?,
        ca_pem: causeway_pki::read_file(&t.ca)?,
    })
}

/// Start core from a validated config (a wiring function).
pub async fn start(
    mut cfg: config::Validated,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Core> {
    let s = &cfg.raw.s2s;
    causeway_app::cert::log_certificate_warnings([
        (&s.cert, cfg.raw.certificate_names()?.all()),
        (&cfg.raw.tunnel.cert, vec![cfg.raw.core.id.clone()]),
    ]);
    let s2s_cfg = reload::s2s_config(&cfg)?;

    let host = Arc::new(CoreHost {
        nodes: Arc::new(nodes::NodeTable::new(&cfg.node_config)),
        tunnel: OnceLock::new(),
        unavailable_logged: causeway_s2s::every::Every::new(std::time::Duration::from_secs(60)),
        email: cfg.email.start().await?,
        s2s: OnceLock::new(),
    });
    let s2s = S2s::new(s2s_cfg, host.clone());
    let _ = host.s2s.set(Arc::downgrade(&s2s));
    let listener = TcpListener::bind(s.listen)
        .await
        .with_context(|| format!("s2s.listen {}", s.listen))?;
    let s2s_addr = listener.local_addr()?;
    // Serve the nodes before the tunnel exists: the initial discovery asks them over s2s, so
    // that the first hello carries what it found (stanzas for the edge wait in `deliver` until
    // `discovery.spawn()` below).
    tokio::spawn(s2s.clone().serve(listener, shutdown));
    let discovery = discovery::Discovery::new(&cfg, host.nodes.clone(), s2s.clone());
    (cfg.domains, cfg.aliases) = discovery.initial().await;

    let t = &cfg.raw.tunnel;
    let (tunnel, from_edge) = edges::Edges::start(
        &cfg.edges,
        tunnel_tls(t)?,
        CoreHello {
            core_id: cfg.raw.core.id.clone(),
            domains: cfg.domains.clone(),
            chat_node_aliases: cfg.aliases.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            protocol: causeway_tunnel::protocol::PROTOCOL,
        },
        TunnelOptions {
            window: t.window,
            window_bytes: t.window_bytes,
            keepalive: Duration::from_secs(t.keepalive_secs),
            ..TunnelOptions::default()
        },
    );
    let _ = host.tunnel.set(tunnel.clone());
    // Domains that change later (discovery, reload) reach the edges in a new hello.
    let announcing = tunnel.clone();
    let _ = host
        .nodes
        .set_announcer(move |domains, aliases| announcing.reannounce(domains, aliases));
    tokio::spawn(pump_tunnel(host, s2s.clone(), from_edge));
    let heartbeats = causeway_http::Heartbeats::new();
    discovery.spawn(&heartbeats);
    let edge_addrs: Vec<&str> = cfg.edges.iter().map(|e| e.address.as_str()).collect();
    info!(module = LOG_MODULE, s2s = %s2s_addr, edges = ?edge_addrs, "core started");
    Ok(Core {
        s2s,
        tunnel,
        s2s_addr,
        config_path: cfg.path.clone(),
        started: std::time::SystemTime::now(),
        discovery,
        heartbeats,
        drain_within: cfg.drain_within,
    })
}

/// Stanzas from the edge go to the IM&P node of their `to` domain; a pair whose queue is full
/// holds its stanzas back, unsettled, instead of bouncing them (crates/core/src/backlog.rs).
async fn pump_tunnel(host: Arc<CoreHost>, s2s: Arc<S2s>, mut from_edge: mpsc::Receiver<Delivered>) {
    let mut backlogs = backlog::Backlogs::new(s2s.clone());
    while let Some(Delivered { stanza: st, settle }) = from_edge.recv().await {
        if !host.is_local(&st.to_domain) || host.is_local(&st.from_domain) {
            warn!(module = LOG_MODULE, from = %st.from_domain, to = %st.to_domain, "tunnel stanza not from a remote domain to a local one: dropped");
            s2s.counters.refuse(causeway_s2s::RefusalReason::Unroutable);
            continue;
        }
        let Some(st) = email::inbound(&host, &s2s, st) else {
            continue;
        };
        let stanza = OutboundStanza {
            from_domain: st.from_domain,
            to_domain: st.to_domain,
            payload: st.payload,
        };
        backlogs.send(stanza, settle).await;
    }
}
