//! Isolation between partners and from the inside's outages (issue "The edge survives the
//! internet"): a partner that stops answering fills only its own outgoing queue, and a core
//! outage costs the edge bounded memory and answers the partners with stanza errors.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use causeway_testkit::lab::{Lab, PARTNER};
use causeway_testkit::ClientEvent;

use crate::support::raw::edge_memory;
use crate::support::{
    edge_log, metric, options, options_with_remote, remote_server, scrape, signal, start, warm_up,
    Resume, Step, PATIENCE,
};

/// The 99th percentile (nearest rank) of some latencies.
fn p99(samples: &[Duration]) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let rank = ((sorted.len() as f64) * 0.99).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Error messages `client` has received so far (kept events and new ones within `wait`) whose
/// XML names `condition`, from `from_bare`.
fn errors_from(
    client: &mut causeway_testkit::Client,
    from_bare: &str,
    condition: &str,
    wait: Duration,
) -> usize {
    let mut n = 0;
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let found = client
            .wait_for(left, |ev| {
                matches!(ev, ClientEvent::Message { from, mtype, xml, .. }
                    if mtype == "error" && from.starts_with(from_bare) && xml.contains(condition))
            })
            .unwrap_or(None);
        if found.is_none() {
            return n;
        }
        n += 1;
    }
}

/// One message from alice to other.test (a synthetic server) and the time until it arrived.
fn to_other(
    lab: &Lab,
    alice: &mut causeway_testkit::Client,
    other: &causeway_testkit::synthetic::SyntheticServer,
    tag: &str,
) -> Duration {
    use std::sync::atomic::Ordering;
    let before = other.received.count.load(Ordering::Relaxed);
    let sent = Instant::now();
    alice
        .send_message("someone@other.test", tag)
        .step(lab, "send to other.test");
    let arrived = causeway_testkit::wait_until(PATIENCE, || {
        other.received.count.load(Ordering::Relaxed) > before
    });
    assert!(
        arrived,
        "{tag} never reached other.test:\n{}",
        lab.diagnostics()
    );
    sent.elapsed()
}

/// partner.test (a real Prosody) is SIGSTOPped: its kernel still accepts and ACKs, nothing
/// answers. alice goes on talking to other.test (a synthetic server) the whole time, and its
/// latency's p99 stays near the baseline measured before. A burst to the stopped partner
/// fills its own queue (40 stanzas here): what does not fit bounces at once with
/// `resource-constraint`, what waited 30 s with `remote-server-timeout`; both are counted.
/// After SIGCONT the partner is reachable again.
#[test]
fn a_stopped_partner_fills_only_its_own_queue() {
    const QUEUE: usize = 40;
    const BURST: usize = 100;
    let subnet = 241;
    let metrics = SocketAddr::from((Lab::ip(subnet, 2), 9464));
    let mut opts = options_with_remote(subnet, "other.test");
    opts.edge_extra = format!(
        "[limits]\noutbound_queue_stanzas = {QUEUE}\n\n[metrics]\nlisten = \"{metrics}\"\n"
    );
    let lab = start(opts);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let other = remote_server(&rt, subnet, "other.test", false, None);
    let bob_jid = format!("bob@{PARTNER}");
    let mut alice = lab.client("alice").step(&lab, "alice connects");
    let mut bob = lab.client("bob").step(&lab, "bob connects");
    warm_up(&lab, &mut alice, &mut bob);
    to_other(&lab, &mut alice, &other, "warm-up");

    let baseline: Vec<Duration> = (0..20)
        .map(|i| {
            std::thread::sleep(Duration::from_millis(200));
            to_other(&lab, &mut alice, &other, &format!("baseline {i}"))
        })
        .collect();

    let pid = lab.partner.pid();
    signal(pid, "-STOP");
    let resume = Resume(pid);
    let stopped = Instant::now();
    let mut during = Vec::new();
    // Until the edge finds it dead (its open session would take writes into kernel buffers).
    while !edge_log(&lab).contains("peer is not answering") {
        assert!(
            stopped.elapsed() < Duration::from_secs(40),
            "the stopped partner was never found dead:\n{}",
            edge_log(&lab)
        );
        during.push(to_other(&lab, &mut alice, &other, "while stopping"));
        std::thread::sleep(Duration::from_millis(300));
    }
    alice
        .send_burst_prefixed(&bob_jid, BURST, "to-stopped-")
        .step(&lab, "burst to the stopped partner");
    let burst_at = Instant::now();
    while burst_at.elapsed() < Duration::from_secs(35) {
        during.push(to_other(&lab, &mut alice, &other, "during"));
        std::thread::sleep(Duration::from_millis(300));
    }
    let full = errors_from(&mut alice, &bob_jid, "resource-constraint", PATIENCE);
    let expired = errors_from(&mut alice, &bob_jid, "remote-server-timeout", PATIENCE);
    let (base, worst) = (p99(&baseline), p99(&during));
    eprintln!(
        "other.test latency p99: baseline {base:?}, partner stopped {worst:?} ({} samples, ratio {:.2}); bounces: {full} full, {expired} expired",
        during.len(),
        worst.as_secs_f64() / base.as_secs_f64()
    );
    assert!(
        worst <= (base * 3).max(Duration::from_secs(1)),
        "other.test slowed by the stopped partner: p99 {worst:?} against a baseline of {base:?}"
    );
    assert!(
        full >= BURST - QUEUE - 5,
        "expected about {} resource-constraint bounces, got {full}",
        BURST - QUEUE
    );
    assert!(
        (1..=QUEUE).contains(&expired),
        "expected up to {QUEUE} remote-server-timeout bounces, got {expired}"
    );
    let text = scrape(metrics);
    let counted = |reason: &str| {
        metric(
            &text,
            &format!("causeway_stanzas_bounced_by_queue_total{{reason=\"{reason}\"}}"),
        )
        .unwrap_or(0.0) as usize
    };
    assert!(counted("full") >= full, "metrics:\n{text}");
    assert_eq!(
        metric(&text, "causeway_outbound_queued_bytes"),
        Some(0.0),
        "nothing stays queued once bounced:\n{text}"
    );

    drop(resume);
    alice
        .send_message(&bob_jid, "after the stop")
        .step(&lab, "send");
    bob.expect_message("alice@example.com", "after the stop", PATIENCE * 3)
        .step(&lab, "a->b after SIGCONT");
}

