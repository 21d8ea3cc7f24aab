//! The traversal tunnel between core and edge: no loss across cuts, mutual authentication.

use std::time::Duration;

use causeway_testkit::lab::{Lab, PARTNER};

use crate::support::{options, start, warm_up, Step, PATIENCE};

/// The tunnel's TCP connection is cut again and again while 1,000 messages flow each way:
/// every message arrives once, in order.
#[test]
fn cutting_the_tunnel_mid_stream_loses_and_duplicates_nothing() {
    let mut opts = options(104);
    opts.relay = true;
    let lab = start(opts);
    let relay = lab.relay.as_ref().expect("relay requested");
    let bob_jid = format!("bob@{PARTNER}");
    let mut alice = lab.client("alice").step(&lab, "alice connects");
    let mut bob = lab.client("bob").step(&lab, "bob connects");
    warm_up(&lab, &mut alice, &mut bob);
    let before = relay.total_accepted();

    let cuts = std::thread::scope(|s| {
        let cutter = s.spawn(|| {
            let mut cuts = 0;
            for _ in 0..20 {
                std::thread::sleep(Duration::from_millis(60));
                cuts += relay.cut_all();
            }
            cuts
        });
        alice
            .send_burst_prefixed(&bob_jid, 1000, "a2b-")
            .step(&lab, "alice's burst");
        bob.send_burst_prefixed("alice@example.com", 1000, "b2a-")
            .step(&lab, "bob's burst");
        cutter.join().expect("cutter thread")
    });
    let at_bob = bob
        .collect_messages("alice@example.com", 1000, PATIENCE * 3)
        .step(&lab, "bob collects");
    let at_alice = alice
        .collect_messages(&bob_jid, 1000, PATIENCE * 3)
        .step(&lab, "alice collects");
    let expect = |p: &str| (0..1000).map(|i| format!("{p}{i}")).collect::<Vec<_>>();
    assert_eq!(at_bob, expect("a2b-"), "alice -> bob across tunnel cuts");
    assert_eq!(at_alice, expect("b2a-"), "bob -> alice across tunnel cuts");
    assert!(cuts >= 1, "the relay never had a connection to cut");
    assert!(
        relay.total_accepted() > before,
        "core never reconnected after a cut"
    );
    let extra = bob.collect_messages("alice@example.com", 1, Duration::from_secs(1));
    assert!(extra.is_err(), "bob got a duplicate: {extra:?}");
    let extra = alice.collect_messages(&bob_jid, 1, Duration::from_secs(1));
    assert!(extra.is_err(), "alice got a duplicate: {extra:?}");
}

/// A core whose client certificate comes from another CA cannot open the tunnel.
#[test]
fn a_core_with_a_certificate_from_another_ca_is_refused() {
    let lab = start(options(105));
    let rogue_dir = lab.dir.path().join("rogue");
    let rogue_pki = rogue_dir.join("pki");
    causeway_pki::lab_init(
        &rogue_pki,
        &["edge.example.com"],
        "core1.example.com",
        &["example.com"],
        &["core1.example.com"],
        true,
    )
    .expect("rogue pki");
    // The rogue trusts the real edge's CA (it wants in), but its own certificate is foreign.
    std::fs::copy(
        lab.dir.path().join("pki/traversal-ca.crt"),
        rogue_pki.join("traversal-ca.crt"),
    )
    .expect("copy CA");
    std::fs::copy(
        lab.dir.path().join("pki/core-dialback-secret"),
        rogue_pki.join("core-dialback-secret"),
    )
    .expect("copy secret");
    let edge_tunnel = std::net::SocketAddr::from((Lab::ip(105, 2), 7400));
    let config = causeway_testkit::lab::core_config(
        std::net::SocketAddr::from((Lab::ip(105, 5), 5269)),
        edge_tunnel,
        Lab::ip(105, 11),
        5269,
    );
    std::fs::write(rogue_dir.join("core.toml"), config).expect("rogue config");
    let edge_log_path = lab.dir.path().join("edge.log");
    let seen_before = std::fs::read_to_string(&edge_log_path)
        .unwrap_or_default()
        .len();
    let rogue = causeway_testkit::lab::spawn_daemon(
        std::path::Path::new(env!("CARGO_BIN_EXE_core")),
        "core",
        &rogue_dir,
        "info",
    )
    .step(&lab, "rogue core starts");
    let refused = causeway_testkit::wait_until(PATIENCE, || {
        rogue.log_tail(50).contains("cannot reach edge")
    });
    let rogue_log = rogue.log_tail(50);
    assert!(
        refused,
        "the rogue core never reported a refused tunnel:\n{rogue_log}"
    );
    assert!(
        !rogue_log.contains("tunnel connected"),
        "rogue core claims a tunnel:\n{rogue_log}"
    );
    let edge_log = std::fs::read_to_string(&edge_log_path).unwrap_or_default();
    let since = edge_log.get(seen_before..).unwrap_or("");
    assert!(
        !since.contains("core connected"),
        "the edge accepted the rogue core:\n{since}"
    );
}
