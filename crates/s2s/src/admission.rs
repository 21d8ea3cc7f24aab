//! Who may hold an inbound connection: the limits that keep one host (or one network) from
//! taking every slot, without hurting large partners.
//!
//! Unauthenticated connections are limited per *source*: an IPv4 address, or an IPv6 /64 (one
//! host usually owns a whole /64, so counting addresses would be no limit at all). A source may
//! hold a few unauthenticated connections at once and open new ones at a bounded rate (a token
//! bucket with a burst). Authenticated streams are limited per *remote domain* instead, and
//! generously: a big provider legitimately opens one stream per (its vhost, our domain) pair
//! and dialback connections besides, often from a handful of addresses, so a per-address cap
//! on authenticated streams would cut it off.
//!
//! Pure: no clock, no sockets. The caller passes `now` and keeps the returned tickets; call
//! order: [`Admission::admit`] at accept, [`Admission::authenticated`] when the connection
//! authenticates (releases its unauthenticated slot), [`Admission::release`] when it closes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Limits on inbound connections.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdmissionLimits {
    /// Unauthenticated connections one source may hold at once.
    pub unauthenticated_per_source: usize,
    /// New connections one source may open per second, sustained...
    pub connections_per_sec: f64,
    /// ...and in a burst.
    pub connection_burst: u32,
    /// Authenticated inbound streams per remote domain.
    pub streams_per_domain: usize,
}

impl Default for AdmissionLimits {
    fn default() -> Self {
        Self {
            unauthenticated_per_source: 16,
            connections_per_sec: 10.0,
            connection_burst: 32,
            streams_per_domain: 256,
        }
    }
}

/// Where a connection comes from, as the limits count it: an IPv4 address or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source(IpAddr);

impl Source {
    /// The source of a peer address (IPv4-mapped IPv6 counts as its IPv4 address).
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Source(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source(IpAddr::V4(v4)),
                None => {
                    let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                    Source(IpAddr::V6(prefix.into()))
                }
            },
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Every inbound slot (`max_inbound`, over all listeners) is taken.
    MaxInbound,
    /// The source holds too many unauthenticated connections.
    TooManyUnauthenticated,
    /// The source opens connections faster than its rate.
    RateExceeded,
    /// The remote domain has too many authenticated streams.
    TooManyStreams,
}

impl Refusal {
    /// Every refusal, in metrics label order.
    pub const ALL: [Refusal; 4] = [
        Refusal::MaxInbound,
        Refusal::TooManyUnauthenticated,
        Refusal::RateExceeded,
        Refusal::TooManyStreams,
    ];

    /// For logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::MaxInbound => "max_inbound",
            Refusal::TooManyUnauthenticated => "unauthenticated_per_source",
            Refusal::RateExceeded => "connection_rate",
            Refusal::TooManyStreams => "streams_per_domain",
        }
    }
}

/// One source's state.
#[derive(Debug, Clone)]
struct SourceState {
    unauthenticated: usize,
    tokens: f64,
    refilled: Instant,
    /// When a refusal of this source was last reported (log lines are rate-limited).
    reported: Option<Instant>,
}

/// Refusals of one source are reported (logged) at most this often.
const REPORT_EVERY: Duration = Duration::from_secs(60);

/// A refused connection: why, and whether this one should be logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// Why.
    pub why: Refusal,
    /// The first refusal of this source in [`REPORT_EVERY`]: log it (count all of them).
    pub report: bool,
}

/// The admission state of one listener set.
#[derive(Debug)]
pub struct Admission {
    limits: AdmissionLimits,
    sources: HashMap<Source, SourceState>,
    domains: HashMap<String, usize>,
}

impl Admission {
    /// No connections yet.
    pub fn new(limits: AdmissionLimits) -> Self {
        Self {
            limits,
            sources: HashMap::new(),
            domains: HashMap::new(),
        }
    }

    /// New limits (reload); connections already admitted keep their slots.
    pub fn set_limits(&mut self, limits: AdmissionLimits) {
        self.limits = limits;
    }

    /// A connection from `ip` was accepted at `now`: admit it as unauthenticated, or refuse.
    pub fn admit(&mut self, ip: IpAddr, now: Instant) -> Result<Source, Refused> {
        let source = Source::of(ip);
        let limits = self.limits;
        let state = self.sources.entry(source).or_insert(SourceState {
            unauthenticated: 0,
            tokens: f64::from(limits.connection_burst),
            refilled: now,
            reported: None,
        });
        let elapsed = now.saturating_duration_since(state.refilled).as_secs_f64();
        state.tokens = (state.tokens + elapsed * limits.connections_per_sec)
            .min(f64::from(limits.connection_burst));
        state.refilled = now;
        let why = if state.unauthenticated >= limits.unauthenticated_per_source {
            Some(Refusal::TooManyUnauthenticated)
        } else if state.tokens < 1.0 {
            Some(Refusal::RateExceeded)
        } else {
            None
        };
        if let Some(why) = why {
            let report = state
                .reported
                .is_none_or(|t| now.saturating_duration_since(t) >= REPORT_EVERY);
            if report {
                state.reported = Some(now);
            }
            return Err(Refused { why, report });
        }
        state.tokens -= 1.0;
        state.unauthenticated += 1;
        Ok(source)
    }

    /// The connection from `source` authenticated (or closed before it did): its
    /// unauthenticated slot is free.
    pub fn release(&mut self, source: Source) {
        if let Some(state) = self.sources.get_mut(&source) {
            state.unauthenticated = state.unauthenticated.saturating_sub(1);
        }
        self.forget_idle_sources();
    }

