//! The listener plumbing both transports share: bounds on request heads
//! and HTTP/2 (`Limits` and the constants here), the HTTP listener's accept
//! loop (TCP_NODELAY, a first-bytes deadline, the TLS handshake, graceful
//! drain) and the gRPC listener's TLS handshakes, both with the reloadable
//! `TlsConfig`. gRPC's tonic server takes the same limits in `server.rs`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use futures_util::Stream;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use crate::tls::{PeerSans, TlsConfig, client_sans};

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

/// The next accepted connection, with TCP_NODELAY (small answers must not
/// wait for Nagle's algorithm); `None` after an accept error (out of file
/// descriptors and the like), after a short back-off so the loop does not
/// spin.
async fn accept(listener: &TcpListener, which: &'static str) -> Option<TcpStream> {
    match listener.accept().await {
        Ok((stream, _)) => {
            let _ = stream.set_nodelay(true);
            Some(stream)
        }
        Err(e) => {
            tracing::warn!(listener = which, error = %e, "accept failed");
            tokio::time::sleep(Duration::from_millis(50)).await;
            None
        }
    }
}

/// The TLS handshake, bounded by `HEADER_READ_TIMEOUT` so a client that
/// never finishes it cannot hold a connection.
async fn handshake(stream: TcpStream, acceptor: &TlsAcceptor) -> Option<TlsStream<TcpStream>> {
    match tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "tls handshake failed");
            None
        }
        Err(_) => None,
    }
}

/// The gRPC listener's connections over TLS, handshaken here with the
/// configuration current at accept time (a reload applies from the next
/// connection on). Ends once `stop` is cancelled and the handshakes under
/// way are over.
pub fn grpc_tls_incoming(
    listener: TcpListener,
    tls: Arc<TlsConfig>,
    stop: CancellationToken,
) -> impl Stream<Item = Result<TlsStream<TcpStream>, std::io::Error>> {
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                _ = stop.cancelled() => break,
                stream = accept(&listener, "grpc") => stream,
            };
            let Some(stream) = stream else {
                continue;
            };
            let acceptor = tls.grpc_acceptor();
            let tx = tx.clone();
            tokio::spawn(async move {
                if let Some(stream) = handshake(stream, &acceptor).await {
                    let _ = tx.send(Ok(stream)).await;
                }
            });
        }
    });
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Serves `app` on `listener` (over TLS when an acceptor is given) until
/// `stop` is cancelled, then lets open requests finish for at most `drain`.
/// Request heads are bounded in size and time so a slow or huge request
/// cannot pin a connection; so is the TLS handshake.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<TlsConfig>>,
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
            stream = accept(&listener, "http") => stream,
        };
        let Some(stream) = stream else {
            continue;
        };
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let app = app.clone();
        // The configuration current now: a reload applies from the next
        // connection on.
        let tls = tls.as_ref().map(|tls| tls.http_acceptor());
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
            let Some(stream) = handshake(stream, &tls).await else {
                return;
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
