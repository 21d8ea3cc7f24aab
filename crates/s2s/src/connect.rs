//! Connecting to a remote server: the outbound address filter first, on the addresses DNS
//! named, then a happy-eyeballs race (RFC 8305 in spirit) over what is left.
//!
//! * [`Race`] is the race's schedule, pure: explicit instants in, the next [`Step`] out.
//! * [`connect_any`] drives it with tokio sockets and timers.
//! * [`S2s::connect_targets`] filters, logs and counts refused addresses, then races.
//!
//! The order of the addresses is the caller's (SRV order, and within one SRV target the
//! families interleaved by [`interleave_families`]); the race keeps it.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::net::TcpStream;
use tracing::{debug, warn};

use crate::{S2s, LOG_MODULE};

/// One address to connect to, and where it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Target {
    /// The socket address.
    pub addr: SocketAddr,
    /// Learnt from DNS, so chosen by whoever writes the remote domain's zone: judged by
    /// [`crate::S2sConfig::outbound_filter`] before we connect. False: configured by an
    /// administrator (a static route, core's node list), never filtered.
    pub from_dns: bool,
}

impl Target {
    /// An address an administrator configured.
    pub fn configured(addr: SocketAddr) -> Self {
        Self {
            addr,
            from_dns: false,
        }
    }

    /// An address DNS named.
    pub fn from_dns(addr: SocketAddr) -> Self {
        Self {
            addr,
            from_dns: true,
        }
    }
}

/// How long an attempt runs alone before the next one starts beside it (RFC 8305's
/// recommended "Connection Attempt Delay"). An attempt that fails starts the next at once.
pub const STAGGER: Duration = Duration::from_millis(250);

/// Most addresses from DNS considered for one connection; the rest are ignored. A domain's DNS
/// could name hundreds, and each refused one would otherwise cost the next attempt at once (a
/// scan or a flood on the zone owner's behalf) or a log line. Configured addresses are all
/// used.
pub const MAX_DNS_ADDRESSES: usize = 16;

/// The addresses of one host in the order to try them: IPv6 and IPv4 alternating, IPv6 first
/// when there is one (RFC 8305 section 4), each family in its given order.
pub fn interleave_families(addrs: &[IpAddr]) -> Vec<IpAddr> {
    let (v6, v4): (Vec<IpAddr>, Vec<IpAddr>) = addrs.iter().partition(|ip| ip.is_ipv6());
    let mut out = Vec::with_capacity(addrs.len());
    let (mut a, mut b) = (v6.into_iter(), v4.into_iter());
    loop {
        match (a.next(), b.next()) {
            (None, None) => return out,
            (x, y) => out.extend(x.into_iter().chain(y)),
        }
    }
}

/// The timing of one race.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaceTiming {
    /// Each attempt gives up after this.
    pub attempt_timeout: Duration,
    /// Time between attempt starts while the earlier ones are pending ([`STAGGER`]).
    pub stagger: Duration,
    /// The whole race gives up after this.
    pub deadline: Duration,
}

/// What the driver of a [`Race`] does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Start the attempt on the address at this index.
    Start(usize),
    /// Wait for an attempt to finish, or until this instant (then ask again).
    WaitUntil(Instant),
    /// Every attempt failed.
    Exhausted,
    /// The deadline passed.
    TimedOut,
}

/// The schedule of a happy-eyeballs race over `len` addresses: start the first at once, the
/// next one [`RaceTiming::stagger`] later or as soon as an attempt fails, until one succeeds
/// (the driver stops asking), every one failed, or the deadline passed. Pure.
///
/// Call order: [`Race::new`]; then repeatedly [`Race::step`], starting the attempts it names
/// and reporting each failed one with [`Race::failed`]. Attempt timeouts are the driver's: a
/// timed-out attempt is a failed one.
#[derive(Debug)]
pub struct Race {
    len: usize,
    started: usize,
    running: usize,
    next_start: Instant,
    deadline: Instant,
    stagger: Duration,
}

impl Race {
    /// A race over `len` addresses starting `now`.
    pub fn new(len: usize, now: Instant, timing: RaceTiming) -> Self {
        Self {
            len,
            started: 0,
            running: 0,
            next_start: now,
            deadline: now + timing.deadline,
            stagger: timing.stagger,
        }
    }

    /// What to do at `now`.
    pub fn step(&mut self, now: Instant) -> Step {
        if now >= self.deadline {
            return Step::TimedOut;
        }
        let more = self.started < self.len;
        if more && (self.running == 0 || now >= self.next_start) {
            let i = self.started;
            self.started += 1;
            self.running += 1;
            self.next_start = now + self.stagger;
            return Step::Start(i);
        }
        if self.running == 0 {
            return Step::Exhausted;
        }
        Step::WaitUntil(if more {
            self.next_start.min(self.deadline)
        } else {
            self.deadline
        })
    }

