//! Resolution against a real DNS server: a private `dnsmasq` on a loopback
//! address and a free high port, authoritative for `.test` (`--local=/test/`,
//! no upstream servers, so no query ever leaves the machine).
//!
//! Each test starts its own dnsmasq and skips, with a message, when
//! `/usr/sbin/dnsmasq` (Debian package `dnsmasq`) is not installed.
//!
//! NXDOMAIN behaviour checked here: `resolve_xmpp_server` of a domain that
//! does not exist is an error (the SRV lookup finds nothing, and neither does
//! the A/AAAA fallback); `resolve_xmpps_server` of it is `Ok(vec![])`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use causeway_dns::{Resolver, ResolverOptions, Target};

const DNSMASQ: &str = "/usr/sbin/dnsmasq";

/// A running dnsmasq, killed (by its pid) on drop.
struct Dnsmasq {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback address and a port that is free for both UDP and TCP right now.
fn free_loopback_addr(attempt: u32) -> Option<SocketAddr> {
    let seed = std::process::id()
        .wrapping_mul(31)
        .wrapping_add(attempt.wrapping_mul(17))
        .wrapping_add(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0),
        );
    // 127.0.0.100 .. 127.0.0.199
    let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 100 + (seed % 100) as u8));
    let udp = UdpSocket::bind(SocketAddr::new(ip, 0)).ok()?;
    let port = udp.local_addr().ok()?.port();
    let addr = SocketAddr::new(ip, port);
    let tcp = TcpListener::bind(addr).ok()?;
    drop((udp, tcp));
    Some(addr)
}

fn start_dnsmasq(records: &[&str]) -> Option<Dnsmasq> {
    if !Path::new(DNSMASQ).exists() {
        eprintln!("SKIP: {DNSMASQ} not installed (Debian package `dnsmasq`)");
        return None;
    }
    for attempt in 0..5 {
        let Some(addr) = free_loopback_addr(attempt) else {
            continue;
        };
        let mut cmd = Command::new(DNSMASQ);
        cmd.args([
            "--no-daemon",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--conf-file=/dev/null",
            "--pid-file=",
            "--bind-interfaces",
            "--local=/test/",
            // dnsmasq serves its own records with TTL 0 by default, which
            // would make every answer uncacheable.
            "--local-ttl=300",
        ])
        .arg(format!("--listen-address={}", addr.ip()))
        .arg(format!("--port={}", addr.port()))
        .args(records)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("SKIP: cannot run {DNSMASQ}: {e}");
                return None;
            }
        };
        // Exits at once when it cannot bind (port taken meanwhile).
        std::thread::sleep(Duration::from_millis(100));
        match child.try_wait() {
            Ok(None) => return Some(Dnsmasq { child, addr }),
            Ok(Some(status)) => eprintln!("dnsmasq on {addr} exited with {status}, retrying"),
            Err(e) => eprintln!("dnsmasq on {addr}: {e}, retrying"),
        }
    }
    panic!("could not start dnsmasq");
}

/// The standard zone used by most tests.
fn zone() -> Vec<&'static str> {
    vec![
        // Plain SRV.
        "--srv-host=_xmpp-server._tcp.partner.test,xmpp.partner.test,5269,10,1",
        "--host-record=xmpp.partner.test,127.0.0.21",
        "--srv-host=_xmpps-server._tcp.partner.test,xmpp.partner.test,5270,0,1",
        // No SRV: A fallback.
        "--host-record=plain.test,127.0.0.22",
        // Two priorities (listed worst first).
        "--srv-host=_xmpp-server._tcp.multi.test,backup.multi.test,5300,20,100",
        "--srv-host=_xmpp-server._tcp.multi.test,main.multi.test,5301,10,1",
        "--host-record=main.multi.test,127.0.0.23",
        "--host-record=backup.multi.test,127.0.0.24",
        // "." target: decidedly not available, even though the domain has an A record.
        "--srv-host=_xmpp-server._tcp.nope.test",
        "--host-record=nope.test,127.0.0.29",
        // IP-literal SRV target.
        "--srv-host=_xmpp-server._tcp.iplit.test,127.0.0.25,5269",
        // Dual-stack target.
        "--srv-host=_xmpp-server._tcp.v6.test,host.v6.test,5269",
        "--host-record=host.v6.test,127.0.0.26,::1",
        // One dangling target among two.
        "--srv-host=_xmpp-server._tcp.half.test,gone.half.test,5269,1,1",
        "--srv-host=_xmpp-server._tcp.half.test,ok.half.test,5269,2,1",
        "--host-record=ok.half.test,127.0.0.27",
        // Only dangling targets.
        "--srv-host=_xmpp-server._tcp.dangling.test,gone.dangling.test,5269",
    ]
}

