//! Config files: every shipped example validates, and bad settings are refused with a message
//! naming the setting, before anything binds.

use std::path::Path;
use std::process::Command;

use crate::support::{lab_pki, CORE, EDGE};

/// Run `<bin> check -c <file>`; (success, stdout + stderr).
fn check(bin: &str, file: &Path) -> (bool, String) {
    let out = Command::new(bin)
        .args(["check", "--config"])
        .arg(file)
        .output()
        .expect("run check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn example(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(name);
    std::fs::read_to_string(&path).expect("example config")
}

/// Write each (what, config text, needle) case to `file`: `<bin> check` must refuse it and
/// its message must contain the needle (the setting's name).
fn assert_each_refused(bin: &str, file: &Path, good: &str, cases: Vec<(&str, String, &str)>) {
    for (what, text, needle) in cases {
        assert_ne!(text, good, "{what}: the case did not change the config");
        std::fs::write(file, text).expect("write");
        let (ok, out) = check(bin, file);
        assert!(!ok, "{what}: accepted");
        assert!(
            out.contains(needle),
            "{what}: message does not name {needle:?}: {out}"
        );
    }
}

#[test]
fn the_shipped_example_configs_validate() {
    let dir = causeway_testkit::temp_dir("cfg-").expect("dir");
    lab_pki(dir.path());
    for (bin, name) in [(EDGE, "edge.example.toml"), (CORE, "core.example.toml")] {
        let file = dir.path().join(name);
        std::fs::write(&file, example(name)).expect("write");
        let (ok, text) = check(bin, &file);
        assert!(ok, "{name} does not validate: {text}");
    }
}

/// Each bad edge setting is refused, and the message names it.
#[test]
fn bad_edge_settings_are_named() {
    let dir = causeway_testkit::temp_dir("cfg-").expect("dir");
    lab_pki(dir.path());
    let good = example("edge.example.toml");
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "unknown key",
            good.replace("[dns]", "[dns]\nnameserverz = []"),
            "nameserverz",
        ),
        (
            "a previous dialback secret too short",
            good.replace(
                "dialback_secret_file = \"pki/dialback-secret\"",
                "dialback_secret_file = \"pki/dialback-secret\"\ndialback_secret_previous = \"short\"",
            ),
            "federation.dialback_secret_previous",
        ),
        (
            "allowed and denied",
            good.replace("deny = []", "deny = [\"Partner.test\"]"),
            "both allowed and denied",
        ),
        (
            "bad domain",
            good.replace("allow = [\"partner.test\"", "allow = [\"-bad.test\""),
            "policy.allow[0]",
        ),
        (
            "missing certificate",
            good.replace("pki/edge-federation.crt", "pki/nope.crt"),
            "federation.cert",
        ),
        (
            "bad security mode",
            good.replace("\"tls-required\"", "\"sometimes\""),
            "security_mode",
        ),
        (
            "client certificates without CAs",
            good.replace(
                "require_client_certs = false",
                "require_client_certs = true",
            ),
            "federation.require_client_certs",
        ),
        (
            "CRL without CAs",
            good.replace("crls = []", "crls = [\"pki/traversal-ca.crt\"]"),
            "federation.crls",
        ),
        (
            "missing CA bundle",
            good.replace(
                "# ca_bundle = \"pki/trusted-cas.pem\"",
                "ca_bundle = \"pki/nope.pem\"",
            ),
            "federation.ca_bundle",
        ),
        (
            "wildcard over a top-level domain",
            good.replace("allow = [\"partner.test\"", "allow = [\"*.com\""),
            "policy.allow[0]",
        ),
        (
            "wildcard in the middle",
            good.replace("allow = [\"partner.test\"", "allow = [\"a.*.test\""),
            "policy.allow[0]",
        ),
        (
            "bad direction",
            good.replace("direction = \"incoming\"", "direction = \"sideways\""),
            "policy.allow[2]",
        ),
        (
            "short secret",
            good.replace(
                "dialback_secret_file = \"pki/dialback-secret\"",
                "dialback_secret = \"short\"",
            ),
            "dialback_secret",
        ),
        (
            "bad allowed network",
            good.replace(
                "outbound_allow_networks = []",
                "outbound_allow_networks = [\"10.1.0.0/16\", \"10.2.0.0/33\"]",
            ),
            "federation.outbound_allow_networks[1]",
        ),
        (
            "allowed network with host bits",
            good.replace(
                "outbound_allow_networks = []",
                "outbound_allow_networks = [\"10.1.2.0/16\"]",
            ),
            "federation.outbound_allow_networks[0]",
        ),
        (
            "no verifications",
            good.replace("max_verifications = 256", "max_verifications = 0"),
            "federation.max_verifications",
        ),
        (
            "per-domain verifications above the total",
            good.replace(
                "max_verifications_per_domain = 8",
                "max_verifications_per_domain = 300",
            ),
            "federation.max_verifications_per_domain",
        ),
    ];
    assert_each_refused(EDGE, &dir.path().join("bad-edge.toml"), &good, cases);
}

