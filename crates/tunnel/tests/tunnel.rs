//! End-to-end tests of the edge <-> core tunnel over real mutual TLS on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use causeway_tunnel::{
    CoreTunnel, Delivered, EdgeEvent, TunnelError, TunnelOptions, TunnelStanza, TunnelState,
};
use common::*;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// The next stanza for the core, settled at once (dropping its hold).
async fn recv_core(rx: &mut mpsc::Receiver<Delivered>) -> TunnelStanza {
    recv_core_held(rx).await.stanza
}

/// The next stanza for the core, with its hold: unsettled until dropped.
async fn recv_core_held(rx: &mut mpsc::Receiver<Delivered>) -> Delivered {
    tokio::time::timeout(PATIENCE, rx.recv())
        .await
        .expect("no stanza for the core")
        .expect("core receiver closed")
}

/// Next stanza event from the edge, skipping CoreUp/CoreDown.
async fn recv_edge_stanza(edge: &mut Edge) -> (String, TunnelStanza) {
    loop {
        if let EdgeEvent::Stanza { core_id, stanza } = edge.next_event().await {
            return (core_id, stanza);
        }
    }
}

/// Polls `cond` until true (hang guard only; no timing assertion).
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_and_stanzas_both_directions_in_order() {
    init_tracing();
    let pki = Pki::new();
    let mut edge = Edge::start(pki.edge.clone(), fast_opts(), 64).await;

    // Oversized stanzas are refused up front, never queued.
    let huge = TunnelStanza {
        payload: bytes::Bytes::from(vec![0u8; causeway_tunnel::MAX_STANZA_BYTES + 1]),
        ..stanza(0)
    };

    // Unknown before any hello.
    match edge.tunnel.send(CORE_ID, stanza(0)).await {
        Err(TunnelError::UnknownCore(id)) => assert_eq!(id, CORE_ID),
        other => panic!("expected UnknownCore, got {other:?}"),
    }

    let (core, mut core_rx) = start_core(edge.addr, pki.core1.clone(), fast_opts());
    assert!(
        core.wait_connected(PATIENCE).await,
        "state: {:?}",
        core.state()
    );
    assert!(matches!(core.state(), TunnelState::Connected { .. }));

    let hello = edge.wait_core_up().await;
    assert_eq!(hello.core_id, CORE_ID);
    assert_eq!(hello.domains, vec!["inside.example".to_string()]);
    assert_eq!(
        hello.chat_node_aliases,
        vec!["conference.inside.example".to_string()]
    );
    assert_eq!(hello.version, "test-1");
    let connected = edge.tunnel.connected_cores();
    assert_eq!(connected.len(), 1);
    assert_eq!(connected[0].core_id, CORE_ID);

    assert!(matches!(
        core.send(huge.clone()).await,
        Err(TunnelError::TooLarge { .. })
    ));
    assert!(matches!(
        edge.tunnel.send(CORE_ID, huge).await,
        Err(TunnelError::TooLarge { .. })
    ));

    const N: u64 = 300;
    let c = core.clone();
    let core_sender = tokio::spawn(async move {
        for i in 0..N {
            c.send(stanza(i)).await.unwrap();
        }
    });
    let e = edge.tunnel.clone();
    let edge_sender = tokio::spawn(async move {
        for i in 0..N {
            e.send(CORE_ID, stanza(1000 + i)).await.unwrap();
        }
    });

    for i in 0..N {
        let (from, s) = recv_edge_stanza(&mut edge).await;
        assert_eq!(from, CORE_ID);
        assert_eq!(s.from_domain, "a.example");
        assert_eq!(s.to_domain, "b.example");
        assert_eq!(stanza_num(&s), i, "edge got stanzas out of order");
    }
    for i in 0..N {
        assert_eq!(
            stanza_num(&recv_core(&mut core_rx).await),
            1000 + i,
            "core got stanzas out of order"
        );
    }
    core_sender.await.unwrap();
    edge_sender.await.unwrap();

    // Everything gets acknowledged, and nothing more arrives.
    eventually("all acked", || {
        core.stats().link(EDGE_NAME).unwrap().unacked == 0
            && edge.tunnel.stats().link(CORE_ID).unwrap().unacked == 0
    })
    .await;
    assert_eq!(core.stats().link(EDGE_NAME).unwrap().queued, N);
    assert_eq!(edge.tunnel.stats().link(CORE_ID).unwrap().queued, N);
    assert!(core_rx.try_recv().is_err());

    // Shutdown: the core stops, sends fail, the edge sees CoreDown.
    core.shutdown();
    assert!(matches!(
        core.send(stanza(1)).await,
        Err(TunnelError::Closed)
    ));
    loop {
        match edge.next_event().await {
            EdgeEvent::CoreDown { core_id } => {
                assert_eq!(core_id, CORE_ID);
                break;
            }
            EdgeEvent::Stanza { .. } => panic!("unexpected extra stanza"),
            EdgeEvent::CoreUp(_) => {}
        }
    }
    assert!(edge.tunnel.connected_cores().is_empty());
    let mut states = core.watch_state();
    tokio::time::timeout(PATIENCE, states.wait_for(|s| *s == TunnelState::Stopped))
        .await
        .expect("core did not stop")
        .expect("state channel closed");
    edge.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_in_order_across_relay_cuts() {
    init_tracing();
    const N: u64 = 5_000;
    const CUTS: usize = 5;
    let pki = Pki::new();
    let opts = TunnelOptions {
        window: 512,
        ..fast_opts()
    };
    let mut edge = Edge::start(pki.edge.clone(), opts.clone(), 256).await;
    let relay = Relay::start(edge.addr).await;
    let (core, mut core_rx) = start_core(relay.addr, pki.core1.clone(), opts);
    edge.wait_core_up().await;

    let progress = Arc::new(AtomicU64::new(0));

    let c = core.clone();
    let core_sender = tokio::spawn(async move {
        for i in 0..N {
            c.send(stanza(i)).await.unwrap();
        }
    });
    let e = edge.tunnel.clone();
    let edge_sender = tokio::spawn(async move {
        for i in 0..N {
            e.send(CORE_ID, stanza(i)).await.unwrap();
        }
    });

    let p = progress.clone();
    let core_receiver = tokio::spawn(async move {
        let mut got = Vec::with_capacity(N as usize);
        while (got.len() as u64) < N {
            got.push(stanza_num(&recv_core(&mut core_rx).await));
            p.fetch_add(1, Ordering::Relaxed);
        }
        // Nothing beyond N may follow (no duplicates at the tail either).
        (got, core_rx)
    });
    let p = progress.clone();
    let edge_receiver = tokio::spawn(async move {
        let mut got = Vec::with_capacity(N as usize);
        let mut ups = 0;
        let mut downs = 0;
        while (got.len() as u64) < N {
            match edge.next_event().await {
                EdgeEvent::Stanza { stanza, .. } => {
                    got.push(stanza_num(&stanza));
                    p.fetch_add(1, Ordering::Relaxed);
                }
                EdgeEvent::CoreUp(_) => ups += 1,
                EdgeEvent::CoreDown { .. } => downs += 1,
            }
        }
        (got, ups, downs, edge)
    });

    // Cut at spread-out points of progress, each time with traffic flowing.
    for k in 1..=CUTS {
        let threshold = (2 * N) * k as u64 / (CUTS as u64 + 1);
        let p = progress.clone();
        eventually("progress", || p.load(Ordering::Relaxed) >= threshold).await;
        // Cut only once the session that followed the previous cut is up,
        // so every cut ends an established session.
        let c = core.clone();
        eventually("the session before the next cut", || {
            let s = c.stats().link(EDGE_NAME).cloned().unwrap();
            s.connected && s.reconnects >= k as u64 - 1
        })
        .await;
        assert!(relay.cut() > 0, "no live connection to cut");
    }

    let (core_got, mut core_rx) = tokio::time::timeout(Duration::from_secs(120), core_receiver)
        .await
        .expect("core did not receive everything")
        .unwrap();
    let (edge_got, _ups, _downs, edge) =
        tokio::time::timeout(Duration::from_secs(120), edge_receiver)
            .await
            .expect("edge did not receive everything")
            .unwrap();
    core_sender.await.unwrap();
    edge_sender.await.unwrap();

    let expected: Vec<u64> = (0..N).collect();
    assert_eq!(core_got, expected, "core: loss, duplicate or reordering");
    assert_eq!(edge_got, expected, "edge: loss, duplicate or reordering");
    assert_eq!(core.stats().link(EDGE_NAME).unwrap().queued, N);
    assert_eq!(edge.tunnel.stats().link(CORE_ID).unwrap().queued, N);

    // Each cut ends in a reconnect on both sides, and everything gets acked.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let c = core.stats().link(EDGE_NAME).cloned().unwrap();
        let e = edge.tunnel.stats().link(CORE_ID).cloned().unwrap();
        if c.reconnects >= CUTS as u64
            && e.reconnects >= CUTS as u64
            && c.unacked == 0
            && e.unacked == 0
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not settled: core {c:?} edge {e:?} state {:?}",
            core.state()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(core_rx.try_recv().is_err(), "extra stanza after the last");
    core.shutdown();
    edge.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connection_is_detected_and_resumed() {
    init_tracing();
    const N: u64 = 200;
    let pki = Pki::new();
    let opts = fast_opts(); // keepalive 1 s: dead after 3 s of silence
    let mut edge = Edge::start(pki.edge.clone(), opts.clone(), 64).await;
    let relay = Relay::start(edge.addr).await;
    let (core, mut core_rx) = start_core(relay.addr, pki.core1.clone(), opts);
    edge.wait_core_up().await;

    for i in 0..N / 2 {
        core.send(stanza(i)).await.unwrap();
    }
    for i in 0..N / 2 {
        assert_eq!(stanza_num(&recv_edge_stanza(&mut edge).await.1), i);
    }
    // The path goes silent without any FIN/RST; stanzas keep being queued.
    relay.black_hole().await;
    for i in N / 2..N {
        core.send(stanza(i)).await.unwrap();
        edge.tunnel.send(CORE_ID, stanza(i)).await.unwrap();
    }
    // Both sides must notice (keepalive timeout), the core must redial, and
    // everything queued must arrive exactly once, in order.
    let mut downs = 0;
    let mut got = Vec::new();
    while (got.len() as u64) < N / 2 {
        match edge.next_event().await {
            EdgeEvent::Stanza { stanza, .. } => got.push(stanza_num(&stanza)),
            EdgeEvent::CoreDown { .. } => downs += 1,
            EdgeEvent::CoreUp(_) => {}
        }
    }
    assert_eq!(got, (N / 2..N).collect::<Vec<_>>());
    for i in N / 2..N {
        assert_eq!(stanza_num(&recv_core(&mut core_rx).await), i);
    }
    assert!(core_rx.try_recv().is_err());
    let stats = core.stats().link(EDGE_NAME).cloned().unwrap();
    assert!(stats.reconnects >= 1, "{stats:?}");
    assert!(downs >= 1 || edge.tunnel.stats().link(CORE_ID).unwrap().reconnects >= 1);
    core.shutdown();
    edge.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_with_cert_from_other_ca_cannot_connect() {
    init_tracing();
    let pki = Pki::new();
    let mut edge = Edge::start(pki.edge.clone(), fast_opts(), 16).await;
    // Right name, wrong issuer; it does trust the real CA for the edge.
    let rogue = pki.other_ca.files(CORE_ID, false, &pki.ca);
    let (core, _rx) = start_core(edge.addr, rogue, fast_opts());

    assert!(!core.wait_connected(Duration::from_secs(3)).await);
    // With TLS 1.3 the server's rejection may reach the client as an alert
    // ("UnknownCA") or, racing with the close, as a plain closed connection;
    // attempts repeat, and the state must show the TLS error at some point.
    let mut states = core.watch_state();
    let state = tokio::time::timeout(
        PATIENCE,
        states.wait_for(|s| {
            matches!(s, TunnelState::Connecting { last_error: Some(e), .. } if e.starts_with("tls:"))
        }),
    )
    .await
    .expect("the TLS failure never showed in the state")
    .unwrap()
    .clone();
    let TunnelState::Connecting {
        last_error: Some(err),
        ..
    } = state
    else {
        panic!("unexpected state {state:?}")
    };
    assert!(
        err.contains("UnknownCA") || err.contains("certificate"),
        "{err:?}"
    );
    assert!(!matches!(core.state(), TunnelState::Connected { .. }));
    assert!(edge.events.try_recv().is_err(), "edge must not emit events");
    assert!(edge.tunnel.stats().links.is_empty());
    assert!(edge.tunnel.connected_cores().is_empty());
    core.shutdown();
    edge.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_with_cert_from_other_ca_is_rejected_by_core() {
    init_tracing();
    let pki = Pki::new();
    // The edge presents a certificate the core's CA did not sign.
    let rogue_edge = pki.other_ca.files(EDGE_NAME, true, &pki.ca);
    let mut edge = Edge::start(rogue_edge, fast_opts(), 16).await;
    let (core, _rx) = start_core(edge.addr, pki.core1.clone(), fast_opts());
    assert!(!core.wait_connected(Duration::from_secs(2)).await);
    match core.state() {
        TunnelState::Connecting {
            last_error: Some(err),
            ..
        } => assert!(err.starts_with("tls:"), "{err:?}"),
        other => panic!("unexpected state {other:?}"),
    }
    assert!(edge.events.try_recv().is_err());
    core.shutdown();
    edge.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_without_certificate_is_rejected() {
    use causeway_api::traversal::traversal_client::TraversalClient;
    use causeway_api::traversal::{frame, Frame, Hello};
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

    init_tracing();
    let pki = Pki::new();
    let mut edge = Edge::start(pki.edge.clone(), fast_opts(), 16).await;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca.pem))
        .domain_name(EDGE_NAME);
    let endpoint = Endpoint::from_shared(format!("https://{}", edge.addr))
        .unwrap()
        .tls_config(tls)
        .unwrap();
    // Depending on TLS version the failure shows at connect or at the first call.
    if let Ok(channel) = endpoint.connect().await {
        let mut client = TraversalClient::new(channel);
        let hello = Frame {
            kind: Some(frame::Kind::Hello(Hello {
                core_id: CORE_ID.into(),
                instance: 1,
                ..Default::default()
            })),
        };
        let result = client.connect(tokio_stream::iter(vec![hello])).await;
        match result {
            Err(_) => {}
            Ok(resp) => {
                let mut inbound = resp.into_inner();
                assert!(
                    !matches!(inbound.message().await, Ok(Some(_))),
                    "an unauthenticated client got a frame"
                );
            }
        }
    }
    assert!(edge.events.try_recv().is_err());
    assert!(edge.tunnel.stats().links.is_empty());
    edge.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_core_id_must_match_certificate() {
    init_tracing();
    let pki = Pki::new();
    let mut edge = Edge::start(pki.edge.clone(), fast_opts(), 16).await;
    // Valid certificate for core1, but claims to be core2.
    let cfg = core_config(edge.addr, pki.core1.clone(), "core2.lab.test", fast_opts());
    let (core, _rx) = CoreTunnel::start(cfg);

    let mut states = core.watch_state();
    let state = tokio::time::timeout(
        PATIENCE,
        states.wait_for(|s| {
            matches!(s, TunnelState::Connecting { last_error: Some(_), attempts } if *attempts >= 2)
        }),
    )
    .await
    .expect("no refused attempt recorded")
    .unwrap()
    .clone();
    match state {
        TunnelState::Connecting {
            last_error: Some(err),
            ..
        } => {
            assert!(err.starts_with("refused by peer"), "{err:?}");
            assert!(err.contains("PermissionDenied"), "{err:?}");
        }
        other => panic!("unexpected state {other:?}"),
    }
    assert!(!core.wait_connected(Duration::from_millis(500)).await);
    assert!(
        edge.events.try_recv().is_err(),
        "no CoreUp for a refused core"
    );
    assert!(edge.tunnel.stats().links.is_empty());
    assert!(matches!(
        edge.tunnel.send("core2.lab.test", stanza(1)).await,
        Err(TunnelError::UnknownCore(_))
    ));
    core.shutdown();
    edge.stop().await.unwrap();
}

/// A stanza the receiver holds (its `Settle` not dropped) stays in the sender's window; a
/// destination that holds its share of the window makes its own senders wait while another
/// destination flows, and dropping the holds lets the waiting send through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_destination_waits_within_its_share_and_others_flow() {
    init_tracing();
    let pki = Pki::new();
    // Window 8, share 1/4: one destination holds at most 2.
    let opts = TunnelOptions {
        window: 8,
        ..fast_opts()
    };
    let mut edge = Edge::start(pki.edge.clone(), opts.clone(), 64).await;
    let (core, mut core_rx) = start_core(edge.addr, pki.core1.clone(), opts);
    assert!(core.wait_connected(PATIENCE).await);
    edge.wait_core_up().await;
    let to = |domain: &str, n: u64| TunnelStanza {
        to_domain: domain.into(),
        ..stanza(n)
    };

    let mut held = Vec::new();
    for n in 1..=2 {
        edge.tunnel
            .send(CORE_ID, to("slow.example", n))
            .await
            .unwrap();
        held.push(recv_core_held(&mut core_rx).await);
    }
    // Held stanzas are delivered but not acknowledged.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(edge.tunnel.stats().link(CORE_ID).unwrap().unacked, 2);
    // The third for the same destination waits for its share...
    let e = edge.tunnel.clone();
    let third = tokio::spawn(async move { e.send(CORE_ID, to("slow.example", 3)).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!third.is_finished(), "a destination went past its share");
    // ... while another destination flows, several times over its own share.
    for n in 10..16 {
        tokio::time::timeout(PATIENCE, edge.tunnel.send(CORE_ID, to("fast.example", n)))
            .await
            .expect("another destination was held back")
            .unwrap();
        let d = recv_core_held(&mut core_rx).await;
        assert_eq!(stanza_num(&d.stanza), n);
    }
    eventually("the other destination acknowledged", || {
        edge.tunnel.stats().link(CORE_ID).unwrap().unacked == 2
    })
    .await;
    // Settling one held stanza lets the third through, in order after the first two.
    drop(held.remove(0));
    tokio::time::timeout(PATIENCE, third)
        .await
        .expect("the third send never completed")
        .unwrap()
        .unwrap();
    assert_eq!(stanza_num(&recv_core(&mut core_rx).await), 3);
    drop(held);
    eventually("everything acknowledged", || {
        edge.tunnel.stats().link(CORE_ID).unwrap().unacked == 0
    })
    .await;
    edge.stop().await.unwrap();
}

/// A held stanza is still the receiver's after a reconnect: it is not replayed (it was
/// received) and settles when its hold drops, on the new session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_stanza_settles_after_a_reconnect_without_a_replay() {
    init_tracing();
    let pki = Pki::new();
    let mut edge = Edge::start(pki.edge.clone(), fast_opts(), 64).await;
    let relay = Relay::start(edge.addr).await;
    let (core, mut core_rx) = start_core(relay.addr, pki.core1.clone(), fast_opts());
    assert!(core.wait_connected(PATIENCE).await);
    edge.wait_core_up().await;
    edge.tunnel.send(CORE_ID, stanza(1)).await.unwrap();
    let held = recv_core_held(&mut core_rx).await;
    assert!(relay.cut() > 0, "no live connection to cut");
    eventually("the core reconnected", || {
        let stats = core.stats();
        let l = stats.link(EDGE_NAME).unwrap();
        l.connected && l.reconnects >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(edge.tunnel.stats().link(CORE_ID).unwrap().unacked, 1);
    drop(held);
    eventually("the held stanza acknowledged on the new session", || {
        edge.tunnel.stats().link(CORE_ID).unwrap().unacked == 0
    })
    .await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), core_rx.recv())
            .await
            .is_err(),
        "a received stanza was delivered again"
    );
    edge.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_waits_for_window_room() {
    init_tracing();
    let pki = Pki::new();
    // One destination may fill the whole window here (shares: the next test).
    let opts = TunnelOptions {
        window: 8,
        destination_share: 1,
        ..fast_opts()
    };
    // Bind the edge's port now but serve later: the core cannot get acks.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (core, _core_rx) = start_core(addr, pki.core1.clone(), opts.clone());

    for i in 1..=8 {
        core.send(stanza(i)).await.unwrap();
    }
    assert_eq!(core.stats().link(EDGE_NAME).unwrap().unacked, 8);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), core.send(stanza(9)))
            .await
            .is_err(),
        "9th send must wait while the window is full"
    );
    // A timed-out (dropped) send queues nothing.
    assert_eq!(core.stats().link(EDGE_NAME).unwrap().queued, 8);

    let c = core.clone();
    let ninth = tokio::spawn(async move { c.send(stanza(9)).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!ninth.is_finished(), "9th send completed without acks");

    // Now serve. The test consumes CoreUp and then does not drain the events
    // channel (capacity 4), so the edge delivers at most 4 stanzas, acks those
    // and then stops reading.
    const EVENTS: usize = 4;
    let mut edge = Edge::start_on(listener, pki.edge.clone(), opts, EVENTS);
    edge.wait_core_up().await;
    tokio::time::timeout(PATIENCE, ninth)
        .await
        .expect("9th send never completed")
        .unwrap()
        .unwrap();

    let mut accepted = 9u64;
    // Keep sending until a send has to wait (the dropped send queues nothing).
    while let Ok(r) =
        tokio::time::timeout(Duration::from_millis(300), core.send(stanza(accepted + 1))).await
    {
        r.unwrap();
        accepted += 1;
        assert!(accepted < 100, "backpressure never kicked in");
    }
    // Window (8) + what the edge could hand to the undrained channel (4).
    assert!(
        accepted <= 8 + EVENTS as u64,
        "{accepted} sends accepted with only {EVENTS} stanzas deliverable"
    );

    // Drain: every accepted stanza arrives once, in order, and room returns.
    for i in 1..=accepted {
        let (_, s) = recv_edge_stanza(&mut edge).await;
        assert_eq!(stanza_num(&s), i);
    }
    tokio::time::timeout(PATIENCE, core.send(stanza(accepted + 1)))
        .await
        .expect("send still blocked after draining")
        .unwrap();
    let (_, s) = recv_edge_stanza(&mut edge).await;
    assert_eq!(stanza_num(&s), accepted + 1);
    core.shutdown();
    edge.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_restart_and_core_restart_resume_with_new_instances() {
    init_tracing();
    let pki = Pki::new();
    let opts = fast_opts();
    let mut edge1 = Edge::start(pki.edge.clone(), opts.clone(), 64).await;
    let relay = Relay::start(edge1.addr).await;
    let (core_a, mut core_a_rx) = start_core(relay.addr, pki.core1.clone(), opts.clone());
    edge1.wait_core_up().await;

    for i in 1..=10 {
        core_a.send(stanza(i)).await.unwrap();
    }
    for i in 1..=5 {
        edge1.tunnel.send(CORE_ID, stanza(100 + i)).await.unwrap();
    }
    for i in 1..=10 {
        assert_eq!(stanza_num(&recv_edge_stanza(&mut edge1).await.1), i);
    }
    for i in 1..=5 {
        assert_eq!(stanza_num(&recv_core(&mut core_a_rx).await), 100 + i);
    }
    eventually("edge1 acked", || {
        core_a.stats().link(EDGE_NAME).unwrap().unacked == 0
            && edge1.tunnel.stats().link(CORE_ID).unwrap().unacked == 0
    })
    .await;
    let edge1_instance = edge1.tunnel.instance();

    // Edge restart: stop edge1, queue stanzas while it is gone.
    edge1.stop().await.unwrap();
    let mut states = core_a.watch_state();
    tokio::time::timeout(
        PATIENCE,
        states.wait_for(|s| !matches!(s, TunnelState::Connected { .. })),
    )
    .await
    .expect("core did not notice the edge going away")
    .unwrap();
    for i in 11..=20 {
        core_a.send(stanza(i)).await.unwrap();
    }
    let mut edge2 = Edge::start(pki.edge.clone(), opts.clone(), 64).await;
    assert_ne!(edge2.tunnel.instance(), edge1_instance);
    relay.set_target(edge2.addr);
    relay.cut();

    edge2.wait_core_up().await;
    // Only what edge1 never acknowledged, in order.
    for i in 11..=20 {
        assert_eq!(stanza_num(&recv_edge_stanza(&mut edge2).await.1), i);
    }
    // edge2 numbers from 1 again; the core must not drop them as duplicates
    // of edge1's 1..=5.
    for i in 1..=3 {
        edge2.tunnel.send(CORE_ID, stanza(200 + i)).await.unwrap();
    }
    for i in 1..=3 {
        assert_eq!(stanza_num(&recv_core(&mut core_a_rx).await), 200 + i);
    }
    eventually("edge2 acked", || {
        core_a.stats().link(EDGE_NAME).unwrap().unacked == 0
            && edge2.tunnel.stats().link(CORE_ID).unwrap().unacked == 0
    })
    .await;

    // Core restart: the old core goes away; stanzas queued for it meanwhile
    // go to the new core process, whose numbering starts at 1 again.
    core_a.shutdown();
    loop {
        if let EdgeEvent::CoreDown { .. } = edge2.next_event().await {
            break;
        }
    }
    for i in 4..=5 {
        edge2.tunnel.send(CORE_ID, stanza(200 + i)).await.unwrap();
    }
    let (core_b, mut core_b_rx) = start_core(relay.addr, pki.core1.clone(), opts);
    assert_ne!(core_b.instance(), core_a.instance());
    edge2.wait_core_up().await;
    for i in 4..=5 {
        assert_eq!(stanza_num(&recv_core(&mut core_b_rx).await), 200 + i);
    }
    for i in 1..=5 {
        core_b.send(stanza(300 + i)).await.unwrap();
    }
    for i in 1..=5 {
        assert_eq!(stanza_num(&recv_edge_stanza(&mut edge2).await.1), 300 + i);
    }
    let stats = edge2.tunnel.stats().link(CORE_ID).cloned().unwrap();
    assert_eq!(stats.queued, 5);
    assert!(stats.reconnects >= 1, "{stats:?}");
    core_b.shutdown();
    edge2.stop().await.unwrap();
}

/// Failover support: stanzas an edge never acknowledged can be taken back
/// from the core's window once that edge is gone (to go through another edge),
/// and a later session with an edge does not replay them. The edge side can do
/// the same for a core that is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_stanzas_can_be_taken_back_from_a_peer_that_is_gone() {
    init_tracing();
    let pki = Pki::new();
    let opts = fast_opts();
    let mut edge1 = Edge::start(pki.edge.clone(), opts.clone(), 64).await;
    let relay = Relay::start(edge1.addr).await;
    let (core, mut core_rx) = start_core(relay.addr, pki.core1.clone(), opts.clone());
    edge1.wait_core_up().await;
    for i in 1..=3 {
        core.send(stanza(i)).await.unwrap();
    }
    for i in 1..=3 {
        assert_eq!(stanza_num(&recv_edge_stanza(&mut edge1).await.1), i);
    }
    // While a session is up nothing is taken, acknowledged or not.
    assert!(core.is_connected());
    assert!(core.take_unacked().is_empty());
    assert!(edge1.tunnel.take_unacked(CORE_ID).is_empty());
    assert!(edge1.tunnel.take_unacked("nobody").is_empty());
    eventually("edge1 acked", || core.link_stats().unacked == 0).await;

    // The edge goes away; what is queued meanwhile can be taken back, in order.
    edge1.stop().await.unwrap();
    let mut states = core.watch_state();
    tokio::time::timeout(
        PATIENCE,
        states.wait_for(|s| !matches!(s, TunnelState::Connected { .. })),
    )
    .await
    .expect("core did not notice the edge going away")
    .unwrap();
    assert!(!core.is_connected());
    for i in 4..=8 {
        core.send(stanza(i)).await.unwrap();
    }
    let taken: Vec<u64> = core.take_unacked().iter().map(stanza_num).collect();
    assert_eq!(taken, vec![4, 5, 6, 7, 8]);
    let stats = core.link_stats();
    assert_eq!((stats.unacked, stats.taken_back), (0, 5), "{stats:?}");
    assert!(core.take_unacked().is_empty(), "taken only once");

    // An edge comes back: only what was queued after the take crosses.
    core.send(stanza(9)).await.unwrap();
    let mut edge2 = Edge::start(pki.edge.clone(), opts, 64).await;
    relay.set_target(edge2.addr);
    relay.cut();
    edge2.wait_core_up().await;
    assert_eq!(stanza_num(&recv_edge_stanza(&mut edge2).await.1), 9);

    // Edge side: a core that is gone leaves its queue to be taken back.
    core.shutdown();
    loop {
        if let EdgeEvent::CoreDown { .. } = edge2.next_event().await {
            break;
        }
    }
    assert!(!edge2.tunnel.is_connected(CORE_ID));
    for i in 1..=2 {
        edge2.tunnel.send(CORE_ID, stanza(100 + i)).await.unwrap();
    }
    let taken: Vec<u64> = edge2
        .tunnel
        .take_unacked(CORE_ID)
        .iter()
        .map(stanza_num)
        .collect();
    assert_eq!(taken, vec![101, 102]);
    assert_eq!(edge2.tunnel.stats().link(CORE_ID).unwrap().unacked, 0);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), core_rx.recv())
            .await
            .map_or(true, |s| s.is_none()),
        "the stopped core got something"
    );
    edge2.stop().await.unwrap();
}

