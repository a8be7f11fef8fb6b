//! Logging and tracing set-up: one place that knows the tracing subscriber
//! and the OpenTelemetry providers (traces and metrics, configured by the
//! standard `OTEL_*` variables), W3C trace-context extraction, plus the
//! helpers that turn errors and panics into log text. `RUST_LOG` picks the
//! levels (default `info`); lines go to stderr through a background
//! writer, so a request never waits on a `write(2)`.

use std::error::Error;
use std::fmt::Write as _;
use std::io::IsTerminal;

use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_appender::non_blocking::WorkerGuard;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::{FilterExt as _, Targets, filter_fn};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// The log filter from `RUST_LOG` (default `info`). Each comma-separated
/// directive must be a level (`trace`, `debug`, `info`, `warn`, `error`,
/// `off`) or `target=level`: a bare word such as `verbose` would parse as a
/// target and silently turn every other line off.
///
/// # Errors
/// The first directive that is neither, or one `tracing` refuses.
pub fn log_filter(rust_log: Option<&str>) -> Result<EnvFilter, String> {
    let Some(spec) = rust_log.filter(|s| !s.trim().is_empty()) else {
        return Ok(EnvFilter::new("info"));
    };
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    for directive in spec.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let is_level = LEVELS.iter().any(|l| l.eq_ignore_ascii_case(directive));
        if !is_level && !directive.contains('=') {
            return Err(format!(
                "RUST_LOG: {directive:?} is neither a level ({}) nor target=level",
                LEVELS.join(", ")
            ));
        }
    }
    EnvFilter::try_new(spec).map_err(|e| format!("RUST_LOG: {e}"))
}

/// What `init` set up; hold it until exit, then call
/// [`Telemetry::shutdown`] to flush spans, metrics and log lines.
pub struct Telemetry {
    _log: WorkerGuard,
    tracer: Option<SdkTracerProvider>,
    meter: Option<SdkMeterProvider>,
}

impl Telemetry {
    /// Exports what is still buffered (spans, a last metrics push) and
    /// stops the exporters. Blocks up to the exporters' timeouts; call it
    /// while the runtime that built them still runs.
    pub fn shutdown(self) {
        if let Some(tracer) = &self.tracer
            && let Err(e) = tracer.shutdown()
        {
            tracing::warn!(error = %e, "could not flush the last spans");
        }
        if let Some(meter) = &self.meter
            && let Err(e) = meter.shutdown()
        {
            tracing::warn!(error = %e, "could not flush the last metrics");
        }
    }
}

