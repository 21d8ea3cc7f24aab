//! A TCP connection that may be upgraded to TLS, framed as an XMPP stream.
//!
//! [`XmlConn`] owns the socket and the [`Framer`]; it reads until the framer yields an event and
//! writes whole strings. STARTTLS is an in-place upgrade followed by a stream restart.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use causeway_xmpp::{Event, FrameError, Framer, Limits};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector, TlsStream};

/// Errors on one XML connection.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// The socket failed.
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
    /// The peer sent bytes that are not a valid XMPP stream.
    #[error("bad XML from peer: {0}")]
    Frame(#[from] FrameError),
    /// The peer closed the TCP connection.
    #[error("connection closed by peer")]
    Eof,
    /// The TLS handshake failed.
    #[error("TLS handshake: {0}")]
    Tls(String),
    /// A write made no progress for this long: the peer does not read.
    #[error("write stalled for {0:?} (the peer does not read)")]
    WriteStalled(std::time::Duration),
}

/// Plain TCP or TLS over TCP.
enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// Only while a TLS handshake is in progress (the stream is moved out).
    Upgrading,
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Transport::Upgrading => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Transport::Upgrading => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Transport::Upgrading => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Transport::Upgrading => Poll::Ready(Ok(())),
        }
    }
}

/// What TLS gave a connection, for status views and policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsInfo {
    /// e.g. "TLSv1_3".
    pub version: String,
    /// e.g. "TLS13_AES_256_GCM_SHA384".
    pub cipher: String,
    /// TLS from the first byte (XEP-0368), rather than STARTTLS.
    pub direct: bool,
}

impl std::fmt::Display for TlsInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let how = if self.direct {
            "direct TLS"
        } else {
            "STARTTLS"
        };
        write!(f, "{} {} ({how})", self.version, self.cipher)
    }
}

/// An XMPP stream over one TCP connection.
pub struct XmlConn {
    io: Transport,
    framer: Framer,
    /// The remote socket address.
    pub peer: SocketAddr,
    /// Set once TLS is up.
    pub tls: Option<TlsInfo>,
    /// The certificate chain the peer presented in the TLS handshake (leaf first), if any.
    pub peer_chain: Vec<rustls_pki_types::CertificateDer<'static>>,
    /// A write that makes no progress this long fails with [`ConnError::WriteStalled`].
    write_stall: std::time::Duration,
}

