//! Logging set-up: one place that knows the tracing subscriber, plus the
//! helpers that turn errors and panics into log text. `RUST_LOG`
//! picks the levels (default `info`); lines go to stderr through a
//! background writer, so a request never waits on a `write(2)`.

use std::error::Error;
use std::fmt::Write as _;
use std::io::IsTerminal;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

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

/// Installs the global subscriber. Keep the returned guard until exit:
/// dropping it flushes the lines still buffered.
///
/// # Errors
/// An invalid `RUST_LOG` (see [`log_filter`]).
pub fn init(format: LogFormat) -> Result<WorkerGuard, String> {
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = log_filter(rust_log.as_deref())?;
    let ansi = std::io::stderr().is_terminal() && format == LogFormat::Text;
    // Under a flood the buffer (128k lines) may fill; then lines are dropped
    // rather than requests slowed.
    // The worker writes each line into this buffer and flushes once per
    // batch: one write(2) per burst of lines instead of one per line.
    let stderr = std::io::BufWriter::with_capacity(64 * 1024, std::io::stderr());
    let (writer, guard) = tracing_appender::non_blocking(stderr);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi);
    let _ = match format {
        LogFormat::Text => builder.with_target(false).try_init(),
        // Targets stay in JSON: pipelines route on them (e.g. `audit`).
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    Ok(guard)
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
        tracing::info!(rpc = self.rpc.as_str(), outcome, latency_us, "rpc");
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
