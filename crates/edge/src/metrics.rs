//! The edge's Prometheus metrics (`[metrics] listen`): s2s sessions and counters, the tunnel to
//! each core, DNS lookups, addresses refused by the outbound address filter, pauses of the
//! per-domain inbound rate. Rendered at scrape time from the live state.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use causeway_app::metrics::Snapshot;
use causeway_s2s::S2s;
use causeway_tunnel::EdgeTunnel;

use crate::{Edge, EdgeHost};

/// What the edge's metrics are read from.
#[derive(Clone)]
pub struct Sources {
    s2s: Arc<S2s>,
    host: Arc<EdgeHost>,
    tunnel: EdgeTunnel,
}

impl Sources {
    /// The live state of a running edge.
    pub fn new(edge: &Edge) -> Self {
        Self {
            s2s: edge.s2s.clone(),
            host: edge.host.clone(),
            tunnel: edge.tunnel.clone(),
        }
    }

    /// The numbers, now.
    pub fn snapshot(&self) -> Snapshot {
        let mut snapshot = Snapshot::read(
            &self.s2s,
            self.tunnel.stats(),
            Some(self.host.dns_lookups.load(Ordering::Relaxed)),
        );
        let c = &self.s2s.counters;
        snapshot.outbound_addresses_refused = Some(c.addresses_refused.load(Ordering::Relaxed));
        snapshot.inbound_throttled = Some((
            c.inbound_throttled.load(Ordering::Relaxed),
            c.inbound_throttled_micros.load(Ordering::Relaxed) as f64 / 1e6,
        ));
        snapshot
    }
}
