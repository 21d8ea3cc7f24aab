//! Operating the pair: `edge status`, `edge connections`, `core status`, `reload`, through each
//! daemon's admin API on its private Unix socket.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use causeway_testkit::lab::{Lab, LOCAL, LOCAL_MUC, PARTNER};
use serde_json::Value;

use crate::support::{lab_pki, options, run, start, Ran, Step, CORE, EDGE, PATIENCE};

/// `edge <command> --config <the lab's edge.toml> <extra>`: the socket comes from the config.
fn edge(lab: &Lab, command: &str, extra: &[&str]) -> Ran {
    daemon_cmd(EDGE, lab, "edge", command, extra)
}

/// `core <command> --config <the lab's core.toml> <extra>`.
fn core(lab: &Lab, command: &str, extra: &[&str]) -> Ran {
    daemon_cmd(CORE, lab, "core", command, extra)
}

fn daemon_cmd(bin: &str, lab: &Lab, which: &str, command: &str, extra: &[&str]) -> Ran {
    let config = lab.config_path(which);
    let config = config.to_str().expect("utf-8 path");
    let mut args = vec![command, "--config", config];
    args.extend_from_slice(extra);
    run(bin, &args)
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Status shows the connected core, the domains it announced and an Active federation; core's
/// status shows its tunnel connected and its configured domains.
#[test]
fn status_shows_the_connected_core_and_active_federation() {
    let lab = start(options(140));

    let st = edge(&lab, "status", &["--json"]);
    assert_eq!(st.code, 0, "edge status --json:\n{}", st.text());
    let v = st.json();
    assert_eq!(v["binary"], "edge");
    let fed = &v["edge"]["federation"];
    assert_eq!(fed["active"], true, "{v:#}");
    // The lab's federation certificate covers every domain and alias the core announced.
    assert!(
        strings(&v["warnings"]).is_empty(),
        "unexpected warnings: {v:#}"
    );
    assert_eq!(fed["state"], "Active", "{v:#}");
    let cores = v["edge"]["cores"].as_array().cloned().unwrap_or_default();
    assert_eq!(cores.len(), 1, "{v:#}");
    assert_eq!(cores[0]["id"], "core1.example.com");
    assert!(!cores[0]["version"].as_str().unwrap_or("").is_empty());
    assert!(cores[0]["since_unix"].as_u64().unwrap_or(0) > 0, "{v:#}");
    assert_eq!(cores[0]["protocol"], 2, "tunnel protocol revision: {v:#}");
    assert_eq!(strings(&cores[0]["domains"]), vec![LOCAL.to_owned()]);
    let domains = v["edge"]["domains"].as_array().cloned().unwrap_or_default();
    let kind_of = |name: &str| {
        domains
            .iter()
            .find(|d| d["name"] == name)
            .map(|d| (d["kind"].clone(), d["core"].clone()))
    };
    assert_eq!(
        kind_of(LOCAL),
        Some(("domain".into(), "core1.example.com".into())),
        "{v:#}"
    );
    assert_eq!(
        kind_of(LOCAL_MUC),
        Some(("chat node alias".into(), "core1.example.com".into())),
        "{v:#}"
    );
    let link = &v["tunnel_links"][0];
    assert_eq!(link["peer"], "core1.example.com", "{v:#}");
    assert_eq!(link["connected"], true, "{v:#}");
    assert!(v["uptime_secs"].is_u64() && v["counters"]["stanzas_in"].is_u64());

    let human = edge(&lab, "status", &[]);
    println!("$ edge status\n{}", human.stdout);
    assert_eq!(human.code, 0, "{}", human.text());
    for needle in [
        "XMPP federation: Active",
        "core1.example.com",
        LOCAL,
        LOCAL_MUC,
    ] {
        assert!(
            human.stdout.contains(needle),
            "no {needle:?} in:\n{}",
            human.stdout
        );
    }

    // core reports Connected once its side has seen the session too.
    let mut last = None;
    let connected = causeway_testkit::wait_until(Duration::from_secs(10), || {
        let r = core(&lab, "status", &["--json"]);
        let ok = r.code == 0;
        last = Some(r);
        ok
    });
    let cst = last.expect("core status ran");
    assert!(connected, "core status --json:\n{}", cst.text());
    let v = cst.json();
    let c = &v["core"];
    assert_eq!(c["core_id"], "core1.example.com", "{v:#}");
    // The lab's core s2s certificate names core1.example.com only, not the chat node alias.
    let warnings = strings(&v["warnings"]);
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("does not cover") && w.contains(LOCAL_MUC)),
        "core status shows no certificate warning for {LOCAL_MUC}: {v:#}"
    );
    assert_eq!(c["tunnel"]["state"], "connected", "{v:#}");
    assert_eq!(
        c["tunnel"]["protocol"], 2,
        "the session's tunnel protocol revision: {v:#}"
    );
    assert!(c["tunnel"]["since_unix"].as_u64().unwrap_or(0) > 0, "{v:#}");
    assert_eq!(c["domains"][0]["name"], LOCAL, "{v:#}");
    assert_eq!(
        strings(&c["domains"][0]["chat_node_aliases"]),
        vec![LOCAL_MUC.to_owned()]
    );
    assert_eq!(
        strings(&c["domains"][0]["nodes"]),
        vec![lab.internal.s2s_addr().to_string()]
    );
    // Node health: the node is active once a probe since it started succeeded (core starts
    // before it in the lab; probes run every 15 s).
    let active = causeway_testkit::wait_until(Duration::from_secs(30), || {
        core(&lab, "status", &["--json"]).json()["core"]["domains"][0]["node_state"] == "active"
    });
    assert!(active, "{}", core(&lab, "status", &[]).text());
    let human = core(&lab, "status", &[]);
    println!("$ core status\n{}", human.stdout);
    assert_eq!(human.code, 0, "{}", human.text());
    assert!(human.stdout.contains("Connected since"), "{}", human.stdout);
    assert!(
        human.stdout.contains("(tunnel protocol 2)"),
        "{}",
        human.stdout
    );
    assert!(human.stdout.contains("active"), "{}", human.stdout);
}

