//! High availability: core keeps a tunnel to two edges, both published in DNS, and an edge
//! serves a domain announced by two cores. Killing one (kill -9, mid-conversation) loses nothing.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use causeway_testkit::lab::{Lab, LabOptions, LOCAL, PARTNER, PARTNER2};
use causeway_testkit::{ChildGuard, Client};
use serde_json::Value;

use crate::support::{options, start, Step, CORE, EDGE, PATIENCE};

/// Messages each way in a paced conversation, and when the kill comes.
const MESSAGES: usize = 200;
const KILL_AFTER: usize = 50;
/// ~50 messages per second each way.
const PACE: Duration = Duration::from_millis(20);

/// alice <-> bob with two edges; then the edge that carries alice's outgoing s2s session to
/// partner.test is killed while 200 messages flow each way: every message arrives, through the
/// other edge, in both directions.
#[test]
fn two_edges_survive_killing_the_one_carrying_the_outbound_session() {
    let mut lab = start(two_edges(185));
    let (mut alice, mut bob) = warm_up(&lab);
    let (tunnels, code) = core_tunnels(&lab);
    assert_eq!(code, 0, "core status with both edges up: {tunnels:#?}");
    assert_eq!(tunnels.len(), 2, "{tunnels:#?}");

    let carrier = edge_with_session(&lab, "outgoing").step(&lab, "find the outbound edge");
    let inbound = edge_with_session(&lab, "incoming").step(&lab, "find partner.test's edge");
    println!(
        "outbound session example.com -> {PARTNER} on {carrier}; {PARTNER}'s own on {inbound}"
    );
    let report = conversation(&mut lab, &mut alice, &mut bob, carrier);
    println!("killed {carrier} (partner.test's session was on {inbound}): {report}");

    let (tunnels, code) = core_tunnels(&lab);
    assert_eq!(code, 2, "core status with one edge dead: {tunnels:#?}");
    let human = Command::new(CORE)
        .args(["status", "--socket"])
        .arg(lab.admin_socket("core"))
        .output()
        .expect("core status");
    let human = String::from_utf8_lossy(&human.stdout);
    println!("$ core status\n{human}");
    assert!(human.contains("edges: 1 of 2 connected"), "{human}");
    assert_eq!(human.matches("Connected since").count(), 1, "{human}");
    assert_eq!(human.matches("Not connected").count(), 1, "{human}");
    let states: Vec<&str> = tunnels
        .iter()
        .map(|t| t["state"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        states.iter().filter(|s| **s == "connected").count(),
        1,
        "{tunnels:#?}"
    );
}

/// The same with the edge that partner.test's own s2s session (bob -> alice) reached: Prosody
/// notices the dead connection, resolves the SRV records again and reaches the other edge.
#[test]
fn two_edges_survive_killing_the_one_partner_test_reached() {
    let mut lab = start(two_edges(186));
    let (mut alice, mut bob) = warm_up(&lab);
    let inbound = edge_with_session(&lab, "incoming").step(&lab, "find partner.test's edge");
    let carrier = edge_with_session(&lab, "outgoing").step(&lab, "find the outbound edge");
    let log =
        std::fs::read_to_string(lab.dir.path().join(format!("{inbound}.log"))).unwrap_or_default();
    assert!(
        log.contains("stream management enabled"),
        "partner.test did not enable XEP-0198 on its session to {inbound}:\n{}",
        lab.diagnostics()
    );
    let report = conversation(&mut lab, &mut alice, &mut bob, inbound);
    println!("killed {inbound} (the outbound session was on {carrier}): {report}");
}

/// A planned stop (SIGTERM, as `systemctl stop` sends) of the edge carrying the outbound session
/// while 200 messages flow each way: it drains (core routes around it at once), exits 0, and
/// every message arrives.
#[test]
fn two_edges_survive_a_planned_stop_of_the_outbound_edge() {
    planned_stop(252, "outgoing");
}

/// The same with the edge partner.test's own session reached: partner.test is told
/// `system-shutdown`, what it had in flight is still read and delivered, and it reconnects to
/// the other edge through its SRV records.
#[test]
fn two_edges_survive_a_planned_stop_of_the_edge_partner_test_reached() {
    planned_stop(253, "incoming");
}

fn planned_stop(subnet: u8, direction: &str) {
    let mut lab = start(two_edges(subnet));
    let (mut alice, mut bob) = warm_up(&lab);
    let victim = edge_with_session(&lab, direction).step(&lab, "find the edge");
    let report = conversation_with(&mut lab, &mut alice, &mut bob, victim, Stop::Term);
    println!("stopped {victim}, the edge with the {direction} session: {report}");
    let log = std::fs::read_to_string(lab.dir.path().join("core.log")).unwrap_or_default();
    assert!(
        log.contains("the peer drains"),
        "core never heard the edge drain:\n{}",
        lab.diagnostics()
    );
    if direction == "incoming" {
        let edge_log = std::fs::read_to_string(lab.dir.path().join(format!("{victim}.log")))
            .unwrap_or_default();
        assert!(
            edge_log.contains("system-shutdown") || edge_log.contains("closed by peer"),
            "the partner's stream was not closed by the drain:\n{edge_log}"
        );
    }
}

/// Two cores serve example.com through one edge: the edge sends each inbound pair to a
/// connected core (partner.test's and partner2.test's messages to alice take different cores
/// here), and when a core is killed mid-conversation its pair moves to the other core without
/// losing a message.
#[test]
fn two_cores_share_a_domain_and_survive_losing_one() {
    let mut opts = options(187);
    opts.second_core = true;
    opts.ejabberd = true;
    let mut lab = start(opts);
    let carol_jid = format!("carol@{PARTNER2}");
    let bob_jid = format!("bob@{PARTNER}");
    let alice_jid = format!("alice@{LOCAL}");
    let mut alice = lab.client("alice").step(&lab, "alice connects");
    let mut bob = lab.client("bob").step(&lab, "bob connects");
    let mut carol = lab.client("carol").step(&lab, "carol connects");

    let status = edge_status(&lab);
    let served_by: BTreeSet<String> = status["edge"]["domains"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| d["name"] == LOCAL)
        .map(|d| d["core"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(
        served_by,
        BTreeSet::from([
            "core1.example.com".to_owned(),
            "core2.example.com".to_owned()
        ]),
        "{status:#}"
    );

    for (who, jid) in [(&mut bob, &bob_jid), (&mut carol, &carol_jid)] {
        who.send_message(&alice_jid, "hello alice")
            .step(&lab, "send");
        alice
            .expect_message(jid, "hello alice", PATIENCE)
            .step(&lab, "alice receives");
    }
    // Which core carried which: the edge's per-core tunnel counters.
    let sent = core_sent(&edge_status(&lab));
    println!("stanzas the edge sent per core: {sent:?}");
    assert!(
        sent.values().all(|n| *n > 0) && sent.len() == 2,
        "both cores carry inbound stanzas: {sent:?}"
    );
    let victim = "core2";
    let guard = lab.core2.take().expect("second core");

    // carol writes 100 messages at ~50/s; core2 dies after 30.
    let n = 100;
    let sent_bodies: Vec<String> = (0..n).map(|i| format!("c2a-{i}")).collect();
    let mut guard = Some(guard);
    let mut killed_at = None;
    let mut sent_at = Vec::with_capacity(n);
    let mut got = Vec::new();
    for (i, body) in sent_bodies.iter().enumerate() {
        if i == 30 {
            kill9(guard.take().expect("once"));
            killed_at = Some(Instant::now());
        }
        let start = Instant::now();
        sent_at.push(start);
        carol
            .send_message(&alice_jid, body)
            .step(&lab, "carol sends");
        poll(&lab, &mut alice, &carol_jid, start + PACE, &mut got);
    }
    let killed_at = killed_at.expect("killed");
    gather(&lab, &mut alice, &carol_jid, &sent_bodies, &mut got);
    let tail = Instant::now() + Duration::from_secs(3);
    poll(&lab, &mut alice, &carol_jid, tail, &mut got);
    let report = Report::of(&sent_bodies, &sent_at, &got, killed_at);
    println!("killed {victim}: carol -> alice {report}");
    report.assert_complete(&lab, "carol -> alice");
    // And the domain still works both ways through the remaining core.
    bob.send_message(&alice_jid, "still there?")
        .step(&lab, "send");
    alice
        .expect_message(&bob_jid, "still there?", PATIENCE)
        .step(&lab, "alice receives after the failover");
    alice.send_message(&carol_jid, "yes").step(&lab, "send");
    carol
        .expect_message(&alice_jid, "yes", PATIENCE)
        .step(&lab, "carol receives after the failover");
}

/// Two edges, both in partner.test's SRV records. partner.test and the edges trust one CA, so
/// partner.test authenticates with SASL EXTERNAL and enables XEP-0198 stream management on its
/// session to an edge (Prosody's mod_smacks; `smacks_s2s_resend` makes it resend what an edge
/// never acknowledged instead of bouncing it). The edge acknowledges a stanza only once a core
/// has it, so what partner.test wrote into a connection to an edge that died is resent through
/// the other edge.
fn two_edges(subnet: u8) -> LabOptions {
    let mut opts = options(subnet);
    opts.second_edge = true;
    opts.federation_ca = true;
    opts.partner_extra_modules = vec!["smacks".into()];
    opts.partner_extra_global = "smacks_s2s_resend = true\n".into();
    opts
}

/// alice and bob connect and exchange a first message each way (dialback done).
fn warm_up(lab: &Lab) -> (Client, Client) {
    let bob_jid = format!("bob@{PARTNER}");
    let alice_jid = format!("alice@{LOCAL}");
    let mut alice = lab.client("alice").step(lab, "alice connects");
    let mut bob = lab.client("bob").step(lab, "bob connects");
    alice.send_message(&bob_jid, "warm-up").step(lab, "send");
    bob.expect_message(&alice_jid, "warm-up", PATIENCE)
        .step(lab, "warm-up a->b");
    bob.send_message(&alice_jid, "warm-up").step(lab, "send");
    alice
        .expect_message(&bob_jid, "warm-up", PATIENCE)
        .step(lab, "warm-up b->a");
    (alice, bob)
}

/// How the victim stops.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// SIGKILL: a crash.
    Kill,
    /// SIGTERM: a planned stop (systemctl stop); it drains, then exits 0.
    Term,
}

/// 200 messages each way at ~50/s; `victim` ("edge" or "edge2") is killed with SIGKILL after
/// 50. Every message must arrive; duplicates and order are reported.
fn conversation(lab: &mut Lab, alice: &mut Client, bob: &mut Client, victim: &str) -> String {
    conversation_with(lab, alice, bob, victim, Stop::Kill)
}

/// [`conversation`], stopping the victim with `stop`.
fn conversation_with(
    lab: &mut Lab,
    alice: &mut Client,
    bob: &mut Client,
    victim: &str,
    stop: Stop,
) -> String {
    let bob_jid = format!("bob@{PARTNER}");
    let alice_jid = format!("alice@{LOCAL}");
    let guard = match victim {
        "edge" => lab.edge.take(),
        _ => lab.edge2.take(),
    }
    .expect("the edge runs");
    let a2b: Vec<String> = (0..MESSAGES).map(|i| format!("a2b-{i}")).collect();
    let b2a: Vec<String> = (0..MESSAGES).map(|i| format!("b2a-{i}")).collect();
    let mut guard = Some(guard);
    let mut terminated = None;
    let mut killed_at = None;
    let mut sent_at = Vec::with_capacity(MESSAGES);
    let (mut at_bob, mut at_alice) = (Vec::new(), Vec::new());
    for i in 0..MESSAGES {
        if i == KILL_AFTER {
            let victim = guard.take().expect("once");
            match stop {
                Stop::Kill => kill9(victim),
                Stop::Term => {
                    crate::support::signal(victim.pid(), "-TERM");
                    terminated = Some(victim);
                }
            }
            killed_at = Some(Instant::now());
        }
        let start = Instant::now();
        sent_at.push(start);
        alice
            .send_message(&bob_jid, &a2b[i])
            .step(lab, "alice sends");
        bob.send_message(&alice_jid, &b2a[i]).step(lab, "bob sends");
        poll(lab, bob, &alice_jid, start + PACE / 2, &mut at_bob);
        poll(lab, alice, &bob_jid, start + PACE, &mut at_alice);
    }
    let killed_at = killed_at.expect("killed");
    gather(lab, bob, &alice_jid, &a2b, &mut at_bob);
    gather(lab, alice, &bob_jid, &b2a, &mut at_alice);
    // Late duplicates, if any.
    let tail = Instant::now() + Duration::from_secs(3);
    poll(lab, bob, &alice_jid, tail, &mut at_bob);
    poll(lab, alice, &bob_jid, tail, &mut at_alice);
    let to_bob = Report::of(&a2b, &sent_at, &at_bob, killed_at);
    let to_alice = Report::of(&b2a, &sent_at, &at_alice, killed_at);
    to_bob.assert_complete(lab, "alice -> bob");
    to_alice.assert_complete(lab, "bob -> alice");
    let mut stopped = String::new();
    if let Some(mut drained) = terminated {
        // It drained within [tunnel] drain_secs (30 s) and exited cleanly.
        let exit = drained.wait_exit(Duration::from_secs(40));
        assert!(
            exit.is_some_and(|s| s.success()),
            "{victim} after SIGTERM: {exit:?}\n{}",
            lab.diagnostics()
        );
        let log = std::fs::read_to_string(lab.dir.path().join(format!("{victim}.log")))
            .unwrap_or_default();
        let line = log
            .lines()
            .find(|l| l.contains("drained") || l.contains("drain incomplete"))
            .unwrap_or("no drain line")
            .to_owned();
        assert!(
            line.contains("drained in"),
            "{victim} did not drain completely: {line}"
        );
        stopped = format!("; {victim}: {line}");
    }
    format!("alice -> bob {to_bob}; bob -> alice {to_alice}{stopped}")
}

/// What arrived, against what was sent.
struct Report {
    sent: usize,
    missing: Vec<String>,
    duplicates: Vec<String>,
    in_order: bool,
    /// From the kill to the last new message.
    complete_after: Duration,
    /// The longest time a message took, and which one.
    slowest: (Duration, String),
    /// Messages that took over a second.
    late: usize,
}

impl Report {
    fn of(
        sent: &[String],
        sent_at: &[Instant],
        got: &[(String, Instant)],
        killed_at: Instant,
    ) -> Self {
        let received: BTreeSet<&str> = got.iter().map(|(b, _)| b.as_str()).collect();
        let mut seen = BTreeSet::new();
        let mut duplicates = Vec::new();
        let mut firsts: Vec<(&str, Instant)> = Vec::new();
        for (b, t) in got {
            if seen.insert(b.as_str()) {
                firsts.push((b, *t));
            } else {
                duplicates.push(b.clone());
            }
        }
        let last_new = firsts.iter().map(|(_, t)| *t).max().unwrap_or(killed_at);
        let mut taken: Vec<(Duration, String)> = firsts
            .iter()
            .filter_map(|(b, at)| {
                let i = sent.iter().position(|s| s == b)?;
                Some((at.saturating_duration_since(sent_at[i]), (*b).to_owned()))
            })
            .collect();
        taken.sort();
        Self {
            late: taken
                .iter()
                .filter(|(d, _)| *d > Duration::from_secs(1))
                .count(),
            slowest: taken.pop().unwrap_or_default(),
            sent: sent.len(),
            missing: sent
                .iter()
                .filter(|s| !received.contains(s.as_str()))
                .cloned()
                .collect(),
            duplicates,
            in_order: firsts
                .iter()
                .map(|(b, _)| *b)
                .eq(sent.iter().map(String::as_str)),
            complete_after: last_new.saturating_duration_since(killed_at),
        }
    }

    fn assert_complete(&self, lab: &Lab, what: &str) {
        assert!(
            self.missing.is_empty(),
            "{what}: {} of {} messages lost: {:?}\n{}",
            self.missing.len(),
            self.sent,
            self.missing,
            lab.diagnostics()
        );
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} of {} arrived, {} duplicates {:?}, {}, last one {:.1} s after the kill, {} took \
             over 1 s, slowest {} ({:.1} s)",
            self.sent - self.missing.len(),
            self.sent,
            self.duplicates.len(),
            self.duplicates,
            if self.in_order {
                "in order"
            } else {
                "order changed"
            },
            self.complete_after.as_secs_f64(),
            self.late,
            self.slowest.1,
            self.slowest.0.as_secs_f64()
        )
    }
}

