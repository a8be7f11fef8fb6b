//! Redis going away: patd fails closed (UNAVAILABLE), stays up, reports
//! NOT_SERVING for the token service, and recovers by itself.

use std::time::Duration;

use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::helpers::{Patd, RedisServer, eventually, is_active, issue, issue_request, random_name};
use crate::helpers::{health_becomes, kill_redis_until_unavailable};

#[tokio::test]
async fn redis_down_fails_closed_and_recovery_needs_no_restart() {
    let mut redis = RedisServer::start();
    let mut patd = Patd::redis(&redis).await;
    let mut client = patd.client().await;
    let channel = patd.channel().await;
    let account = random_name("acct-");
    let (token, _) = issue(&mut client, &account, 600).await;
    assert!(is_active(&mut client, &token).await);

    kill_redis_until_unavailable(&mut redis, &client, &token).await;
    let introspect = client
        .introspect(&token)
        .await
        .expect_err("no answer without the store");
    assert_eq!(introspect.code(), Code::Unavailable);
    assert!(!introspect.message().contains(&token));
    let issue_err = client
        .issue(issue_request(&account, 60))
        .await
        .expect_err("issue");
    assert_eq!(issue_err.code(), Code::Unavailable);
    let list_err = client.list(&account).await.expect_err("list");
    assert_eq!(list_err.code(), Code::Unavailable);
    // Malformed tokens need no store: still a definite answer.
    assert!(!is_active(&mut client, "garbage").await);

    let not_serving = health_becomes(
        &channel,
        "patd.v1.TokenService",
        ServingStatus::NotServing,
        Duration::from_secs(10),
    )
    .await;
    assert!(not_serving, "health did not report the store outage");
    assert!(patd.is_running());

    redis.restart();
    let back = eventually(Duration::from_secs(15), || {
        let mut c = client.clone();
        let account = account.clone();
        async move { c.issue(issue_request(&account, 60)).await.is_ok() }
    })
    .await;
    assert!(back, "patd did not recover after redis came back");
    // The restarted Redis had no persistence: the old token is gone, and
    // patd says so instead of guessing.
    assert!(!is_active(&mut client, &token).await);
    let (fresh, _) = issue(&mut client, &account, 60).await;
    assert!(is_active(&mut client, &fresh).await);
    let serving = health_becomes(
        &channel,
        "patd.v1.TokenService",
        ServingStatus::Serving,
        Duration::from_secs(10),
    )
    .await;
    assert!(serving);
    assert!(patd.logs().contains("outcome=\"unavailable\""));
}

#[tokio::test]
async fn patd_starts_while_redis_is_down_and_serves_once_it_is_up() {
    let mut redis = RedisServer::start();
    redis.kill();
    let patd = Patd::redis(&redis).await;
    let mut client = patd.client().await;
    let err = client.introspect(&"pat_x".repeat(11)).await;
    // A malformed token is inactive even without a store.
    assert!(!err.expect("malformed needs no store").active);
    let refused = client
        .issue(issue_request("acct", 60))
        .await
        .expect_err("down");
    assert_eq!(refused.code(), Code::Unavailable);
    redis.restart();
    let up = eventually(Duration::from_secs(15), || {
        let mut c = client.clone();
        async move { c.issue(issue_request("acct", 60)).await.is_ok() }
    })
    .await;
    assert!(up);
}

#[tokio::test]
async fn a_stalled_redis_times_out_as_unavailable() {
    let redis = RedisServer::start();
    let patd = crate::helpers::Patd::spawn(
        crate::helpers::PatdOptions::new(crate::helpers::Backend::Redis { url: redis.url() })
            .env("PATD_REDIS_TIMEOUT", "300ms"),
    )
    .await;
    let mut client = patd.client().await;
    let (token, _) = issue(&mut client, "acct", 600).await;
    // Freeze Redis for 3 s: it accepts bytes but answers nothing.
    redis.pause(3000);
    let started = std::time::Instant::now();
    let err = client.introspect(&token).await.expect_err("stalled");
    assert_eq!(err.code(), Code::Unavailable);
    assert!(
        started.elapsed() < Duration::from_millis(2900),
        "answered before the pause ended"
    );
    let back = eventually(Duration::from_secs(10), || {
        let mut c = client.clone();
        let t = token.clone();
        async move { is_active_ok(&mut c, &t).await }
    })
    .await;
    assert!(back);
}

async fn is_active_ok(client: &mut crate::helpers::Client, token: &str) -> bool {
    client
        .introspect(token)
        .await
        .map(|r| r.active)
        .unwrap_or(false)
}
