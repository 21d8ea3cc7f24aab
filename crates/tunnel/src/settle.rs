//! Receiving side: which delivered stanzas the application is done with.
//!
//! The tunnel acknowledges a stanza to its sender only once the application has *settled* it
//! (written it on to its s2s connection, bounced it, or dropped it for good), by dropping the
//! [`Settle`] it got with the stanza. Until then the sender keeps the stanza in its replay
//! window, so a receiving process that dies while holding stanzas (say, while it opens an s2s
//! session) does not lose them: the sender replays them to its replacement or takes them back
//! for another peer. Acks are cumulative, so one stanza held for long would hold back the acks of
//! every later one: after [`HOLD_AT_MOST`] a stanza counts as settled anyway.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::link::lock;

/// Longest time one unsettled stanza holds back the cumulative ack.
pub const HOLD_AT_MOST: Duration = Duration::from_secs(5);

/// Delivered stanzas of one peer instance not yet settled, in sequence order.
pub(crate) struct Settling {
    inner: Mutex<Inner>,
    /// Bumped at every delivery and settlement; the ack writer watches it.
    changed: watch::Sender<u64>,
}

struct Inner {
    /// Highest sequence number delivered.
    delivered: u64,
    /// (seq, delivered at, settled), ascending seq, from the oldest unsettled one on.
    held: VecDeque<(u64, Instant, bool)>,
}

impl Settling {
    /// Nothing delivered yet: acks start after `delivered` (the position a session resumes
    /// from).
    pub(crate) fn new(delivered: u64) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner {
                delivered,
                held: VecDeque::new(),
            }),
            changed: watch::Sender::new(0),
        })
    }

    /// Records the delivery of `seq` at `now` and returns its token.
    pub(crate) fn delivered(self: &Arc<Self>, seq: u64, now: Instant) -> Settle {
        {
            let mut i = lock(&self.inner);
            i.delivered = i.delivered.max(seq);
            i.held.push_back((seq, now, false));
        }
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
        Settle {
            state: self.clone(),
            seq,
        }
    }

    fn settle(&self, seq: u64) {
        let mut i = lock(&self.inner);
        let Ok(idx) = i.held.binary_search_by_key(&seq, |e| e.0) else {
            // Already counted as settled (held too long).
            return;
        };
        i.held[idx].2 = true;
        let front_settled = idx == 0;
        while i.held.front().is_some_and(|e| e.2) {
            i.held.pop_front();
        }
        drop(i);
        if front_settled {
            self.changed.send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    /// The cumulative ack to send at `now`, and when it will grow by itself (the oldest
    /// unsettled stanza reaching [`HOLD_AT_MOST`]).
    pub(crate) fn ackable(&self, now: Instant) -> (u64, Option<Instant>) {
        let mut i = lock(&self.inner);
        while let Some(&(seq, at, settled)) = i.held.front() {
            if settled || at + HOLD_AT_MOST <= now {
                i.held.pop_front();
                continue;
            }
            return (seq - 1, Some(at + HOLD_AT_MOST));
        }
        (i.delivered, None)
    }

    /// Notified at every delivery and settlement.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// Comes with each stanza the tunnel delivers: drop it once the stanza is done with (written
/// on, bounced, or dropped for good). The sender keeps the stanza until then (at most
/// [`HOLD_AT_MOST`]).
pub struct Settle {
    state: Arc<Settling>,
    seq: u64,
}

impl Drop for Settle {
    fn drop(&mut self) {
        self.state.settle(self.seq);
    }
}

impl std::fmt::Debug for Settle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settle").field("seq", &self.seq).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ack_follows_the_oldest_unsettled_stanza() {
        let s = Settling::new(10);
        let now = Instant::now();
        assert_eq!(s.ackable(now), (10, None), "resumes where it was");
        let a = s.delivered(11, now);
        let b = s.delivered(12, now);
        let c = s.delivered(13, now);
        assert_eq!(s.ackable(now), (10, Some(now + HOLD_AT_MOST)));
        drop(b);
        assert_eq!(s.ackable(now).0, 10, "12 settled, 11 still held");
        drop(a);
        assert_eq!(s.ackable(now).0, 12);
        drop(c);
        assert_eq!(s.ackable(now), (13, None));
    }

    #[test]
    fn a_stanza_held_too_long_stops_holding_back_the_ack() {
        let s = Settling::new(0);
        let t0 = Instant::now();
        let stuck = s.delivered(1, t0);
        let later = s.delivered(2, t0 + Duration::from_secs(1));
        drop(later);
        assert_eq!(s.ackable(t0 + Duration::from_secs(4)).0, 0);
        assert_eq!(s.ackable(t0 + HOLD_AT_MOST), (2, None));
        // Settling it afterwards changes nothing.
        drop(stuck);
        assert_eq!(s.ackable(t0 + HOLD_AT_MOST), (2, None));
    }

    #[test]
    fn settlements_and_deliveries_wake_the_ack_writer() {
        let s = Settling::new(0);
        let mut rx = s.subscribe();
        let t = s.delivered(1, Instant::now());
        assert!(rx.has_changed().expect("open"));
        rx.borrow_and_update();
        drop(t);
        assert!(rx.has_changed().expect("open"));
    }
}