/// The messages from `from` that arrive until `until`, each with its arrival time.
fn poll(
    lab: &Lab,
    client: &mut Client,
    from: &str,
    until: Instant,
    got: &mut Vec<(String, Instant)>,
) {
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        match client.collect_messages(from, 1, left) {
            Ok(mut one) => got.push((one.pop().unwrap_or_default(), Instant::now())),
            Err(e) if e.to_string().contains("messages from") => return,
            Err(e) => panic!(
                "collecting at {}: {e:#}\n{}",
                client.jid(),
                lab.diagnostics()
            ),
        }
    }
}

/// More messages from `from` until all of `expected` arrived (or the patience runs out), each
/// with its arrival time.
fn gather(
    lab: &Lab,
    client: &mut Client,
    from: &str,
    expected: &[String],
    got: &mut Vec<(String, Instant)>,
) {
    let mut want: BTreeSet<&str> = expected.iter().map(String::as_str).collect();
    for (b, _) in got.iter() {
        want.remove(b.as_str());
    }
    let deadline = Instant::now() + PATIENCE * 3;
    while !want.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match client.collect_messages(from, 1, left) {
            Ok(mut one) => {
                let body = one.pop().unwrap_or_default();
                want.remove(body.as_str());
                got.push((body, Instant::now()));
            }
            Err(e) if e.to_string().contains("messages from") => break,
            Err(e) => panic!(
                "collecting at {}: {e:#}\n{}",
                client.jid(),
                lab.diagnostics()
            ),
        }
    }
}

