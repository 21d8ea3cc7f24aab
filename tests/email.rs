//! Email address for federation: alice@example.com federates as alice.smith@example.com.

use causeway_testkit::lab::PARTNER;
use causeway_testkit::ClientEvent;

use crate::support::{options, start, Step, PATIENCE};

const EMAIL: &str = "alice.smith@example.com";

/// Partners see alice by her email address and reach her by it; her raw JID is refused with a
/// service-unavailable error.
#[test]
fn users_federate_with_their_email_address() {
    let files = causeway_testkit::temp_dir("causeway-email-").expect("temp dir");
    let users = files.path().join("users.csv");
    std::fs::write(
        &users,
        format!("# jid,email\n\nalice@example.com,{EMAIL}\n"),
    )
    .expect("users.csv");
    let mut opts = options(180);
    opts.core_extra = format!(
        "[email_translation]\nenabled = true\ndirectory = \"{}\"\n",
        users.display()
    );
    let lab = start(opts);
    let bob_jid = format!("bob@{PARTNER}");
    let mut alice = lab.client("alice").step(&lab, "alice connects");
    let mut bob = lab.client("bob").step(&lab, "bob connects");

    // Outbound: from = the email address, resource kept.
    alice
        .send_message(&bob_jid, "hello from alice")
        .step(&lab, "send");
    let seen = bob
        .wait_for(PATIENCE, |ev| {
            matches!(ev, ClientEvent::Message { body: Some(b), .. } if b == "hello from alice")
        })
        .step(&lab, "bob waits for alice's message");
    let Some(ClientEvent::Message { from, .. }) = seen else {
        panic!("bob never got alice's message\n{}", lab.diagnostics());
    };
    let resource = from.strip_prefix(&format!("{EMAIL}/"));
    assert!(
        resource.is_some_and(|r| !r.is_empty()),
        "bob saw alice's message from {from}, not {EMAIL}/<resource>\n{}",
        lab.diagnostics()
    );

    // Presence too: a subscription request comes from the email address.
    alice
        .send_presence(Some(&bob_jid), Some("subscribe"), None)
        .step(&lab, "subscribe");
    bob.expect_presence(EMAIL, Some("subscribe"), PATIENCE)
        .step(
            &lab,
            "bob sees alice's subscription request from her email address",
        );

    // Inbound: the email address reaches alice's JID.
    bob.send_message(EMAIL, "hi via your email address")
        .step(&lab, "send");
    let seen = alice
        .wait_for(PATIENCE, |ev| {
            matches!(ev, ClientEvent::Message { body: Some(b), .. } if b == "hi via your email address")
        })
        .step(&lab, "alice waits for bob's message");
    let Some(ClientEvent::Message { from, to, .. }) = seen else {
        panic!("alice never got bob's message\n{}", lab.diagnostics());
    };
    assert!(from.starts_with(&bob_jid), "from {from}");
    assert!(to.starts_with("alice@example.com"), "to {to}");

    // The raw JID of a user with an email address: dropped, and bob hears why.
    bob.send_message("alice@example.com", "hi via your raw JID")
        .step(&lab, "send");
    let bounced = bob
        .wait_for(PATIENCE, |ev| {
            matches!(ev, ClientEvent::Message { from, mtype, xml, .. }
                if from == "alice@example.com" && mtype == "error" && xml.contains("service-unavailable"))
        })
        .step(&lab, "bob waits for the error");
    assert!(
        bounced.is_some(),
        "bob got no service-unavailable error for alice's raw JID\n{}",
        lab.diagnostics()
    );
    let leaked = alice
        .wait_for(std::time::Duration::from_secs(3), |ev| {
            matches!(ev, ClientEvent::Message { body: Some(b), .. } if b == "hi via your raw JID")
        })
        .step(&lab, "alice must not get it");
    assert!(
        leaked.is_none(),
        "alice got a message sent to her raw JID\n{}",
        lab.diagnostics()
    );

    let core_log = std::fs::read_to_string(lab.dir.path().join("core.log")).unwrap_or_default();
    assert!(
        core_log.contains("email address for federation: on"),
        "core did not log that translation is on\n{}",
        lab.diagnostics()
    );
    assert!(
        core_log.contains("stanza to the JID of a user who federates with an email address"),
        "core did not log the refusal\n{}",
        lab.diagnostics()
    );
}

/// `core check` reads the directory relative to the config file and names a bad line.
#[test]
fn core_check_validates_the_directory_file() {
    let dir = causeway_testkit::temp_dir("causeway-email-check-").expect("temp dir");
    let pki = dir.path().join("pki");
    causeway_pki::lab_init(
        &pki,
        &["edge.example.com"],
        "core1.example.com",
        &["example.com", "conference.example.com"],
        &["core1.example.com"],
        true,
    )
    .expect("lab pki");
    std::fs::write(
        pki.join("core-dialback-secret"),
        "example-core-secret-000\n",
    )
    .expect("secret");
    let example = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/core.example.toml"),
    )
    .expect("example config");
    let commented = "# [email_translation]\n# enabled = true\n# directory = \"users.csv\"\n";
    assert!(
        example.contains(commented),
        "the example documents the section"
    );
    let config = dir.path().join("core.toml");
    std::fs::write(
        &config,
        example.replace(commented, &commented.replace("# ", "")),
    )
    .expect("config");
    let check = |users: &str| {
        std::fs::write(dir.path().join("users.csv"), users).expect("users.csv");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_core"))
            .args(["check", "--config"])
            .arg(&config)
            .output()
            .expect("core check");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let (ok, text) = check("# jid,email\nalice@example.com,alice.smith@example.com\n");
    assert!(ok, "a good directory is refused: {text}");
    for (users, want) in [
        (
            "alice@example.com,a@example.com\n\nbob@example.com,A@example.com\n",
            "line 3: email address a@example.com is already listed on line 1",
        ),
        (
            "alice@example.com,alice@partner.test\n",
            "line 1: email address domain partner.test is not a local domain",
        ),
        ("alice@example.com\n", "line 1: expected `jid,email`"),
    ] {
        let (ok, text) = check(users);
        assert!(!ok, "{users:?} accepted");
        assert!(
            text.contains("email_translation.directory") && text.contains(want),
            "{users:?}: {text}"
        );
    }
}
