//! Real peers on loopback: dnsmasq, Prosody, ejabberd, slixmpp clients, and
//! the relay. Each test uses its own DNS address, so they run in parallel.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use causeway_testkit::{
    Client, ClientEvent, DnsRecord, DnsServer, Ejabberd, EjabberdSpec, Prosody, ProsodySpec, Relay,
};

const T: Duration = Duration::from_secs(20);

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

/// Prints diagnostics of every peer when a step fails.
fn diag(peers: &[&Prosody]) -> String {
    let mut s = String::new();
    for p in peers {
        s.push_str(&format!(
            "==== {} s2s ====\n{}\n==== {} log ====\n{}\n",
            p.spec.domain,
            p.s2s_show(),
            p.spec.domain,
            p.log_tail(60)
        ));
    }
    s
}

fn roster_subscription(c: &mut Client, jid: &str) -> Option<String> {
    let r = c.roster().ok()?;
    r.get(jid)?
        .get("subscription")?
        .as_str()
        .map(|s| s.to_owned())
}

fn wait_subscription(c: &mut Client, jid: &str, want: &str) -> bool {
    let deadline = Instant::now() + T;
    while Instant::now() < deadline {
        if roster_subscription(c, jid).as_deref() == Some(want) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn prosody_to_prosody_via_srv() {
    let t0 = Instant::now();
    let mut ex = ProsodySpec::new(ip(11), "example.com").user("alice", "alice-pw");
    ex.muc = Some("conference.example.com".into());
    let mut pt = ProsodySpec::new(ip(21), "partner.test").user("bob", "bob-pw");
    let dns = DnsServer::start(
        ip(53),
        &[
            DnsRecord::xmpp_server("example.com", "127.0.0.11", ex.s2s_port),
            DnsRecord::xmpp_server("conference.example.com", "127.0.0.11", ex.s2s_port),
            DnsRecord::xmpp_server("partner.test", "127.0.0.21", pt.s2s_port),
        ],
    )
    .expect("dnsmasq");
    ex.dns = Some(dns.addr);
    pt.dns = Some(dns.addr);
    let t_dns = t0.elapsed();
    let example = Prosody::start(ex).expect("prosody example.com");
    let partner = Prosody::start(pt).expect("prosody partner.test");
    let t_prosody = t0.elapsed();
    let mut alice = Client::connect("alice@example.com", "alice-pw", example.c2s_addr())
        .expect("alice connects");
    let mut bob =
        Client::connect("bob@partner.test", "bob-pw", partner.c2s_addr()).expect("bob connects");
    let t_clients = t0.elapsed();
    eprintln!(
        "startup: dnsmasq {t_dns:?}, two prosody {:?}, two clients {:?}",
        t_prosody - t_dns,
        t_clients - t_prosody
    );

    // Messages both ways.
    alice
        .send_message("bob@partner.test", "hello bob")
        .expect("send");
    if let Err(e) = bob.expect_message("alice@example.com", "hello bob", T) {
        panic!("{e:#}\n{}", diag(&[&example, &partner]));
    }
    eprintln!("first federated message after {:?}", t0.elapsed());
    bob.send_message("alice@example.com", "hello alice")
        .expect("send");
    alice
        .expect_message("bob@partner.test", "hello alice", T)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", diag(&[&example, &partner])));

    // Presence subscription both ways.
    alice
        .send_presence(Some("bob@partner.test"), Some("subscribe"), None)
        .expect("subscribe");
    bob.expect_presence("alice@example.com", Some("subscribe"), T)
        .expect("bob sees the request");
    bob.send_presence(Some("alice@example.com"), Some("subscribed"), None)
        .expect("approve");
    alice
        .expect_presence("bob@partner.test", Some("subscribed"), T)
        .expect("alice sees the approval");
    alice
        .expect_presence("bob@partner.test", None, T)
        .expect("alice gets bob's presence");
    bob.send_presence(Some("alice@example.com"), Some("subscribe"), None)
        .expect("subscribe back");
    alice
        .expect_presence("bob@partner.test", Some("subscribe"), T)
        .expect("alice sees bob's request");
    alice
        .send_presence(Some("bob@partner.test"), Some("subscribed"), None)
        .expect("approve");
    bob.expect_presence("alice@example.com", Some("subscribed"), T)
        .expect("bob sees the approval");
    assert!(
        wait_subscription(&mut alice, "bob@partner.test", "both"),
        "alice's roster: {:?}",
        alice.roster()
    );
    assert!(
        wait_subscription(&mut bob, "alice@example.com", "both"),
        "bob's roster: {:?}",
        bob.roster()
    );
    // A status change now reaches the subscriber.
    alice
        .send_presence(None, None, Some("busy testing"))
        .expect("presence");
    let p = bob
        .wait_for(T, |ev| {
            matches!(ev, ClientEvent::Presence { from, status: Some(s), .. }
                if from.starts_with("alice@example.com/") && s == "busy testing")
        })
        .expect("client alive");
    assert!(p.is_some(), "status change not seen");

    // A burst keeps its order.
    let t_burst = Instant::now();
    alice.send_burst("bob@partner.test", 300).expect("burst");
    let got = bob
        .collect_messages("alice@example.com", 300, T)
        .expect("burst arrives");
    let want: Vec<String> = (0..300).map(|i| format!("msg-{i}")).collect();
    assert_eq!(got, want);
    eprintln!("300-message burst delivered in {:?}", t_burst.elapsed());

    // MUC across federation: bob (partner.test) joins a room on example.com.
    let room = "lobby@conference.example.com";
    alice.join_muc(room, "alice").expect("alice joins");
    bob.join_muc(room, "bob")
        .unwrap_or_else(|e| panic!("{e:#}\n{}", diag(&[&example, &partner])));
    alice.send_groupchat(room, "hi room").expect("groupchat");
    let got = bob.collect_messages(room, 1, T).expect("bob gets it");
    assert_eq!(got, vec!["hi room".to_owned()]);

    let s2s = example.s2s_show();
    assert!(s2s.contains("partner.test"), "{s2s}");
    eprintln!("total {:?}", t0.elapsed());
}

#[test]
fn prosody_to_ejabberd_via_srv() {
    let t0 = Instant::now();
    let mut pt = ProsodySpec::new(ip(22), "partner.test").user("bob", "bob-pw");
    let dns_ip = ip(54);
    let dns_addr = SocketAddr::from((dns_ip, 53));
    let mut ej = EjabberdSpec::new(ip(31), "partner2.test", dns_addr).user("carol", "carol-pw");
    ej.muc = Some("conference.partner2.test".into());
    let dns = DnsServer::start(
        dns_ip,
        &[
            DnsRecord::xmpp_server("partner.test", "127.0.0.22", pt.s2s_port),
            DnsRecord::xmpp_server("partner2.test", "127.0.0.31", ej.s2s_port),
            DnsRecord::xmpp_server("conference.partner2.test", "127.0.0.31", ej.s2s_port),
        ],
    )
    .expect("dnsmasq");
    pt.dns = Some(dns.addr);
    let t1 = Instant::now();
    let ejabberd = Ejabberd::start(ej).expect("ejabberd");
    let t_ej = t1.elapsed();
    let t2 = Instant::now();
    let partner = Prosody::start(pt).expect("prosody");
    let t_pr = t2.elapsed();
    eprintln!("startup: ejabberd {t_ej:?} (incl. user registration), prosody {t_pr:?}");
    let mut bob = Client::connect("bob@partner.test", "bob-pw", partner.c2s_addr()).expect("bob");
    let mut carol = Client::connect("carol@partner2.test", "carol-pw", ejabberd.c2s_addr())
        .unwrap_or_else(|e| panic!("carol: {e:#}\n{}", ejabberd.log_tail(40)));

    let diag = |ejabberd: &Ejabberd, partner: &Prosody| {
        format!(
            "==== ejabberd ====\n{}\n{}\n==== prosody ====\n{}\n{}",
            ejabberd.s2s_show(),
            ejabberd.log_tail(60),
            partner.s2s_show(),
            partner.log_tail(60)
        )
    };
    bob.send_message("carol@partner2.test", "hi carol")
        .expect("send");
    if let Err(e) = carol.expect_message("bob@partner.test", "hi carol", T) {
        panic!("{e:#}\n{}", diag(&ejabberd, &partner));
    }
    carol
        .send_message("bob@partner.test", "hi bob")
        .expect("send");
    if let Err(e) = bob.expect_message("carol@partner2.test", "hi bob", T) {
        panic!("{e:#}\n{}", diag(&ejabberd, &partner));
    }
    eprintln!("messages both ways after {:?}", t0.elapsed());

    // Subscription from the Prosody side, approved on ejabberd.
    bob.send_presence(Some("carol@partner2.test"), Some("subscribe"), None)
        .expect("subscribe");
    carol
        .expect_presence("bob@partner.test", Some("subscribe"), T)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", diag(&ejabberd, &partner)));
    carol
        .send_presence(Some("bob@partner.test"), Some("subscribed"), None)
        .expect("approve");
    bob.expect_presence("carol@partner2.test", Some("subscribed"), T)
        .expect("approval");
    assert!(wait_subscription(&mut bob, "carol@partner2.test", "to"));

    // MUC on ejabberd joined from Prosody.
    let room = "den@conference.partner2.test";
    carol.join_muc(room, "carol").expect("carol joins");
    bob.join_muc(room, "bob")
        .unwrap_or_else(|e| panic!("{e:#}\n{}", diag(&ejabberd, &partner)));
    carol.send_groupchat(room, "welcome").expect("groupchat");
    assert_eq!(
        bob.collect_messages(room, 1, T).expect("groupchat arrives"),
        vec!["welcome".to_owned()]
    );
    eprintln!("total {:?}", t0.elapsed());
}

#[test]
fn route_plugin_sends_all_s2s_to_one_address() {
    // partner.test has no DNS entry anywhere that example.com can see:
    // example.com's libunbound points at a dead port. Its s2s is routed by
    // mod_causeway_route to a relay in front of partner.test's s2s port, so
    // the relay proves where the connections went.
    let mut pt = ProsodySpec::new(ip(23), "partner.test").user("bob", "bob-pw");
    // (alice is created on the running server, through prosodyctl shell)
    let mut ex = ProsodySpec::new(ip(12), "example.com");
    let relay = Relay::start(
        SocketAddr::from((ip(23), 0)),
        SocketAddr::from((ip(23), pt.s2s_port)),
    )
    .expect("relay");
    ex.route_s2s_to = Some(relay.addr());
    ex.dns = None;
    // partner.test resolves example.com (to verify dialback and to answer).
    let dns = DnsServer::start(
        ip(55),
        &[DnsRecord::xmpp_server(
            "example.com",
            "127.0.0.12",
            ex.s2s_port,
        )],
    )
    .expect("dnsmasq");
    pt.dns = Some(dns.addr);
    let example = Prosody::start(ex).expect("example.com");
    let partner = Prosody::start(pt).expect("partner.test");
    example.add_user("alice", "alice-pw").expect("user:create");
    assert!(
        example
            .log_tail(400)
            .contains("Routing all outgoing s2s to"),
        "plugin not loaded:\n{}",
        example.log_tail(100)
    );
    let mut alice =
        Client::connect("alice@example.com", "alice-pw", example.c2s_addr()).expect("alice");
    let mut bob = Client::connect("bob@partner.test", "bob-pw", partner.c2s_addr()).expect("bob");
    alice
        .send_message("bob@partner.test", "routed hello")
        .expect("send");
    bob.expect_message("alice@example.com", "routed hello", T)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", diag(&[&example, &partner])));
    bob.send_message("alice@example.com", "routed reply")
        .expect("send");
    alice
        .expect_message("bob@partner.test", "routed reply", T)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", diag(&[&example, &partner])));
    assert!(
        relay.total_accepted() >= 1,
        "nothing went through the relay"
    );
    assert!(relay.bytes_forwarded() > 0);
    let q = dns.log_tail(200);
    assert!(
        !q.contains("partner.test"),
        "partner.test was looked up:\n{q}"
    );
}

#[test]
fn relay_forwards_and_cuts() {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    // An echo server.
    let listener = TcpListener::bind((ip(41), 0)).expect("bind");
    let target = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { break };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let relay = Relay::start(SocketAddr::from((ip(41), 0)), target).expect("relay");
    let mut a = TcpStream::connect(relay.addr()).expect("connect");
    let mut b = TcpStream::connect(relay.addr()).expect("connect");
    a.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    b.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    a.write_all(b"ping").expect("write");
    let mut buf = [0u8; 4];
    a.read_exact(&mut buf).expect("echo");
    assert_eq!(&buf, b"ping");
    b.write_all(b"pong").expect("write");
    b.read_exact(&mut buf).expect("echo");
    assert_eq!(&buf, b"pong");
    assert!(relay.wait_connections(2, Duration::from_secs(2)));
    assert_eq!(relay.total_accepted(), 2);
    // (counted after each write, so possibly just after the echo arrived)
    assert!(causeway_testkit::wait_until(Duration::from_secs(2), || {
        relay.bytes_forwarded() == 16
    }));

    // Pause: nothing passes, the connection stays open.
    relay.set_paused(true);
    a.write_all(b"held").expect("write");
    a.set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    assert!(a.read(&mut buf).is_err(), "data passed a paused relay");
    relay.set_paused(false);
    a.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    a.read_exact(&mut buf).expect("released");
    assert_eq!(&buf, b"held");

    // Cut: both clients see the connection die.
    assert_eq!(relay.cut_all(), 2);
    for s in [&mut a, &mut b] {
        let r = s.read(&mut buf);
        assert!(matches!(r, Ok(0) | Err(_)), "still open: {r:?}");
    }
    assert_eq!(relay.connections(), 0);

    // Refusing: new connections are reset at once.
    relay.set_refusing(true);
    let mut c = TcpStream::connect(relay.addr()).expect("tcp accept still happens");
    c.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let _ = c.write_all(b"x");
    assert!(matches!(c.read(&mut buf), Ok(0) | Err(_)));
    relay.set_refusing(false);

    // And it works again afterwards.
    let mut d = TcpStream::connect(relay.addr()).expect("connect");
    d.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    d.write_all(b"back").expect("write");
    d.read_exact(&mut buf).expect("echo");
    assert_eq!(&buf, b"back");
}

#[test]
fn ejabberd_dns_view_sends_all_s2s_to_one_address() {
    // The "internal ejabberd" recipe: its Erlang resolver sees a DNS view in
    // which every name is the gateway's address and no SRV record exists, and
    // `outgoing_s2s_port` is the gateway's port. A relay in front of
    // partner.test stands in for core.
    let mut pt = ProsodySpec::new(ip(24), "partner.test").user("bob", "bob-pw");
    let relay = Relay::start(
        SocketAddr::from((ip(24), 0)),
        SocketAddr::from((ip(24), pt.s2s_port)),
    )
    .expect("relay");
    let view = DnsServer::start(ip(56), &[DnsRecord::Wildcard { ip: ip(24) }]).expect("view");
    let mut ej = EjabberdSpec::new(ip(32), "partner2.test", view.addr).user("carol", "carol-pw");
    ej.outgoing_s2s_port = Some(relay.addr().port());
    // partner.test's own view of the world: SRV for partner2.test.
    let dns = DnsServer::start(
        ip(57),
        &[DnsRecord::xmpp_server(
            "partner2.test",
            "127.0.0.32",
            ej.s2s_port,
        )],
    )
    .expect("dnsmasq");
    pt.dns = Some(dns.addr);
    let ejabberd = Ejabberd::start(ej).expect("ejabberd");
    let partner = Prosody::start(pt).expect("prosody");
    let mut bob = Client::connect("bob@partner.test", "bob-pw", partner.c2s_addr()).expect("bob");
    let mut carol =
        Client::connect("carol@partner2.test", "carol-pw", ejabberd.c2s_addr()).expect("carol");
    let diag = || {
        format!(
            "==== ejabberd ====\n{}\n==== prosody ====\n{}\n{}\n==== view ====\n{}",
            ejabberd.log_tail(60),
            partner.s2s_show(),
            partner.log_tail(60),
            view.log_tail(20)
        )
    };
    carol
        .send_message("bob@partner.test", "through the view")
        .expect("send");
    bob.expect_message("carol@partner2.test", "through the view", T)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", diag()));
    bob.send_message("carol@partner2.test", "and back")
        .expect("send");
    carol
        .expect_message("bob@partner.test", "and back", T)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", diag()));
    assert!(
        relay.total_accepted() >= 1,
        "nothing went through the relay"
    );
    let q = view.log_tail(100);
    assert!(q.contains("partner.test is 127.0.0.24"), "{q}");
}
