//! Pure, I/O-free bookkeeping for the tunnel's exactly-once delivery.
//!
//! * [`ReplayWindow`] lives on the sending side: it numbers outgoing items
//!   (starting at 1), keeps every item until the peer acknowledges it
//!   cumulatively, and yields the unacknowledged tail for replay after a
//!   reconnect, or gives everything unacknowledged back at once
//!   ([`ReplayWindow::take_all`]) when the peer is gone for good.
//! * [`Dedup`] lives on the receiving side: it remembers the highest sequence
//!   number delivered from one peer *instance* and rejects anything at or below
//!   it, so replays never produce duplicates.
//!
//! Nothing here blocks, allocates per call beyond the queue itself, or touches
//! the network; the async tunnel code drives these types.

use std::collections::VecDeque;

/// Returned by [`ReplayWindow::push`] when the window is at capacity; gives the
/// rejected item back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("replay window is full")]
pub struct WindowFull<T>(pub T);

/// Sender-side window of items that were sent (or queued) but not yet
/// acknowledged by the peer.
///
/// Sequence numbers start at 1 and increase by one per [`push`](Self::push);
/// the window always holds a contiguous range `first_unacked()..next_seq()`.
#[derive(Debug, Clone)]
pub struct ReplayWindow<T> {
    items: VecDeque<T>,
    /// Sequence number of `items[0]` (or of the next push when empty).
    first_seq: u64,
    capacity: usize,
}

impl<T> ReplayWindow<T> {
    /// Creates an empty window holding at most `capacity` unacknowledged items
    /// (a capacity of 0 is treated as 1).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            items: VecDeque::new(),
            first_seq: 1,
            capacity,
        }
    }

    /// Appends `item`, returning its sequence number, or gives it back if the
    /// window is full.
    pub fn push(&mut self, item: T) -> Result<u64, WindowFull<T>> {
        if self.items.len() >= self.capacity {
            return Err(WindowFull(item));
        }
        let seq = self.next_seq();
        self.items.push_back(item);
        Ok(seq)
    }

    /// Processes a cumulative acknowledgement: every item with a sequence number
    /// `<= seq` is released. Returns how many items were freed. Stale or
    /// duplicate acks free nothing; an ack beyond what was pushed frees
    /// everything that exists.
    pub fn ack(&mut self, seq: u64) -> usize {
        if seq < self.first_seq {
            return 0;
        }
        let wanted = seq - self.first_seq + 1;
        let n = usize::try_from(wanted)
            .unwrap_or(usize::MAX)
            .min(self.items.len());
        self.items.drain(..n);
        self.first_seq += n as u64;
        n
    }

    /// Iterates, in order, over the unacknowledged items whose sequence number
    /// is strictly greater than `last_received` (the peer's highest delivered
    /// sequence). `unacked_after(0)` yields every unacknowledged item.
    pub fn unacked_after(&self, last_received: u64) -> impl Iterator<Item = (u64, &T)> + '_ {
        let skip = last_received
            .saturating_add(1)
            .saturating_sub(self.first_seq);
        let skip = usize::try_from(skip).unwrap_or(usize::MAX);
        let first = self.first_seq;
        self.items
            .iter()
            .enumerate()
            .skip(skip)
            .map(move |(i, item)| (first + i as u64, item))
    }

    /// The unacknowledged item with sequence number `seq`, if any.
    pub fn get(&self, seq: u64) -> Option<&T> {
        let idx = seq.checked_sub(self.first_seq)?;
        self.items.get(usize::try_from(idx).ok()?)
    }

    /// Number of unacknowledged items.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when nothing is waiting for an acknowledgement.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// True when [`push`](Self::push) would fail.
    pub fn is_full(&self) -> bool {
        self.items.len() >= self.capacity
    }

    /// Maximum number of unacknowledged items.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Free slots left before the window is full.
    pub fn room(&self) -> usize {
        self.capacity - self.items.len()
    }

    /// Sequence number the next [`push`](Self::push) will get.
    pub fn next_seq(&self) -> u64 {
        self.first_seq + self.items.len() as u64
    }

    /// Sequence number of the oldest unacknowledged item (equals
    /// [`next_seq`](Self::next_seq) when the window is empty).
    pub fn first_unacked(&self) -> u64 {
        self.first_seq
    }

    /// Highest sequence number acknowledged so far (0 if none).
    pub fn acked_through(&self) -> u64 {
        self.first_seq - 1
    }

    /// Empties the window and returns its items in sequence order, for the
    /// caller to send some other way (failover to another peer when this one
    /// is gone for good).
    ///
    /// The items count as settled, exactly as if the peer had acknowledged
    /// them: numbering continues at [`next_seq`](Self::next_seq), later acks
    /// for them free nothing, and a resume finds nothing to replay. Whether
    /// the peer had already delivered some of them is unknown to the window;
    /// resending them elsewhere may duplicate those.
    pub fn take_all(&mut self) -> Vec<T> {
        self.first_seq = self.next_seq();
        self.items.drain(..).collect()
    }
}

