//! IM&P discovery and health: core finds the nodes of example.com in the internal DNS view
//! (`_xmpp-server._tcp`), its chat node alias with XEP-0030 disco over s2s, announces them,
//! probes every node and sends inbound traffic only to the active ones; `core servers
//! --refresh` and `core reload` change the node table without a restart.

use std::time::{Duration, Instant};

use causeway_testkit::lab::{password, Lab, LabOptions, LOCAL, LOCAL_MUC, PARTNER};
use causeway_testkit::Client;
use serde_json::Value;

use crate::support::{
    lab_pki, options, run, signal, start, Ran, Resume, Step, CORE, EDGE, PATIENCE,
};

/// `<which> <command> --config <the lab's file> <extra>`.
fn daemon(lab: &Lab, which: &str, command: &str, extra: &[&str]) -> Ran {
    let bin = if which == "edge" { EDGE } else { CORE };
    let config = lab.config_path(which);
    let config = config.to_str().expect("utf-8 path");
    let mut args = vec![command, "--config", config];
    args.extend_from_slice(extra);
    run(bin, &args)
}

/// `core servers --json`: the single cluster.
fn cluster(lab: &Lab) -> Value {
    let r = daemon(lab, "core", "servers", &["--json"]);
    assert_eq!(r.code, 0, "core servers --json: {}", r.text());
    let v = r.json();
    let clusters = v["clusters"].as_array().cloned().unwrap_or_default();
    assert_eq!(clusters.len(), 1, "{v:#}");
    clusters[0].clone()
}

