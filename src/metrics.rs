//! The metric instruments, through the OpenTelemetry metrics API, and the
//! Prometheus text served at `GET /metrics`. Every instrument is built once
//! from the global meter provider (set by `telemetry::init` before any
//! request); recording is an atomic add on a series found by its labels,
//! with labels built on the stack from `&'static str`s (no allocation per
//! request). Labels never carry an account, a token or a caller.
//!
//! OpenTelemetry names (OTLP) and their Prometheus forms (the exporter
//! turns dots into underscores, appends `_total` to counters and `_seconds`
//! to histograms in `s`):
//!
//! | OpenTelemetry | Prometheus | labels |
//! |---|---|---|
//! | `patd.introspections` | `patd_introspections_total` | `door`, `outcome` |
//! | `patd.requests` | `patd_requests_total` | `rpc`, `code` |
//! | `patd.request.duration` (s) | `patd_request_duration_seconds` | `rpc` |
//! | `patd.store.duration` (s) | `patd_store_duration_seconds` | `op` |
//! | `patd.store.errors` | `patd_store_errors_total` | `op` |
//! | `patd.tokens.issued` | `patd_tokens_issued_total` (Issue, Rotate's successor) | |
//! | `patd.tokens.revoked` | `patd_tokens_revoked_total` | `how` |
//! | `patd.shed` | `patd_shed_total` | `listener` |
//! | `patd.caller_refusals` | `patd_caller_refusals_total` | `reason` |
//! | `patd.cache.hits` | `patd_cache_hits_total` | |
//! | `patd.cache.misses` | `patd_cache_misses_total` | |
//! | `patd.cache.invalidations` | `patd_cache_invalidations_total` | |
//! | `patd.cache.bypass` (gauge) | `patd_cache_bypass` | |
//! | `patd.records.tampered` | `patd_records_tampered_total` | `rpc` |
//! | `patd.connections.closed` | `patd_connections_closed_total` | `reason` |
//! | `patd.streams.refused` | `patd_streams_refused_total` | `budget` |

use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::metrics::{Counter, Gauge, Histogram, Meter};
use opentelemetry::{KeyValue, Value};

/// The instrumentation scope every instrument belongs to.
pub const METER_NAME: &str = "patd";

/// Histogram bucket bounds, in seconds: a memory-store lookup takes tens of
/// microseconds, a Redis round trip under a millisecond, a timeout seconds.
const BUCKETS: [f64; 17] = [
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0,
];

/// The door an introspection came through (`door` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    /// `patd.v1.TokenService/Introspect`.
    Grpc,
    /// `GET /v1/forward-auth`.
    ForwardAuth,
    /// `envoy.service.auth.v3.Authorization/Check`.
    ExtAuthz,
    /// `POST /v1/tokens:introspect` (JSON).
    Json,
    /// `POST /oauth2/introspect` (RFC 7662).
    Rfc7662,
}

impl Door {
    fn as_str(self) -> &'static str {
        match self {
            Door::Grpc => "grpc",
            Door::ForwardAuth => "forward_auth",
            Door::ExtAuthz => "ext_authz",
            Door::Json => "json",
            Door::Rfc7662 => "rfc7662",
        }
    }
}

/// A request's result (`code` label): a gRPC status name (`OK`,
/// `UNAVAILABLE`, ...) or an HTTP status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Grpc(&'static str),
    Http(u16),
}

struct Instruments {
    introspections: Counter<u64>,
    requests: Counter<u64>,
    request_duration: Histogram<f64>,
    store_duration: Histogram<f64>,
    store_errors: Counter<u64>,
    tokens_issued: Counter<u64>,
    tokens_revoked: Counter<u64>,
    shed: Counter<u64>,
    caller_refusals: Counter<u64>,
    cache_hits: Counter<u64>,
    cache_misses: Counter<u64>,
    cache_invalidations: Counter<u64>,
    cache_bypass: Gauge<u64>,
    records_tampered: Counter<u64>,
    connections_closed: Counter<u64>,
    streams_refused: Counter<u64>,
}

impl Instruments {
    fn new(meter: &Meter) -> Self {
        let seconds = |name: &'static str, description: &'static str| {
            meter
                .f64_histogram(name)
                .with_unit("s")
                .with_description(description)
                .with_boundaries(BUCKETS.to_vec())
                .build()
        };
        let counter = |name: &'static str, description: &'static str| {
            meter
                .u64_counter(name)
                .with_description(description)
                .build()
        };
        Self {
            introspections: counter("patd.introspections", "Token checks by door and outcome"),
            requests: counter("patd.requests", "Requests by RPC or route and result code"),
            request_duration: seconds(
                "patd.request.duration",
                "Time from a request's arrival to its answer",
            ),
            store_duration: seconds("patd.store.duration", "Time of one store call"),
            store_errors: counter("patd.store.errors", "Store calls that failed"),
            tokens_issued: counter("patd.tokens.issued", "Tokens issued"),
            tokens_revoked: counter("patd.tokens.revoked", "Live tokens revoked"),
            shed: counter("patd.shed", "Requests refused beyond the concurrency limit"),
            caller_refusals: counter(
                "patd.caller_refusals",
                "Requests refused by caller authentication",
            ),
            cache_hits: counter(
                "patd.cache.hits",
                "Token lookups answered by the introspection cache",
            ),
            cache_misses: counter(
                "patd.cache.misses",
                "Token lookups the introspection cache sent to Redis (not held, or bypassed)",
            ),
            cache_invalidations: counter(
                "patd.cache.invalidations",
                "Token ids dropped from the introspection cache by a revocation or rotation",
            ),
            cache_bypass: meter
                .u64_gauge("patd.cache.bypass")
                .with_description(
                    "1 while the introspection cache is bypassed (its invalidation channel is not proven), else 0",
                )
                .build(),
            records_tampered: counter(
                "patd.records.tampered",
                "Token records refused because their seal is missing or wrong",
            ),
            connections_closed: counter(
                "patd.connections.closed",
                "Connections patd closed because the peer broke a connection rule",
            ),
            streams_refused: counter(
                "patd.streams.refused",
                "Requests refused because a stream budget was spent",
            ),
        }
    }
}