/// Receiver-side duplicate filter for one peer.
///
/// Tracks the highest sequence number delivered from the peer's current
/// instance (a random id chosen at each process start). When the peer comes
/// back with a different instance it restarted its numbering, so the filter
/// starts over.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dedup {
    instance: u64,
    last: u64,
}

impl Dedup {
    /// A filter that has delivered nothing and knows no peer instance (0).
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns true (and records `seq`) if a stanza with this sequence number
    /// should be delivered, i.e. `seq` is above everything delivered so far;
    /// false for duplicates and for the invalid sequence number 0.
    pub fn accept(&mut self, seq: u64) -> bool {
        if seq > self.last {
            self.last = seq;
            true
        } else {
            false
        }
    }

    /// Switches to the peer instance `instance`. If it differs from the one
    /// tracked so far, the peer restarted: the last delivered sequence number is
    /// reset to 0 and true is returned. Otherwise nothing changes.
    pub fn reset_for_instance(&mut self, instance: u64) -> bool {
        if instance == self.instance {
            return false;
        }
        self.instance = instance;
        self.last = 0;
        true
    }

    /// The peer instance the counter refers to (0 if none yet).
    pub fn instance(&self) -> u64 {
        self.instance
    }

    /// Highest sequence number delivered from [`instance`](Self::instance).
    pub fn last_delivered(&self) -> u64 {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    #[test]
    fn push_assigns_consecutive_seqs_from_one() {
        let mut w = ReplayWindow::new(4);
        assert_eq!(w.next_seq(), 1);
        assert_eq!(w.push("a"), Ok(1));
        assert_eq!(w.push("b"), Ok(2));
        assert_eq!(w.push("c"), Ok(3));
        assert_eq!(w.len(), 3);
        assert_eq!(w.next_seq(), 4);
        assert_eq!(w.first_unacked(), 1);
        assert_eq!(w.room(), 1);
    }

    #[test]
    fn push_fails_when_full_and_returns_item() {
        let mut w = ReplayWindow::new(2);
        assert!(w.push(1).is_ok());
        assert!(w.push(2).is_ok());
        assert!(w.is_full());
        assert_eq!(w.push(3), Err(WindowFull(3)));
        assert_eq!(w.len(), 2);
        assert_eq!(w.ack(1), 1);
        assert_eq!(w.push(3), Ok(3));
    }

    #[test]
    fn zero_capacity_is_one() {
        let mut w = ReplayWindow::new(0);
        assert_eq!(w.capacity(), 1);
        assert!(w.push(()).is_ok());
        assert!(w.push(()).is_err());
    }

    #[test]
    fn ack_is_cumulative_and_idempotent() {
        let mut w = ReplayWindow::new(10);
        for i in 0..5 {
            w.push(i).expect("room");
        }
        assert_eq!(w.ack(0), 0);
        assert_eq!(w.ack(3), 3);
        assert_eq!(w.first_unacked(), 4);
        assert_eq!(w.acked_through(), 3);
        assert_eq!(w.ack(3), 0, "duplicate ack frees nothing");
        assert_eq!(w.ack(2), 0, "stale ack frees nothing");
        assert_eq!(w.ack(100), 2, "ack past the end frees what exists");
        assert!(w.is_empty());
        assert_eq!(w.next_seq(), 6, "numbering continues after a full ack");
        assert_eq!(w.push(9), Ok(6));
    }

    #[test]
    fn ack_with_huge_seq_does_not_overflow() {
        let mut w = ReplayWindow::new(3);
        w.push(1).expect("room");
        assert_eq!(w.ack(u64::MAX), 1);
        assert_eq!(w.unacked_after(u64::MAX).count(), 0);
        assert_eq!(w.get(u64::MAX), None);
    }

    #[test]
    fn unacked_after_yields_tail_in_order() {
        let mut w = ReplayWindow::new(10);
        for c in ["a", "b", "c", "d", "e"] {
            w.push(c).expect("room");
        }
        w.ack(2);
        let all: Vec<_> = w.unacked_after(0).collect();
        assert_eq!(all, vec![(3, &"c"), (4, &"d"), (5, &"e")]);
        let tail: Vec<_> = w.unacked_after(3).collect();
        assert_eq!(tail, vec![(4, &"d"), (5, &"e")]);
        assert_eq!(w.unacked_after(5).count(), 0);
        assert_eq!(w.unacked_after(7).count(), 0);
        assert_eq!(w.get(2), None);
        assert_eq!(w.get(4), Some(&"d"));
        assert_eq!(w.get(6), None);
    }

    #[test]
    fn take_all_returns_the_unacked_in_order_and_settles_them() {
        let mut w = ReplayWindow::new(4);
        for c in ["a", "b", "c", "d"] {
            w.push(c).expect("room");
        }
        w.ack(1);
        assert_eq!(w.take_all(), vec!["b", "c", "d"]);
        assert!(w.is_empty());
        assert_eq!(w.room(), 4, "taking frees the room");
        assert_eq!(w.acked_through(), 4, "taken items count as settled");
        assert_eq!(w.next_seq(), 5, "numbering continues");
        assert_eq!(w.ack(3), 0, "a late ack for taken items frees nothing");
        assert_eq!(w.ack(4), 0);
        assert_eq!(w.unacked_after(0).count(), 0, "nothing left to replay");
        assert_eq!(w.push("e"), Ok(5));
        assert_eq!(w.take_all(), vec!["e"]);
        assert!(w.take_all().is_empty(), "an empty window gives nothing");
        assert_eq!(w.next_seq(), 6);
    }

    #[test]
    fn after_take_all_a_returning_peer_gets_only_new_items() {
        // The peer delivered 1..=2 from this instance, then vanished with 3..=5
        // unacknowledged; those were taken and sent elsewhere. When it comes
        // back (same instance on both sides) its duplicate filter must accept
        // what is pushed next, and nothing taken is replayed to it.
        let mut w = ReplayWindow::new(8);
        let mut peer = Dedup::new();
        peer.reset_for_instance(1);
        for i in 1..=5u64 {
            w.push(i).expect("room");
        }
        assert!(peer.accept(1) && peer.accept(2));
        assert_eq!(w.take_all(), vec![1, 2, 3, 4, 5]);
        // The peer's hello says it delivered through 2: nothing to release.
        assert_eq!(w.ack(peer.last_delivered()), 0);
        let seq = w.push(6).expect("room");
        assert_eq!(seq, 6);
        let replay: Vec<_> = w
            .unacked_after(peer.last_delivered())
            .map(|(s, v)| (s, *v))
            .collect();
        assert_eq!(replay, vec![(6, 6)]);
        assert!(
            peer.accept(6),
            "the gap left by the taken items is harmless"
        );
    }

    #[test]
    fn dedup_drops_duplicates_and_old() {
        let mut d = Dedup::new();
        assert!(!d.accept(0), "seq 0 is never valid");
        assert!(d.accept(1));
        assert!(d.accept(2));
        assert!(!d.accept(2));
        assert!(!d.accept(1));
        assert!(d.accept(5));
        assert!(!d.accept(4));
        assert_eq!(d.last_delivered(), 5);
    }

    #[test]
    fn dedup_reset_only_on_instance_change() {
        let mut d = Dedup::new();
        assert!(d.reset_for_instance(77));
        assert!(d.accept(1));
        assert!(d.accept(2));
        assert!(!d.reset_for_instance(77), "same instance keeps state");
        assert!(!d.accept(2));
        assert_eq!(d.last_delivered(), 2);
        // Peer restarted: its numbering begins at 1 again.
        assert!(d.reset_for_instance(78));
        assert_eq!(d.instance(), 78);
        assert_eq!(d.last_delivered(), 0);
        assert!(d.accept(1));
    }

    /// Model of one direction of the tunnel: a sender with a window, a lossy
    /// connection that is cut at random points, a reconnect handshake, and a
    /// receiver with a dedup filter. At a cut, in-flight frames are either lost
    /// or (like an old session still draining) delivered late, interleaved with
    /// the replay; the receiver's hello sometimes under-reports what it has
    /// delivered (it was computed earlier). Whatever happens, the receiver must
    /// see 1..=total exactly once and in order.
    ///
    /// Returns the delivered items, the number of cuts and of dropped duplicates.
    fn simulate(seed: u64, total: u64, capacity: usize) -> (Vec<u64>, u32, u32) {
        let mut rng = StdRng::seed_from_u64(seed);
        let sender_instance = 1000 + seed;
        let mut window: ReplayWindow<u64> = ReplayWindow::new(capacity);
        let mut dedup = Dedup::new();
        let mut delivered = Vec::new();
        let mut next_item = 1u64;
        // In-flight data: frames to the receiver, cumulative acks to the sender.
        let mut to_rx: VecDeque<(u64, u64)> = VecDeque::new();
        let mut to_tx: VecDeque<u64> = VecDeque::new();
        // Sender's cursor: next seq to transmit in this session.
        let mut cursor = 1u64;
        let mut cuts = 0;
        let mut dups = 0;
        let mut last_ack_sent = 0u64;
        let mut unacked_deliveries = 0u32;
        let mut steps = 0u32;
        // Handshake of the first session.
        let mut connected = false;

        while (delivered.len() as u64) < total {
            steps += 1;
            assert!(steps < 1_000_000, "simulation does not converge");
            if !connected {
                // Receiver's hello: what it has delivered from which instance.
                let (peer_instance, mut last_received) = (dedup.instance(), dedup.last_delivered());
                if rng.random_bool(0.3) {
                    // A stale hello: only what was acknowledged before.
                    last_received = last_ack_sent.min(last_received);
                }
                // Sender's hello reaches the receiver.
                dedup.reset_for_instance(sender_instance);
                if peer_instance == sender_instance {
                    window.ack(last_received);
                    cursor = last_received + 1;
                } else {
                    cursor = 0;
                }
                cursor = cursor.max(window.first_unacked());
                connected = true;
                continue;
            }
            match rng.random_range(0..100u32) {
                // Producer queues new items while there is room.
                0..=29 => {
                    if next_item <= total && window.push(next_item).is_ok() {
                        next_item += 1;
                    }
                }
                // Sender transmits the next unsent item.
                30..=54 => {
                    if let Some(item) = window.get(cursor) {
                        to_rx.push_back((cursor, *item));
                        cursor += 1;
                    }
                    cursor = cursor.max(window.first_unacked());
                }
                // Receiver handles one frame, acking every few deliveries.
                55..=79 => {
                    if let Some((seq, item)) = to_rx.pop_front() {
                        if dedup.accept(seq) {
                            delivered.push(item);
                            unacked_deliveries += 1;
                        } else {
                            dups += 1;
                        }
                        if unacked_deliveries >= 3 || rng.random_bool(0.2) {
                            last_ack_sent = dedup.last_delivered();
                            to_tx.push_back(last_ack_sent);
                            unacked_deliveries = 0;
                        }
                    }
                }
                // Sender handles an ack.
                80..=94 => {
                    if let Some(ack) = to_tx.pop_front() {
                        window.ack(ack);
                        cursor = cursor.max(window.first_unacked());
                    }
                }
                // Cut: in-flight frames are lost, or arrive late.
                _ => {
                    if rng.random_bool(0.5) {
                        to_rx.clear();
                    }
                    to_tx.clear();
                    unacked_deliveries = 0;
                    connected = false;
                    cuts += 1;
                }
            }
        }
        (delivered, cuts, dups)
    }

    #[test]
    fn property_exactly_once_in_order_across_random_cuts() {
        let mut total_cuts = 0;
        let mut total_dups = 0;
        for seed in 0..200u64 {
            let capacity = 1 + (seed as usize % 13);
            let (delivered, cuts, dups) = simulate(seed, 300, capacity);
            let expected: Vec<u64> = (1..=300).collect();
            assert_eq!(delivered, expected, "seed {seed} capacity {capacity}");
            total_cuts += cuts;
            total_dups += dups;
        }
        assert!(
            total_cuts > 1000,
            "the simulation must actually cut ({total_cuts})"
        );
        assert!(
            total_dups > 100,
            "the simulation must exercise duplicate removal ({total_dups})"
        );
    }

    #[test]
    fn receiver_restart_replays_everything_unacked() {
        // The sender learns from the hello of a restarted receiver (which knows
        // no instance) that it must replay everything unacknowledged.
        let sender_instance = 5;
        let mut w = ReplayWindow::new(8);
        for i in 1..=6u64 {
            w.push(i).expect("room");
        }
        w.ack(2);
        let restarted = Dedup::new();
        assert_ne!(restarted.instance(), sender_instance);
        let replay: Vec<u64> = w.unacked_after(0).map(|(_, v)| *v).collect();
        assert_eq!(replay, vec![3, 4, 5, 6]);
    }

    #[test]
    fn sender_restart_resets_receiver_numbering() {
        // Old sender instance delivered 1..=10; a restarted sender numbers from 1
        // again with a new instance id. Without the reset those would be dropped.
        let mut d = Dedup::new();
        d.reset_for_instance(111);
        for s in 1..=10 {
            assert!(d.accept(s));
        }
        let mut fresh: ReplayWindow<&str> = ReplayWindow::new(4);
        let s1 = fresh.push("x").expect("room");
        assert_eq!(s1, 1);
        assert!(!d.accept(s1), "would be dropped as a duplicate");
        assert!(d.reset_for_instance(222));
        assert!(d.accept(s1));
    }
}
