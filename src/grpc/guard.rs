//! The tower layer around every gRPC service (see `server.rs`): `Shield`,
//! in this order: the stream budget (every call holds a place until its
//! answer has been sent), panic catcher (INTERNAL out, details in the log),
//! deadline (DEADLINE_EXCEEDED), caller authentication on the headers
//! (UNAUTHENTICATED / PERMISSION_DENIED by role), then admission: a
//! token-service call takes a concurrency slot once its message has
//! arrived, or is refused at once with RESOURCE_EXHAUSTED. Health and
//! reflection are never counted against the concurrency limit (they have
//! their own small stream budget), so an overloaded or attacked patd still
//! answers its probes. Which method needs which role
//! is decided here too ([`role_for_grpc_path`]); refusals are rendered by
//! `verdict`.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{LazyLock, Mutex, PoisonError};

use futures_util::FutureExt as _;
use futures_util::future::ready;
use http_body_util::BodyExt as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::body::Body;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::{Code, Status};
use tower::{BoxError, Layer, Service};
use tracing::Instrument as _;

use crate::auth::{CallerName, LiveCallers, Refusal, Role};
use crate::bearer;
use crate::listener::budget::{Class, Held, StreamBudget};
use crate::metrics;
use crate::pb::token_service_server::SERVICE_NAME as TOKEN_SERVICE;
use crate::telemetry::{RpcName, Unfinished, panic_message};
use crate::tls::client_sans;
use crate::verdict::Verdict;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::SERVICE_NAME as EXT_AUTHZ_SERVICE;

/// The role a gRPC method needs; `None` for open services (health,
/// reflection) and unknown paths (which answer UNIMPLEMENTED anyway).
/// `path` is `/<service>/<method>` (gRPC over HTTP/2).
pub fn role_for_grpc_path(path: &str) -> Option<Role> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    match service {
        TOKEN_SERVICE if method == "Introspect" => Some(Role::Introspect),
        TOKEN_SERVICE => Some(Role::Manage),
        EXT_AUTHZ_SERVICE => Some(Role::Introspect),
        _ => None,
    }
}

type HttpResponse = http::Response<Body>;

/// The whole gRPC guard, in this order: holds every call's place in the
/// stream budget until its answer has been handed over, catches panics,
/// bounds every call in time, judges the caller on the headers, and sheds
/// token-service calls beyond the concurrency limits. A call takes its
/// slot only once its whole message has arrived (a client that sends
/// headers and never the body holds no slot), and one connection holds at
/// most `max_per_connection` slots, so a few connections cannot starve
/// the rest.
#[derive(Debug, Clone)]
pub struct ShieldLayer {
    timeout: Duration,
    slots: Arc<Semaphore>,
    per_connection: Arc<PerConnection>,
    max_message_bytes: usize,
    budget: StreamBudget,
    callers: LiveCallers,
}

/// Slots held per client connection (by its remote address).
#[derive(Debug)]
struct PerConnection {
    held: Mutex<HashMap<SocketAddr, usize>>,
    max: usize,
}

/// One connection's share of a slot; returned on drop.
struct ConnectionShare {
    owner: Arc<PerConnection>,
    peer: SocketAddr,
}

impl PerConnection {
    fn take(self: &Arc<Self>, peer: SocketAddr) -> Option<ConnectionShare> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let n = held.entry(peer).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(ConnectionShare {
            owner: self.clone(),
            peer,
        })
    }
}

impl Drop for ConnectionShare {
    fn drop(&mut self) {
        let mut held = self
            .owner
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = held.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.peer);
            }
        }
    }
}

impl ShieldLayer {
    /// `max_message_bytes` bounds the message buffered before a slot is
    /// taken (larger: OUT_OF_RANGE, as tonic answers). Every call, counted
    /// or not, holds a place in `budget` until its answer has been sent
    /// (beyond it: RESOURCE_EXHAUSTED at once); health, reflection and
    /// unknown methods hold one of the open services' places.
    pub fn new(
        timeout: Duration,
        max_in_flight: usize,
        max_per_connection: usize,
        max_message_bytes: usize,
        budget: StreamBudget,
        callers: LiveCallers,
    ) -> Self {
        Self {
            timeout,
            slots: Arc::new(Semaphore::new(max_in_flight)),
            per_connection: Arc::new(PerConnection {
                held: Mutex::new(HashMap::new()),
                max: max_per_connection.max(1),
            }),
            max_message_bytes,
            budget,
            callers,
        }
    }
}

