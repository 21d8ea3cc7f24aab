//! A planned stop of core (SIGTERM, or `core drain` before a restart), within
//! `[tunnel] drain_secs`:
//!
//! 1. the edges are told (`Drain`, protocol revision 2) to send nothing new here: with
//!    several cores serving a domain, its stanzas take the other cores;
//! 2. core's s2s listener closes; every stream from an IM&P node gets `system-shutdown` and is
//!    read until the node closes it; every session to a node closes once its queue is
//!    written;
//! 3. what core sent the edges is acknowledged.
//!
//! What is left at the deadline: the edges re-send what they sent here unacknowledged (to
//! another core at once, or to this one when it is back).

use causeway_app::drain::{Outcome, Remaining};

use crate::Core;

impl Core {
    /// Drain (see the module notes); returns what happened. core stays up, drained.
    pub async fn drain(&self) -> Outcome {
        let within = self.drain_within;
        tracing::info!(
            module = causeway_s2s::LOG_MODULE,
            within_secs = within.as_secs(),
            "draining: no new s2s connections, edges told to route around this core"
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
