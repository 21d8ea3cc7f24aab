//! Pure, I/O-free bookkeeping for the tunnel's exactly-once delivery.
//!
//! Two positions are kept apart, because one stalled destination must not hold back the others:
//!
//! * **received**: the stream is ordered, so what a receiver has *received* from one peer
//!   instance is always a prefix `1..=n`. It drives the duplicate filter and where a resumed
//!   session starts sending again.
//! * **settled**: the receiver is done with a stanza (today: handed it to its local consumer;
//!   later: written on to its destination). Stanzas settle in any order, so acknowledgements
//!   are *selective*: a cumulative floor plus ranges above it ([`AckInfo`]). The sender frees
//!   exactly what was settled; a stanza held up behind a stalled partner keeps only its own slot.
//!
//! * [`SendState`] lives on the sending side: it numbers outgoing items (from 1), keeps every
//!   item until the peer settles it, tracks what this session has written ([`SendState::next_to_send`])
//!   and where a resumed session starts ([`SendState::resume`]), and gives everything unsettled
//!   back at once ([`SendState::take_all`]) when the peer is gone for good. It is bounded in
//!   items *and* bytes.
//! * [`RecvState`] lives on the receiving side: duplicate filter (received prefix per peer
//!   instance), the settled set, and the acknowledgements still to report.
//!
//! Call order, sender: `push`* ; per session: `resume(peer hello)`, then any interleaving of
//! `next_to_send`, `push`, `on_ack`; `take_all` when the peer is gone for good.
//! Receiver: per session `on_peer_instance(hello.instance)` and `hello_position()` for our own
//! hello; then `accept(seq)` per stanza, `settle(seq)` when done with it, `take_ack()` to write
//! an acknowledgement.
//!
//! Nothing here blocks or touches the network; `link.rs` drives these types.

use std::collections::BTreeMap;

/// Returned by [`SendState::push`] when the window is at capacity; gives the rejected item back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("replay window is full")]
pub struct WindowFull<T>(pub T);

/// A set of sequence numbers as disjoint, non-adjacent inclusive ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeSet {
    /// start -> end (inclusive); ranges neither overlap nor touch.
    ranges: BTreeMap<u64, u64>,
}

impl RangeSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `first..=last` (nothing if `first > last`), merging with neighbours.
    pub fn insert(&mut self, first: u64, last: u64) {
        if first > last {
            return;
        }
        let (mut first, mut last) = (first, last);
        // A range starting at or before `first` that reaches it (or touches it).
        if let Some((&s, &e)) = self.ranges.range(..=first).next_back() {
            if e.saturating_add(1) >= first {
                first = s;
                last = last.max(e);
                self.ranges.remove(&s);
            }
        }
        // Ranges starting inside `first..=last+1` are swallowed.
        loop {
            let next = self
                .ranges
                .range(first..=last.saturating_add(1))
                .next()
                .map(|(&s, &e)| (s, e));
            match next {
                Some((s, e)) => {
                    last = last.max(e);
                    self.ranges.remove(&s);
                }
                None => break,
            }
        }
        self.ranges.insert(first, last);
    }

    /// True if `seq` is in the set.
    pub fn contains(&self, seq: u64) -> bool {
        self.ranges
            .range(..=seq)
            .next_back()
            .is_some_and(|(_, &e)| seq <= e)
    }

    /// Removes every number `<= through`.
    pub fn remove_through(&mut self, through: u64) {
        let Some((_, &end)) = self.ranges.range(..=through).next_back() else {
            return;
        };
        let below: Vec<u64> = self.ranges.range(..=through).map(|(&s, _)| s).collect();
        for k in below {
            self.ranges.remove(&k);
        }
        if end > through {
            self.ranges.insert(through + 1, end);
        }
    }

    /// The ranges in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().map(|(&s, &e)| (s, e))
    }

    /// Number of ranges.
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    /// True when the set is empty.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The first range, if any.
    pub fn first(&self) -> Option<(u64, u64)> {
        self.ranges.iter().next().map(|(&s, &e)| (s, e))
    }

    /// Removes and returns up to `n` ranges from the front.
    fn pop_front(&mut self, n: usize) -> Vec<(u64, u64)> {
        let keys: Vec<u64> = self.ranges.keys().take(n).copied().collect();
        keys.into_iter()
            .filter_map(|k| self.ranges.remove(&k).map(|e| (k, e)))
            .collect()
    }
}