impl XmlConn {
    /// Wrap a connected socket. Sets TCP_NODELAY: stream restarts are latency-bound.
    pub fn new(tcp: TcpStream, limits: Limits) -> io::Result<Self> {
        tcp.set_nodelay(true)?;
        // A vanished host (no FIN, no RST) is found by the kernel in about 30 s even on a
        // stream we only read; a stopped process is found by XEP-0199 pings (outbound.rs).
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(std::time::Duration::from_secs(15))
            .with_interval(std::time::Duration::from_secs(5))
            .with_retries(3);
        socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive)?;
        let peer = tcp.peer_addr()?;
        Ok(Self {
            io: Transport::Plain(tcp),
            framer: Framer::new(limits),
            peer,
            tls: None,
            peer_chain: Vec::new(),
            write_stall: crate::Deadlines::default().write_stall,
        })
    }

    /// Bound every write: one that makes no progress for `stall` fails (the default is
    /// [`crate::Deadlines::default`]'s).
    pub fn set_write_stall(&mut self, stall: std::time::Duration) {
        self.write_stall = stall;
    }

    /// The largest top-level element accepted from now on (e.g. raised once the stream is
    /// authenticated).
    pub fn set_max_stanza_bytes(&mut self, n: usize) {
        self.framer.set_max_stanza_bytes(n);
    }

    /// The next stream event. Cancel-safe: bytes already read stay in the framer.
    pub async fn next_event(&mut self) -> Result<Event, ConnError> {
        loop {
            if let Some(ev) = self.framer.next_event()? {
                return Ok(ev);
            }
            let n = self.io.read_buf(self.framer.buffer_mut()).await?;
            if n == 0 {
                return Err(ConnError::Eof);
            }
        }
    }

    /// Write and flush; fails if the peer stops reading (see [`XmlConn::set_write_stall`]).
    pub async fn send(&mut self, data: &[u8]) -> Result<(), ConnError> {
        self.write(data).await?;
        self.flush().await
    }

    /// Write without flushing (batching); call [`XmlConn::flush`] after. Each partial write
    /// must make progress within the write-stall bound.
    pub async fn write(&mut self, data: &[u8]) -> Result<(), ConnError> {
        let mut rest = data;
        while !rest.is_empty() {
            match tokio::time::timeout(self.write_stall, self.io.write(rest)).await {
                Ok(Ok(0)) => return Err(ConnError::Io(io::ErrorKind::WriteZero.into())),
                Ok(Ok(n)) => rest = &rest[n..],
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => return Err(ConnError::WriteStalled(self.write_stall)),
            }
        }
        Ok(())
    }

    /// Flush buffered writes (within the write-stall bound).
    pub async fn flush(&mut self) -> Result<(), ConnError> {
        match tokio::time::timeout(self.write_stall, self.io.flush()).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(ConnError::WriteStalled(self.write_stall)),
        }
    }

    /// Best-effort close: flush and shut the write side, within
    /// [`crate::deadlines::FINAL_WRITE`].
    pub async fn shutdown(&mut self) {
        let io = &mut self.io;
        let _ = tokio::time::timeout(crate::deadlines::FINAL_WRITE, async move {
            let _ = io.flush().await;
            let _ = io.shutdown().await;
        })
        .await;
    }

    /// Last words: write `data` (a stream error, a closing tag) and shut the write side, all
    /// within [`crate::deadlines::FINAL_WRITE`] whatever the write-stall bound.
    pub async fn send_and_close(&mut self, data: &[u8]) {
        let _ = tokio::time::timeout(crate::deadlines::FINAL_WRITE, self.send(data)).await;
        self.shutdown().await;
    }

    /// Server side of STARTTLS (after `<proceed/>` was sent) or of direct TLS, within
    /// `within` (a handshake that takes longer fails). The stream restarts.
    pub async fn accept_tls(
        &mut self,
        cfg: Arc<rustls::ServerConfig>,
        within: std::time::Duration,
    ) -> Result<(), ConnError> {
        let tcp = self.take_plain()?;
        let tls = tokio::time::timeout(within, TlsAcceptor::from(cfg).accept(tcp))
            .await
            .map_err(|_| ConnError::Tls("handshake timed out".into()))?
            .map_err(|e| ConnError::Tls(e.to_string()))?;
        let (_, session) = tls.get_ref();
        self.tls = Some(tls_info(
            session.protocol_version(),
            session.negotiated_cipher_suite(),
        ));
        self.peer_chain = owned_chain(session.peer_certificates());
        self.io = Transport::Tls(Box::new(TlsStream::Server(tls)));
        self.framer.reset();
        Ok(())
    }

    /// Client side of STARTTLS, after `<proceed/>` was received. The stream restarts.
    pub async fn connect_tls(
        &mut self,
        cfg: Arc<rustls::ClientConfig>,
        server_name: &str,
    ) -> Result<(), ConnError> {
        let name = ServerName::try_from(server_name.to_owned())
            .map_err(|e| ConnError::Tls(format!("server name {server_name:?}: {e}")))?;
        let tcp = self.take_plain()?;
        let tls = TlsConnector::from(cfg)
            .connect(name, tcp)
            .await
            .map_err(|e| ConnError::Tls(e.to_string()))?;
        let (_, session) = tls.get_ref();
        self.tls = Some(tls_info(
            session.protocol_version(),
            session.negotiated_cipher_suite(),
        ));
        self.peer_chain = owned_chain(session.peer_certificates());
        self.io = Transport::Tls(Box::new(TlsStream::Client(tls)));
        self.framer.reset();
        Ok(())
    }

    /// Drop the connection at once, without flushing or waiting for the peer (it is dead).
    pub fn abort(&mut self) {
        self.io = Transport::Upgrading;
    }

    /// Mark the TLS layer as direct TLS (XEP-0368), for status and logs.
    pub fn mark_direct_tls(&mut self) {
        if let Some(t) = self.tls.as_mut() {
            t.direct = true;
        }
    }

    /// Stream restart after SASL success: the next thing is a new stream header.
    pub fn restart(&mut self) {
        self.framer.reset();
    }

    fn take_plain(&mut self) -> Result<TcpStream, ConnError> {
        match std::mem::replace(&mut self.io, Transport::Upgrading) {
            Transport::Plain(tcp) => Ok(tcp),
            other => {
                self.io = other;
                Err(ConnError::Tls("TLS is already active".into()))
            }
        }
    }
}

/// "plaintext", or the TLS version, cipher and how it started: for logs.
pub fn tls_summary(conn: &XmlConn) -> String {
    match &conn.tls {
        Some(t) => t.to_string(),
        None => "plaintext".into(),
    }
}

fn owned_chain(
    chain: Option<&[rustls_pki_types::CertificateDer<'_>]>,
) -> Vec<rustls_pki_types::CertificateDer<'static>> {
    chain
        .unwrap_or_default()
        .iter()
        .map(|c| c.clone().into_owned())
        .collect()
}

fn tls_info(
    version: Option<rustls::ProtocolVersion>,
    suite: Option<rustls::SupportedCipherSuite>,
) -> TlsInfo {
    TlsInfo {
        version: version.map(|v| format!("{v:?}")).unwrap_or_default(),
        cipher: suite
            .map(|s| format!("{:?}", s.suite()))
            .unwrap_or_default(),
        direct: false,
    }
}
