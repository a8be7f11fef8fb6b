//! The HTTP listener's routes for gateways: `/v1/forward-auth` (nginx
//! `auth_request`, Caddy `forward_auth`, Traefik `ForwardAuth`, APISIX
//! `forward-auth`), `/healthz`, `/readyz` and `/metrics` (Prometheus text,
//! open like the probes; `PATD_METRICS=false` removes it). Gateways decide on the status
//! code alone, so every answer that is not a clear "yes" is a 4xx or 5xx: a
//! store outage is 503, never 200. Statuses, challenges and bodies come
//! from the one table in `verdict`.

use std::time::Duration;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{RawQuery, State};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, HeaderName, StatusCode};
use axum::response::{IntoResponse as _, Response};
use axum::routing::{any, get};
use tokio_util::sync::CancellationToken;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::load_shed::LoadShedLayer;
use tower::timeout::TimeoutLayer;
use tower::{BoxError, ServiceBuilder};
use tower_http::catch_panic::CatchPanicLayer;
use tracing::Instrument as _;

use crate::auth::{LiveCallers, Role};
use crate::bearer;
use crate::domain::{FieldError, Scopes};
use crate::json_api;
use crate::listener::Limits;
use crate::listener::budget::{Class, Held, StreamBudget};
use crate::metrics::{self, Door};
use crate::service::Tokens;
use crate::store::Store;
use crate::telemetry::{RpcName, Unfinished};
use crate::tls::PeerSans;
use crate::verdict::Verdict;

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

#[derive(Clone)]
struct AppState<S> {
    tokens: Tokens<S>,
    settings: ForwardAuth,
    callers: LiveCallers,
    /// Cancelled once shutdown begins: `/readyz` then says 503.
    shutdown: CancellationToken,
}

/// What bounds the HTTP listener's requests: the listener limits, the
/// stream budget it shares with gRPC, and the largest JSON or form body,
/// in bytes.
#[derive(Debug, Clone)]
pub struct Bounds {
    /// Deadline, concurrency limit and HTTP/2 settings.
    pub limits: Limits,
    /// Places every request holds until its answer has been handed over.
    pub budget: StreamBudget,
    /// Largest JSON or form request body, in bytes (larger: 413).
    pub max_request_bytes: usize,
}

/// The HTTP routes over the token service (forward-auth, health, and the
/// JSON doors of `json_api`), inside the same guards as gRPC, outermost
/// first: the stream budget, panic catcher, deadline, and (forward-auth
/// and JSON only) load shedding beyond the concurrency limit. Caller
/// authentication is in the handlers, on the headers (health endpoints
/// stay open). `max_request_bytes` bounds JSON request bodies as it
/// bounds gRPC messages.
pub fn router<S: Store>(
    tokens: Tokens<S>,
    settings: ForwardAuth,
    callers: LiveCallers,
    bounds: Bounds,
    shutdown: CancellationToken,
    metrics: bool,
) -> Router {
    let Bounds {
        limits,
        budget,
        max_request_bytes,
    } = bounds;
    let guards = ServiceBuilder::new()
        .layer(CatchPanicLayer::custom(panicked))
        .layer(HandleErrorLayer::new(overloaded_or_late))
        .layer(TimeoutLayer::new(limits.request_timeout));
    // Only forward-auth and the JSON API are counted against the limit
    // (one limit for both): probes stay answerable whatever the load.
    let limit = GlobalConcurrencyLimitLayer::new(limits.max_concurrent_requests);
    let admission = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(overloaded_or_late))
        .layer(LoadShedLayer::new())
        .layer(limit.clone());
    let json_api = json_api::router(
        tokens.clone(),
        callers.clone(),
        max_request_bytes,
        limits.request_timeout,
        limit,
    );
    let mut routes = Router::new()
        .route(FORWARD_AUTH_ROUTE, any(forward_auth::<S>).layer(admission))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz::<S>));
    if metrics {
        routes = routes.route("/metrics", get(prometheus_metrics));
    }
    routes
        .with_state(AppState {
            tokens,
            settings,
            callers,
            shutdown,
        })
        .merge(json_api)
        .layer(axum::middleware::from_fn(one_chunked_coding))
        .layer(guards)
        .layer(axum::middleware::from_fn_with_state(budget, hold_place))
        // Outermost: every answer is measured, shed and late ones too.
        .layer(axum::middleware::from_fn(observe))
}

/// The forward-auth route (`http.route`, and the `rpc` label).
const FORWARD_AUTH_ROUTE: &str = "/v1/forward-auth";

