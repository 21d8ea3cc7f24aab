//! Federation security modes against real Prosody and ejabberd: TLS required/optional/off,
//! SASL EXTERNAL with trusted certificates, required client certificates.

use causeway_testkit::lab::{Lab, PARTNER, PARTNER2};

use crate::support::{edge_log, options, start, Step, PATIENCE};

/// Edge and partner.test trust one CA: they authenticate each other with SASL EXTERNAL both
/// ways instead of dialback, and messages flow.
#[test]
fn sasl_external_when_certificates_are_trusted() {
    let mut opts = options(120);
    opts.federation_ca = true;
    let lab = start(opts);
    let mut alice = lab.client("alice").step(&lab, "alice connects");
    let mut bob = lab.client("bob").step(&lab, "bob connects");
    alice
        .send_message(&format!("bob@{PARTNER}"), "over EXTERNAL")
        .step(&lab, "send");
    bob.expect_message("alice@example.com", "over EXTERNAL", PATIENCE)
        .step(&lab, "bob receives");
    bob.send_message("alice@example.com", "back over EXTERNAL")
        .step(&lab, "send");
    alice
        .expect_message(&format!("bob@{PARTNER}"), "back over EXTERNAL", PATIENCE)
        .step(&lab, "alice receives");
    let log = edge_log(&lab);
    assert!(
        log.contains("authenticated (SASL EXTERNAL)"),
        "partner.test did not authenticate to the edge with SASL EXTERNAL:\n{}",
        lab.diagnostics()
    );
    assert!(
        log.contains("auth=\"SASL EXTERNAL\"") || log.contains("auth=SASL EXTERNAL"),
        "the edge did not authenticate to partner.test with SASL EXTERNAL:\n{}\n{}",
        lab.partner.s2s_show(),
        lab.diagnostics()
    );
}

/// With `require_client_certs`, a peer whose certificate the edge trusts gets in; ejabberd
/// with a self-signed certificate is refused, and the refusal is logged.
#[test]
fn required_client_certificates_refuse_a_self_signed_peer() {
    let mut opts = options(121);
    opts.federation_ca = true;
    opts.ejabberd = true;
    opts.ejabberd_trusted = false;
    opts.edge_federation_extra = "require_client_certs = true".into();
    let lab = start(opts);
    let mut alice = lab.client("alice").step(&lab, "alice connects");
    let mut bob = lab.client("bob").step(&lab, "bob connects");
    let mut carol = lab.client("carol").step(&lab, "carol connects");
    bob.send_message("alice@example.com", "trusted")
        .step(&lab, "send");
    alice
        .expect_message(&format!("bob@{PARTNER}"), "trusted", PATIENCE)
        .step(&lab, "a trusted peer gets in");
    carol
        .send_message("alice@example.com", "self-signed")
        .step(&lab, "send");
    let got = alice.collect_messages(
        &format!("carol@{PARTNER2}"),
        1,
        std::time::Duration::from_secs(5),
    );
    assert!(got.is_err(), "a self-signed peer got through: {got:?}");
    assert!(
        edge_log(&lab).contains("peer certificate refused"),
        "the refusal was not logged:\n{}",
        lab.diagnostics()
    );
}

fn expect_bounce(lab: &Lab, alice: &mut causeway_testkit::Client, to: &str, condition: &str) {
    expect_bounce_within(lab, alice, to, &[condition], PATIENCE);
}

/// alice sends to `to` and gets an error message back carrying one of `conditions`.
fn expect_bounce_within(
    lab: &Lab,
    alice: &mut causeway_testkit::Client,
    to: &str,
    conditions: &[&str],
    patience: std::time::Duration,
) {
    alice
        .send_message(to, "will this bounce?")
        .step(lab, "send");
    let bounced = alice
        .wait_for(patience, |ev| {
            matches!(ev, causeway_testkit::ClientEvent::Message { from, mtype, xml, .. }
                if from == to && mtype == "error" && conditions.iter().any(|c| xml.contains(c)))
        })
        .step(lab, "wait for the bounce");
    assert!(
        bounced.is_some(),
        "no {conditions:?} error for {to}\n{}",
        lab.diagnostics()
    );
}