    /// An attempt failed at `now`: the next one may start at once.
    pub fn failed(&mut self, now: Instant) {
        self.running = self.running.saturating_sub(1);
        self.next_start = now;
    }
}

/// Race TCP connections to `addrs` (in this order of preference) and return the first that
/// succeeds; the attempts still pending are dropped. The error lists every failed attempt.
pub(crate) async fn connect_any(
    addrs: &[SocketAddr],
    timing: RaceTiming,
) -> Result<TcpStream, String> {
    let now = || tokio::time::Instant::now().into_std();
    let mut race = Race::new(addrs.len(), now(), timing);
    let mut attempts = FuturesUnordered::new();
    let mut failures: Vec<String> = Vec::new();
    loop {
        let wake = match race.step(now()) {
            Step::Start(i) => {
                let Some(&addr) = addrs.get(i) else {
                    continue;
                };
                attempts.push(async move {
                    let attempt = tokio::time::timeout(timing.attempt_timeout, async {
                        TcpStream::connect(addr).await
                    });
                    (addr, attempt.await)
                });
                continue;
            }
            Step::WaitUntil(at) => at,
            Step::Exhausted if failures.is_empty() => return Err("no addresses".into()),
            Step::Exhausted => return Err(failures.join("; ")),
            Step::TimedOut => {
                failures.push(format!("gave up after {:?}", timing.deadline));
                return Err(failures.join("; "));
            }
        };
        tokio::select! {
            Some((addr, result)) = attempts.next(), if !attempts.is_empty() => match result {
                Ok(Ok(stream)) => return Ok(stream),
                Ok(Err(e)) => {
                    failures.push(format!("{addr}: {e}"));
                    race.failed(now());
                }
                Err(_) => {
                    failures.push(format!("{addr}: connect timed out"));
                    race.failed(now());
                }
            },
            () = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {}
        }
    }
}

