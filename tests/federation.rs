//! Users inside chat with users on other organisations' servers, through core and edge.

use causeway_testkit::lab::{PARTNER, PARTNER2};

use crate::support::{options, start, Step, PATIENCE};

/// alice@example.com <-> bob@partner.test (Prosody) and carol@partner2.test (ejabberd).
#[test]
fn messages_both_ways_with_prosody_and_ejabberd() {
    let mut opts = options(101);
    opts.ejabberd = true;
    let lab = start(opts);
    let mut alice = lab.client("alice").step(&lab, "alice connects");
    let mut bob = lab.client("bob").step(&lab, "bob connects");
    let mut carol = lab.client("carol").step(&lab, "carol connects");

    alice.send_message(&format!("bob@{PARTNER}"), "hello bob").step(&lab, "send");
    bob.expect_message("alice@example.com", "hello bob", PATIENCE)
        .step(&lab, "bob receives alice's message");
    bob.send_message("alice@example.com", "hi alice").step(&lab, "send");
    alice
        .expect_message(&format!("bob@{PARTNER}"), "hi alice", PATIENCE)
        .step(&lab, "alice receives bob's reply");

    alice.send_message(&format!("carol@{PARTNER2}"), "hello carol").step(&lab, "send");
    carol
        .expect_message("alice@example.com", "hello carol", PATIENCE)
        .step(&lab, "carol (ejabberd) receives alice's message");
    carol.send_message("alice@example.com", "hi from ejabberd").step(&lab, "send");
    alice
        .expect_message(&format!("carol@{PARTNER2}"), "hi from ejabberd", PATIENCE)
        .step(&lab, "alice receives carol's reply");
}
