//! Federated group chat through the pair: rooms on the internal MUC service
//! (conference.example.com, a chat node alias) joined from Prosody and ejabberd, and a room on
//! the partner's MUC service joined from inside.

use causeway_testkit::lab::PARTNER;
use causeway_testkit::ClientEvent;

use crate::support::{options, start, Step, PATIENCE};

fn groupchat_from(ev: &ClientEvent, room: &str, nick: &str, text: &str) -> bool {
    matches!(ev, ClientEvent::Message { from, mtype, body: Some(b), .. }
        if mtype == "groupchat" && from == &format!("{room}/{nick}") && b == text)
}

#[test]
fn rooms_on_the_internal_muc_are_shared_with_prosody_and_ejabberd_users() {
    let mut opts = options(160);
    opts.ejabberd = true;
    let lab = start(opts);
    let room = "lobby@conference.example.com";
    let mut alice = lab.client("alice").step(&lab, "alice connects");
    let mut bob = lab.client("bob").step(&lab, "bob connects");
    let mut carol = lab.client("carol").step(&lab, "carol connects");

    alice
        .join_muc(room, "alice")
        .step(&lab, "alice creates the room");
    alice
        .send_groupchat(room, "history before anyone came")
        .step(&lab, "send");
    bob.join_muc_with_history(room, "bob", 10)
        .step(&lab, "bob (partner.test) joins across the federation");
    let history = bob
        .wait_for(PATIENCE, |ev| {
            groupchat_from(ev, room, "alice", "history before anyone came")
        })
        .step(&lab, "wait for history");
    assert!(
        history.is_some(),
        "bob got no room history\n{}",
        lab.diagnostics()
    );
    carol
        .join_muc(room, "carol")
        .step(&lab, "carol (ejabberd) joins");

    // Room presence: alice sees both remote occupants arrive.
    for nick in ["bob", "carol"] {
        let seen = alice
            .wait_for(PATIENCE, |ev| matches!(ev, ClientEvent::Presence { from, .. } if from == &format!("{room}/{nick}")))
            .step(&lab, "occupant presence");
        assert!(
            seen.is_some(),
            "alice never saw {nick} join\n{}",
            lab.diagnostics()
        );
    }

    bob.send_groupchat(room, "hello from partner.test")
        .step(&lab, "send");
    carol
        .send_groupchat(room, "hello from partner2.test")
        .step(&lab, "send");
    alice
        .send_groupchat(room, "welcome both")
        .step(&lab, "send");
    for (who, client) in [("alice", &mut alice), ("carol", &mut carol)] {
        let got = client
            .wait_for(PATIENCE, |ev| {
                groupchat_from(ev, room, "bob", "hello from partner.test")
            })
            .step(&lab, "bob's groupchat");
        assert!(
            got.is_some(),
            "{who} did not get bob's message\n{}",
            lab.diagnostics()
        );
    }
    for (who, client) in [("alice", &mut alice), ("bob", &mut bob)] {
        let got = client
            .wait_for(PATIENCE, |ev| {
                groupchat_from(ev, room, "carol", "hello from partner2.test")
            })
            .step(&lab, "carol's groupchat");
        assert!(
            got.is_some(),
            "{who} did not get carol's message\n{}",
            lab.diagnostics()
        );
    }
    for (who, client) in [("bob", &mut bob), ("carol", &mut carol)] {
        let got = client
            .wait_for(PATIENCE, |ev| {
                groupchat_from(ev, room, "alice", "welcome both")
            })
            .step(&lab, "alice's groupchat");
        assert!(
            got.is_some(),
            "{who} did not get alice's message\n{}",
            lab.diagnostics()
        );
    }

    // alice joins a room on the partner's MUC service.
    let outside = format!("ops@conference.{PARTNER}");
    bob.join_muc(&outside, "bob")
        .step(&lab, "bob creates a room at home");
    alice
        .join_muc(&outside, "alice")
        .step(&lab, "alice joins a room outside");
    bob.send_groupchat(&outside, "hi alice, welcome to our room")
        .step(&lab, "send");
    let got = alice
        .wait_for(PATIENCE, |ev| {
            groupchat_from(ev, &outside, "bob", "hi alice, welcome to our room")
        })
        .step(&lab, "groupchat from outside");
    assert!(
        got.is_some(),
        "alice did not get the partner room's message\n{}",
        lab.diagnostics()
    );
}
