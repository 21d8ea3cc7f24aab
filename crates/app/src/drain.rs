//! Waiting out a drain (a planned stop: SIGTERM, or the `drain` command before a restart):
//! the daemon has stopped accepting and asked every session to close; this polls what is
//! left until nothing is, or the deadline passes, and says which.

use std::time::{Duration, Instant};

/// The reason a drained daemon gives for not being ready (`/readyz`, `status`).
pub const REASON: &str = "draining (a planned stop): restart it to serve again";

/// What a draining daemon still holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Remaining {
    /// s2s sessions not yet closed.
    pub sessions: usize,
    /// Bytes queued for s2s sessions.
    pub queued_bytes: usize,
    /// Stanzas sent through the tunnel and not yet acknowledged by the other side.
    pub unacked: usize,
}

impl Remaining {
    /// Nothing left.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// How a drain ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Everything was handed over before the deadline.
    pub complete: bool,
    /// One line for the log and the `drain` command.
    pub summary: String,
}

/// Drain a daemon within `within` (the common part of crates/edge/src/drain.rs and
/// crates/core/src/drain.rs): `tell_peer` tells the tunnel's other side (with the deadline in
/// seconds), `s2s` stops accepting and closes its sessions, then what is left is waited out:
/// s2s sessions, queued bytes, and `unacked()` tunnel stanzas. `routed_around` says, for the
/// log, who now takes the traffic.
pub async fn drain_daemon(
    within: Duration,
    s2s: &causeway_s2s::S2s,
    tell_peer: impl FnOnce(u32),
    unacked: impl Fn() -> usize,
    routed_around: &str,
) -> Outcome {
    let module = causeway_s2s::LOG_MODULE;
    tracing::info!(
        module,
        within_secs = within.as_secs(),
        "draining: no new s2s connections, {routed_around}"
    );
    tell_peer(u32::try_from(within.as_secs()).unwrap_or(u32::MAX));
    s2s.drain(Instant::now() + within);
    let outcome = wait(within, || Remaining {
        sessions: s2s.sessions().len(),
        queued_bytes: s2s.queued_bytes(),
        unacked: unacked(),
    })
    .await;
    if outcome.complete {
        tracing::info!(module, summary = %outcome.summary, "drained");
    } else {
        tracing::warn!(module, summary = %outcome.summary, "drain incomplete");
    }
    outcome
}

/// Poll `remaining` every 50 ms until it is empty or `within` has passed.
pub async fn wait(within: Duration, remaining: impl Fn() -> Remaining) -> Outcome {
    let started = Instant::now();
    let by = started + within;
    loop {
        let left = remaining();
        let now = Instant::now();
        if left.is_empty() {
            return Outcome {
                complete: true,
                summary: format!(
                    "drained in {:.1} s: every s2s session closed, every queue written, every \
                     tunnel stanza acknowledged",
                    now.duration_since(started).as_secs_f64()
                ),
            };
        }
        if now >= by {
            return Outcome {
                complete: false,
                summary: format!(
                    "drain deadline ({} s) passed with {} s2s session(s) open, {} byte(s) \
                     queued and {} tunnel stanza(s) unacknowledged (the other side sends those \
                     another way)",
                    within.as_secs(),
                    left.sessions,
                    left.queued_bytes,
                    left.unacked
                ),
            };
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn waits_until_nothing_is_left_or_the_deadline() {
        let polls = AtomicUsize::new(0);
        let done = wait(Duration::from_secs(5), || {
            let n = polls.fetch_add(1, Ordering::Relaxed);
            Remaining {
                sessions: 3usize.saturating_sub(n),
                ..Remaining::default()
            }
        })
        .await;
        assert!(done.complete, "{done:?}");
        assert!(done.summary.starts_with("drained in"), "{done:?}");

        let stuck = wait(Duration::from_millis(200), || Remaining {
            sessions: 1,
            queued_bytes: 10,
            unacked: 4,
        })
        .await;
        assert!(!stuck.complete);
        assert!(
            stuck.summary.contains(
                "(0 s) passed with 1 s2s session(s) open, 10 byte(s) queued and 4 tunnel"
            ),
            "{stuck:?}"
        );
    }
}
