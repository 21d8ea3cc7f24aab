//! Certificate-based s2s peer authentication end to end: a real TLS
//! handshake over an in-memory duplex where the server requests a client
//! certificate, the client presents one, and each side then verifies the
//! other's chain with `PeerTrust` and its names with `cert_matches_domain`.

use std::sync::Arc;

use causeway_pki::{
    cert_matches_domain, generate_ca, issue, issue_with_eku, issue_xmpp_addr, make_crl,
    s2s_client_config_dialback, s2s_client_config_presenting,
    s2s_server_config_requesting_client_cert, CertError, CertPair, PeerTrust, Usage,
    ALPN_XMPP_SERVER,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn chain(pair: &CertPair) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pair.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("certs")
}

fn key(pair: &CertPair) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_slice(pair.key_pem.as_bytes()).expect("key")
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// What each side saw after the handshake.
struct Seen {
    /// The client's chain, as the server (receiving peer) saw it.
    client_chain: Option<Vec<CertificateDer<'static>>>,
    /// The server's chain, as the client (initiating peer) saw it.
    server_chain: Option<Vec<CertificateDer<'static>>>,
    server_alpn: Option<Vec<u8>>,
    client_alpn: Option<Vec<u8>>,
}

async fn handshake(
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
    sni: &str,
) -> Result<Seen, String> {
    let (c_io, s_io) = tokio::io::duplex(64 * 1024);
    let acceptor = tokio_rustls::TlsAcceptor::from(server);
    let connector = tokio_rustls::TlsConnector::from(client);
    let name = ServerName::try_from(sni.to_string()).map_err(|e| e.to_string())?;
    let server_task = tokio::spawn(async move {
        let mut tls = acceptor
            .accept(s_io)
            .await
            .map_err(|e| format!("server: {e}"))?;
        let mut buf = [0u8; 8];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        tls.write_all(b"<stream>")
            .await
            .map_err(|e| e.to_string())?;
        tls.flush().await.map_err(|e| e.to_string())?;
        let conn = tls.get_ref().1;
        Ok::<_, String>((
            conn.peer_certificates().map(<[_]>::to_vec),
            conn.alpn_protocol().map(<[u8]>::to_vec),
        ))
    });
    let client_side = async {
        let mut tls = connector
            .connect(name, c_io)
            .await
            .map_err(|e| format!("client: {e}"))?;
        tls.write_all(b"<stream>")
            .await
            .map_err(|e| e.to_string())?;
        tls.flush().await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 8];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        let conn = tls.get_ref().1;
        Ok::<_, String>((
            conn.peer_certificates().map(<[_]>::to_vec),
            conn.alpn_protocol().map(<[u8]>::to_vec),
        ))
    };
    let client_result = client_side.await;
    let server_result = server_task.await.map_err(|e| e.to_string())?;
    let (client_chain, server_alpn) = server_result?;
    let (server_chain, client_alpn) = client_result?;
    Ok(Seen {
        client_chain,
        server_chain,
        server_alpn,
        client_alpn,
    })
}

/// Two federating domains under one federation CA.
struct Lab {
    ca: CertPair,
    receiver: CertPair,
    initiator: CertPair,
    trust: PeerTrust,
}

fn lab() -> Lab {
    let ca = generate_ca("Federation CA").expect("ca");
    let receiver = issue(&ca, &["receiver.test"], Usage::Server, 30).expect("receiver");
    let initiator = issue(
        &ca,
        &["initiator.test", "*.initiator.test"],
        Usage::ServerAndClient,
        30,
    )
    .expect("initiator");
    let trust = PeerTrust::from_pem(ca.cert_pem.as_bytes(), Vec::new()).expect("trust");
    Lab {
        ca,
        receiver,
        initiator,
        trust,
    }
}

#[tokio::test]
async fn server_requests_client_presents_both_verify() {
    let lab = lab();
    for alpn in [true, false] {
        let server = s2s_server_config_requesting_client_cert(
            chain(&lab.receiver),
            key(&lab.receiver),
            alpn,
        )
        .expect("server config");
        let client = s2s_client_config_presenting(chain(&lab.initiator), key(&lab.initiator), alpn)
            .expect("client config");
        let seen = handshake(server, client, "receiver.test")
            .await
            .expect("handshake");

        // The receiving server authenticates the initiator (SASL EXTERNAL).
        let peer = seen.client_chain.expect("client certificate received");
        assert_eq!(peer, chain(&lab.initiator));
        assert_eq!(lab.trust.verify_chain(&peer, true, now()), Ok(()));
        assert!(cert_matches_domain(&peer[0], "initiator.test"));
        assert!(cert_matches_domain(&peer[0], "muc.initiator.test"));
        assert!(!cert_matches_domain(&peer[0], "receiver.test"));

        // The initiator checks the receiver (serverAuth required).
        let srv = seen.server_chain.expect("server certificate");
        assert_eq!(lab.trust.verify_chain(&srv, false, now()), Ok(()));
        assert!(cert_matches_domain(&srv[0], "receiver.test"));

        let expected = alpn.then(|| ALPN_XMPP_SERVER.to_vec());
        assert_eq!(seen.server_alpn, expected);
        assert_eq!(seen.client_alpn, expected);
    }
}