/// `no-tls` federates in plaintext with a Prosody that allows it, and fails (the sender gets
/// an error) with a Prosody that requires encryption, its default.
#[test]
fn no_tls_mode_with_matching_and_mismatching_prosody() {
    let mut opts = options(122);
    opts.edge_federation_extra = "security_mode = \"no-tls\"".into();
    opts.partner_extra_global = "s2s_require_encryption = false".into();
    let lab = start(opts);
    let mut alice = lab.client("alice").step(&lab, "alice connects");
    let mut bob = lab.client("bob").step(&lab, "bob connects");
    alice
        .send_message(&format!("bob@{PARTNER}"), "in the clear")
        .step(&lab, "send");
    bob.expect_message("alice@example.com", "in the clear", PATIENCE)
        .step(&lab, "a->b");
    bob.send_message("alice@example.com", "clear back")
        .step(&lab, "send");
    alice
        .expect_message(&format!("bob@{PARTNER}"), "clear back", PATIENCE)
        .step(&lab, "b->a");
    let log = edge_log(&lab);
    assert!(
        log.contains("tls=plaintext"),
        "sessions were not plaintext:\n{log}"
    );
    drop(lab);

    let mut opts = options(123);
    opts.edge_federation_extra = "security_mode = \"no-tls\"".into();
    let lab = start(opts);
    let mut alice = lab.client("alice").step(&lab, "alice connects");
    // Prosody holds a plaintext dialback it will not accept until the edge gives up (30 s).
    expect_bounce_within(
        &lab,
        &mut alice,
        &format!("bob@{PARTNER}"),
        &["remote-server-not-found", "remote-server-timeout"],
        std::time::Duration::from_secs(45),
    );
}

/// `tls-optional` uses TLS with a peer that offers it.
#[test]
fn tls_optional_uses_tls_when_offered() {
    let mut opts = options(124);
    opts.edge_federation_extra = "security_mode = \"tls-optional\"".into();
    let lab = start(opts);
    let mut alice = lab.client("alice").step(&lab, "alice connects");
    let mut bob = lab.client("bob").step(&lab, "bob connects");
    alice
        .send_message(&format!("bob@{PARTNER}"), "optional")
        .step(&lab, "send");
    bob.expect_message("alice@example.com", "optional", PATIENCE)
        .step(&lab, "a->b");
    let log = edge_log(&lab);
    assert!(
        log.contains("(STARTTLS)") && !log.contains("tls=plaintext"),
        "tls-optional did not use TLS:\n{log}"
    );
}

/// XEP-0368: with `_xmpps-server` records on both sides, Prosody and the edge connect to each
/// other with TLS from the first byte.
#[test]
fn direct_tls_both_ways_with_prosody() {
    let subnet = 125;
    let mut opts = options(subnet);
    let edge_ip = Lab::ip(subnet, 2);
    let partner_ip = Lab::ip(subnet, 21);
    opts.edge_federation_extra = format!("direct_tls_listen = \"{edge_ip}:5270\"");
    opts.partner_extra_global = "s2s_direct_tls_ports = { 5270 }".into();
    opts.extra_dns = vec![
        causeway_testkit::DnsRecord::Srv {
            service: "_xmpps-server._tcp.example.com".into(),
            target: edge_ip.to_string(),
            port: 5270,
            priority: 0,
            weight: 5,
        },
        causeway_testkit::DnsRecord::Srv {
            service: format!("_xmpps-server._tcp.{PARTNER}"),
            target: partner_ip.to_string(),
            port: 5270,
            priority: 0,
            weight: 5,
        },
    ];
    let lab = start(opts);
    let mut alice = lab.client("alice").step(&lab, "alice connects");
    let mut bob = lab.client("bob").step(&lab, "bob connects");
    alice
        .send_message(&format!("bob@{PARTNER}"), "direct")
        .step(&lab, "send");
    bob.expect_message("alice@example.com", "direct", PATIENCE)
        .step(&lab, "a->b");
    bob.send_message("alice@example.com", "direct back")
        .step(&lab, "send");
    alice
        .expect_message(&format!("bob@{PARTNER}"), "direct back", PATIENCE)
        .step(&lab, "b->a");
    let log = edge_log(&lab);
    let authenticated: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("authenticated"))
        .collect();
    assert!(
        authenticated
            .iter()
            .any(|l| l.contains("outgoing") && l.contains("direct TLS")),
        "the edge did not connect to partner.test with direct TLS:\n{log}"
    );
    assert!(
        authenticated
            .iter()
            .any(|l| l.contains("incoming") && l.contains("direct TLS")),
        "partner.test did not connect to the edge with direct TLS:\n{log}"
    );
}