impl<S> Layer<S> for ShieldLayer {
    type Service = Shield<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Shield {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Shield<S> {
    inner: S,
    layer: ShieldLayer,
}

/// The remote address of the connection a request came on.
fn remote_addr<B>(request: &http::Request<B>) -> Option<SocketAddr> {
    let extensions = request.extensions();
    extensions
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|tls| tls.get_ref().remote_addr())
        })
}

impl<S> Service<http::Request<Body>> for Shield<S>
where
    S: Service<http::Request<Body>, Response = HttpResponse> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = HttpResponse;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // gRPC over HTTP/2: a content-type that does not begin with
        // `application/grpc` gets HTTP 415, before any gRPC processing.
        if !is_grpc(request.headers()) {
            let mut refused = HttpResponse::new(Body::default());
            *refused.status_mut() = http::StatusCode::UNSUPPORTED_MEDIA_TYPE;
            return Box::pin(ready(Ok(refused)));
        }
        // Only token-service calls take a slot and get an outcome line here;
        // probes and reflection stay answerable whatever the load. The role
        // is read once, for the budget, the gate and the slot.
        let role = role_for_grpc_path(request.uri().path());
        let counted = role.is_some();
        // Cheap: a `Uri` shares its bytes; only read for a log line.
        let uri = request.uri().clone();
        // The client's own deadline (`grpc-timeout`) counts too, and must
        // end as DEADLINE_EXCEEDED: tonic's outer timeout would answer
        // CANCELLED, so this one fires a moment before it.
        let (timeout, which) = match client_deadline(request.headers()) {
            Some(client) if client < self.layer.timeout => (
                client.saturating_sub(CLIENT_DEADLINE_MARGIN),
                "deadline_exceeded_client",
            ),
            _ => (self.layer.timeout, "deadline_exceeded"),
        };
        let peer = remote_addr(&request);
        // Token-service and ext_authz calls get a server span and their
        // request metrics.
        let observed = counted.then(|| {
            let rpc = method_label(uri.path());
            let span = server_span(&rpc);
            crate::telemetry::parent_from_headers(&span, request.headers());
            (rpc, span)
        });
        let layer = self.layer.clone();
        // The service made ready is the one that must be called.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let answer = async move {
            // Logs the request if it ends without an answer (the client
            // went away and its future was dropped).
            let mut unfinished = counted.then(|| Unfinished::new(RpcName::Grpc(uri.clone())));
            // The place is held from here until the answer has been sent
            // (by the body below), or the call is dropped.
            let place = match layer.budget.admit(budget_class(role, uri.path())) {
                Ok(place) => place,
                Err(spent) => {
                    metrics::stream_refused(spent.as_str());
                    if let Some(u) = unfinished.take() {
                        u.finish("overloaded");
                    }
                    return Ok(Verdict::Overloaded.to_status().into_http());
                }
            };
            let work = async {
                let mut request = request;
                // Judged on its headers, before its body is waited for: an
                // anonymous call holds its place no longer than that.
                if let Err(refused) = gate_caller(&layer.callers, role, &mut request) {
                    return Err(Refused::Caller(refused));
                }
                let request = match counted {
                    true => match buffered(request, layer.max_message_bytes).await {
                        Ok(request) => request,
                        Err(refusal) => return Err(refusal),
                    },
                    false => request,
                };
                let _slots = match counted {
                    true => match admit(&layer, peer) {
                        Some(slots) => Some(slots),
                        None => return Err(Refused::Overloaded),
                    },
                    false => None,
                };
                Ok(AssertUnwindSafe(inner.call(request)).catch_unwind().await)
            };
            let answered = match tokio::time::timeout(timeout, work).await {
                // The handler answered and wrote its own line.
                Ok(Ok(Ok(result))) => {
                    if let Some(u) = unfinished.as_mut() {
                        u.answered();
                    }
                    result.map_err(Into::into)
                }
                Ok(Ok(Err(panic))) => {
                    tracing::error!(
                        method = uri.path(),
                        panic = panic_message(&*panic),
                        "handler panicked"
                    );
                    if let Some(u) = unfinished.take() {
                        u.finish("internal");
                    }
                    Ok(Verdict::Internal.to_status().into_http())
                }
                // The gate wrote the line.
                Ok(Err(Refused::Caller(refused))) => {
                    if let Some(u) = unfinished.as_mut() {
                        u.answered();
                    }
                    Ok(Verdict::from(refused).to_status().into_http())
                }
                Ok(Err(Refused::Overloaded)) => {
                    metrics::shed("grpc");
                    if let Some(u) = unfinished.take() {
                        u.finish("overloaded");
                    }
                    Ok(Verdict::Overloaded.to_status().into_http())
                }
                Ok(Err(Refused::TooLarge)) => {
                    if let Some(u) = unfinished.take() {
                        u.finish("out_of_range");
                    }
                    let status = Status::out_of_range("the request message is too large");
                    Ok(status.into_http())
                }
                Ok(Err(Refused::Unreadable)) => {
                    if let Some(u) = unfinished.take() {
                        u.finish("cancelled");
                    }
                    Ok(Status::cancelled("the request body did not arrive").into_http())
                }
                Err(_) => {
                    if let Some(u) = unfinished.take() {
                        u.finish(which);
                    }
                    Ok(Verdict::Deadline.to_status().into_http())
                }
            };
            answered.map(|response| response.map(|body| Body::new(Held::new(body, place))))
        };
        let Some((rpc, span)) = observed else {
            return Box::pin(answer);
        };
        let mut observed = Observed {
            rpc: Some(rpc),
            span,
            started: std::time::Instant::now(),
        };
        Box::pin(async move {
            let result = answer.instrument(observed.span.clone()).await;
            let code = match &result {
                Ok(response) => response_code(response),
                Err(_) => Code::Unknown,
            };
            observed.end(code);
            result
        })
    }
}