#[tokio::test]
async fn client_without_certificate_still_connects() {
    let lab = lab();
    let server =
        s2s_server_config_requesting_client_cert(chain(&lab.receiver), key(&lab.receiver), false)
            .expect("server config");
    let client = s2s_client_config_dialback().expect("client config");
    let seen = handshake(server, client, "receiver.test")
        .await
        .expect("handshake without client cert");
    // No certificate: the s2s layer falls back to dialback.
    let peer = seen.client_chain.unwrap_or_default();
    assert!(peer.is_empty());
    assert_eq!(
        lab.trust.verify_chain(&peer, true, now()),
        Err(CertError::NoCertificate)
    );
}

#[tokio::test]
async fn untrusted_revoked_and_client_only_certificates() {
    let lab = lab();
    let server = || {
        s2s_server_config_requesting_client_cert(chain(&lab.receiver), key(&lab.receiver), true)
            .expect("server config")
    };

    // Another CA: the handshake succeeds, verification says UnknownIssuer.
    let other = generate_ca("Other CA").expect("other");
    let stranger = issue(&other, &["initiator.test"], Usage::ServerAndClient, 30).expect("s");
    let client = s2s_client_config_presenting(chain(&stranger), key(&stranger), true)
        .expect("client config");
    let seen = handshake(server(), client, "receiver.test")
        .await
        .expect("handshake");
    let peer = seen.client_chain.expect("cert");
    assert_eq!(
        lab.trust.verify_chain(&peer, true, now()),
        Err(CertError::UnknownIssuer)
    );
    // It still names the domain: names alone are not authentication.
    assert!(cert_matches_domain(&peer[0], "initiator.test"));

    // A revoked initiator certificate, with and without the CRL.
    let crl = make_crl(&lab.ca, &[&lab.initiator.cert_pem]).expect("crl");
    let with_crl = PeerTrust::from_pem(lab.ca.cert_pem.as_bytes(), vec![crl]).expect("trust");
    let client = s2s_client_config_presenting(chain(&lab.initiator), key(&lab.initiator), true)
        .expect("client config");
    let seen = handshake(server(), client, "receiver.test")
        .await
        .expect("handshake");
    let peer = seen.client_chain.expect("cert");
    assert_eq!(
        with_crl.verify_chain(&peer, true, now()),
        Err(CertError::Revoked)
    );
    assert_eq!(lab.trust.verify_chain(&peer, true, now()), Ok(()));

    // serverAuth-only (public CA certificates since 2026) as initiator: OK.
    let server_only = issue_with_eku(&lab.ca, &["initiator.test"], true, false, 30).expect("so");
    let client = s2s_client_config_presenting(chain(&server_only), key(&server_only), true)
        .expect("client config");
    let seen = handshake(server(), client, "receiver.test")
        .await
        .expect("handshake");
    let peer = seen.client_chain.expect("cert");
    assert_eq!(lab.trust.verify_chain(&peer, true, now()), Ok(()));

    // A clientAuth-only certificate is fine from an initiator, but not from
    // a receiving server.
    let client_only = issue_with_eku(&lab.ca, &["receiver.test"], false, true, 30).expect("co");
    assert_eq!(
        lab.trust.verify_chain(&chain(&client_only), true, now()),
        Ok(())
    );
    let server =
        s2s_server_config_requesting_client_cert(chain(&client_only), key(&client_only), false)
            .expect("server config");
    let client = s2s_client_config_presenting(chain(&lab.initiator), key(&lab.initiator), false)
        .expect("client config");
    let seen = handshake(server, client, "receiver.test")
        .await
        .expect("handshake");
    let srv = seen.server_chain.expect("server chain");
    assert_eq!(
        lab.trust.verify_chain(&srv, false, now()),
        Err(CertError::BadUsage)
    );
}

#[tokio::test]
async fn xmpp_addr_certificate_authenticates_over_tls() {
    let lab = lab();
    let xa = issue_xmpp_addr(&lab.ca, "xa.test", 30).expect("xmpp addr leaf");
    let server =
        s2s_server_config_requesting_client_cert(chain(&lab.receiver), key(&lab.receiver), false)
            .expect("server config");
    let client = s2s_client_config_presenting(chain(&xa), key(&xa), false).expect("client");
    let seen = handshake(server, client, "receiver.test")
        .await
        .expect("handshake");
    let peer = seen.client_chain.expect("cert");
    assert_eq!(lab.trust.verify_chain(&peer, true, now()), Ok(()));
    assert!(cert_matches_domain(&peer[0], "xa.test"));
    assert!(!cert_matches_domain(&peer[0], "sub.xa.test"));
}
