//! Certificate requests whose names come from the daemons' own config files, start-up warnings
//! about our certificates, and the Prometheus metrics endpoint.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use causeway_testkit::lab::{core_config, edge_config, Lab, LOCAL, LOCAL_MUC, PARTNER};

use crate::support::{http_get, options, start, Step, CORE, EDGE, PATIENCE};

/// Names of the edge's federation certificate, in the lab edge config's `[federation]`.
const EDGE_NAMES: &str = "fqdn = \"edge.example.com\"\n\
                          domains = [\"example.com\"]\n\
                          chat_node_aliases = [\"conference.example.com\"]\n";

/// A lab's edge.toml and core.toml (with the given `[federation]` lines on the edge) and the
/// PKI they name.
fn lab_configs(dir: &Path, federation_extra: &str) {
    causeway_pki::lab_init(
        &dir.join("pki"),
        &["edge.example.com"],
        "core1.example.com",
        &[LOCAL, LOCAL_MUC],
        &["core1.example.com"],
        true,
    )
    .expect("lab pki");
    let ip = Lab::ip(150, 2);
    let a = |port| SocketAddr::from((ip, port));
    std::fs::write(
        dir.join("edge.toml"),
        edge_config(a(5269), a(7400), a(53), &[], federation_extra),
    )
    .expect("edge.toml");
    std::fs::write(
        dir.join("core.toml"),
        core_config(a(5270), a(7400), ip, 5271),
    )
    .expect("core.toml");
}

/// Run a binary; its stdout, or a panic with everything it said.
fn run(bin: &str, args: &[&str], config: &Path, out: &Path) -> String {
    let o = Command::new(bin)
        .args(args)
        .arg("--config")
        .arg(config)
        .arg("--out")
        .arg(out)
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{bin} {args:?} failed: {text}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    text
}

/// `openssl <args>`; its stdout, or a panic.
fn openssl(args: &[&str]) -> String {
    let o = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// (subject, DNS SANs, XmppAddr SANs, other SAN entries) of a CSR, as OpenSSL reads it.
fn csr_names(csr: &Path) -> (String, Vec<String>, Vec<String>, Vec<String>) {
    let path = csr.to_str().expect("utf-8 path");
    // The request is well-formed and signed by the key that comes with it.
    openssl(&["req", "-in", path, "-noout", "-verify"]);
    let text = openssl(&["req", "-in", path, "-noout", "-text"]);
    let subject = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Subject:"))
        .expect("subject")
        .trim()
        .to_string();
    let lines: Vec<&str> = text.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.contains("X509v3 Subject Alternative Name"))
        .expect("a subjectAltName extension request");
    let (mut dns, mut xmpp, mut other) = (Vec::new(), Vec::new(), Vec::new());
    for entry in lines[at + 1].split(", ") {
        let entry = entry.trim();
        if let Some(d) = entry.strip_prefix("DNS:") {
            dns.push(d.to_string());
        } else if let Some(x) = entry.strip_prefix("othername: XmppAddr:") {
            // OpenSSL 3 prints "othername: XmppAddr::<value>".
            xmpp.push(x.trim_start_matches(':').to_string());
        } else {
            other.push(entry.to_string());
        }
    }
    (subject, dns, xmpp, other)
}

fn assert_private_key(key: &Path, csr: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(key).expect("key").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{} mode", key.display());
    }
    // The key belongs to the request.
    let key_pub = openssl(&["pkey", "-in", key.to_str().expect("utf-8"), "-pubout"]);
    let csr_pub = openssl(&[
        "req",
        "-in",
        csr.to_str().expect("utf-8"),
        "-noout",
        "-pubkey",
    ]);
    assert_eq!(key_pub, csr_pub);
}

