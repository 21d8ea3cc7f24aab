//! The HTTP listener: one request per connection, answered from [`Routes`].
//!
//! | path | 200 | 503 |
//! |---|---|---|
//! | `/metrics` | Prometheus text (0.0.4) | - |
//! | `/healthz` | `ok`: every registered loop turns | `unhealthy` and the stuck loops |
//! | `/readyz` | `ready`: the daemon is doing its job | `not ready` and why |
//!
//! Other paths get 404, other methods than GET and HEAD 405. The listener is meant for
//! loopback or a management network, but its bounds hold anyway: a request head of at most
//! [`Limits::max_request`] bytes arriving within [`Limits::read`], a whole exchange within
//! [`Limits::total`], and at most [`Limits::connections`] connections served at once (more wait
//! in the kernel's accept queue).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::health::{Heartbeats, Verdict};

/// The Content-Type of the Prometheus text format.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

/// What the listener answers with.
pub struct Routes {
    /// The Prometheus text of `/metrics`, rendered at each scrape.
    pub metrics: Box<dyn Fn() -> String + Send + Sync>,
    /// The loops `/healthz` checks.
    pub health: Arc<Heartbeats>,
    /// The readiness of `/readyz`, judged at each request.
    pub ready: Box<dyn Fn() -> Verdict + Send + Sync>,
}

/// Bounds on what one client may cost.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request head (request line and headers), in bytes (hyper's minimum is 8192).
    pub max_request: usize,
    /// Time a client has to send its request head.
    pub read: Duration,
    /// Time the whole exchange may take, reading the response included.
    pub total: Duration,
    /// Connections served at once.
    pub connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_request: 8192,
            read: Duration::from_secs(5),
            total: Duration::from_secs(15),
            connections: 32,
        }
    }
}

/// Bind `listen`; errors name the address.
pub async fn bind(listen: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(listen)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {listen}: {e}")))
}

/// Serve `routes` on `listener` in a task of its own, until the process ends or the returned
/// handle is aborted.
pub fn spawn(
    listener: TcpListener,
    routes: Arc<Routes>,
    limits: Limits,
) -> tokio::task::JoinHandle<()> {
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.connections));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::debug!(error = %e, "http accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let routes = routes.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let response = answer(&routes, req.method(), req.uri().path());
                    async move { Ok::<_, Infallible>(response) }
                });
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder
                    .timer(TokioTimer::new())
                    .header_read_timeout(limits.read)
                    .max_buf_size(limits.max_request.max(8192))
                    .keep_alive(false);
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                match tokio::time::timeout(limits.total, conn).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::debug!(error = %e, "http request failed"),
                    Err(_) => tracing::debug!("http exchange timed out"),
                }
                drop(permit);
            });
        }
    })
}

/// The response to `method` on `path`.
fn answer(routes: &Routes, method: &Method, path: &str) -> Response<Full<Bytes>> {
    if !matches!(path, "/metrics" | "/healthz" | "/readyz") {
        return text(
            StatusCode::NOT_FOUND,
            TEXT,
            "not found; try /metrics, /healthz or /readyz\n".into(),
        );
    }
    if method != Method::GET && method != Method::HEAD {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            "GET or HEAD only\n".into(),
        );
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match path {
        "/metrics" => text(StatusCode::OK, METRICS_CONTENT_TYPE, (routes.metrics)()),
        "/healthz" => verdict(&routes.health.check(Instant::now()), "ok", "unhealthy"),
        _ => verdict(&(routes.ready)(), "ready", "not ready"),
    }
}

