//! Federation benchmark: `cargo bench --bench federation`. Prints figures, each next to a
//! baseline measured in the same run (the machines are shared and noisy: read the ratios).
//!
//! 1. The pair alone: a synthetic remote server (our s2s crate, TLS + dialback) floods the edge;
//!    stanzas cross edge -> tunnel -> core -> a synthetic IM&P node. TLS on every leg.
//!    Baseline: the same generator speaking straight to the same kind of sink (one s2s hop).
//!    Figures: stanzas/s, and CPU microseconds per stanza spent by edge + core together.
//! 2. The real path: alice@example.com -> bob@partner.test through internal Prosody, core, edge
//!    and partner Prosody, paced at 200 messages/s; baseline: the same load over direct
//!    Prosody -> Prosody federation. Figures: p50/p99 latency and the pair's added p99.
//!
//! Environment: CAUSEWAY_BENCH_STANZAS (default 100000), CAUSEWAY_BENCH_MESSAGES (4000),
//! CAUSEWAY_BENCH_RATE (200), CAUSEWAY_BENCH_PART (all | pair | real).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use causeway_testkit::lab::{self, Lab, LabOptions, LOCAL, PARTNER};
use causeway_testkit::synthetic::SyntheticServer;
use causeway_testkit::{
    ChildGuard, Client, ClientEvent, DnsRecord, DnsServer, Prosody, ProsodySpec,
};

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("federation benchmark: run it with `cargo bench --bench federation`");
        return;
    }
    let part = std::env::var("CAUSEWAY_BENCH_PART").unwrap_or_else(|_| "all".into());
    let mut failed = false;
    if part == "all" || part == "pair" {
        if let Err(e) = pair_alone(env_num("CAUSEWAY_BENCH_STANZAS", 100_000)) {
            eprintln!("pair benchmark failed: {e:#}");
            failed = true;
        }
    }
    if part == "all" || part == "real" {
        let n = env_num("CAUSEWAY_BENCH_MESSAGES", 4000) as usize;
        let rate = env_num("CAUSEWAY_BENCH_RATE", 200) as f64;
        if let Err(e) = real_path(n, rate) {
            eprintln!("real-path benchmark failed: {e:#}");
            failed = true;
        }
    }
    if failed {
        std::process::exit(1);
    }
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// user + system CPU time of a process, from /proc (clock ticks of 10 ms).
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the ")" that ends the command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

fn self_cpu() -> Duration {
    cpu_time(std::process::id())
}

fn stanza(i: u64) -> String {
    format!(
        "<message from='load@partner.test' to='alice@example.com' type='chat' id='m{i}'>\
         <body>benchmark message number {i}</body></message>"
    )
}

struct Flood {
    rate: f64,
    cpu_per_stanza_us: f64,
}

/// Send `n` stanzas from `gen` and wait until `sink` has them all.
async fn flood(
    gen: &SyntheticServer,
    sink: &SyntheticServer,
    n: u64,
    pids: &[u32],
) -> Result<Flood> {
    // Warm-up: sessions, TLS and dialback out of the way.
    let base = sink.count();
    gen.send(LOCAL, stanza(0)).await;
    wait_count(gen, sink, base + 1, Duration::from_secs(20)).await?;
    let cpu0: Duration = pids.iter().map(|p| cpu_time(*p)).sum();
    let start = Instant::now();
    for i in 1..=n {
        gen.send(LOCAL, stanza(i)).await;
    }
    wait_count(gen, sink, base + 1 + n, Duration::from_secs(600)).await?;
    let elapsed = start.elapsed();
    let cpu: Duration = pids.iter().map(|p| cpu_time(*p)).sum::<Duration>() - cpu0;
    Ok(Flood {
        rate: n as f64 / elapsed.as_secs_f64(),
        cpu_per_stanza_us: cpu.as_secs_f64() * 1e6 / n as f64,
    })
}

