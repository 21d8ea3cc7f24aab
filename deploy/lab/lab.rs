//! The lab runner behind `deploy/lab/run.sh`: start the loopback topology, run a conversation
//! across it, print what happened, and stop (or stay up with `--stay`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use causeway_testkit::lab::{Lab, LabOptions, LOCAL, PARTNER, PARTNER2};

const PATIENCE: Duration = Duration::from_secs(20);

fn arg_after(args: &[String], flag: &str) -> Option<String> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let edge = arg_after(&args, "--edge").unwrap_or_else(|| "target/release/edge".into());
    let core = arg_after(&args, "--core").unwrap_or_else(|| "target/release/core".into());
    let stay = args.iter().any(|a| a == "--stay");
    let mut opts = LabOptions::new(77, PathBuf::from(edge), PathBuf::from(core));
    opts.ejabberd = true;
    let started = Instant::now();
    let lab = Lab::start(opts).context("starting the lab")?;
    println!(
        "lab up in {:.1}s (configs and logs in {})",
        started.elapsed().as_secs_f64(),
        lab.dir.path().display()
    );
    println!("  edge        s2s 127.77.0.2:5269, tunnel 127.77.0.2:7400");
    println!("  core        s2s 127.77.0.3:5269");
    println!(
        "  {LOCAL:<11} Prosody c2s {} (alice, dave), routed through core",
        lab.internal.c2s_addr()
    );
    println!(
        "  {PARTNER:<11} Prosody c2s {} (bob)",
        lab.partner.c2s_addr()
    );
    if let Some(e) = &lab.partner2 {
        println!("  {PARTNER2:<11} ejabberd c2s {} (carol)", e.c2s_addr());
    }
    println!(
        "  passwords   <user>{}",
        causeway_testkit::lab::PASSWORD_SUFFIX
    );
    let result = conversation(&lab);
    match &result {
        Ok(()) => println!("conversation across the federation: OK"),
        Err(e) => println!("conversation FAILED: {e:#}\n{}", lab.diagnostics()),
    }
    if stay {
        println!("staying up; Ctrl-C stops everything");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    result
}

fn conversation(lab: &Lab) -> Result<()> {
    let bob_jid = format!("bob@{PARTNER}");
    let carol_jid = format!("carol@{PARTNER2}");
    let alice_jid = format!("alice@{LOCAL}");
    let mut alice = lab.client("alice")?;
    let mut bob = lab.client("bob")?;
    let mut carol = lab.client("carol")?;
    let t = Instant::now();
    alice.send_message(&bob_jid, "hello bob, from inside")?;
    bob.expect_message(&alice_jid, "hello bob, from inside", PATIENCE)?;
    println!(
        "  alice -> bob (Prosody)     delivered in {:.0} ms (first contact: dialback both ways)",
        t.elapsed().as_secs_f64() * 1e3
    );
    let t = Instant::now();
    bob.send_message(&alice_jid, "hi alice")?;
    alice.expect_message(&bob_jid, "hi alice", PATIENCE)?;
    println!(
        "  bob -> alice               delivered in {:.0} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    let t = Instant::now();
    alice.send_message(&carol_jid, "hello carol")?;
    carol.expect_message(&alice_jid, "hello carol", PATIENCE)?;
    carol.send_message(&alice_jid, "hi from ejabberd")?;
    alice.expect_message(&carol_jid, "hi from ejabberd", PATIENCE)?;
    println!(
        "  alice <-> carol (ejabberd) round trip in {:.0} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    alice.send_presence(Some(&bob_jid), Some("subscribe"), None)?;
    bob.expect_presence(&alice_jid, Some("subscribe"), PATIENCE)?;
    bob.send_presence(Some(&alice_jid), Some("subscribed"), None)?;
    alice.expect_presence(&bob_jid, Some("subscribed"), PATIENCE)?;
    println!("  presence subscription alice -> bob approved");
    let t = Instant::now();
    alice.send_burst(&bob_jid, 500)?;
    let got = bob.collect_messages(&alice_jid, 500, PATIENCE * 3)?;
    let in_order = got
        .iter()
        .enumerate()
        .all(|(i, b)| *b == format!("msg-{i}"));
    anyhow::ensure!(in_order, "burst arrived out of order");
    println!(
        "  500 messages alice -> bob, all in order, in {:.0} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    Ok(())
}
