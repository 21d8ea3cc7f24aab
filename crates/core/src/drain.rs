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

use causeway_app::drain::Outcome;

use crate::Core;

impl Core {
    /// Drain (see the module notes); returns what happened. It stays up, drained.
    pub async fn drain(&self) -> Outcome {
        causeway_app::drain::drain_daemon(
            self.drain_within,
            &self.s2s,
            |secs| self.tunnel.drain(secs),
            || self.tunnel.unacked(),
            "edges told to route around this core",
        )
        .await
    }
}
