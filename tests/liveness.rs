//! A federated server that stops answering (SIGSTOP: no FIN, its kernel still ACKs) is found
//! dead within 30 seconds; its sessions close and federation resumes when it comes back.

use std::time::{Duration, Instant};

use causeway_testkit::lab::PARTNER;

use crate::support::{edge_log, options, signal, start, Resume, Step, PATIENCE};

#[test]
fn a_stopped_peer_is_found_dead_within_30_seconds_and_federation_resumes() {
    let lab = start(options(138));
    let bob_jid = format!("bob@{PARTNER}");
    let mut alice = lab.client("alice").step(&lab, "alice connects");
    let mut bob = lab.client("bob").step(&lab, "bob connects");
    alice.send_message(&bob_jid, "hello").step(&lab, "send");
    bob.expect_message("alice@example.com", "hello", PATIENCE)
        .step(&lab, "a->b");
    bob.send_message("alice@example.com", "hi")
        .step(&lab, "send");
    alice
        .expect_message(&bob_jid, "hi", PATIENCE)
        .step(&lab, "b->a");

    let pid = lab.partner.pid();
    let stopped = Instant::now();
    signal(pid, "-STOP");
    let resume = Resume(pid);
    let found = causeway_testkit::wait_until(Duration::from_secs(40), || {
        edge_log(&lab).contains("peer is not answering")
    });
    let took = stopped.elapsed();
    assert!(
        found,
        "the stopped peer was never found dead:\n{}",
        edge_log(&lab)
    );
    assert!(
        took < Duration::from_secs(30),
        "found dead after {took:?}, bound is 30 s"
    );
    println!("stopped peer found dead after {took:?}");
    drop(resume);

    // Back again: both directions reconnect and deliver.
    alice
        .send_message(&bob_jid, "after the outage")
        .step(&lab, "send");
    bob.expect_message("alice@example.com", "after the outage", PATIENCE * 2)
        .step(&lab, "a->b after resume");
    bob.send_message("alice@example.com", "back too")
        .step(&lab, "send");
    alice
        .expect_message(&bob_jid, "back too", PATIENCE * 2)
        .step(&lab, "b->a after resume");
}
