//! Users inside chat with users on other organisations' servers, through core and edge.

use causeway_testkit::lab::{PARTNER, PARTNER2};

use crate::support::{options, start, warm_up, Step, PATIENCE};

/// alice@example.com <-> bob@partner.test (Prosody) and carol@partner2.test (ejabberd).
#[test]
fn messages_both_ways_with_prosody_and_ejabberd() {
    let mut opts = options(101);
    opts.ejabberd = true;
    let lab = start(opts);
    let mut alice = lab.client("alice").step(&lab, "alice connects");
    let mut bob = lab.client("bob").step(&lab, "bob connects");
    let mut carol = lab.client("carol").step(&lab, "carol connects");

    alice
        .send_message(&format!("bob@{PARTNER}"), "hello bob")
        .step(&lab, "send");
    bob.expect_message("alice@example.com", "hello bob", PATIENCE)
        .step(&lab, "bob receives alice's message");
    bob.send_message("alice@example.com", "hi alice")
        .step(&lab, "send");
    alice
        .expect_message(&format!("bob@{PARTNER}"), "hi alice", PATIENCE)
        .step(&lab, "alice receives bob's reply");

    alice
        .send_message(&format!("carol@{PARTNER2}"), "hello carol")
        .step(&lab, "send");
    carol
        .expect_message("alice@example.com", "hello carol", PATIENCE)
        .step(&lab, "carol (ejabberd) receives alice's message");
    carol
        .send_message("alice@example.com", "hi from ejabberd")
        .step(&lab, "send");
    alice
        .expect_message(&format!("carol@{PARTNER2}"), "hi from ejabberd", PATIENCE)
        .step(&lab, "alice receives carol's reply");
}

/// Subscriptions both ways, then presence updates arrive across the federation.
#[test]
fn presence_subscription_both_ways_and_updates() {
    let lab = start(options(102));
    let bob_jid = format!("bob@{PARTNER}");
    let mut alice = lab.client("alice").step(&lab, "alice connects");
    let mut bob = lab.client("bob").step(&lab, "bob connects");

    alice
        .send_presence(Some(&bob_jid), Some("subscribe"), None)
        .step(&lab, "subscribe");
    bob.expect_presence("alice@example.com", Some("subscribe"), PATIENCE)
        .step(&lab, "bob sees alice's subscription request");
    bob.send_presence(Some("alice@example.com"), Some("subscribed"), None)
        .step(&lab, "approve");
    bob.send_presence(Some("alice@example.com"), Some("subscribe"), None)
        .step(&lab, "subscribe back");
    alice
        .expect_presence(&bob_jid, Some("subscribed"), PATIENCE)
        .step(&lab, "alice sees the approval");
    alice
        .expect_presence(&bob_jid, Some("subscribe"), PATIENCE)
        .step(&lab, "alice sees bob's request");
    alice
        .send_presence(Some(&bob_jid), Some("subscribed"), None)
        .step(&lab, "approve");

    let subscribed_both = |c: &mut causeway_testkit::Client, who: &str| {
        causeway_testkit::wait_until(PATIENCE, || {
            c.roster()
                .ok()
                .and_then(|r| r.get(who).and_then(|i| i.get("subscription")).cloned())
                .is_some_and(|s| s == "both")
        })
    };
    assert!(
        subscribed_both(&mut alice, &bob_jid),
        "alice's roster: bob not 'both'\n{}",
        lab.diagnostics()
    );
    assert!(
        subscribed_both(&mut bob, "alice@example.com"),
        "bob's roster: alice not 'both'\n{}",
        lab.diagnostics()
    );

    bob.send_presence(None, None, Some("in a meeting"))
        .step(&lab, "bob's status");
    let seen = alice
        .wait_for(PATIENCE, |ev| {
            matches!(ev, causeway_testkit::ClientEvent::Presence { from, status, .. }
            if from.starts_with(&bob_jid) && status.as_deref() == Some("in a meeting"))
        })
        .step(&lab, "alice waits for bob's status");
    assert!(
        seen.is_some(),
        "alice never saw bob's status update\n{}",
        lab.diagnostics()
    );
    alice
        .send_presence(None, None, Some("coding"))
        .step(&lab, "alice's status");
    let seen = bob
        .wait_for(PATIENCE, |ev| {
            matches!(ev, causeway_testkit::ClientEvent::Presence { from, status, .. }
            if from.starts_with("alice@example.com") && status.as_deref() == Some("coding"))
        })
        .step(&lab, "bob waits for alice's status");
    assert!(
        seen.is_some(),
        "bob never saw alice's status update\n{}",
        lab.diagnostics()
    );
}

/// 1,000 messages each way, at the same time, all arrive in order and none twice.
#[test]
fn a_thousand_messages_each_way_in_order() {
    let lab = start(options(103));
    let bob_jid = format!("bob@{PARTNER}");
    let mut alice = lab.client("alice").step(&lab, "alice connects");
    let mut bob = lab.client("bob").step(&lab, "bob connects");
    // First contact (dialback) out of the way, so the burst measures the steady path.
    warm_up(&lab, &mut alice, &mut bob);

    alice
        .send_burst_prefixed(&bob_jid, 1000, "a2b-")
        .step(&lab, "alice's burst");
    bob.send_burst_prefixed("alice@example.com", 1000, "b2a-")
        .step(&lab, "bob's burst");
    let at_bob = bob
        .collect_messages("alice@example.com", 1000, PATIENCE * 3)
        .step(&lab, "bob collects");
    let at_alice = alice
        .collect_messages(&bob_jid, 1000, PATIENCE * 3)
        .step(&lab, "alice collects");
    let expect = |p: &str| (0..1000).map(|i| format!("{p}{i}")).collect::<Vec<_>>();
    assert_eq!(
        at_bob,
        expect("a2b-"),
        "alice -> bob: missing, duplicated or reordered"
    );
    assert_eq!(
        at_alice,
        expect("b2a-"),
        "bob -> alice: missing, duplicated or reordered"
    );
    // Nothing extra trails behind.
    let extra = bob.collect_messages("alice@example.com", 1, std::time::Duration::from_secs(1));
    assert!(extra.is_err(), "bob got an extra message: {extra:?}");
}

/// Stanzas that cannot be delivered come back to the sender as RFC 6120 stanza errors: a domain
/// the privacy policy refuses (service-unavailable) and an allowed domain with no server
/// (remote-server-not-found).
#[test]
fn undeliverable_messages_bounce_with_the_right_error() {
    let mut opts = options(106);
    opts.extra_allow = vec!["nowhere.test".into()];
    let lab = start(opts);
    let mut alice = lab.client("alice").step(&lab, "alice connects");
    for (to, condition) in [
        ("someone@not-allowed.test", "service-unavailable"),
        ("someone@nowhere.test", "remote-server-not-found"),
    ] {
        alice.send_message(to, "anyone there?").step(&lab, "send");
        let bounced = alice
            .wait_for(PATIENCE, |ev| {
                matches!(ev, causeway_testkit::ClientEvent::Message { from, mtype, xml, .. }
                    if from == to && mtype == "error" && xml.contains(condition))
            })
            .step(&lab, "wait for the bounce");
        assert!(
            bounced.is_some(),
            "no {condition} error for {to}\n{}",
            lab.diagnostics()
        );
    }
}
