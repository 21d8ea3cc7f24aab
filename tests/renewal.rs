//! Certificates that renew themselves: the certbot deploy hook (deploy/certbot/) replaces the
//! federation certificate under a running edge while a conversation flows.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use causeway_testkit::lab::{Lab, PARTNER};

use crate::support::{edge_log, options, run, start, Step, EDGE, PATIENCE};

/// The SHA-256 fingerprint of the certificate a new TLS connection to `addr` is shown.
fn presented(addr: SocketAddr) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {addr} -servername example.com </dev/null 2>/dev/null \
             | openssl x509 -noout -fingerprint -sha256"
        ))
        .output()
        .expect("openssl (apt-get install openssl)");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn fingerprint(pem: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(pem)
        .output()
        .expect("openssl");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The ids of the edge's s2s sessions with partner.test.
fn partner_sessions(lab: &Lab) -> Vec<String> {
    let socket = lab.admin_socket("edge");
    let out = run(
        EDGE,
        &[
            "connections",
            "--json",
            "--socket",
            socket.to_str().expect("utf-8"),
        ],
    );
    let mut ids: Vec<String> = out
        .json()
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|s| s.to_string().contains(PARTNER))
        .map(|s| s["id"].to_string())
        .collect();
    ids.sort();
    ids
}

/// A renewed certificate from the same CA, made the way an administrator would: a key and a
/// CSR from `edge cert csr`, signed by the CA.
fn renewed_lineage(lab: &Lab) -> std::path::PathBuf {
    let live = lab.dir.path().join("letsencrypt-live");
    std::fs::create_dir_all(&live).expect("dir");
    let config = lab.config_path("edge");
    let csr = run(
        EDGE,
        &[
            "cert",
            "csr",
            "--config",
            config.to_str().expect("utf-8"),
            "--out",
            live.to_str().expect("utf-8"),
            "--name",
            "renewed",
            // The lab's edge learns its domains from core: name them.
            "--fqdn",
            "edge.example.com",
            "--domain",
            "example.com",
            "--domain",
            "conference.example.com",
        ],
    );
    assert_eq!(csr.code, 0, "{}", csr.text());
    let pki = lab.dir.path().join("pki");
    let signed = Command::new("openssl")
        .args([
            "x509",
            "-req",
            "-days",
            "90",
            "-copy_extensions",
            "copy",
            "-in",
        ])
        .arg(live.join("renewed.csr"))
        .arg("-CA")
        .arg(pki.join("federation-ca.crt"))
        .arg("-CAkey")
        .arg(pki.join("federation-ca.key"))
        .arg("-out")
        .arg(live.join("cert.pem"))
        .output()
        .expect("openssl x509 -req");
    assert!(
        signed.status.success(),
        "{}",
        String::from_utf8_lossy(&signed.stderr)
    );
    let chain = format!(
        "{}{}",
        std::fs::read_to_string(live.join("cert.pem")).expect("cert"),
        std::fs::read_to_string(pki.join("federation-ca.crt")).expect("ca")
    );
    std::fs::write(live.join("fullchain.pem"), chain).expect("chain");
    std::fs::copy(live.join("renewed.key"), live.join("privkey.pem")).expect("key");
    live
}