/// A standard `OTEL_*` variable, when set to something.
fn otel_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The resource patd's spans and metrics describe: `OTEL_SERVICE_NAME`
/// (default `patd`) and `OTEL_RESOURCE_ATTRIBUTES`, read by the SDK.
fn resource() -> Resource {
    let builder = Resource::builder();
    let named = otel_var("OTEL_SERVICE_NAME").is_some()
        || otel_var("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|a| a.contains("service.name="));
    match named {
        true => builder.build(),
        false => builder.with_service_name("patd").build(),
    }
}

/// Installs the global subscriber and, as the standard `OTEL_*` variables
/// say, the OpenTelemetry providers:
/// - traces are exported by OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` or
///   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set (sampler from
///   `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`);
/// - metrics are pushed by OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` or
///   `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` is set (every
///   `OTEL_METRIC_EXPORT_INTERVAL` ms), and kept for `/metrics` when
///   `prometheus` is true.
///
/// Without an endpoint nothing is exported and no background work runs.
/// Must run inside the Tokio runtime that serves (the gRPC exporters'
/// connections live there).
///
/// # Errors
/// An invalid `RUST_LOG` (see [`log_filter`]), or an exporter that cannot
/// be built (e.g. a malformed endpoint URL).
pub fn init(format: LogFormat, prometheus: bool) -> Result<Telemetry, String> {
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = log_filter(rust_log.as_deref())?;
    let ansi = std::io::stderr().is_terminal() && format == LogFormat::Text;
    // Under a flood the buffer (128k lines) may fill; then lines are dropped
    // rather than requests slowed.
    // The worker writes each line into this buffer and flushes once per
    // batch: one write(2) per burst of lines instead of one per line.
    let stderr = std::io::BufWriter::with_capacity(64 * 1024, std::io::stderr());
    let (writer, guard) = tracing_appender::non_blocking(stderr);
    // Log lines are events only: request spans are for OpenTelemetry, and
    // would otherwise prefix every line.
    let lines = filter.and(filter_fn(|meta| meta.is_event()));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(ansi);
    let fmt = match format {
        LogFormat::Text => fmt.with_target(false).with_filter(lines).boxed(),
        // Targets stay in JSON: pipelines route on them (e.g. `audit`).
        LogFormat::Json => fmt.json().flatten_event(true).with_filter(lines).boxed(),
    };

    // Only the gRPC exporter is built in: another protocol would send to
    // a port that does not speak it, silently.
    for name in [
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
    ] {
        if let Some(protocol) = otel_var(name)
            && protocol.trim() != "grpc"
        {
            return Err(format!(
                "{name}={protocol:?}: patd exports OTLP over gRPC only (set it to \"grpc\" or unset it)"
            ));
        }
    }
    let resource = resource();
    let traced = otel_var("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
        || otel_var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some();
    let tracer = match traced {
        true => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .build()
                .map_err(|e| format!("OTLP span exporter: {e}"))?;
            Some(
                SdkTracerProvider::builder()
                    .with_resource(resource.clone())
                    .with_batch_exporter(exporter)
                    .build(),
            )
        }
        false => None,
    };
    // Only patd's own spans, never its events (those are log lines).
    let spans = tracer.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("patd"))
            // A span starts when its first child does or it ends, so a
            // handler can still set its parent from the request body
            // (ext_authz's inner headers).
            .with_context_activation(false)
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_level(false)
            .with_tracked_inactivity(false)
            .with_filter(
                Targets::new()
                    .with_target("patd", tracing::Level::INFO)
                    .and(filter_fn(|meta| meta.is_span())),
            )
    });

    let pushed = otel_var("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
        || otel_var("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT").is_some();
    let meter = match (prometheus, pushed) {
        (false, false) => None,
        _ => {
            let mut builder = SdkMeterProvider::builder().with_resource(resource);
            if prometheus {
                builder = builder.with_reader(crate::metrics::prometheus_reader()?);
            }
            if pushed {
                let exporter = opentelemetry_otlp::MetricExporter::builder()
                    .with_tonic()
                    .build()
                    .map_err(|e| format!("OTLP metric exporter: {e}"))?;
                builder = builder.with_periodic_exporter(exporter);
            }
            let provider = builder.build();
            opentelemetry::global::set_meter_provider(provider.clone());
            Some(provider)
        }
    };

    // Not `.with(Option<layer>)`: an absent layer there says "always" to
    // every callsite, which would make every span and event of every
    // crate (h2's included) live on the hot path.
    let lines_only = tracing_subscriber::registry().with(fmt);
    let _ = match spans {
        Some(spans) => lines_only.with(spans).try_init(),
        None => lines_only.try_init(),
    };
    tracing::info!(
        otlp_traces = traced,
        otlp_metrics = pushed,
        prometheus,
        "telemetry"
    );
    Ok(Telemetry {
        _log: guard,
        tracer,
        meter,
    })
}

/// Reads W3C trace context from HTTP headers (gRPC metadata is HTTP/2
/// headers).
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Makes the W3C `traceparent` / `tracestate` in `headers` the parent of
/// `span` (a request's server span), so patd's spans join the caller's
/// trace. Nothing is read unless the span is exported.
pub fn parent_from_headers(span: &tracing::Span, headers: &http::HeaderMap) {
    if span.is_disabled() || !headers.contains_key("traceparent") {
        return;
    }
    let cx = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    let _ = span.set_parent(cx);
}

