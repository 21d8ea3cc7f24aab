//! Federation security modes against real Prosody and ejabberd: TLS required/optional/off,
//! SASL EXTERNAL with trusted certificates, required client certificates.

use causeway_testkit::lab::{Lab, PARTNER, PARTNER2};

use crate::support::{options, start, Step, PATIENCE};

fn edge_log(lab: &Lab) -> String {
    std::fs::read_to_string(lab.dir.path().join("edge.log")).unwrap_or_default()
}

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
