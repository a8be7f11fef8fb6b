//! `redis-rtt`: the Redis round trip as patd's client sees it, sequential
//! PINGs on one multiplexed connection of the `redis` crate. The serial
//! Introspect target is "baseline p50 x 1.5 + one Redis round trip"; this
//! measures the second term on the same machine, in the same run.

use std::time::Instant;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::cli::RedisRttArgs;

const WARMUP_PINGS: u32 = 200;

/// The `--json` output (`scripts/bench.sh` reads `p50_us`).
#[derive(Serialize)]
struct RttReport {
    count: u64,
    mean_us: f64,
    p50_us: u64,
    p90_us: u64,
    p99_us: u64,
    max_us: u64,
}

/// One multiplexed connection of the `redis` crate (the client patd uses)
/// to `url`.
pub async fn connect(url: &str) -> Result<redis::aio::MultiplexedConnection, String> {
    redis::Client::open(url)
        .map_err(|e| format!("redis URL: {e}"))?
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| format!("cannot connect to Redis: {e}"))
}

pub async fn run(args: RedisRttArgs) -> Result<(), String> {
    let mut conn = connect(&args.url).await?;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
        .map_err(|e| format!("histogram: {e}"))?;
    for i in 0..WARMUP_PINGS + args.count {
        let started = Instant::now();
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(|e| format!("PING: {e}"))?;
        if i >= WARMUP_PINGS {
            let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            hist.saturating_record(micros.max(1));
        }
    }
    let (p50, p90, p99) = (
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.9),
        hist.value_at_quantile(0.99),
    );
    if args.json {
        // serde_json writes a NaN mean as `null`, never invalid JSON.
        let report = RttReport {
            count: hist.len(),
            mean_us: (hist.mean() * 10.0).round() / 10.0,
            p50_us: p50,
            p90_us: p90,
            p99_us: p99,
            max_us: hist.max(),
        };
        let line =
            serde_json::to_string(&report).map_err(|e| format!("cannot encode the report: {e}"))?;
        println!("{line}");
    } else {
        println!(
            "redis PING round trip over {} calls: mean {:.1} us, p50 {p50} us, p90 {p90} us, p99 {p99} us, max {} us",
            hist.len(),
            hist.mean(),
            hist.max()
        );
    }
    Ok(())
}
