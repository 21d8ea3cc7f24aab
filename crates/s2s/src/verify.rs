//! Dialback verification as receiving server (XEP-0220 section 2.3): ask the originating
//! domain's authoritative server whether a key it sent us is genuine.
//!
//! Every `<db:result/>` a peer sends makes us resolve a domain it names and connect to what DNS
//! says, so verification is bounded and says little:
//! * at most [`S2sConfig::max_verifications`] run at once, and
//!   [`S2sConfig::max_verifications_per_domain`] for one remote domain; over a cap the verdict
//!   is [`Verdict::Failed`] at once, without any network traffic ([`InFlight`]);
//! * a verification that fails reports its verdict no earlier than [`failure_floor`] after it
//!   started, so a refused port and a filtered one (or an address the outbound filter refused)
//!   look alike to whoever asked. Valid and invalid answers from the authoritative server are
//!   reported at once.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use causeway_xmpp::negotiation::outbound::Purpose;
use tracing::warn;

use crate::negotiate::Negotiated;
use crate::{S2s, S2sConfig, LOG_MODULE};

pub use causeway_xmpp::negotiation::Verdict;

/// The earliest a failed verification reports, counted from its start: the per-address connect
/// timeout, the time an address that drops our SYNs takes to fail.
pub fn failure_floor(cfg: &S2sConfig) -> Duration {
    cfg.connect_timeout
}

/// Which cap refused a verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cap {
    /// [`S2sConfig::max_verifications`].
    Overall,
    /// [`S2sConfig::max_verifications_per_domain`].
    PerDomain,
}

impl Cap {
    fn as_str(self) -> &'static str {
        match self {
            Cap::Overall => "max_verifications",
            Cap::PerDomain => "max_verifications_per_domain",
        }
    }
}

/// Verifications running, overall and per remote domain. Pure bookkeeping: [`InFlight::take`]
/// before a verification starts, [`InFlight::give_back`] once it no longer uses the network.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    total: usize,
    per_domain: HashMap<String, usize>,
}

impl InFlight {
    /// Count one more verification for `domain`, unless a cap is reached.
    pub(crate) fn take(
        &mut self,
        domain: &str,
        max_total: usize,
        max_per_domain: usize,
    ) -> Result<(), Cap> {
        if self.total >= max_total {
            return Err(Cap::Overall);
        }
        let n = self.per_domain.get(domain).copied().unwrap_or(0);
        if n >= max_per_domain {
            return Err(Cap::PerDomain);
        }
        self.per_domain.insert(domain.to_owned(), n + 1);
        self.total += 1;
        Ok(())
    }

    /// One verification for `domain` ended.
    pub(crate) fn give_back(&mut self, domain: &str) {
        if let Some(n) = self.per_domain.get_mut(domain) {
            *n -= 1;
            if *n == 0 {
                self.per_domain.remove(domain);
            }
            self.total = self.total.saturating_sub(1);
        }
    }

    /// Verifications running (overall, for `domain`).
    #[cfg(test)]
    pub(crate) fn running(&self, domain: &str) -> (usize, usize) {
        (
            self.total,
            self.per_domain.get(domain).copied().unwrap_or(0),
        )
    }
}

/// A verification's place in [`S2s::verifications`], given back when dropped.
struct Slot<'a> {
    s2s: &'a S2s,
    domain: &'a str,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut in_flight = self
            .s2s
            .verifications
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        in_flight.give_back(self.domain);
    }
}