/// New domain lists reach the edge in a new hello (the session restarts at once), and what
/// was in flight crosses exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reannounce_says_hello_again_without_losing_stanzas() {
    init_tracing();
    let pki = Pki::new();
    let mut edge = Edge::start(pki.edge.clone(), fast_opts(), 64).await;
    let (core, _core_rx) = start_core(edge.addr, pki.core1.clone(), fast_opts());
    assert_eq!(edge.wait_core_up().await.domains, vec!["inside.example"]);
    let c = core.clone();
    let sender = tokio::spawn(async move {
        for i in 0..200 {
            c.send(stanza(i)).await.unwrap();
            if i == 100 {
                c.reannounce(
                    vec!["inside.example".into(), "new.example".into()],
                    vec!["muc.new.example".into()],
                );
            }
        }
    });
    let mut next = 0;
    let mut hello = None;
    while next < 200 {
        match edge.next_event().await {
            EdgeEvent::Stanza { stanza: s, .. } => {
                assert_eq!(stanza_num(&s), next, "lost, duplicated or reordered");
                next += 1;
            }
            EdgeEvent::CoreUp(h) => hello = Some(h),
            EdgeEvent::CoreDown { .. } => {}
        }
    }
    sender.await.unwrap();
    let hello = match hello {
        Some(h) => h,
        None => edge.wait_core_up().await,
    };
    assert_eq!(hello.domains, vec!["inside.example", "new.example"]);
    assert_eq!(hello.chat_node_aliases, vec!["muc.new.example"]);
    assert!(core.wait_connected(PATIENCE).await);
    assert_eq!(core.link_stats().reconnects, 1, "one new session");
    edge.stop().await.unwrap();
}

