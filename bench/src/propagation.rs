//! `propagation`: how long a revocation made through one patd takes to be
//! honoured by another sharing the same Redis (the introspection cache's
//! invalidation path). Each trial issues a token on A, introspects it on B
//! until B answers active three times (so B has it cached), revokes it on
//! A, and from the moment A acknowledges, introspects on B back to back
//! until B says inactive (or UNAVAILABLE: not served active). With
//! `--kill-channel-on`, every Pub/Sub connection of that Redis is killed
//! just before the Revoke. Also writes h2load's request body.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use patd::pb;
use serde::Serialize;

use crate::cli::PropagationArgs;
use crate::driver::{Client, connect_grpc};
use crate::setup::{issue_request, nonce};

/// A TokenService client on one connection to `addr`.
async fn client(addr: &str) -> Result<Client, String> {
    let channel = connect_grpc(addr, 1).await?.pop();
    channel
        .map(Client::new)
        .ok_or_else(|| format!("no connection to {addr}"))
}

/// A trial still active on B after this long is counted as over 1 s and
/// given up.
const GIVE_UP_AFTER: Duration = Duration::from_secs(5);

/// The `--json` output.
#[derive(Serialize)]
struct PropagationReport {
    trials: u64,
    p50_us: u64,
    p99_us: u64,
    max_us: u64,
    over_100ms: u64,
    over_1s: u64,
    channel_killed: bool,
}

async fn active(client: &mut Client, token: &str) -> Result<bool, tonic::Status> {
    client
        .introspect(pb::IntrospectRequest {
            token: token.to_owned(),
        })
        .await
        .map(|r| r.into_inner().active)
}

pub async fn run(args: PropagationArgs) -> Result<bool, String> {
    let mut a = client(&args.a).await?;
    let mut b = client(&args.b).await?;
    let mut killer = match &args.kill_channel_on {
        Some(url) => Some(crate::redis_rtt::connect(url).await?),
        None => None,
    };
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
        .map_err(|e| format!("histogram: {e}"))?;
    let (mut over_100ms, mut over_1s) = (0, 0);
    let run = nonce();
    for trial in 0..args.trials {
        let account = format!("bench-prop-{run}-{trial}");
        let issued = a
            .issue(issue_request(account.clone(), Duration::from_secs(600)))
            .await
            .map_err(|e| format!("Issue on A: {e}"))?
            .into_inner();
        let token_id = issued.info.map(|i| i.token_id).unwrap_or_default();
        // B must have it cached: active three times in a row (a cache that
        // is being bypassed just after a channel kill comes back by itself).
        let mut streak = 0;
        let warm_deadline = Instant::now() + Duration::from_secs(10);
        while streak < 3 {
            if Instant::now() > warm_deadline {
                return Err(format!("trial {trial}: B never answered active"));
            }
            if active(&mut b, &issued.token).await.unwrap_or(false) {
                streak += 1;
            } else {
                streak = 0;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        if let Some(conn) = killer.as_mut() {
            let _: i64 = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("TYPE")
                .arg("pubsub")
                .query_async(conn)
                .await
                .map_err(|e| format!("CLIENT KILL: {e}"))?;
        }
        a.revoke(pb::RevokeRequest {
            account_id: account.clone(),
            token_id,
        })
        .await
        .map_err(|e| format!("Revoke on A: {e}"))?;
        let revoked = Instant::now();
        let took = loop {
            match active(&mut b, &issued.token).await {
                Ok(true) if revoked.elapsed() < GIVE_UP_AFTER => {}
                Ok(true) => break GIVE_UP_AFTER,
                _ => break revoked.elapsed(),
            }
        };
        if took > Duration::from_millis(100) {
            over_100ms += 1;
        }
        if took > Duration::from_secs(1) {
            over_1s += 1;
        }
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        hist.saturating_record(micros.max(1));
    }
    let report = PropagationReport {
        trials: hist.len(),
        p50_us: hist.value_at_quantile(0.5),
        p99_us: hist.value_at_quantile(0.99),
        max_us: hist.max(),
        over_100ms,
        over_1s,
        channel_killed: args.kill_channel_on.is_some(),
    };
    if args.json {
        let line =
            serde_json::to_string(&report).map_err(|e| format!("cannot encode the report: {e}"))?;
        println!("{line}");
    } else {
        println!(
            "revocation on A -> inactive on B over {} trials{}: p50 {} us, p99 {} us, max {} us; over 100 ms: {}, over 1 s: {}",
            report.trials,
            if report.channel_killed {
                " (channel killed before each)"
            } else {
                ""
            },
            report.p50_us,
            report.p99_us,
            report.max_us,
            report.over_100ms,
            report.over_1s
        );
    }
    Ok(report.over_1s == 0)
}

/// Issues one token through `grpc_addr` and writes a framed gRPC
/// IntrospectRequest presenting it to `out`: the length-prefixed message
/// (1 byte uncompressed flag, 4 bytes big-endian length, the protobuf) that
/// h2load posts as is.
pub async fn h2load_body(grpc_addr: &str, out: &std::path::Path) -> Result<(), String> {
    use prost::Message as _;
    let mut client = client(grpc_addr).await?;
    let issued = client
        .issue(issue_request(
            format!("bench-h2load-{}", nonce()),
            Duration::from_secs(2 * 3600),
        ))
        .await
        .map_err(|e| format!("Issue: {e}"))?
        .into_inner();
    let message = pb::IntrospectRequest {
        token: issued.token,
    }
    .encode_to_vec();
    let length = u32::try_from(message.len()).map_err(|_| "message too long")?;
    let mut body = Vec::with_capacity(5 + message.len());
    body.push(0);
    body.extend_from_slice(&length.to_be_bytes());
    body.extend_from_slice(&message);
    std::fs::write(out, body).map_err(|e| format!("cannot write {}: {e}", out.display()))
}