/// The `rpc` label of an HTTP request: its route, from a fixed list (a
/// client's made-up path must not mint a series).
fn route_label(path: &str) -> &'static str {
    match path {
        FORWARD_AUTH_ROUTE => FORWARD_AUTH_ROUTE,
        "/healthz" => "/healthz",
        "/readyz" => "/readyz",
        "/metrics" => "/metrics",
        "/v1/tokens:introspect" => "/v1/tokens:introspect",
        "/v1/tokens:revoke" => "/v1/tokens:revoke",
        "/oauth2/introspect" => "/oauth2/introspect",
        "/v1/openapi.json" => "/v1/openapi.json",
        _ => json_account_route(path).unwrap_or("unknown"),
    }
}

/// The template of a JSON route under `/v1/accounts/{account_id}/`: one
/// account-id segment (any bytes but `/`), then a fixed shape.
fn json_account_route(path: &str) -> Option<&'static str> {
    let rest = path.strip_prefix("/v1/accounts/")?;
    let (account, rest) = rest.split_once('/')?;
    if account.is_empty() {
        return None;
    }
    Some(match rest.split_once('/') {
        None if rest == "tokens" => "/v1/accounts/{account_id}/tokens",
        None if rest == "auditEvents" => "/v1/accounts/{account_id}/auditEvents",
        Some(("tokens", id)) if !id.is_empty() && !id.contains('/') => {
            if id.ends_with(":rotate") {
                "/v1/accounts/{account_id}/tokens/{token_id}:rotate"
            } else {
                "/v1/accounts/{account_id}/tokens/{token_id}"
            }
        }
        _ => return None,
    })
}

/// The span name (`{method} {http.route}`) and `http.request.method` of a
/// forward-auth request, per OpenTelemetry's HTTP conventions (`HTTP` and
/// `_OTHER` for a method outside the standard set).
fn forward_auth_span_name(method: &axum::http::Method) -> (&'static str, &'static str) {
    use axum::http::Method;
    match *method {
        Method::GET => ("GET /v1/forward-auth", "GET"),
        Method::HEAD => ("HEAD /v1/forward-auth", "HEAD"),
        Method::POST => ("POST /v1/forward-auth", "POST"),
        Method::PUT => ("PUT /v1/forward-auth", "PUT"),
        Method::PATCH => ("PATCH /v1/forward-auth", "PATCH"),
        Method::DELETE => ("DELETE /v1/forward-auth", "DELETE"),
        Method::OPTIONS => ("OPTIONS /v1/forward-auth", "OPTIONS"),
        _ => ("HTTP /v1/forward-auth", "_OTHER"),
    }
}

/// Measures every HTTP request (`patd_requests_total`,
/// `patd_request_duration_seconds`) and gives each forward-auth request
/// its server span, a child of the gateway's `traceparent` if it sent one.
async fn observe(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let route = route_label(request.uri().path());
    let started = std::time::Instant::now();
    let response = if route == FORWARD_AUTH_ROUTE {
        let (name, method) = forward_auth_span_name(request.method());
        let span = tracing::info_span!(
            "http",
            otel.name = name,
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            http.request.method = method,
            http.route = FORWARD_AUTH_ROUTE,
            http.response.status_code = tracing::field::Empty,
            patd.outcome = tracing::field::Empty,
            patd.token_id = tracing::field::Empty,
            patd.account_id = tracing::field::Empty,
        );
        crate::telemetry::parent_from_headers(&span, request.headers());
        let response = next.run(request).instrument(span.clone()).await;
        if !span.is_disabled() {
            let status = response.status();
            span.record("http.response.status_code", i64::from(status.as_u16()));
            if status.is_server_error() {
                span.record("otel.status_code", "error");
            }
        }
        response
    } else {
        next.run(request).await
    };
    metrics::request(
        route,
        metrics::Code::Http(response.status().as_u16()),
        started.elapsed(),
    );
    response
}

/// Holds the request's place in the stream budget until its answer has
/// been sent; refuses it at once (503, as when overloaded) when the budget
/// is spent. Forward-auth and the JSON API count against the total; the
/// open routes (health, metrics, unknown paths) against the open services'
/// budget too.
async fn hold_place(
    axum::extract::State(budget): axum::extract::State<StreamBudget>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let class = match route_label(request.uri().path()) {
        "/healthz" | "/readyz" | "/metrics" | "/v1/openapi.json" | "unknown" => Class::Open,
        _ => Class::Caller,
    };
    match budget.admit(class) {
        Ok(place) => next
            .run(request)
            .await
            .map(|body| axum::body::Body::new(Held::new(body, place))),
        Err(spent) => {
            metrics::stream_refused(spent.as_str());
            Verdict::Overloaded.to_forward_auth(Duration::ZERO)
        }
    }
}

