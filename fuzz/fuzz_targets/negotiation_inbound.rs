//! Arbitrary event sequences into the inbound negotiation machine: headers, elements (from a
//! vocabulary of the elements negotiation knows, and arbitrary bytes through the framer), TLS
//! outcomes, dialback verdicts, reloads and the passing of time. Checked after every event:
//! no panic; nothing after a close; a stanza delivered only for a pair the stream
//! authenticated; an unauthenticated stream never outlives its authentication deadline; every
//! deadline, once passed and reported, is acted on (the machine closes or looks further
//! ahead); memory stays within a small multiple of the input.

#![no_main]

use std::time::{Duration, Instant};

use base64::Engine;
use causeway_fuzz::{cert_status, deadlines, first_element, limits, Budget, Input};
use causeway_xmpp::negotiation::inbound::{Action, Env, Inbound, Settings};
use causeway_xmpp::negotiation::{TlsMode, Verdict};
use causeway_xmpp::StreamHeader;
use libfuzzer_sys::fuzz_target;

const DOMAINS: [&str; 5] = [
    "local.test",
    "remote.test",
    "other.test",
    "Remote.Test.",
    "a_b",
];

struct World {
    served: u8,
    allowed: u8,
    covers: u8,
    full: bool,
    ids: u32,
}

fn bit(mask: u8, domain: &str) -> bool {
    DOMAINS
        .iter()
        .position(|d| *d == domain)
        .is_some_and(|i| mask & (1 << i) != 0)
}

impl Env for World {
    fn serves(&self, domain: &str) -> bool {
        bit(self.served, domain)
    }
    fn peer_allowed(&self, remote: &str) -> bool {
        bit(self.allowed, remote)
    }
    fn cert_covers(&self, domain: &str) -> bool {
        bit(self.covers, domain)
    }
    fn count_stream(&mut self, _remote: &str) -> bool {
        !self.full
    }
    fn new_stream_id(&mut self) -> String {
        self.ids += 1;
        format!("id{}", self.ids)
    }
}

fn settings(b: u8) -> Settings {
    Settings {
        tls: [TlsMode::Required, TlsMode::Optional, TlsMode::Disabled][usize::from(b % 3)],
        tls_available: b & 4 != 0,
        sasl_external: b & 8 != 0,
        stream_management: b & 16 != 0,
        require_peer_certs: b & 32 != 0,
        dialback_secret: "fuzz-secret".into(),
        dialback_previous: (b & 64 != 0).then(|| "fuzz-previous-secret".into()),
        deadlines: deadlines(),
    }
}

/// One element negotiation knows, with addresses and contents chosen by the input.
fn known_element(input: &mut Input) -> String {
    let a = input.pick(&DOMAINS);
    let b = input.pick(&DOMAINS);
    match input.byte() % 12 {
        0 => "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>".into(),
        1 => {
            let authzid = match input.byte() % 3 {
                0 => "=".to_owned(),
                1 => base64::engine::general_purpose::STANDARD.encode(a),
                _ => "!!".to_owned(),
            };
            format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>{authzid}</auth>")
        }
        2 => format!("<db:result from='{a}' to='{b}'>key</db:result>"),
        3 => format!("<db:verify from='{a}' to='{b}' id='id1'>key</db:verify>"),
        4 => format!("<message from='x@{a}' to='y@{b}'><body>hi</body></message>"),
        5 => format!("<iq type='result' id='p1' from='{a}' to='{b}'/>"),
        6 => "<enable xmlns='urn:xmpp:sm:3'/>".into(),
        7 => "<r xmlns='urn:xmpp:sm:3'/>".into(),
        8 => "<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>"
            .into(),
        9 => format!("<presence from='{a}' to='{b}'/>"),
        10 => format!("<db:result from='{a}' to='{b}' type='valid'/>"),
        _ => "<foo xmlns='urn:example'/>".into(),
    }
}

