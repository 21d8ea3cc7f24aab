//! Hostile peers against the edge's bounds: memory for untrusted bytes, well-formedness, and
//! limits per source. Each attack is refused, the edge stays up, and legitimate federation
//! beside it still flows.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use causeway_testkit::lab::{Lab, PARTNER};

use crate::support::raw::{self, connect_from, edge_memory, header, read_until};
use crate::support::{
    edge_log, legitimate_traffic_flows, options, options_with_remote, remote_server, scrape, start,
    Step, PATIENCE,
};

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
    let opts = options_with_remote(subnet, "evil.test");
    let lab = start(opts);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let evil = remote_server(&rt, subnet, "evil.test", false, None);
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

/// Error replies that came back to the flooder for its messages (ids `flood-*`).
fn flood_bounces(flood: &causeway_testkit::synthetic::SyntheticServer) -> usize {
    flood
        .received
        .kept
        .lock()
        .map(|kept| {
            kept.iter()
                .filter(|p| String::from_utf8_lossy(p).contains("flood-"))
                .count()
        })
        .unwrap_or(0)
}

/// The hostile test of the per-domain inbound rate: flood.test (a synthetic server) sends
/// 400 KiB of messages at once to an address that bounces them, with the edge's inbound rate at
/// 20 KiB/s (burst 20 KiB); bob (partner.test) talks to alice meanwhile. The edge stops
/// reading the flood's stream whenever flood.test is over its rate: every message still gets
/// through (nothing dropped), at about the rate, while bob's messages arrive promptly. The
/// episode is logged once and counted; the edge's pings to flood.test, whose answers wait
/// behind the flood, do not make it declare flood.test dead.
#[test]
fn a_flooding_partner_is_throttled_while_another_is_unaffected() {
    const RATE: usize = 20 * 1024;
    const FLOOD: usize = 400 * 1024;
    const BODY: usize = 2000;
    let subnet = 236;
    let metrics = SocketAddr::from((Lab::ip(subnet, 2), 9464));
    let mut opts = options_with_remote(subnet, "flood.test");
    // The edge pings its peers often: flood.test's answers wait behind its flood.
    opts.edge_federation_extra = "ping_interval_secs = 2\nping_timeout_secs = 3\n".into();
    opts.edge_extra = format!(
        "[limits]\ninbound_bytes_per_sec_per_domain = {RATE}\ninbound_burst_bytes_per_domain = {RATE}\n\n[metrics]\nlisten = \"{metrics}\"\n"
    );
    let lab = start(opts);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let flood = remote_server(&rt, subnet, "flood.test", true, None);
    // Like Prosody by default, the flooder does not ping us: its pings would wait behind its
    // own flood (and its writes may block that long).
    let mut quiet = (*flood.s2s.cfg()).clone();
    quiet.ping_interval = Duration::from_secs(600);
    quiet.ping_timeout = Duration::from_secs(600);
    flood.s2s.reconfigure(quiet);
    let message = |id: &str, body: &str| {
        format!(
            "<message from='flooder@flood.test' to='nobody@example.com' id='flood-{id}' type='chat'><body>{body}</body></message>"
        )
    };

    // First contact both ways, for both partners.
    rt.block_on(flood.send("example.com", message("warm-up", "hello")));
    assert!(
        causeway_testkit::wait_until(PATIENCE, || flood_bounces(&flood) == 1),
        "flood.test's first message never bounced back:\n{}",
        lab.diagnostics()
    );
    let mut alice = lab.client("alice").step(&lab, "alice connects");
    let mut bob = lab.client("bob").step(&lab, "bob connects");
    crate::support::warm_up(&lab, &mut alice, &mut bob);

    // The flood: 400 KiB queued at once.
    let body = "x".repeat(BODY);
    let one = message("0000", &body).len();
    let n = FLOOD / one;
    let started = std::time::Instant::now();
    rt.block_on(async {
        for i in 0..n {
            flood
                .send("example.com", message(&format!("{i:04}"), &body))
                .await;
        }
    });
    // Meanwhile bob -> alice, one message a second.
    let bob_jid = format!("bob@{PARTNER}");
    let mut latencies = Vec::new();
    let mut i = 0;
    while flood_bounces(&flood) < n + 1 && started.elapsed() < Duration::from_secs(90) {
        let text = format!("during the flood {i}");
        bob.send_message("alice@example.com", &text)
            .step(&lab, "send");
        let sent = std::time::Instant::now();
        alice
            .expect_message(&bob_jid, &text, PATIENCE)
            .step(&lab, "bob's message during the flood");
        latencies.push(sent.elapsed());
        i += 1;
        std::thread::sleep(Duration::from_millis(700));
    }
    let done =
        causeway_testkit::wait_until(Duration::from_secs(90), || flood_bounces(&flood) == n + 1);
    let took = started.elapsed();
    assert!(
        done,
        "only {} of {n} flood messages got through in {took:?}:\n{}",
        flood_bounces(&flood) - 1,
        lab.diagnostics()
    );
    let bytes = n * one;
    let at_rate = Duration::from_secs_f64(bytes as f64 / RATE as f64);
    eprintln!(
        "flood: {n} messages, {} KiB in {took:?} (the rate allows {at_rate:?}); bob's latencies: {latencies:?}",
        bytes / 1024
    );
    assert!(
        took >= at_rate.mul_f64(0.6),
        "the flood was not held to its rate: {} KiB in {took:?}",
        bytes / 1024
    );
    assert!(
        latencies.len() >= 5,
        "too few of bob's messages were measured during the flood: {latencies:?}"
    );
    assert!(
        latencies.iter().all(|l| *l < Duration::from_secs(2)),
        "bob's messages were slowed by flood.test's limit: {latencies:?}"
    );

    // One log line for the episode, the pauses counted, flood.test never declared dead.
    let log = edge_log(&lab);
    let episodes: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("inbound rate limit: this domain sends faster"))
        .collect();
    assert_eq!(episodes.len(), 1, "{episodes:#?}");
    assert!(episodes[0].contains("remote=flood.test"), "{}", episodes[0]);
    assert!(
        !log.lines()
            .any(|l| l.contains("peer is not answering") && l.contains("flood.test")),
        "flood.test was declared dead while we held it back:\n{log}"
    );
    let text = scrape(metrics);
    let pauses = text
        .lines()
        .find_map(|l| l.strip_prefix("causeway_inbound_throttled_total "))
        .and_then(|v| v.trim().parse::<u64>().ok());
    assert!(pauses.is_some_and(|p| p > 0), "metrics:\n{text}");
}