/// `edge cert csr` and `core cert csr` read the names from the config files the daemons run
/// with: DNS names by default, XmppAddr otherNames as well with `--xmpp-addr`.
#[test]
fn csr_names_come_from_the_config_files() {
    let dir = causeway_testkit::temp_dir("csr-").expect("dir");
    let d = dir.path();
    lab_configs(d, EDGE_NAMES);

    // Edge: FQDN, XMPP federation domains, chat node aliases, and a --domain.
    let out = d.join("edge-out");
    let said = run(
        EDGE,
        &["cert", "csr", "--domain", "extra.example.com"],
        &d.join("edge.toml"),
        &out,
    );
    assert!(said.contains("edge-federation.csr"), "{said}");
    let (csr, key) = (
        out.join("edge-federation.csr"),
        out.join("edge-federation.key"),
    );
    let (subject, dns, xmpp, other) = csr_names(&csr);
    assert_eq!(subject, "CN = edge.example.com");
    assert_eq!(
        dns,
        [
            "edge.example.com",
            "example.com",
            "extra.example.com",
            "conference.example.com"
        ]
    );
    assert!(xmpp.is_empty() && other.is_empty(), "{xmpp:?} {other:?}");
    assert_private_key(&key, &csr);

    // Without --force, an existing key is never replaced.
    let again = Command::new(EDGE)
        .args(["cert", "csr", "--config"])
        .arg(d.join("edge.toml"))
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run");
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));

    // --xmpp-addr: the domains and aliases also as id-on-xmppAddr otherNames.
    let out = d.join("edge-xmpp");
    run(
        EDGE,
        &["cert", "csr", "--xmpp-addr"],
        &d.join("edge.toml"),
        &out,
    );
    let (_, dns, xmpp, other) = csr_names(&out.join("edge-federation.csr"));
    assert_eq!(
        dns,
        ["edge.example.com", "example.com", "conference.example.com"]
    );
    assert_eq!(xmpp, ["example.com", "conference.example.com"]);
    assert!(other.is_empty(), "{other:?}");

    // Core: its FQDN (core.id) and the chat node aliases of [[domains]].
    let out = d.join("core-out");
    run(CORE, &["cert", "csr"], &d.join("core.toml"), &out);
    let (csr, key) = (out.join("core-s2s.csr"), out.join("core-s2s.key"));
    let (subject, dns, xmpp, other) = csr_names(&csr);
    assert_eq!(subject, "CN = core1.example.com");
    assert_eq!(dns, ["core1.example.com", "conference.example.com"]);
    assert!(xmpp.is_empty() && other.is_empty(), "{xmpp:?} {other:?}");
    assert_private_key(&key, &csr);
    let out = d.join("core-xmpp");
    run(
        CORE,
        &["cert", "csr", "--xmpp-addr", "--fqdn", "gw.example.com"],
        &d.join("core.toml"),
        &out,
    );
    let (subject, dns, xmpp, _) = csr_names(&out.join("core-s2s.csr"));
    assert_eq!(subject, "CN = gw.example.com");
    assert_eq!(dns, ["gw.example.com", "conference.example.com"]);
    assert_eq!(xmpp, ["conference.example.com"]);

    // A bad name in the config is refused, naming the setting.
    lab_configs(d, "domains = [\"exa mple.com\"]\n");
    let bad = Command::new(EDGE)
        .args(["cert", "csr", "--config"])
        .arg(d.join("edge.toml"))
        .arg("--out")
        .arg(d.join("bad"))
        .output()
        .expect("run");
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("federation.domains[0]"), "{err}");
}

