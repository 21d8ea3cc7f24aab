//! Inbound rate limits per authenticated remote domain (Prosody's `limits`, ejabberd's
//! shapers): a token bucket of bytes per remote domain, shared by every inbound stream that
//! authenticated that domain.
//!
//! A stream charges each element it reads after authentication to its domain's bucket. The
//! bucket may go into debt (a stanza larger than what is left is charged whole); the answer is
//! then when the debt is paid, and the stream reads nothing more until that instant. Nothing
//! is dropped or closed: TCP backpressure slows the peer down.
//!
//! Pure: no clock, no sockets. The caller passes `now`. Call order: [`Throttle::charge`] for
//! every element read on an authenticated stream, pausing reads until [`Charged::Wait`]'s
//! instant; [`Throttle::holding`] to ask whether a domain is being held back now (its answers
//! to our pings may be stuck behind what we do not read); [`Throttle::set_limit`] on reload.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A rate limit in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Bytes per second one remote domain may send, sustained (at least 1)...
    pub bytes_per_sec: u64,
    /// ...and in a burst (at least 1).
    pub burst_bytes: u64,
}

/// What a charge means for the stream that read the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charged {
    /// Read on.
    Go {
        /// A throttling episode of this domain ended with this charge (its bucket had filled up
        /// again): how long it lasted. For one log line per episode.
        episode_ended: Option<Duration>,
    },
    /// Read nothing more until `until`.
    Wait {
        /// When the domain's debt is paid.
        until: Instant,
        /// This pause starts a throttling episode of the domain (log it once).
        episode_started: bool,
    },
}

/// A domain is still "held back" this long after its debt was paid: the stream that paid it
/// reads its next element right then and usually owes again.
const HOLD_GRACE: Duration = Duration::from_secs(2);

/// Buckets full and idle are forgotten (a fresh one is the same) at most this often.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// One remote domain's bucket.
#[derive(Debug, Clone)]
struct Bucket {
    /// Bytes that may be read now; negative: debt.
    tokens: f64,
    /// When `tokens` was last brought up to date.
    refilled: Instant,
    /// While throttled: when the episode started.
    episode: Option<Instant>,
    /// The latest instant a stream of this domain was told to wait until.
    paid_at: Instant,
}

impl Bucket {
    fn refill(&mut self, limit: RateLimit, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * limit.bytes_per_sec as f64).min(burst(limit));
        self.refilled = now;
    }

    fn is_full(&self, limit: RateLimit, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens + elapsed * limit.bytes_per_sec as f64 >= burst(limit)
    }
}

fn burst(limit: RateLimit) -> f64 {
    limit.burst_bytes.max(1) as f64
}

/// The buckets of every remote domain that sent something recently.
#[derive(Debug, Default)]
pub struct Throttle {
    /// None: no limit (nothing is tracked).
    limit: Option<RateLimit>,
    domains: HashMap<String, Bucket>,
    /// When full, idle buckets were last forgotten.
    pruned: Option<Instant>,
}

impl Throttle {
    /// Buckets for `limit` (None: unlimited).
    pub fn new(limit: Option<RateLimit>) -> Self {
        Self {
            limit: limit.filter(|l| l.bytes_per_sec > 0),
            ..Self::default()
        }
    }

    /// The limit in force.
    pub fn limit(&self) -> Option<RateLimit> {
        self.limit
    }

    /// Put a new limit in force (reload). Buckets keep their tokens, capped at the new burst;
    /// without a limit they are all forgotten.
    pub fn set_limit(&mut self, limit: Option<RateLimit>) {
        self.limit = limit.filter(|l| l.bytes_per_sec > 0);
        match self.limit {
            Some(l) => {
                for b in self.domains.values_mut() {
                    b.tokens = b.tokens.min(burst(l));
                }
            }
            None => self.domains.clear(),
        }
    }

    /// `bytes` were read from `domain`'s stream at `now`: charge them.
    pub fn charge(&mut self, domain: &str, bytes: usize, now: Instant) -> Charged {
        let Some(limit) = self.limit else {
            return Charged::Go {
                episode_ended: None,
            };
        };
        self.prune(limit, now);
        let bucket = match self.domains.get_mut(domain) {
            Some(b) => b,
            None => self.domains.entry(domain.to_owned()).or_insert(Bucket {
                tokens: burst(limit),
                refilled: now,
                episode: None,
                paid_at: now,
            }),
        };
        bucket.refill(limit, now);
        // A full bucket ends an episode: the domain stayed under its rate long enough to
        // earn its whole burst back.
        let episode_ended = match bucket.episode {
            Some(started) if bucket.tokens >= burst(limit) => {
                bucket.episode = None;
                Some(now.saturating_duration_since(started))
            }
            _ => None,
        };
        bucket.tokens -= bytes as f64;
        if bucket.tokens >= 0.0 {
            return Charged::Go { episode_ended };
        }
        let debt = -bucket.tokens / limit.bytes_per_sec as f64;
        let until = now + Duration::from_secs_f64(debt);
        bucket.paid_at = bucket.paid_at.max(until);
        let episode_started = bucket.episode.is_none();
        if episode_started {
            bucket.episode = Some(now);
        }
        Charged::Wait {
            until,
            episode_started,
        }
    }

    /// Is `domain` being held back at `now` (in debt, or was a moment ago)? Its streams are
    /// not read meanwhile, so its answers to our pings may be late through no fault of its own.
    pub fn holding(&self, domain: &str, now: Instant) -> bool {
        self.domains
            .get(domain)
            .is_some_and(|b| b.episode.is_some() && now < b.paid_at + HOLD_GRACE)
    }