impl S2s {
    /// Connect to `remote`'s server at one of `targets` (in order of preference): addresses
    /// from DNS that the outbound address filter refuses are logged, counted and skipped;
    /// the rest race ([`connect_any`]). The address judged is the address connected to. When
    /// the filter refuses every address the error reads like "not found".
    pub(crate) async fn connect_targets(
        &self,
        remote: &str,
        targets: &[Target],
    ) -> Result<TcpStream, String> {
        let cfg = self.cfg();
        let mut addrs: Vec<SocketAddr> = Vec::with_capacity(targets.len());
        let (mut from_dns, mut refused) = (0usize, 0usize);
        for t in targets {
            if t.from_dns {
                from_dns += 1;
                if from_dns > MAX_DNS_ADDRESSES {
                    continue;
                }
            }
            if let (true, Some(filter)) = (t.from_dns, cfg.outbound_filter.as_ref()) {
                if let Err(kind) = filter.check(t.addr.ip()) {
                    warn!(module = LOG_MODULE, direction = "outgoing", remote = %remote, address = %t.addr, kind = %kind, "address from DNS refused by the outbound address filter");
                    self.counters
                        .addresses_refused
                        .fetch_add(1, Ordering::Relaxed);
                    refused += 1;
                    continue;
                }
            }
            if !addrs.contains(&t.addr) {
                addrs.push(t.addr);
            }
        }
        if addrs.is_empty() && refused > 0 {
            return Err(format!(
                "no usable address for {remote}: the outbound address filter refused all {refused}"
            ));
        }
        if from_dns > MAX_DNS_ADDRESSES {
            debug!(module = LOG_MODULE, remote = %remote, addresses = from_dns, "only the first {MAX_DNS_ADDRESSES} addresses from DNS are considered");
        }
        let timing = RaceTiming {
            attempt_timeout: cfg.connect_timeout,
            stagger: STAGGER,
            deadline: cfg.connect_deadline,
        };
        connect_any(&addrs, timing).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn timing(attempt: u64, stagger: u64, deadline: u64) -> RaceTiming {
        RaceTiming {
            attempt_timeout: ms(attempt),
            stagger: ms(stagger),
            deadline: ms(deadline),
        }
    }

    #[test]
    fn families_alternate_ipv6_first_each_in_order() {
        let ips = |s: &[&str]| -> Vec<IpAddr> {
            s.iter().map(|a| a.parse().expect("test address")).collect()
        };
        assert_eq!(
            interleave_families(&ips(&[
                "192.0.2.1",
                "192.0.2.2",
                "2001:db8::1",
                "2001:db8::2"
            ])),
            ips(&["2001:db8::1", "192.0.2.1", "2001:db8::2", "192.0.2.2"])
        );
        assert_eq!(
            interleave_families(&ips(&[
                "192.0.2.1",
                "2001:db8::1",
                "192.0.2.2",
                "192.0.2.3"
            ])),
            ips(&["2001:db8::1", "192.0.2.1", "192.0.2.2", "192.0.2.3"])
        );
        assert_eq!(
            interleave_families(&ips(&["192.0.2.1", "192.0.2.2"])),
            ips(&["192.0.2.1", "192.0.2.2"])
        );
        assert_eq!(interleave_families(&[]), Vec::<IpAddr>::new());
    }

    #[test]
    fn attempts_start_a_stagger_apart_while_pending() {
        let t0 = Instant::now();
        let mut race = Race::new(3, t0, timing(10_000, 250, 20_000));
        assert_eq!(race.step(t0), Step::Start(0));
        assert_eq!(race.step(t0), Step::WaitUntil(t0 + ms(250)));
        assert_eq!(race.step(t0 + ms(100)), Step::WaitUntil(t0 + ms(250)));
        assert_eq!(race.step(t0 + ms(250)), Step::Start(1));
        assert_eq!(race.step(t0 + ms(260)), Step::WaitUntil(t0 + ms(500)));
        assert_eq!(race.step(t0 + ms(500)), Step::Start(2));
        // All started: wait for a result until the deadline.
        assert_eq!(race.step(t0 + ms(600)), Step::WaitUntil(t0 + ms(20_000)));
        assert_eq!(race.step(t0 + ms(20_000)), Step::TimedOut);
    }

    #[test]
    fn a_failure_starts_the_next_attempt_at_once() {
        let t0 = Instant::now();
        let mut race = Race::new(3, t0, timing(10_000, 250, 20_000));
        assert_eq!(race.step(t0), Step::Start(0));
        race.failed(t0 + ms(3));
        assert_eq!(race.step(t0 + ms(3)), Step::Start(1));
        // Attempt 1 pending, attempt 0 failed long ago: the stagger counts from attempt 1.
        assert_eq!(race.step(t0 + ms(4)), Step::WaitUntil(t0 + ms(253)));
        // A failure of an attempt started earlier than the newest also hands over at once.
        assert_eq!(race.step(t0 + ms(253)), Step::Start(2));
        race.failed(t0 + ms(300));
        race.failed(t0 + ms(301));
        assert_eq!(race.step(t0 + ms(301)), Step::Exhausted);
    }

    #[test]
    fn the_deadline_ends_the_race_and_bounds_the_waits() {
        let t0 = Instant::now();
        let mut race = Race::new(5, t0, timing(10_000, 250, 400));
        assert_eq!(race.step(t0), Step::Start(0));
        assert_eq!(race.step(t0 + ms(250)), Step::Start(1));
        assert_eq!(race.step(t0 + ms(251)), Step::WaitUntil(t0 + ms(400)));
        assert_eq!(race.step(t0 + ms(400)), Step::TimedOut);
        let mut empty = Race::new(0, t0, timing(10_000, 250, 400));
        assert_eq!(empty.step(t0), Step::Exhausted);
    }

    /// A loopback port nobody listens on (refuses at once).
    fn closed_port() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    }

    /// A loopback listener whose accept queue is full, so the kernel drops further SYNs and
    /// a connect to it hangs like one to a filtered address, without leaving loopback. The
    /// returned sockets keep it so.
    fn silent_listener() -> (SocketAddr, Vec<socket2::Socket>) {
        use socket2::{Domain, Protocol, Socket, Type};
        let l = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("socket");
        l.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .expect("bind");
        l.listen(0).expect("listen");
        let addr = l
            .local_addr()
            .expect("addr")
            .as_socket()
            .expect("inet addr");
        let mut keep = vec![l];
        // Fill the accept queue (a backlog of 0 still queues one or two connections).
        for _ in 0..4 {
            let c = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("socket");
            if c.connect_timeout(&addr.into(), ms(200)).is_err() {
                break;
            }
            keep.push(c);
        }
        (addr, keep)
    }

    async fn accepted_within(l: &tokio::net::TcpListener, wait: Duration) -> bool {
        tokio::time::timeout(wait, l.accept()).await.is_ok()
    }

