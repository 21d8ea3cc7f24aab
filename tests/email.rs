//! Email address for federation: alice@example.com federates as alice.smith@example.com.

use std::net::Ipv4Addr;
use std::path::Path;

use causeway_core::email::Directory as _;
use causeway_core::email::{EmailConfig, EmailSection, LdapDirectory, Source, Translation};
use causeway_testkit::lab::{Lab, LOCAL_MUC, PARTNER};
use causeway_testkit::slapd::{person, ADMIN_DN, ADMIN_PASSWORD, PEOPLE_DN};
use causeway_testkit::{Certs, Client, ClientEvent, Slapd};

use crate::support::{lab_pki, options, run, start, Step, CORE, PATIENCE};

const EMAIL: &str = "alice.smith@example.com";

/// Partners see alice by her email address and reach her by it; her raw JID is refused with a
/// service-unavailable error. In a non-anonymous room on our chat node, bob sees her email
/// address as her real JID, and her invitation comes from it; in a room on partner.test, the
/// room's view of her (her email address) reaches her as her JID.
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
    let mut alice = lab.client("alice").step(&lab, "alice connects");
    let mut bob = lab.client("bob").step(&lab, "bob connects");
    federate_with_the_email_address(&lab, &mut alice, &mut bob, EMAIL);
    rooms_show_the_email_address(&lab, &mut alice, &mut bob);
}

