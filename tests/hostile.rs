//! Hostile peers written here, where no real server misbehaves on purpose. Each is refused and
//! logged, and legitimate traffic beside it still flows.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use causeway_s2s::XmlConn;
use causeway_testkit::lab::{Lab, PARTNER};
use causeway_testkit::{ClientEvent, DnsRecord};
use causeway_xmpp::{dialback, ns, Event, Limits, StreamHeader};

use crate::support::{
    edge_log, legitimate_traffic_flows, options, options_with_remote, remote_server, start, Step,
    PATIENCE,
};

/// Open a stream from `from` to example.com at the edge; returns after the edge's features.
async fn open(edge: SocketAddr, from: &str, tls: bool) -> XmlConn {
    let tcp = tokio::net::TcpStream::connect(edge).await.expect("connect");
    let mut conn = XmlConn::new(tcp, Limits::default()).expect("conn");
    header(&mut conn, from).await;
    if tls {
        conn.send(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            .await
            .expect("starttls");
        let proceed = next_element(&mut conn).await;
        assert!(proceed.is("proceed", ns::TLS), "no proceed: {proceed:?}");
        let cfg = causeway_pki::s2s_client_config_dialback().expect("tls config");
        conn.connect_tls(cfg, "example.com").await.expect("TLS");
        header(&mut conn, from).await;
    }
    conn
}

async fn header(conn: &mut XmlConn, from: &str) {
    let h = StreamHeader {
        from: Some(from.into()),
        to: Some("example.com".into()),
        version: Some("1.0".into()),
        default_ns: ns::SERVER.into(),
        ..Default::default()
    };
    conn.send(h.to_xml().as_bytes()).await.expect("header");
    match conn.next_event().await.expect("edge header") {
        Event::StreamOpen(_) => {}
        other => panic!("expected a stream header, got {other:?}"),
    }
    let features = next_element(conn).await;
    assert!(
        features.is("features", ns::STREAM),
        "no features: {features:?}"
    );
}

async fn next_element(conn: &mut XmlConn) -> causeway_xmpp::Element {
    match tokio::time::timeout(PATIENCE, conn.next_event()).await {
        Ok(Ok(Event::Element(tl))) => tl.element,
        other => panic!("expected an element, got {other:?}"),
    }
}

/// Everything the edge sends until it closes, as one string.
async fn rest(conn: &mut XmlConn) -> String {
    let mut out = String::new();
    while let Ok(Ok(ev)) = tokio::time::timeout(PATIENCE, conn.next_event()).await {
        match ev {
            Event::Element(tl) => out.push_str(&tl.element.to_xml(ns::SERVER)),
            Event::StreamClose => {
                out.push_str("</stream:stream>");
                break;
            }
            Event::StreamOpen(_) => {}
        }
    }
    out
}

/// (a) A peer that skips STARTTLS against tls-required: its dialback is refused with
/// policy-violation. (b) A peer that forges partner.test's dialback key over TLS: the edge
/// asks partner.test's real server, which says invalid, and the peer is refused (its early
/// XEP-0198 `<enable/>` was refused too).
#[test]
fn plaintext_dialback_and_forged_keys_are_refused() {
    let subnet = 130;
    let lab = start(options(subnet));
    let edge = SocketAddr::from((Lab::ip(subnet, 2), 5269));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut conn = open(edge, PARTNER, false).await;
        let key = "0".repeat(64);
        let request = dialback::result_request(PARTNER, "example.com", &key);
        conn.send(request.to_xml(ns::SERVER).as_bytes())
            .await
            .expect("send");
        let answer = rest(&mut conn).await;
        assert!(
            answer.contains("policy-violation"),
            "(a) plaintext dialback: {answer}"
        );

        // XEP-0198 stream management is never enabled before authentication.
        let mut conn = open(edge, PARTNER, true).await;
        conn.send(b"<enable xmlns='urn:xmpp:sm:3'/>")
            .await
            .expect("send");
        let failed = next_element(&mut conn).await;
        assert!(
            failed.is("failed", ns::SM)
                && failed
                    .child("unexpected-request", ns::STANZA_ERRORS)
                    .is_some(),
            "stream management before authentication: {failed:?}"
        );
        conn.send(request.to_xml(ns::SERVER).as_bytes())
            .await
            .expect("send");
        let forged = format!(
            "<message from='bob@{PARTNER}' to='alice@example.com'><body>forged</body></message>"
        );
        conn.send(forged.as_bytes()).await.expect("send");
        let answer = rest(&mut conn).await;
        assert!(
            answer.contains("type=\"invalid\"")
                || answer.contains("type='invalid'")
                || answer.contains("invalid-from"),
            "(b) forged key: {answer}"
        );
    });
    legitimate_traffic_flows(&lab, "after the forgeries");
    let log = edge_log(&lab);
    assert!(
        log.contains("dialback on an unencrypted stream refused"),
        "(a) not logged"
    );
    assert!(
        log.contains("dialback key invalid") || log.contains("did not authenticate"),
        "(b) not logged:\n{log}"
    );
}