impl S2s {
    /// Verify `key`, received on our stream `stream_id` from `remote` for `local`, by opening a
    /// connection to `remote`'s servers and sending `<db:verify/>` (see the module notes for
    /// the caps and the failure floor). Both domains are normalised already (the inbound
    /// stream ran them through [`causeway_xmpp::addr::normalize_domain`]), so the per-domain
    /// cap counts one domain however the peer spells it.
    pub async fn verify_key(
        &self,
        local: &str,
        remote: &str,
        stream_id: &str,
        key: &str,
    ) -> Verdict {
        let started = tokio::time::Instant::now();
        let cfg = self.cfg();
        let verdict = match self.verification_slot(remote, &cfg) {
            Ok(slot) => {
                // Bounded by the negotiation's authentication deadline.
                let verdict = self.verify_inner(local, remote, stream_id, key).await;
                drop(slot);
                if matches!(verdict, Verdict::Failed(_)) {
                    tokio::time::sleep_until(started + failure_floor(&cfg)).await;
                }
                verdict
            }
            Err(cap) => {
                warn!(module = LOG_MODULE, direction = "incoming", remote = %remote, local = %local, cap = cap.as_str(), "dialback verification refused: too many running");
                self.counters
                    .verifications_refused
                    .fetch_add(1, Ordering::Relaxed);
                Verdict::Failed("too many verifications".into())
            }
        };
        if verdict != Verdict::Valid {
            self.counters
                .dialback_failures
                .fetch_add(1, Ordering::Relaxed);
        }
        verdict
    }

    /// A place among the running verifications for `remote`, if the caps allow.
    fn verification_slot<'a>(&'a self, remote: &'a str, cfg: &S2sConfig) -> Result<Slot<'a>, Cap> {
        let mut in_flight = self
            .verifications
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        in_flight.take(
            remote,
            cfg.max_verifications,
            cfg.max_verifications_per_domain,
        )?;
        Ok(Slot {
            s2s: self,
            domain: remote,
        })
    }

    /// Open a verification connection to `remote` and ask about `key` (see
    /// [`causeway_xmpp::negotiation::outbound`]).
    async fn verify_inner(&self, local: &str, remote: &str, stream_id: &str, key: &str) -> Verdict {
        let purpose = Purpose::Verify {
            stream_id: stream_id.to_owned(),
            key: key.to_owned(),
        };
        match self.negotiate(local, remote, purpose).await {
            Ok(Negotiated::Verified(verdict)) => verdict,
            Ok(Negotiated::Authenticated(..)) => {
                Verdict::Failed("a verification ended in a session".into())
            }
            Err(e) => Verdict::Failed(e.reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    use std::time::Instant;

    use super::*;
    use crate::testing::{config, TestHost};
    use crate::Target;
    use causeway_xmpp::dialback;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn caps_count_overall_and_per_domain() {
        let mut f = InFlight::default();
        assert_eq!(f.take("a.test", 3, 2), Ok(()));
        assert_eq!(f.take("a.test", 3, 2), Ok(()));
        assert_eq!(f.take("a.test", 3, 2), Err(Cap::PerDomain));
        assert_eq!(f.take("b.test", 3, 2), Ok(()));
        assert_eq!(f.take("c.test", 3, 2), Err(Cap::Overall));
        assert_eq!(f.running("a.test"), (3, 2));
        f.give_back("a.test");
        assert_eq!(f.take("c.test", 3, 2), Ok(()));
        for d in ["a.test", "b.test", "c.test"] {
            f.give_back(d);
        }
        assert_eq!(f.running("a.test"), (0, 0));
        assert!(f.per_domain.is_empty());
        // Giving back what was never taken changes nothing.
        f.give_back("z.test");
        assert_eq!(f.running("z.test"), (0, 0));
    }

    /// A listener that accepts connections, counts them and never says a word.
    async fn mute_server() -> (SocketAddr, Arc<AtomicUsize>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let count = Arc::new(AtomicUsize::new(0));
        let seen = count.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                seen.fetch_add(1, Ordering::SeqCst);
                held.push(s);
            }
        });
        (addr, count)
    }

    async fn wait_for(count: &AtomicUsize, n: usize) {
        let deadline = Instant::now() + ms(5_000);
        while count.load(Ordering::SeqCst) < n {
            assert!(Instant::now() < deadline, "never reached {n} connections");
            tokio::time::sleep(ms(10)).await;
        }
    }

