//! One `run`: connect, set up (untimed), start the clock, spawn the
//! scenario's load tasks, merge what they recorded, clean up, report.
//! Returns whether every outcome was the expected one.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use crate::cli::{RunArgs, Scenario};
use crate::driver::{self, Client, Clock};
use crate::rng::Rng;
use crate::stats::Recorder;
use crate::{forward_auth, introspect, issue, mixed, report, setup};

type Task = Pin<Box<dyn Future<Output = Recorder> + Send>>;

pub async fn run(args: RunArgs) -> Result<bool, String> {
    if args.expect_baseline && args.scenario == Scenario::ForwardAuth {
        return Err("the baseline server has no HTTP listener: no forward-auth against it".into());
    }
    if args.scenario.needs_fleet() {
        setup::check(&args)?;
    }
    let channels = driver::connect_grpc(&args.grpc_addr, args.connections).await?;
    let setup_started = Instant::now();
    let fleet = if args.scenario.needs_fleet() {
        Some(Arc::new(setup::prepare(&channels, &args).await?))
    } else {
        None
    };
    let setup_secs = setup_started.elapsed().as_secs_f64();

    let clock = Clock::start(*args.warmup, *args.duration, args.requests);
    let tasks = tasks(&args, &channels, fleet.as_ref(), &clock)?;
    let recorded = driver::join(tasks).await?;
    let primary = match args.scenario {
        Scenario::Introspect => introspect::OP,
        Scenario::Issue => issue::OP,
        Scenario::ForwardAuth => forward_auth::OP,
        Scenario::Mixed => mixed::OP,
    };
    let summary = recorded.summarize(primary, clock.measure_start());
    if let Some(fleet) = &fleet {
        setup::cleanup(&channels, fleet).await;
    }

    let table = report::table(&args, &summary, setup_secs);
    if args.json {
        eprint!("{table}");
        println!("{}", report::json(&args, &summary, setup_secs)?);
    } else {
        print!("{table}");
    }
    let unexpected = summary.unexpected();
    if unexpected > 0 {
        eprintln!("patd-bench: FAILED: {unexpected} unexpected outcomes (see outcomes above)");
        return Ok(false);
    }
    if summary.primary.count == 0 {
        eprintln!("patd-bench: FAILED: no operation was measured");
        return Ok(false);
    }
    Ok(true)
}

/// `--in-flight` tasks per connection, each with its own seeded stream.
fn tasks(
    args: &RunArgs,
    channels: &[tonic::transport::Channel],
    fleet: Option<&Arc<setup::Fleet>>,
    clock: &Arc<Clock>,
) -> Result<Vec<Task>, String> {
    let need_fleet = || {
        fleet
            .cloned()
            .ok_or_else(|| "internal: the scenario has no fleet".to_owned())
    };
    let nonce: Arc<str> = fleet.map_or_else(setup::nonce, |f| f.nonce.clone()).into();
    let baseline = args.expect_baseline;
    let mut tasks: Vec<Task> = Vec::new();
    for (c, channel) in channels.iter().enumerate() {
        for f in 0..args.in_flight as usize {
            let stream = (c * args.in_flight as usize + f + 1) as u64;
            let rng = Rng::new(args.seed, stream);
            let client = Client::new(channel.clone());
            let clock = clock.clone();
            tasks.push(match args.scenario {
                Scenario::Introspect => Box::pin(introspect::task(
                    client,
                    need_fleet()?,
                    clock,
                    rng,
                    baseline,
                )),
                Scenario::Issue => {
                    Box::pin(issue::task(client, nonce.clone(), clock, rng, baseline))
                }
                Scenario::ForwardAuth => Box::pin(forward_auth::task(
                    args.http_addr,
                    need_fleet()?,
                    clock,
                    rng,
                )),
                Scenario::Mixed => Box::pin(mixed::task(
                    client,
                    need_fleet()?,
                    clock,
                    rng,
                    baseline,
                    args.management,
                )),
            });
        }
    }
    Ok(tasks)
}
