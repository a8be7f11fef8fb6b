//! Every request is accounted for, and health follows its protocol:
//! requests cut by patd's deadline, the client's own `grpc-timeout`, or the
//! client going away each get one outcome line (and DEADLINE_EXCEEDED where
//! gRPC defines it); `Health/Watch` on an unknown service stays open with
//! SERVICE_UNKNOWN, and an open watch does not hold patd past its drain.

use std::time::{Duration, Instant};

use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::helpers::{Backend, Patd, PatdOptions, RedisServer, eventually, issue};
use crate::http_helpers::{get, grpc_frame, h2_post, send};

/// The log lines of `patd` (JSON) whose `rpc` and `outcome` are these.
fn lines_with(patd: &Patd, rpc: &str, outcome: &str) -> usize {
    patd.logs()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["rpc"] == rpc && l["outcome"] == outcome)
        .count()
}

async fn line_appears(patd: &Patd, rpc: &str, outcome: &str) -> bool {
    eventually(Duration::from_secs(5), || async {
        lines_with(patd, rpc, outcome) == 1
    })
    .await
}

/// The `grpc-status` patd answers an Introspect sent with `grpc-timeout`,
/// over a bare HTTP/2 connection: tonic's own client would enforce the
/// deadline itself and report its local CANCELLED instead of patd's answer.
async fn introspect_with_grpc_timeout(patd: &Patd, token: &str, timeout: &str) -> Option<String> {
    use prost::Message as _;
    let message = patd::pb::IntrospectRequest {
        token: token.to_owned(),
    }
    .encode_to_vec();
    let (_, status) = h2_post(
        patd.grpc_addr,
        "/patd.v1.TokenService/Introspect",
        &[
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("grpc-timeout", timeout),
        ],
        grpc_frame(&message),
    )
    .await?;
    status
}

#[tokio::test]
async fn deadlines_and_cancellations_each_leave_one_line() {
    let redis = RedisServer::start();
    let patd = Patd::spawn(
        PatdOptions::new(Backend::Redis { url: redis.url() })
            // Token checks' lines are DEBUG.
            .env("RUST_LOG", "info,patd=debug")
            .env("PATD_LOG_FORMAT", "json")
            .env("PATD_REQUEST_TIMEOUT", "400ms")
            .env("PATD_REDIS_TIMEOUT", "3s"),
    )
    .await;
    let mut client = patd.client().await;
    let (token, _) = issue(&mut client, "acct-deadline", 600).await;
    // A stalled store: every call now waits.
    redis.pause(2500);

    // patd's own deadline.
    let cut = client.introspect(&token).await.expect_err("stalled");
    assert_eq!(cut.code(), Code::DeadlineExceeded, "{cut:?}");
    assert!(line_appears(&patd, "Introspect", "deadline_exceeded").await);

    // The client's shorter deadline: DEADLINE_EXCEEDED (4), not CANCELLED.
    let status = introspect_with_grpc_timeout(&patd, &token, "150m").await;
    assert_eq!(status.as_deref(), Some("4"));
    assert!(line_appears(&patd, "Introspect", "deadline_exceeded_client").await);

    // The client goes away: dropped after 100 ms.
    let mut gone = client.clone();
    let abandoned = tokio::time::timeout(Duration::from_millis(100), async move {
        gone.list("acct-deadline").await
    })
    .await;
    assert!(abandoned.is_err(), "the stalled List cannot have answered");
    assert!(
        line_appears(&patd, "List", "cancelled").await,
        "{}",
        patd.logs()
    );
    // ... and is counted as gRPC counts it: CANCELLED.
    let metrics = get(patd.http_addr, "/metrics", &[]).await.body;
    assert!(
        metrics
            .lines()
            .any(|l| l
                == r#"patd_requests_total{code="CANCELLED",rpc="patd.v1.TokenService/List"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.lines().any(|l| l
            == r#"patd_requests_total{code="DEADLINE_EXCEEDED",rpc="patd.v1.TokenService/Introspect"} 2"#),
        "{metrics}"
    );

    // forward-auth past the deadline: 504 and a line.
    let reply = get(
        patd.http_addr,
        "/v1/forward-auth",
        &[("Authorization", &format!("Bearer {token}"))],
    )
    .await;
    assert_eq!(reply.status, 504);
    assert!(line_appears(&patd, "ForwardAuth", "deadline_exceeded").await);

    // The JSON API past the deadline: a 504 problem and a line.
    let reply = send(
        patd.http_addr,
        "GET",
        "/v1/accounts/acct-deadline/tokens",
        &[],
        b"",
    )
    .await;
    assert_eq!(reply.status, 504);
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json")
    );
    assert!(line_appears(&patd, "List", "deadline_exceeded").await);
}

#[tokio::test]
async fn watching_an_unknown_service_stays_open_with_service_unknown() {
    let patd = Patd::memory().await;
    let mut health = HealthClient::new(patd.channel().await);
    let mut stream = health
        .watch(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .expect("Watch of an unknown service is no error")
        .into_inner();
    let first = stream.next().await.expect("a first message").expect("ok");
    assert_eq!(first.status, ServingStatus::ServiceUnknown as i32);
    // And the stream stays open.
    let more = tokio::time::timeout(Duration::from_millis(500), stream.next()).await;
    assert!(more.is_err(), "the watch ended: {more:?}");
    // Check on the same service is NOT_FOUND, per the protocol.
    let check = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(check.code(), Code::NotFound);
}

#[tokio::test]
async fn an_open_watch_ends_at_shutdown_instead_of_holding_patd() {
    let mut patd =
        Patd::spawn(PatdOptions::new(Backend::Memory).env("PATD_SHUTDOWN_GRACE", "500ms")).await;
    let mut health = HealthClient::new(patd.channel().await);
    let mut stream = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("watch")
        .into_inner();
    let first = stream.next().await.expect("first").expect("ok");
    assert_eq!(first.status, ServingStatus::Serving as i32);
    let started = Instant::now();
    patd.terminate();
    let next = stream.next().await.expect("a change").expect("ok");
    assert_eq!(next.status, ServingStatus::NotServing as i32);
    // Then the stream ends cleanly, and patd exits well before its hard
    // deadline (grace + request timeout + 1 s = 6.5 s).
    let end = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("the watch ended");
    assert!(end.is_none(), "ended with OK, got {end:?}");
    let status = patd
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("patd exited");
    assert!(status.success());
    let took = started.elapsed();
    assert!(
        !patd.logs().contains("still open after the drain deadline"),
        "patd waited for its hard deadline ({took:?}): {}",
        patd.logs()
    );
}
