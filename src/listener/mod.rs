//! The listener plumbing both transports share: bounds on request heads
//! and HTTP/2 (`Limits` and the constants here), connection admission and
//! the first-bytes deadline ([`gate`]), the HTTP listener's accept loop
//! (TCP_NODELAY, the TLS handshake, graceful drain) and the gRPC listener's
//! incoming connections (plain or TLS, with the reloadable `TlsConfig`),
//! each under the frame [`meter`]; the stream [`budget`] both share.
//! gRPC's tonic server takes the same limits in `server.rs`.

pub mod budget;
pub mod gate;
pub mod meter;

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use futures_util::Stream;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use self::gate::{ConnectionGate, Guarded};
use self::meter::Metered;
use crate::tls::{PeerSans, TlsConfig, client_sans};

/// Bytes a connection must deliver within `HEADER_READ_TIMEOUT`: the
/// HTTP/2 client preface is 24, and a request that stops inside it would
/// otherwise hold its connection for ever.
pub const FIRST_BYTES: usize = 24;

/// Largest request head (request line + headers) accepted.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;
/// A client must send its whole request head within this time.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Bounds on every HTTP and gRPC request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub request_timeout: Duration,
    pub max_concurrent_requests: usize,
    /// gRPC token-service requests one connection may have in flight.
    pub max_requests_per_connection: usize,
    pub http2_max_concurrent_streams: u32,
    /// HTTP/2 keepalive ping interval; zero turns pings off.
    pub http2_keepalive: Duration,
    /// Connections one listener holds at once.
    pub max_connections: usize,
    /// Connections one IP address may hold on one listener.
    pub max_connections_per_peer: usize,
    /// Requests both listeners hold at once (see [`budget`]).
    pub max_streams: usize,
    /// Of `max_streams`, those the open services may hold.
    pub max_open_service_streams: usize,
    /// How long an answer may wait for its reader (see [`meter`]).
    pub send_timeout: Duration,
}

/// A peer that leaves a keepalive ping unanswered this long is dropped.
pub const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

impl Limits {
    /// The keepalive ping interval, `None` when pings are off.
    pub fn http2_keepalive_interval(&self) -> Option<Duration> {
        (!self.http2_keepalive.is_zero()).then_some(self.http2_keepalive)
    }
}

/// The next admitted connection, with TCP_NODELAY (small answers must not
/// wait for Nagle's algorithm) and its first-bytes deadline. `None` when
/// the gate refused it (closed at once, unread), or after an accept error
/// (out of file descriptors and the like), after a short back-off so the
/// loop never spins.
async fn accept(
    listener: &TcpListener,
    gate: &ConnectionGate,
    which: &'static str,
) -> Option<Guarded<TcpStream>> {
    match listener.accept().await {
        Ok((stream, peer)) => {
            let Some(admitted) = gate.admit(peer.ip()) else {
                tracing::debug!(listener = which, %peer, "connection refused: at the cap");
                return None;
            };
            let _ = stream.set_nodelay(true);
            Some(Guarded::new(
                stream,
                admitted,
                FIRST_BYTES,
                HEADER_READ_TIMEOUT,
            ))
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
async fn handshake<IO>(stream: IO, acceptor: &TlsAcceptor) -> Option<TlsStream<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "tls handshake failed");
            None
        }
        Err(_) => None,
    }
}

/// Admitted connections of `listener`, each made ready by `prepare` (a TLS
/// handshake, or nothing) off the accept loop. Ends once `stop` is
/// cancelled and the preparations under way are over.
fn incoming<T, F, Fut>(
    listener: TcpListener,
    gate: ConnectionGate,
    stop: CancellationToken,
    prepare: F,
) -> impl Stream<Item = Result<T, io::Error>>
where
    T: Send + 'static,
    F: Fn(Guarded<TcpStream>) -> Fut + Send + 'static,
    Fut: Future<Output = Option<T>> + Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                _ = stop.cancelled() => break,
                stream = accept(&listener, &gate, "grpc") => stream,
            };
            let Some(stream) = stream else {
                continue;
            };
            let ready = prepare(stream);
            let tx = tx.clone();
            tokio::spawn(async move {
                if let Some(stream) = ready.await {
                    let _ = tx.send(Ok(stream)).await;
                }
            });
        }
    });
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// The gRPC listener's plaintext connections, metered (answers left
/// unsent for `send_timeout` close them).
pub fn grpc_incoming(
    listener: TcpListener,
    gate: ConnectionGate,
    send_timeout: Duration,
    stop: CancellationToken,
) -> impl Stream<Item = Result<Metered<Guarded<TcpStream>>, io::Error>> {
    incoming(listener, gate, stop, move |stream| async move {
        Some(Metered::new(stream, send_timeout))
    })
}

/// The gRPC listener's connections over TLS, handshaken with the
/// configuration current at accept time (a reload applies from the next
/// connection on).
pub fn grpc_tls_incoming(
    listener: TcpListener,
    gate: ConnectionGate,
    tls: Arc<TlsConfig>,
    send_timeout: Duration,
    stop: CancellationToken,
) -> impl Stream<Item = Result<Metered<TlsStream<Guarded<TcpStream>>>, io::Error>> {
    incoming(listener, gate, stop, move |stream| {
        let acceptor = tls.grpc_acceptor();
        async move {
            let stream = handshake(stream, &acceptor).await?;
            Some(Metered::new(stream, send_timeout))
        }
    })
}

/// Serves `app` on `listener` (over TLS when an acceptor is given) until
/// `stop` is cancelled, then lets open requests finish for at most `drain`.
/// Request heads are bounded in size and time so a slow or huge request
/// cannot pin a connection; so is the TLS handshake; connections are
/// metered (see [`meter`]).
pub async fn serve(
    listener: TcpListener,
    gate: ConnectionGate,
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
            stream = accept(&listener, &gate, "http") => stream,
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
            // hyper's protocol sniffing has no timeout of its own: the
            // first-bytes deadline of `Guarded` drops a silent client.
            let Some(tls) = tls else {
                let service = TowerToHyperService::new(app);
                let stream = Metered::new(stream, limits.send_timeout);
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
            let stream = Metered::new(stream, limits.send_timeout);
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
