//! Arbitrary event sequences into the outbound negotiation machine, for sessions and
//! verification connections: connections up, headers, features and answers (from a vocabulary
//! of what peers send, and arbitrary bytes through the framer), TLS outcomes, writes, ping
//! answers and the passing of time. Checked after every event: no panic; nothing after the
//! end; a session authenticated only after the peer said so (`<success/>` or a valid
//! `db:result`), never without TLS when TLS is required nor without a valid certificate when
//! one is required; a verdict only on a verification connection; no negotiation past its
//! authentication deadline; every passed deadline acted on; memory within a small multiple of
//! the input.

#![no_main]

use std::time::{Duration, Instant};

use causeway_fuzz::{cert_status, deadlines, first_element, limits, Budget, Input};
use causeway_xmpp::negotiation::outbound::{Action, Env, Outbound, Purpose, Settings};
use causeway_xmpp::negotiation::{CertStatus, TlsMode};
use causeway_xmpp::{Element, StreamHeader};
use libfuzzer_sys::fuzz_target;

struct World {
    covers: bool,
    held_back: bool,
}

impl Env for World {
    fn cert_covers(&self, _domain: &str) -> bool {
        self.covers
    }
    fn inbound_held_back(&self) -> bool {
        self.held_back
    }
}

fn settings(b: u8) -> Settings {
    Settings {
        tls: [TlsMode::Required, TlsMode::Optional, TlsMode::Disabled][usize::from(b % 3)],
        sasl_external: b & 4 != 0,
        presents_client_cert: b & 8 != 0,
        require_peer_certs: b & 16 != 0,
        dialback_secret: "fuzz-secret".into(),
        deadlines: deadlines(),
        keepalive: Duration::from_secs(60),
        ping_interval: Duration::from_secs(120),
        ping_timeout: Duration::from_secs(30),
    }
}

/// What a peer says during negotiation, chosen by the input.
fn known_element(input: &mut Input) -> String {
    match input.byte() % 14 {
        0 => {
            let b = input.byte();
            let mut f = String::from("<stream:features>");
            if b & 1 != 0 {
                f.push_str("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'>");
                if b & 2 != 0 {
                    f.push_str("<required/>");
                }
                f.push_str("</starttls>");
            }
            if b & 4 != 0 {
                f.push_str("<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>EXTERNAL</mechanism></mechanisms>");
            }
            if b & 8 != 0 {
                f.push_str("<dialback xmlns='urn:xmpp:features:dialback'/>");
            }
            f.push_str("</stream:features>");
            f
        }
        1 => "<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>".into(),
        2 => "<failure xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>".into(),
        3 => "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>".into(),
        4 => "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><not-authorized/></failure>".into(),
        5 => "<db:result from='remote.test' to='local.test' type='valid'/>".into(),
        6 => "<db:result from='remote.test' to='local.test' type='invalid'/>".into(),
        7 => "<db:result from='remote.test' to='local.test' type='error'><error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></db:result>".into(),
        8 => "<db:verify from='remote.test' to='local.test' id='sid' type='valid'/>".into(),
        9 => "<db:verify from='remote.test' to='local.test' id='sid' type='invalid'/>".into(),
        10 => "<stream:error><host-unknown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>".into(),
        11 => "<iq type='result' id='p' from='remote.test' to='local.test'/>".into(),
        12 => "<message from='a@remote.test' to='b@local.test'/>".into(),
        _ => "<foo xmlns='urn:example'/>".into(),
    }
}

/// Whether `el` is the peer saying we are authenticated.
fn says_authenticated(el: &Element) -> bool {
    el.is("success", "urn:ietf:params:xml:ns:xmpp-sasl")
        || (el.is("result", "jabber:server:dialback") && el.attr("type") == Some("valid"))
}