    /// A stream authenticated `remote` (the first time on that stream): count it, or refuse
    /// when the domain already has its limit of streams.
    pub fn add_stream(&mut self, remote: &str) -> Result<(), Refusal> {
        let n = self.domains.entry(remote.to_owned()).or_insert(0);
        if *n >= self.limits.streams_per_domain {
            return Err(Refusal::TooManyStreams);
        }
        *n += 1;
        Ok(())
    }

    /// A stream that had authenticated `remote` closed.
    pub fn remove_stream(&mut self, remote: &str) {
        if let Some(n) = self.domains.get_mut(remote) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.domains.remove(remote);
            }
        }
    }

    /// Unauthenticated connections `source` holds now.
    pub fn unauthenticated(&self, source: Source) -> usize {
        self.sources.get(&source).map_or(0, |s| s.unauthenticated)
    }

    /// Authenticated streams of `remote` now.
    pub fn streams(&self, remote: &str) -> usize {
        self.domains.get(remote).copied().unwrap_or(0)
    }

    /// Sources with no connection and a full bucket carry no information: drop them, so the
    /// table is bounded by the connections held, not by every address ever seen.
    fn forget_idle_sources(&mut self) {
        if self.sources.len() < 1024 {
            return;
        }
        let burst = f64::from(self.limits.connection_burst);
        let rate = self.limits.connections_per_sec;
        let now = self
            .sources
            .values()
            .map(|s| s.refilled)
            .max()
            .unwrap_or_else(Instant::now);
        self.sources.retain(|_, s| {
            let refill = now.saturating_duration_since(s.refilled).as_secs_f64() * rate;
            s.unauthenticated > 0 || s.tokens + refill < burst
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn limits() -> AdmissionLimits {
        AdmissionLimits {
            unauthenticated_per_source: 3,
            connections_per_sec: 2.0,
            connection_burst: 5,
            streams_per_domain: 2,
        }
    }

    #[test]
    fn unauthenticated_slots_per_source() {
        let mut a = Admission::new(limits());
        let t = Instant::now();
        let s: Vec<Source> = (0..3)
            .map(|_| a.admit(ip("192.0.2.1"), t).expect("admitted"))
            .collect();
        let refused = a.admit(ip("192.0.2.1"), t).expect_err("fourth");
        assert_eq!(refused.why, Refusal::TooManyUnauthenticated);
        assert!(refused.report);
        // Another source is not affected.
        assert!(a.admit(ip("192.0.2.2"), t).is_ok());
        // Authentication frees the slot.
        a.release(s[0]);
        assert_eq!(a.unauthenticated(s[0]), 2);
        assert!(a.admit(ip("192.0.2.1"), t).is_ok());
    }

    #[test]
    fn rate_and_burst() {
        let mut a = Admission::new(limits());
        let t = Instant::now();
        for _ in 0..5 {
            let s = a.admit(ip("192.0.2.1"), t).expect("burst");
            a.release(s);
        }
        let refused = a.admit(ip("192.0.2.1"), t).expect_err("burst spent");
        assert_eq!(refused.why, Refusal::RateExceeded);
        assert!(refused.report);
        // Refusals are reported once a minute, counted always.
        let again = a.admit(ip("192.0.2.1"), t).expect_err("still spent");
        assert!(!again.report);
        // Two tokens a second.
        let later = t + Duration::from_millis(500);
        let s = a.admit(ip("192.0.2.1"), later).expect("refilled one");
        a.release(s);
        assert!(a.admit(ip("192.0.2.1"), later).is_err());
        // The bucket never holds more than the burst.
        let much_later = t + Duration::from_secs(600);
        for _ in 0..5 {
            let s = a
                .admit(ip("192.0.2.1"), much_later)
                .expect("refilled to the burst");
            a.release(s);
        }
        assert!(a.admit(ip("192.0.2.1"), much_later).is_err());
    }

    #[test]
    fn ipv6_sources_are_grouped_by_64() {
        let mut a = Admission::new(limits());
        let t = Instant::now();
        for host in ["2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff::9"] {
            a.admit(ip(host), t).expect("admitted");
        }
        let refused = a.admit(ip("2001:db8:1:2::77"), t).expect_err("same /64");
        assert_eq!(refused.why, Refusal::TooManyUnauthenticated);
        assert!(a.admit(ip("2001:db8:1:3::1"), t).is_ok(), "another /64");
        assert_eq!(
            Source::of(ip("2001:db8:1:2::1")).to_string(),
            "2001:db8:1:2::/64"
        );
        // A mapped IPv4 address is that IPv4 source.
        assert_eq!(
            Source::of(ip("::ffff:192.0.2.7")),
            Source::of(ip("192.0.2.7"))
        );
    }

    #[test]
    fn streams_per_domain() {
        let mut a = Admission::new(limits());
        assert!(a.add_stream("big.example").is_ok());
        assert!(a.add_stream("big.example").is_ok());
        assert_eq!(a.add_stream("big.example"), Err(Refusal::TooManyStreams));
        assert!(a.add_stream("other.example").is_ok());
        a.remove_stream("big.example");
        assert_eq!(a.streams("big.example"), 1);
        assert!(a.add_stream("big.example").is_ok());
    }

    #[test]
    fn idle_sources_are_forgotten() {
        let mut a = Admission::new(limits());
        let t = Instant::now();
        for i in 0..2000u32 {
            let addr = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            let s = a.admit(addr, t).expect("admitted");
            a.release(s);
        }
        let held = a.admit(ip("192.0.2.1"), t + Duration::from_secs(60));
        assert!(held.is_ok());
        a.release(Source::of(ip("198.51.100.1")));
        assert!(a.sources.len() < 1100, "{}", a.sources.len());
    }
}
