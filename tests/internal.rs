//! Internal federation: two local domains on different servers talk through core directly,
//! never through the edge.

use std::net::SocketAddr;

use causeway_testkit::lab::{password, Lab};
use causeway_testkit::{Client, Prosody, ProsodySpec};

use crate::support::{edge_log, options, start, Step, PATIENCE};

#[test]
fn two_local_domains_talk_through_core_without_the_edge() {
    let subnet = 176;
    let core_s2s = SocketAddr::from((Lab::ip(subnet, 3), 5269));
    let mut org =
        ProsodySpec::new(Lab::ip(subnet, 12), "example.org").user("erin", &password("erin"));
    org.route_s2s_to = Some(core_s2s);
    let mut opts = options(subnet);
    opts.core_extra = format!(
        "\n[[domains]]\nname = \"example.org\"\nnodes = [\"{}:{}\"]\n",
        org.ip, org.s2s_port
    );
    let lab = start(opts);
    let org = Prosody::start(org).step(&lab, "example.org's server starts");
    let mut alice = lab.client("alice").step(&lab, "alice connects");
    let mut erin = Client::connect("erin@example.org", &password("erin"), org.c2s_addr())
        .step(&lab, "erin connects");

    alice
        .send_message("erin@example.org", "hello next door")
        .step(&lab, "send");
    erin.expect_message("alice@example.com", "hello next door", PATIENCE)
        .step(&lab, "example.com -> example.org");
    erin.send_message("alice@example.com", "hello back")
        .step(&lab, "send");
    alice
        .expect_message("erin@example.org", "hello back", PATIENCE)
        .step(&lab, "example.org -> example.com");

    // The edge learnt example.org from core's hello, and nothing else about it.
    let log = edge_log(&lab);
    let traffic: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("example.org") && !l.contains("core connected"))
        .collect();
    assert!(
        traffic.is_empty(),
        "internal traffic went through the edge:\n{traffic:#?}"
    );
}