/// Start a synthetic evil.test presenting `cert` and have it send one message to alice.
/// Returns whether the message bounced (its session was refused).
fn evil_sends(lab: &Lab, subnet: u8, cert: Option<&causeway_testkit::CertFiles>, to: &str) -> bool {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let evil = remote_server(&rt, subnet, "evil.test", false, cert);
    let domain = to.rsplit('@').next().unwrap_or(to).to_owned();
    rt.block_on(evil.send(
        &domain,
        format!("<message from='m@evil.test' to='{to}'><body>evil</body></message>"),
    ));
    let bounced = causeway_testkit::wait_until(PATIENCE, || {
        evil.received
            .bounced
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1
    });
    let _ = lab;
    bounced
}

/// (c) With required client certificates, a peer whose trusted certificate does not name its
/// domain is refused (RFC 6125), whether it tries SASL EXTERNAL or dialback.
#[test]
fn a_certificate_that_does_not_name_the_domain_is_refused() {
    let subnet = 131;
    let mut opts = options_with_remote(subnet, "evil.test");
    opts.federation_ca = true;
    opts.edge_federation_extra = "require_client_certs = true".into();
    let lab = start(opts);
    let ca = lab.federation_ca.clone().expect("federation CA");
    let wrong_name = ca.issue(&["other.test"]).expect("cert");
    assert!(
        evil_sends(&lab, subnet, Some(&wrong_name), "alice@example.com"),
        "a certificate for other.test authenticated evil.test:\n{}",
        lab.diagnostics()
    );
    legitimate_traffic_flows(&lab, "beside a misnamed certificate");
    let log = edge_log(&lab);
    assert!(
        log.contains("certificate does not name"),
        "the refusal was not logged:\n{log}"
    );
}

/// (d) A peer presenting a revoked certificate, with the CA's CRL loaded, is refused.
#[test]
fn a_revoked_certificate_is_refused_when_the_crl_is_loaded() {
    let subnet = 132;
    let mut opts = options_with_remote(subnet, "evil.test");
    opts.federation_ca = true;
    opts.revoked_names = vec!["evil.test".into()];
    opts.edge_federation_extra = "require_client_certs = true".into();
    let lab = start(opts);
    let revoked = lab.revoked.first().cloned().expect("revoked cert");
    assert!(
        evil_sends(&lab, subnet, Some(&revoked), "alice@example.com"),
        "a revoked certificate got in:\n{}",
        lab.diagnostics()
    );
    legitimate_traffic_flows(&lab, "beside a revoked certificate");
    let log = edge_log(&lab);
    assert!(
        log.contains("peer certificate refused") && log.contains("Revoked"),
        "the refusal was not logged as a revocation:\n{log}"
    );
}

/// (f) A peer sending to a local domain that is not federated (no core announced it) is
/// refused with host-unknown; nothing reaches the inside.
#[test]
fn a_domain_that_is_not_federated_is_refused() {
    let subnet = 133;
    let lab = start(options_with_remote(subnet, "evil.test"));
    assert!(
        evil_sends(&lab, subnet, None, "boss@hr.example.com"),
        "a stream to hr.example.com was accepted:\n{}",
        lab.diagnostics()
    );
    legitimate_traffic_flows(&lab, "beside the unknown domain");
    let log = edge_log(&lab);
    assert!(
        log.contains("stream to a domain we do not serve"),
        "the refusal was not logged:\n{log}"
    );
    let _ = Duration::ZERO;
}