/// Run the deploy hook as certbot would, for the lab's edge.
fn deploy_hook(lab: &Lab, lineage: &Path) -> crate::support::Ran {
    let hook =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/certbot/causeway-edge-deploy-hook");
    let pki = lab.dir.path().join("pki");
    let out = Command::new(hook)
        .env("RENEWED_LINEAGE", lineage)
        .env("CAUSEWAY_CONFIG", lab.config_path("edge"))
        .env("CAUSEWAY_CERT", pki.join("edge-federation.crt"))
        .env("CAUSEWAY_KEY", pki.join("edge-federation.key"))
        .env("CAUSEWAY_GROUP", "root")
        .env("CAUSEWAY_EDGE", EDGE)
        .output()
        .expect("run the deploy hook");
    crate::support::Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// alice and bob talk (60 messages each way) while certbot's deploy hook installs a renewed
/// federation certificate: every message arrives, partner.test's sessions are the same ones
/// afterwards (none dropped), and a new connection is shown the new certificate. A renewal the
/// edge refuses (a key that does not match) puts the previous files back and fails the hook.
#[test]
fn a_renewed_certificate_is_taken_under_load_without_dropping_a_session() {
    let subnet = 254;
    let direct = SocketAddr::from((Lab::ip(subnet, 2), 5270));
    let mut opts = options(subnet);
    opts.edge_federation_extra = format!("direct_tls_listen = \"{direct}\"");
    let lab = start(opts);
    let bob_jid = format!("bob@{PARTNER}");
    let alice_jid = "alice@example.com".to_owned();
    let mut alice = lab.client("alice").step(&lab, "alice connects");
    let mut bob = lab.client("bob").step(&lab, "bob connects");
    alice.send_message(&bob_jid, "warm-up").step(&lab, "send");
    bob.expect_message(&alice_jid, "warm-up", PATIENCE)
        .step(&lab, "warm-up a->b");
    bob.send_message(&alice_jid, "warm-up").step(&lab, "send");
    alice
        .expect_message(&bob_jid, "warm-up", PATIENCE)
        .step(&lab, "warm-up b->a");
    let sessions = partner_sessions(&lab);
    assert!(!sessions.is_empty(), "no session with {PARTNER}");
    let before = presented(direct);
    assert!(
        before.contains("Fingerprint="),
        "no certificate at {direct}: {before:?}"
    );

    let lineage = renewed_lineage(&lab);
    let (n, renew_at) = (60, 20);
    let mut hook = None;
    for i in 0..n {
        if i == renew_at {
            hook = Some(deploy_hook(&lab, &lineage));
        }
        alice
            .send_message(&bob_jid, &format!("a2b-{i}"))
            .step(&lab, "send");
        bob.send_message(&alice_jid, &format!("b2a-{i}"))
            .step(&lab, "send");
        std::thread::sleep(Duration::from_millis(20));
    }
    let hook = hook.expect("the hook ran");
    assert_eq!(hook.code, 0, "{}", hook.text());
    let got_bob = bob
        .collect_messages(&alice_jid, n, PATIENCE)
        .step(&lab, "bob gets all 60");
    let got_alice = alice
        .collect_messages(&bob_jid, n, PATIENCE)
        .step(&lab, "alice gets all 60");
    for i in 0..n {
        assert!(
            got_bob.contains(&format!("a2b-{i}")),
            "a2b-{i} lost: {got_bob:?}"
        );
        assert!(
            got_alice.contains(&format!("b2a-{i}")),
            "b2a-{i} lost: {got_alice:?}"
        );
    }
    assert_eq!(
        partner_sessions(&lab),
        sessions,
        "partner.test's sessions changed across the renewal\n{}",
        edge_log(&lab)
    );
    let after = presented(direct);
    assert_ne!(
        after, before,
        "a new connection still gets the old certificate"
    );
    assert_eq!(after, fingerprint(&lineage.join("cert.pem")));

    // A renewal the edge refuses: the previous files come back and the hook fails.
    let bad = lab.dir.path().join("bad-live");
    std::fs::create_dir_all(&bad).expect("dir");
    std::fs::copy(lineage.join("fullchain.pem"), bad.join("fullchain.pem")).expect("copy");
    std::fs::copy(
        lab.dir.path().join("pki/edge-tunnel.key"),
        bad.join("privkey.pem"),
    )
    .expect("copy");
    let refused = deploy_hook(&lab, &bad);
    assert_eq!(refused.code, 1, "{}", refused.text());
    assert!(
        refused.stderr.contains("the previous one is back"),
        "{}",
        refused.text()
    );
    assert_eq!(
        fingerprint(&lab.dir.path().join("pki/edge-federation.crt")),
        fingerprint(&lineage.join("cert.pem")),
        "the renewed certificate is back in place"
    );
    assert_eq!(presented(direct), after);
}
