//! Hostile input at the edge: spoofed addresses, malformed and oversized XML. Each is refused
//! and legitimate traffic beside it keeps flowing.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use causeway_testkit::lab::{Lab, PARTNER};
use causeway_testkit::synthetic::SyntheticServer;

use crate::support::{options, options_with_remote, remote_server, start, Step, PATIENCE};

/// A federated server of our own making: it authenticates honestly as evil.test (it answers
/// dialback for it), then writes whatever stanzas the test gives it.
fn evil_server(subnet: u8, rt: &tokio::runtime::Runtime) -> SyntheticServer {
    remote_server(rt, subnet, "evil.test", false, None)
}

fn evil_lab(subnet: u8) -> Lab {
    start(options_with_remote(subnet, "evil.test"))
}

/// A peer authenticated as evil.test sends one honest stanza and one claiming to come from
/// partner.test: the first reaches alice, the second never does, and bob still gets through.
#[test]
fn a_stanza_with_a_spoofed_from_is_not_delivered() {
    let subnet = 110;
    let lab = evil_lab(subnet);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let evil = evil_server(subnet, &rt);
    let mut alice = lab.client("alice").step(&lab, "alice connects");
    let mut bob = lab.client("bob").step(&lab, "bob connects");

    let send = |xml: &str| rt.block_on(evil.send("example.com", xml.to_owned()));
    send("<message from='mallory@evil.test' to='alice@example.com' type='chat'><body>honest</body></message>");
    alice
        .expect_message("mallory@evil.test", "honest", PATIENCE)
        .step(&lab, "the honest stanza from an authenticated peer arrives");
    send("<message from='ceo@partner.test' to='alice@example.com' type='chat'><body>spoofed</body></message>");

    bob.send_message("alice@example.com", "genuine bob")
        .step(&lab, "send");
    alice
        .expect_message(&format!("bob@{PARTNER}"), "genuine bob", PATIENCE)
        .step(&lab, "legitimate traffic beside the spoof");
    let spoofed = alice.collect_messages("ceo@partner.test", 1, Duration::from_secs(2));
    assert!(
        spoofed.is_err(),
        "the spoofed stanza was delivered: {spoofed:?}"
    );
    let edge_log = std::fs::read_to_string(lab.dir.path().join("edge.log")).unwrap_or_default();
    assert!(
        edge_log.contains("did not authenticate: refused"),
        "the refusal was not logged:\n{}",
        lab.diagnostics()
    );
}