async fn resolver_for(dns: &Dnsmasq) -> Resolver {
    let resolver = Resolver::with_options(ResolverOptions {
        nameservers: Some(vec![dns.addr]),
        timeout: Duration::from_millis(500),
        attempts: 1,
        cache: false,
    })
    .expect("resolver");
    // Wait until dnsmasq answers.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match resolver.lookup_ip("plain.test").await {
            Ok(_) => return resolver,
            Err(e) if Instant::now() > deadline => panic!("dnsmasq never answered: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

fn v4(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

fn target(host: &str, port: u16, addrs: &[IpAddr]) -> Target {
    Target {
        host: host.to_string(),
        port,
        addrs: addrs.to_vec(),
    }
}

#[tokio::test]
async fn srv_fallback_and_not_available() {
    let Some(dns) = start_dnsmasq(&zone()) else {
        return;
    };
    let r = resolver_for(&dns).await;

    // SRV.
    assert_eq!(
        r.resolve_xmpp_server("partner.test").await.expect("srv"),
        [target("xmpp.partner.test", 5269, &[v4(21)])]
    );
    // Case and trailing dot do not matter.
    assert_eq!(
        r.resolve_xmpp_server("Partner.TEST.").await.expect("srv"),
        [target("xmpp.partner.test", 5269, &[v4(21)])]
    );
    // XEP-0368.
    assert_eq!(
        r.resolve_xmpps_server("partner.test").await.expect("xmpps"),
        [target("xmpp.partner.test", 5270, &[v4(21)])]
    );

    // No SRV: the domain itself on 5269; no xmpps fallback.
    assert_eq!(
        r.resolve_xmpp_server("plain.test").await.expect("fallback"),
        [target("plain.test", 5269, &[v4(22)])]
    );
    assert!(r
        .resolve_xmpps_server("plain.test")
        .await
        .expect("xmpps none")
        .is_empty());

    // "." target: not available, and no A fallback.
    assert!(r
        .resolve_xmpp_server("nope.test")
        .await
        .expect("dot target")
        .is_empty());
    assert_eq!(r.lookup_ip("nope.test").await.expect("a"), [v4(29)]);

    // NXDOMAIN: an error for xmpp-server, empty for xmpps-server.
    let err = r
        .resolve_xmpp_server("missing.test")
        .await
        .expect_err("nxdomain");
    assert!(err.to_string().contains("missing.test"), "{err}");
    assert!(r
        .resolve_xmpps_server("missing.test")
        .await
        .expect("xmpps nxdomain")
        .is_empty());
    assert!(r.lookup_ip("missing.test").await.is_err());
}

#[tokio::test]
async fn priorities_literals_dual_stack_and_dangling() {
    let Some(dns) = start_dnsmasq(&zone()) else {
        return;
    };
    let r = resolver_for(&dns).await;

    // Priority 10 before 20, whatever the weights and the answer order.
    for _ in 0..10 {
        assert_eq!(
            r.resolve_xmpp_server("multi.test").await.expect("multi"),
            [
                target("main.multi.test", 5301, &[v4(23)]),
                target("backup.multi.test", 5300, &[v4(24)]),
            ]
        );
    }
    let srv = r
        .lookup_srv("_xmpp-server._tcp", "multi.test")
        .await
        .expect("raw srv");
    assert_eq!(srv.iter().map(|s| s.priority).collect::<Vec<_>>(), [10, 20]);

    // An IP-literal SRV target is used directly.
    assert_eq!(
        r.resolve_xmpp_server("iplit.test").await.expect("iplit"),
        [target("127.0.0.25", 5269, &[v4(25)])]
    );

    // A and AAAA, IPv4 first.
    assert_eq!(
        r.resolve_xmpp_server("v6.test").await.expect("v6"),
        [target(
            "host.v6.test",
            5269,
            &[v4(26), "::1".parse().expect("v6")]
        )]
    );

    // A target that does not resolve is skipped...
    assert_eq!(
        r.resolve_xmpp_server("half.test").await.expect("half"),
        [target("ok.half.test", 5269, &[v4(27)])]
    );
    // ...and if none resolves, that is an error.
    let err = r
        .resolve_xmpp_server("dangling.test")
        .await
        .expect_err("dangling");
    assert!(err.to_string().contains("gone.dangling.test"), "{err}");
}

#[tokio::test]
async fn weighted_order_within_a_priority() {
    let Some(dns) = start_dnsmasq(&[
        "--srv-host=_xmpp-server._tcp.w.test,heavy.w.test,5269,5,90",
        "--srv-host=_xmpp-server._tcp.w.test,light.w.test,5269,5,10",
        "--host-record=heavy.w.test,127.0.0.31",
        "--host-record=light.w.test,127.0.0.32",
        "--host-record=plain.test,127.0.0.22",
    ]) else {
        return;
    };
    let r = resolver_for(&dns).await;
    let trials = 200;
    let mut heavy_first = 0;
    for _ in 0..trials {
        let t = r.resolve_xmpp_server("w.test").await.expect("w");
        assert_eq!(t.len(), 2);
        if t[0].host == "heavy.w.test" {
            heavy_first += 1;
        }
    }
    // Expected ~178 of 200; the bound leaves a wide margin.
    assert!(heavy_first > 140, "heavy first {heavy_first}/{trials}");
    assert!(heavy_first < trials, "light never first in {trials} trials");
}

#[tokio::test]
async fn cached_resolver_works_and_clones_share_it() {
    let Some(dns) = start_dnsmasq(&zone()) else {
        return;
    };
    // Wait for readiness with an uncached resolver first.
    let _ = resolver_for(&dns).await;
    let r = Resolver::new(Some(vec![dns.addr])).expect("resolver");
    let r2 = r.clone();
    // v6.test: the target has both A and AAAA, so every answer is positive
    // (dnsmasq's NODATA answers for its own names carry no SOA, so hickory
    // would not cache those).
    let expected = [target(
        "host.v6.test",
        5269,
        &[v4(26), "::1".parse().expect("v6")],
    )];
    assert_eq!(
        r.resolve_xmpp_server("v6.test").await.expect("srv"),
        expected
    );
    let nocache = Resolver::with_options(ResolverOptions {
        nameservers: Some(vec![dns.addr]),
        timeout: Duration::from_millis(200),
        attempts: 1,
        cache: false,
    })
    .expect("resolver");
    assert_eq!(
        nocache.resolve_xmpp_server("v6.test").await.expect("srv"),
        expected
    );
    // Stop the server: a clone still gets the cached answer.
    let addr = dns.addr;
    drop(dns);
    assert_eq!(
        r2.resolve_xmpp_server("v6.test").await.expect("cached"),
        expected
    );
    // Whereas a fresh resolver (empty cache) now fails, as an error.
    let fresh = Resolver::with_options(ResolverOptions {
        nameservers: Some(vec![addr]),
        timeout: Duration::from_millis(200),
        attempts: 1,
        cache: true,
    })
    .expect("resolver");
    assert!(fresh.resolve_xmpp_server("v6.test").await.is_err());
    // And the resolver without cache asks again, and fails too.
    assert!(nocache.resolve_xmpp_server("v6.test").await.is_err());
}