    #[tokio::test]
    async fn a_refused_address_hands_over_to_the_next_at_once() {
        let open = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let open_addr = open.local_addr().expect("addr");
        let started = std::time::Instant::now();
        // A stagger of 5 s: only the failure can have started the second attempt this early.
        let s = connect_any(&[closed_port(), open_addr], timing(5_000, 5_000, 10_000))
            .await
            .expect("connect");
        assert_eq!(s.peer_addr().expect("peer"), open_addr);
        assert!(started.elapsed() < ms(2_000), "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn a_silent_address_is_overtaken_after_the_stagger() {
        let (silent, _keep) = silent_listener();
        let open = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let open_addr = open.local_addr().expect("addr");
        let started = std::time::Instant::now();
        let s = connect_any(&[silent, open_addr], timing(5_000, 300, 10_000))
            .await
            .expect("connect");
        let took = started.elapsed();
        assert_eq!(s.peer_addr().expect("peer"), open_addr);
        assert!(took >= ms(300) && took < ms(3_000), "{took:?}");
    }

    #[tokio::test]
    async fn the_first_success_wins_and_later_addresses_are_never_tried() {
        let first = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let second = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addrs = [
            first.local_addr().expect("addr"),
            second.local_addr().expect("addr"),
        ];
        let s = connect_any(&addrs, timing(5_000, 250, 10_000))
            .await
            .expect("connect");
        assert_eq!(s.peer_addr().expect("peer"), addrs[0]);
        assert!(accepted_within(&first, ms(100)).await);
        assert!(!accepted_within(&second, ms(600)).await, "second was tried");
    }

    #[tokio::test]
    async fn failures_are_listed_and_timeouts_bound_the_attempts() {
        let (a, b) = (closed_port(), closed_port());
        let err = connect_any(&[a, b], timing(5_000, 250, 10_000))
            .await
            .expect_err("both closed");
        assert!(
            err.contains(&a.to_string()) && err.contains(&b.to_string()),
            "{err}"
        );
        let (silent, _keep) = silent_listener();
        let started = std::time::Instant::now();
        let err = connect_any(&[silent], timing(300, 250, 10_000))
            .await
            .expect_err("silent");
        assert!(err.contains("connect timed out"), "{err}");
        assert!(started.elapsed() < ms(3_000), "{:?}", started.elapsed());
        let started = std::time::Instant::now();
        let err = connect_any(&[silent], timing(10_000, 250, 300))
            .await
            .expect_err("deadline");
        assert!(err.contains("gave up after"), "{err}");
        assert!(started.elapsed() < ms(3_000), "{:?}", started.elapsed());
        let err = connect_any(&[], timing(300, 250, 300))
            .await
            .expect_err("empty");
        assert_eq!(err, "no addresses");
    }

    #[tokio::test]
    async fn addresses_from_dns_pass_the_filter_and_configured_ones_need_not() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let s2s = crate::testing::s2s(|cfg| {
            cfg.outbound_filter = Some(crate::addrfilter::AddrFilter::default());
        });
        let err = s2s
            .connect_targets("remote.test", &[Target::from_dns(addr)])
            .await
            .expect_err("loopback from DNS");
        assert!(err.contains("outbound address filter"), "{err}");
        assert!(!accepted_within(&listener, ms(300)).await, "connected");
        assert_eq!(s2s.counters.addresses_refused.load(Ordering::Relaxed), 1);

        let mapped = SocketAddr::new(
            IpAddr::V6(std::net::Ipv4Addr::LOCALHOST.to_ipv6_mapped()),
            addr.port(),
        );
        let s = s2s
            .connect_targets(
                "remote.test",
                &[Target::from_dns(mapped), Target::configured(addr)],
            )
            .await
            .expect("the configured address");
        assert_eq!(s.peer_addr().expect("peer"), addr);
        assert_eq!(s2s.counters.addresses_refused.load(Ordering::Relaxed), 2);

        let allowing = crate::testing::s2s(|cfg| {
            cfg.outbound_filter =
                Some(crate::addrfilter::AddrFilter::parse(&["127.0.0.0/8"]).expect("allow"));
        });
        allowing
            .connect_targets("remote.test", &[Target::from_dns(addr)])
            .await
            .expect("an allowed network");
        // However many addresses DNS names, only the first MAX_DNS_ADDRESSES are considered.
        let many: Vec<Target> = (1..=40u8)
            .map(|i| Target::from_dns(SocketAddr::from(([127, 0, 1, i], addr.port()))))
            .collect();
        let err = s2s
            .connect_targets("remote.test", &many)
            .await
            .expect_err("all loopback from DNS");
        assert!(err.contains(&format!("all {MAX_DNS_ADDRESSES}")), "{err}");
        assert_eq!(
            s2s.counters.addresses_refused.load(Ordering::Relaxed),
            2 + MAX_DNS_ADDRESSES as u64
        );
        let unfiltered = crate::testing::s2s(|_| {});
        unfiltered
            .connect_targets("remote.test", &[Target::from_dns(addr)])
            .await
            .expect("no filter (core)");
    }
}
