//! `patd-bench`: the load generator and baseline server for patd.
//!
//! This file owns only the entry point: parse the command line, start the
//! runtime, hand over to the subcommand and turn its result into an exit
//! code (0 all answers correct, 1 an unexpected outcome, 2 the run could
//! not be set up). The work lives in `patd_bench/`.
//!
//! ```text
//! patd-bench baseline-server --addr 127.0.0.1:0
//! patd-bench run introspect --grpc-addr 127.0.0.1:50051 --connections 8 --in-flight 32 --json
//! patd-bench redis-rtt --url redis://127.0.0.1:6379
//! ```

#[path = "patd_bench/baseline.rs"]
mod baseline;
#[path = "patd_bench/cli.rs"]
mod cli;
#[path = "patd_bench/derived.rs"]
mod derived;
#[path = "patd_bench/driver.rs"]
mod driver;
#[path = "patd_bench/forward_auth.rs"]
mod forward_auth;
#[path = "patd_bench/introspect.rs"]
mod introspect;
#[path = "patd_bench/issue.rs"]
mod issue;
#[path = "patd_bench/mixed.rs"]
mod mixed;
#[path = "patd_bench/redis_rtt.rs"]
mod redis_rtt;
#[path = "patd_bench/report.rs"]
mod report;
#[path = "patd_bench/rng.rs"]
mod rng;
#[path = "patd_bench/run.rs"]
mod run;
#[path = "patd_bench/setup.rs"]
mod setup;
#[path = "patd_bench/stats.rs"]
mod stats;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

/// The same allocator as patd, so the baseline measures the same stack and
/// the load generator costs what it would next to patd.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => return setup_failed(&format!("cannot start the runtime: {e}")),
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::BaselineServer { addr, tcp_nodelay } => {
                baseline::serve(addr, tcp_nodelay).await.map(|()| true)
            }
            Command::Run(args) => run::run(args).await,
            Command::RedisRtt(args) => redis_rtt::run(args).await.map(|()| true),
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(reason) => setup_failed(&reason),
    }
}

fn setup_failed(reason: &str) -> ExitCode {
    eprintln!("patd-bench: {reason}");
    ExitCode::from(2)
}