/// Each bad core setting is refused, and the message names it.
#[test]
fn bad_core_settings_are_named() {
    let dir = causeway_testkit::temp_dir("cfg-").expect("dir");
    lab_pki(dir.path());
    let good = example("core.example.toml");
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "unknown key",
            good.replace("[core]", "[core]\ncolour = \"blue\""),
            "colour",
        ),
        (
            "alias twice",
            good.replace(
                "chat_node_aliases = [\"conference.example.com\"]",
                "chat_node_aliases = [\"conference.example.com\", \"Conference.Example.com\"]",
            ),
            "configured twice",
        ),
        (
            "bad domain",
            good.replace("name = \"example.com\"", "name = \"exa_mple.com\""),
            "domains[0].name",
        ),
        (
            "missing key",
            good.replace("pki/core-tunnel.key", "pki/none.key"),
            "tunnel.key",
        ),
        (
            "no nodes",
            good.replace("nodes = [\"10.0.0.11:5269\"]", "nodes = []"),
            "domains[0].nodes",
        ),
    ];
    assert_each_refused(CORE, &dir.path().join("bad-core.toml"), &good, cases);
}

/// Several edges: the commented `[[tunnel.edges]]` of the example validates in place of
/// `tunnel.edge`, and mistakes in the list are named.
#[test]
fn core_with_several_edges() {
    let dir = causeway_testkit::temp_dir("cfg-").expect("dir");
    lab_pki(dir.path());
    let good = example("core.example.toml");
    let list = good
        .replace("# [[tunnel.edges]]", "[[tunnel.edges]]")
        .replace("# address = ", "address = ")
        .replace("# name = ", "name = ");
    let single = "edge = \"edge.example.com:7400\"";
    let name = "edge_name = \"edge.example.com\"";
    let several = list.replace(single, "").replace(name, "");
    let file = dir.path().join("ha-core.toml");
    std::fs::write(&file, &several).expect("write");
    let (ok, out) = check(CORE, &file);
    assert!(ok, "two edges do not validate: {out}\n{several}");
    let cases: Vec<(&str, String, &str)> = vec![
        ("both forms", list.clone(), "not both"),
        (
            "an address twice",
            several.replace("edge2.example.com:7400", "edge1.example.com:7400"),
            "tunnel.edges[1].address",
        ),
        (
            "not host:port",
            several.replace("edge2.example.com:7400", "edge2.example.com"),
            "tunnel.edges[1].address",
        ),
        (
            "no edge at all",
            good.replace(single, "").replace(name, ""),
            "no edge configured",
        ),
        (
            "a name without an address",
            good.replace(single, ""),
            "tunnel.edge: required",
        ),
    ];
    assert_each_refused(CORE, &dir.path().join("bad-ha-core.toml"), &good, cases);
}

