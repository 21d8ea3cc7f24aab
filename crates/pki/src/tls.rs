//! rustls configurations for XMPP server-to-server links.
//!
//! Every configuration is built with the ring provider passed explicitly, so
//! nothing depends on (or installs) the process-wide default provider.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme,
};

use crate::PkiError;

/// TLS versions used on s2s links.
static VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// ALPN protocol id of XMPP server-to-server over direct TLS (XEP-0368).
pub const ALPN_XMPP_SERVER: &[u8] = b"xmpp-server";

fn alpn_protocols(alpn: bool) -> Vec<Vec<u8>> {
    if alpn {
        vec![ALPN_XMPP_SERVER.to_vec()]
    } else {
        Vec::new()
    }
}

fn tls_err(e: impl std::fmt::Display) -> PkiError {
    PkiError::Tls(e.to_string())
}

/// The ring crypto provider, as an `Arc` for the rustls builders.
pub fn ring_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// rustls server configuration for XMPP s2s (STARTTLS or direct TLS):
/// TLS 1.2 and 1.3, ring provider, the given chain (leaf first) and key, no
/// ALPN, and no client certificate requested (peer domains are
/// authenticated by dialback).
///
/// Errors if the key does not match the certificate or is unsupported.
pub fn s2s_server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, PkiError> {
    if certs.is_empty() {
        return Err(PkiError::Tls("empty certificate chain".into()));
    }
    let config = ServerConfig::builder_with_provider(ring_provider())
        .with_protocol_versions(VERSIONS)
        .map_err(tls_err)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(tls_err)?;
    Ok(Arc::new(config))
}

/// Requests (without requiring) a client certificate and accepts any chain,
/// but verifies the handshake signature (CertificateVerify) with the
/// provider's algorithms, so the client holds the key of the leaf it
/// presented. The chain is judged later by [`crate::PeerTrust`].
#[derive(Debug)]
struct AcceptAnyClientCert {
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for AcceptAnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No CA hints: peers send whatever certificate they have.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        tracing::debug!(
            cert_len = end_entity.len(),
            intermediates = intermediates.len(),
            "s2s: client certificate received (verified after the handshake)"
        );
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// rustls server configuration for XMPP s2s that REQUESTS a client
/// certificate (not mandatory: peers without one still connect, for
/// dialback) and accepts any chain whose handshake signature verifies. The
/// chain is verified after the handshake with [`crate::PeerTrust`] on
/// `ServerConnection::peer_certificates()` (`None` when the peer sent no
/// certificate). Same TLS versions and provider as [`s2s_server_config`];
/// offers ALPN `xmpp-server` when `alpn` is true (XEP-0368 direct TLS).
///
/// Errors if `certs` is empty or the key does not match the certificate.
pub fn s2s_server_config_requesting_client_cert(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    alpn: bool,
) -> Result<Arc<ServerConfig>, PkiError> {
    if certs.is_empty() {
        return Err(PkiError::Tls("empty certificate chain".into()));
    }
    let provider = ring_provider();
    let mut config = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(VERSIONS)
        .map_err(tls_err)?
        .with_client_cert_verifier(Arc::new(AcceptAnyClientCert { provider }))
        .with_single_cert(certs, key)
        .map_err(tls_err)?;
    config.alpn_protocols = alpn_protocols(alpn);
    Ok(Arc::new(config))
}

/// Accepts any server certificate, but verifies handshake signatures with
/// the provider's algorithms, so the peer must hold the private key of the
/// certificate it presents.
#[derive(Debug)]
struct AcceptAnyServerCert {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        tracing::debug!(
            server = ?server_name,
            cert_len = end_entity.len(),
            "s2s: accepting unverified server certificate (dialback authenticates)"
        );
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn dialback_builder(
) -> Result<rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>, PkiError> {
    let provider = ring_provider();
    Ok(ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(VERSIONS)
        .map_err(tls_err)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert { provider })))
}

