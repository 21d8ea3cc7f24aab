//! Hostile peers against the edge's bounds: memory for untrusted bytes, well-formedness, and
//! limits per source. Each attack is refused, the edge stays up, and legitimate federation
//! beside it still flows.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use causeway_testkit::lab::{Lab, PARTNER};

use crate::support::raw::{self, connect_from, edge_memory, header, read_until};
use crate::support::{edge_log, legitimate_traffic_flows, options, start, Step, PATIENCE};

/// The element that grew the edge by 3.7 GB before: a 131 kB namespace declared on the root
/// and as many tiny children as fit under the stanza limit (each child used to get its own
/// copy of the namespace).
fn amplifier() -> Vec<u8> {
    let uri = format!("urn:{}", "x".repeat(131_000));
    let mut el = format!("<message xmlns='{uri}' to='alice@example.com'>");
    while el.len() < 250_000 {
        el.push_str("<a/>");
    }
    el.push_str("</message>");
    el.into_bytes()
}

/// 100 connections from 100 sources each send the amplifier right after the stream header,
/// before STARTTLS or authentication. The edge refuses each at the pre-authentication cap
/// (8 KiB), its memory grows by less than 64 MiB, the log does not echo the namespace, and
/// federation goes on.
#[test]
fn pre_auth_memory_amplification_is_bounded() {
    let subnet = 226;
    let lab = start(options(subnet));
    let edge = SocketAddr::from((Lab::ip(subnet, 2), 5269));
    let pid = lab.edge.as_ref().expect("edge").pid();
    let (before, _) = edge_memory(pid);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let answers = rt.block_on(async {
        let payload = std::sync::Arc::new(amplifier());
        let mut tasks = Vec::new();
        for i in 0..100u8 {
            let payload = payload.clone();
            let source = IpAddr::from(Lab::ip(subnet, 100 + i));
            tasks.push(tokio::spawn(async move {
                let mut tcp = connect_from(source, edge).await;
                raw::write(&mut tcp, header(PARTNER).as_bytes()).await;
                // The edge may close while we still write: that is the point.
                let _ = tokio::io::AsyncWriteExt::write_all(&mut tcp, &payload).await;
                let mut seen = Vec::new();
                let _ = tokio::time::timeout(
                    Duration::from_secs(10),
                    tokio::io::AsyncReadExt::read_to_end(&mut tcp, &mut seen),
                )
                .await;
                String::from_utf8_lossy(&seen).into_owned()
            }));
        }
        let mut answers = Vec::new();
        for t in tasks {
            answers.push(t.await.expect("attacker task"));
        }
        answers
    });
    let (after, peak) = edge_memory(pid);
    let refused = answers
        .iter()
        .filter(|a| a.contains("policy-violation"))
        .count();
    assert!(
        refused >= 95,
        "only {refused} of 100 were refused with policy-violation: {:?}",
        answers.first()
    );
    let growth = peak.saturating_sub(before);
    eprintln!(
        "edge RSS before {} KiB, after {} KiB, peak growth {} KiB for 100 pre-auth amplifiers",
        before / 1024,
        after / 1024,
        growth / 1024
    );
    assert!(growth < 64 << 20, "the edge grew by {} MiB", growth >> 20);
    legitimate_traffic_flows(&lab, "after the amplifiers");
    let log = edge_log(&lab);
    assert!(
        !log.contains(&"x".repeat(1000)),
        "the log echoes the namespace"
    );
    assert!(log.len() < 4 << 20, "the log grew to {} bytes", log.len());
}

/// A mismatched end tag gets `<not-well-formed/>` at once, and the next stanza is not taken.
#[test]
fn a_mismatched_end_tag_is_not_well_formed() {
    let subnet = 227;
    let lab = start(options(subnet));
    let edge = SocketAddr::from((Lab::ip(subnet, 2), 5269));
    raw::script(async {
        let mut tcp = raw::connect(edge).await;
        raw::write(&mut tcp, header(PARTNER).as_bytes()).await;
        read_until(&mut tcp, "</stream:features>", Duration::from_secs(5)).await;
        raw::write(
            &mut tcp,
            format!(
                "<message from='bob@{PARTNER}' to='alice@example.com'><body>x</message>\
                 <message from='bob@{PARTNER}' to='alice@example.com'><body>y</body></message>"
            )
            .as_bytes(),
        )
        .await;
        let said = read_until(&mut tcp, "</stream:stream>", Duration::from_secs(2)).await;
        assert!(said.contains("not-well-formed"), "{said}");
    });
    legitimate_traffic_flows(&lab, "after the mismatched tag");
}