fuzz_target!(|data: &[u8]| {
    let budget = Budget::new(64, 256 * 1024);
    let mut input = Input(data);
    let first = input.byte();
    let s = settings(first);
    let (tls_mode, require_certs) = (s.tls, s.require_peer_certs);
    let verify = first & 32 != 0;
    let purpose = if verify {
        Purpose::Verify {
            stream_id: "sid".into(),
            key: "key".into(),
        }
    } else {
        Purpose::Session
    };
    let mut world = World {
        covers: first & 64 != 0,
        held_back: first & 128 != 0,
    };
    let t0 = Instant::now();
    let auth_by = t0 + Duration::from_secs(30);
    let mut now = t0;
    let mut m = Outbound::new(s, "local.test", "remote.test", purpose, t0);
    let peer = std::net::SocketAddr::from(([127, 0, 0, 1], 5269));
    let mut ended = false;
    let mut authenticated = false;
    // TLS is up, and with what certificate.
    let mut tls: Option<CertStatus> = None;
    // The peer has said yes (`<success/>` or a valid `db:result`) at some point.
    let mut peer_said_yes = false;
    let mut steps = 0;
    while !input.0.is_empty() && steps < 512 {
        steps += 1;
        // A connection or handshake reported this step: it is the machine's TLS state once
        // the machine takes it (it answers with our stream header).
        let mut proposed_tls: Option<Option<CertStatus>> = None;
        match input.byte() % 12 {
            0 => {
                let b = input.byte();
                let direct = (b & 1 != 0).then(|| cert_status(b >> 1));
                proposed_tls = Some(direct.clone());
                m.started(peer, direct);
            }
            1 => {
                let b = input.byte();
                let h = StreamHeader {
                    from: Some("remote.test".into()),
                    to: Some("local.test".into()),
                    id: (b & 1 != 0).then(|| "sid".to_owned()),
                    version: (b & 2 != 0).then(|| "1.0".to_owned()),
                    default_ns: "jabber:server".into(),
                    ..Default::default()
                };
                m.header(now, &h, &world);
            }
            2..=5 => {
                let xml = known_element(&mut input);
                if let Some(el) = first_element(xml.as_bytes(), limits()).map(|tl| tl.element) {
                    peer_said_yes |= says_authenticated(&el);
                    m.element(now, &el, &world);
                }
            }
            6 => {
                let n = usize::from(input.byte());
                if let Some(el) = first_element(input.take(n), limits()).map(|tl| tl.element) {
                    peer_said_yes |= says_authenticated(&el);
                    m.element(now, &el, &world);
                }
            }
            7 => match input.byte() % 5 {
                0 => m.peer_closed(),
                1 => m.frame_error(&causeway_xmpp::FrameError::NotWellFormed("fuzz".into())),
                2 => m.connection_failed("fuzz".into()),
                3 => m.close(),
                _ => {
                    world.covers = !world.covers;
                    let b = input.byte();
                    m.reconfigured(
                        settings(b),
                        b & 32 != 0,
                        (b & 64 != 0).then(|| cert_status(b)),
                        &world,
                    );
                }
            },
            8 => {
                let b = input.byte();
                if b & 1 == 0 {
                    let c = cert_status(b >> 1);
                    proposed_tls = Some(Some(c.clone()));
                    m.tls_established(c);
                } else {
                    m.tls_failed("fuzz".into());
                }
            }
            9 => m.written(now),
            10 => m.pong(now),
            _ => {
                now += Duration::from_millis(u64::from(input.byte()) * 500);
                if let Some(due) = m.poll_timeout() {
                    if now >= due {
                        m.timeout(now, &world);
                        let ahead = m.poll_timeout();
                        assert!(
                            ahead.is_none_or(|t| t > now) || m.is_done(),
                            "deadline {due:?} passed at {now:?} and ignored"
                        );
                    }
                }
            }
        }
        while let Some(action) = m.poll_action() {
            assert!(!ended, "an action after the end: {action:?}");
            if let (Action::Send(_), Some(t)) = (&action, proposed_tls.take()) {
                tls = t;
            }
            match action {
                Action::Authenticated { .. } => {
                    assert!(!verify, "a verification connection authenticated");
                    assert!(!authenticated, "authenticated twice");
                    assert!(peer_said_yes, "authenticated without the peer saying so");
                    assert!(
                        tls_mode != TlsMode::Required || tls.is_some(),
                        "authenticated without TLS while TLS is required"
                    );
                    assert!(
                        !require_certs || tls == Some(CertStatus::Valid),
                        "authenticated without a valid certificate while one is required"
                    );
                    authenticated = true;
                }
                Action::Verified(_) => {
                    assert!(verify, "a verdict on a session");
                    ended = true;
                }
                Action::Failed(_) | Action::Ended(_) | Action::PeerDead(_) => ended = true,
                _ => {}
            }
        }
        if !ended && !authenticated {
            if let Some(due) = m.poll_timeout() {
                assert!(due <= auth_by, "negotiating beyond the deadline: {due:?}");
            }
        }
    }
    budget.check(data.len(), "outbound negotiation");
});