/// Protocol revisions across an upgrade: a core from before revisions (its hello says
/// nothing) works with this edge at revision 1 and is never sent a `Drain` it would not know;
/// a current core runs at revision 2, hears the edge's drain (and stops counting it as fit
/// for new stanzas) while stanzas keep flowing both ways; the edge hears a core's drain too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_revisions_and_drain_across_versions() {
    init_tracing();
    let pki = Pki::new();
    let mut edge = Edge::start(pki.edge.clone(), fast_opts(), 64).await;

    // A core from before revisions.
    let mut old = core_config(edge.addr, pki.core1.clone(), CORE_ID, fast_opts());
    old.hello.protocol = 0;
    let (old_core, mut old_rx) = CoreTunnel::start(old);
    let hello = edge.wait_core_up().await;
    assert_eq!(
        hello.protocol, 1,
        "a core without the field speaks revision 1"
    );
    assert_eq!(old_core.protocol(), 1);
    edge.tunnel.drain(30);
    old_core.send(stanza(1)).await.unwrap();
    assert_eq!(stanza_num(&recv_edge_stanza(&mut edge).await.1), 1);
    edge.tunnel.send(CORE_ID, stanza(2)).await.unwrap();
    assert_eq!(stanza_num(&recv_core(&mut old_rx).await), 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !old_core.peer_draining(),
        "an old core was sent a Drain frame"
    );
    old_core.shutdown();
    loop {
        if let EdgeEvent::CoreDown { .. } = edge.next_event().await {
            break;
        }
    }

    // A current core: revision 2; told of the drain at the start of its session.
    let (core, mut core_rx) = start_core(edge.addr, pki.core1.clone(), fast_opts());
    let hello = edge.wait_core_up().await;
    assert_eq!(hello.protocol, causeway_tunnel::protocol::PROTOCOL);
    eventually("the core hears the edge drain", || core.peer_draining()).await;
    assert!(core.is_connected() && !core.is_usable());
    // Draining is not stopping: what is in flight still crosses, both ways.
    core.send(stanza(3)).await.unwrap();
    assert_eq!(stanza_num(&recv_edge_stanza(&mut edge).await.1), 3);
    edge.tunnel.send(CORE_ID, stanza(4)).await.unwrap();
    assert_eq!(stanza_num(&recv_core(&mut core_rx).await), 4);

    // The other way round: the core drains, the edge hears it.
    assert!(edge.tunnel.is_usable(CORE_ID));
    core.drain(30);
    eventually("the edge hears the core drain", || {
        !edge.tunnel.is_usable(CORE_ID)
    })
    .await;
    assert!(edge.tunnel.is_connected(CORE_ID));
    core.shutdown();
    edge.stop().await.unwrap();
}
