//! A planned stop of the edge (SIGTERM, or `edge drain` before a restart), within
//! `[tunnel] drain_secs`:
//!
//! 1. the cores are told (`Drain`, protocol revision 2) to send nothing new here: their new
//!    stanzas take the other edges;
//! 2. the s2s listeners close; every inbound stream gets `system-shutdown` and is read until
//!    its peer closes it (stanzas already in flight are delivered; the partner reconnects, to
//!    another edge through its SRV records); every outgoing session closes once its queue is
//!    written;
//! 3. what the edge sent the cores is acknowledged.
//!
//! What is left at the deadline: the cores re-send what they sent here unacknowledged through
//! the other edges at once (they were told this edge drains), and partners with stream
//! management re-send what the edge had not acknowledged.

use causeway_app::drain::{Outcome, Remaining};

use crate::Edge;

impl Edge {
    /// Drain (see the module notes); returns what happened. The edge stays up, drained.
    pub async fn drain(&self) -> Outcome {
        let within = self.drain_within;
        tracing::info!(
            module = causeway_s2s::LOG_MODULE,
            within_secs = within.as_secs(),
            "draining: no new s2s connections, cores told to route around this edge"
        );
        self.tunnel
            .drain(u32::try_from(within.as_secs()).unwrap_or(u32::MAX));
        self.s2s.drain(std::time::Instant::now() + within);
        let outcome = causeway_app::drain::wait(within, || Remaining {
            sessions: self.s2s.sessions().len(),
            queued_bytes: self.s2s.queued_bytes(),
            unacked: self.tunnel.unacked(),
        })
        .await;
        if outcome.complete {
            tracing::info!(module = causeway_s2s::LOG_MODULE, summary = %outcome.summary, "drained");
        } else {
            tracing::warn!(module = causeway_s2s::LOG_MODULE, summary = %outcome.summary, "drain incomplete");
        }
        outcome
    }
}
