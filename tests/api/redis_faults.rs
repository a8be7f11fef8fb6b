//! Faults injected into a real Redis under load: a full Redis (maxmemory
//! with noeviction), a write pause such as `FAILOVER` makes, and an Issue
//! that times out while Redis is stopped right after a restart.

use std::time::Duration;

use tonic::Code;

use crate::helpers::{Backend, Patd, PatdOptions, RedisServer, eventually, issue_request};
use crate::http_helpers::get;

fn info_memory(redis: &RedisServer, field: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query(&mut redis.conn())
        .expect("INFO");
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().parse().ok())
        .expect("memory field")
}

#[tokio::test]
async fn a_full_redis_refuses_new_tokens_and_keeps_revoking() {
    let redis = RedisServer::start();
    for (key, value) in [("maxmemory", "2mb"), ("maxmemory-policy", "noeviction")] {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg(key)
            .arg(value)
            .query(&mut redis.conn())
            .expect("CONFIG SET");
    }
    let patd = Patd::spawn(
        PatdOptions::new(Backend::Redis { url: redis.url() })
            .env("PATD_MAX_TOKENS_PER_ACCOUNT", "100000"),
    )
    .await;
    let mut client = patd.client().await;
    let mut issued = Vec::new();
    let mut refusal = None;
    for i in 0..20_000 {
        let mut request = issue_request("acct-full", 3600);
        request.note = format!("{i:0>256}");
        match client.issue(request).await {
            Ok(r) => issued.push((r.token, r.info.expect("info").token_id)),
            Err(status) => {
                refusal = Some(status);
                break;
            }
        }
    }
    let refusal = refusal.expect("a full Redis refused an Issue");
    assert_eq!(refusal.code(), Code::ResourceExhausted, "{refusal:?}");
    assert!(refusal.message().contains("full"), "{refusal:?}");
    assert!(
        issued.len() > 100,
        "Redis filled after {} tokens",
        issued.len()
    );
    // The refusal came before Redis grew past its limit, not after.
    let used = info_memory(&redis, "used_memory");
    let max = info_memory(&redis, "maxmemory");
    assert!(used < max + max / 4, "used {used} bytes of maxmemory {max}");
    // Checking and revoking still work on a full store.
    let (token, token_id) = issued.pop().expect("a token");
    assert!(client.introspect(&token).await.expect("introspect").active);
    client
        .revoke("acct-full", &token_id)
        .await
        .expect("revoke on a full store");
    assert!(!client.introspect(&token).await.expect("introspect").active);
    let revoked = client
        .revoke_all("acct-full")
        .await
        .expect("revoke all on a full store")
        .revoked;
    assert_eq!(revoked as usize, issued.len());
    // With room again, Issue works.
    client
        .issue(issue_request("acct-full", 3600))
        .await
        .expect("issue after freeing memory");
}

#[tokio::test]
async fn a_paused_write_never_stalls_introspection() {
    let redis = RedisServer::start();
    let patd = Patd::redis(&redis).await;
    let mut client = patd.client().await;
    let token = client
        .issue(issue_request("acct-pause", 3600))
        .await
        .expect("issue")
        .token;
    // What FAILOVER does: writes wait, reads go on.
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(3000)
        .arg("WRITE")
        .query(&mut redis.conn())
        .expect("CLIENT PAUSE WRITE");
    // The first use records last-used: a write, stuck until the pause ends.
    for _ in 0..10 {
        let answer = client.introspect(&token).await;
        assert!(
            answer.as_ref().is_ok_and(|a| a.active),
            "Introspect during a write pause: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ready = get(patd.http_addr, "/readyz", &[]).await;
    assert_eq!(ready.status, 200, "readiness is a read");
}

#[tokio::test]
async fn an_issue_that_timed_out_is_undone_once_redis_answers_again() {
    let redis = RedisServer::start();
    let patd = Patd::spawn(
        PatdOptions::new(Backend::Redis { url: redis.url() })
            .env("PATD_MAX_TOKENS_PER_ACCOUNT", "1"),
    )
    .await;
    let mut client = patd.client().await;
    // A fresh Redis knows only the Issue script from here on: the undo's
    // Revoke script will meet NOSCRIPT when Redis resumes.
    client
        .issue(issue_request("acct-warm", 3600))
        .await
        .expect("warm-up issue");
    redis.signal("STOP");
    let timed_out = client.issue(issue_request("acct-undo", 3600)).await;
    // Longer than the undo's first attempt, so it must try again.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    redis.signal("CONT");
    let status = timed_out.expect_err("Redis was stopped");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    // Whether or not the stopped Issue landed, the account's one slot must
    // come free: nobody ever saw that token.
    let freed = eventually(Duration::from_secs(15), || {
        let mut client = client.clone();
        async move { client.issue(issue_request("acct-undo", 3600)).await.is_ok() }
    })
    .await;
    assert!(
        freed,
        "a phantom token holds the slot; logs:\n{}",
        patd.logs()
    );
    let listed = client.list("acct-undo").await.expect("list").tokens;
    assert_eq!(listed.len(), 1);
}
