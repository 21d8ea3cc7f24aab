//! core's Prometheus metrics (`[metrics] listen`): s2s sessions and counters towards the
//! internal nodes, the tunnel to each edge. Rendered at scrape time from the live state.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use causeway_app::metrics::{MetricsSection, SessionCounts, Snapshot, TunnelPeer};
use causeway_s2s::{Direction, S2s};

use crate::Core;

/// What core's metrics are read from.
#[derive(Clone)]
pub struct Sources {
    s2s: Arc<S2s>,
    tunnel: crate::edges::Edges,
}

impl Sources {
    /// The live state of a running core.
    pub fn new(core: &Core) -> Self {
        Self {
            s2s: core.s2s.clone(),
            tunnel: core.tunnel.clone(),
        }
    }

    /// The numbers, now.
    pub fn snapshot(&self) -> Snapshot {
        let mut sessions = SessionCounts::default();
        for s in self.s2s.sessions() {
            sessions.add(s.direction == Direction::Outbound, !s.pairs.is_empty());
        }
        let c = &self.s2s.counters;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        Snapshot {
            sessions,
            outgoing_routes: self.s2s.outgoing_count() as u64,
            stanzas_in: load(&c.stanzas_in),
            stanzas_out: load(&c.stanzas_out),
            stanzas_refused: load(&c.stanzas_refused),
            stanzas_bounced: load(&c.stanzas_bounced),
            tls_handshake_failures: load(&c.tls_failures),
            dialback_failures: load(&c.dialback_failures),
            tunnels: self
                .tunnel
                .stats()
                .links
                .into_iter()
                .map(|(peer, l)| TunnelPeer {
                    peer,
                    connected: l.connected,
                    unacked: l.unacked as u64,
                    reconnects: l.reconnects,
                })
                .collect(),
            dns_lookups: None,
        }
    }
}

/// Serve core's metrics if `[metrics]` is configured; logs and returns the bound address.
pub async fn serve(
    core: &Core,
    section: Option<MetricsSection>,
) -> anyhow::Result<Option<SocketAddr>> {
    let Some(section) = section else {
        return Ok(None);
    };
    let sources = Sources::new(core);
    let addr =
        causeway_app::metrics::serve(section.listen, move || sources.snapshot().render()).await?;
    tracing::info!(listen = %addr, "metrics: serving Prometheus text on http://{addr}/metrics");
    Ok(Some(addr))
}