/// Sample key (`name{labels}` as exposed) -> value. Panics on any line that is not a HELP or
/// TYPE comment or a `name{labels} value` sample, and on samples without a TYPE.
fn parse_exposition(text: &str) -> BTreeMap<String, f64> {
    fn is_name(s: &str) -> bool {
        let mut c = s.chars();
        c.next()
            .is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
            && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == ':')
    }
    let mut typed: HashMap<String, String> = HashMap::new();
    let mut helped: BTreeSet<String> = BTreeSet::new();
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, _help) = rest.split_once(' ').expect("HELP name text");
            assert!(is_name(name), "bad HELP line {line:?}");
            helped.insert(name.to_string());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(is_name(name), "bad TYPE line {line:?}");
            assert!(
                ["counter", "gauge", "untyped", "histogram", "summary"].contains(&kind),
                "bad TYPE line {line:?}"
            );
            assert!(helped.contains(name), "TYPE without HELP: {line:?}");
            typed.insert(name.to_string(), kind.to_string());
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.is_empty(),
            "bad line {line:?}"
        );
        // name{labels} value
        let (series, value) = line.rsplit_once(' ').expect("sample: series value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let name = match series.split_once('{') {
            None => series,
            Some((name, labels)) => {
                let labels = labels.strip_suffix('}').expect("labels end with }");
                let mut rest = labels;
                while !rest.is_empty() {
                    let (key, after) = rest.split_once("=\"").expect("label=\"value\"");
                    assert!(is_name(key), "bad label name in {line:?}");
                    // Up to the closing quote that is not escaped.
                    let mut end = None;
                    let mut escaped = false;
                    for (i, ch) in after.char_indices() {
                        match (escaped, ch) {
                            (true, _) => escaped = false,
                            (false, '\\') => escaped = true,
                            (false, '"') => {
                                end = Some(i);
                                break;
                            }
                            _ => {}
                        }
                    }
                    let end = end.unwrap_or_else(|| panic!("unterminated label in {line:?}"));
                    rest = after[end + 1..]
                        .strip_prefix(',')
                        .unwrap_or(&after[end + 1..]);
                }
                name
            }
        };
        assert!(is_name(name), "bad metric name in {line:?}");
        assert!(typed.contains_key(name), "sample before its TYPE: {line:?}");
        samples.insert(series.to_string(), value);
    }
    samples
}

/// Scrape `addr` until `ok` accepts the samples (or PATIENCE passes); the last samples.
fn scrape_until(
    lab: &Lab,
    addr: SocketAddr,
    ok: impl Fn(&BTreeMap<String, f64>) -> bool,
) -> BTreeMap<String, f64> {
    let mut last = BTreeMap::new();
    let done = causeway_testkit::wait_until(PATIENCE, || {
        let Ok((status, headers, body)) = http_get(addr, "/metrics") else {
            return false;
        };
        assert_eq!(status, "HTTP/1.1 200 OK", "{headers}\n{body}");
        assert!(
            headers
                .to_ascii_lowercase()
                .contains("content-type: text/plain; version=0.0.4"),
            "{headers}"
        );
        last = parse_exposition(&body);
        ok(&last)
    });
    assert!(
        done,
        "metrics at {addr} never matched: {last:#?}\n{}",
        lab.diagnostics()
    );
    last
}

fn get(samples: &BTreeMap<String, f64>, key: &str) -> f64 {
    samples.get(key).copied().unwrap_or(-1.0)
}