    #[tokio::test]
    async fn over_a_cap_verification_fails_at_once_without_traffic() {
        let (mute, connections) = mute_server().await;
        let host = TestHost::serving(&["local.test"]);
        for d in ["a.test", "b.test", "c.test"] {
            host.route(d, vec![Target::configured(mute)]);
        }
        let s2s = S2s::new(
            config("secret-local-0001", |cfg| {
                cfg.max_verifications = 2;
                cfg.max_verifications_per_domain = 1;
                cfg.deadlines.authentication = ms(1_500);
                cfg.connect_timeout = ms(200);
            }),
            host,
        );
        let first = tokio::spawn({
            let s2s = s2s.clone();
            async move { s2s.verify_key("local.test", "a.test", "id1", "k").await }
        });
        wait_for(&connections, 1).await;
        let started = Instant::now();
        let same_domain = s2s.verify_key("local.test", "a.test", "id2", "k").await;
        assert_eq!(
            same_domain,
            Verdict::Failed("too many verifications".into())
        );
        assert!(started.elapsed() < ms(500), "{:?}", started.elapsed());

        let second = tokio::spawn({
            let s2s = s2s.clone();
            async move { s2s.verify_key("local.test", "b.test", "id3", "k").await }
        });
        wait_for(&connections, 2).await;
        let overall = s2s.verify_key("local.test", "c.test", "id4", "k").await;
        assert_eq!(overall, Verdict::Failed("too many verifications".into()));
        tokio::time::sleep(ms(200)).await;
        assert_eq!(
            connections.load(Ordering::SeqCst),
            2,
            "a refused one connected"
        );
        assert_eq!(
            s2s.counters.verifications_refused.load(Ordering::Relaxed),
            2
        );

        // The held ones time out and give their places back.
        for held in [first, second] {
            let verdict = held.await.expect("task");
            assert!(matches!(verdict, Verdict::Failed(_)), "{verdict:?}");
        }
        assert_eq!(
            s2s.verifications.lock().expect("lock").running("a.test"),
            (0, 0)
        );
        s2s.verify_key("local.test", "c.test", "id5", "k").await;
        assert_eq!(connections.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn failures_report_no_earlier_than_the_floor_and_answers_at_once() {
        // remote.test's authoritative server: an engine serving it, with its own secret.
        let auth_secret = "secret-remote-0001";
        let auth = S2s::new(
            config(auth_secret, |_| {}),
            TestHost::serving(&["remote.test"]),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let auth_addr = listener.local_addr().expect("addr");
        tokio::spawn(auth.serve(listener, std::future::pending()));
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        let host = TestHost::serving(&["local.test"]);
        host.route("remote.test", vec![Target::configured(auth_addr)]);
        host.route("closed.test", vec![Target::configured(closed)]);
        let floor = ms(800);
        let s2s = S2s::new(
            config("secret-local-0001", |cfg| cfg.connect_timeout = floor),
            host,
        );

        let started = Instant::now();
        let verdict = s2s
            .verify_key("local.test", "closed.test", "id1", "k")
            .await;
        assert!(matches!(verdict, Verdict::Failed(_)), "{verdict:?}");
        assert!(started.elapsed() >= floor, "{:?}", started.elapsed());

        let key = dialback::dialback_key(auth_secret, "local.test", "remote.test", "id2");
        let started = Instant::now();
        let verdict = s2s
            .verify_key("local.test", "remote.test", "id2", &key)
            .await;
        assert_eq!(verdict, Verdict::Valid);
        assert!(started.elapsed() < floor, "{:?}", started.elapsed());

        let started = Instant::now();
        let verdict = s2s
            .verify_key("local.test", "remote.test", "id3", &"0".repeat(64))
            .await;
        assert_eq!(verdict, Verdict::Invalid);
        assert!(started.elapsed() < floor, "{:?}", started.elapsed());
    }
}