fn verdict(v: &Verdict, ok_word: &str, not_word: &str) -> Response<Full<Bytes>> {
    let status = if v.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    text(status, TEXT, v.render(ok_word, not_word))
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    async fn request(addr: SocketAddr, req: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(req).await.expect("write");
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    async fn start(limits: Limits, ready: Arc<AtomicBool>) -> (SocketAddr, Arc<Heartbeats>) {
        let listener = bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let health = Heartbeats::new();
        let routes = Routes {
            metrics: Box::new(|| "up 1\n".into()),
            health: health.clone(),
            ready: Box::new(move || {
                if ready.load(Ordering::Relaxed) {
                    Verdict::ok()
                } else {
                    Verdict::from_reasons(vec!["no core is connected".into()])
                }
            }),
        };
        spawn(listener, Arc::new(routes), limits);
        (addr, health)
    }

    #[tokio::test]
    async fn answers_metrics_health_and_readiness() {
        let ready = Arc::new(AtomicBool::new(false));
        let (addr, _health) = start(Limits::default(), ready.clone()).await;
        let ok = request(addr, b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.to_ascii_lowercase()
                .contains(&format!("content-type: {METRICS_CONTENT_TYPE}\r\n")),
            "{ok}"
        );
        assert!(ok.ends_with("\r\n\r\nup 1\n"), "{ok}");
        let head = request(addr, b"HEAD /metrics HTTP/1.1\r\nHost: t\r\n\r\n").await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.ends_with("\r\n\r\n"), "HEAD has no body: {head}");

        let not_ready = request(addr, b"GET /readyz HTTP/1.1\r\nHost: t\r\n\r\n").await;
        assert!(
            not_ready.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{not_ready}"
        );
        assert!(
            not_ready.ends_with("\r\n\r\nnot ready\n- no core is connected\n"),
            "{not_ready}"
        );
        ready.store(true, Ordering::Relaxed);
        let now_ready = request(addr, b"GET /readyz?verbose HTTP/1.0\r\n\r\n").await;
        assert!(now_ready.starts_with("HTTP/1.0 200 OK\r\n"), "{now_ready}");
        assert!(now_ready.ends_with("\r\n\r\nready\n"), "{now_ready}");
        let healthy = request(addr, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n").await;
        assert!(healthy.ends_with("\r\n\r\nok\n"), "{healthy}");

        let nf = request(addr, b"GET /nope HTTP/1.1\r\nHost: t\r\n\r\n").await;
        assert!(nf.starts_with("HTTP/1.1 404 "), "{nf}");
        let post = request(addr, b"POST /readyz HTTP/1.1\r\nHost: t\r\n\r\n").await;
        assert!(post.starts_with("HTTP/1.1 405 "), "{post}");
        assert!(
            post.to_ascii_lowercase().contains("allow: get, head\r\n"),
            "{post}"
        );
        let bad = request(addr, b"BLAH\r\n\r\n").await;
        assert!(bad.starts_with("HTTP/1.1 400 "), "{bad}");
    }

    #[tokio::test]
    async fn a_stuck_loop_makes_healthz_fail() {
        let listener = bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let health = Heartbeats::with_grace(Duration::ZERO);
        let beat = health.register("probe", Duration::from_millis(20));
        let routes = Routes {
            metrics: Box::new(String::new),
            health: health.clone(),
            ready: Box::new(Verdict::ok),
        };
        spawn(listener, Arc::new(routes), Limits::default());
        let fresh = request(addr, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n").await;
        assert!(fresh.starts_with("HTTP/1.1 200 OK\r\n"), "{fresh}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let stuck = request(addr, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n").await;
        assert!(stuck.starts_with("HTTP/1.1 503 "), "{stuck}");
        assert!(
            stuck.contains("\r\n\r\nunhealthy\n- the probe loop has not turned"),
            "{stuck}"
        );
        beat.beat();
        let again = request(addr, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n").await;
        assert!(again.starts_with("HTTP/1.1 200 OK\r\n"), "{again}");
    }

    #[tokio::test]
    async fn a_silent_client_is_closed_after_the_read_deadline_and_others_are_served() {
        let limits = Limits {
            read: Duration::from_millis(300),
            total: Duration::from_secs(2),
            connections: 2,
            ..Limits::default()
        };
        let (addr, _) = start(limits, Arc::new(AtomicBool::new(true))).await;
        let started = Instant::now();
        let mut silent = TcpStream::connect(addr).await.expect("connect");
        let mut slow = TcpStream::connect(addr).await.expect("connect");
        slow.write_all(b"GET /metr").await.expect("write");
        // Both slots are taken: a third client waits until the deadline frees one.
        let served = request(addr, b"GET /readyz HTTP/1.1\r\nHost: t\r\n\r\n").await;
        assert!(served.ends_with("ready\n"), "{served}");
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut rest))
            .await
            .expect("the silent client is closed")
            .unwrap_or(0);
        let _ = n;
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(300), "{waited:?}");
        assert!(waited < Duration::from_secs(5), "{waited:?}");
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut rest))
            .await
            .expect("the slow client is closed")
            .ok();
    }

    #[tokio::test]
    async fn an_oversized_head_is_refused() {
        let (addr, _) = start(Limits::default(), Arc::new(AtomicBool::new(true))).await;
        let mut req = b"GET /metrics HTTP/1.1\r\nHost: t\r\nX-Big: ".to_vec();
        req.extend(std::iter::repeat_n(b'a', 64 * 1024));
        req.extend_from_slice(b"\r\n\r\n");
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let _ = s.write_all(&req).await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
            .await
            .expect("closed");
        let out = String::from_utf8_lossy(&out);
        assert!(
            out.is_empty() || out.starts_with("HTTP/1.1 431"),
            "an oversized head gets 431 or a close, not metrics: {out}"
        );
    }
}
