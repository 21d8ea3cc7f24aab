//! The traversal tunnel between core and edge: no loss across cuts, mutual authentication.

use std::time::Duration;

use causeway_testkit::lab::{Lab, PARTNER};

use crate::support::{edge_log, options, run, sighup_edge, start, warm_up, Step, EDGE, PATIENCE};

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

/// Set (or with `None` remove) `tunnel.crls` in the lab edge's config and reload it (SIGHUP);
/// returns once the reload is logged.
fn reload_with_crls(lab: &Lab, crls: Option<&str>) {
    let path = lab.config_path("edge");
    let text = std::fs::read_to_string(&path).expect("edge config");
    let text: String = text
        .lines()
        .filter(|l| !l.starts_with("crls = "))
        .map(|l| format!("{l}\n"))
        .collect();
    let text = match crls {
        Some(list) => text.replacen("[tunnel]\n", &format!("[tunnel]\ncrls = [{list}]\n"), 1),
        None => text,
    };
    std::fs::write(&path, text).expect("write config");
    let before = edge_log(lab).matches("configuration reloaded").count();
    sighup_edge(lab);
    assert!(
        causeway_testkit::wait_until(PATIENCE, || {
            edge_log(lab).matches("configuration reloaded").count() > before
        }),
        "the reload was not logged:\n{}",
        edge_log(lab)
    );
}

/// Revoking a core without rotating the traversal CA: `edge pki revoke` adds the core's
/// certificate to a CRL, a reload that loads it cuts the connected core off and refuses its
/// reconnects; a reload without it lets the core back in. `edge check` names a broken CRL.
#[test]
fn a_revoked_core_is_cut_off_by_a_reload_and_readmitted_without_the_crl() {
    let lab = start(options(243));
    let bob_jid = format!("bob@{PARTNER}");
    let mut alice = lab.client("alice").step(&lab, "alice connects");
    let mut bob = lab.client("bob").step(&lab, "bob connects");
    warm_up(&lab, &mut alice, &mut bob);

    let pki = lab.dir.path().join("pki");
    let p = |name: &str| pki.join(name).to_string_lossy().into_owned();
    let r = run(
        EDGE,
        &[
            "pki",
            "revoke",
            "--ca-cert",
            &p("traversal-ca.crt"),
            "--ca-key",
            &p("traversal-ca.key"),
            "--crl",
            &p("traversal.crl"),
            &p("core-tunnel.crt"),
        ],
    );
    assert_eq!(r.code, 0, "edge pki revoke: {}", r.text());
    assert!(
        r.stdout.contains("1 newly revoked, 1 in all"),
        "{}",
        r.text()
    );

    reload_with_crls(&lab, Some("\"pki/traversal.crl\""));
    let log = edge_log(&lab);
    assert!(
        log.contains("cores cut off (certificate revoked): core1.example.com"),
        "the reload did not cut the revoked core off:\n{log}"
    );
    assert!(
        causeway_testkit::wait_until(PATIENCE, || {
            edge_log(&lab).contains("refusing core: its traversal certificate is not accepted")
        }),
        "the revoked core's reconnect was not refused:\n{}",
        edge_log(&lab)
    );
    let config = lab.config_path("edge");
    let status = run(
        EDGE,
        &["status", "--json", "--config", &config.to_string_lossy()],
    );
    let v = status.json();
    assert_eq!(
        v["edge"]["federation"]["active"], false,
        "with its only core revoked the edge must not report federation active: {v:#}"
    );

    // A broken CRL is named by `edge check` (and would be refused by a reload).
    std::fs::write(pki.join("broken.crl"), "not a CRL").expect("write");
    reload_check_names_broken_crl(&lab);

    let connected_before = edge_log(&lab).matches("core connected").count();
    reload_with_crls(&lab, None);
    assert!(
        causeway_testkit::wait_until(PATIENCE * 2, || {
            edge_log(&lab).matches("core connected").count() > connected_before
        }),
        "the core did not come back once the CRL was removed:\n{}",
        edge_log(&lab)
    );
    bob.send_message("alice@example.com", "after readmission")
        .step(&lab, "send");
    alice
        .expect_message(&bob_jid, "after readmission", PATIENCE)
        .step(&lab, "bob -> alice through the readmitted core");
}