/// SIGKILL, no grace.
fn kill9(mut guard: ChildGuard) {
    guard.set_grace(Duration::ZERO);
    guard.kill();
}

/// Which lab edge ("edge" or "edge2") logged an authenticated s2s session with partner.test
/// in `direction` ("outgoing": ours to partner.test; "incoming": partner.test's to us).
fn edge_with_session(lab: &Lab, direction: &str) -> anyhow::Result<&'static str> {
    let found = |name: &str| {
        let log =
            std::fs::read_to_string(lab.dir.path().join(format!("{name}.log"))).unwrap_or_default();
        log.lines().any(|l| {
            l.contains("s2s session authenticated")
                && l.contains(direction)
                && l.contains(&format!("remote={PARTNER}"))
        })
    };
    match (found("edge"), found("edge2")) {
        (true, false) => Ok("edge"),
        (false, true) => Ok("edge2"),
        (a, b) => anyhow::bail!("{direction} session with {PARTNER}: on edge {a}, on edge2 {b}"),
    }
}

/// `core status --json`: the tunnels and the exit code.
fn core_tunnels(lab: &Lab) -> (Vec<Value>, i32) {
    let (v, code) = status(CORE, &lab.admin_socket("core"));
    let tunnels = v["core"]["tunnels"].as_array().cloned().unwrap_or_default();
    (tunnels, code)
}

/// `edge status --json` of the first edge.
fn edge_status(lab: &Lab) -> Value {
    status(EDGE, &lab.admin_socket("edge")).0
}

/// Stanzas the edge sent to each core (its tunnel counters).
fn core_sent(status: &Value) -> std::collections::BTreeMap<String, u64> {
    status["tunnel_links"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| {
            (
                l["peer"].as_str().unwrap_or("").to_owned(),
                l["sent"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

fn status(bin: &str, socket: &Path) -> (Value, i32) {
    let out = Command::new(bin)
        .args(["status", "--json", "--socket"])
        .arg(socket)
        .output()
        .expect("run status");
    let text = String::from_utf8_lossy(&out.stdout);
    let v = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{bin} status is not JSON ({e}): {text}"));
    (v, out.status.code().unwrap_or(-1))
}