/// An incoming-only allow rule: bob reaches alice, alice cannot reach bob (service-unavailable).
/// A deny-list wildcard refuses the domain both ways with a stream error, logged.
#[test]
fn policy_directions_and_wildcards_with_prosody() {
    let mut opts = options(126);
    opts.edge_policy = Some(format!(
        "privacy_mode = \"allow-list\"\nallow = [{{ domain = \"{PARTNER}\", direction = \"incoming\" }}]"
    ));
    let lab = start(opts);
    let mut alice = lab.client("alice").step(&lab, "alice connects");
    let mut bob = lab.client("bob").step(&lab, "bob connects");
    bob.send_message("alice@example.com", "incoming is allowed")
        .step(&lab, "send");
    alice
        .expect_message(&format!("bob@{PARTNER}"), "incoming is allowed", PATIENCE)
        .step(&lab, "incoming-only rule lets bob in");
    expect_bounce(
        &lab,
        &mut alice,
        &format!("bob@{PARTNER}"),
        "service-unavailable",
    );
    drop(lab);

    let mut opts = options(127);
    opts.edge_policy = Some("privacy_mode = \"deny-list\"\ndeny = [\"*.partner.test\"]".into());
    let lab = start(opts);
    let mut alice = lab.client("alice").step(&lab, "alice connects");
    let mut bob = lab.client("bob").step(&lab, "bob connects");
    bob.send_message("alice@example.com", "denied")
        .step(&lab, "send");
    let got = alice.collect_messages(
        &format!("bob@{PARTNER}"),
        1,
        std::time::Duration::from_secs(4),
    );
    assert!(got.is_err(), "a denied domain got through: {got:?}");
    expect_bounce(
        &lab,
        &mut alice,
        &format!("bob@{PARTNER}"),
        "service-unavailable",
    );
    let log = edge_log(&lab);
    assert!(
        log.contains("domain refused by the federation policy")
            && log.contains("remote=partner.test"),
        "the inbound refusal was not logged:\n{log}"
    );
}

/// Static routes: tried in turn (a dead first address, then the real one), allowed without an
/// allow-list entry, and never followed by a DNS lookup when all their servers are down.
#[test]
fn static_routes_are_tried_in_turn_and_never_fall_back_to_dns() {
    let subnet = 128;
    let mut opts = options(subnet);
    let partner = Lab::ip(subnet, 21);
    let dead = Lab::ip(subnet, 99);
    opts.partner_s2s_port = Some(5269);
    opts.edge_policy = Some("privacy_mode = \"allow-list\"\nallow = []".into());
    opts.edge_extra = format!(
        "[[static_routes]]\ndomain = \"{PARTNER}\"\naddresses = [\"{dead}:5269\", \"{partner}:5269\"]\n\n\
         [[static_routes]]\ndomain = \"conference.{PARTNER}\"\naddresses = [\"{dead}:5269\"]\n"
    );
    let lab = start(opts);
    let mut alice = lab.client("alice").step(&lab, "alice connects");
    let mut bob = lab.client("bob").step(&lab, "bob connects");
    alice
        .send_message(&format!("bob@{PARTNER}"), "via the second route")
        .step(&lab, "send");
    bob.expect_message("alice@example.com", "via the second route", PATIENCE)
        .step(&lab, "static route, second address");
    // conference.partner.test has a good SRV record, but its static route is dead.
    expect_bounce(
        &lab,
        &mut alice,
        &format!("room@conference.{PARTNER}"),
        "remote-server-not-found",
    );
}