/// What a receiver says it has settled: every sequence number `<= through`, and the ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckInfo {
    /// Cumulative floor: everything at or below is settled.
    pub through: u64,
    /// Settled ranges above the floor (inclusive), ascending.
    pub ranges: Vec<(u64, u64)>,
}

/// Most ranges one acknowledgement carries; more wait for the next one.
pub const MAX_ACK_RANGES: usize = 1024;

/// Sender-side window: items sent (or queued) and not yet settled by the peer, bounded in
/// items and bytes, plus this session's write cursor.
///
/// Sequence numbers start at 1 and increase by one per [`push`](Self::push). Settled items
/// leave at once, whatever their position: the window holds only live items.
#[derive(Debug, Clone)]
pub struct SendState<T> {
    items: BTreeMap<u64, (T, usize)>,
    next_seq: u64,
    bytes: usize,
    max_items: usize,
    max_bytes: usize,
    /// The lowest sequence number this session may still have to write.
    cursor: u64,
}

/// What the peer's hello says about us: enough to resume.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerPosition {
    /// The peer's instance (random per process start).
    pub instance: u64,
    /// Our instance as the peer knows it (0: none).
    pub peer_instance: u64,
    /// Highest sequence number the peer received from `peer_instance`.
    pub last_received: u64,
    /// What it settled; `None` from a peer that predates selective acknowledgements, whose
    /// `last_received` means settled as well.
    pub settled: Option<AckInfo>,
}

impl<T> SendState<T> {
    /// An empty window holding at most `max_items` items and `max_bytes` bytes (each at
    /// least 1). An item larger than `max_bytes` is taken when the window is empty.
    pub fn new(max_items: usize, max_bytes: usize) -> Self {
        Self {
            items: BTreeMap::new(),
            next_seq: 1,
            bytes: 0,
            max_items: max_items.max(1),
            max_bytes: max_bytes.max(1),
            cursor: 1,
        }
    }

    /// The bytes `push` charges for an item of `size` bytes (never more than the budget, so
    /// any item fits an empty window).
    pub fn charge(&self, size: usize) -> usize {
        size.min(self.max_bytes)
    }