/// A counted call's span and request metrics, ended with its status
/// code, or with CANCELLED when the client went away first (the future
/// was dropped).
struct Observed {
    /// `None` once ended.
    rpc: Option<Arc<str>>,
    span: tracing::Span,
    started: std::time::Instant,
}

impl Observed {
    fn end(&mut self, code: Code) {
        let Some(rpc) = self.rpc.take() else {
            return;
        };
        if !self.span.is_disabled() {
            self.span.record("rpc.grpc.status_code", code as i64);
            if is_server_error(code) {
                self.span.record("otel.status_code", "error");
            }
        }
        let code = metrics::Code::Grpc(crate::verdict::grpc_code_name(code));
        metrics::request(rpc, code, self.started.elapsed());
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        self.end(Code::Cancelled);
    }
}

/// The full names (`package.Service/Method`) of every token-service and
/// ext_authz method, read once from the descriptors patd serves: the
/// `rpc` label comes from this list, never from an unchecked path (a
/// client could otherwise mint a series per made-up method).
static METHODS: LazyLock<Vec<Arc<str>>> = LazyLock::new(|| {
    use prost::Message as _;
    let mut methods = Vec::new();
    for encoded in [
        crate::pb::FILE_DESCRIPTOR_SET,
        crate::pb::ENVOY_AUTHZ_DESCRIPTOR_SET,
    ] {
        let Ok(set) = prost_types::FileDescriptorSet::decode(encoded) else {
            continue;
        };
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    let full = format!("{}.{}/{}", file.package(), service.name(), method.name());
                    if role_for_grpc_path(&format!("/{full}")).is_some() {
                        methods.push(Arc::from(full));
                    }
                }
            }
        }
    }
    methods
});

/// The label and span name of a method patd does not serve.
static UNKNOWN_METHOD: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from("unknown"));

/// The `rpc` label (and span name) of a counted gRPC path: its full method
/// name, or `unknown` for a method patd does not serve.
fn method_label(path: &str) -> Arc<str> {
    let name = path.strip_prefix('/').unwrap_or(path);
    METHODS
        .iter()
        .find(|m| &***m == name)
        .unwrap_or(&UNKNOWN_METHOD)
        .clone()
}

