//! Logging set-up: one place that knows the tracing subscriber, plus the
//! helpers that turn errors and panics into log text. `RUST_LOG`
//! picks the levels (default `info`); lines go to stderr through a
//! background writer, so a request never waits on a `write(2)`.

use std::error::Error;
use std::fmt::Write as _;
use std::io::IsTerminal;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Keep the returned guard until exit:
/// dropping it flushes the lines still buffered.
pub fn init() -> WorkerGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::stderr().is_terminal();
    // Under a flood the buffer (128k lines) may fill; then lines are dropped
    // rather than requests slowed.
    // The worker writes each line into this buffer and flushes once per
    // batch: one write(2) per burst of lines instead of one per line.
    let stderr = std::io::BufWriter::with_capacity(64 * 1024, std::io::stderr());
    let (writer, guard) = tracing_appender::non_blocking(stderr);
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(false)
        .with_ansi(ansi)
        .try_init();
    guard
}

/// An error and all its causes on one line: "a: b: c".
pub fn error_chain(e: &dyn Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let _ = write!(out, ": {cause}");
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