/// core dies while partner.test's bob sends alice 400 messages. The edge keeps what fits in
/// the core's tunnel window (64 stanzas here) for its return and answers the rest at once with
/// `service-unavailable`; its memory stays bounded. When core is back, the kept messages
/// arrive: every message is either delivered or answered with an error - none lost.
#[test]
fn a_core_outage_bounces_with_bounded_memory_and_loses_nothing() {
    const WINDOW: usize = 64;
    const N: usize = 400;
    let mut opts = options(242);
    opts.edge_tunnel_extra = format!("window = {WINDOW}");
    let mut lab = start(opts);
    let bob_jid = format!("bob@{PARTNER}");
    let mut alice = lab.client("alice").step(&lab, "alice connects");
    let mut bob = lab.client("bob").step(&lab, "bob connects");
    warm_up(&lab, &mut alice, &mut bob);

    let edge_pid = lab.edge.as_ref().expect("edge").pid();
    let (rss_before, _) = edge_memory(edge_pid);
    if let Some(mut core) = lab.core.take() {
        core.kill();
    }
    let disconnected =
        causeway_testkit::wait_until(PATIENCE, || edge_log(&lab).contains("core disconnected"));
    assert!(
        disconnected,
        "the edge never saw core go:\n{}",
        edge_log(&lab)
    );

    bob.send_burst_prefixed("alice@example.com", N, "outage-")
        .step(&lab, "burst during the outage");
    let refused = errors_from(
        &mut bob,
        "alice@example.com",
        "service-unavailable",
        PATIENCE,
    );
    let (rss_after, _) = edge_memory(edge_pid);
    let growth = rss_after.saturating_sub(rss_before);
    eprintln!(
        "core outage: {refused} of {N} answered service-unavailable; edge RSS {} MiB -> {} MiB",
        rss_before >> 20,
        rss_after >> 20
    );
    assert!(
        (N - WINDOW - 5..=N - WINDOW).contains(&refused),
        "expected about {} refusals (the window keeps {WINDOW}), got {refused}:\n{}",
        N - WINDOW,
        lab.diagnostics()
    );
    assert!(growth < 32 << 20, "edge RSS grew by {growth} bytes");
    assert!(
        edge_log(&lab).contains("stanzas for the inside are refused"),
        "the refusals were not logged"
    );

    lab.restart_core().expect("core restarts");
    let kept = N - refused;
    let got = alice
        .collect_messages(&bob_jid, kept, PATIENCE * 2)
        .step(&lab, "the kept messages arrive when core is back");
    assert!(
        got.iter().all(|b| b.starts_with("outage-")),
        "unexpected messages: {got:?}"
    );
    let late = errors_from(&mut bob, "alice@example.com", "", Duration::from_secs(2));
    assert_eq!(late, 0, "errors after the outage for delivered messages");
    let more = alice
        .collect_messages(&bob_jid, 1, Duration::from_secs(2))
        .map(|m| m.len())
        .unwrap_or(0);
    assert_eq!(
        more, 0,
        "a message arrived twice or was both bounced and delivered"
    );
}

