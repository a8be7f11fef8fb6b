//! The `patd` binary: parse config, start logging, build the app, serve
//! until SIGINT or SIGTERM; SIGHUP reloads the callers and TLS files.

use std::process::ExitCode;

use clap::error::ErrorKind;
use patd::config::{Command, Config, LoadError};
use patd::server::Application;
use patd::settings::Settings;
use tokio_util::sync::CancellationToken;

/// glibc's allocator was ~15% of patd's CPU under Introspect load (many
/// small, short-lived buffers across threads); mimalloc handles that pattern
/// far more cheaply.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let config = match Config::load(std::env::args_os()) {
        Ok(c) => c,
        Err(LoadError::Cli(e))
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) =>
        {
            e.exit()
        }
        Err(e) => return fail(&e.to_string()),
    };
    if let Some(Command::CallerKey { name, roles }) = &config.command {
        let (key, entry) = patd::auth::new_caller_key(name, roles);
        println!("# caller key for {name} (shown once; store it in the caller's secrets):");
        println!("{key}");
        println!();
        println!("# add to PATD_CALLERS_FILE:");
        print!("{entry}");
        return ExitCode::SUCCESS;
    }
    if !config.allow_core_dumps
        && let Err(e) = forbid_core_dumps()
    {
        return fail(&format!("cannot turn core dumps off: {e}"));
    }
    let settings = match Settings::try_from(config) {
        Ok(s) => s,
        Err(e) => return fail(&patd::telemetry::error_chain(&e)),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    // The OTLP exporters' connections live on this runtime.
    let entered = runtime.enter();
    // Held to the end of main: shutting it down flushes spans, metrics and
    // the log.
    let telemetry = match patd::telemetry::init(settings.log_format, settings.metrics) {
        Ok(telemetry) => telemetry,
        Err(reason) => return fail(&reason),
    };
    drop(entered);
    let code = runtime.block_on(async move {
        let app = match Application::build(settings).await {
            Ok(app) => app,
            Err(e) => return fail(&patd::telemetry::error_chain(&e)),
        };
        let shutdown = CancellationToken::new();
        tokio::spawn(on_signal(shutdown.clone()));
        tokio::spawn(on_hangup(app.reloader()));
        match app.run(shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&patd::telemetry::error_chain(&e)),
        }
    });
    // The last spans and metrics, exported while the runtime still runs.
    telemetry.shutdown();
    code
}

/// Sets the core-file limit to 0 before any secret is read from a file:
/// a crash must not write digest keys, the Redis password or tokens to
/// disk (PATD_ALLOW_CORE_DUMPS opts out).
fn forbid_core_dumps() -> std::io::Result<()> {
    let (_, hard) = rlimit::getrlimit(rlimit::Resource::CORE)?;
    rlimit::setrlimit(rlimit::Resource::CORE, 0, hard)
}

fn fail(reason: &str) -> ExitCode {
    eprintln!("patd: {reason}");
    ExitCode::from(2)
}

/// Reloads the callers file and TLS files on every SIGHUP (whose default
/// action would end the process).
async fn on_hangup(reloader: patd::reload::Reloader) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; reload by restarting");
            return;
        };
        while hangups.recv().await.is_some() {
            reloader.reload();
        }
    }
    #[cfg(not(unix))]
    let _ = reloader;
}

/// Cancels `shutdown` on the first SIGINT or SIGTERM.
async fn on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    shutdown.cancel();
}
