//! HTTP listener for gateways: `/v1/forward-auth` (nginx `auth_request`,
//! Caddy `forward_auth`, Traefik `ForwardAuth`, APISIX `forward-auth`),
//! `/healthz` and `/readyz`. Gateways decide on the status code alone, so
//! every answer that is not a clear "yes" is a 4xx or 5xx: a store outage is
//! 503, never 200.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{RawQuery, State};
use axum::http::header::{AUTHORIZATION, CACHE_CONTROL, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::load_shed::LoadShedLayer;
use tower::timeout::TimeoutLayer;
use tower::{BoxError, ServiceBuilder};
use tower_http::catch_panic::CatchPanicLayer;

use crate::auth::{Callers, Refusal, Role};
use crate::bearer;
use crate::domain::{FieldError, Scopes, UnixMillis};
use crate::service::{Decision, ServiceError, Tokens};
use crate::store::Store;
use crate::tls::{PeerSans, client_sans};

/// Largest request head (request line + headers) accepted.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;
/// A client must send its whole request head within this time.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

const NO_STORE: &str = "no-store";
/// Where a gateway presents its own caller key (`Authorization` carries the
/// end user's token).
pub const CALLER_KEY_HEADER: &str = "x-patd-caller-key";

/// Forward-auth settings.
#[derive(Debug, Clone, Default)]
pub struct ForwardAuth {
    /// A second header that may carry the raw token (e.g. `X-API-Key`).
    pub token_header: Option<HeaderName>,
    /// How long a gateway may cache an allow (0 = never).
    pub max_age: Duration,
}

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

#[derive(Clone)]
struct AppState<S> {
    tokens: Tokens<S>,
    settings: ForwardAuth,
    callers: Arc<Callers>,
    /// Cancelled once shutdown begins: `/readyz` then says 503.
    shutdown: CancellationToken,
}

/// The HTTP routes over the token service, inside the same guards as gRPC,
/// outermost first: panic catcher, deadline, and (forward-auth only) load
/// shedding beyond the concurrency limit. Caller authentication is in the
/// forward-auth handler (health endpoints stay open).
pub fn router<S: Store + Clone>(
    tokens: Tokens<S>,
    settings: ForwardAuth,
    callers: Arc<Callers>,
    limits: Limits,
    shutdown: CancellationToken,
) -> Router {
    let guards = ServiceBuilder::new()
        .layer(CatchPanicLayer::custom(panicked))
        .layer(HandleErrorLayer::new(overloaded_or_late))
        .layer(TimeoutLayer::new(limits.request_timeout));
    // Only forward-auth is counted against the limit: probes stay
    // answerable whatever the load.
    let admission = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(overloaded_or_late))
        .layer(LoadShedLayer::new())
        .layer(GlobalConcurrencyLimitLayer::new(
            limits.max_concurrent_requests,
        ));
    Router::new()
        .route("/v1/forward-auth", any(forward_auth::<S>).layer(admission))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz::<S>))
        .layer(guards)
        .with_state(AppState {
            tokens,
            settings,
            callers,
            shutdown,
        })
}

fn panicked(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!(
        panic = crate::grpc::guard::panic_message(&*panic),
        "http handler panicked"
    );
    deny(
        StatusCode::INTERNAL_SERVER_ERROR,
        None,
        "internal error\n".into(),
    )
}

async fn overloaded_or_late(error: BoxError) -> Response {
    if error.is::<tower::timeout::error::Elapsed>() {
        deny(
            StatusCode::GATEWAY_TIMEOUT,
            None,
            "request timed out\n".into(),
        )
    } else {
        // Overloaded: refuse now rather than queue without bound.
        deny(StatusCode::SERVICE_UNAVAILABLE, None, "overloaded\n".into())
    }
}

/// What the request presented as a credential.
enum Presented<'a> {
    Nothing,
    Token(&'a str),
    /// Present but unreadable: several Authorization headers, or bytes that
    /// are not text. Treated as an invalid token, never as "no credential".
    Unreadable,
}

fn presented<'a>(headers: &'a HeaderMap, extra: Option<&HeaderName>) -> Presented<'a> {
    let mut authorization = headers.get_all(AUTHORIZATION).iter();
    if let Some(value) = authorization.next() {
        if authorization.next().is_some() {
            return Presented::Unreadable;
        }
        let Ok(text) = value.to_str() else {
            return Presented::Unreadable;
        };
        if let Some(token) = bearer::from_authorization(text) {
            return Presented::Token(token);
        }
    }
    match extra.and_then(|name| headers.get(name)) {
        Some(value) => match value.to_str() {
            Ok(text) if !text.trim().is_empty() => Presented::Token(text.trim()),
            Ok(_) => Presented::Nothing,
            Err(_) => Presented::Unreadable,
        },
        None => Presented::Nothing,
    }
}

/// What a forward-auth request asks: the presented credential (if any) and
/// the scopes the route requires. Pure parsing, no I/O (fuzzed in `fuzz/`).
///
/// # Errors
/// The query names a malformed scope: the gateway is misconfigured.
pub fn parse_forward_auth<'a>(
    headers: &'a HeaderMap,
    query: Option<&str>,
    extra_header: Option<&HeaderName>,
) -> Result<(Option<&'a str>, Scopes), FieldError> {
    let scope_lists: Vec<String> = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .filter(|(key, _)| key == "scope")
        .map(|(_, value)| value.into_owned())
        .collect();
    let required = bearer::required_scopes(scope_lists.iter().map(String::as_str))?;
    let value = match presented(headers, extra_header) {
        Presented::Nothing => None,
        Presented::Token(token) => Some(token),
        // An empty string fails parsing: an invalid token, without a store
        // round trip.
        Presented::Unreadable => Some(""),
    };
    Ok((value, required))
}

