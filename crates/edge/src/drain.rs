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

use causeway_app::drain::Outcome;

use crate::Edge;

impl Edge {
    /// Drain (see the module notes); returns what happened. It stays up, drained.
    pub async fn drain(&self) -> Outcome {
        causeway_app::drain::drain_daemon(
            self.drain_within,
            &self.s2s,
            |secs| self.tunnel.drain(secs),
            || self.tunnel.unacked(),
            "cores told to route around this edge",
        )
        .await
    }
}
