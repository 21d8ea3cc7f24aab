//! Stanzas from the edge onto the node queues, with backpressure per pair instead of bounces.
//!
//! A stanza from the tunnel goes on its pair's s2s queue at once when there is room. When the
//! queue is full (the node reads slower than the partner writes), the stanza waits in a
//! backlog of its pair, in order behind the others of that pair, and stays unsettled on the
//! tunnel: the edge then holds back that destination's sender (the partner's stream pauses)
//! once the destination has its share of the window, while other destinations flow. The
//! queue's age limit bounds the wait: a stalled node's oldest stanzas bounce
//! (`remote-server-timeout`) and make room. Before this, a burst larger than the queue was
//! bounced `resource-constraint` although the node was only slower, not stalled.
//!
//! Each backlog is a task that ends when its pair has caught up; the pump drops backlogs that
//! are empty, so their number follows the pairs that are behind, not every pair ever seen.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use causeway_s2s::{OutboundStanza, S2s};
use causeway_tunnel::Settle;
use tokio::sync::mpsc;

/// Pairs tracked before the pump forgets the backlogs that caught up.
const SWEEP_ABOVE: usize = 64;

/// One pair's stanzas that found its queue full, in order; the task that feeds them to the
/// queue as room is made.
struct Backlog {
    tx: mpsc::UnboundedSender<(OutboundStanza, Settle)>,
    /// Handed to the task and not yet queued.
    pending: Arc<AtomicUsize>,
}

impl Backlog {
    fn start(s2s: Arc<S2s>) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<(OutboundStanza, Settle)>();
        let pending = Arc::new(AtomicUsize::new(0));
        let left = pending.clone();
        tokio::spawn(async move {
            while let Some((stanza, settle)) = rx.recv().await {
                s2s.send_waiting(stanza).await;
                // Queued (or answered): the edge may free its slot.
                drop(settle);
                left.fetch_sub(1, Ordering::AcqRel);
                s2s.counters.held_for_room.fetch_sub(1, Ordering::Relaxed);
            }
        });
        Self { tx, pending }
    }

    fn is_empty(&self) -> bool {
        self.pending.load(Ordering::Acquire) == 0
    }
}

/// The pairs that are behind. Only the pump (one task) pushes, so "empty" seen by the pump
/// means everything it handed over is on the queue: a stanza sent directly after that keeps
/// its pair's order.
pub struct Backlogs {
    s2s: Arc<S2s>,
    pairs: HashMap<(String, String), Backlog>,
}

impl Backlogs {
    /// Backlogs feeding `s2s` (counted in its `held_for_room` gauge).
    pub fn new(s2s: Arc<S2s>) -> Self {
        Self {
            s2s,
            pairs: HashMap::new(),
        }
    }

    /// Queue `stanza` for its node, or hold it (unsettled) behind its pair's backlog.
    pub async fn send(&mut self, stanza: OutboundStanza, settle: Settle) {
        if let Some(pair) = self.behind(&stanza) {
            return self.append(&pair, stanza, settle).await;
        }
        // Queued at once: `settle` drops on return, settling the stanza.
        let Err(back) = self.s2s.try_send(stanza).await else {
            return;
        };
        self.hold(back, settle).await;
    }

    /// The pair of `stanza` if it has stanzas waiting (they go first); a backlog that caught
    /// up is forgotten. The common case, no pair behind, builds no key.
    fn behind(&mut self, stanza: &OutboundStanza) -> Option<(String, String)> {
        if self.pairs.is_empty() {
            return None;
        }
        let pair = (stanza.from_domain.clone(), stanza.to_domain.clone());
        match self.pairs.get(&pair) {
            Some(backlog) if !backlog.is_empty() => Some(pair),
            Some(_) => {
                self.pairs.remove(&pair);
                None
            }
            None => None,
        }
    }

    /// Start a backlog for the pair of `stanza`, which found its queue full, with it.
    async fn hold(&mut self, stanza: OutboundStanza, settle: Settle) {
        if self.pairs.len() >= SWEEP_ABOVE {
            self.pairs.retain(|_, b| !b.is_empty());
        }
        let pair = (stanza.from_domain.clone(), stanza.to_domain.clone());
        self.pairs
            .insert(pair.clone(), Backlog::start(self.s2s.clone()));
        self.append(&pair, stanza, settle).await;
    }

    /// Put `stanza` at the end of its pair's backlog.
    async fn append(&mut self, pair: &(String, String), stanza: OutboundStanza, settle: Settle) {
        let Some(backlog) = self.pairs.get(pair) else {
            return;
        };
        backlog.pending.fetch_add(1, Ordering::AcqRel);
        self.s2s
            .counters
            .held_for_room
            .fetch_add(1, Ordering::Relaxed);
        if let Err(mpsc::error::SendError((stanza, settle))) = backlog.tx.send((stanza, settle)) {
            // The task is gone (the runtime is shutting down): send as usual.
            backlog.pending.fetch_sub(1, Ordering::AcqRel);
            self.s2s
                .counters
                .held_for_room
                .fetch_sub(1, Ordering::Relaxed);
            self.s2s.send(stanza).await;
            drop(settle);
        }
    }
}
