//! The outgoing queue of one (local domain, remote domain) pair.
//!
//! Each pair has its own queue, so a partner that stalls (tarpits its connection, stops
//! reading, is unreachable) fills only its own: [`crate::S2s::send`] never waits for room, it
//! pushes or gets the stanza back at once. A queue is bounded three ways - stanzas, bytes, and
//! age - and the bytes of every queue together are bounded by a budget shared by the process
//! ([`QueueLimits::total_bytes`]), so a thousand stalled partners cannot take the memory a
//! thousand full queues would.
//!
//! The queue is pure bookkeeping: time is passed in, nothing here sleeps or does I/O. The
//! session task (outbound.rs) takes batches to write, takes what has aged out to bounce it, and
//! closes the queue when it ends; a closed queue refuses pushes so the sender opens a new
//! session instead of queueing on a task that is gone.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use crate::OutboundStanza;

/// Bounds on the outgoing queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// Stanzas one pair's queue holds.
    pub stanzas: usize,
    /// Bytes one pair's queue holds (payload bytes).
    pub bytes: usize,
    /// Bytes all queues of the process hold together.
    pub total_bytes: usize,
    /// A stanza still queued this long after it was queued is bounced with
    /// `remote-server-timeout`.
    pub max_age: Duration,
}

impl Default for QueueLimits {
    fn default() -> Self {
        // Room for a burst such as a user's presence to a thousand contacts at one partner
        // (ejabberd's s2s queue holds some thousands too); the age limit and the shared budget
        // bound what a stalled partner can hold.
        Self {
            stanzas: 10_000,
            bytes: 16 * 1024 * 1024,
            total_bytes: 256 * 1024 * 1024,
            max_age: Duration::from_secs(30),
        }
    }
}

/// Why a stanza was not queued; the stanza comes back with it.
#[derive(Debug)]
pub(crate) enum PushError {
    /// The pair's queue (or the process's budget) is full: bounce it.
    Full(OutboundStanza),
    /// The session task has ended: open a new session and push there.
    Closed(OutboundStanza),
}

#[derive(Default)]
struct Inner {
    items: VecDeque<(OutboundStanza, Instant)>,
    bytes: usize,
    closed: bool,
}

/// One pair's queue; shared by the senders and the session task.
pub(crate) struct PairQueue {
    inner: Mutex<Inner>,
    limits: QueueLimits,
    /// Bytes queued over every queue of the process.
    total: Arc<AtomicUsize>,
    /// Woken on every push.
    pushed: tokio::sync::Notify,
    /// Woken whenever stanzas leave the queue (for senders that wait for room).
    room: tokio::sync::Notify,
}

