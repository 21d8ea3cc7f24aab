//! Every phase of an inbound federation connection has a deadline (README, "Deadlines"): a
//! peer that stalls in any of them loses its connection within the default plus a second, and
//! one that stops reading loses it once a write has made no progress for the write-stall
//! bound. One test per row of the table, against the real edge binary.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use causeway_testkit::lab::{Lab, PARTNER};

use crate::support::raw::{self, header, read_until};
use crate::support::{edge_log, options, options_with_remote, remote_addr, remote_server, start};

/// The edge's s2s address in a lab on `subnet`.
fn edge(subnet: u8) -> SocketAddr {
    SocketAddr::from((Lab::ip(subnet, 2), 5269))
}

/// A closing time must fall within [default - 0.5 s, default + 1 s].
fn assert_deadline(took: Duration, default: u64, what: &str, log: impl FnOnce() -> String) {
    let low = Duration::from_millis(default * 1000 - 500);
    let high = Duration::from_secs(default + 1);
    assert!(
        took >= low && took <= high,
        "{what}: closed after {took:?}, not within [{low:?}, {high:?}]\n{}",
        log()
    );
}

/// The edge logs `what` (it writes the line just after closing the socket: wait a little).
fn assert_logged(lab: &Lab, what: &str) {
    let logged =
        causeway_testkit::wait_until(Duration::from_secs(3), || edge_log(lab).contains(what));
    assert!(logged, "{what:?} not logged:\n{}", edge_log(lab));
}

/// Row "stream header, 10 s": a peer that connects and says nothing.
#[test]
fn a_peer_that_sends_no_header_is_closed_after_10_s() {
    let subnet = 221;
    let lab = start(options(subnet));
    let (took, said) = raw::script(async {
        let mut tcp = raw::connect(edge(subnet)).await;
        raw::time_to_close(&mut tcp).await
    });
    assert_deadline(took, 10, "silent peer", || edge_log(&lab));
    assert!(said.contains("connection-timeout"), "{said}");
    assert_logged(&lab, "no stream header in time");
}

/// Row "TLS handshake, 10 s": `<starttls/>`, `<proceed/>`, then no ClientHello.
#[test]
fn a_peer_that_stalls_its_starttls_handshake_is_closed_after_10_s() {
    let subnet = 222;
    let lab = start(options(subnet));
    let took = raw::script(async {
        let mut tcp = raw::connect(edge(subnet)).await;
        raw::write(&mut tcp, header(PARTNER).as_bytes()).await;
        read_until(&mut tcp, "</stream:features>", Duration::from_secs(5)).await;
        raw::write(
            &mut tcp,
            b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
        )
        .await;
        read_until(&mut tcp, "<proceed", Duration::from_secs(5)).await;
        raw::time_to_close(&mut tcp).await.0
    });
    assert_deadline(took, 10, "stalled STARTTLS handshake", || edge_log(&lab));
    assert_logged(&lab, "handshake timed out");
}

/// Row "TLS handshake, 10 s" for direct TLS (XEP-0368): a connection to the direct-TLS port
/// that never starts its handshake.
#[test]
fn a_direct_tls_peer_that_never_handshakes_is_closed_after_10_s() {
    let subnet = 223;
    let mut opts = options(subnet);
    let direct = SocketAddr::from((Lab::ip(subnet, 2), 5270));
    opts.edge_federation_extra = format!("direct_tls_listen = \"{direct}\"");
    let lab = start(opts);
    let took = raw::script(async {
        let mut tcp = raw::connect(direct).await;
        // Half a ClientHello record header, then nothing.
        raw::write(&mut tcp, &[0x16, 0x03, 0x01]).await;
        raw::time_to_close(&mut tcp).await.0
    });
    assert_deadline(took, 10, "stalled direct TLS handshake", || edge_log(&lab));
    assert_logged(&lab, "direct TLS handshake failed");
}