/// ejabberd with a certificate the edge trusts (and trusting the edge's): with required
/// client certificates carol and alice talk, both ways.
#[test]
fn required_client_certificates_with_a_trusted_ejabberd() {
    let mut opts = options(129);
    opts.federation_ca = true;
    opts.ejabberd = true;
    opts.edge_federation_extra = "require_client_certs = true".into();
    let lab = start(opts);
    let mut alice = lab.client("alice").step(&lab, "alice connects");
    let mut carol = lab.client("carol").step(&lab, "carol connects");
    let carol_jid = format!("carol@{PARTNER2}");
    carol
        .send_message("alice@example.com", "certified")
        .step(&lab, "send");
    alice
        .expect_message(&carol_jid, "certified", PATIENCE)
        .step(&lab, "carol -> alice");
    alice
        .send_message(&carol_jid, "certified back")
        .step(&lab, "send");
    carol
        .expect_message("alice@example.com", "certified back", PATIENCE)
        .step(&lab, "alice -> carol");
    let log = edge_log(&lab);
    let methods: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("authenticated") && l.contains(PARTNER2))
        .collect();
    assert!(
        methods
            .iter()
            .any(|l| l.contains("incoming") && l.contains("SASL EXTERNAL")),
        "ejabberd did not authenticate to the edge with SASL EXTERNAL:\n{log}"
    );
    assert!(
        methods
            .iter()
            .any(|l| l.contains("outgoing") && l.contains("SASL EXTERNAL")),
        "the edge did not authenticate to ejabberd with SASL EXTERNAL:\n{log}"
    );
}

/// ejabberd in every mode: `no-tls` federates with an ejabberd that does not use STARTTLS and
/// fails back to the sender with one that requires it; `tls-optional` uses TLS with one that
/// offers it.
#[test]
fn security_modes_with_ejabberd_matching_and_mismatching() {
    let carol_jid = format!("carol@{PARTNER2}");
    for (subnet, mode, starttls, works) in [
        (115, "no-tls", "false", true),
        (116, "no-tls", "required", false),
        (117, "tls-optional", "optional", true),
    ] {
        let mut opts = options(subnet);
        opts.ejabberd = true;
        opts.ejabberd_starttls = starttls.into();
        opts.edge_federation_extra = format!("security_mode = \"{mode}\"");
        let lab = start(opts);
        let mut alice = lab.client("alice").step(&lab, "alice connects");
        let mut carol = lab.client("carol").step(&lab, "carol connects");
        if works {
            alice.send_message(&carol_jid, mode).step(&lab, "send");
            carol
                .expect_message("alice@example.com", mode, PATIENCE)
                .step(&lab, "alice -> carol");
            carol
                .send_message("alice@example.com", "and back")
                .step(&lab, "send");
            alice
                .expect_message(&carol_jid, "and back", PATIENCE)
                .step(&lab, "carol -> alice");
            let log = edge_log(&lab);
            let tls_used = log.lines().any(|l| {
                l.contains("authenticated") && l.contains(PARTNER2) && l.contains("STARTTLS")
            });
            assert_eq!(
                tls_used,
                mode != "no-tls",
                "{mode} with ejabberd {starttls}:\n{log}"
            );
        } else {
            expect_bounce_within(
                &lab,
                &mut alice,
                &carol_jid,
                &["remote-server-not-found", "remote-server-timeout"],
                std::time::Duration::from_secs(45),
            );
        }
    }
}