/// One source opens 40 silent connections at once: 16 are held (until their header
/// deadline), the rest are dropped at accept and the refusal is logged; partner.test, from
/// another source, federates meanwhile.
#[test]
fn one_source_cannot_take_every_unauthenticated_slot() {
    let subnet = 228;
    let lab = start(options(subnet));
    let edge = SocketAddr::from((Lab::ip(subnet, 2), 5269));
    let source = IpAddr::from(Lab::ip(subnet, 98));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut held = rt.block_on(async {
        let mut conns = Vec::new();
        for _ in 0..40 {
            conns.push(connect_from(source, edge).await);
        }
        conns
    });
    let closed = rt.block_on(async {
        let mut closed = 0;
        for tcp in held.iter_mut() {
            if raw::closed_within(tcp, Duration::from_millis(300)).await {
                closed += 1;
            }
        }
        closed
    });
    assert_eq!(
        closed,
        40 - 16,
        "of 40 connections from one source, {closed} were dropped at once (16 should be held)"
    );
    legitimate_traffic_flows(&lab, "while one source holds its slots");
    let log = edge_log(&lab);
    assert!(
        log.contains("refused by a per-source limit"),
        "the refusal was not logged:\n{log}"
    );
    // Refusals of one source are logged once a minute, not once per connection.
    assert_eq!(log.matches("refused by a per-source limit").count(), 1);
    drop(held);
}

/// A core announcing a domain it is not granted - here partner.test, a remote partner - is
/// refused for that domain: the edge does not list it as local and still accepts
/// partner.test's streams as a remote peer (before, it took partner.test for a local domain
/// and refused them, cutting federation with it). That core itself is misconfigured - it
/// keeps partner.test's stanzas for itself - so the story ends at the edge.
#[test]
fn a_core_cannot_announce_a_partner_domain() {
    let subnet = 229;
    let mut opts = options(subnet);
    opts.core_extra = format!(
        "\n[[domains]]\nname = \"{PARTNER}\"\nnodes = [\"{}:5269\"]\n",
        Lab::ip(subnet, 250)
    );
    let lab = start(opts);
    let refused = causeway_testkit::wait_until(Duration::from_secs(10), || {
        edge_log(&lab).contains("a core announced a domain it is not granted")
    });
    assert!(refused, "not refused:\n{}", edge_log(&lab));
    assert!(edge_log(&lab).contains(&format!("domain={PARTNER}")));
    let config = lab.config_path("edge");
    let status = crate::support::run(
        crate::support::EDGE,
        &[
            "status",
            "--config",
            config.to_str().expect("utf-8"),
            "--json",
        ],
    )
    .json();
    let local: Vec<String> = status["edge"]["domains"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|d| d["name"].as_str().map(str::to_owned))
        .collect();
    assert!(local.contains(&"example.com".to_owned()), "{status:#}");
    assert!(!local.contains(&PARTNER.to_owned()), "{status:#}");
    // bob's server still gets its stream to example.com authenticated as a remote peer.
    let mut bob = lab.client("bob").step(&lab, "bob connects");
    bob.send_message("alice@example.com", "hello")
        .step(&lab, "send");
    let accepted = causeway_testkit::wait_until(PATIENCE, || {
        edge_log(&lab).contains(&format!("remote={PARTNER} local=example.com"))
    });
    assert!(
        accepted,
        "partner.test's stream was refused:\n{}",
        edge_log(&lab)
    );
}

/// An authenticated peer sending a stanza to a domain the edge does not serve, on a stream
/// authenticated for another pair, gets the `<host-unknown/>` stream error (RFC 6120 4.9.3.6)
/// instead of a silent drop.
#[test]
fn a_stanza_to_a_domain_not_served_ends_the_stream_with_host_unknown() {
    let subnet = 230;
    let mut opts = options(subnet);
    opts.extra_allow = vec!["evil.test".into()];
    opts.extra_dns = vec![causeway_testkit::DnsRecord::xmpp_server(
        "evil.test",
        &Lab::ip(subnet, 41).to_string(),
        5269,
    )];
    let lab = start(opts);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let evil = rt
        .block_on(
            causeway_testkit::synthetic::SyntheticServer::start_with_cert(
                "evil.test",
                SocketAddr::from((Lab::ip(subnet, 41), 5269)),
                SocketAddr::from((Lab::ip(subnet, 2), 5269)),
                false,
                None,
            ),
        )
        .expect("evil server");
    // First a stanza example.com accepts, so the stream is authenticated...
    rt.block_on(evil.send(
        "example.com",
        "<message from='m@evil.test' to='alice@example.com'><body>hello</body></message>",
    ));
    let authenticated = causeway_testkit::wait_until(PATIENCE, || {
        edge_log(&lab).contains("s2s session authenticated")
    });
    assert!(authenticated, "{}", edge_log(&lab));
    // ...then one on the same stream to a domain nobody serves.
    rt.block_on(evil.send(
        "example.com",
        "<message from='m@evil.test' to='boss@hr.example.com'><body>x</body></message>",
    ));
    let closed = causeway_testkit::wait_until(PATIENCE, || {
        edge_log(&lab).contains("host-unknown: hr.example.com is not served here")
    });
    assert!(closed, "no host-unknown:\n{}", edge_log(&lab));
    legitimate_traffic_flows(&lab, "beside the unserved domain");
}