impl PairQueue {
    pub(crate) fn new(limits: QueueLimits, total: Arc<AtomicUsize>) -> Self {
        Self {
            inner: Mutex::default(),
            limits,
            total,
            pushed: tokio::sync::Notify::new(),
            room: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Queue `st` (queued at `now`), or give it back.
    pub(crate) fn push(&self, st: OutboundStanza, now: Instant) -> Result<(), PushError> {
        let mut inner = self.lock();
        if inner.closed {
            return Err(PushError::Closed(st));
        }
        let size = st.payload.len();
        if inner.items.len() >= self.limits.stanzas || inner.bytes + size > self.limits.bytes {
            return Err(PushError::Full(st));
        }
        let before = self.total.fetch_add(size, Ordering::Relaxed);
        if before + size > self.limits.total_bytes {
            self.total.fetch_sub(size, Ordering::Relaxed);
            return Err(PushError::Full(st));
        }
        inner.bytes += size;
        inner.items.push_back((st, now));
        drop(inner);
        self.pushed.notify_one();
        Ok(())
    }

    /// Resolves after a push (at once if one happened since the last wait).
    pub(crate) async fn pushed(&self) {
        self.pushed.notified().await;
    }

    fn pop_front(&self, inner: &mut Inner) -> Option<(OutboundStanza, Instant)> {
        let item = inner.items.pop_front()?;
        let size = item.0.payload.len();
        inner.bytes -= size;
        self.total.fetch_sub(size, Ordering::Relaxed);
        self.room.notify_waiters();
        Some(item)
    }

    /// Push `st`, waiting while the queue is full instead of giving it back (for a sender that
    /// wants backpressure: a test's load generator). A closed queue still gives it back, and so
    /// does a full one that is empty (the stanza can never fit, or other queues hold the
    /// shared budget).
    pub(crate) async fn push_waiting(&self, st: OutboundStanza) -> Result<(), PushError> {
        let mut st = st;
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            // Registered before the attempt, so room made in between is not missed.
            room.as_mut().enable();
            match self.push(st, Instant::now()) {
                Err(PushError::Full(back))
                    if !self.is_closed() && !self.lock().items.is_empty() =>
                {
                    st = back;
                    room.await;
                }
                other => return other,
            }
        }
    }

    /// Stanzas from the front, in order, up to about `max_bytes` (at least one if any is
    /// queued), with the instants they were queued at.
    pub(crate) fn take_batch(&self, max_bytes: usize) -> Vec<(OutboundStanza, Instant)> {
        let mut inner = self.lock();
        let mut batch = Vec::new();
        let mut bytes = 0;
        while bytes < max_bytes.max(1) {
            let Some(item) = self.pop_front(&mut inner) else {
                break;
            };
            bytes += item.0.payload.len();
            batch.push(item);
        }
        batch
    }

    /// Put a batch that could not be written back at the front, in order, keeping the
    /// instants it was queued at. Bounds are not checked again: it was admitted once.
    pub(crate) fn unshift(&self, batch: Vec<(OutboundStanza, Instant)>) {
        let mut inner = self.lock();
        for item in batch.into_iter().rev() {
            let size = item.0.payload.len();
            inner.bytes += size;
            self.total.fetch_add(size, Ordering::Relaxed);
            inner.items.push_front(item);
        }
    }

    /// The stanzas queued longer than the age limit at `now` (queued in order, so they are at
    /// the front).
    pub(crate) fn take_expired(&self, now: Instant) -> Vec<OutboundStanza> {
        let mut inner = self.lock();
        let mut out = Vec::new();
        while inner
            .items
            .front()
            .is_some_and(|(_, at)| *at + self.limits.max_age <= now)
        {
            if let Some((st, _)) = self.pop_front(&mut inner) {
                out.push(st);
            }
        }
        out
    }

    /// When the oldest stanza ages out, if any is queued.
    pub(crate) fn next_expiry(&self) -> Option<Instant> {
        self.lock()
            .items
            .front()
            .map(|(_, at)| *at + self.limits.max_age)
    }

    /// Close the queue if it is empty (atomically with pushes: a push either lands before and
    /// keeps it open, or after and is refused). Returns whether it closed.
    pub(crate) fn close_if_empty(&self) -> bool {
        let mut inner = self.lock();
        if inner.items.is_empty() {
            inner.closed = true;
        }
        inner.closed
    }

    /// Close the queue and take everything in it.
    pub(crate) fn close_and_drain(&self) -> Vec<OutboundStanza> {
        let mut inner = self.lock();
        inner.closed = true;
        // Waiting senders see the queue closed.
        self.room.notify_waiters();
        let mut out = Vec::with_capacity(inner.items.len());
        while let Some((st, _)) = self.pop_front(&mut inner) {
            out.push(st);
        }
        out
    }

    /// Has the session task ended?
    pub(crate) fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Stanzas queued.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().items.len()
    }
}

