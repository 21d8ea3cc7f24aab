//! Hostile input at the edge: spoofed addresses, malformed and oversized XML. Each is refused
//! and legitimate traffic beside it keeps flowing.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use causeway_s2s::{BoxFuture, Direction, Host, InboundStanza, OutboundStanza, S2s, S2sConfig};
use causeway_testkit::lab::{Lab, PARTNER};
use causeway_testkit::DnsRecord;
use causeway_xmpp::StanzaCondition;

use crate::support::{options, start, Step, PATIENCE};

/// A federated server of our own making: it authenticates honestly as evil.test (it answers
/// dialback for it), then writes whatever stanzas the test gives it.
struct EvilHost {
    edge: SocketAddr,
}

impl Host for EvilHost {
    fn serves(&self, domain: &str) -> bool {
        domain == "evil.test"
    }
    fn peer_allowed(&self, _remote: &str, _direction: Direction) -> bool {
        true
    }
    fn resolve<'a>(&'a self, _domain: &'a str) -> BoxFuture<'a, Result<Vec<SocketAddr>, String>> {
        let edge = self.edge;
        Box::pin(async move { Ok(vec![edge]) })
    }
    fn deliver(&self, _stanza: InboundStanza) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
    fn bounce(&self, _stanza: OutboundStanza, _condition: StanzaCondition) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

fn evil_server(subnet: u8, rt: &tokio::runtime::Runtime) -> Arc<S2s> {
    let cert = causeway_pki::self_signed(&["evil.test"], 30).expect("evil cert");
    let dir = causeway_testkit::temp_dir("evil-").expect("dir");
    let (c, k) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&c, &cert.cert_pem).expect("write cert");
    std::fs::write(&k, &cert.key_pem).expect("write key");
    let tls_server = causeway_pki::s2s_server_config(
        causeway_pki::load_certs(&c).expect("certs"),
        causeway_pki::load_key(&k).expect("key"),
    )
    .expect("tls server");
    let tls_client = causeway_pki::s2s_client_config_dialback().expect("tls client");
    let cfg = S2sConfig::new(
        "evil-dialback-secret-000".into(),
        Some(tls_server),
        tls_client,
    );
    let host = Arc::new(EvilHost {
        edge: SocketAddr::from((Lab::ip(subnet, 2), 5269)),
    });
    let s2s = S2s::new(cfg, host);
    let listen = SocketAddr::from((Lab::ip(subnet, 41), 5269));
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(listen))
        .expect("bind evil");
    rt.spawn(s2s.clone().serve(listener, std::future::pending()));
    s2s
}

fn evil_lab(subnet: u8) -> Lab {
    let mut opts = options(subnet);
    opts.extra_allow = vec!["evil.test".into()];
    opts.extra_dns = vec![DnsRecord::xmpp_server(
        "evil.test",
        &Lab::ip(subnet, 41).to_string(),
        5269,
    )];
    start(opts)
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

    let send = |xml: &str| {
        rt.block_on(evil.send(OutboundStanza {
            from_domain: "evil.test".into(),
            to_domain: "example.com".into(),
            payload: Bytes::from(xml.to_owned()),
        }))
    };
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