/// The server span of one gRPC call (`name` from [`method_label`]),
/// named and described per OpenTelemetry's RPC conventions
/// (`package.Service/Method`, `rpc.system`, `rpc.service`, `rpc.method`;
/// `rpc.grpc.status_code` and the `patd.*` facts are recorded as the call
/// ends).
fn server_span(name: &str) -> tracing::Span {
    let (service, method) = name.split_once('/').unwrap_or((name, ""));
    tracing::info_span!(
        "rpc",
        otel.name = name,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        rpc.grpc.status_code = tracing::field::Empty,
        patd.outcome = tracing::field::Empty,
        patd.token_id = tracing::field::Empty,
        patd.account_id = tracing::field::Empty,
    )
}

/// The gRPC status of an answer: `grpc-status` in its headers (a
/// trailers-only answer: every error), else OK (a unary answer whose
/// status follows in the trailers).
fn response_code(response: &HttpResponse) -> Code {
    response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(Code::Ok, Code::from_i32)
}

/// Status codes that are the server's failure (OpenTelemetry's RPC
/// conventions: the span's status is then Error).
fn is_server_error(code: Code) -> bool {
    matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    )
}

/// What a call is for the stream budget: a caller's (the token service,
/// ext_authz), an open service's that ends with its answer (health
/// Check, unknown methods), or an open service's long-lived stream
/// (health Watch, reflection). `role` is the path's
/// ([`role_for_grpc_path`]).
fn budget_class(role: Option<Role>, path: &str) -> Class {
    if role.is_some() {
        Class::Caller
    } else if path == "/grpc.health.v1.Health/Watch" || path.starts_with("/grpc.reflection.") {
        Class::LongLived
    } else {
        Class::Open
    }
}

/// Why a token-service call was answered before its handler ran.
enum Refused {
    /// By caller authentication.
    Caller(Refusal),
    Overloaded,
    TooLarge,
    Unreadable,
}

/// The request with its whole body read (at most `max_bytes`), so that a
/// slot is only ever held by a request that has fully arrived.
async fn buffered(
    request: http::Request<Body>,
    max_bytes: usize,
) -> Result<http::Request<Body>, Refused> {
    let (parts, body) = request.into_parts();
    let collected = http_body_util::Limited::new(body, max_bytes)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                Refused::TooLarge
            } else {
                Refused::Unreadable
            }
        })?;
    let body = Body::new(http_body_util::Full::new(collected.to_bytes()));
    Ok(http::Request::from_parts(parts, body))
}

/// A slot in the global limit and in the connection's share, or `None`
/// (shed at once, never queued).
fn admit(
    layer: &ShieldLayer,
    peer: Option<SocketAddr>,
) -> Option<(OwnedSemaphorePermit, Option<ConnectionShare>)> {
    let share = match peer {
        Some(peer) => Some(layer.per_connection.take(peer)?),
        None => None,
    };
    let slot = layer.slots.clone().try_acquire_owned().ok()?;
    Some((slot, share))
}

/// Whether the request says it is gRPC (`application/grpc`, optionally
/// `+proto` or `;…`), as the gRPC over HTTP/2 protocol requires.
fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("application/grpc"))
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('+') || rest.starts_with(';'))
}

/// How much earlier than the client's deadline patd answers, so its
/// DEADLINE_EXCEEDED beats tonic's CANCELLED (timers have 1 ms grain).
const CLIENT_DEADLINE_MARGIN: Duration = Duration::from_millis(2);