impl Drop for PairQueue {
    fn drop(&mut self) {
        // Whatever is left no longer counts against the shared budget.
        let inner = match self.inner.get_mut() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        self.total.fetch_sub(inner.bytes, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stanza(n: usize, size: usize) -> OutboundStanza {
        let mut payload = format!("<message id='{n}'/>").into_bytes();
        payload.resize(size.max(payload.len()), b' ');
        OutboundStanza {
            from_domain: "example.com".into(),
            to_domain: "partner.example".into(),
            payload: payload.into(),
        }
    }

    fn id(st: &OutboundStanza) -> String {
        let s = String::from_utf8_lossy(&st.payload);
        s.split('\'').nth(1).unwrap_or_default().to_owned()
    }

    fn limits(stanzas: usize, bytes: usize, total_bytes: usize) -> QueueLimits {
        QueueLimits {
            stanzas,
            bytes,
            total_bytes,
            max_age: Duration::from_secs(30),
        }
    }

    #[test]
    fn full_by_count_and_by_bytes_gives_the_stanza_back() {
        let total = Arc::new(AtomicUsize::new(0));
        let t0 = Instant::now();
        let q = PairQueue::new(limits(2, 1000, 1 << 20), total.clone());
        q.push(stanza(1, 100), t0).expect("room");
        q.push(stanza(2, 100), t0).expect("room");
        match q.push(stanza(3, 100), t0) {
            Err(PushError::Full(st)) => assert_eq!(id(&st), "3"),
            other => panic!("expected Full, got {other:?}"),
        }
        let q = PairQueue::new(limits(100, 1000, 1 << 20), total.clone());
        q.push(stanza(1, 600), t0).expect("room");
        assert!(matches!(
            q.push(stanza(2, 500), t0),
            Err(PushError::Full(_))
        ));
        q.push(stanza(3, 400), t0)
            .expect("exactly at the byte limit");
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn the_shared_budget_bounds_every_queue_together_and_is_given_back() {
        let total = Arc::new(AtomicUsize::new(0));
        let t0 = Instant::now();
        let a = PairQueue::new(limits(100, 1500, 1500), total.clone());
        let b = PairQueue::new(limits(100, 1500, 1500), total.clone());
        a.push(stanza(1, 1000), t0).expect("room");
        assert!(matches!(
            b.push(stanza(2, 600), t0),
            Err(PushError::Full(_))
        ));
        b.push(stanza(3, 500), t0).expect("within the budget");
        assert_eq!(total.load(Ordering::Relaxed), 1500);
        assert_eq!(a.take_batch(10).len(), 1);
        assert_eq!(total.load(Ordering::Relaxed), 500);
        b.push(stanza(4, 900), t0)
            .expect("a's bytes were given back");
        drop(b);
        assert_eq!(
            total.load(Ordering::Relaxed),
            0,
            "dropping a queue frees its share"
        );
    }

    #[test]
    fn batches_keep_order_and_unshift_puts_them_back_in_front() {
        let total = Arc::new(AtomicUsize::new(0));
        let t0 = Instant::now();
        let q = PairQueue::new(limits(100, 100_000, 1 << 20), total.clone());
        for n in 0..5 {
            q.push(stanza(n, 100), t0 + Duration::from_secs(n as u64))
                .expect("room");
        }
        let batch = q.take_batch(250);
        assert_eq!(
            batch.iter().map(|(s, _)| id(s)).collect::<Vec<_>>(),
            ["0", "1", "2"]
        );
        assert_eq!(q.take_batch(0).len(), 1, "at least one stanza per batch");
        q.unshift(batch);
        assert_eq!(
            q.next_expiry(),
            Some(t0 + Duration::from_secs(30)),
            "the original queueing time is kept"
        );
        let rest = q.take_batch(usize::MAX);
        assert_eq!(
            rest.iter().map(|(s, _)| id(s)).collect::<Vec<_>>(),
            ["0", "1", "2", "4"]
        );
        assert_eq!(total.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn stanzas_age_out_in_order_at_their_deadline() {
        let total = Arc::new(AtomicUsize::new(0));
        let t0 = Instant::now();
        let q = PairQueue::new(limits(100, 100_000, 1 << 20), total);
        q.push(stanza(1, 10), t0).expect("room");
        q.push(stanza(2, 10), t0 + Duration::from_secs(10))
            .expect("room");
        assert_eq!(q.next_expiry(), Some(t0 + Duration::from_secs(30)));
        assert!(q
            .take_expired(t0 + Duration::from_millis(29_999))
            .is_empty());
        let gone = q.take_expired(t0 + Duration::from_secs(30));
        assert_eq!(gone.iter().map(id).collect::<Vec<_>>(), ["1"]);
        assert_eq!(q.next_expiry(), Some(t0 + Duration::from_secs(40)));
        assert_eq!(q.take_expired(t0 + Duration::from_secs(100)).len(), 1);
        assert_eq!(q.next_expiry(), None);
    }

    #[test]
    fn a_closed_queue_refuses_pushes_and_closing_is_atomic_with_them() {
        let total = Arc::new(AtomicUsize::new(0));
        let t0 = Instant::now();
        let q = PairQueue::new(limits(100, 100_000, 1 << 20), total.clone());
        q.push(stanza(1, 10), t0).expect("room");
        assert!(!q.close_if_empty(), "not empty: stays open");
        assert!(!q.is_closed());
        let left = q.close_and_drain();
        assert_eq!(left.len(), 1);
        assert!(q.is_closed());
        match q.push(stanza(2, 10), t0) {
            Err(PushError::Closed(st)) => assert_eq!(id(&st), "2"),
            other => panic!("expected Closed, got {other:?}"),
        }
        let empty = PairQueue::new(limits(100, 100_000, 1 << 20), total.clone());
        assert!(empty.close_if_empty());
        assert!(matches!(
            empty.push(stanza(3, 10), t0),
            Err(PushError::Closed(_))
        ));
        assert_eq!(total.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_waiting_push_goes_in_once_room_is_made() {
        let q = Arc::new(PairQueue::new(
            limits(1, 1 << 20, 1 << 20),
            Arc::new(AtomicUsize::new(0)),
        ));
        q.push(stanza(1, 10), Instant::now()).expect("room");
        let waiter = {
            let q = q.clone();
            tokio::spawn(async move { q.push_waiting(stanza(2, 10)).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "full: the sender waits");
        assert_eq!(q.take_batch(usize::MAX).len(), 1);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("task")
            .expect("pushed");
        assert_eq!(id(&q.take_batch(usize::MAX)[0].0), "2");
    }

    #[tokio::test]
    async fn a_push_wakes_the_waiting_task_even_if_it_was_not_yet_waiting() {
        let q = PairQueue::new(QueueLimits::default(), Arc::new(AtomicUsize::new(0)));
        q.push(stanza(1, 10), Instant::now()).expect("room");
        tokio::time::timeout(Duration::from_secs(5), q.pushed())
            .await
            .expect("the permit was stored");
    }
}