/// The same from core's side: the edge dies while alice sends bob 300 messages. core keeps what
/// fits in the edge's tunnel window (64 here) for its return and answers the rest at once with
/// `remote-server-timeout`, which internal Prosody passes to alice; her stream never blocks.
/// When the edge is back the kept messages reach bob: each message delivered or answered.
#[test]
fn an_edge_outage_is_answered_to_the_inside_and_loses_nothing() {
    const WINDOW: usize = 64;
    const N: usize = 300;
    let mut lab = start(options(246));
    let bob_jid = format!("bob@{PARTNER}");
    // core with a small window toward the edge.
    let core_toml = lab.config_path("core");
    let text = std::fs::read_to_string(&core_toml).expect("core config");
    std::fs::write(
        &core_toml,
        text.replacen("[tunnel]\n", &format!("[tunnel]\nwindow = {WINDOW}\n"), 1),
    )
    .expect("write core config");
    lab.restart_core().expect("core restarts");
    lab.wait_tunnel_up(PATIENCE).expect("tunnel up");
    let mut alice = lab.client("alice").step(&lab, "alice connects");
    let mut bob = lab.client("bob").step(&lab, "bob connects");
    warm_up(&lab, &mut alice, &mut bob);

    let mut edge = lab.edge.take().expect("edge");
    edge.kill();
    let core_log = || std::fs::read_to_string(lab.dir.path().join("core.log")).unwrap_or_default();
    assert!(
        causeway_testkit::wait_until(PATIENCE, || core_log().contains("tunnel session ended")),
        "core never saw the edge go:\n{}",
        core_log()
    );
    alice
        .send_burst_prefixed(&bob_jid, N, "edge-outage-")
        .step(&lab, "burst while the edge is down");
    let refused = errors_from(&mut alice, &bob_jid, "remote-server-timeout", PATIENCE);
    eprintln!("edge outage: {refused} of {N} answered remote-server-timeout");
    assert!(
        (N - WINDOW - 5..=N - WINDOW).contains(&refused),
        "expected about {} refusals (the window keeps {WINDOW}), got {refused}:\n{}",
        N - WINDOW,
        core_log()
    );
    assert!(
        core_log().contains("stanzas for the internet are refused"),
        "the refusals were not logged:\n{}",
        core_log()
    );

    lab.edge = Some(
        causeway_testkit::lab::spawn_daemon(
            &lab.opts.edge_bin,
            "edge",
            lab.dir.path(),
            &lab.opts.rust_log,
        )
        .step(&lab, "edge restarts"),
    );
    let kept = N - refused;
    let got = bob
        .collect_messages("alice@example.com", kept, PATIENCE * 2)
        .step(&lab, "the kept messages arrive when the edge is back");
    assert!(
        got.iter().all(|b| b.starts_with("edge-outage-")),
        "unexpected messages: {got:?}"
    );
    let more = bob
        .collect_messages("alice@example.com", 1, Duration::from_secs(2))
        .map(|m| m.len())
        .unwrap_or(0);
    assert_eq!(
        more, 0,
        "a message arrived twice or was both bounced and delivered"
    );
}