    /// Appends `item` of `size` bytes, returning its sequence number, or gives it back if the
    /// window has no room for it.
    pub fn push(&mut self, item: T, size: usize) -> Result<u64, WindowFull<T>> {
        let charge = self.charge(size);
        if self.items.len() >= self.max_items || self.bytes + charge > self.max_bytes {
            return Err(WindowFull(item));
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.bytes += charge;
        self.items.insert(seq, (item, charge));
        Ok(seq)
    }

    /// Releases what `ack` says is settled. Returns the items and bytes freed. Stale,
    /// duplicate and out-of-range acknowledgements free nothing more than exists.
    pub fn on_ack(&mut self, ack: &AckInfo) -> (usize, usize) {
        self.on_ack_with(ack, |_, _| {})
    }

    /// [`on_ack`](Self::on_ack), handing each freed item and its charge to `freed_item`.
    pub fn on_ack_with(
        &mut self,
        ack: &AckInfo,
        mut freed_item: impl FnMut(T, usize),
    ) -> (usize, usize) {
        let mut seqs: Vec<u64> = self.items.range(..=ack.through).map(|(&s, _)| s).collect();
        for &(first, last) in &ack.ranges {
            if first <= last {
                seqs.extend(self.items.range(first..=last).map(|(&s, _)| s));
            }
        }
        let mut freed = (0, 0);
        for s in seqs {
            if let Some((item, charge)) = self.items.remove(&s) {
                freed.0 += 1;
                freed.1 += charge;
                freed_item(item, charge);
            }
        }
        self.bytes -= freed.1;
        freed
    }

    /// Starts a session from the peer's hello: applies what it settled (if it knows this
    /// instance) and sets where writing starts: after what it received, or from the first
    /// unsettled item if it does not know us (it restarted: everything is replayed).
    pub fn resume(&mut self, peer: &PeerPosition, our_instance: u64) -> (usize, usize) {
        self.resume_with(peer, our_instance, |_, _| {})
    }

    /// [`resume`](Self::resume), handing each freed item and its charge to `freed_item`.
    pub fn resume_with(
        &mut self,
        peer: &PeerPosition,
        our_instance: u64,
        freed_item: impl FnMut(T, usize),
    ) -> (usize, usize) {
        let knows_us = peer.peer_instance != 0 && peer.peer_instance == our_instance;
        if !knows_us {
            self.cursor = 1;
            return (0, 0);
        }
        let settled = peer.settled.clone().unwrap_or(AckInfo {
            through: peer.last_received,
            ranges: Vec::new(),
        });
        let freed = self.on_ack_with(&settled, freed_item);
        self.cursor = peer.last_received.saturating_add(1);
        freed
    }

    /// The next item this session has to write, if any (does not advance; see
    /// [`sent`](Self::sent)).
    pub fn peek_next(&self) -> Option<(u64, &T)> {
        self.items
            .range(self.cursor..)
            .next()
            .map(|(&s, (item, _))| (s, item))
    }

    /// Records that `seq` was written in this session.
    pub fn sent(&mut self, seq: u64) {
        self.cursor = self.cursor.max(seq.saturating_add(1));
    }

    /// True once `seq` was pushed and has been settled (or taken back).
    pub fn is_settled(&self, seq: u64) -> bool {
        seq < self.next_seq && !self.items.contains_key(&seq)
    }

    /// Empties the window and returns its items in sequence order, for the caller to send some
    /// other way (failover to another peer when this one is gone for good). They count as
    /// settled: numbering continues, and a resume finds nothing to replay. Whether the peer had
    /// already received some of them is unknown here; resending them elsewhere may duplicate
    /// those.
    pub fn take_all(&mut self) -> Vec<T> {
        self.bytes = 0;
        self.cursor = self.next_seq;
        std::mem::take(&mut self.items)
            .into_values()
            .map(|(item, _)| item)
            .collect()
    }

    /// The unsettled item `seq`, if any.
    pub fn get(&self, seq: u64) -> Option<&T> {
        self.items.get(&seq).map(|(item, _)| item)
    }

    /// Number of unsettled items.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when nothing is waiting to be settled.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Bytes charged by the unsettled items.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The item and byte budgets.
    pub fn capacity(&self) -> (usize, usize) {
        (self.max_items, self.max_bytes)
    }

    /// Sequence number the next [`push`](Self::push) will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Oldest unsettled sequence number ([`next_seq`](Self::next_seq) when empty).
    pub fn first_unsettled(&self) -> u64 {
        self.items.keys().next().copied().unwrap_or(self.next_seq)
    }
}

/// Receiver-side state for one peer: the duplicate filter (what was received from the peer's
/// current instance), the settled set, and what is still to be acknowledged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecvState {
    instance: u64,
    received: u64,
    /// Everything at or below is settled.
    settled_through: u64,
    /// Settled above the floor.
    settled: RangeSet,
    /// Settled above the floor and not yet reported in an acknowledgement.
    unreported: RangeSet,
    /// The floor as last reported.
    reported_through: u64,
}

impl RecvState {
    /// A receiver that has received nothing and knows no peer instance (0).
    pub fn new() -> Self {
        Self::default()
    }

    /// Switches to the peer instance `instance` (from its hello). If it differs from the one
    /// tracked so far, the peer restarted and numbers from 1 again: everything is forgotten
    /// and true is returned.
    pub fn on_peer_instance(&mut self, instance: u64) -> bool {
        if instance == self.instance {
            return false;
        }
        *self = Self {
            instance,
            ..Self::default()
        };
        true
    }

    /// True (and recorded as received) if a stanza with this sequence number is new: above
    /// everything received so far. False for duplicates and for the invalid 0. Numbers skipped
    /// over were taken back by the sender (they will never come): they count as settled.
    pub fn accept(&mut self, seq: u64) -> bool {
        if seq <= self.received {
            return false;
        }
        if seq > self.received + 1 {
            self.mark_settled(self.received + 1, seq - 1);
        }
        self.received = seq;
        true
    }

    /// Records that the receiver is done with `seq` (delivered or written on). Returns false
    /// for a number not received or already settled.
    pub fn settle(&mut self, seq: u64) -> bool {
        if seq == 0 || seq > self.received || self.is_settled(seq) {
            return false;
        }
        self.mark_settled(seq, seq);
        true
    }