/// With `[metrics] listen`, edge and core expose their counters, session gauges and tunnel
/// state as Prometheus text; certificates that do not cover a configured name are warned about
/// at start.
#[test]
fn metrics_after_a_conversation_and_certificate_warnings() {
    let n = 150;
    let edge_metrics = SocketAddr::from((Lab::ip(n, 2), 9464));
    let core_metrics = SocketAddr::from((Lab::ip(n, 3), 9464));
    let mut opts = options(n);
    // The lab's federation certificate covers example.com and conference.example.com only.
    opts.edge_federation_extra =
        "domains = [\"example.com\"]\nchat_node_aliases = [\"conference.example.com\", \"rooms.example.com\"]\n"
            .into();
    opts.edge_extra = format!("[metrics]\nlisten = \"{edge_metrics}\"\n");
    let mut lab = start(opts);

    // core too: the same config plus [metrics], then a restart (the tunnel reconnects).
    crate::support::restart_core_with_metrics(&mut lab, core_metrics);
    let core_peer = "{peer=\"core1.example.com\"}";
    scrape_until(&lab, edge_metrics, |s| {
        get(s, &format!("causeway_tunnel_connected{core_peer}")) == 1.0
            && get(s, &format!("causeway_tunnel_reconnects_total{core_peer}")) >= 1.0
    });

    // Warnings at start, naming the certificate and what it misses.
    let edge_log = std::fs::read_to_string(lab.dir.path().join("edge.log")).expect("edge.log");
    assert!(
        edge_log.contains("WARN")
            && edge_log
                .contains("edge-federation.crt: certificate does not cover rooms.example.com"),
        "{edge_log}"
    );
    // core's s2s certificate names core1.example.com only, not the chat node alias.
    let core_log = std::fs::read_to_string(lab.dir.path().join("core.log")).expect("core.log");
    assert!(
        core_log.contains("core-s2s.crt: certificate does not cover conference.example.com"),
        "{core_log}"
    );

    let bob_jid = format!("bob@{PARTNER}");
    let mut alice = lab.client("alice").step(&lab, "alice connects");
    let mut bob = lab.client("bob").step(&lab, "bob connects");
    alice.send_message(&bob_jid, "counted").step(&lab, "send");
    bob.expect_message("alice@example.com", "counted", PATIENCE)
        .step(&lab, "bob receives alice's message");
    bob.send_message("alice@example.com", "counted too")
        .step(&lab, "send");
    alice
        .expect_message(&bob_jid, "counted too", PATIENCE)
        .step(&lab, "alice receives bob's reply");

    let authenticated = |s: &BTreeMap<String, f64>, dir: &str| {
        get(
            s,
            &format!("causeway_s2s_sessions{{direction=\"{dir}\",state=\"authenticated\"}}"),
        )
    };
    // One refusal by the privacy policy, counted under its reason.
    alice
        .send_message("someone@not-allowed.test", "refused")
        .step(&lab, "send to a refused domain");
    let refused_by = |s: &BTreeMap<String, f64>, reason: &str| {
        get(
            s,
            &format!("causeway_stanzas_refused_by_reason_total{{reason=\"{reason}\"}}"),
        )
    };
    let edge = scrape_until(&lab, edge_metrics, |s| {
        get(s, "causeway_stanzas_total{direction=\"out\"}") >= 1.0
            && get(s, "causeway_stanzas_total{direction=\"in\"}") >= 1.0
            && authenticated(s, "outgoing") >= 1.0
            && refused_by(s, "policy") >= 1.0
            // The bounce for the refused stanza crossed the tunnel and was acknowledged.
            && get(s, &format!("causeway_tunnel_replay_depth{core_peer}")) == 0.0
    });
    assert_eq!(refused_by(&edge, "spoofed"), 0.0, "{edge:#?}");
    assert!(
        get(&edge, "causeway_stanzas_refused_total") >= 1.0,
        "{edge:#?}"
    );
    assert_eq!(get(&edge, "causeway_up"), 1.0);
    assert!(get(&edge, "causeway_dns_lookups_total") >= 1.0, "{edge:#?}");
    assert_eq!(
        get(&edge, &format!("causeway_tunnel_replay_depth{core_peer}")),
        0.0,
        "{edge:#?}"
    );
    for family in [
        "causeway_stanzas_refused_total",
        "causeway_stanzas_bounced_total",
        "causeway_tls_handshake_failures_total",
        "causeway_dialback_failures_total",
        "causeway_dialback_verifications_refused_total",
        "causeway_outbound_addresses_refused_total",
        "causeway_deadline_closes_total",
        "causeway_connections_refused_total{reason=\"unauthenticated_per_source\"}",
        "causeway_connections_refused_total{reason=\"max_inbound\"}",
    ] {
        assert!(get(&edge, family) >= 0.0, "{family} missing: {edge:#?}");
    }

    let edge_peer = "{peer=\"edge.example.com\"}";
    let core = scrape_until(&lab, core_metrics, |s| {
        get(s, "causeway_stanzas_total{direction=\"in\"}") >= 1.0
            && get(s, "causeway_stanzas_total{direction=\"out\"}") >= 1.0
            && authenticated(s, "incoming") >= 1.0
    });
    assert_eq!(
        get(&core, &format!("causeway_tunnel_connected{edge_peer}")),
        1.0
    );
    assert!(
        !core.keys().any(|k| k.starts_with("causeway_dns_lookups")),
        "core does no DNS: {core:#?}"
    );
    assert!(
        !core
            .keys()
            .any(|k| k.starts_with("causeway_outbound_addresses")),
        "core has no outbound address filter: {core:#?}"
    );

    // Anything but /metrics is 404.
    let (status, _, _) = http_get(edge_metrics, "/").expect("GET /");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
}