/// As [`parent_from_headers`], from a map of lower-case header names (the
/// headers of the request an ext_authz `CheckRequest` describes). Replaces
/// a parent set from the call's own metadata: the user's request is the
/// trace patd's decision belongs to.
pub fn parent_from_map(span: &tracing::Span, headers: &std::collections::HashMap<String, String>) {
    if span.is_disabled() || !headers.contains_key("traceparent") {
        return;
    }
    let cx = TraceContextPropagator::new().extract(headers);
    let _ = span.set_parent(cx);
}

/// An error and all its causes on one line: "a: b: c". A cause whose text
/// its parent already quotes (`#[error("store: {0}")]` over a `#[from]`
/// source) is printed once, not twice.
pub fn error_chain(e: &dyn Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            let _ = write!(out, ": {text}");
        }
        source = cause.source();
    }
    out
}

/// The text of a panic payload, for the log only (never sent to a caller).
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("non-text panic payload")
}

/// Whether `rpc` (as outcome lines name it) is a token check on the hot
/// path (`Introspect`, ext_authz `Check`, `ForwardAuth`): its outcome line
/// is DEBUG, since `patd_introspections_total` and the request metrics
/// count it; management RPCs keep their INFO line.
pub fn is_hot_path(rpc: &str) -> bool {
    matches!(rpc, "Introspect" | "Check" | "ForwardAuth")
}

/// How an outcome line names a request: the gRPC method, taken from its
/// path when the line is written (`/pkg.Service/Method` -> `Method`, as the
/// service layer names it), or a fixed name.
pub enum RpcName {
    Grpc(http::Uri),
    Fixed(&'static str),
}

impl RpcName {
    fn as_str(&self) -> &str {
        match self {
            RpcName::Grpc(uri) => uri.path().rsplit('/').next().unwrap_or_default(),
            RpcName::Fixed(name) => name,
        }
    }
}

/// The one outcome line of a request whose handler never wrote its own:
/// shed, past a deadline, panicked ([`Unfinished::finish`]), or dropped
/// because the client went away (on drop: `outcome="cancelled"`, gRPC's
/// CANCELLED). Same fields as the service layer's lines. Call
/// [`Unfinished::answered`] once the handler answered (it logged).
pub struct Unfinished {
    rpc: RpcName,
    started: std::time::Instant,
    armed: bool,
}

impl Unfinished {
    pub fn new(rpc: RpcName) -> Self {
        Self {
            rpc,
            started: std::time::Instant::now(),
            armed: true,
        }
    }

    /// Writes the line with `outcome`.
    pub fn finish(mut self, outcome: &'static str) {
        self.log(outcome);
    }

    /// The handler answered and wrote its own line.
    pub fn answered(&mut self) {
        self.armed = false;
    }

    fn log(&mut self, outcome: &'static str) {
        let latency_us = u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let rpc = self.rpc.as_str();
        match is_hot_path(rpc) {
            true => tracing::debug!(rpc, outcome, latency_us, "rpc"),
            false => tracing::info!(rpc, outcome, latency_us, "rpc"),
        }
        self.armed = false;
    }
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        if self.armed {
            self.log("cancelled");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_takes_levels_and_target_directives_only() {
        for good in [
            None,
            Some(""),
            Some("info"),
            Some("WARN"),
            Some("patd=debug,info"),
        ] {
            assert!(log_filter(good).is_ok(), "{good:?}");
        }
        for bad in ["verbose", "info,loud", "patd=loud"] {
            let e = log_filter(Some(bad)).unwrap_err();
            assert!(e.starts_with("RUST_LOG"), "{e}");
        }
    }

    #[test]
    fn each_cause_is_printed_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("inner detail")]
        struct Inner;
        #[derive(Debug, thiserror::Error)]
        #[error("store: {0}")]
        struct Outer(#[from] Inner);
        #[derive(Debug, thiserror::Error)]
        #[error("cannot start")]
        struct Top(#[source] Outer);
        assert_eq!(
            error_chain(&Top(Outer(Inner))),
            "cannot start: store: inner detail"
        );
    }
}