async fn forward_auth<S: Store + Clone>(
    State(state): State<AppState<S>>,
    peer: Option<axum::Extension<PeerSans>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    if state.callers.is_enabled() {
        let key = headers.get(CALLER_KEY_HEADER).and_then(|v| v.to_str().ok());
        let sans = peer.map(|p| p.0.0).unwrap_or_default();
        if let Err(refusal) = state.callers.authorize(key, &sans, Role::Introspect) {
            tracing::info!(refusal = %refusal, "forward-auth caller refused");
            return match refusal {
                Refusal::Unauthenticated => deny(
                    StatusCode::UNAUTHORIZED,
                    None,
                    "caller authentication required\n".into(),
                ),
                Refusal::PermissionDenied(_) => {
                    deny(StatusCode::FORBIDDEN, None, format!("{refusal}\n"))
                }
            };
        }
    }
    let token_header = state.settings.token_header.as_ref();
    let (value, required) = match parse_forward_auth(&headers, query.as_deref(), token_header) {
        Ok(parsed) => parsed,
        // The gateway's configuration is wrong: deny, and say what to fix.
        Err(e) => return deny(StatusCode::BAD_REQUEST, None, format!("{e}\n")),
    };
    let decision = state
        .tokens
        .authorize("ForwardAuth", value, &required)
        .await;
    respond(decision, &required, state.settings.max_age)
}

fn respond(
    decision: Result<Decision, ServiceError>,
    required: &Scopes,
    max_age: Duration,
) -> Response {
    match decision {
        Ok(Decision::Allow(info)) => {
            let (Ok(account), Ok(token_id), Ok(scopes)) = (
                HeaderValue::from_bytes(info.account_id.as_str().as_bytes()),
                HeaderValue::from_str(info.token_id.as_str()),
                HeaderValue::from_str(&info.scopes.joined()),
            ) else {
                // Cannot happen for validated values; if it did, deny.
                return deny(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    None,
                    "internal error\n".into(),
                );
            };
            let remaining =
                Duration::from_millis(info.expires_at.0.saturating_sub(UnixMillis::now().0));
            let cache = match max_age.min(remaining).as_secs() {
                0 => NO_STORE.to_owned(),
                secs => format!("private, max-age={secs}"),
            };
            let mut response = StatusCode::OK.into_response();
            let h = response.headers_mut();
            h.insert("x-account-id", account);
            h.insert("x-token-id", token_id);
            h.insert("x-token-scopes", scopes);
            if let Ok(cache) = HeaderValue::from_str(&cache) {
                h.insert(CACHE_CONTROL, cache);
            }
            response
        }
        Ok(Decision::Missing) => deny(
            StatusCode::UNAUTHORIZED,
            Some(bearer::CHALLENGE_MISSING.into()),
            "missing bearer token\n".into(),
        ),
        Ok(Decision::Invalid(_)) => deny(
            StatusCode::UNAUTHORIZED,
            Some(bearer::CHALLENGE_INVALID.into()),
            "invalid token\n".into(),
        ),
        Ok(Decision::InsufficientScope(_)) => deny(
            StatusCode::FORBIDDEN,
            Some(bearer::challenge_insufficient_scope(required)),
            "insufficient scope\n".into(),
        ),
        Err(_) => deny(
            StatusCode::SERVICE_UNAVAILABLE,
            None,
            "token store unavailable\n".into(),
        ),
    }
}

fn deny(status: StatusCode, challenge: Option<String>, body: String) -> Response {
    let mut response = (status, body).into_response();
    let h = response.headers_mut();
    h.insert(CACHE_CONTROL, HeaderValue::from_static(NO_STORE));
    if let Some(challenge) = challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
        h.insert(WWW_AUTHENTICATE, challenge);
    }
    response
}

async fn readyz<S: Store + Clone>(State(state): State<AppState<S>>) -> (StatusCode, &'static str) {
    if state.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
    }
    match state.tokens.ready().await {
        Ok(()) => (StatusCode::OK, "ready\n"),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n"),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn token<'a>(p: Presented<'a>) -> Option<&'a str> {
        match p {
            Presented::Token(t) => Some(t),
            Presented::Nothing => None,
            Presented::Unreadable => Some("<unreadable>"),
        }
    }

    #[test]
    fn the_bearer_header_wins_and_the_extra_header_is_a_fallback() {
        let extra = HeaderName::from_static("x-api-key");
        let h = headers(&[("authorization", "Bearer a"), ("x-api-key", "b")]);
        assert_eq!(token(presented(&h, Some(&extra))), Some("a"));
        let h = headers(&[("x-api-key", "b")]);
        assert_eq!(token(presented(&h, Some(&extra))), Some("b"));
        assert_eq!(token(presented(&h, None)), None);
        let h = headers(&[("authorization", "Basic Zm9v"), ("x-api-key", "b")]);
        assert_eq!(token(presented(&h, Some(&extra))), Some("b"));
    }

    #[test]
    fn two_authorization_headers_are_unreadable_not_missing() {
        let h = headers(&[("authorization", "Bearer a"), ("authorization", "Bearer b")]);
        assert_eq!(token(presented(&h, None)), Some("<unreadable>"));
    }
}