    /// Domains with a bucket (for tests and status).
    pub fn tracked(&self) -> usize {
        self.domains.len()
    }

    /// Forget buckets that are full again (at most every [`PRUNE_EVERY`]): the map holds only
    /// domains that sent something recently.
    fn prune(&mut self, limit: RateLimit, now: Instant) {
        if self
            .pruned
            .is_some_and(|at| now.saturating_duration_since(at) < PRUNE_EVERY)
        {
            return;
        }
        self.pruned = Some(now);
        self.domains.retain(|_, b| !b.is_full(limit, now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: RateLimit = RateLimit {
        bytes_per_sec: 1000,
        burst_bytes: 4000,
    };

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn wait_of(c: Charged, now: Instant) -> Option<Duration> {
        match c {
            Charged::Go { .. } => None,
            Charged::Wait { until, .. } => Some(until - now),
        }
    }

    #[test]
    fn the_burst_passes_then_reading_follows_the_rate() {
        let t0 = Instant::now();
        let mut t = Throttle::new(Some(LIMIT));
        for _ in 0..4 {
            assert_eq!(
                t.charge("a.test", 1000, t0),
                Charged::Go {
                    episode_ended: None
                }
            );
        }
        // The bucket is empty: 500 bytes more are half a second of debt.
        let c = t.charge("a.test", 500, t0);
        assert_eq!(
            c,
            Charged::Wait {
                until: t0 + ms(500),
                episode_started: true
            }
        );
        // The stream waits, reads the next 500 bytes, owes again; the episode goes on.
        let t1 = t0 + ms(500);
        assert_eq!(
            t.charge("a.test", 500, t1),
            Charged::Wait {
                until: t1 + ms(500),
                episode_started: false
            }
        );
        // Over ten seconds of reading as fast as allowed, about 10 * rate bytes get through.
        let mut now = t1 + ms(500);
        let end = now + Duration::from_secs(10);
        let mut read = 0u64;
        while now < end {
            read += 100;
            if let Some(w) = wait_of(t.charge("a.test", 100, now), now) {
                now += w;
            }
        }
        assert!((9_900..=10_200).contains(&read), "{read}");
    }

    #[test]
    fn a_stanza_larger_than_the_burst_is_charged_whole() {
        let t0 = Instant::now();
        let mut t = Throttle::new(Some(LIMIT));
        let c = t.charge("big.test", 10_000, t0);
        assert_eq!(wait_of(c, t0), Some(ms(6000)));
    }

    #[test]
    fn domains_have_their_own_buckets_shared_by_their_streams() {
        let t0 = Instant::now();
        let mut t = Throttle::new(Some(LIMIT));
        // Two streams of a.test share one bucket: together they owe.
        assert!(wait_of(t.charge("a.test", 3000, t0), t0).is_none());
        assert_eq!(wait_of(t.charge("a.test", 3000, t0), t0), Some(ms(2000)));
        // b.test is unaffected.
        assert!(wait_of(t.charge("b.test", 3000, t0), t0).is_none());
        assert!(t.holding("a.test", t0));
        assert!(!t.holding("b.test", t0));
    }

    #[test]
    fn an_episode_ends_when_the_bucket_filled_up_again() {
        let t0 = Instant::now();
        let mut t = Throttle::new(Some(LIMIT));
        let _ = t.charge("a.test", 5000, t0);
        // Two seconds later the debt is paid but the bucket is not full: still one episode.
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(
            t.charge("a.test", 10, t1),
            Charged::Go {
                episode_ended: None
            }
        );
        assert!(t.holding("a.test", t1), "within the grace after the debt");
        // Once it refilled (3 s more), the next charge ends the episode, once.
        let t2 = t1 + Duration::from_secs(5);
        assert!(!t.holding("a.test", t2));
        assert_eq!(
            t.charge("a.test", 10, t2),
            Charged::Go {
                episode_ended: Some(Duration::from_secs(7))
            }
        );
        assert_eq!(
            t.charge("a.test", 10, t2),
            Charged::Go {
                episode_ended: None
            }
        );
    }

    #[test]
    fn no_limit_tracks_nothing_and_a_reload_changes_the_limit() {
        let t0 = Instant::now();
        let mut t = Throttle::new(None);
        assert!(wait_of(t.charge("a.test", 1 << 30, t0), t0).is_none());
        assert_eq!(t.tracked(), 0);
        // A zero rate means no limit too.
        t.set_limit(Some(RateLimit {
            bytes_per_sec: 0,
            burst_bytes: 10,
        }));
        assert!(t.limit().is_none());
        t.set_limit(Some(LIMIT));
        assert!(wait_of(t.charge("a.test", 4000, t0), t0).is_none());
        // A smaller burst caps what a bucket holds.
        let mut u = Throttle::new(Some(LIMIT));
        u.set_limit(Some(RateLimit {
            bytes_per_sec: 1000,
            burst_bytes: 1000,
        }));
        assert_eq!(wait_of(u.charge("a.test", 2000, t0), t0), Some(ms(1000)));
        u.set_limit(None);
        assert_eq!(u.tracked(), 0);
    }

    #[test]
    fn full_idle_buckets_are_forgotten() {
        let t0 = Instant::now();
        let mut t = Throttle::new(Some(LIMIT));
        for i in 0..100 {
            let _ = t.charge(&format!("d{i}.test"), 100, t0);
        }
        assert_eq!(t.tracked(), 100);
        // A minute later they are all full again: the next charge prunes them.
        let later = t0 + PRUNE_EVERY;
        let _ = t.charge("new.test", 100, later);
        assert_eq!(t.tracked(), 1);
    }
}