/// The command line an administrator's scripts rely on: usage errors exit 64 (not 2, which is
/// "inactive"), `check --json` is one object with the warnings or the error, `--version`
/// names the build, and completions and man pages come from the same definitions.
#[test]
fn exit_codes_check_json_version_completions_and_man_pages() {
    use crate::support::run;
    for bin in [EDGE, CORE] {
        assert_eq!(run(bin, &["--bogus"]).code, 64, "{bin} --bogus");
        assert_eq!(run(bin, &[]).code, 64, "{bin} without a command");
        assert_eq!(run(bin, &["status", "--nope"]).code, 64);
        assert_eq!(run(bin, &["--help"]).code, 0);
        let version = run(bin, &["--version"]);
        assert_eq!(version.code, 0);
        assert!(
            version.stdout.starts_with(&format!(
                "{} {}",
                Path::new(bin)
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or(""),
                env!("CARGO_PKG_VERSION")
            )),
            "{}",
            version.stdout
        );
        let bash = run(bin, &["completions", "bash"]);
        assert_eq!(bash.code, 0);
        assert!(bash.stdout.contains("complete -F"), "{}", bash.stdout);
        assert!(bash.stdout.contains("connections"), "{}", bash.stdout);
    }

    let dir = causeway_testkit::temp_dir("cli-").expect("dir");
    lab_pki(dir.path());
    let man = dir.path().join("man");
    let out = run(EDGE, &["man", man.to_str().expect("utf-8")]);
    assert_eq!(out.code, 0, "{}", out.text());
    for page in ["edge.1", "edge-status.1", "edge-cert-csr.1"] {
        let text = std::fs::read_to_string(man.join(page)).unwrap_or_default();
        assert!(text.contains(".TH "), "{page}: {text}");
    }

    let file = dir.path().join("edge.toml");
    let good = example("edge.example.toml");
    std::fs::write(&file, &good).expect("write");
    let path = file.to_str().expect("utf-8");
    let ok = run(EDGE, &["check", "--json", "-c", path]);
    assert_eq!(ok.code, 0, "{}", ok.text());
    assert_eq!(ok.json()["valid"], true);
    assert_eq!(ok.json()["warnings"], serde_json::json!([]));
    // The HTTP endpoints bound beyond loopback: valid, with a warning.
    std::fs::write(
        &file,
        format!("{good}\n[metrics]\nlisten = \"0.0.0.0:9464\"\n"),
    )
    .expect("write");
    let wide = run(EDGE, &["check", "--json", "-c", path]);
    assert_eq!(wide.code, 0, "{}", wide.text());
    let warnings = wide.json()["warnings"].to_string();
    assert!(
        warnings.contains("metrics.listen 0.0.0.0:9464 is not a loopback"),
        "{warnings}"
    );
    let text = run(EDGE, &["check", "-c", path]);
    assert!(
        text.stdout.starts_with("warning: metrics.listen"),
        "{}",
        text.text()
    );
    // Direct TLS on 443 needs a capability the packaged unit does not give.
    std::fs::write(
        &file,
        good.replacen(
            "[federation]\n",
            "[federation]\ndirect_tls_listen = \"0.0.0.0:443\"\n",
            1,
        ),
    )
    .expect("write");
    let low = run(EDGE, &["check", "-c", path]);
    assert_eq!(low.code, 0, "{}", low.text());
    assert!(
        low.stdout
            .contains("federation.direct_tls_listen: 0.0.0.0:443 is a port below 1024"),
        "{}",
        low.text()
    );
    // A bad config: exit 1, the error naming the setting.
    std::fs::write(&file, good.replace("[dns]", "[dns]\nnameserverz = []")).expect("write");
    let bad = run(EDGE, &["check", "--json", "-c", path]);
    assert_eq!(bad.code, 1, "{}", bad.text());
    assert_eq!(bad.json()["valid"], false);
    assert!(
        bad.json()["error"]
            .as_str()
            .unwrap_or("")
            .contains("nameserverz"),
        "{}",
        bad.stdout
    );
}
