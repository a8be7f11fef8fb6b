//! Traces and metrics on real receivers: an OTLP/gRPC collector (a tonic
//! server on `opentelemetry-proto`'s generated collector services) started
//! here on a loopback port receives patd's spans and metrics; `/metrics` is
//! scraped as Prometheus does. Span names and attributes follow
//! OpenTelemetry's conventions, a sent `traceparent` (gRPC metadata, HTTP
//! header, ext_authz inner header) becomes the parent, each store call is
//! one child span, and counters move by exactly the workload.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::ext_authz::v3::pb::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, attribute_context};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use patd::pb::IntrospectRequest;

use crate::helpers::{
    Backend, Patd, PatdOptions, RedisServer, eventually, issue, issue_scoped, random_name,
};
use crate::http_helpers::get;

/// Everything the collector was sent, as received.
#[derive(Default)]
struct Received {
    traces: Vec<ExportTraceServiceRequest>,
    metrics: Vec<ExportMetricsServiceRequest>,
}

#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Received>>);

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().traces.push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().metrics.push(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

/// A real OTLP/gRPC receiver on a loopback port, for the test's lifetime.
pub struct Collector {
    endpoint: String,
    sink: Sink,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Collector {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let sink = Sink::default();
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(sink.clone()))
            .add_service(MetricsServiceServer::new(sink.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
        let server = tokio::spawn(async move {
            server.await.unwrap();
        });
        Self {
            endpoint,
            sink,
            server,
        }
    }

    /// patd's options, exporting here quickly (spans every 100 ms,
    /// metrics every 300 ms).
    pub fn options(&self, opts: PatdOptions) -> PatdOptions {
        opts.env("OTEL_EXPORTER_OTLP_ENDPOINT", &self.endpoint)
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .env("OTEL_METRIC_EXPORT_INTERVAL", "300")
    }

    pub fn spans(&self) -> Vec<Span> {
        let received = self.sink.0.lock().unwrap();
        received
            .traces
            .iter()
            .flat_map(|r| &r.resource_spans)
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| s.spans.clone())
            .collect()
    }

    /// The `service.name` of every resource that sent spans.
    pub fn service_names(&self) -> BTreeSet<String> {
        let received = self.sink.0.lock().unwrap();
        received
            .traces
            .iter()
            .flat_map(|r| &r.resource_spans)
            .filter_map(|r| r.resource.as_ref())
            .filter_map(|r| text_attr(&r.attributes, "service.name"))
            .collect()
    }

    /// The resource attributes (`key=value`) of every metrics export.
    pub fn metric_resources(&self) -> BTreeSet<String> {
        let received = self.sink.0.lock().unwrap();
        received
            .metrics
            .iter()
            .flat_map(|r| &r.resource_metrics)
            .filter_map(|r| r.resource.as_ref())
            .flat_map(|r| &r.attributes)
            .map(|a| {
                format!(
                    "{}={}",
                    a.key,
                    text_attr(std::slice::from_ref(a), &a.key).unwrap_or_default()
                )
            })
            .collect()
    }

    pub fn metric_names(&self) -> BTreeSet<String> {
        let received = self.sink.0.lock().unwrap();
        received
            .metrics
            .iter()
            .flat_map(|r| &r.resource_metrics)
            .flat_map(|r| &r.scope_metrics)
            .flat_map(|s| &s.metrics)
            .map(|m| m.name.clone())
            .collect()
    }

    /// Everything received, as text, for the secrets audit.
    pub fn everything(&self) -> String {
        let received = self.sink.0.lock().unwrap();
        format!("{:?}\n{:?}", received.traces, received.metrics)
    }
}

fn text_attr(attributes: &[KeyValue], key: &str) -> Option<String> {
    let value = attributes.iter().find(|a| a.key == key)?.value.as_ref()?;
    match value.value.as_ref()? {
        AnyValue::StringValue(s) => Some(s.clone()),
        AnyValue::IntValue(i) => Some(i.to_string()),
        AnyValue::BoolValue(b) => Some(b.to_string()),
        other => Some(format!("{other:?}")),
    }
}

/// A span's attribute as text (integers in decimal).
fn attr(span: &Span, key: &str) -> Option<String> {
    text_attr(&span.attributes, key)
}

/// A span's integer attribute (OpenTelemetry's conventions type status
/// codes as integers).
fn int_attr(span: &Span, key: &str) -> Option<i64> {
    let value = span
        .attributes
        .iter()
        .find(|a| a.key == key)?
        .value
        .as_ref()?;
    match value.value.as_ref()? {
        AnyValue::IntValue(i) => Some(*i),
        _ => None,
    }
}

/// A W3C `traceparent` with fresh random ids: (header, trace id, span id).
fn traceparent() -> (String, Vec<u8>, Vec<u8>) {
    let trace: [u8; 16] = rand_bytes();
    let span: [u8; 8] = rand_bytes();
    let header = format!("00-{}-{}-01", hex::encode(trace), hex::encode(span));
    (header, trace.to_vec(), span.to_vec())
}

fn rand_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    getrandom::fill(&mut out).unwrap();
    out
}

