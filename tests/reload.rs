//! Live reconfiguration of the edge (SIGHUP): policy changes apply without dropping sessions
//! the new config still allows; sessions it forbids close; a bad config is refused.

use std::time::Duration;

use causeway_testkit::lab::{Lab, PARTNER, PARTNER2};

use crate::support::{edge_log, options, sighup_edge, start, Step, PATIENCE};

/// Wait until the edge log has one more line containing `needle` than it had (`before`).
fn wait_log_count(lab: &Lab, needle: &str, before: usize) -> bool {
    causeway_testkit::wait_until(PATIENCE, || edge_log(lab).matches(needle).count() > before)
}

fn set_allow(lab: &Lab, allow: &str) {
    let path = lab.config_path("edge");
    let text = std::fs::read_to_string(&path).expect("edge config");
    let start = text.find("[policy]").expect("policy section");
    let end = text[start..]
        .find("\n[")
        .map(|i| start + i)
        .unwrap_or(text.len());
    let new = format!(
        "{}[policy]\nprivacy_mode = \"allow-list\"\nallow = [{allow}]\n{}",
        &text[..start],
        &text[end..]
    );
    std::fs::write(&path, new).expect("write config");
}

/// The live peer is ejabberd (carol); the refused-then-admitted one is Prosody (bob), which
/// retries at its next stanza (ejabberd backs off for minutes after a refusal).
#[test]
fn reload_admits_a_refused_peer_without_dropping_live_sessions() {
    let mut opts = options(135);
    opts.ejabberd = true;
    opts.edge_policy = Some(format!(
        "privacy_mode = \"allow-list\"\nallow = [\"{PARTNER2}\"]"
    ));
    let lab = start(opts);
    let bob_jid = format!("bob@{PARTNER}");
    let carol_jid = format!("carol@{PARTNER2}");
    let mut alice = lab.client("alice").step(&lab, "alice connects");
    let mut bob = lab.client("bob").step(&lab, "bob connects");
    let mut carol = lab.client("carol").step(&lab, "carol connects");
    carol
        .send_message("alice@example.com", "before")
        .step(&lab, "send");
    alice
        .expect_message(&carol_jid, "before", PATIENCE)
        .step(&lab, "carol -> alice");
    alice
        .send_message(&carol_jid, "before too")
        .step(&lab, "send");
    carol
        .expect_message("alice@example.com", "before too", PATIENCE)
        .step(&lab, "alice -> carol");
    bob.send_message("alice@example.com", "refused")
        .step(&lab, "send");
    let got = alice.collect_messages(&bob_jid, 1, Duration::from_secs(3));
    assert!(
        got.is_err(),
        "partner.test got in before the reload: {got:?}"
    );

    // A bad config is refused; the running one stays.
    let path = lab.config_path("edge");
    let good = std::fs::read_to_string(&path).expect("config");
    std::fs::write(&path, good.replace("[policy]", "[policy]\nbogus_key = 1")).expect("write");
    let refused = edge_log(&lab).matches("config reload refused").count();
    sighup_edge(&lab);
    assert!(
        wait_log_count(&lab, "config reload refused", refused),
        "bad reload not refused:\n{}",
        edge_log(&lab)
    );
    carol
        .send_message("alice@example.com", "after a bad reload")
        .step(&lab, "send");
    alice
        .expect_message(&carol_jid, "after a bad reload", PATIENCE)
        .step(&lab, "old config still runs");

    // Add partner.test: bob gets in, carol's sessions carry on untouched.
    std::fs::write(&path, &good).expect("restore");
    set_allow(&lab, &format!("\"{PARTNER}\", \"{PARTNER2}\""));
    let closed_before = edge_log(&lab).matches("s2s session closed").count();
    let auth_before = edge_log(&lab).matches("remote=partner2.test").count();
    let reloaded = edge_log(&lab).matches("config reloaded").count();
    sighup_edge(&lab);
    assert!(
        wait_log_count(&lab, "config reloaded", reloaded),
        "reload not applied:\n{}",
        edge_log(&lab)
    );
    bob.send_message("alice@example.com", "admitted")
        .step(&lab, "send");
    alice
        .expect_message(&bob_jid, "admitted", PATIENCE)
        .step(&lab, "bob after the reload");
    alice.send_message(&bob_jid, "welcome").step(&lab, "send");
    bob.expect_message("alice@example.com", "welcome", PATIENCE)
        .step(&lab, "alice -> bob");
    carol
        .send_message("alice@example.com", "still here")
        .step(&lab, "send");
    alice
        .expect_message(&carol_jid, "still here", PATIENCE)
        .step(&lab, "carol's session lives on");
    let log = edge_log(&lab);
    assert_eq!(
        log.matches("s2s session closed").count(),
        closed_before,
        "a session was closed by a reload that still allows it:\n{log}"
    );
    assert_eq!(
        log.matches("remote=partner2.test").count(),
        auth_before,
        "partner2.test had to authenticate again:\n{log}"
    );

    // Remove partner2.test: its live sessions close with a stream error; bob is unaffected.
    set_allow(&lab, &format!("\"{PARTNER}\""));
    let reloaded = edge_log(&lab).matches("config reloaded").count();
    sighup_edge(&lab);
    assert!(
        wait_log_count(&lab, "config reloaded", reloaded),
        "reload not applied"
    );
    assert!(
        causeway_testkit::wait_until(PATIENCE, || edge_log(&lab).contains("no longer allow")),
        "partner2.test's sessions were not closed:\n{}",
        edge_log(&lab)
    );
    carol
        .send_message("alice@example.com", "after removal")
        .step(&lab, "send");
    let got = alice.collect_messages(&carol_jid, 1, Duration::from_secs(4));
    assert!(got.is_err(), "a removed domain still got through: {got:?}");
    bob.send_message("alice@example.com", "bob unaffected")
        .step(&lab, "send");
    alice
        .expect_message(&bob_jid, "bob unaffected", PATIENCE)
        .step(&lab, "bob still flows");
}