/// After a conversation, `edge connections` lists the outgoing session to partner.test (its
/// address, TLS, authentication) and partner.test's incoming one; core's lists the node.
#[test]
fn connections_list_the_federated_sessions() {
    let lab = start(options(141));
    let bob_jid = format!("bob@{PARTNER}");
    let alice_jid = format!("alice@{LOCAL}");
    let mut alice = lab.client("alice").step(&lab, "alice connects");
    let mut bob = lab.client("bob").step(&lab, "bob connects");
    alice.send_message(&bob_jid, "hello bob").step(&lab, "send");
    bob.expect_message(&alice_jid, "hello bob", PATIENCE)
        .step(&lab, "bob receives alice's message");
    bob.send_message(&alice_jid, "hi alice").step(&lab, "send");
    alice
        .expect_message(&bob_jid, "hi alice", PATIENCE)
        .step(&lab, "alice receives bob's reply");

    let conns = edge(&lab, "connections", &["--json"]);
    assert_eq!(conns.code, 0, "{}", conns.text());
    let sessions = conns.json().as_array().cloned().expect("a JSON array");
    let listing = serde_json::to_string_pretty(&sessions).unwrap_or_default();
    let with_partner = |direction: &str| {
        sessions
            .iter()
            .find(|s| {
                s["direction"] == direction
                    && strings(&s["remote_domains"]).iter().any(|d| d == PARTNER)
            })
            .cloned()
    };
    let out = with_partner("outgoing")
        .unwrap_or_else(|| panic!("no outgoing session to {PARTNER}:\n{listing}"));
    assert_eq!(
        out["address"],
        lab.partner.s2s_addr().to_string(),
        "{listing}"
    );
    assert!(
        out["address"]
            .as_str()
            .unwrap_or("")
            .starts_with(&format!("{}:", Lab::ip(141, 21))),
        "{listing}"
    );
    assert_eq!(strings(&out["local_domains"]), vec![LOCAL.to_owned()]);
    let version = out["tls"]["version"].as_str().unwrap_or("");
    assert!(
        version.starts_with("TLS"),
        "TLS version {version:?}:\n{listing}"
    );
    assert!(!out["tls"]["cipher"].as_str().unwrap_or("").is_empty());
    assert_eq!(out["tls"]["direct"], false, "{listing}");
    assert_eq!(out["auth"], "dialback", "{listing}");
    assert!(out["stanzas_out"].as_u64().unwrap_or(0) >= 1, "{listing}");
    assert!(out["idle_secs"].is_u64());
    let inc = with_partner("incoming")
        .unwrap_or_else(|| panic!("no incoming session from {PARTNER}:\n{listing}"));
    // Its source address is whatever partner.test's kernel picked.
    assert!(
        inc["address"]
            .as_str()
            .unwrap_or("")
            .parse::<std::net::SocketAddr>()
            .is_ok(),
        "{listing}"
    );
    assert!(inc["stanzas_in"].as_u64().unwrap_or(0) >= 1, "{listing}");
    assert!(!inc["auth"].as_str().unwrap_or("").is_empty(), "{listing}");

    let table = edge(&lab, "connections", &[]);
    println!("$ edge connections\n{}", table.stdout);
    assert_eq!(table.code, 0, "{}", table.text());
    assert!(table.stdout.contains("REMOTE DOMAIN"), "{}", table.stdout);
    assert!(table.stdout.contains(PARTNER), "{}", table.stdout);
    assert!(table.stdout.contains("outgoing") && table.stdout.contains("incoming"));

    // core's sessions are with the internal Prosody.
    let cconns = core(&lab, "connections", &["--json"]);
    assert_eq!(cconns.code, 0, "{}", cconns.text());
    let csessions = cconns.json().as_array().cloned().expect("a JSON array");
    let node = lab.internal.s2s_addr().ip().to_string();
    assert!(
        csessions.iter().any(|s| s["direction"] == "outgoing"
            && s["address"].as_str().unwrap_or("").starts_with(&node)
            && strings(&s["remote_domains"]).iter().any(|d| d == LOCAL)),
        "core has no session to the node:\n{csessions:#?}"
    );
    println!(
        "$ core connections\n{}",
        core(&lab, "connections", &[]).stdout
    );

    // The counters moved.
    let human = edge(&lab, "status", &[]);
    println!("$ edge status (after the conversation)\n{}", human.stdout);
    assert_eq!(human.code, 0, "{}", human.text());
    let st = edge(&lab, "status", &["--json"]).json();
    assert!(
        st["counters"]["stanzas_in"].as_u64().unwrap_or(0) >= 1,
        "{st:#}"
    );
    assert!(
        st["counters"]["stanzas_out"].as_u64().unwrap_or(0) >= 1,
        "{st:#}"
    );
    assert!(
        st["sessions"]["outgoing"].as_u64().unwrap_or(0) >= 1,
        "{st:#}"
    );
    assert!(
        st["sessions"]["incoming"].as_u64().unwrap_or(0) >= 1,
        "{st:#}"
    );
}