/// Count the TCP connections made to `addr`: a thread accepts them and holds them open, never
/// saying a word.
fn record_connections(addr: SocketAddr) -> Arc<AtomicUsize> {
    let listener = std::net::TcpListener::bind(addr).expect("bind the watched address");
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming().flatten() {
            seen.fetch_add(1, Ordering::SeqCst);
            held.push(conn);
        }
    });
    count
}

/// alice's message to `to` comes back with remote-server-not-found.
fn bounces_not_found(lab: &Lab, alice: &mut causeway_testkit::Client, to: &str) {
    alice.send_message(to, "anyone inside?").step(lab, "send");
    let bounced = alice
        .wait_for(PATIENCE, |ev| {
            matches!(ev, ClientEvent::Message { from, mtype, xml, .. }
                if from == to && mtype == "error" && xml.contains("remote-server-not-found"))
        })
        .step(lab, "wait for the bounce");
    assert!(
        bounced.is_some(),
        "no remote-server-not-found for {to}\n{}",
        lab.diagnostics()
    );
}

/// (g) DNS names addresses the edge must not reach from the DMZ: a loopback address outside
/// the networks it is allowed (here only the lab's own /24), and the IPv4-mapped IPv6 form of
/// another. The edge never connects there, neither to send (the stanza bounces with
/// remote-server-not-found) nor to verify a dialback key (it fails and the peer's message
/// bounces); each refusal is logged with the domain and the address, and partner.test, inside
/// the allowed network, still federates.
#[test]
fn dns_answers_naming_internal_addresses_are_never_connected_to() {
    let subnet = 217;
    let inside = SocketAddr::from(([127, subnet, 1, 77], 5269));
    let mapped_inside = SocketAddr::from(([127, subnet, 1, 78], 5269));
    let mapped = format!("::ffff:127.{subnet}.1.78");
    let seen = [inside, mapped_inside].map(|a| (a, record_connections(a)));
    let mut opts = options(subnet);
    opts.edge_federation_extra = format!("outbound_allow_networks = [\"127.{subnet}.0.0/24\"]");
    opts.extra_allow = vec![
        "inside.test".into(),
        "mapped.test".into(),
        "evil.test".into(),
    ];
    opts.extra_dns = vec![
        DnsRecord::xmpp_server("inside.test", &inside.ip().to_string(), 5269),
        DnsRecord::xmpp_server("mapped.test", "s2s.mapped.test", 5269),
        DnsRecord::Raw(format!("host-record=s2s.mapped.test,{mapped}")),
        // evil.test's server connects from .41 (allowed), but its DNS names the inside
        // address: verifying its dialback key would mean connecting there.
        DnsRecord::xmpp_server("evil.test", &inside.ip().to_string(), 5269),
    ];
    let lab = start(opts);
    let mut alice = lab.client("alice").step(&lab, "alice connects");
    bounces_not_found(&lab, &mut alice, "someone@inside.test");
    bounces_not_found(&lab, &mut alice, "someone@mapped.test");
    assert!(
        evil_sends(&lab, subnet, None, "alice@example.com"),
        "evil.test's key was accepted without asking its server:\n{}",
        lab.diagnostics()
    );
    legitimate_traffic_flows(&lab, "beside the internal addresses");
    for (addr, count) in &seen {
        assert_eq!(
            count.load(Ordering::SeqCst),
            0,
            "the edge connected to {addr}"
        );
    }
    let log = edge_log(&lab);
    for (domain, addr) in [
        ("inside.test", inside.to_string()),
        ("mapped.test", format!("[{mapped}]:5269")),
        ("evil.test", inside.to_string()),
    ] {
        assert!(
            log.lines()
                .any(|l| l.contains("refused by the outbound address filter")
                    && l.contains(domain)
                    && l.contains(&addr)),
            "the refusal of {addr} for {domain} was not logged:\n{log}"
        );
    }
}

