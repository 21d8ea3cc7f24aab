//! The core daemon as a library: s2s with the internal IM&P nodes on one side, the traversal
//! tunnel to the edge on the other.
//!
//! Outbound: an IM&P node routes its federation to core's s2s listener; core authenticates the
//! node's domain with dialback (asking the node itself, the authoritative server), checks every
//! stanza, and puts it on the tunnel. Inbound: a stanza from the tunnel goes to an IM&P node of
//! its `to` domain over an s2s session that core opens as the remote domain.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use causeway_s2s::{
    BoxFuture, Direction, Host, InboundStanza, OutboundStanza, S2s, S2sConfig, LOG_MODULE,
};
use causeway_tunnel::{
    CoreHello, CoreTunnel, CoreTunnelConfig, TlsFiles, TunnelOptions, TunnelStanza,
};
use causeway_xmpp::StanzaCondition;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tracing::{info, warn};

pub mod admin;
pub mod cli;
pub mod config;
pub mod metrics;
pub mod reload;

/// What core knows; the [`Host`] of its s2s service towards the IM&P nodes.
pub struct CoreHost {
    /// Local domain or chat node alias -> IM&P node s2s addresses.
    nodes: HashMap<String, Vec<SocketAddr>>,
    tunnel: OnceLock<CoreTunnel>,
}

impl CoreHost {
    fn is_local(&self, domain: &str) -> bool {
        self.nodes.contains_key(domain)
    }

    async fn to_edge(&self, from_domain: String, to_domain: String, payload: bytes::Bytes) {
        let Some(tunnel) = self.tunnel.get() else {
            return;
        };
        let stanza = TunnelStanza {
            from_domain,
            to_domain,
            payload,
        };
        if let Err(e) = tunnel.send(stanza).await {
            warn!(module = LOG_MODULE, error = %e, "tunnel send failed; stanza dropped");
        }
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

impl Host for CoreHost {
    /// Towards the nodes, core speaks for every remote domain.
    fn serves(&self, domain: &str) -> bool {
        !self.is_local(domain) && causeway_xmpp::addr::normalize_domain(domain).is_ok()
    }

    /// Only the local domains' nodes are peers of core.
    fn peer_allowed(&self, remote: &str, _direction: Direction) -> bool {
        self.is_local(remote)
    }

    fn resolve<'a>(&'a self, domain: &'a str) -> BoxFuture<'a, Result<Vec<SocketAddr>, String>> {
        Box::pin(async move {
            self.nodes
                .get(domain)
                .cloned()
                .ok_or_else(|| format!("{domain} is not a local domain"))
        })
    }

    fn deliver(&self, stanza: InboundStanza) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if self.is_local(&stanza.to_domain) {
                warn!(module = LOG_MODULE, from = %stanza.from_domain, to = %stanza.to_domain, "stanza between two local domains: internal federation is not routed yet; dropped");
                return;
            }
            self.to_edge(stanza.from_domain, stanza.to_domain, stanza.payload)
                .await;
        })
    }

    fn bounce(&self, stanza: OutboundStanza, condition: StanzaCondition) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let Some(reply) = causeway_s2s::error_reply(&stanza.payload, condition) else {
                return;
            };
            self.to_edge_detached(stanza.to_domain, stanza.from_domain, reply);
        })
    }
}

/// A running core.
pub struct Core {
    /// s2s towards the IM&P nodes.
    pub s2s: Arc<S2s>,
    /// The tunnel client.
    pub tunnel: CoreTunnel,
    /// Where s2s listens.
    pub s2s_addr: SocketAddr,
    /// The config file (reloads read it again).
    pub config_path: std::path::PathBuf,
    /// When it started.
    pub started: std::time::SystemTime,
}

/// Start core from a validated config (a wiring function).
pub async fn start(
    cfg: config::Validated,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Core> {
    let s = &cfg.raw.s2s;
    let certs = causeway_pki::load_certs(&s.cert)?;
    let key = causeway_pki::load_key(&s.key)?;
    causeway_app::cert::log_certificate_warnings([
        (&s.cert, cfg.raw.certificate_names()?.all()),
        (&cfg.raw.tunnel.cert, vec![cfg.raw.core.id.clone()]),
    ]);
    let tls_server = causeway_pki::s2s_server_config(certs, key)?;
    let tls_client = causeway_pki::s2s_client_config_dialback()?;
    let mut s2s_cfg = S2sConfig::new(cfg.dialback_secret.clone(), Some(tls_server), tls_client);
    s2s_cfg.tls_mode = if s.require_tls {
        causeway_s2s::TlsMode::Required
    } else {
        causeway_s2s::TlsMode::Optional
    };
    s2s_cfg.limits.max_stanza_bytes = s.max_stanza_bytes;
    s2s_cfg.idle_timeout = Duration::from_secs(s.idle_timeout_secs);

    let host = Arc::new(CoreHost {
        nodes: cfg.nodes.clone(),
        tunnel: OnceLock::new(),
    });
    let s2s = S2s::new(s2s_cfg, host.clone());
    let listener = TcpListener::bind(s.listen)
        .await
        .with_context(|| format!("s2s.listen {}", s.listen))?;
    let s2s_addr = listener.local_addr()?;

    let t = &cfg.raw.tunnel;
    let tunnel_cfg = CoreTunnelConfig {
        edge_addr: t.edge.clone(),
        edge_name: t.edge_name.clone(),
        tls: TlsFiles {
            cert_pem: causeway_pki::read_file(&t.cert)?,
            key_pem: causeway_pki::read_file(&t.key)?,
            ca_pem: causeway_pki::read_file(&t.ca)?,
        },
        hello: CoreHello {
            core_id: cfg.raw.core.id.clone(),
            domains: cfg.domains.clone(),
            chat_node_aliases: cfg.aliases.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        },
        opts: TunnelOptions {
            window: t.window,
            keepalive: Duration::from_secs(t.keepalive_secs),
            ..TunnelOptions::default()
        },
    };
    let (tunnel, from_edge) = CoreTunnel::start(tunnel_cfg);
    let _ = host.tunnel.set(tunnel.clone());
    tokio::spawn(s2s.clone().serve(listener, shutdown));
    tokio::spawn(pump_tunnel(host, s2s.clone(), from_edge));
    info!(module = LOG_MODULE, s2s = %s2s_addr, edge = %t.edge, "core started");
    Ok(Core {
        s2s,
        tunnel,
        s2s_addr,
        config_path: cfg.path.clone(),
        started: std::time::SystemTime::now(),
    })
}

/// Stanzas from the edge go to the IM&P node of their `to` domain.
async fn pump_tunnel(
    host: Arc<CoreHost>,
    s2s: Arc<S2s>,
    mut from_edge: mpsc::Receiver<TunnelStanza>,
) {
    while let Some(st) = from_edge.recv().await {
        if !host.is_local(&st.to_domain) || host.is_local(&st.from_domain) {
            warn!(module = LOG_MODULE, from = %st.from_domain, to = %st.to_domain, "tunnel stanza not from a remote domain to a local one: dropped");
            s2s.counters
                .stanzas_refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            continue;
        }
        s2s.send(OutboundStanza {
            from_domain: st.from_domain,
            to_domain: st.to_domain,
            payload: st.payload,
        })
        .await;
    }
}