static INSTRUMENTS: OnceLock<Instruments> = OnceLock::new();

/// The instruments, built from the global meter provider on first use
/// (before it is set they would be no-ops forever: `telemetry::init` runs
/// first).
fn get() -> &'static Instruments {
    INSTRUMENTS.get_or_init(|| Instruments::new(&opentelemetry::global::meter(METER_NAME)))
}

/// One token check at `door`; `outcome` comes from the answer table
/// (`verdict::Verdict::introspection_outcome`).
pub fn introspection(door: Door, outcome: &'static str) {
    get().introspections.add(
        1,
        &[
            KeyValue::new("door", door.as_str()),
            KeyValue::new("outcome", outcome),
        ],
    );
}

/// One answered request: `rpc` names the RPC or HTTP route (a bounded set,
/// never taken from the request unchecked).
pub fn request(rpc: impl Into<Value>, code: Code, elapsed: Duration) {
    let i = get();
    let rpc = KeyValue::new("rpc", rpc);
    let code = match code {
        Code::Grpc(name) => KeyValue::new("code", name),
        Code::Http(status) => KeyValue::new("code", i64::from(status)),
    };
    i.request_duration
        .record(elapsed.as_secs_f64(), std::slice::from_ref(&rpc));
    i.requests.add(1, &[rpc, code]);
}

/// One store call (`op`: `lookup`, `issue`, ...) and how it ended.
pub fn store_call(op: &'static str, elapsed: Duration, ok: bool) {
    let i = get();
    let op = [KeyValue::new("op", op)];
    i.store_duration.record(elapsed.as_secs_f64(), &op);
    if !ok {
        i.store_errors.add(1, &op);
    }
}

/// A token was issued.
pub fn token_issued() {
    get().tokens_issued.add(1, &[]);
}

/// `n` live tokens were revoked; `how`: `revoke`, `revoke_all`,
/// `revoke_token` (by value), or `undo` (a failed Issue's or Rotate's new
/// token removed).
pub fn tokens_revoked(how: &'static str, n: u64) {
    if n > 0 {
        get().tokens_revoked.add(n, &[KeyValue::new("how", how)]);
    }
}

/// A request refused beyond the concurrency limit of `listener` (`grpc` or
/// `http`).
pub fn shed(listener: &'static str) {
    get().shed.add(1, &[KeyValue::new("listener", listener)]);
}

/// A request refused by caller authentication; `reason`:
/// `unauthenticated` or `permission_denied`.
pub fn caller_refusal(reason: &'static str) {
    get()
        .caller_refusals
        .add(1, &[KeyValue::new("reason", reason)]);
}

/// A token lookup answered by the introspection cache (`true`) or sent to
/// Redis while the cache is on (`false`).
pub fn cache_lookup(hit: bool) {
    let instruments = get();
    if hit {
        instruments.cache_hits.add(1, &[]);
    } else {
        instruments.cache_misses.add(1, &[]);
    }
}

/// `n` token ids dropped from the introspection cache.
pub fn cache_invalidations(n: u64) {
    if n > 0 {
        get().cache_invalidations.add(n, &[]);
    }
}

/// A token record refused as tampered (its seal missing or wrong) while
/// serving `rpc` (`Introspect`, `List`, ...).
pub fn record_tampered(rpc: &'static str) {
    get().records_tampered.add(1, &[KeyValue::new("rpc", rpc)]);
}

/// A connection closed by patd because its peer broke a rule; `reason`:
/// `send_timeout` (an answer left unsent) or `control_flood`.
pub fn connection_closed(reason: &'static str) {
    get()
        .connections_closed
        .add(1, &[KeyValue::new("reason", reason)]);
}

/// A request refused at once because `budget` (`total` or `open`) was
/// spent.
pub fn stream_refused(budget: &'static str) {
    get()
        .streams_refused
        .add(1, &[KeyValue::new("budget", budget)]);
}

/// Whether the introspection cache is bypassed now.
pub fn cache_bypass(bypassed: bool) {
    get().cache_bypass.record(u64::from(bypassed), &[]);
}

static REGISTRY: OnceLock<prometheus::Registry> = OnceLock::new();

/// A metric reader that keeps the Prometheus registry `/metrics` renders.
/// Counters get `_total`, histograms in `s` get `_seconds`; no scope
/// labels (every metric is patd's).
///
/// # Errors
/// The exporter could not be built.
pub fn prometheus_reader() -> Result<opentelemetry_prometheus::PrometheusExporter, String> {
    let registry = REGISTRY.get_or_init(prometheus::Registry::new).clone();
    opentelemetry_prometheus::exporter()
        .with_registry(registry)
        .scope_info_enabled(false)
        .build()
        .map_err(|e| format!("prometheus exporter: {e}"))
}

/// The Prometheus text exposition of every metric; `None` when metrics
/// are off (no reader was installed).
pub fn prometheus_text() -> Option<String> {
    use prometheus::Encoder as _;
    let registry = REGISTRY.get()?;
    let mut out = Vec::new();
    prometheus::TextEncoder::new()
        .encode(&registry.gather(), &mut out)
        .ok()?;
    String::from_utf8(out).ok()
}