/// Row "authentication, 30 s from accept": a peer that sends its header and then only
/// whitespace keepalives (which count as traffic but authenticate nothing).
#[test]
fn a_peer_that_never_authenticates_is_closed_after_30_s() {
    let subnet = 224;
    let lab = start(options(subnet));
    let (took, said) = raw::script(async {
        let mut tcp = raw::connect(edge(subnet)).await;
        let accepted = Instant::now();
        raw::write(&mut tcp, header(PARTNER).as_bytes()).await;
        read_until(&mut tcp, "</stream:features>", Duration::from_secs(5)).await;
        let (mut rd, mut wr) = tcp.into_split();
        let keepalive = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            while wr.write_all(b" ").await.is_ok() {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let mut seen = Vec::new();
        let mut buf = [0u8; 1024];
        let took = loop {
            use tokio::io::AsyncReadExt;
            match tokio::time::timeout(Duration::from_secs(40), rd.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break accepted.elapsed(),
                Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
                Err(_) => panic!("still open after 40 s"),
            }
        };
        keepalive.abort();
        (took, String::from_utf8_lossy(&seen).into_owned())
    });
    assert_deadline(took, 30, "unauthenticated stream", || edge_log(&lab));
    assert!(said.contains("connection-timeout"), "{said}");
    assert_logged(&lab, "not authenticated in time");
}

/// Row "write stall, 60 s": a peer that writes `<db:verify/>` requests in a loop and never
/// reads the answers. The edge stops reading when its writes block, and closes the
/// connection once a write has made no progress for 60 s (authentication is given 10 minutes
/// here so that its deadline does not close the stream first).
#[test]
fn a_peer_that_does_not_read_is_closed_after_60_s_of_stalled_writes() {
    let subnet = 225;
    let mut opts = options(subnet);
    opts.edge_extra = "[limits]\nauthentication_secs = 600\n".into();
    let lab = start(opts);
    let took = raw::script(async {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        // A small receive window fills sooner.
        socket.set_recv_buffer_size(4096).expect("rcvbuf");
        let mut tcp = socket.connect(edge(subnet)).await.expect("connect");
        raw::write(&mut tcp, header(PARTNER).as_bytes()).await;
        read_until(&mut tcp, "</stream:features>", Duration::from_secs(5)).await;
        let request: Vec<u8> = (0..64)
            .map(|i| {
                format!(
                    "<db:verify from='{PARTNER}' to='example.com' id='id{i}'>{}</db:verify>",
                    "0".repeat(64)
                )
            })
            .collect::<String>()
            .into_bytes();
        // One writer that never abandons a write half-way (a cut element would nest the next
        // one inside it and grow past the element cap): it goes on from where it stopped.
        let (_rd, mut wr) = tcp.into_split();
        let written = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let progress = written.clone();
        let mut writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let mut at = 0;
            loop {
                match wr.write(&request[at..]).await {
                    Ok(n @ 1..) => {
                        at = (at + n) % request.len();
                        progress.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                    }
                    _ => return,
                }
            }
        });
        // Wait until nothing was written for 2 s: the edge has stopped reading.
        let mut last = usize::MAX;
        let blocked = loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let now = written.load(std::sync::atomic::Ordering::Relaxed);
            assert!(!writer.is_finished(), "closed before the stall");
            if now == last {
                break Instant::now() - Duration::from_secs(2);
            }
            last = now;
        };
        // Now wait, still not reading, for the edge to drop us: a write fails with a reset.
        tokio::time::timeout(Duration::from_secs(90), &mut writer)
            .await
            .expect("still open 90 s after the stall")
            .expect("writer");
        blocked.elapsed()
    });
    // The edge's write blocked a little before ours did: the close comes at most 60 s (+1)
    // after our write blocked.
    assert!(
        took <= Duration::from_secs(61),
        "closed {took:?} after the stall\n{}",
        edge_log(&lab)
    );
    assert!(
        took >= Duration::from_secs(30),
        "closed {took:?} after the stall: too early for the write-stall bound\n{}",
        edge_log(&lab)
    );
    assert_logged(&lab, "write stalled");
}