/// Without a core, federation is Inactive (exit 2) and says why; a socket nobody serves is exit
/// 1 naming the socket.
#[test]
fn status_without_a_core_is_inactive_and_an_unreachable_daemon_fails() {
    let mut lab = start(options(142));
    drop(lab.core.take());

    let mut last = None;
    let inactive = causeway_testkit::wait_until(PATIENCE, || {
        let r = edge(&lab, "status", &[]);
        let done = r.code == 2;
        last = Some(r);
        done
    });
    let st = last.expect("edge status ran");
    println!("$ edge status (core stopped)\n{}", st.stdout);
    assert!(inactive, "edge status never exited 2:\n{}", st.text());
    assert!(
        st.stdout.contains("XMPP federation: Inactive"),
        "{}",
        st.text()
    );
    assert!(st.stdout.contains("no core is connected"), "{}", st.text());

    let js = edge(&lab, "status", &["--json"]);
    assert_eq!(js.code, 2, "{}", js.text());
    let v = js.json();
    assert_eq!(v["edge"]["federation"]["active"], false);
    assert!(
        strings(&v["edge"]["federation"]["reasons"])
            .iter()
            .any(|r| r.contains("no core is connected")),
        "{v:#}"
    );
    // The domains it learnt stay (stanzas for them wait in the replay window).
    assert_eq!(v["edge"]["domains"][0]["core_connected"], false, "{v:#}");

    let nowhere = run(EDGE, &["status", "--socket", "/nonexistent"]);
    assert_eq!(nowhere.code, 1, "{}", nowhere.text());
    assert!(
        nowhere.stderr.contains("/nonexistent"),
        "{}",
        nowhere.text()
    );

    // core is gone: its command cannot reach it.
    let gone = core(&lab, "status", &[]);
    assert_eq!(gone.code, 1, "{}", gone.text());
    let socket = lab.admin_socket("core");
    assert!(
        gone.stderr.contains(socket.to_str().unwrap_or("?")),
        "{}",
        gone.text()
    );
}

fn assert_private_socket(path: &Path) {
    let meta = std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("admin socket {}: {e}", path.display()));
    assert!(
        meta.file_type().is_socket(),
        "{} is not a socket",
        path.display()
    );
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "{} has mode {:o}",
        path.display(),
        meta.permissions().mode() & 0o777
    );
}

