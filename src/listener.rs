//! The listener plumbing both transports share: bounds on request heads
//! and HTTP/2 (`Limits` and the constants here) and the HTTP listener's
//! accept loop, with TCP_NODELAY, a first-bytes deadline, the TLS handshake
//! and graceful drain. gRPC's tonic server takes the same limits in
//! `server.rs`.

use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::tls::{PeerSans, client_sans};

/// Largest request head (request line + headers) accepted.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;
/// A client must send its whole request head within this time.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Bounds on every HTTP and gRPC request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub request_timeout: Duration,
    pub max_concurrent_requests: usize,
    pub http2_max_concurrent_streams: u32,
    /// HTTP/2 keepalive ping interval; zero turns pings off.
    pub http2_keepalive: Duration,
}

/// A peer that leaves a keepalive ping unanswered this long is dropped.
pub const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

impl Limits {
    /// The keepalive ping interval, `None` when pings are off.
    pub fn http2_keepalive_interval(&self) -> Option<Duration> {
        (!self.http2_keepalive.is_zero()).then_some(self.http2_keepalive)
    }
}

/// Serves `app` on `listener` (over TLS when an acceptor is given) until
/// `stop` is cancelled, then lets open requests finish for at most `drain`.
/// Request heads are bounded in size and time so a slow or huge request
/// cannot pin a connection; so is the TLS handshake.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    stop: CancellationToken,
    drain: Duration,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        .keep_alive_interval(limits.http2_keepalive_interval())
        .keep_alive_timeout(HTTP2_KEEPALIVE_TIMEOUT);
    let graceful = GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    // Small answers must not wait for Nagle's algorithm.
                    let _ = stream.set_nodelay(true);
                    stream
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "http accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let app = app.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            // hyper's protocol sniffing has no timeout of its own: a client
            // that connects and says nothing is dropped here.
            let mut first = [0u8; 1];
            if !matches!(
                tokio::time::timeout(HEADER_READ_TIMEOUT, stream.peek(&mut first)).await,
                Ok(Ok(1..))
            ) {
                return;
            }
            let Some(tls) = tls else {
                let service = TowerToHyperService::new(app);
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                let _ = watcher.watch(conn.into_owned()).await;
                return;
            };
            let stream = match tokio::time::timeout(HEADER_READ_TIMEOUT, tls.accept(stream)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "tls handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let sans = PeerSans(
                stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .map(client_sans)
                    .unwrap_or_default(),
            );
            let app = app.layer(axum::Extension(sans));
            let service = TowerToHyperService::new(app);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            let _ = watcher.watch(conn.into_owned()).await;
        });
    }
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(drain) => {
            tracing::warn!("http connections still open after the drain deadline");
        }
    }
}
