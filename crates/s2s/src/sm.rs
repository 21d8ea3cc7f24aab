//! XEP-0198 stream management on inbound streams, the receiving side: count the stanzas the
//! peer sent since `<enable/>` and answer its `<r/>` with `<a h='…'/>`, where `h` counts only
//! stanzas that are safe (see [`crate::Host::deliver_tracked`]). A peer that keeps unacknowledged
//! stanzas (Prosody) can then resend them on another connection when this process dies, instead
//! of losing what it wrote into a dead socket.
//!
//! No resumption: XEP-0198 resumption is not defined for s2s and Prosody does not offer it.

use futures::stream::{FuturesOrdered, StreamExt};
use tokio::time::{Duration, Instant};

use crate::{BoxFuture, Handled};

/// How long an `<r/>` may wait for stanzas to become safe before it is answered with what is
/// safe so far (a lower `h` is always correct; the peer asks again).
pub(crate) const ANSWER_WITHIN: Duration = Duration::from_secs(2);

/// Inbound stream-management state of one stream.
pub(crate) struct InboundSm {
    /// Stanzas received since `<enable/>` (mod 2^32, as the XEP counts).
    handled: u32,
    /// Every stanza up to this count is safe.
    safe: u32,
    /// Stanzas not yet safe, in arrival order, each resolving to its count.
    waiting: FuturesOrdered<BoxFuture<'static, u32>>,
    /// An `<r/>` is unanswered; answer it by then at the latest.
    asked: Option<Instant>,
}

impl InboundSm {
    pub(crate) fn new() -> Self {
        Self {
            handled: 0,
            safe: 0,
            waiting: FuturesOrdered::new(),
            asked: None,
        }
    }

    /// Counts one received stanza; `handled` says when it is safe (`None`: already).
    pub(crate) fn stanza(&mut self, handled: Option<Handled>) {
        self.handled = self.handled.wrapping_add(1);
        let h = self.handled;
        match handled {
            None if self.waiting.is_empty() => self.safe = h,
            None => self.waiting.push_back(Box::pin(std::future::ready(h))),
            Some(f) => self.waiting.push_back(Box::pin(async move {
                f.await;
                h
            })),
        }
    }

    /// The peer sent `<r/>` at `now`: the `h` to answer with now, or `None` to answer later
    /// (when what arrived before is safe, or at [`InboundSm::deadline`]).
    pub(crate) fn request(&mut self, now: Instant) -> Option<u32> {
        if self.waiting.is_empty() {
            self.asked = None;
            return Some(self.safe);
        }
        self.asked.get_or_insert(now + ANSWER_WITHIN);
        None
    }

    /// Records that every stanza up to `h` is safe; returns the `h` to answer with if an `<r/>`
    /// is waiting and nothing older is still unsafe.
    pub(crate) fn became_safe(&mut self, h: u32) -> Option<u32> {
        self.safe = h;
        if self.asked.is_some() && self.waiting.is_empty() {
            self.asked = None;
            return Some(h);
        }
        None
    }

    /// When an unanswered `<r/>` must be answered.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.asked
    }

    /// The deadline passed: answer with what is safe so far.
    pub(crate) fn expire(&mut self) -> u32 {
        self.asked = None;
        self.safe
    }

    /// Stanzas received since `<enable/>`.
    pub(crate) fn handled(&self) -> u32 {
        self.handled
    }
}

/// Resolves with the count of the next stanza that became safe; never, without stream
/// management or with nothing waiting.
pub(crate) async fn next_safe(sm: &mut Option<InboundSm>) -> u32 {
    match sm {
        Some(sm) if !sm.waiting.is_empty() => match sm.waiting.next().await {
            Some(h) => h,
            None => std::future::pending().await,
        },
        _ => std::future::pending().await,
    }
}

/// Sleeps until `deadline`, or forever without one.
pub(crate) async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;

    fn gate() -> (oneshot::Sender<()>, Handled) {
        let (tx, rx) = oneshot::channel::<()>();
        (
            tx,
            Box::pin(async move {
                let _ = rx.await;
            }),
        )
    }

    #[tokio::test]
    async fn stanzas_safe_at_once_are_acknowledged_at_once() {
        let mut sm = InboundSm::new();
        sm.stanza(None);
        sm.stanza(None);
        assert_eq!(sm.request(Instant::now()), Some(2));
        assert_eq!(sm.deadline(), None);
        assert_eq!(sm.handled(), 2);
    }

    #[tokio::test]
    async fn an_ack_waits_for_every_earlier_stanza_in_order() {
        let mut sm = InboundSm::new();
        let (first, f1) = gate();
        let (third, f3) = gate();
        sm.stanza(Some(f1));
        sm.stanza(None);
        sm.stanza(Some(f3));
        let now = Instant::now();
        assert_eq!(sm.request(now), None, "nothing is safe yet");
        assert_eq!(sm.deadline(), Some(now + ANSWER_WITHIN));
        let mut opt = Some(sm);
        // The third becoming safe first changes nothing: acks are cumulative.
        third.send(()).expect("gate");
        let early = tokio::time::timeout(Duration::from_millis(50), next_safe(&mut opt)).await;
        assert!(early.is_err(), "a later stanza must not overtake");
        first.send(()).expect("gate");
        for want in 1..=3 {
            let h = next_safe(&mut opt).await;
            assert_eq!(h, want);
            let answer = opt.as_mut().expect("state").became_safe(h);
            assert_eq!(
                answer,
                (want == 3).then_some(3),
                "answer after stanza {want}"
            );
        }
    }

    #[tokio::test]
    async fn an_unanswered_request_is_answered_with_what_is_safe_at_the_deadline() {
        let mut sm = InboundSm::new();
        sm.stanza(None);
        let (_never, f) = gate();
        sm.stanza(Some(f));
        assert_eq!(sm.request(Instant::now()), None);
        assert_eq!(sm.expire(), 1);
        assert_eq!(sm.deadline(), None);
    }

    #[tokio::test]
    async fn counts_wrap_at_two_to_the_32() {
        let mut sm = InboundSm::new();
        sm.handled = u32::MAX;
        sm.safe = u32::MAX;
        sm.stanza(None);
        assert_eq!(sm.request(Instant::now()), Some(0));
    }

    #[tokio::test]
    async fn without_stream_management_nothing_becomes_safe() {
        let mut none: Option<InboundSm> = None;
        let r = tokio::time::timeout(Duration::from_millis(20), next_safe(&mut none)).await;
        assert!(r.is_err());
    }
}