/// (h) Dialback verifications are capped per remote domain: while a key of slow.test is being
/// verified (its server accepts and never answers), another fails at once with
/// remote-connection-failed, long before the failure delay, and without a second connection.
#[test]
fn verifications_over_the_cap_fail_at_once_without_traffic() {
    let subnet = 218;
    let mute = SocketAddr::from(([127, subnet, 0, 77], 5269));
    let connections = record_connections(mute);
    let mut opts = options(subnet);
    opts.edge_federation_extra = "max_verifications_per_domain = 1".into();
    opts.extra_allow = vec!["slow.test".into()];
    opts.extra_dns = vec![DnsRecord::xmpp_server(
        "slow.test",
        &mute.ip().to_string(),
        5269,
    )];
    let lab = start(opts);
    let edge = SocketAddr::from((Lab::ip(subnet, 2), 5269));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let key = "0".repeat(64);
        let request = dialback::result_request("slow.test", "example.com", &key).to_xml(ns::SERVER);
        let mut first = open(edge, "slow.test", true).await;
        first.send(request.as_bytes()).await.expect("send");
        let deadline = Instant::now() + PATIENCE;
        while connections.load(Ordering::SeqCst) == 0 {
            assert!(
                Instant::now() < deadline,
                "the edge never verified the first key"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut second = open(edge, "slow.test", true).await;
        let asked = Instant::now();
        second.send(request.as_bytes()).await.expect("send");
        let answer = next_element(&mut second).await;
        let xml = answer.to_xml(ns::SERVER);
        assert!(
            answer.is("result", ns::DIALBACK)
                && answer.attr("type") == Some("error")
                && xml.contains("remote-connection-failed"),
            "over the cap: {xml}"
        );
        assert!(
            asked.elapsed() < Duration::from_secs(5),
            "the refusal took {:?}",
            asked.elapsed()
        );
        drop(first);
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        connections.load(Ordering::SeqCst),
        1,
        "the refused verification connected"
    );
    let log = edge_log(&lab);
    assert!(
        log.contains("too many running") && log.contains("max_verifications_per_domain"),
        "the refusal was not logged:\n{log}"
    );
    legitimate_traffic_flows(&lab, "beside the capped verifications");
}

/// One SASL EXTERNAL attempt over STARTTLS presenting `cert`, as `from`, with `authzid`;
/// returns the edge's answer (`success`, or the failure's condition).
async fn sasl_external_as(
    edge: SocketAddr,
    cert: &causeway_testkit::CertFiles,
    from: &str,
    authzid: &str,
) -> String {
    use base64::Engine;
    let tcp = tokio::net::TcpStream::connect(edge).await.expect("connect");
    let mut conn = XmlConn::new(tcp, Limits::default()).expect("conn");
    header(&mut conn, from).await;
    conn.send(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        .await
        .expect("starttls");
    let proceed = next_element(&mut conn).await;
    assert!(proceed.is("proceed", ns::TLS), "no proceed: {proceed:?}");
    let certs = causeway_pki::load_certs(&cert.cert_pem).expect("cert");
    let key = causeway_pki::load_key(&cert.key_pem).expect("key");
    let cfg = causeway_pki::s2s_client_config_dialback_with_cert(certs, key).expect("tls");
    conn.connect_tls(cfg, "example.com").await.expect("TLS");
    header(&mut conn, from).await;
    let auth = format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>{}</auth>",
        base64::engine::general_purpose::STANDARD.encode(authzid)
    );
    conn.send(auth.as_bytes()).await.expect("auth");
    let answer = next_element(&mut conn).await;
    if answer.is("success", ns::SASL) {
        return "success".into();
    }
    assert!(answer.is("failure", ns::SASL), "unexpected: {answer:?}");
    let condition = answer.elements().next().map(|c| c.name.clone());
    condition.unwrap_or_default()
}

/// (g) SASL EXTERNAL's authorization identity must be the stream header's `from` (XEP-0178):
/// a peer whose certificate names both evil.test and partner.test (a hosting provider's,
/// say), on a stream from evil.test, cannot authorize as partner.test - refused with
/// `<not-authorized/>` and logged - while the same certificate with a matching authzid
/// succeeds.
#[test]
fn a_sasl_authzid_other_than_the_stream_from_is_refused() {
    let subnet = 232;
    let mut opts = options_with_remote(subnet, "evil.test");
    opts.federation_ca = true;
    let lab = start(opts);
    let ca = lab.federation_ca.clone().expect("federation CA");
    let cert = ca.issue(&["evil.test", PARTNER]).expect("cert");
    let edge = SocketAddr::from((Lab::ip(subnet, 2), 5269));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mismatched = rt.block_on(sasl_external_as(edge, &cert, "evil.test", PARTNER));
    assert_eq!(mismatched, "not-authorized", "{}", lab.diagnostics());
    let matching = rt.block_on(sasl_external_as(edge, &cert, "evil.test", "evil.test"));
    assert_eq!(matching, "success", "{}", lab.diagnostics());
    let log = edge_log(&lab);
    assert!(
        log.lines().any(|l| l.contains("SASL EXTERNAL refused")
            && l.contains("authzid does not match the stream header's from")),
        "the refusal was not logged:\n{log}"
    );
    legitimate_traffic_flows(&lab, "beside a mismatched authzid");
}

/// (h) One domain normaliser (UTS-46): a deny rule written `EXÄMPLE.test.` refuses the domain
/// however a peer spells it - as the A-label, in lower case, or with an ideographic full stop -
/// and the log names it in its one (A-label) form. Federation with others goes on.
#[test]
fn an_internationalised_deny_rule_holds_against_every_spelling() {
    let subnet = 239;
    let mut opts = options(subnet);
    opts.edge_policy = Some(format!(
        "privacy_mode = \"deny-list\"\ndeny = [\"EXÄMPLE.test.\"]\nallow = [\"{PARTNER}\"]"
    ));
    let lab = start(opts);
    let edge = SocketAddr::from((Lab::ip(subnet, 2), 5269));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    for spelling in ["xn--exmple-cua.test", "exämple.test", "exämple\u{3002}test"] {
        let answer = rt.block_on(async {
            let mut conn = open(edge, spelling, true).await;
            let request = dialback::result_request(spelling, "example.com", &"0".repeat(64));
            conn.send(request.to_xml(ns::SERVER).as_bytes())
                .await
                .expect("send");
            rest(&mut conn).await
        });
        assert!(
            answer.contains("policy-violation"),
            "{spelling:?} was not refused by the deny rule: {answer}"
        );
    }
    let log = edge_log(&lab);
    let refusals = log
        .lines()
        .filter(|l| {
            l.contains("domain refused by the federation policy")
                && l.contains("remote=xn--exmple-cua.test")
        })
        .count();
    assert_eq!(
        refusals, 3,
        "each spelling refused under its A-label:\n{log}"
    );
    legitimate_traffic_flows(&lab, "beside the denied IDN");
}

/// (i) Canonical XML out: an authenticated peer's stanza whose namespace URI carries a `}`
/// (which would let the rest of the URI pass for an attribute name in what is forwarded) ends
/// its stream with `<not-well-formed/>` and never reaches the inside; a stanza full of
/// characters that need escaping arrives at alice exactly as sent.
#[test]
fn an_injected_namespace_is_refused_and_escaped_text_arrives_intact() {
    let subnet = 247;
    let lab = start(options_with_remote(subnet, "evil.test"));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let evil = remote_server(&rt, subnet, "evil.test", false, None);
    let mut alice = lab.client("alice").step(&lab, "alice connects");
    rt.block_on(evil.send(
        "example.com",
        "<message from='m@evil.test' to='alice@example.com' type='chat'><body>hello</body></message>",
    ));
    alice
        .expect_message("m@evil.test", "hello", PATIENCE)
        .step(&lab, "evil.test authenticated");

    rt.block_on(evil.send(
        "example.com",
        "<message from='m@evil.test' to='alice@example.com' type='chat' xmlns:p='urn:x}onload=&apos;1&apos; y' p:z='1'><body>injected</body></message>",
    ));
    let refused = causeway_testkit::wait_until(PATIENCE, || {
        edge_log(&lab).contains("not-well-formed") || edge_log(&lab).contains("invalid namespace")
    });
    assert!(
        refused,
        "the injection was not refused:\n{}",
        edge_log(&lab)
    );

    // Text and attribute values that need escaping survive the edge's re-serialisation.
    let tricky = "<b>&amp; \"quoted\" 'single' ]]> &lt;</b>";
    let escaped = tricky
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;");
    rt.block_on(evil.send(
        "example.com",
        format!(
            "<message from='m@evil.test' to='alice@example.com' type='chat' id='a&apos;b&quot;c&lt;'><body>{escaped}</body></message>"
        ),
    ));
    alice
        .expect_message("m@evil.test", tricky, PATIENCE * 2)
        .step(&lab, "the escaped message arrives intact");
    let injected = alice
        .wait_for(
            Duration::from_secs(2),
            |ev| matches!(ev, ClientEvent::Message { body: Some(b), .. } if b == "injected"),
        )
        .unwrap_or(None);
    assert!(
        injected.is_none(),
        "the injected stanza reached alice: {injected:?}"
    );
}