/// Open a plaintext s2s stream to the edge, send `payload`, and return what the edge said
/// until it closed the connection.
fn raw_exchange(edge: SocketAddr, payload: &[u8]) -> String {
    let mut s = TcpStream::connect(edge).expect("connect to edge");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let header = "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
        xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' \
        to='example.com' from='evil.test' version='1.0'>";
    s.write_all(header.as_bytes()).expect("header");
    // Large payloads may be cut short when the edge closes early; that is fine.
    let _ = s.write_all(payload);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Malformed XML, a DTD and an oversized stanza each get the RFC 6120 stream error, and the
/// edge keeps serving legitimate federation.
#[test]
fn bad_xml_gets_the_right_stream_error_and_nothing_is_lost() {
    let subnet = 111;
    let lab = start(options(subnet));
    let edge = SocketAddr::from((Lab::ip(subnet, 2), 5269));
    let mut alice = lab.client("alice").step(&lab, "alice connects");
    let mut bob = lab.client("bob").step(&lab, "bob connects");
    bob.send_message("alice@example.com", "before")
        .step(&lab, "send");
    alice
        .expect_message(&format!("bob@{PARTNER}"), "before", PATIENCE)
        .step(&lab, "before the attacks");

    let cases: [(&str, Vec<u8>, &str); 4] = [
        (
            "malformed",
            b"<message to='alice@example.com'><body>x</bod></message>".to_vec(),
            "not-well-formed",
        ),
        (
            "dtd",
            b"<!DOCTYPE lol [<!ENTITY a 'aaaa'>]><message/>".to_vec(),
            "restricted-xml",
        ),
        (
            "entity",
            b"<message to='alice@example.com'>&lol;</message>".to_vec(),
            "restricted-xml",
        ),
        (
            "oversized",
            format!(
                "<message to='alice@example.com'><body>{}</body></message>",
                "A".repeat(300_000)
            )
            .into_bytes(),
            "policy-violation",
        ),
    ];
    for (name, payload, condition) in cases {
        let answer = raw_exchange(edge, &payload);
        assert!(
            answer.contains(condition) && answer.contains("</stream:stream>"),
            "{name}: expected a {condition} stream error, got: {answer}"
        );
    }
    let unauthenticated = raw_exchange(
        edge,
        b"<message from='bob@partner.test' to='alice@example.com'><body>no auth</body></message>",
    );
    assert!(
        unauthenticated.contains("invalid-from"),
        "an unauthenticated stanza must be refused: {unauthenticated}"
    );

    bob.send_message("alice@example.com", "after")
        .step(&lab, "send");
    alice
        .expect_message(&format!("bob@{PARTNER}"), "after", PATIENCE)
        .step(&lab, "federation still works after the attacks");
    let leaked = alice.collect_messages(&format!("bob@{PARTNER}"), 1, Duration::from_secs(1));
    assert!(
        leaked.is_err(),
        "an attack stanza reached alice: {leaked:?}"
    );
}

/// On the inside, core only federates for the local domains, and only when the node that
/// serves them vouches for the dialback key: an intruder claiming another domain is refused,
/// and one claiming example.com (without being its server) never authenticates.
#[test]
fn core_refuses_intruders_on_the_internal_network() {
    let subnet = 112;
    let lab = start(options(subnet));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let core = SocketAddr::from((Lab::ip(subnet, 3), 5269));
    let mut alice = lab.client("alice").step(&lab, "alice connects");
    let mut bob = lab.client("bob").step(&lab, "bob connects");

    // Claims a domain core does not serve locally.
    let intruder = rt
        .block_on(SyntheticServer::start(
            "intruder.test",
            SocketAddr::from((Lab::ip(subnet, 42), 5269)),
            core,
            false,
        ))
        .expect("intruder");
    rt.block_on(intruder.send(
        PARTNER,
        "<message from='x@intruder.test' to='bob@partner.test'><body>intruder</body></message>",
    ));
    // Claims example.com, but core verifies the key with the real example.com server.
    let impostor = rt
        .block_on(SyntheticServer::start(
            "example.com",
            SocketAddr::from((Lab::ip(subnet, 43), 5269)),
            core,
            false,
        ))
        .expect("impostor");
    rt.block_on(impostor.send(
        PARTNER,
        "<message from='alice@example.com' to='bob@partner.test'><body>impostor</body></message>",
    ));
    let bounced = |s: &SyntheticServer| {
        s.received
            .bounced
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let refused = causeway_testkit::wait_until(PATIENCE, || {
        bounced(&intruder) == 1 && bounced(&impostor) == 1
    });
    assert!(
        refused,
        "intruder bounced {}, impostor bounced {}\n{}",
        bounced(&intruder),
        bounced(&impostor),
        lab.diagnostics()
    );

    alice
        .send_message(&format!("bob@{PARTNER}"), "the real alice")
        .step(&lab, "send");
    bob.expect_message("alice@example.com", "the real alice", PATIENCE)
        .step(&lab, "the real node still federates");
    let leaked = bob.collect_messages("alice@example.com", 1, Duration::from_secs(1));
    assert!(leaked.is_err(), "bob got an impostor's message: {leaked:?}");
    let leaked = bob.collect_messages("x@intruder.test", 1, Duration::from_secs(1));
    assert!(
        leaked.is_err(),
        "bob got the intruder's message: {leaked:?}"
    );
}