fn reload_check_names_broken_crl(lab: &Lab) {
    let path = lab.config_path("edge");
    let good = std::fs::read_to_string(&path).expect("edge config");
    let broken = good.replacen("[tunnel]\n", "[tunnel]\ncrls = [\"pki/broken.crl\"]\n", 1);
    let broken = broken
        .lines()
        .filter(|l| *l != "crls = [\"pki/traversal.crl\"]")
        .map(|l| format!("{l}\n"))
        .collect::<String>();
    let check_path = path.with_file_name("edge-broken.toml");
    std::fs::write(&check_path, broken).expect("write");
    let r = run(EDGE, &["check", "-c", &check_path.to_string_lossy()]);
    assert_ne!(r.code, 0, "edge check accepted a broken CRL: {}", r.text());
    assert!(r.text().contains("tunnel.crls"), "{}", r.text());
}

/// Run `bin args` and require exit 0.
fn ok(bin: &str, args: &[&str]) -> String {
    let r = run(bin, args);
    assert_eq!(r.code, 0, "{bin} {args:?}: {}", r.text());
    r.stdout
}

/// The production traversal PKI, as README's "Traversal PKI for production" does it: a CA made
/// offline, each side's key and CSR from its own config, certificates issued from the CSRs;
/// then a CA rotation with both daemons running: the new CA joins the trust bundles (reload),
/// the certificates are re-issued from the new CA (reload), the old CA leaves the bundles
/// (reload). No tunnel session drops meanwhile and messages keep flowing; a core restarted
/// afterwards connects with the new certificate; revoking it then cuts it off.
#[test]
fn production_pki_from_csrs_a_ca_rotation_without_dropping_the_tunnel_and_a_revocation() {
    let mut lab = start(options(106));
    let bob_jid = format!("bob@{PARTNER}");
    let mut alice = lab.client("alice").step(&lab, "alice connects");
    let mut bob = lab.client("bob").step(&lab, "bob connects");
    let pki = lab.dir.path().join("pki");
    let offline = lab.dir.path().join("offline");
    let s = |p: &std::path::Path| p.to_string_lossy().into_owned();
    let (edge_toml, core_toml) = (s(&lab.config_path("edge")), s(&lab.config_path("core")));
    let core_bin = env!("CARGO_BIN_EXE_core");

    // Issue tunnel certificates from CSRs with a CA of `dir`.
    let issue = |dir: &str| {
        let ca = offline.join(dir);
        let (ca_cert, ca_key) = (
            s(&ca.join("traversal-ca.crt")),
            s(&ca.join("traversal-ca.key")),
        );
        let csrs = offline.join(format!("{dir}-csrs"));
        let out = s(&csrs);
        ok(
            EDGE,
            &[
                "cert",
                "csr",
                "--tunnel",
                "-c",
                &edge_toml,
                "--fqdn",
                "edge.example.com",
                "--out",
                &out,
                "--force",
            ],
        );
        ok(
            core_bin,
            &[
                "cert", "csr", "--tunnel", "-c", &core_toml, "--out", &out, "--force",
            ],
        );
        for (role, stem) in [("edge", "edge-tunnel"), ("core", "core-tunnel")] {
            let said = ok(
                EDGE,
                &[
                    "pki",
                    "sign",
                    "--ca-cert",
                    &ca_cert,
                    "--ca-key",
                    &ca_key,
                    "--csr",
                    &s(&csrs.join(format!("{stem}.csr"))),
                    "--role",
                    role,
                    "--out",
                    &s(&csrs.join(format!("{stem}.crt"))),
                ],
            );
            assert!(said.contains(&format!("{role} certificate for")), "{said}");
        }
        csrs
    };
    let install = |csrs: &std::path::Path| {
        for stem in ["edge-tunnel", "core-tunnel"] {
            for ext in ["crt", "key"] {
                std::fs::copy(
                    csrs.join(format!("{stem}.{ext}")),
                    pki.join(format!("{stem}.{ext}")),
                )
                .expect("install");
            }
        }
    };
    let trust = |cas: &[&str]| {
        let bundle: String = cas
            .iter()
            .map(|dir| {
                std::fs::read_to_string(offline.join(dir).join("traversal-ca.crt")).expect("ca")
            })
            .collect();
        std::fs::write(pki.join("traversal-ca.crt"), bundle).expect("bundle");
    };
    let reload_both = |lab: &Lab| {
        let e = ok(EDGE, &["reload", "-c", &edge_toml]);
        assert!(e.starts_with("reloaded"), "{e}");
        let c = ok(core_bin, &["reload", "-c", &core_toml]);
        assert!(c.starts_with("reloaded"), "{c}");
        let _ = lab;
    };
    let talk = |lab: &Lab,
                alice: &mut causeway_testkit::Client,
                bob: &mut causeway_testkit::Client,
                body: &str| {
        alice.send_message(&bob_jid, body).step(lab, "send");
        bob.expect_message("alice@example.com", body, PATIENCE)
            .step(lab, body);
    };

    // 1. A CA made offline; certificates issued from the sides' CSRs; both restarted on them.
    ok(EDGE, &["pki", "ca", "--dir", &s(&offline.join("ca1"))]);
    let ca1 = issue("ca1");
    install(&ca1);
    trust(&["ca1"]);
    drop(lab.edge.take());
    lab.edge = Some(
        causeway_testkit::lab::spawn_daemon(
            std::path::Path::new(EDGE),
            "edge",
            lab.dir.path(),
            "info",
        )
        .step(&lab, "edge on the CSR-issued certificate"),
    );
    lab.restart_core()
        .step(&lab, "core on the CSR-issued certificate");
    lab.wait_tunnel_up(PATIENCE).step(&lab, "tunnel up on CA 1");
    talk(&lab, &mut alice, &mut bob, "on ca1");
    let sessions = |lab: &Lab| edge_log(lab).matches("core connected").count();
    let connected = sessions(&lab);

    // 2. Rotation, both running: trust both, re-issue from CA 2, trust CA 2 only.
    ok(
        EDGE,
        &[
            "pki",
            "ca",
            "--dir",
            &s(&offline.join("ca2")),
            "--name",
            "Causeway traversal CA 2",
        ],
    );
    trust(&["ca1", "ca2"]);
    reload_both(&lab);
    talk(&lab, &mut alice, &mut bob, "trusting both");
    let ca2 = issue("ca2");
    install(&ca2);
    reload_both(&lab);
    talk(&lab, &mut alice, &mut bob, "on ca2 certificates");
    trust(&["ca2"]);
    reload_both(&lab);
    talk(&lab, &mut alice, &mut bob, "trusting ca2 only");
    assert_eq!(
        sessions(&lab),
        connected,
        "the tunnel reconnected during the rotation:\n{}",
        edge_log(&lab)
    );

    // A new session (core restarted) uses the CA 2 certificates, trusted alone.
    lab.restart_core()
        .step(&lab, "core restarted after the rotation");
    assert!(
        causeway_testkit::wait_until(PATIENCE, || sessions(&lab) > connected),
        "core did not reconnect with its CA 2 certificate:\n{}",
        lab.diagnostics()
    );
    talk(&lab, &mut alice, &mut bob, "after a restart on ca2");

    // 3. Revoking the core (CA 2) cuts it off.
    let crl = s(&pki.join("traversal.crl"));
    let ca2_dir = offline.join("ca2");
    ok(
        EDGE,
        &[
            "pki",
            "revoke",
            "--ca-cert",
            &s(&ca2_dir.join("traversal-ca.crt")),
            "--ca-key",
            &s(&ca2_dir.join("traversal-ca.key")),
            "--crl",
            &crl,
            &s(&pki.join("core-tunnel.crt")),
        ],
    );
    reload_with_crls(&lab, Some("\"pki/traversal.crl\""));
    assert!(
        causeway_testkit::wait_until(PATIENCE, || {
            edge_log(&lab).contains("refusing core: its traversal certificate is not accepted")
        }),
        "the revoked core was not refused:\n{}",
        edge_log(&lab)
    );
}