    fn mark_settled(&mut self, first: u64, last: u64) {
        self.settled.insert(first, last);
        self.unreported.insert(first, last);
        if let Some((s, e)) = self.settled.first() {
            if s <= self.settled_through + 1 {
                self.settled_through = self.settled_through.max(e);
                self.settled.remove_through(self.settled_through);
            }
        }
        self.unreported.remove_through(self.settled_through);
    }

    /// True if `seq` was settled.
    pub fn is_settled(&self, seq: u64) -> bool {
        seq <= self.settled_through || self.settled.contains(seq)
    }

    /// An acknowledgement of what settled since the last one, if anything did.
    pub fn take_ack(&mut self) -> Option<AckInfo> {
        if self.settled_through == self.reported_through && self.unreported.is_empty() {
            return None;
        }
        self.reported_through = self.settled_through;
        Some(AckInfo {
            through: self.settled_through,
            ranges: self.unreported.pop_front(MAX_ACK_RANGES),
        })
    }

    /// The acknowledgement to repeat when asked (a keepalive): the floor, and what is unreported.
    pub fn current_ack(&mut self) -> AckInfo {
        self.take_ack().unwrap_or(AckInfo {
            through: self.settled_through,
            ranges: Vec::new(),
        })
    }

    /// Our position for a hello: (peer instance, received, everything settled). The hello
    /// reports everything, so nothing stays unreported.
    pub fn hello_position(&mut self) -> (u64, u64, AckInfo) {
        // Ranges beyond what one message carries stay unreported, for the next acknowledgement.
        let mut ranges: Vec<(u64, u64)> = self.settled.iter().collect();
        let later = ranges.split_off(ranges.len().min(MAX_ACK_RANGES));
        self.unreported = RangeSet::new();
        for (s, e) in later {
            self.unreported.insert(s, e);
        }
        self.reported_through = self.settled_through;
        (
            self.instance,
            self.received,
            AckInfo {
                through: self.settled_through,
                ranges,
            },
        )
    }

    /// The peer instance tracked (0 if none yet).
    pub fn instance(&self) -> u64 {
        self.instance
    }

    /// Highest sequence number received from [`instance`](Self::instance).
    pub fn last_received(&self) -> u64 {
        self.received
    }

    /// The settled floor.
    pub fn settled_through(&self) -> u64 {
        self.settled_through
    }