/// Both admin sockets are 0600; a socket left by a killed daemon is replaced at the next start.
#[test]
fn admin_sockets_are_private_and_stale_ones_are_replaced() {
    let mut lab = start(options(143));
    let (edge_sock, core_sock) = (lab.admin_socket("edge"), lab.admin_socket("core"));
    assert_private_socket(&edge_sock);
    assert_private_socket(&core_sock);

    // SIGKILL: core cannot remove its socket.
    if let Some(c) = lab.core.as_mut() {
        c.set_grace(Duration::ZERO);
        c.kill();
    }
    assert!(
        std::fs::symlink_metadata(&core_sock).is_ok(),
        "a killed core left no socket file"
    );
    lab.restart_core()
        .step(&lab, "core restarts over its stale socket");
    assert_private_socket(&core_sock);
    let reached = causeway_testkit::wait_until(PATIENCE, || core(&lab, "status", &[]).code == 0);
    assert!(reached, "{}", core(&lab, "status", &[]).text());
}

/// `edge reload` / `core reload` print what the daemon said and exit 0 when it applied the
/// config, 1 when it refused; the daemon keeps running either way.
#[test]
fn reload_reports_what_the_daemon_did() {
    let lab = start(options(144));
    for (bin, which) in [(EDGE, "edge"), (CORE, "core")] {
        let js = daemon_cmd(bin, &lab, which, "reload", &["--json"]);
        let v = js.json();
        let ok = v["ok"].as_bool().expect("ok is a bool");
        let message = v["message"].as_str().unwrap_or("").to_owned();
        assert!(!message.is_empty(), "{which} reload said nothing: {v:#}");
        assert_eq!(js.code, if ok { 0 } else { 1 }, "{which}: {}", js.text());

        let human = daemon_cmd(bin, &lab, which, "reload", &[]);
        println!("$ {which} reload\n{}", human.text());
        assert!(human.stdout.contains(&message), "{}", human.text());
        let refused = human.stdout.starts_with("reload refused");
        assert_eq!(refused, !ok, "{}", human.text());
        assert_eq!(human.code, if refused { 1 } else { 0 }, "{}", human.text());

        let status = daemon_cmd(bin, &lab, which, "status", &[]);
        assert_eq!(status.code, 0, "{which} after reload: {}", status.text());
    }
}

/// `[admin].tcp` must be a loopback address and needs a token file only the daemon's group
/// reads; `check` names the setting.
#[test]
fn admin_tcp_must_be_loopback_with_a_private_token() {
    let dir = causeway_testkit::temp_dir("ops-cfg-").expect("dir");
    lab_pki(dir.path());
    let cfg = causeway_testkit::lab::edge_config(
        "127.0.0.1:5269".parse().expect("addr"),
        "127.0.0.1:7400".parse().expect("addr"),
        "127.0.0.1:53".parse().expect("addr"),
        &[],
        "",
    );
    let file = dir.path().join("edge.toml");
    std::fs::write(&file, &cfg).expect("write");
    let file_s = file.to_str().expect("utf-8");
    let ok = run(EDGE, &["check", "--config", file_s]);
    assert_eq!(ok.code, 0, "{}", ok.text());

    let bad = cfg.replace(
        "socket = \"edge.sock\"",
        "socket = \"edge.sock\"\ntcp = \"0.0.0.0:7401\"",
    );
    assert_ne!(bad, cfg);
    std::fs::write(&file, &bad).expect("write");
    let refused = run(EDGE, &["check", "--config", file_s]);
    assert_eq!(refused.code, 1, "{}", refused.text());
    assert!(refused.stderr.contains("admin.tcp"), "{}", refused.text());

    let good = cfg.replace(
        "socket = \"edge.sock\"",
        "socket = \"edge.sock\"\ntcp = \"127.0.0.1:7401\"",
    );
    std::fs::write(&file, &good).expect("write");
    // Loopback is not enough: any local user reaches it, so it needs a token.
    let tokenless = run(EDGE, &["check", "--config", file_s]);
    assert_eq!(tokenless.code, 1, "{}", tokenless.text());
    assert!(
        tokenless.stderr.contains("admin.tcp_token_file"),
        "{}",
        tokenless.text()
    );
    let with_token = good.replace(
        "tcp = \"127.0.0.1:7401\"",
        "tcp = \"127.0.0.1:7401\"\ntcp_token_file = \"admin-token\"",
    );
    std::fs::write(&file, &with_token).expect("write");
    let token = dir.path().join("admin-token");
    std::fs::write(&token, "0123456789abcdef0123456789abcdef\n").expect("token");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let readable = run(EDGE, &["check", "--config", file_s]);
    assert_eq!(readable.code, 1, "{}", readable.text());
    assert!(
        readable.stderr.contains("open to other users"),
        "{}",
        readable.text()
    );
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let fine = run(EDGE, &["check", "--config", file_s]);
    assert_eq!(fine.code, 0, "{}", fine.text());
}
