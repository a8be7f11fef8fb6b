//! `patd-bench`: the load generator and baseline server for patd.
//!
//! This file owns only the entry point: parse the command line, start the
//! runtime, hand over to the subcommand and turn its result into an exit
//! code (0 all answers correct, 1 an unexpected outcome, 2 the run could
//! not be set up). The work lives in the modules next to this file.
//!
//! ```text
//! patd-bench baseline-server --addr 127.0.0.1:0
//! patd-bench run introspect --grpc-addr 127.0.0.1:50051 --connections 8 --in-flight 32 --json
//! patd-bench redis-rtt --url redis://127.0.0.1:6379
//! patd-bench propagation --a 127.0.0.1:50051 --b 127.0.0.1:50052 --trials 1000
//! ```

mod baseline;
mod cli;
mod derived;
mod driver;
mod forward_auth;
mod introspect;
mod issue;
mod mixed;
mod propagation;
mod redis_rtt;
mod report;
mod rng;
mod run;
mod setup;
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
            Command::BaselineServer {
                addr,
                tcp_nodelay,
                redis_url,
            } => baseline::serve(addr, tcp_nodelay, redis_url.as_deref())
                .await
                .map(|()| true),
            Command::Propagation(args) => propagation::run(args).await,
            Command::H2loadBody { grpc_addr, out } => propagation::h2load_body(&grpc_addr, &out)
                .await
                .map(|()| true),
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