/// The story every directory source must pass, for alice federating as `email`: outbound
/// `from`, a subscription request, inbound to the email address, the raw JID refused, and
/// core's log saying so.
fn federate_with_the_email_address(lab: &Lab, alice: &mut Client, bob: &mut Client, email: &str) {
    let bob_jid = format!("bob@{PARTNER}");
    // Outbound: from = the email address, resource kept.
    alice
        .send_message(&bob_jid, "hello from alice")
        .step(lab, "send");
    let seen = bob
        .wait_for(PATIENCE, |ev| {
            matches!(ev, ClientEvent::Message { body: Some(b), .. } if b == "hello from alice")
        })
        .step(lab, "bob waits for alice's message");
    let Some(ClientEvent::Message { from, .. }) = seen else {
        panic!("bob never got alice's message\n{}", lab.diagnostics());
    };
    let resource = from.strip_prefix(&format!("{email}/"));
    assert!(
        resource.is_some_and(|r| !r.is_empty()),
        "bob saw alice's message from {from}, not {email}/<resource>\n{}",
        lab.diagnostics()
    );

    // Presence too: a subscription request comes from the email address.
    alice
        .send_presence(Some(&bob_jid), Some("subscribe"), None)
        .step(lab, "subscribe");
    bob.expect_presence(email, Some("subscribe"), PATIENCE)
        .step(
            lab,
            "bob sees alice's subscription request from her email address",
        );

    // Inbound: the email address reaches alice's JID.
    bob.send_message(email, "hi via your email address")
        .step(lab, "send");
    let seen = alice
        .wait_for(PATIENCE, |ev| {
            matches!(ev, ClientEvent::Message { body: Some(b), .. } if b == "hi via your email address")
        })
        .step(lab, "alice waits for bob's message");
    let Some(ClientEvent::Message { from, to, .. }) = seen else {
        panic!("alice never got bob's message\n{}", lab.diagnostics());
    };
    assert!(from.starts_with(&bob_jid), "from {from}");
    assert!(to.starts_with("alice@example.com"), "to {to}");

    // The raw JID of a user with an email address: dropped, and bob hears why.
    bob.send_message("alice@example.com", "hi via your raw JID")
        .step(lab, "send");
    let bounced = bob
        .wait_for(PATIENCE, |ev| {
            matches!(ev, ClientEvent::Message { from, mtype, xml, .. }
                if from == "alice@example.com" && mtype == "error" && xml.contains("service-unavailable"))
        })
        .step(lab, "bob waits for the error");
    assert!(
        bounced.is_some(),
        "bob got no service-unavailable error for alice's raw JID\n{}",
        lab.diagnostics()
    );
    let leaked = alice
        .wait_for(std::time::Duration::from_secs(3), |ev| {
            matches!(ev, ClientEvent::Message { body: Some(b), .. } if b == "hi via your raw JID")
        })
        .step(lab, "alice must not get it");
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

/// Rooms reveal real JIDs when non-anonymous: those of our users leave as email addresses, and
/// a partner room's view of alice (her email address) arrives as her JID.
fn rooms_show_the_email_address(lab: &Lab, alice: &mut Client, bob: &mut Client) {
    let room = format!("lobby@{LOCAL_MUC}");
    alice
        .join_muc(&room, "alice")
        .step(lab, "alice creates the room");
    make_non_anonymous(lab, alice, &room);
    bob.join_muc(&room, "bob")
        .step(lab, "bob (partner.test) joins");
    let seen = bob
        .wait_for(PATIENCE, |ev| {
            matches!(ev, ClientEvent::Presence { from, .. } if from == &format!("{room}/alice"))
        })
        .step(lab, "bob waits for alice's room presence");
    let Some(ClientEvent::Presence { xml, .. }) = seen else {
        panic!("bob never saw alice in the room\n{}", lab.diagnostics());
    };
    assert!(
        xml.contains(&format!("{EMAIL}/")) && !xml.contains("alice@example.com"),
        "bob saw alice's real JID in the room as something else than {EMAIL}: {xml}\n{}",
        lab.diagnostics()
    );

    // A mediated invitation relayed by our room names alice by her email address. (Prosody
    // also writes her JID into the invitation's body text: text is never translated.)
    alice
        .send_raw(&format!(
            "<message to='{room}'><x xmlns='http://jabber.org/protocol/muc#user'>\
             <invite to='bob@{PARTNER}'><reason>email test</reason></invite></x></message>"
        ))
        .step(lab, "alice invites bob");
    let invite = bob
        .wait_for(PATIENCE, |ev| {
            matches!(ev, ClientEvent::Message { from, xml, .. } if from == &room && xml.contains("invite"))
        })
        .step(lab, "bob waits for the invitation");
    let Some(ClientEvent::Message { xml, .. }) = invite else {
        panic!("bob got no invitation\n{}", lab.diagnostics());
    };
    assert!(
        xml.contains(&format!("<invite from=\"{EMAIL}/")),
        "the invitation does not come from {EMAIL}: {xml}"
    );

    // Inbound: a non-anonymous room on partner.test tells alice who she is there.
    let outside = format!("ops@conference.{PARTNER}");
    bob.join_muc(&outside, "bob")
        .step(lab, "bob creates a room at home");
    make_non_anonymous(lab, bob, &outside);
    alice
        .join_muc(&outside, "alice")
        .step(lab, "alice joins the partner's room");
    let own = alice
        .wait_for(PATIENCE, |ev| {
            matches!(ev, ClientEvent::Presence { from, xml, .. }
                if from == &format!("{outside}/alice") && xml.contains("110"))
        })
        .step(lab, "alice's own presence in the partner's room");
    let Some(ClientEvent::Presence { xml, .. }) = own else {
        panic!(
            "alice never got her own room presence\n{}",
            lab.diagnostics()
        );
    };
    assert!(
        xml.contains("jid=\"alice@example.com/") && !xml.contains(EMAIL),
        "alice's own item in the partner's room is not her JID: {xml}"
    );
}

/// Make `room` non-anonymous (`muc#roomconfig_whois` = anyone): its owner `client` submits
/// the room configuration form and waits for the result.
fn make_non_anonymous(lab: &Lab, client: &mut Client, room: &str) {
    let id = "email-whois";
    client
        .send_raw(&format!(
            "<iq type='set' to='{room}' id='{id}'>\
             <query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#roomconfig</value></field>\
             <field var='muc#roomconfig_whois'><value>anyone</value></field>\
             </x></query></iq>"
        ))
        .step(lab, "configure the room");
    let answer = client
        .wait_for(
            PATIENCE,
            |ev| matches!(ev, ClientEvent::Iq { id: Some(i), .. } if i == id),
        )
        .step(lab, "the room's answer");
    assert!(
        matches!(&answer, Some(ClientEvent::Iq { itype, .. }) if itype == "result"),
        "{room} refused to become non-anonymous: {answer:?}\n{}",
        lab.diagnostics()
    );
}

/// `core check` reads the directory relative to the config file and names a bad line.
#[test]
fn core_check_validates_the_directory_file() {
    let dir = causeway_testkit::temp_dir("causeway-email-check-").expect("temp dir");
    let config = example_config(dir.path(), &COMMENTED.replace("# ", ""));
    let check = |users: &str| {
        std::fs::write(dir.path().join("users.csv"), users).expect("users.csv");
        let ran = run(CORE, &["check", "--config", &config]);
        (ran.code == 0, ran.text())
    };
    let (ok, text) = check("# jid,email\nalice@example.com,alice.smith@example.com\n");
    assert!(ok, "a good directory is refused: {text}");
    for (users, want) in [
        (
            "alice@example.com,a@example.com\n\nbob@example.com,A@example.com\n",
            "line 3: email address a@example.com is already listed by the user on line 1",
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

/// The example config's commented-out `[email_translation]` section.
const COMMENTED: &str = "# [email_translation]\n# enabled = true\n# directory = \"users.csv\"\n";

/// deploy/core.example.toml in `dir` with a lab PKI, its commented-out `[email_translation]`
/// section replaced by `section`; the config file's path.
fn example_config(dir: &Path, section: &str) -> String {
    lab_pki(dir);
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/core.example.toml"),
    )
    .expect("example config");
    assert!(
        example.contains(COMMENTED),
        "the example documents the section"
    );
    let config = dir.join("core.toml");
    std::fs::write(&config, example.replace(COMMENTED, section)).expect("config");
    config.display().to_string()
}

/// The people of the test directory: alice with her email address, dave without one.
fn people() -> Vec<String> {
    vec![person("alice", Some(EMAIL)), person("dave", None)]
}

/// `[email_translation]` for the test directory at `url` (user IDs at example.com), plus
/// `extra` lines.
fn ldap_section(url: &str, extra: &str) -> String {
    format!(
        "[email_translation]\nenabled = true\nsource = \"ldap\"\nldap_url = \"{url}\"\n\
         ldap_bind_dn = \"{ADMIN_DN}\"\nldap_bind_password = \"{ADMIN_PASSWORD}\"\n\
         ldap_base_dn = \"{PEOPLE_DN}\"\nldap_jid_domain = \"example.com\"\n{extra}"
    )
}

/// The same story with the addresses in OpenLDAP; then alice's `mail` changes in the directory
/// and, within a refresh (1 s), she federates with the new address.
#[test]
fn users_federate_with_their_email_address_from_ldap() {
    let slapd = Slapd::start(Ipv4Addr::new(127, 181, 0, 61), &people()).expect("slapd");
    let mut opts = options(181);
    opts.core_extra = ldap_section(&slapd.url, "ldap_refresh_seconds = 1\n");
    let lab = start(opts);
    let mut alice = lab.client("alice").step(&lab, "alice connects");
    let mut bob = lab.client("bob").step(&lab, "bob connects");
    federate_with_the_email_address(&lab, &mut alice, &mut bob, EMAIL);
    let core_log = || std::fs::read_to_string(lab.dir.path().join("core.log")).unwrap_or_default();
    assert!(
        core_log().contains("email directory loaded from LDAP"),
        "{}",
        lab.diagnostics()
    );

    let renamed = "alice.jones@example.com";
    slapd
        .modify(&format!(
            "dn: uid=alice,{PEOPLE_DN}\nchangetype: modify\nreplace: mail\nmail: {renamed}\n"
        ))
        .expect("ldapmodify");
    // Each probe is a message alice sends; bob sees it from the new address once core has
    // refreshed.
    let mut probe = 0;
    let mut last_from = String::new();
    let renamed_seen = causeway_testkit::wait_until(PATIENCE, || {
        probe += 1;
        let body = format!("after the change {probe}");
        alice
            .send_message(&format!("bob@{PARTNER}"), &body)
            .step(&lab, "send");
        let seen = bob
            .wait_for(
                PATIENCE,
                |ev| matches!(ev, ClientEvent::Message { body: Some(b), .. } if *b == body),
            )
            .step(&lab, "bob waits for the probe");
        if let Some(ClientEvent::Message { from, .. }) = seen {
            last_from = from;
        }
        if last_from.starts_with(&format!("{renamed}/")) {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
        false
    });
    assert!(
        renamed_seen,
        "after the directory changed, alice still federates as {last_from}\n{}\n---- slapd ----\n{}",
        lab.diagnostics(),
        slapd.log_tail(20)
    );
    bob.send_message(renamed, "hi via your new address")
        .step(&lab, "send");
    alice
        .expect_message(
            &format!("bob@{PARTNER}"),
            "hi via your new address",
            PATIENCE,
        )
        .step(&lab, "alice is reached by her new address");
    assert!(
        core_log().contains("LDAP refresh changed the users"),
        "{}",
        lab.diagnostics()
    );
}

/// A directory that cannot be loaded stops core from starting, and the error names the setting
/// at fault; ldaps works with `ldap_ca`; once loaded, a directory that goes away keeps the last
/// users it gave.
#[tokio::test]
async fn ldap_errors_name_the_setting_and_a_failed_refresh_keeps_the_users() {
    let files = causeway_testkit::temp_dir("causeway-email-ldap-").expect("temp dir");
    let ip = Ipv4Addr::new(127, 181, 0, 62);
    let ca = Certs::new(&files.path().join("ca")).expect("CA");
    let cert = ca.issue(&[&ip.to_string()]).expect("certificate");
    let slapd = Slapd::start_with(ip, &people(), Some(&cert)).expect("slapd");
    let ldaps = slapd.ldaps_url.clone().expect("ldaps");
    let locals = vec![
        "example.com".to_owned(),
        "conference.example.com".to_owned(),
    ];
    let section = |url: &str| EmailSection {
        enabled: true,
        source: Some(Source::Ldap),
        ldap_url: Some(url.to_owned()),
        ldap_bind_dn: Some(ADMIN_DN.into()),
        ldap_bind_password: Some(ADMIN_PASSWORD.into()),
        ldap_base_dn: Some(PEOPLE_DN.into()),
        ldap_jid_domain: Some("example.com".into()),
        ldap_refresh_seconds: Some(1),
        ..EmailSection::default()
    };
    let start = |section: EmailSection| {
        let locals = locals.clone();
        async move {
            let config = EmailConfig::from_section(&section, &locals)?;
            config.start().await
        }
    };
    let refused = |result: anyhow::Result<Translation>| match result {
        Ok(t) => panic!("started: {t:?}"),
        Err(e) => format!("{e:#}"),
    };

    let e = refused(
        start(EmailSection {
            ldap_bind_password: Some("wrong-password".into()),
            ..section(&slapd.url)
        })
        .await,
    );
    assert!(
        e.starts_with("email_translation.ldap_bind_password: ") && e.contains("invalidCredentials"),
        "{e}"
    );
    let closed = format!("ldap://{ip}:{}", causeway_testkit::free_port(ip));
    let e = refused(start(section(&closed)).await);
    assert!(
        e.starts_with(&format!(
            "email_translation.ldap_url: cannot connect to {closed}: "
        )),
        "{e}"
    );
    let e = refused(
        start(EmailSection {
            ldap_base_dn: Some("ou=nobody,dc=example,dc=com".into()),
            ..section(&slapd.url)
        })
        .await,
    );
    assert!(
        e.starts_with("email_translation.ldap_base_dn: ") && e.contains("noSuchObject"),
        "{e}"
    );
    // ldaps: the system's CA store does not know the lab CA; ldap_ca does.
    let e = refused(start(section(&ldaps)).await);
    assert!(
        e.starts_with("email_translation.ldap_url: ") && e.contains("ldap_ca"),
        "{e}"
    );
    let t = start(EmailSection {
        ldap_ca: Some(ca.ca_pem.clone()),
        ..section(&ldaps)
    })
    .await
    .expect("ldaps with ldap_ca");
    assert!(
        format!("{t:?}").contains("(1 users)"),
        "alice (dave has no mail): {t:?}"
    );

    // Loaded; then the server goes away: refreshes fail, alice keeps her address.
    let EmailConfig::Ldap(settings) =
        EmailConfig::from_section(&section(&slapd.url), &locals).expect("settings")
    else {
        panic!("not LDAP");
    };
    let dir = LdapDirectory::load(*settings).await.expect("loaded");
    dir.spawn_refresh();
    slapd.stop();
    let failing = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        while !dir.describe().contains("refresh failing") {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(failing.is_ok(), "no refresh failed: {}", dir.describe());
    assert!(
        dir.describe().contains("ldap_url: cannot connect"),
        "{}",
        dir.describe()
    );
    let alice = dir.by_jid("alice@example.com").expect("alice is kept");
    assert_eq!(alice.email, EMAIL);
}

/// `core run` refuses to start when the LDAP bind fails, naming the setting (and binds
/// nothing first); `core check` does not contact the server.
#[test]
fn core_does_not_start_when_the_ldap_bind_fails() {
    let slapd = Slapd::start(Ipv4Addr::new(127, 181, 0, 63), &people()).expect("slapd");
    let dir = causeway_testkit::temp_dir("causeway-email-ldap-run-").expect("temp dir");
    let section = ldap_section(&slapd.url, "").replace(ADMIN_PASSWORD, "wrong-password");
    let config = example_config(dir.path(), &section);
    let check = run(CORE, &["check", "--config", &config]);
    assert_eq!(check.code, 0, "core check: {}", check.text());
    let ran = run(CORE, &["run", "--config", &config]);
    assert_eq!(ran.code, 1, "core run: {}", ran.text());
    assert!(
        ran.text()
            .contains("email_translation.ldap_bind_password: ")
            && ran.text().contains("invalidCredentials"),
        "{}",
        ran.text()
    );
}