fn check_request(headers: &[(&str, &str)]) -> CheckRequest {
    let headers: HashMap<String, String> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// The spans whose parent is `parent`.
fn children<'a>(spans: &'a [Span], parent: &Span) -> Vec<&'a Span> {
    spans
        .iter()
        .filter(|s| s.parent_span_id == parent.span_id && s.trace_id == parent.trace_id)
        .collect()
}

fn named<'a>(spans: &'a [Span], name: &str) -> Vec<&'a Span> {
    spans.iter().filter(|s| s.name == name).collect()
}

/// Asserts a store call's span: a client span of `db.system=redis`.
fn assert_store_span(span: &Span, op: &str) {
    assert_eq!(span.name, op);
    assert_eq!(span.kind, SpanKind::Client as i32, "{span:?}");
    assert_eq!(attr(span, "db.system").as_deref(), Some("redis"));
    assert_eq!(attr(span, "db.operation.name").as_deref(), Some(op));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_join_the_callers_trace_and_show_each_store_call() {
    let collector = Collector::start().await;
    let mut redis = RedisServer::start();
    let patd =
        // Without the introspection cache: every lookup is a Redis call, and
        // the outage below is seen by the very next one.
        Patd::spawn(collector.options(
            PatdOptions::new(Backend::Redis { url: redis.url() })
                .env("PATD_CACHE_MAX_ENTRIES", "0"),
        ))
        .await;
    let mut client = patd.client().await;
    let account = random_name("acct-");
    let (token, token_id) = issue(&mut client, &account, 600).await;
    let bearer = format!("Bearer {token}");

    // gRPC: traceparent in the call's metadata.
    let (grpc_parent, grpc_trace, grpc_span) = traceparent();
    let mut request = tonic::Request::new(IntrospectRequest {
        token: token.clone(),
    });
    request
        .metadata_mut()
        .insert("traceparent", grpc_parent.parse().unwrap());
    let answer = client.raw().introspect(request).await.unwrap().into_inner();
    assert!(answer.active);
    // The first use's last-used write ends (its span is sent when it does)
    // before the next check, which then has nothing to write.
    let touched = eventually(Duration::from_secs(10), || async {
        !named(&collector.spans(), "touch").is_empty()
    })
    .await;
    assert!(touched, "no touch span: {:#?}", collector.spans());

    // Forward-auth: traceparent as an HTTP header.
    let (http_parent, http_trace, http_span) = traceparent();
    let reply = get(
        patd.http_addr,
        "/v1/forward-auth",
        &[("Authorization", &bearer), ("traceparent", &http_parent)],
    )
    .await;
    assert_eq!(reply.status, 200);

    // ext_authz: traceparent among the headers of the request it describes.
    let (check_parent, check_trace, check_span) = traceparent();
    let mut ext_authz = AuthorizationClient::new(patd.channel().await);
    let checked = ext_authz
        .check(check_request(&[
            ("authorization", &bearer),
            ("traceparent", &check_parent),
        ]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(checked.status.unwrap().code, 0);

    // Every server span, and the first Introspect's last-used write.
    let arrived = eventually(Duration::from_secs(10), || async {
        let spans = collector.spans();
        [
            "patd.v1.TokenService/Issue",
            "patd.v1.TokenService/Introspect",
            "GET /v1/forward-auth",
            "envoy.service.auth.v3.Authorization/Check",
            "touch",
        ]
        .iter()
        .all(|name| !named(&spans, name).is_empty())
    })
    .await;
    let spans = collector.spans();
    assert!(arrived, "spans missing: {spans:#?}");
    if std::env::var_os("TEST_LOG").is_some() {
        eprintln!("{spans:#?}");
    }
    assert_eq!(
        collector.service_names(),
        BTreeSet::from(["patd".to_owned()])
    );

    // Issue: no parent sent, so a root span; one store call.
    let issue_span = named(&spans, "patd.v1.TokenService/Issue")[0];
    assert!(issue_span.parent_span_id.is_empty());
    assert_eq!(issue_span.kind, SpanKind::Server as i32);
    assert_eq!(attr(issue_span, "rpc.method").as_deref(), Some("Issue"));
    assert_eq!(attr(issue_span, "patd.outcome").as_deref(), Some("ok"));
    assert_eq!(
        attr(issue_span, "patd.account_id").as_deref(),
        Some(account.as_str())
    );
    let issue_children = children(&spans, issue_span);
    assert_eq!(issue_children.len(), 1, "{issue_children:#?}");
    assert_store_span(issue_children[0], "issue");

    // Introspect: the caller's trace, named and described per the RPC
    // conventions; its store calls are the lookup and the last-used write.
    let introspect = named(&spans, "patd.v1.TokenService/Introspect")[0];
    assert_eq!(introspect.trace_id, grpc_trace);
    assert_eq!(introspect.parent_span_id, grpc_span);
    assert_eq!(introspect.kind, SpanKind::Server as i32);
    for (key, value) in [
        ("rpc.system", "grpc"),
        ("rpc.service", "patd.v1.TokenService"),
        ("rpc.method", "Introspect"),
        ("patd.outcome", "active"),
        ("patd.token_id", token_id.as_str()),
        ("patd.account_id", account.as_str()),
    ] {
        assert_eq!(attr(introspect, key).as_deref(), Some(value), "{key}");
    }
    assert_eq!(int_attr(introspect, "rpc.grpc.status_code"), Some(0));
    let mut calls: Vec<&Span> = children(&spans, introspect);
    calls.sort_by_key(|s| s.start_time_unix_nano);
    assert_eq!(calls.len(), 2, "{calls:#?}");
    assert_store_span(calls[0], "lookup");
    assert_store_span(calls[1], "touch");

    // Forward-auth: the gateway's trace, per the HTTP conventions.
    let forward = named(&spans, "GET /v1/forward-auth")[0];
    assert_eq!(forward.trace_id, http_trace);
    assert_eq!(forward.parent_span_id, http_span);
    assert_eq!(forward.kind, SpanKind::Server as i32);
    for (key, value) in [
        ("http.request.method", "GET"),
        ("http.route", "/v1/forward-auth"),
        ("patd.outcome", "allow"),
        ("patd.token_id", token_id.as_str()),
        ("patd.account_id", account.as_str()),
    ] {
        assert_eq!(attr(forward, key).as_deref(), Some(value), "{key}");
    }
    assert_eq!(int_attr(forward, "http.response.status_code"), Some(200));
    let lookups = children(&spans, forward);
    assert_eq!(lookups.len(), 1, "{lookups:#?}");
    assert_store_span(lookups[0], "lookup");

    // ext_authz: the user's request's trace, from inside the CheckRequest.
    let check = named(&spans, "envoy.service.auth.v3.Authorization/Check")[0];
    assert_eq!(check.trace_id, check_trace);
    assert_eq!(check.parent_span_id, check_span);
    for (key, value) in [
        ("rpc.system", "grpc"),
        ("rpc.service", "envoy.service.auth.v3.Authorization"),
        ("rpc.method", "Check"),
        ("patd.outcome", "allow"),
        ("patd.token_id", token_id.as_str()),
    ] {
        assert_eq!(attr(check, key).as_deref(), Some(value), "{key}");
    }
    assert_eq!(int_attr(check, "rpc.grpc.status_code"), Some(0));
    let lookups = children(&spans, check);
    assert_eq!(lookups.len(), 1, "{lookups:#?}");
    assert_store_span(lookups[0], "lookup");

    // Metrics arrive by OTLP too, under their OpenTelemetry names.
    let pushed = eventually(Duration::from_secs(10), || async {
        let names = collector.metric_names();
        [
            "patd.introspections",
            "patd.requests",
            "patd.request.duration",
            "patd.store.duration",
            "patd.tokens.issued",
        ]
        .iter()
        .all(|n| names.contains(*n))
    })
    .await;
    assert!(pushed, "metrics missing: {:?}", collector.metric_names());

    // A store outage: the failed lookup is counted and its span says so.
    redis.kill();
    let status = client.introspect(&token).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    let text = scrape(&patd).await;
    assert_eq!(
        counter(&text, r#"patd_store_errors_total{op="lookup"}"#),
        1.0,
        "{text}"
    );
    assert_eq!(
        counter(
            &text,
            r#"patd_introspections_total{door="grpc",outcome="unavailable"}"#
        ),
        1.0
    );
    let failed = eventually(Duration::from_secs(10), || async {
        collector.spans().iter().any(|s| {
            s.name == "patd.v1.TokenService/Introspect"
                && int_attr(s, "rpc.grpc.status_code") == Some(14)
                // A server failure: the span's status is Error.
                && s.status.as_ref().is_some_and(|st| st.code == 2)
                && attr(s, "patd.outcome").as_deref() == Some("unavailable")
        })
    })
    .await;
    assert!(failed, "no span for the failed Introspect");
}

#[tokio::test]
async fn the_last_spans_are_sent_at_shutdown() {
    let collector = Collector::start().await;
    // Spans would wait a minute for their batch: only the shutdown's flush
    // can deliver them in time.
    let mut patd = Patd::spawn(
        collector
            .options(PatdOptions::new(Backend::Memory))
            .env("OTEL_BSP_SCHEDULE_DELAY", "60000"),
    )
    .await;
    let mut client = patd.client().await;
    issue(&mut client, &random_name("acct-"), 600).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(collector.spans().is_empty(), "sent before the shutdown");
    drop(client);
    patd.terminate();
    let status = patd.wait_exit(Duration::from_secs(15)).await;
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let spans = collector.spans();
    let issue_span = named(&spans, "patd.v1.TokenService/Issue");
    assert_eq!(issue_span.len(), 1, "{spans:#?}");
    // The memory store's spans say so.
    let store = children(&spans, issue_span[0]);
    assert_eq!(store.len(), 1, "{store:#?}");
    assert_eq!(attr(store[0], "db.system").as_deref(), Some("memory"));
}

#[test]
fn an_otlp_protocol_other_than_grpc_is_refused_by_name() {
    let out = crate::helpers::patd_command(&[
        ("PATD_GRPC_ADDR".to_owned(), "127.0.0.1:0".to_owned()),
        ("PATD_HTTP_ADDR".to_owned(), "127.0.0.1:0".to_owned()),
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(),
            "http://127.0.0.1:4318".to_owned(),
        ),
        (
            "OTEL_EXPORTER_OTLP_PROTOCOL".to_owned(),
            "http/protobuf".to_owned(),
        ),
    ])
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("OTEL_EXPORTER_OTLP_PROTOCOL") && stderr.contains("gRPC only"),
        "{stderr}"
    );
}

/// The names of patd's threads (`/proc/<pid>/task/*/comm`).
fn thread_names(patd: &Patd) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{}/task", patd.pid()))
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .map(|n| n.trim().to_owned())
        .collect()
}

#[tokio::test]
async fn the_standard_variables_configure_export_and_nothing_runs_without_them() {
    // No endpoint: no exporter thread (the SDK names them
    // `OpenTelemetry.Traces.BatchProcessor` and
    // `OpenTelemetry.Metrics.PeriodicReader`; the kernel keeps 15 bytes).
    let quiet = Patd::memory().await;
    let names = thread_names(&quiet);
    assert!(
        !names.iter().any(|n| n.starts_with("OpenTelemetry")),
        "{names:?}"
    );

    let collector = Collector::start().await;
    let patd = Patd::spawn(
        collector
            .options(PatdOptions::new(Backend::Memory))
            .env("OTEL_SERVICE_NAME", "patd-east")
            .env(
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment.name=test",
            )
            .env("OTEL_TRACES_SAMPLER", "always_off"),
    )
    .await;
    let names = thread_names(&patd);
    assert!(
        names.iter().any(|n| n.starts_with("OpenTelemetry")),
        "{names:?}"
    );
    let mut client = patd.client().await;
    issue(&mut client, &random_name("acct-"), 600).await;
    let pushed = eventually(Duration::from_secs(10), || async {
        collector.metric_names().contains("patd.tokens.issued")
    })
    .await;
    assert!(pushed, "{:?}", collector.metric_names());
    let resource = collector.metric_resources();
    for attribute in ["service.name=patd-east", "deployment.environment.name=test"] {
        assert!(resource.contains(attribute), "{resource:?}");
    }
    // The sampler said no: nothing traced, however long we wait.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(collector.spans().is_empty(), "{:#?}", collector.spans());
}

/// With the introspection cache (the default), a lookup it answers still
/// gets its store span, marked `patd.cache_hit=true`; one that went to
/// Redis has no such mark.
#[tokio::test]
async fn a_lookup_answered_by_the_cache_says_so_on_its_span() {
    let collector = Collector::start().await;
    let redis = RedisServer::start();
    let patd =
        Patd::spawn(collector.options(PatdOptions::new(Backend::Redis { url: redis.url() }))).await;
    let mut client = patd.client().await;
    let (token, _) = issue(&mut client, &random_name("acct-"), 600).await;
    for _ in 0..2 {
        assert!(client.introspect(&token).await.unwrap().active);
    }
    let arrived = eventually(Duration::from_secs(10), || async {
        named(&collector.spans(), "lookup").len() == 2
    })
    .await;
    let spans = collector.spans();
    assert!(arrived, "{spans:#?}");
    let mut lookups = named(&spans, "lookup");
    lookups.sort_by_key(|s| s.start_time_unix_nano);
    assert_eq!(attr(lookups[0], "patd.cache_hit"), None, "the first read");
    assert_eq!(attr(lookups[1], "patd.cache_hit").as_deref(), Some("true"));
}

/// The `/metrics` text.
pub async fn scrape(patd: &Patd) -> String {
    let reply = get(patd.http_addr, "/metrics", &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(
        reply
            .header("content-type")
            .is_some_and(|c| c.starts_with("text/plain; version=0.0.4")),
        "{:?}",
        reply.headers
    );
    reply.body
}

/// Every sample of a scrape: `name{labels}` -> value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// One sample's value (0 when the series does not exist yet).
pub fn counter(text: &str, series: &str) -> f64 {
    samples(text).get(series).copied().unwrap_or(0.0)
}

/// The metric names of the issue, in their Prometheus form.
pub const METRIC_NAMES: [&str; 9] = [
    "patd_introspections_total",
    "patd_requests_total",
    "patd_request_duration_seconds",
    "patd_store_duration_seconds",
    "patd_store_errors_total",
    "patd_tokens_issued_total",
    "patd_tokens_revoked_total",
    "patd_shed_total",
    "patd_caller_refusals_total",
];

/// The metric family of a sample name (`_bucket`, `_sum` and `_count` of
/// a histogram belong to it).
fn family(sample: &str) -> &str {
    let name = sample.split('{').next().unwrap_or(sample);
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && METRIC_NAMES.contains(&base)
        {
            return base;
        }
    }
    name
}

#[tokio::test]
async fn metrics_count_a_known_workload_exactly() {
    let patd = Patd::memory().await;
    let mut client = patd.client().await;
    let before = scrape(&patd).await;
    let account = random_name("acct-");

    let (token, token_id) = issue(&mut client, &account, 600).await;
    let scoped = issue_scoped(&mut client, &account, &["read"]).await;
    let (revoked, revoked_id) = issue(&mut client, &account, 600).await;
    client.revoke(&account, &revoked_id).await.unwrap();
    for _ in 0..3 {
        assert!(client.introspect(&token).await.unwrap().active);
    }
    assert!(!client.introspect("nope").await.unwrap().active);
    assert!(!client.introspect(&revoked).await.unwrap().active);
    let bearer = format!("Bearer {scoped}");
    let auth = [("Authorization", bearer.as_str())];
    assert_eq!(
        get(patd.http_addr, "/v1/forward-auth", &[]).await.status,
        401
    );
    assert_eq!(
        get(patd.http_addr, "/v1/forward-auth?scope=read", &auth)
            .await
            .status,
        200
    );
    assert_eq!(
        get(patd.http_addr, "/v1/forward-auth?scope=write", &auth)
            .await
            .status,
        403
    );
    let mut ext_authz = AuthorizationClient::new(patd.channel().await);
    let checked = ext_authz
        .check(check_request(&[("authorization", &bearer)]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(checked.status.unwrap().code, 0);
    assert_eq!(client.revoke_all(&account).await.unwrap().revoked, 2);
    let _ = token_id;

    let after = scrape(&patd).await;
    let (old, new) = (samples(&before), samples(&after));
    let delta = |series: &str| {
        new.get(series).copied().unwrap_or(0.0) - old.get(series).copied().unwrap_or(0.0)
    };
    for (series, expected) in [
        (r#"patd_tokens_issued_total"#, 3.0),
        (r#"patd_tokens_revoked_total{how="revoke"}"#, 1.0),
        (r#"patd_tokens_revoked_total{how="revoke_all"}"#, 2.0),
        (
            r#"patd_introspections_total{door="grpc",outcome="active"}"#,
            3.0,
        ),
        (
            r#"patd_introspections_total{door="grpc",outcome="malformed"}"#,
            1.0,
        ),
        // A revoked token's tombstone says so.
        (
            r#"patd_introspections_total{door="grpc",outcome="revoked"}"#,
            1.0,
        ),
        (
            r#"patd_introspections_total{door="forward_auth",outcome="missing"}"#,
            1.0,
        ),
        (
            r#"patd_introspections_total{door="forward_auth",outcome="active"}"#,
            1.0,
        ),
        (
            r#"patd_introspections_total{door="forward_auth",outcome="insufficient_scope"}"#,
            1.0,
        ),
        (
            r#"patd_introspections_total{door="ext_authz",outcome="active"}"#,
            1.0,
        ),
        (
            r#"patd_requests_total{code="OK",rpc="patd.v1.TokenService/Issue"}"#,
            3.0,
        ),
        (
            r#"patd_requests_total{code="OK",rpc="patd.v1.TokenService/Introspect"}"#,
            5.0,
        ),
        (
            r#"patd_requests_total{code="OK",rpc="patd.v1.TokenService/Revoke"}"#,
            1.0,
        ),
        (
            r#"patd_requests_total{code="OK",rpc="envoy.service.auth.v3.Authorization/Check"}"#,
            1.0,
        ),
        (
            r#"patd_requests_total{code="401",rpc="/v1/forward-auth"}"#,
            1.0,
        ),
        (
            r#"patd_requests_total{code="200",rpc="/v1/forward-auth"}"#,
            1.0,
        ),
        (
            r#"patd_requests_total{code="403",rpc="/v1/forward-auth"}"#,
            1.0,
        ),
        (
            r#"patd_request_duration_seconds_count{rpc="patd.v1.TokenService/Introspect"}"#,
            5.0,
        ),
        // Issue x3, Revoke, RevokeAll; a lookup per token checked (the
        // malformed one never reaches the store).
        (r#"patd_store_duration_seconds_count{op="issue"}"#, 3.0),
        (r#"patd_store_duration_seconds_count{op="revoke"}"#, 1.0),
        (r#"patd_store_duration_seconds_count{op="revoke_all"}"#, 1.0),
        (r#"patd_store_duration_seconds_count{op="lookup"}"#, 7.0),
    ] {
        assert_eq!(delta(series), expected, "{series}\n{after}");
    }
    // Nothing else counted a token check.
    let checks: f64 = new
        .iter()
        .filter(|(k, _)| k.starts_with("patd_introspections_total"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(checks, 9.0, "{after}");

    // Exactly the issue's names: no doubled `_total`, no stray unit.
    for sample in new.keys().filter(|k| k.starts_with("patd")) {
        assert!(
            METRIC_NAMES.contains(&family(sample)),
            "unexpected metric {sample}"
        );
    }
    // Labels carry no account, token or id.
    for secret in [&account, &token, &scoped, &revoked, &token_id, &revoked_id] {
        assert!(!after.contains(secret.as_str()), "{secret} in /metrics");
    }

    // At the default level, token checks leave no line (the metrics count
    // them); management RPCs keep theirs.
    let logged = eventually(Duration::from_secs(5), || async {
        patd.logs().contains(r#"rpc="RevokeAll""#)
    })
    .await;
    let logs = patd.logs();
    assert!(logged, "{logs}");
    assert!(logs.contains(r#"rpc="Issue""#), "{logs}");
    for hot in ["Introspect", "Check", "ForwardAuth"] {
        assert!(!logs.contains(&format!(r#"rpc="{hot}""#)), "{hot}: {logs}");
    }
}

#[tokio::test]
async fn metrics_can_be_turned_off() {
    let patd = Patd::spawn(PatdOptions::new(Backend::Memory).env("PATD_METRICS", "false")).await;
    let reply = get(patd.http_addr, "/metrics", &[]).await;
    assert_eq!(reply.status, 404);
    assert_eq!(get(patd.http_addr, "/healthz", &[]).await.status, 200);
}

/// The shipped Grafana dashboard queries only metrics patd exports.
#[test]
fn the_dashboard_queries_only_exported_metrics() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/grafana/patd-dashboard.json"
    );
    let text = std::fs::read_to_string(path).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 6, "{exprs:?}");
    // Beyond the issue's names, those README's metrics table documents.
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let documented: BTreeSet<&str> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|name| name.starts_with("patd_"))
        .collect();
    let mut used = BTreeSet::new();
    for expr in &exprs {
        let mut rest = expr.as_str();
        while let Some(at) = rest.find("patd_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            let family = family(&name);
            assert!(
                METRIC_NAMES.contains(&family) || documented.contains(family),
                "the dashboard queries {name}, which patd does not export"
            );
            used.insert(family.to_owned());
        }
    }
    for name in METRIC_NAMES {
        assert!(used.contains(name), "no panel for {name}");
    }
}

fn collect_exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}
