//! core's Prometheus metrics (`[metrics] listen`): s2s sessions and counters towards the
//! internal nodes, the tunnel to each edge. Rendered at scrape time from the live state.

use std::sync::Arc;

use causeway_app::metrics::Snapshot;
use causeway_s2s::S2s;

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
        Snapshot::read(&self.s2s, self.tunnel.stats(), None)
    }
}