/// A node that reads slower than a partner writes (here: it stops reading for a while) holds
/// that partner back instead of bouncing: core keeps what its node queue cannot take
/// unacknowledged on the tunnel, the edge stops reading the partner's stream once the
/// destination holds its share of the window, and when the node reads again every stanza
/// arrives, in order, with no error answered. (Before, core bounced `resource-constraint` as
/// soon as its queue was full: the benchmark's flood saw this when its sink fell behind.)
#[test]
fn a_node_slower_than_a_partner_holds_the_partner_back_instead_of_bouncing() {
    use causeway_testkit::lab::{self, LOCAL};
    use causeway_testkit::synthetic::SyntheticServer;

    let dir = causeway_testkit::temp_dir("causeway-backpressure-").expect("temp dir");
    let addrs = lab::SyntheticPair::new(249);
    addrs.write_configs(dir.path()).expect("configs");
    let spawn = |bin: &str, name: &str| {
        lab::spawn_daemon(std::path::Path::new(bin), name, dir.path(), "info").expect(name)
    };
    let (_edge, _core) = (
        spawn(crate::support::EDGE, "edge"),
        spawn(crate::support::CORE, "core"),
    );
    let core_metrics = addrs.core_metrics;

    // 6,000 stanzas of 16 KiB: 94 MiB, more than every buffer on the way holds together
    // (3,000 fit): the generator's own queue (16 MiB), core's node queue (16 MiB), the
    // destination's share of the tunnel window (8 MiB) and the sockets.
    const N: u64 = 6_000;
    let filler = "x".repeat(16 * 1024);
    let stanza = move |i: u64| {
        format!(
            "<message from='load@{PARTNER}' to='alice@{LOCAL}' type='chat' id='m{i}'>\
             <body>{filler}</body></message>"
        )
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (sink, gen) = rt.block_on(async {
        let sink = SyntheticServer::start(LOCAL, addrs.sink, addrs.core_s2s, true)
            .await
            .expect("sink");
        let gen = SyntheticServer::start(PARTNER, addrs.generator, addrs.edge_s2s, true)
            .await
            .expect("generator");
        (sink, gen)
    });
    // The load's ids as the sink has them (core's own probes of its node are not counted),
    // and the error stanzas the partner got back.
    let loads = |s: &SyntheticServer| -> Vec<u64> {
        let kept = s.received.kept.lock().expect("kept");
        kept.iter()
            .filter_map(|p| {
                let text = std::str::from_utf8(p).ok()?;
                if !text.contains(&format!("load@{PARTNER}")) {
                    return None;
                }
                // Either quote: the payload may have been written again on the way.
                let start = text.find("id=")? + 5;
                let end = start + text[start..].find(['\'', '"'])?;
                text[start..end].parse().ok()
            })
            .collect()
    };
    let errors = |s: &SyntheticServer| -> Vec<String> {
        let kept = s.received.kept.lock().expect("kept");
        kept.iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .filter(|t| t.contains("type='error'") || t.contains("type=\"error\""))
            .collect()
    };
    // The edge serves example.com once core has said hello: before, a stream to it is refused
    // host-unknown (and the generator's first stanza bounced).
    let edge_active = || {
        std::process::Command::new(crate::support::EDGE)
            .arg("status")
            .arg("--config")
            .arg(dir.path().join("edge.toml"))
            .output()
            .is_ok_and(|o| o.status.success())
    };
    assert!(
        causeway_testkit::wait_until(PATIENCE, edge_active),
        "the edge never had its core"
    );
    // Warm-up: sessions, TLS and dialback on every leg (debug binaries, and beside the rest
    // of the suite: give it time).
    rt.block_on(gen.send(LOCAL, stanza(0)));
    assert!(
        causeway_testkit::wait_until(PATIENCE * 3, || loads(&sink).len() == 1),
        "the warm-up stanza did not arrive: the sink has {} stanzas, the generator got {:?} \
         back and its own queue bounced {}; core's metrics:\n{}",
        sink.count(),
        gen.received.kept.lock().expect("kept").first(),
        gen.bounced(),
        scrape(core_metrics)
            .lines()
            .filter(|l| l.starts_with("causeway_") && !l.ends_with(" 0"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    sink.pause();
    let gen = std::sync::Arc::new(gen);
    let sender = gen.clone();
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let progress = sent.clone();
    let flood = rt.spawn(async move {
        for i in 1..=N {
            sender.send(LOCAL, stanza(i)).await;
            progress.store(i, std::sync::atomic::Ordering::Relaxed);
        }
    });
    // Core holds stanzas back once its node queue is full...
    let held = || metric(&scrape(core_metrics), "causeway_outbound_held_for_room").unwrap_or(0.0);
    assert!(
        causeway_testkit::wait_until(PATIENCE, || held() > 0.0),
        "core never held a stanza back (sent {})",
        sent.load(std::sync::atomic::Ordering::Relaxed)
    );
    // ... and the partner is held back: its sending stops short of the end.
    std::thread::sleep(Duration::from_secs(3));
    let before = sent.load(std::sync::atomic::Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(1));
    let after = sent.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        after < N && after == before,
        "the partner was not held back: {before} then {after} of {N} sent"
    );
    let core_text = scrape(core_metrics);
    let bounced_full = core_text
        .lines()
        .find(|l| l.starts_with("causeway_stanzas_bounced_by_queue_total{reason=\"full\"}"))
        .map(str::to_owned);

    sink.resume();
    assert!(
        causeway_testkit::wait_until(Duration::from_secs(120), || loads(&sink).len() as u64
            == N + 1),
        "the sink has {} of {} stanzas after resuming; generator got {} errors back",
        loads(&sink).len(),
        N + 1,
        errors(&gen).len()
    );
    rt.block_on(flood).expect("flood task");
    // Nothing was answered with an error, and everything arrived in order.
    let answered = errors(&gen);
    assert!(
        answered.is_empty(),
        "{} errors came back to the partner, the first: {:?}",
        answered.len(),
        answered.first()
    );
    assert_eq!(gen.bounced(), 0, "the partner's own queue bounced");
    assert!(
        bounced_full.as_deref().is_none_or(|l| l.ends_with(" 0")),
        "core bounced for a full queue: {bounced_full:?}"
    );
    let ids = loads(&sink);
    assert!(
        ids.windows(2).all(|w| w[0] + 1 == w[1]),
        "out of order or duplicated: first break at {:?}",
        ids.windows(2).find(|w| w[0] + 1 != w[1])
    );
    assert_eq!(
        metric(&scrape(core_metrics), "causeway_outbound_held_for_room"),
        Some(0.0)
    );
}