    /// Received and not settled.
    pub fn unsettled(&self) -> u64 {
        let above: u64 = self.settled.iter().map(|(s, e)| e - s + 1).sum();
        self.received - self.settled_through - above
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(through: u64, ranges: &[(u64, u64)]) -> AckInfo {
        AckInfo {
            through,
            ranges: ranges.to_vec(),
        }
    }

    #[test]
    fn range_set_merges_touching_and_overlapping_ranges() {
        let mut r = RangeSet::new();
        r.insert(5, 5);
        r.insert(7, 9);
        assert_eq!(r.iter().collect::<Vec<_>>(), vec![(5, 5), (7, 9)]);
        r.insert(6, 6);
        assert_eq!(r.iter().collect::<Vec<_>>(), vec![(5, 9)]);
        r.insert(1, 2);
        r.insert(12, 20);
        r.insert(3, 13);
        assert_eq!(r.iter().collect::<Vec<_>>(), vec![(1, 20)]);
        r.insert(9, 3);
        assert_eq!(r.len(), 1, "an empty range adds nothing");
        assert!(r.contains(1) && r.contains(20) && !r.contains(21) && !r.contains(0));
        r.remove_through(10);
        assert_eq!(r.iter().collect::<Vec<_>>(), vec![(11, 20)]);
        r.remove_through(30);
        assert!(r.is_empty());
        r.insert(u64::MAX - 1, u64::MAX);
        r.insert(u64::MAX, u64::MAX);
        assert_eq!(r.iter().collect::<Vec<_>>(), vec![(u64::MAX - 1, u64::MAX)]);
    }

    #[test]
    fn push_assigns_consecutive_seqs_from_one_and_is_bounded_in_items() {
        let mut w = SendState::new(2, 1000);
        assert_eq!(w.push("a", 1), Ok(1));
        assert_eq!(w.push("b", 1), Ok(2));
        assert_eq!(w.push("c", 1), Err(WindowFull("c")));
        assert_eq!(w.on_ack(&ack(1, &[])), (1, 1));
        assert_eq!(w.push("c", 1), Ok(3));
        assert_eq!(w.next_seq(), 4);
    }

    #[test]
    fn the_window_is_bounded_in_bytes_and_takes_any_item_when_empty() {
        let mut w = SendState::new(100, 10);
        assert_eq!(w.push("a", 6), Ok(1));
        assert_eq!(w.push("b", 5), Err(WindowFull("b")), "11 bytes > 10");
        assert_eq!(w.push("b", 4), Ok(2));
        assert_eq!(w.bytes(), 10);
        w.on_ack(&ack(2, &[]));
        assert_eq!(w.bytes(), 0);
        assert_eq!(w.push("huge", 1_000_000), Ok(3), "charged at the budget");
        assert_eq!(w.bytes(), 10);
        assert_eq!(w.push("x", 1), Err(WindowFull("x")));
    }

    #[test]
    fn selective_acks_free_items_behind_an_unsettled_one() {
        let mut w = SendState::new(10, 1000);
        for i in 1..=6u64 {
            w.push(i, 10).expect("room");
        }
        // 1 is stuck behind a stalled partner; 2..=3 and 5 are settled.
        assert_eq!(w.on_ack(&ack(0, &[(2, 3), (5, 5)])), (3, 30));
        assert_eq!(w.len(), 3);
        assert_eq!(w.first_unsettled(), 1);
        assert!(w.is_settled(2) && w.is_settled(5) && !w.is_settled(1) && !w.is_settled(4));
        assert!(!w.is_settled(7), "never pushed");
        assert_eq!(w.on_ack(&ack(0, &[(2, 3), (5, 5)])), (0, 0), "duplicate");
        assert_eq!(w.on_ack(&ack(0, &[(9, 2)])), (0, 0), "inverted range");
        assert_eq!(w.on_ack(&ack(u64::MAX, &[(0, u64::MAX)])), (3, 30));
        assert!(w.is_empty());
        assert_eq!(w.push(7, 1), Ok(7));
    }

    #[test]
    fn writing_skips_settled_items_and_resumes_after_what_was_received() {
        let mut w = SendState::new(10, 1000);
        for c in ["a", "b", "c", "d", "e"] {
            w.push(c, 1).expect("room");
        }
        let mut written = Vec::new();
        while let Some((seq, item)) = w.peek_next() {
            written.push(*item);
            w.sent(seq);
        }
        assert_eq!(written, ["a", "b", "c", "d", "e"]);
        // The peer received 1..=4 and settled 2 and 4; 1 and 3 are still in its hands.
        let peer = PeerPosition {
            instance: 9,
            peer_instance: 7,
            last_received: 4,
            settled: Some(ack(0, &[(2, 2), (4, 4)])),
        };
        assert_eq!(w.resume(&peer, 7), (2, 2));
        assert_eq!(
            w.peek_next(),
            Some((5, &"e")),
            "only what it never received"
        );
        // A peer that restarted (does not know us) gets everything unsettled again.
        let restarted = PeerPosition {
            instance: 10,
            ..PeerPosition::default()
        };
        assert_eq!(w.resume(&restarted, 7), (0, 0));
        assert_eq!(w.peek_next(), Some((1, &"a")));
    }

    #[test]
    fn a_hello_from_an_older_peer_settles_what_it_received() {
        let mut w = SendState::new(10, 1000);
        for i in 1..=4u64 {
            w.push(i, 1).expect("room");
        }
        let old = PeerPosition {
            instance: 3,
            peer_instance: 1,
            last_received: 2,
            settled: None,
        };
        assert_eq!(w.resume(&old, 1), (2, 2));
        assert_eq!(w.peek_next(), Some((3, &3)));
    }

    #[test]
    fn take_all_returns_the_unsettled_in_order_and_settles_them() {
        let mut w = SendState::new(4, 100);
        for c in ["a", "b", "c", "d"] {
            w.push(c, 1).expect("room");
        }
        w.on_ack(&ack(0, &[(2, 2)]));
        assert_eq!(w.take_all(), vec!["a", "c", "d"]);
        assert!(w.is_empty() && w.bytes() == 0);
        assert!(w.is_settled(1) && w.is_settled(4));
        assert_eq!(w.peek_next(), None, "nothing left to write");
        assert_eq!(w.push("e", 1), Ok(5), "numbering continues");
    }

    #[test]
    fn the_receiver_filters_duplicates_and_reports_settled_ranges_once() {
        let mut r = RecvState::new();
        assert!(r.on_peer_instance(77));
        assert!(!r.accept(0));
        for s in 1..=5 {
            assert!(r.accept(s));
        }
        assert!(!r.accept(5) && !r.accept(2), "duplicates");
        assert!(!r.settle(6), "not received");
        assert!(r.settle(2) && r.settle(3) && r.settle(5));
        assert!(!r.settle(3), "already settled");
        assert_eq!(r.take_ack(), Some(ack(0, &[(2, 3), (5, 5)])));
        assert_eq!(r.take_ack(), None, "nothing new");
        assert!(r.settle(1));
        assert_eq!(
            r.take_ack(),
            Some(ack(3, &[])),
            "the floor moved over 1..=3"
        );
        assert_eq!(r.unsettled(), 1);
        assert!(r.settle(4));
        assert_eq!(r.settled_through(), 5);
        assert_eq!(r.take_ack(), Some(ack(5, &[])));
        assert_eq!(
            r.current_ack(),
            ack(5, &[]),
            "a keepalive repeats the floor"
        );
    }

    #[test]
    fn numbers_skipped_by_the_sender_count_as_settled() {
        let mut r = RecvState::new();
        r.on_peer_instance(1);
        assert!(r.accept(1) && r.settle(1));
        // 2..=4 were taken back by the sender; 5 is the next one it had.
        assert!(r.accept(5));
        assert!(r.settle(5));
        assert_eq!(r.settled_through(), 5);
        assert_eq!(r.unsettled(), 0);
    }

    #[test]
    fn a_new_peer_instance_starts_over_and_the_hello_reports_everything() {
        let mut r = RecvState::new();
        r.on_peer_instance(1);
        for s in 1..=4 {
            r.accept(s);
        }
        r.settle(2);
        r.settle(4);
        let (instance, received, settled) = r.hello_position();
        assert_eq!((instance, received), (1, 4));
        assert_eq!(settled, ack(0, &[(2, 2), (4, 4)]));
        assert_eq!(r.take_ack(), None, "the hello reported it");
        assert!(!r.on_peer_instance(1));
        assert!(r.on_peer_instance(2));
        assert_eq!((r.last_received(), r.settled_through()), (0, 0));
        assert!(r.accept(1));
    }

    #[test]
    fn a_hello_carries_at_most_max_ack_ranges_and_the_rest_follows() {
        let mut r = RecvState::new();
        r.on_peer_instance(1);
        let n = MAX_ACK_RANGES as u64 + 10;
        for s in 1..=2 * n {
            r.accept(s);
        }
        for s in (2..=2 * n).step_by(2) {
            r.settle(s);
        }
        let (_, _, first) = r.hello_position();
        assert_eq!(first.ranges.len(), MAX_ACK_RANGES);
        let rest = r.take_ack().expect("the remainder");
        assert_eq!(rest.ranges.len(), 10);
        let mut w: SendState<u64> = SendState::new(4 * n as usize, usize::MAX);
        for s in 1..=2 * n {
            w.push(s, 1).expect("room");
        }
        w.on_ack(&first);
        w.on_ack(&rest);
        assert_eq!(w.len() as u64, n, "every even one was freed");
    }

    #[test]
    fn a_stalled_destination_keeps_only_its_own_slots() {
        // Ten stanzas for a stalled partner, then a steady flow for others: with selective
        // acknowledgements the flow goes on through a window of 16.
        let mut w: SendState<u64> = SendState::new(16, 1 << 20);
        let mut r = RecvState::new();
        r.on_peer_instance(1);
        for i in 0..10u64 {
            let seq = w.push(i, 100).expect("room");
            assert!(r.accept(seq));
        }
        for i in 10..1000u64 {
            let seq = w.push(i, 100).expect("the stall must not fill the window");
            assert!(r.accept(seq));
            assert!(r.settle(seq));
            if let Some(a) = r.take_ack() {
                w.on_ack(&a);
            }
        }
        assert_eq!(w.len(), 10);
        assert_eq!(r.unsettled(), 10);
    }
}