/// Waits until `sink` has `n` stanzas; fails after `timeout`, or at once when stanzas came
/// back to `gen` (answered with errors: the flood would never complete).
async fn wait_count(
    gen: &SyntheticServer,
    sink: &SyntheticServer,
    n: u64,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while sink.count() < n {
        anyhow::ensure!(
            Instant::now() < deadline && gen.count() == 0 && gen.bounced() == 0,
            "sink has {} of {n} stanzas; {} answered back to the generator, {} bounced by its own queue",
            sink.count(),
            gen.count(),
            gen.bounced()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

/// Part 1: the pair alone under a synthetic flood, against a direct one-hop baseline.
fn pair_alone(n: u64) -> Result<()> {
    let subnet = 200;
    let ip = |h| Lab::ip(subnet, h);
    let dir = causeway_testkit::temp_dir("causeway-bench-")?;
    let pair_addrs = lab::SyntheticPair::new(subnet);
    pair_addrs.write_configs(dir.path())?;
    let edge = daemon("edge", dir.path())?;
    let core = daemon("core", dir.path())?;
    let pids = [edge.pid(), core.pid()];

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (pair, direct) = rt.block_on(async {
        // Through the pair: generator -> edge ... core -> sink.
        let sink =
            SyntheticServer::start(LOCAL, pair_addrs.sink, pair_addrs.core_s2s, false).await?;
        let gen = SyntheticServer::start(PARTNER, pair_addrs.generator, pair_addrs.edge_s2s, false)
            .await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let pair = flood(&gen, &sink, n, &pids).await?;
        // Baseline: the same generator and sink code, one direct s2s hop.
        let sink2 = SyntheticServer::start(
            LOCAL,
            SocketAddr::from((ip(12), 5269)),
            SocketAddr::from((ip(22), 5269)),
            false,
        )
        .await?;
        let gen2 =
            SyntheticServer::start(PARTNER, SocketAddr::from((ip(22), 5269)), sink2.addr, false)
                .await?;
        let cpu0 = self_cpu();
        let direct = flood(&gen2, &sink2, n, &[]).await?;
        let hop_cpu = (self_cpu() - cpu0).as_secs_f64() * 1e6 / n as f64;
        anyhow::Ok((
            pair,
            Flood {
                cpu_per_stanza_us: hop_cpu,
                ..direct
            },
        ))
    })?;
    println!("== the pair alone ({n} stanzas, TLS on every leg) ==");
    println!(
        "through edge+core : {:>9.0} stanzas/s   edge+core CPU {:>6.1} us/stanza",
        pair.rate, pair.cpu_per_stanza_us
    );
    println!(
        "direct one hop    : {:>9.0} stanzas/s   sender+receiver CPU {:>6.1} us/stanza (baseline)",
        direct.rate, direct.cpu_per_stanza_us
    );
    println!(
        "ratios            : throughput {:.2}x of direct; CPU {:.2}x of one direct hop (both ends)",
        pair.rate / direct.rate,
        pair.cpu_per_stanza_us / direct.cpu_per_stanza_us
    );
    println!(
        "targets           : >= 40000 stanzas/s [{}], <= 25 us CPU/stanza [{}]",
        verdict(pair.rate >= 40_000.0),
        verdict(pair.cpu_per_stanza_us <= 25.0)
    );
    Ok(())
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT met"
    }
}

fn daemon(name: &str, dir: &Path) -> Result<ChildGuard> {
    let bin = match name {
        "edge" => env!("CARGO_BIN_EXE_edge"),
        _ => env!("CARGO_BIN_EXE_core"),
    };
    lab::spawn_daemon(Path::new(bin), name, dir, "warn")
}

/// Latencies (ms) of `n` messages alice -> bob paced at `rate`/s.
fn paced_latencies(mut alice: Client, mut bob: Client, n: usize, rate: f64) -> Result<Vec<f64>> {
    let bob_jid = format!("bob@{PARTNER}");
    alice.send_message(&bob_jid, "warm-up")?;
    bob.expect_message(
        &format!("alice@{LOCAL}"),
        "warm-up",
        Duration::from_secs(20),
    )?;
    let receiver = std::thread::spawn(move || -> Result<Vec<(usize, Instant)>> {
        let mut got = Vec::with_capacity(n);
        while got.len() < n {
            match bob.next_event(Duration::from_secs(30))? {
                Some(ClientEvent::Message { body: Some(b), .. }) => {
                    if let Some(i) = b.strip_prefix("lat-").and_then(|v| v.parse().ok()) {
                        got.push((i, Instant::now()));
                    }
                }
                Some(_) => {}
                None => anyhow::bail!("bob received {} of {n}", got.len()),
            }
        }
        Ok(got)
    });
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    let mut sent = Vec::with_capacity(n);
    for i in 0..n {
        let due = start + interval * i as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        sent.push(Instant::now());
        alice.send_message(&bob_jid, &format!("lat-{i}"))?;
    }
    let got = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("receiver thread panicked"))??;
    let mut lat: Vec<f64> = got
        .iter()
        .filter_map(|(i, at)| Some(at.duration_since(*sent.get(*i)?).as_secs_f64() * 1e3))
        .collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    Ok(lat)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Part 2: real Prosody on both ends, through the pair and directly.
fn real_path(n: usize, rate: f64) -> Result<()> {
    // Direct baseline: two Prosodys federating over SRV.
    let direct = {
        let sub = 202;
        let ip = |h| Ipv4Addr::new(127, sub, 0, h);
        let mut a = ProsodySpec::new(ip(11), LOCAL).user("alice", &lab::password("alice"));
        let mut b = ProsodySpec::new(ip(21), PARTNER).user("bob", &lab::password("bob"));
        let dns = DnsServer::start(
            ip(53),
            &[
                DnsRecord::xmpp_server(LOCAL, &ip(11).to_string(), a.s2s_port),
                DnsRecord::xmpp_server(PARTNER, &ip(21).to_string(), b.s2s_port),
            ],
        )?;
        a.dns = Some(dns.addr);
        b.dns = Some(dns.addr);
        a.log_level = "warn".into();
        b.log_level = "warn".into();
        let (pa, pb) = (Prosody::start(a)?, Prosody::start(b)?);
        let alice = Client::connect(
            &format!("alice@{LOCAL}"),
            &lab::password("alice"),
            pa.c2s_addr(),
        )?;
        let bob = Client::connect(
            &format!("bob@{PARTNER}"),
            &lab::password("bob"),
            pb.c2s_addr(),
        )?;
        paced_latencies(alice, bob, n, rate).context("direct Prosody -> Prosody")?
    };
    // Through the pair.
    let through = {
        let mut opts = LabOptions::new(201, env!("CARGO_BIN_EXE_edge"), env!("CARGO_BIN_EXE_core"));
        opts.peer_log_level = "warn".into();
        opts.rust_log = "warn".into();
        let lab = Lab::start(opts)?;
        let alice = lab.client("alice")?;
        let bob = lab.client("bob")?;
        paced_latencies(alice, bob, n, rate).context("through core and edge")?
    };
    let (d50, d99) = (pct(&direct, 0.5), pct(&direct, 0.99));
    let (t50, t99) = (pct(&through, 0.5), pct(&through, 0.99));
    println!("== the real path ({n} messages alice -> bob at {rate}/s, Prosody both ends) ==");
    println!("direct Prosody->Prosody : p50 {d50:>7.2} ms  p99 {d99:>7.2} ms  (baseline)");
    println!("through core + edge     : p50 {t50:>7.2} ms  p99 {t99:>7.2} ms");
    println!(
        "added by the pair       : p50 {:+.2} ms  p99 {:+.2} ms  (p99 ratio {:.2}x); target <= +1 ms p99 [{}]",
        t50 - d50,
        t99 - d99,
        t99 / d99,
        verdict(t99 - d99 <= 1.0)
    );
    Ok(())
}