/// `GET /metrics`: the Prometheus text exposition (format 0.0.4).
async fn prometheus_metrics() -> Response {
    match metrics::prometheus_text() {
        Some(text) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// RFC 9112 §6.1: `chunked` is applied at most once, as the last
/// coding. hyper already refuses it anywhere but last; a request naming it
/// twice (`chunked, chunked`), which two parsers may frame differently, is
/// refused here (400) before any handler reads it.
async fn one_chunked_coding(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let chunked = request
        .headers()
        .get_all(axum::http::header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("invalid").split(','))
        .filter(|coding| coding.trim().eq_ignore_ascii_case("chunked"))
        .count();
    if chunked > 1 {
        return (StatusCode::BAD_REQUEST, "chunked applied twice\n").into_response();
    }
    next.run(request).await
}

fn panicked(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!(
        panic = crate::telemetry::panic_message(&*panic),
        "http handler panicked"
    );
    Verdict::Internal.to_forward_auth(Duration::ZERO)
}

async fn overloaded_or_late(error: BoxError) -> Response {
    let (verdict, outcome) = if error.is::<tower::timeout::error::Elapsed>() {
        (Verdict::Deadline, "deadline_exceeded")
    } else {
        // Overloaded: refuse now rather than queue without bound.
        metrics::shed("http");
        (Verdict::Overloaded, "overloaded")
    };
    // The handler never wrote its line: this is the request's one line.
    Unfinished::new(RpcName::Fixed("ForwardAuth")).finish(outcome);
    verdict.to_forward_auth(Duration::ZERO)
}

/// What a forward-auth request asks: the presented credential (if any) and
/// the scopes the route requires. Pure parsing, no I/O (fuzzed in `fuzz/`).
///
/// # Errors
/// The query names a malformed scope, an empty one or an unknown
/// parameter: the gateway's route is misconfigured.
pub fn parse_forward_auth<'a>(
    headers: &'a HeaderMap,
    query: Option<&str>,
    extra_header: Option<&HeaderName>,
) -> Result<(Option<&'a str>, Scopes), FieldError> {
    let required = bearer::route_scopes_from_query(query)?;
    let extra = extra_header
        .into_iter()
        .flat_map(|name| headers.get_all(name))
        .map(|v| v.as_bytes());
    let authorization = headers.get_all(AUTHORIZATION).iter().map(|v| v.as_bytes());
    Ok((bearer::presented(authorization, extra).value(), required))
}

async fn forward_auth<S: Store>(
    State(state): State<AppState<S>>,
    peer: Option<axum::Extension<PeerSans>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    // A client that goes away mid-request still leaves its line.
    let mut unfinished = Unfinished::new(RpcName::Fixed("ForwardAuth"));
    let max_age = state.settings.max_age;
    let callers = state.callers.load();
    if callers.is_enabled() {
        let key = headers.get(CALLER_KEY_HEADER).and_then(|v| v.to_str().ok());
        let sans = peer.map(|p| p.0.0).unwrap_or_default();
        if let Err(refusal) = callers.authorize(key, &sans, Role::Introspect) {
            metrics::caller_refusal(refusal.reason());
            // The gateway's own credentials are wrong: the operator must
            // see it, and end users must not be told their token is bad.
            tracing::warn!(
                refusal = %refusal,
                "forward-auth caller refused: the gateway is not an authorized patd caller (check its X-Patd-Caller-Key or client certificate)"
            );
            unfinished.answered();
            return Verdict::from(refusal).to_forward_auth(max_age);
        }
    }
    let token_header = state.settings.token_header.as_ref();
    let (value, required) = match parse_forward_auth(&headers, query.as_deref(), token_header) {
        Ok(parsed) => parsed,
        Err(e) => {
            // The gateway's configuration is wrong: deny, and say what to fix.
            tracing::warn!(error = %e, "forward-auth route is misconfigured");
            unfinished.answered();
            return Verdict::RouteMisconfigured(e).to_forward_auth(max_age);
        }
    };
    let decision = state
        .tokens
        .authorize("ForwardAuth", value, &required)
        .await;
    unfinished.answered();
    let verdict = Verdict::from_decision(decision, &required);
    if let Some(outcome) = verdict.introspection_outcome() {
        metrics::introspection(Door::ForwardAuth, outcome);
    }
    verdict.to_forward_auth(max_age)
}

async fn readyz<S: Store>(State(state): State<AppState<S>>) -> (StatusCode, &'static str) {
    if state.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
    }
    match state.tokens.ready().await {
        Ok(()) => (StatusCode::OK, "ready\n"),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n"),
    }
}
