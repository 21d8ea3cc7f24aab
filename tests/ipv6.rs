//! An IPv6 partner: the edge listens on an IPv6 address beside its IPv4 one, finds the
//! partner's server through an SRV target with only an AAAA record, and federates both ways
//! over IPv6 (issue "The edge survives the internet", 8).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use causeway_testkit::synthetic::SyntheticServer;
use causeway_testkit::DnsRecord;

use crate::support::{edge_log, options, start, Step, PATIENCE};

/// A TCP port free on ::1 now.
fn free_v6_port() -> u16 {
    std::net::TcpListener::bind("[::1]:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("this test needs IPv6 on loopback (::1): {e}"))
}

#[test]
fn an_ipv6_partner_federates_both_ways() {
    let subnet = 231;
    let edge_v6 = SocketAddr::from(([0, 0, 0, 0, 0, 0, 0, 1], free_v6_port()));
    let partner_v6 = SocketAddr::from(([0, 0, 0, 0, 0, 0, 0, 1], free_v6_port()));
    let mut opts = options(subnet);
    opts.extra_allow = vec!["v6.test".into()];
    opts.extra_dns = vec![
        DnsRecord::Raw("host-record=xmpp.v6.test,::1".into()),
        DnsRecord::xmpp_server("v6.test", "xmpp.v6.test", partner_v6.port()),
    ];
    opts.edge_extra_listen = vec![edge_v6];
    // The lab's peers are on loopback: allow it, for IPv6 too (::1 is refused by default).
    opts.edge_federation_extra = "outbound_allow_networks = [\"127.0.0.0/8\", \"::1/128\"]".into();
    let lab = start(opts);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let v6 = rt
        .block_on(SyntheticServer::start_with_cert(
            "v6.test", partner_v6, edge_v6, true, None,
        ))
        .expect("v6.test");
    let mut alice = lab.client("alice").step(&lab, "alice connects");

    // In: v6.test -> alice, over the edge's IPv6 listener (dialback is verified by dialling
    // v6.test's AAAA-only server).
    rt.block_on(v6.send(
        "example.com",
        "<message from='carol@v6.test' to='alice@example.com' type='chat'><body>over IPv6</body></message>",
    ));
    alice
        .expect_message("carol@v6.test", "over IPv6", PATIENCE)
        .step(&lab, "v6.test -> alice");

    // Out: alice -> v6.test, the edge dialling the AAAA address.
    alice
        .send_message("carol@v6.test", "back over IPv6")
        .step(&lab, "send");
    let arrived = causeway_testkit::wait_until(PATIENCE, || {
        v6.received.kept.lock().is_ok_and(|kept| {
            kept.iter()
                .any(|p| String::from_utf8_lossy(p).contains("back over IPv6"))
        })
    });
    assert!(
        arrived,
        "alice's message never reached v6.test:\n{}",
        lab.diagnostics()
    );
    assert!(v6.received.count.load(Ordering::Relaxed) >= 1);

    let log = edge_log(&lab);
    let authenticated_over_v6 = |direction: &str| {
        log.lines().any(|l| {
            l.contains("s2s session authenticated")
                && l.contains(direction)
                && l.contains("remote=v6.test")
                && l.contains("peer=[::1]:")
        })
    };
    assert!(
        authenticated_over_v6("direction=\"incoming\""),
        "no incoming IPv6 session from v6.test in the log:\n{log}"
    );
    assert!(
        authenticated_over_v6("direction=\"outgoing\""),
        "no outgoing IPv6 session to v6.test in the log:\n{log}"
    );
    assert!(
        log.contains(&format!("s2s=127.{subnet}.0.2:5269, {edge_v6}")),
        "the edge did not report both listeners:\n{log}"
    );
}