/// Row "tunnel TLS handshake, 10 s": a connection to the tunnel port that never sends its
/// ClientHello is closed, and a core beside it stays connected.
#[test]
fn a_tunnel_connection_that_never_handshakes_is_closed_after_10_s() {
    let subnet = 244;
    let lab = start(options(subnet));
    let tunnel = SocketAddr::from((Lab::ip(subnet, 2), 7400));
    let took = raw::script(async {
        let mut tcp = raw::connect(tunnel).await;
        raw::time_to_close(&mut tcp).await.0
    });
    assert_deadline(took, 10, "stalled tunnel handshake", || edge_log(&lab));
    assert!(
        !edge_log(&lab).contains("core disconnected"),
        "the real core was disturbed:\n{}",
        edge_log(&lab)
    );
}

/// Row "time a stanza waits in its pair's queue, 30 s": alice writes to a domain whose server
/// accepts TCP and never speaks (a tarpit). Her message bounces with `remote-server-timeout`
/// within 30 s + 1 s of being sent, and the tarpit held the edge's connection meanwhile.
#[test]
fn a_stanza_for_a_tarpit_bounces_after_30_s() {
    use crate::support::{Step, PATIENCE};
    let subnet = 245;
    let tarpit_addr = remote_addr(subnet);
    let opts = options_with_remote(subnet, "tarpit.test");
    let tarpit = std::net::TcpListener::bind(tarpit_addr).expect("tarpit listens");
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    std::thread::spawn(move || {
        for conn in tarpit.incoming().flatten() {
            if let Ok(mut v) = keep.lock() {
                v.push(conn);
            }
        }
    });
    let lab = start(opts);
    let mut alice = lab.client("alice").step(&lab, "alice connects");
    let sent = Instant::now();
    alice
        .send_message("nobody@tarpit.test", "into the tarpit")
        .step(&lab, "send");
    let bounce = alice
        .wait_for(PATIENCE * 3, |ev| {
            matches!(ev, causeway_testkit::ClientEvent::Message { mtype, xml, .. }
                if mtype == "error" && xml.contains("remote-server-timeout"))
        })
        .step(&lab, "wait for the bounce");
    let took = sent.elapsed();
    assert!(
        bounce.is_some(),
        "no remote-server-timeout bounce:\n{}",
        lab.diagnostics()
    );
    assert_deadline(took, 30, "stanza queued for a tarpit", || edge_log(&lab));
    assert!(
        held.lock().is_ok_and(|v| !v.is_empty()),
        "the edge never reached the tarpit"
    );
}

/// Row "idle authenticated stream": an authenticated inbound stream with no stanza for
/// `federation.idle_timeout_secs` (5 here: the 600 s default is the same code) is closed with
/// `<connection-timeout/>` within that plus a second of its last stanza.
#[test]
fn an_idle_authenticated_stream_is_closed_after_its_idle_timeout() {
    use crate::support::{Step, PATIENCE};
    let subnet = 248;
    let mut opts = options_with_remote(subnet, "idle.test");
    opts.edge_federation_extra = "idle_timeout_secs = 5".into();
    let lab = start(opts);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let idle = remote_server(&rt, subnet, "idle.test", false, None);
    let mut alice = lab.client("alice").step(&lab, "alice connects");
    rt.block_on(idle.send(
        "example.com",
        "<message from='ivy@idle.test' to='alice@example.com' type='chat'><body>then silence</body></message>",
    ));
    alice
        .expect_message("ivy@idle.test", "then silence", PATIENCE)
        .step(&lab, "idle.test authenticated and delivered");
    let last = Instant::now();
    let closed = |log: &str| {
        log.lines().any(|l| {
            l.contains("s2s session closed")
                && l.contains("direction=\"incoming\"")
                && l.contains("idle.test")
                && l.contains("connection-timeout: idle")
        })
    };
    let seen = causeway_testkit::wait_until(Duration::from_secs(20), || closed(&edge_log(&lab)));
    let took = last.elapsed();
    assert!(
        seen,
        "the idle stream was never closed:\n{}",
        edge_log(&lab)
    );
    assert_deadline(took, 5, "idle authenticated stream", || edge_log(&lab));
}