fuzz_target!(|data: &[u8]| {
    let budget = Budget::new(64, 256 * 1024);
    let mut input = Input(data);
    let first = input.byte();
    let mut world = World {
        served: input.byte(),
        allowed: input.byte(),
        covers: input.byte(),
        full: first & 128 != 0,
        ids: 0,
    };
    let t0 = Instant::now();
    let auth_by = t0 + Duration::from_secs(30);
    let mut now = t0;
    let tls = (first & 64 != 0).then(|| cert_status(first));
    let mut m = Inbound::new(settings(first), t0, tls, "e".into());
    let mut closed = false;
    let mut steps = 0;
    while !input.0.is_empty() && steps < 512 {
        steps += 1;
        match input.byte() % 11 {
            0 => {
                let h = StreamHeader {
                    from: (input.byte() % 4 != 0).then(|| input.pick(&DOMAINS).to_owned()),
                    to: (input.byte() % 4 != 0).then(|| input.pick(&DOMAINS).to_owned()),
                    version: (input.byte() % 4 != 0).then(|| "1.0".to_owned()),
                    default_ns: input.pick(&["jabber:server", "jabber:client", ""]).into(),
                    ..Default::default()
                };
                m.header(&h, &mut world);
            }
            1 | 2 | 3 => {
                let xml = known_element(&mut input);
                if let Some(tl) = first_element(xml.as_bytes(), limits()) {
                    m.element(now, tl, &mut world);
                }
            }
            4 => {
                let n = usize::from(input.byte());
                if let Some(tl) = first_element(input.take(n), limits()) {
                    m.element(now, tl, &mut world);
                }
            }
            5 => m.peer_closed(),
            6 => {
                let b = input.byte();
                if b % 2 == 0 {
                    m.frame_error(causeway_xmpp::FrameError::NotWellFormed("fuzz".into()));
                } else {
                    // A drain: system-shutdown, then read until the peer closes or `by`.
                    m.shutdown(now + Duration::from_millis(u64::from(b) * 100));
                }
            }
            7 => {
                if input.byte() % 2 == 0 {
                    m.tls_established(now, cert_status(input.byte()));
                } else {
                    m.tls_failed("fuzz".into());
                }
            }
            8 => {
                let remote = input.pick(&DOMAINS).to_owned();
                let local = input.pick(&DOMAINS).to_owned();
                let verdict = match input.byte() % 3 {
                    0 => Verdict::Valid,
                    1 => Verdict::Invalid,
                    _ => Verdict::Failed("fuzz".into()),
                };
                m.verdict(remote, local, verdict, &mut world);
            }
            9 => {
                world.allowed = input.byte();
                let b = input.byte();
                m.reconfigured(settings(b), (b & 64 != 0).then(|| cert_status(b)), &world);
            }
            _ => {
                now += Duration::from_millis(u64::from(input.byte()) * 250);
                if let Some(due) = m.poll_timeout() {
                    if now >= due {
                        m.timeout(now);
                        // A deadline reported and passed is acted on.
                        let ahead = m.poll_timeout();
                        assert!(
                            ahead.is_none_or(|t| t > now) || m.is_closed(),
                            "deadline {due:?} passed at {now:?} and ignored"
                        );
                    }
                }
            }
        }
        let pairs: Vec<(String, String)> = m.pairs().cloned().collect();
        while let Some(action) = m.poll_action() {
            assert!(!closed, "an action after the close: {action:?}");
            match action {
                Action::Close(_) => closed = true,
                Action::Deliver {
                    from_domain,
                    to_domain,
                    ..
                } => assert!(
                    pairs.contains(&(from_domain.clone(), to_domain.clone())),
                    "delivered for a pair not authenticated: {from_domain} -> {to_domain}"
                ),
                _ => {}
            }
        }
        assert_eq!(closed, m.is_closed());
        if !closed && m.pairs().next().is_none() {
            let due = m.poll_timeout().expect("an open stream has a deadline");
            assert!(
                due <= auth_by,
                "unauthenticated beyond the deadline: {due:?}"
            );
        }
    }
    budget.check(data.len(), "inbound negotiation");
});