/// The node with this address in a cluster listing.
fn node(cluster: &Value, addr: std::net::SocketAddr) -> Option<Value> {
    cluster["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["address"] == addr.to_string())
        .cloned()
}

fn node_state(lab: &Lab, addr: std::net::SocketAddr) -> String {
    node(&cluster(lab), addr)
        .map(|n| n["state"].as_str().unwrap_or("").to_owned())
        .unwrap_or_else(|| "absent".into())
}

/// Wait until the node at `addr` is in `state` (per `core servers`); how long it took.
fn wait_node_state(
    lab: &Lab,
    addr: std::net::SocketAddr,
    state: &str,
    within: Duration,
) -> Duration {
    let t0 = Instant::now();
    let ok = causeway_testkit::wait_until(within, || node_state(lab, addr) == state);
    assert!(
        ok,
        "node {addr} never became {state} within {within:?}:\n{}\n{}",
        daemon(lab, "core", "servers", &[]).stdout,
        lab.diagnostics()
    );
    t0.elapsed()
}

fn alias_names(cluster: &Value) -> Vec<(String, bool)> {
    cluster["aliases"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| {
                    (
                        x["name"].as_str().unwrap_or("").to_owned(),
                        x["discovered"].as_bool().unwrap_or(false),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn discovery_options(subnet: u8) -> LabOptions {
    let mut opts = options(subnet);
    opts.core_discovery = true;
    opts.internal_first = true;
    opts.core_discovery_extra = "health_secs = 1\nprobe_timeout_secs = 2".into();
    opts
}

/// example.com's node comes from `_xmpp-server._tcp.example.com` in the internal view, its MUC
/// service conference.example.com from disco#items + disco#info (identity category
/// conference); the edge learns the alias from core's hello, and bob's message reaches alice
/// through the discovered node.
#[test]
fn discovery_finds_the_node_and_the_muc_alias_and_core_announces_them() {
    let lab = start(discovery_options(170));
    let node1 = lab.internal.s2s_addr();
    wait_node_state(&lab, node1, "active", PATIENCE);
    let c = cluster(&lab);
    assert_eq!(c["name"], LOCAL, "{c:#}");
    assert_eq!(c["source"], "dns", "{c:#}");
    assert_eq!(c["domains"][0]["name"], LOCAL, "{c:#}");
    assert_eq!(c["domains"][0]["federated"], true, "{c:#}");
    let n = node(&c, node1).expect("the discovered node");
    assert_eq!(n["host"], "imp1.example.com", "{c:#}");
    assert!(n["last_probe_unix"].as_u64().unwrap_or(0) > 0, "{c:#}");
    assert_eq!(
        alias_names(&c),
        vec![(LOCAL_MUC.to_owned(), true)],
        "the MUC service was not discovered: {c:#}\n{}",
        lab.diagnostics()
    );
    let human = daemon(&lab, "core", "servers", &[]);
    println!("$ core servers\n{}", human.stdout);
    for needle in [
        "cluster example.com (dns)",
        "imp1.example.com",
        "active",
        "conference.example.com (example.com, discovered)",
    ] {
        assert!(
            human.stdout.contains(needle),
            "no {needle:?} in:\n{}",
            human.stdout
        );
    }

    // The edge learnt the discovered alias from core's hello.
    let st = daemon(&lab, "edge", "status", &["--json"]).json();
    let learned = st["edge"]["domains"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        learned
            .iter()
            .any(|d| d["name"] == LOCAL_MUC && d["kind"] == "chat node alias"),
        "edge did not learn {LOCAL_MUC}: {st:#}"
    );

    // core status shows the node's health, not just the config.
    let status = daemon(&lab, "core", "status", &["--json"]).json();
    assert_eq!(
        status["core"]["domains"][0]["node_state"], "active",
        "{status:#}"
    );
    assert_eq!(
        status["core"]["domains"][0]["node_status"][0]["state"], "active",
        "{status:#}"
    );
    println!(
        "$ core status\n{}",
        daemon(&lab, "core", "status", &[]).stdout
    );

    // Traffic flows both ways through the discovered node.
    let bob_jid = format!("bob@{PARTNER}");
    let mut alice = lab.client("alice").step(&lab, "alice connects");
    let mut bob = lab.client("bob").step(&lab, "bob connects");
    bob.send_message("alice@example.com", "found you")
        .step(&lab, "send");
    alice
        .expect_message(&bob_jid, "found you", PATIENCE)
        .step(&lab, "bob -> alice via the discovered node");
    alice.send_message(&bob_jid, "hi bob").step(&lab, "send");
    bob.expect_message("alice@example.com", "hi bob", PATIENCE)
        .step(&lab, "alice -> bob");
    // And a partner user joins a room on the discovered chat node alias.
    let room = format!("lobby@{LOCAL_MUC}");
    alice
        .join_muc(&room, "alice")
        .step(&lab, "alice creates a room");
    bob.join_muc(&room, "bob")
        .step(&lab, "bob joins across the federation");
    let seen = alice
        .wait_for(PATIENCE, |ev| {
            matches!(ev, causeway_testkit::ClientEvent::Presence { from, .. } if from == &format!("{room}/bob"))
        })
        .step(&lab, "bob's room presence");
    assert!(
        seen.is_some(),
        "alice never saw bob join\n{}",
        lab.diagnostics()
    );
}

/// Two nodes of example.com (one cluster). Node 1 stops (SIGSTOP: its kernel still accepts
/// connections, nothing answers): within the probe bound it is inactive, and bob's message
/// reaches alice on node 2. When node 1 continues it is active again.
#[test]
fn inbound_traffic_goes_to_an_active_node_when_one_stops() {
    let mut opts = discovery_options(171);
    opts.internal_node2 = true;
    let lab = start(opts);
    let node1 = lab.internal.s2s_addr();
    let node2 = lab.internal2.as_ref().expect("node 2").s2s_addr();
    wait_node_state(&lab, node1, "active", PATIENCE);
    wait_node_state(&lab, node2, "active", PATIENCE);

    let node2_c2s = lab.internal2.as_ref().expect("node 2").c2s_addr();
    let mut alice = Client::connect("alice@example.com", &password("alice"), node2_c2s)
        .step(&lab, "alice connects to node 2");
    let mut bob = lab.client("bob").step(&lab, "bob connects");

    let pid = lab.internal.pid();
    signal(pid, "-STOP");
    let resume = Resume(pid);
    // Probed every second, each probe allowed 2 s.
    let took = wait_node_state(&lab, node1, "inactive", Duration::from_secs(15));
    println!("stopped node found inactive after {took:?}");
    assert!(
        took < Duration::from_secs(6),
        "found inactive after {took:?}; bound is 1 s + 2 s + slack"
    );
    let c = cluster(&lab);
    let n1 = node(&c, node1).expect("node 1 listed");
    assert!(
        n1["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("no s2s stream header"),
        "{c:#}"
    );
    let status = daemon(&lab, "core", "status", &[]);
    println!("$ core status (node 1 stopped)\n{}", status.stdout);
    assert!(status.stdout.contains("1 of 2 active"), "{}", status.stdout);
    assert!(status.stdout.contains("inactive"), "{}", status.stdout);

    bob.send_message("alice@example.com", "via node 2")
        .step(&lab, "send");
    alice
        .expect_message(&format!("bob@{PARTNER}"), "via node 2", PATIENCE)
        .step(&lab, "bob -> alice on node 2 while node 1 is stopped");

    drop(resume);
    wait_node_state(&lab, node1, "active", PATIENCE);
    let c = cluster(&lab);
    assert_eq!(
        node(&c, node1).map(|n| n["last_error"].clone()),
        Some("".into()),
        "{c:#}"
    );
}

/// Node 2 is added to the internal DNS after start: `core servers --refresh` says it was added
/// and uses it; removing node 1 from DNS and refreshing again removes it.
#[test]
fn refresh_picks_up_added_and_removed_nodes() {
    let mut opts = discovery_options(172);
    opts.internal_node2 = true;
    opts.node2_in_dns = false;
    let mut lab = start(opts);
    let node1 = lab.internal.s2s_addr();
    let node2 = lab.internal2.as_ref().expect("node 2").s2s_addr();
    wait_node_state(&lab, node1, "active", PATIENCE);
    assert!(
        node(&cluster(&lab), node2).is_none(),
        "node 2 before it is in DNS"
    );

    lab.set_internal_dns(true, true)
        .step(&lab, "publish node 2");
    let refresh = daemon(&lab, "core", "servers", &["--refresh"]);
    println!("$ core servers --refresh\n{}", refresh.stdout);
    assert_eq!(refresh.code, 0, "{}", refresh.text());
    assert!(
        refresh.stdout.contains(&format!("added node {node2}")),
        "{}",
        refresh.stdout
    );
    assert!(
        refresh.stdout.contains("imp2.example.com"),
        "{}",
        refresh.stdout
    );
    wait_node_state(&lab, node2, "active", PATIENCE);
    // Nothing new: a second refresh changes nothing.
    let again = daemon(&lab, "core", "servers", &["--refresh", "--json"]).json();
    assert_eq!(again["refreshed"], true, "{again:#}");
    assert_eq!(again["changes"]["summary"], "no change", "{again:#}");

    lab.set_internal_dns(false, true)
        .step(&lab, "withdraw node 1");
    let refresh = daemon(&lab, "core", "servers", &["--refresh", "--json"]).json();
    let removed: Vec<String> = refresh["changes"]["removed_nodes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        removed.iter().any(|r| r.starts_with(&node1.to_string())),
        "{refresh:#}"
    );
    let c = cluster(&lab);
    assert!(
        node(&c, node1).is_none() && node(&c, node2).is_some(),
        "{c:#}"
    );
    // The alias is still known (disco asked node 2 this time).
    assert_eq!(alias_names(&c), vec![(LOCAL_MUC.to_owned(), true)], "{c:#}");

    // Inbound traffic now goes to node 2 only.
    let node2_c2s = lab.internal2.as_ref().expect("node 2").c2s_addr();
    let mut alice = Client::connect("alice@example.com", &password("alice"), node2_c2s)
        .step(&lab, "alice connects to node 2");
    let mut bob = lab.client("bob").step(&lab, "bob connects");
    bob.send_message("alice@example.com", "to the new node")
        .step(&lab, "send");
    alice
        .expect_message(&format!("bob@{PARTNER}"), "to the new node", PATIENCE)
        .step(&lab, "bob -> alice on node 2");
}

/// Static nodes: `core reload` adds node 2 from the edited file, refuses a bad file (the node
/// table stays), reports a changed listen address as needing a restart, and turns federation
/// off for a domain.
#[test]
fn reload_applies_a_changed_node_list_and_refuses_a_bad_config() {
    let mut opts = options(173);
    opts.internal_node2 = true;
    let lab = start(opts);
    let node1 = lab.internal.s2s_addr();
    let node2 = lab.internal2.as_ref().expect("node 2").s2s_addr();
    let c = cluster(&lab);
    assert_eq!(c["source"], "static", "{c:#}");
    assert!(
        node(&c, node1).is_some() && node(&c, node2).is_none(),
        "{c:#}"
    );

    let path = lab.config_path("core");
    let original = std::fs::read_to_string(&path).expect("core config");
    let with_two = original.replace(
        &format!("nodes = [\"{node1}\"]"),
        &format!("nodes = [\"{node1}\", \"{node2}\"]"),
    );
    assert_ne!(with_two, original);
    std::fs::write(&path, &with_two).expect("write");
    let r = daemon(&lab, "core", "reload", &[]);
    println!("$ core reload\n{}", r.text());
    assert_eq!(r.code, 0, "{}", r.text());
    assert!(
        r.stdout.contains(&format!("added node {node2}")),
        "{}",
        r.text()
    );
    // Probed at once: no need to wait for the next health round.
    wait_node_state(&lab, node2, "active", Duration::from_secs(10));
    wait_node_state(&lab, node1, "active", PATIENCE);

    // A bad file is refused and changes nothing.
    std::fs::write(
        &path,
        with_two.replace(&format!("\"{node2}\""), "\"not-an-address\""),
    )
    .expect("write");
    let r = daemon(&lab, "core", "reload", &[]);
    println!("$ core reload (bad file)\n{}", r.text());
    assert_eq!(r.code, 1, "{}", r.text());
    assert!(r.stdout.starts_with("reload refused"), "{}", r.text());
    assert!(
        node(&cluster(&lab), node2).is_some(),
        "the refused reload changed the table"
    );
    assert_eq!(daemon(&lab, "core", "status", &[]).code, 0);

    // Listen addresses need a restart, and the reload says so.
    let core_s2s = Lab::ip(173, 3);
    let moved = with_two.replace(
        &format!("listen = \"{core_s2s}:5269\""),
        &format!("listen = \"{core_s2s}:5270\""),
    );
    assert_ne!(moved, with_two);
    std::fs::write(&path, &moved).expect("write");
    let r = daemon(&lab, "core", "reload", &[]);
    assert_eq!(r.code, 0, "{}", r.text());
    assert!(
        r.stdout.contains("need a restart: s2s.listen"),
        "{}",
        r.text()
    );

    // Federation off for example.com: still local, no longer federated.
    let off = with_two.replace(
        "chat_node_aliases = [",
        "xmpp_federation = false\nchat_node_aliases = [",
    );
    assert_ne!(off, with_two);
    std::fs::write(&path, &off).expect("write");
    let r = daemon(&lab, "core", "reload", &[]);
    println!("$ core reload (federation off)\n{}", r.text());
    assert_eq!(r.code, 0, "{}", r.text());
    assert!(
        r.stdout.contains("removed domain example.com"),
        "{}",
        r.text()
    );
    let c = cluster(&lab);
    assert_eq!(c["domains"][0]["federated"], false, "{c:#}");
    let status = daemon(&lab, "core", "status", &["--json"]).json();
    assert_eq!(
        status["core"]["domains"][0]["node_state"], "federation off",
        "{status:#}"
    );
}

/// `core check` warns about a domain with federation on and IM and presence off, and names
/// bad discovery settings.
#[test]
fn check_warns_about_federation_without_im_and_names_bad_discovery_settings() {
    let dir = causeway_testkit::temp_dir("disco-cfg-").expect("dir");
    lab_pki(dir.path());
    let good = causeway_testkit::lab::core_config(
        "127.0.0.1:5269".parse().expect("addr"),
        "127.0.0.1:7400".parse().expect("addr"),
        "127.0.0.1".parse().expect("ip"),
        5269,
    );
    let file = dir.path().join("core.toml");
    let check = |text: &str| {
        std::fs::write(&file, text).expect("write");
        run(CORE, &["check", "--config", file.to_str().expect("utf-8")])
    };
    let ok = check(&good);
    assert_eq!(ok.code, 0, "{}", ok.text());
    assert!(!ok.stdout.contains("warning"), "{}", ok.text());

    let no_im = good.replace(
        "chat_node_aliases = [",
        "im_presence = false\nchat_node_aliases = [",
    );
    let r = check(&no_im);
    assert_eq!(r.code, 0, "{}", r.text());
    assert!(
        r.stdout.contains("warning") && r.stdout.contains("IM and presence is off"),
        "{}",
        r.text()
    );

    let discovered = causeway_testkit::lab::with_discovery(
        &good,
        "127.0.0.53:53".parse().expect("addr"),
        "refresh_secs = 60",
    );
    let r = check(&discovered);
    assert_eq!(r.code, 0, "{}", r.text());
    for (what, text, needle) in [
        (
            "both domain and publisher",
            discovered.replace(
                "domain = \"example.com\"\n",
                "domain = \"example.com\"\npublisher = \"imp1.example.com\"\n",
            ),
            "clusters[0]",
        ),
        (
            "bad probe domain",
            discovered.replace("refresh_secs = 60", "probe_domain = \"no_such\""),
            "discovery.probe_domain",
        ),
        (
            "zero health interval",
            discovered.replace("refresh_secs = 60", "health_secs = 0"),
            "discovery.health_secs",
        ),
        (
            "unknown key",
            discovered.replace("refresh_secs = 60", "refresh = 60"),
            "refresh",
        ),
    ] {
        assert_ne!(
            text, discovered,
            "{what}: the case did not change the config"
        );
        let r = check(&text);
        assert_eq!(r.code, 1, "{what}: accepted: {}", r.text());
        assert!(
            r.stderr.contains(needle),
            "{what}: {needle:?} not named: {}",
            r.text()
        );
    }
}

/// `[[clusters]] publisher = "imp1.example.com:PORT"`: core learns that the publisher serves
/// example.com (its parent domain, which it accepts a stream to), the cluster's nodes from
/// example.com's SRV records and the MUC alias from disco, and announces both at start.
#[test]
fn a_publisher_reveals_its_domain_nodes_and_alias() {
    let mut lab = start(discovery_options(174));
    let node1 = lab.internal.s2s_addr();
    let path = lab.config_path("core");
    let text = std::fs::read_to_string(&path).expect("core config");
    let publisher = text.replace(
        &format!("[[clusters]]\ndomain = \"{LOCAL}\""),
        &format!(
            "[[clusters]]\npublisher = \"imp1.example.com:{}\"",
            node1.port()
        ),
    );
    assert_ne!(publisher, text);
    std::fs::write(&path, publisher).expect("write");
    lab.restart_core()
        .step(&lab, "core restarts with a publisher");
    wait_node_state(&lab, node1, "active", PATIENCE);
    let c = cluster(&lab);
    assert_eq!(c["source"], "publisher", "{c:#}");
    assert_eq!(
        c["name"],
        format!("imp1.example.com:{}", node1.port()),
        "{c:#}"
    );
    assert_eq!(c["domains"][0]["name"], LOCAL, "{c:#}");
    assert_eq!(c["nodes"].as_array().map(Vec::len), Some(1), "{c:#}");
    assert_eq!(alias_names(&c), vec![(LOCAL_MUC.to_owned(), true)], "{c:#}");
    let learned = causeway_testkit::wait_until(PATIENCE, || {
        let st = daemon(&lab, "edge", "status", &["--json"]).json();
        let domains = st["edge"]["domains"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        [LOCAL, LOCAL_MUC].iter().all(|name| {
            domains
                .iter()
                .any(|d| d["name"] == *name && d["core_connected"] == true)
        })
    });
    assert!(learned, "{}", daemon(&lab, "edge", "status", &[]).stdout);
}

/// A core that starts while its node does not answer finds the node but cannot ask it for
/// its chat node aliases; it tries again within seconds (not at the next `refresh_secs`, 5
/// minutes here), so the edge learns conference.example.com soon after the node answers.
/// (Seen in the container lab, where core and Prosody start together.)
#[test]
fn a_core_started_before_its_node_learns_the_aliases_once_the_node_answers() {
    let mut lab = start(discovery_options(250));
    let node1 = lab.internal.s2s_addr();
    wait_node_state(&lab, node1, "active", PATIENCE);
    let edge_knows_the_alias = |lab: &Lab| {
        let st = daemon(lab, "edge", "status", &["--json"]).json();
        st["edge"]["domains"]
            .as_array()
            .is_some_and(|ds| ds.iter().any(|d| d["name"] == LOCAL_MUC))
    };
    assert!(edge_knows_the_alias(&lab), "{}", lab.diagnostics());

    // The node stops answering (SIGSTOP), and core starts again from nothing.
    let pid = lab.internal.pid();
    signal(pid, "-STOP");
    let resume = Resume(pid);
    lab.restart_core().step(&lab, "core restarts");
    wait_node_state(&lab, node1, "inactive", PATIENCE);
    assert!(
        alias_names(&cluster(&lab)).is_empty(),
        "core knew the alias without asking the node: {:#}",
        cluster(&lab)
    );

    drop(resume);
    let t0 = Instant::now();
    let learnt =
        causeway_testkit::wait_until(Duration::from_secs(40), || edge_knows_the_alias(&lab));
    assert!(
        learnt,
        "the edge did not learn {LOCAL_MUC} within 40 s of the node answering again \
         (refresh_secs is 300):\n{}\n{}",
        daemon(&lab, "core", "servers", &[]).stdout,
        lab.diagnostics()
    );
    println!(
        "alias learnt {:?} after the node answered again",
        t0.elapsed()
    );
    assert_eq!(
        alias_names(&cluster(&lab)),
        vec![(LOCAL_MUC.to_owned(), true)]
    );
}