/// rustls client configuration for XMPP s2s that ACCEPTS ANY server
/// certificate: the peer domain is authenticated by server dialback
/// afterwards (as Prosody does with certificates it cannot verify). The
/// handshake signatures are still verified properly, so the connection is
/// encrypted to whoever holds the presented certificate's key. TLS 1.2 and
/// 1.3, ring provider, SNI enabled, no ALPN, no client certificate.
pub fn s2s_client_config_dialback() -> Result<Arc<ClientConfig>, PkiError> {
    let mut config = dialback_builder()?.with_no_client_auth();
    config.enable_sni = true;
    Ok(Arc::new(config))
}

/// Like [`s2s_client_config_dialback`], but presents `certs`/`key` when the
/// server asks for a client certificate (for peers that offer SASL EXTERNAL
/// or require client certificates).
pub fn s2s_client_config_dialback_with_cert(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ClientConfig>, PkiError> {
    if certs.is_empty() {
        return Err(PkiError::Tls("empty certificate chain".into()));
    }
    let mut config = dialback_builder()?
        .with_client_auth_cert(certs, key)
        .map_err(tls_err)?;
    config.enable_sni = true;
    Ok(Arc::new(config))
}

/// rustls client configuration for XMPP s2s that presents `certs`/`key`
/// when the server asks for a client certificate (for SASL EXTERNAL as the
/// initiating server) and accepts any server chain during the handshake
/// (handshake signatures still verified); check that chain afterwards with
/// [`crate::PeerTrust`] on `ClientConnection::peer_certificates()` (with
/// `is_initiator = false`: the server is the receiving peer). TLS 1.2 and
/// 1.3, ring provider, SNI enabled; ALPN `xmpp-server` when `alpn` is true
/// (XEP-0368 direct TLS).
///
/// Errors if `certs` is empty or the key does not match the certificate.
pub fn s2s_client_config_presenting(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    alpn: bool,
) -> Result<Arc<ClientConfig>, PkiError> {
    if certs.is_empty() {
        return Err(PkiError::Tls("empty certificate chain".into()));
    }
    let mut config = dialback_builder()?
        .with_client_auth_cert(certs, key)
        .map_err(tls_err)?;
    config.enable_sni = true;
    config.alpn_protocols = alpn_protocols(alpn);
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{generate_ca, issue, self_signed, CertPair, Usage};
    use rustls::pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn chain(pair: &CertPair) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(pair.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("certs")
    }

    fn key(pair: &CertPair) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_slice(pair.key_pem.as_bytes()).expect("key")
    }

    /// Handshake over an in-memory duplex, exchange a few bytes both ways,
    /// return the negotiated TLS version and the certificates the client saw.
    async fn handshake(
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
        sni: &str,
    ) -> Result<(rustls::ProtocolVersion, Vec<CertificateDer<'static>>), String> {
        let (c_io, s_io) = tokio::io::duplex(64 * 1024);
        let acceptor = tokio_rustls::TlsAcceptor::from(server);
        let connector = tokio_rustls::TlsConnector::from(client);
        let name = ServerName::try_from(sni.to_string()).map_err(|e| e.to_string())?;
        let server_task = tokio::spawn(async move {
            let mut tls = acceptor.accept(s_io).await.map_err(|e| e.to_string())?;
            let sni = tls.get_ref().1.server_name().map(str::to_string);
            let mut buf = [0u8; 5];
            tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
            tls.write_all(b"<pong/>").await.map_err(|e| e.to_string())?;
            tls.flush().await.map_err(|e| e.to_string())?;
            Ok::<_, String>((buf, sni))
        });
        let mut tls = connector
            .connect(name, c_io)
            .await
            .map_err(|e| format!("client: {e}"))?;
        tls.write_all(b"<ping").await.map_err(|e| e.to_string())?;
        tls.flush().await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 7];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        assert_eq!(&buf, b"<pong/>");
        let (got, server_sni) = server_task
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("server: {e}"))?;
        assert_eq!(&got, b"<ping");
        assert_eq!(server_sni.as_deref(), Some(sni), "SNI sent");
        let conn = tls.get_ref().1;
        let version = conn.protocol_version().ok_or("no version")?;
        let peer = conn
            .peer_certificates()
            .map(|c| c.to_vec())
            .unwrap_or_default();
        Ok((version, peer))
    }

    #[tokio::test]
    async fn dialback_client_accepts_self_signed_server() {
        let ss = self_signed(&["partner.test"], 1).expect("ss");
        let server = s2s_server_config(chain(&ss), key(&ss)).expect("server config");
        let client = s2s_client_config_dialback().expect("client config");
        let (version, peer) = handshake(server, client, "partner.test")
            .await
            .expect("handshake");
        assert_eq!(version, rustls::ProtocolVersion::TLSv1_3);
        assert_eq!(peer, chain(&ss));
    }

    #[tokio::test]
    async fn dialback_client_works_over_tls12_and_with_ca_chain() {
        let ca = generate_ca("Fed CA").expect("ca");
        let leaf = issue(&ca, &["partner.test"], Usage::ServerAndClient, 1).expect("leaf");
        let mut certs = chain(&leaf);
        certs.extend(chain(&ca));
        let server = s2s_server_config(certs.clone(), key(&leaf)).expect("server config");
        // A TLS 1.2-only client against our server.
        let client12 = ClientConfig::builder_with_provider(ring_provider())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .expect("versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert {
                provider: ring_provider(),
            }))
            .with_no_client_auth();
        let (version, peer) = handshake(server.clone(), Arc::new(client12), "partner.test")
            .await
            .expect("tls1.2 handshake");
        assert_eq!(version, rustls::ProtocolVersion::TLSv1_2);
        assert_eq!(peer, certs);

        // The client-cert variant also connects (the server does not ask).
        let client =
            s2s_client_config_dialback_with_cert(chain(&leaf), key(&leaf)).expect("client config");
        handshake(server, client, "partner.test")
            .await
            .expect("handshake with client cert config");
    }

    #[tokio::test]
    async fn webpki_client_verifies_issued_server_cert() {
        // The issued chain is valid for a standard verifier too.
        let ca = generate_ca("Tunnel CA").expect("ca");
        let leaf = issue(&ca, &["edge.dmz.test"], Usage::Server, 1).expect("leaf");
        let server = s2s_server_config(chain(&leaf), key(&leaf)).expect("server config");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(chain(&ca).remove(0)).expect("root");
        let client = ClientConfig::builder_with_provider(ring_provider())
            .with_protocol_versions(VERSIONS)
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let client = Arc::new(client);
        handshake(server.clone(), client.clone(), "edge.dmz.test")
            .await
            .expect("valid name");
        let err = handshake(server, client, "other.dmz.test")
            .await
            .expect_err("wrong name must fail");
        assert!(err.contains("client"), "{err}");
    }

    /// A server that presents one certificate but signs with another key.
    #[derive(Debug)]
    struct MismatchedKey(Arc<rustls::sign::CertifiedKey>);

    impl rustls::server::ResolvesServerCert for MismatchedKey {
        fn resolve(
            &self,
            _hello: rustls::server::ClientHello<'_>,
        ) -> Option<Arc<rustls::sign::CertifiedKey>> {
            Some(self.0.clone())
        }
    }

    #[tokio::test]
    async fn dialback_client_still_checks_handshake_signature() {
        let presented = self_signed(&["victim.test"], 1).expect("presented");
        let other = self_signed(&["attacker.test"], 1).expect("other");
        let signing_key = ring_provider()
            .key_provider
            .load_private_key(key(&other))
            .expect("load key");
        let ck = rustls::sign::CertifiedKey::new(chain(&presented), signing_key);
        for versions in [
            &[&rustls::version::TLS13][..],
            &[&rustls::version::TLS12][..],
        ] {
            let server = ServerConfig::builder_with_provider(ring_provider())
                .with_protocol_versions(versions)
                .expect("versions")
                .with_no_client_auth()
                .with_cert_resolver(Arc::new(MismatchedKey(Arc::new(ck.clone()))));
            let client = s2s_client_config_dialback().expect("client config");
            let err = handshake(Arc::new(server), client, "victim.test")
                .await
                .expect_err("a signature by the wrong key must be rejected");
            assert!(err.starts_with("client:"), "{err}");
            assert!(err.contains("BadSignature"), "{err}");
        }
    }

    /// Handshake where the server requests a client certificate; returns
    /// the client chain the server saw.
    async fn handshake_client_auth(
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
    ) -> Result<
        (
            rustls::ProtocolVersion,
            Option<Vec<CertificateDer<'static>>>,
        ),
        String,
    > {
        let (c_io, s_io) = tokio::io::duplex(64 * 1024);
        let acceptor = tokio_rustls::TlsAcceptor::from(server);
        let connector = tokio_rustls::TlsConnector::from(client);
        let server_task = tokio::spawn(async move {
            let mut tls = acceptor
                .accept(s_io)
                .await
                .map_err(|e| format!("server: {e}"))?;
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf)
                .await
                .map_err(|e| format!("server: {e}"))?;
            let conn = tls.get_ref().1;
            Ok::<_, String>((
                conn.protocol_version().ok_or("no version")?,
                conn.peer_certificates().map(<[_]>::to_vec),
            ))
        });
        let name = ServerName::try_from("receiver.test").map_err(|e| e.to_string())?;
        let client_result = async {
            let mut tls = connector
                .connect(name, c_io)
                .await
                .map_err(|e| format!("client: {e}"))?;
            tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
            tls.flush().await.map_err(|e| e.to_string())?;
            Ok::<_, String>(tls)
        }
        .await;
        // The server's verdict first (a rejected client sees only an alert).
        let server_result = server_task.await.map_err(|e| e.to_string())?;
        let server_result = server_result?;
        drop(client_result?);
        Ok(server_result)
    }

    #[tokio::test]
    async fn requested_client_cert_over_tls12_and_tls13() {
        let ca = generate_ca("Fed CA").expect("ca");
        let srv = issue(&ca, &["receiver.test"], Usage::Server, 1).expect("srv");
        let cli = issue(&ca, &["initiator.test"], Usage::ServerAndClient, 1).expect("cli");
        let server = s2s_server_config_requesting_client_cert(chain(&srv), key(&srv), false)
            .expect("server config");
        // Our presenting client (TLS 1.3 negotiated).
        let client =
            s2s_client_config_presenting(chain(&cli), key(&cli), false).expect("client config");
        let (version, peer) = handshake_client_auth(server.clone(), client)
            .await
            .expect("tls1.3");
        assert_eq!(version, rustls::ProtocolVersion::TLSv1_3);
        assert_eq!(peer, Some(chain(&cli)));
        // A TLS 1.2-only client presenting the same certificate.
        let provider = ring_provider();
        let client12 = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .expect("versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert { provider }))
            .with_client_auth_cert(chain(&cli), key(&cli))
            .expect("client cert");
        let (version, peer) = handshake_client_auth(server.clone(), Arc::new(client12))
            .await
            .expect("tls1.2");
        assert_eq!(version, rustls::ProtocolVersion::TLSv1_2);
        assert_eq!(peer, Some(chain(&cli)));
        // The existing dialback-with-cert client presents it too.
        let client = s2s_client_config_dialback_with_cert(chain(&cli), key(&cli)).expect("client");
        let (_, peer) = handshake_client_auth(server, client)
            .await
            .expect("dialback client");
        assert_eq!(peer, Some(chain(&cli)));
    }

    /// A client that presents one certificate but signs with another key.
    #[derive(Debug)]
    struct MismatchedClientKey(Arc<rustls::sign::CertifiedKey>);

    impl rustls::client::ResolvesClientCert for MismatchedClientKey {
        fn resolve(
            &self,
            _root_hint_subjects: &[&[u8]],
            _sigschemes: &[SignatureScheme],
        ) -> Option<Arc<rustls::sign::CertifiedKey>> {
            Some(self.0.clone())
        }

        fn has_certs(&self) -> bool {
            true
        }
    }

    #[tokio::test]
    async fn requesting_server_still_checks_client_signature() {
        let srv = self_signed(&["receiver.test"], 1).expect("srv");
        let presented = self_signed(&["victim.test"], 1).expect("presented");
        let other = self_signed(&["attacker.test"], 1).expect("other");
        let signing_key = ring_provider()
            .key_provider
            .load_private_key(key(&other))
            .expect("load key");
        let ck = Arc::new(rustls::sign::CertifiedKey::new(
            chain(&presented),
            signing_key,
        ));
        let server = s2s_server_config_requesting_client_cert(chain(&srv), key(&srv), false)
            .expect("server config");
        for versions in [
            &[&rustls::version::TLS13][..],
            &[&rustls::version::TLS12][..],
        ] {
            let provider = ring_provider();
            let client = ClientConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(versions)
                .expect("versions")
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert { provider }))
                .with_client_cert_resolver(Arc::new(MismatchedClientKey(ck.clone())));
            let err = handshake_client_auth(server.clone(), Arc::new(client))
                .await
                .expect_err("a client signature by the wrong key must be rejected");
            assert!(err.contains("server:"), "{err}");
            assert!(err.contains("BadSignature"), "{err}");
        }
    }

    #[test]
    fn client_auth_configs() {
        let a = self_signed(&["a.test"], 1).expect("a");
        let b = self_signed(&["b.test"], 1).expect("b");
        let cfg = s2s_server_config_requesting_client_cert(chain(&a), key(&a), true).expect("cfg");
        assert_eq!(cfg.alpn_protocols, [b"xmpp-server".to_vec()]);
        let cfg = s2s_server_config_requesting_client_cert(chain(&a), key(&a), false).expect("cfg");
        assert!(cfg.alpn_protocols.is_empty());
        assert!(matches!(
            s2s_server_config_requesting_client_cert(chain(&a), key(&b), false),
            Err(PkiError::Tls(_))
        ));
        assert!(matches!(
            s2s_server_config_requesting_client_cert(Vec::new(), key(&a), false),
            Err(PkiError::Tls(_))
        ));
        let cli = s2s_client_config_presenting(chain(&a), key(&a), true).expect("client");
        assert_eq!(cli.alpn_protocols, [b"xmpp-server".to_vec()]);
        assert!(cli.enable_sni);
        assert!(cli.client_auth_cert_resolver.has_certs());
        let cli = s2s_client_config_presenting(chain(&a), key(&a), false).expect("client");
        assert!(cli.alpn_protocols.is_empty());
        assert!(matches!(
            s2s_client_config_presenting(chain(&a), key(&b), false),
            Err(PkiError::Tls(_))
        ));
        assert!(matches!(
            s2s_client_config_presenting(Vec::new(), key(&a), false),
            Err(PkiError::Tls(_))
        ));
    }

    #[test]
    fn server_config_rejects_mismatched_key_and_empty_chain() {
        let a = self_signed(&["a.test"], 1).expect("a");
        let b = self_signed(&["b.test"], 1).expect("b");
        assert!(matches!(
            s2s_server_config(chain(&a), key(&b)),
            Err(PkiError::Tls(_))
        ));
        assert!(matches!(
            s2s_server_config(Vec::new(), key(&a)),
            Err(PkiError::Tls(_))
        ));
        let cfg = s2s_server_config(chain(&a), key(&a)).expect("config");
        assert!(cfg.alpn_protocols.is_empty());
        let client = s2s_client_config_dialback().expect("client");
        assert!(client.enable_sni);
        assert!(client.alpn_protocols.is_empty());
        assert!(!client.client_auth_cert_resolver.has_certs());
    }
}