/// The client's `grpc-timeout` (gRPC over HTTP/2: 1 to 8 digits and a unit
/// of `H`, `M`, `S`, `m`, `u` or `n`); `None` when absent or malformed.
fn client_deadline(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Admits a call whose caller holds the method's role (the caller's name
/// goes into the request's extensions, for the handlers' log lines), or
/// gives its refusal: UNAUTHENTICATED without a known key or certificate,
/// PERMISSION_DENIED without the role. Open services and patd without a
/// callers file admit everyone. Reads headers only, so a call is judged
/// before its body has arrived. `role` is the one its path needs
/// ([`role_for_grpc_path`]).
fn gate_caller<B>(
    callers: &LiveCallers,
    role: Option<Role>,
    request: &mut http::Request<B>,
) -> Result<(), Refusal> {
    let callers = callers.load();
    let role = match role {
        Some(role) if callers.is_enabled() => role,
        _ => return Ok(()),
    };
    let key = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer::from_authorization);
    // Only parsed when a certificate was presented (mTLS); tonic's TLS
    // acceptor already verified it against the client CA.
    let sans = request
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(TlsConnectInfo::peer_certs)
        .map(|chain| client_sans(&chain))
        .unwrap_or_default();
    let refusal = match callers.authorize(key, &sans, role) {
        Ok(caller) => {
            tracing::debug!(
                caller = &*caller.name,
                role = role.as_str(),
                "caller admitted"
            );
            let name = CallerName(caller.name.clone());
            request.extensions_mut().insert(name);
            return Ok(());
        }
        Err(refusal) => refusal,
    };
    metrics::caller_refusal(refusal.reason());
    tracing::info!(
        path = request.uri().path(),
        refusal = %refusal,
        "caller refused"
    );
    Err(refusal)
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tower::{ServiceExt as _, service_fn};

    use super::*;

    /// A Shield of `timeout` with room to spare and no callers file.
    fn shield(timeout: Duration) -> ShieldLayer {
        ShieldLayer::new(timeout, 8, 8, 1024, StreamBudget::new(64, 8), no_callers())
    }

    fn no_callers() -> LiveCallers {
        Arc::new(arc_swap::ArcSwap::from_pointee(
            crate::auth::Callers::default(),
        ))
    }

    fn grpc_request() -> http::Request<Body> {
        http::Request::builder()
            .uri("/patd.v1.TokenService/Introspect")
            .header("content-type", "application/grpc")
            .body(Body::default())
            .unwrap()
    }

    #[test]
    fn one_connection_holds_at_most_its_share() {
        let layer = ShieldLayer::new(
            Duration::from_secs(1),
            10,
            2,
            1024,
            StreamBudget::new(64, 8),
            no_callers(),
        );
        let (a, b): (SocketAddr, SocketAddr) =
            ("10.0.0.1:1".parse().unwrap(), "10.0.0.1:2".parse().unwrap());
        let first = admit(&layer, Some(a)).expect("first");
        let second = admit(&layer, Some(a)).expect("second");
        assert!(admit(&layer, Some(a)).is_none(), "a's share is used up");
        let other = admit(&layer, Some(b)).expect("another connection");
        drop(first);
        assert!(admit(&layer, Some(a)).is_some(), "the share came back");
        drop((second, other));
    }

    #[tokio::test]
    async fn only_grpc_content_types_are_served() {
        let ok = service_fn(|_: http::Request<Body>| async {
            Ok::<HttpResponse, Infallible>(http::Response::new(Body::default()))
        });
        let shield = shield(Duration::from_secs(1)).layer(ok);
        for (content_type, status) in [
            ("application/grpc", 200),
            ("application/grpc+proto", 200),
            ("application/json", 415),
            ("application/grpcx", 415),
            ("", 415),
        ] {
            let request = http::Request::builder()
                .uri("/patd.v1.TokenService/Introspect")
                .header("content-type", content_type)
                .body(Body::default())
                .unwrap();
            let response = shield.clone().oneshot(request).await.unwrap();
            assert_eq!(response.status().as_u16(), status, "{content_type:?}");
        }
    }

    fn grpc_status(response: &HttpResponse) -> Option<&str> {
        response
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
    }

    #[tokio::test]
    async fn a_panicking_handler_becomes_a_generic_internal_status() {
        let inner = service_fn(|_: http::Request<Body>| async {
            if true {
                panic!("secret detail");
            }
            Ok::<HttpResponse, Infallible>(http::Response::new(Body::default()))
        });
        let response = shield(Duration::from_secs(1))
            .layer(inner)
            .oneshot(grpc_request())
            .await
            .unwrap();
        assert_eq!(grpc_status(&response), Some("13"));
        let message = response
            .headers()
            .get("grpc-message")
            .unwrap()
            .to_str()
            .unwrap();
        assert!(!message.contains("secret"), "{message}");
    }

    #[tokio::test]
    async fn a_slow_handler_gets_deadline_exceeded() {
        let inner = service_fn(|_: http::Request<Body>| async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok::<HttpResponse, Infallible>(http::Response::new(Body::default()))
        });
        let response = shield(Duration::from_millis(20))
            .layer(inner)
            .oneshot(grpc_request())
            .await
            .unwrap();
        assert_eq!(grpc_status(&response), Some("4"));
    }

    #[test]
    fn client_deadlines_follow_the_grpc_timeout_format() {
        let h = |v: &str| {
            let mut headers = http::HeaderMap::new();
            headers.insert("grpc-timeout", v.parse().unwrap());
            client_deadline(&headers)
        };
        assert_eq!(h("250m"), Some(Duration::from_millis(250)));
        assert_eq!(h("1S"), Some(Duration::from_secs(1)));
        assert_eq!(h("2M"), Some(Duration::from_secs(120)));
        assert_eq!(h("99999999u"), Some(Duration::from_micros(99_999_999)));
        for bad in ["", "m", "123456789m", "10x", "-1m", "1.5S"] {
            assert_eq!(h(bad), None, "{bad:?}");
        }
        assert_eq!(client_deadline(&http::HeaderMap::new()), None);
    }

    #[test]
    fn grpc_paths_map_to_roles() {
        assert_eq!(
            role_for_grpc_path("/patd.v1.TokenService/Introspect"),
            Some(Role::Introspect)
        );
        assert_eq!(
            role_for_grpc_path("/patd.v1.TokenService/Issue"),
            Some(Role::Manage)
        );
        assert_eq!(
            role_for_grpc_path("/patd.v1.TokenService/RevokeAll"),
            Some(Role::Manage)
        );
        // Rotate mints a token and RevokeToken ends anyone's: both manage.
        assert_eq!(
            role_for_grpc_path("/patd.v1.TokenService/Rotate"),
            Some(Role::Manage)
        );
        assert_eq!(
            role_for_grpc_path("/patd.v1.TokenService/RevokeToken"),
            Some(Role::Manage)
        );
        assert_eq!(
            role_for_grpc_path("/patd.v1.TokenService/ListAuditEvents"),
            Some(Role::Manage)
        );
        assert_eq!(
            role_for_grpc_path("/envoy.service.auth.v3.Authorization/Check"),
            Some(Role::Introspect)
        );
        assert_eq!(role_for_grpc_path("/grpc.health.v1.Health/Check"), None);
        assert_eq!(
            role_for_grpc_path("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"),
            None
        );
        assert_eq!(role_for_grpc_path("/patd.v1.TokenServiceX/Issue"), None);
        assert_eq!(role_for_grpc_path("patd.v1.TokenService/Issue"), None);
    }

    #[tokio::test]
    async fn the_gate_only_guards_role_bound_methods() {
        let (key, entry) = crate::auth::new_caller_key("gw", &[crate::auth::Role::Introspect]);
        let callers = Arc::new(arc_swap::ArcSwap::from_pointee(
            crate::auth::Callers::parse(&entry, "f").unwrap(),
        ));
        let ok = service_fn(|_: http::Request<Body>| async {
            Ok::<HttpResponse, Infallible>(http::Response::new(Body::default()))
        });
        let gate = ShieldLayer::new(
            Duration::from_secs(1),
            8,
            8,
            1024,
            StreamBudget::new(64, 8),
            callers,
        )
        .layer(ok);
        let call = |path: &str, key: Option<&str>| {
            let mut request = http::Request::builder()
                .uri(path)
                .header("content-type", "application/grpc");
            if let Some(key) = key {
                request = request.header("authorization", format!("Bearer {key}"));
            }
            // Refused calls send no body: the gate answers on the headers
            // alone.
            let body = match key {
                Some(_) => Body::default(),
                None => Body::new(http_body_util::StreamBody::new(
                    futures_util::stream::pending::<Result<http_body::Frame<bytes::Bytes>, Status>>(
                    ),
                )),
            };
            gate.clone().oneshot(request.body(body).unwrap())
        };
        let health = call("/grpc.health.v1.Health/Check", None).await.unwrap();
        assert_eq!(grpc_status(&health), None);
        let anonymous = call("/patd.v1.TokenService/Introspect", None)
            .await
            .unwrap();
        assert_eq!(grpc_status(&anonymous), Some("16"));
        let allowed = call("/patd.v1.TokenService/Introspect", Some(&key))
            .await
            .unwrap();
        assert_eq!(grpc_status(&allowed), None);
        let denied = call("/patd.v1.TokenService/Issue", Some(&key))
            .await
            .unwrap();
        assert_eq!(grpc_status(&denied), Some("7"));
    }
}
