//! The Redis store's introspection cache: it answers from memory, never
//! past a token's expiry or `PATD_CACHE_TTL`, and a revocation made through
//! any instance reaches every other one within the documented bound
//! (`FRESH_FOR`, 1 s), also when the invalidation channel is killed, Redis
//! restarts or Redis stops answering.

use std::time::{Duration, Instant};

use patd::pb::RotateRequest;

use crate::helpers::{
    Backend, Client, Patd, PatdOptions, RedisServer, eventually, is_active, issue, random_name,
};

/// The bound README documents: a revocation acknowledged on one instance is
/// honoured by every other one within 1 s. Tests allow this much on top
/// for a loaded machine to schedule the polling client.
const BOUND: Duration = Duration::from_secs(1);
const SLACK: Duration = Duration::from_millis(1500);

/// Two instances on one Redis and one key prefix, with these settings.
async fn pair(redis: &RedisServer, env: &[(&str, &str)]) -> (Patd, Patd) {
    let prefix = random_name("cache");
    let spawn = || {
        let mut opts = PatdOptions::new(Backend::Redis { url: redis.url() }).key_prefix(&prefix);
        for (k, v) in env {
            opts = opts.env(k, v);
        }
        Patd::spawn(opts)
    };
    let a = spawn().await;
    let b = spawn().await;
    (a, b)
}

/// Waits until `patd`'s cache answers: its channel is up.
async fn channel_up(patd: &Patd) {
    let up = eventually(Duration::from_secs(10), || async {
        patd.logs()
            .contains("the cache's invalidation channel is up")
    })
    .await;
    assert!(
        up,
        "the invalidation channel never came up:\n{}",
        patd.logs()
    );
}

/// Polls Introspect on `client` until `token` reads inactive; how long it
/// took, or `None` if it was still active after `limit`.
async fn time_to_inactive(client: &mut Client, token: &str, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        match client.introspect(token).await {
            Ok(r) if r.active => {}
            // Inactive, or UNAVAILABLE (fail closed): not served active.
            _ => return Some(start.elapsed()),
        }
    }
    None
}

/// Deletes a token's record behind patd's back (no script, so no
/// invalidation is published): only a cache can still call it active.
fn delete_behind_patds_back(redis: &RedisServer, prefix: &str, token_id: &str) {
    let key = format!("{prefix}:{{{}}}:t:{token_id}", &token_id[..3]);
    let deleted: i64 = redis::cmd("DEL")
        .arg(&key)
        .query(&mut redis.conn())
        .expect("DEL");
    assert_eq!(deleted, 1, "{key} existed");
}

#[tokio::test]
async fn a_revocation_on_one_instance_reaches_the_others_cache_within_the_bound() {
    let redis = RedisServer::start();
    let (a, b) = pair(&redis, &[]).await;
    channel_up(&b).await;
    let mut on_a = a.client().await;
    let mut on_b = b.client().await;
    let mut worst = Duration::ZERO;
    for round in 0..20 {
        let account = format!("acct-prop-{round}");
        let (token, token_id) = issue(&mut on_a, &account, 600).await;
        // Warm B's cache.
        for _ in 0..3 {
            assert!(is_active(&mut on_b, &token).await);
        }
        // Every way a token ends early: by id, all of the account's, by
        // value, and a rotation without grace.
        match round % 4 {
            0 => {
                on_a.revoke(&account, &token_id).await.expect("revoke");
            }
            1 => assert_eq!(
                on_a.revoke_all(&account).await.expect("revoke all").revoked,
                1
            ),
            2 => {
                on_a.revoke_token(&token, "leaked")
                    .await
                    .expect("revoke token");
            }
            _ => {
                on_a.rotate(RotateRequest {
                    account_id: account.clone(),
                    token_id: token_id.clone(),
                    grace: Some(pbjson_types::Duration {
                        seconds: 0,
                        nanos: 0,
                    }),
                    ..Default::default()
                })
                .await
                .expect("rotate");
            }
        }
        let took = time_to_inactive(&mut on_b, &token, BOUND + SLACK)
            .await
            .unwrap_or_else(|| panic!("round {round}: still active on B after the bound"));
        worst = worst.max(took);
    }
    eprintln!("worst revocation -> inactive on the other instance: {worst:?}");
}

#[tokio::test]
async fn the_cache_answers_without_redis_but_never_longer_than_its_ttl() {
    let redis = RedisServer::start();
    let (a, b) = pair(&redis, &[("PATD_CACHE_TTL", "2s")]).await;
    channel_up(&b).await;
    let mut on_a = a.client().await;
    let mut on_b = b.client().await;
    let (token, token_id) = issue(&mut on_a, "acct-ttl", 600).await;
    let read_at = Instant::now();
    assert!(is_active(&mut on_b, &token).await);
    delete_behind_patds_back(&redis, &b.key_prefix, &token_id);
    // A never read it: it asks Redis, which no longer has it.
    assert!(!is_active(&mut on_a, &token).await);
    // B still holds the record: proof that it answers from its cache...
    assert!(
        is_active(&mut on_b, &token).await,
        "B did not cache the record"
    );
    // ...but not beyond PATD_CACHE_TTL.
    time_to_inactive(&mut on_b, &token, Duration::from_secs(6))
        .await
        .expect("a cached record outlived PATD_CACHE_TTL");
    let lived = read_at.elapsed();
    assert!(
        lived <= Duration::from_secs(2) + SLACK,
        "cached for {lived:?} with PATD_CACHE_TTL=2s"
    );
}

#[tokio::test]
async fn with_the_cache_off_every_answer_comes_from_redis() {
    let redis = RedisServer::start();
    let (a, b) = pair(&redis, &[("PATD_CACHE_MAX_ENTRIES", "0")]).await;
    let mut on_a = a.client().await;
    let mut on_b = b.client().await;
    let (token, token_id) = issue(&mut on_a, "acct-off", 600).await;
    assert!(is_active(&mut on_b, &token).await);
    delete_behind_patds_back(&redis, &b.key_prefix, &token_id);
    assert!(!is_active(&mut on_b, &token).await);
    assert!(!b.logs().contains("invalidation channel"));
}

#[tokio::test]
async fn a_cached_token_expires_on_time_without_any_invalidation() {
    let redis = RedisServer::start();
    let (a, b) = pair(&redis, &[]).await;
    channel_up(&b).await;
    let mut on_a = a.client().await;
    let mut on_b = b.client().await;
    let (token, _) = issue(&mut on_a, "acct-exp", 2).await;
    let issued = Instant::now();
    assert!(is_active(&mut on_b, &token).await);
    let took = time_to_inactive(&mut on_b, &token, Duration::from_secs(6))
        .await
        .expect("still active long after its expiry");
    let since_issue = issued.elapsed();
    assert!(
        since_issue <= Duration::from_secs(2) + SLACK,
        "inactive only {since_issue:?} after issue ({took:?} of polling)"
    );
}

#[tokio::test]
async fn a_killed_channel_empties_the_cache_and_revocations_still_arrive() {
    let redis = RedisServer::start();
    let (a, b) = pair(&redis, &[]).await;
    channel_up(&b).await;
    let mut on_a = a.client().await;
    let mut on_b = b.client().await;
    for round in 0..5 {
        let account = format!("acct-kill-{round}");
        let (token, token_id) = issue(&mut on_a, &account, 600).await;
        assert!(is_active(&mut on_b, &token).await);
        // Drop every subscription (B's channel among them), then revoke at
        // once: the message is published while B has no subscription.
        let _: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("pubsub")
            .query(&mut redis.conn())
            .expect("CLIENT KILL");
        on_a.revoke(&account, &token_id).await.expect("revoke");
        time_to_inactive(&mut on_b, &token, BOUND + SLACK)
            .await
            .unwrap_or_else(|| {
                panic!("round {round}: served from cache after the channel was killed")
            });
    }
    // The channel comes back and the cache with it.
    let (token, token_id) = issue(&mut on_a, "acct-back", 600).await;
    let cached = eventually(Duration::from_secs(10), || {
        let mut on_b = on_b.clone();
        let token = token.clone();
        async move { is_active(&mut on_b, &token).await }
    })
    .await;
    assert!(cached);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(is_active(&mut on_b, &token).await);
    delete_behind_patds_back(&redis, &b.key_prefix, &token_id);
    assert!(
        is_active(&mut on_b, &token).await,
        "the cache did not recover"
    );
}

#[tokio::test]
async fn a_stopped_redis_bypasses_the_cache_within_the_bound() {
    let redis = RedisServer::start();
    let (a, b) = pair(&redis, &[("PATD_REDIS_TIMEOUT", "300ms")]).await;
    channel_up(&b).await;
    let mut on_a = a.client().await;
    let mut on_b = b.client().await;
    let (token, _) = issue(&mut on_a, "acct-stop", 600).await;
    assert!(is_active(&mut on_b, &token).await);
    // A stopped Redis closes nothing: only the missing PING answers tell.
    redis.signal("STOP");
    let stopped = Instant::now();
    let took = time_to_inactive(&mut on_b, &token, BOUND + SLACK).await;
    redis.signal("CONT");
    took.expect("served from cache long after Redis stopped answering");
    eprintln!("bypassed {:?} after Redis stopped", stopped.elapsed());
    // Once Redis answers again, so does patd.
    let back = eventually(Duration::from_secs(10), || {
        let mut on_b = on_b.clone();
        let token = token.clone();
        async move { is_active(&mut on_b, &token).await }
    })
    .await;
    assert!(back, "{}", b.logs());
}

#[tokio::test]
async fn a_restarted_redis_leaves_nothing_cached() {
    let mut redis = RedisServer::start();
    let (a, b) = pair(&redis, &[]).await;
    channel_up(&b).await;
    let mut on_a = a.client().await;
    let mut on_b = b.client().await;
    let (token, _) = issue(&mut on_a, "acct-restart", 600).await;
    assert!(is_active(&mut on_b, &token).await);
    // The restarted Redis is empty (no persistence in tests): the token is
    // gone, and B must not remember it.
    redis.restart();
    time_to_inactive(&mut on_b, &token, BOUND + SLACK)
        .await
        .expect("served from cache after Redis restarted empty");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!is_active(&mut on_b, &token).await);
}

#[tokio::test]
async fn a_rotated_token_cached_elsewhere_ends_with_its_grace_window() {
    let redis = RedisServer::start();
    let (a, b) = pair(&redis, &[]).await;
    channel_up(&b).await;
    let mut on_a = a.client().await;
    let mut on_b = b.client().await;
    let (token, token_id) = issue(&mut on_a, "acct-rot", 600).await;
    for _ in 0..3 {
        assert!(is_active(&mut on_b, &token).await);
    }
    on_a.rotate(RotateRequest {
        account_id: "acct-rot".to_owned(),
        token_id,
        grace: Some(pbjson_types::Duration {
            seconds: 2,
            nanos: 0,
        }),
        ..Default::default()
    })
    .await
    .expect("rotate");
    let rotated = Instant::now();
    // B drops its copy and reads the record that says when the window
    // closes: active until then, inactive (ROTATED) after.
    assert!(is_active(&mut on_b, &token).await);
    time_to_inactive(&mut on_b, &token, Duration::from_secs(6))
        .await
        .expect("a rotated token outlived its grace window on B");
    let lived = rotated.elapsed();
    assert!(
        lived >= Duration::from_millis(1500) && lived <= Duration::from_secs(2) + SLACK,
        "inactive on B {lived:?} after a Rotate with 2 s of grace"
    );
    let answer = on_b.introspect(&token).await.expect("introspect");
    assert_eq!(answer.reason(), patd::pb::InactiveReason::Rotated);
}

#[tokio::test]
async fn the_cache_counts_hits_misses_invalidations_and_bypass() {
    use crate::observability::{counter, scrape};
    let redis = RedisServer::start();
    let (a, b) = pair(&redis, &[]).await;
    channel_up(&b).await;
    let mut on_a = a.client().await;
    let mut on_b = b.client().await;
    let (token, token_id) = issue(&mut on_a, "acct-metrics", 600).await;
    // Proven fresh: the first PING is answered within moments.
    let fresh = eventually(Duration::from_secs(5), || async {
        counter(&scrape(&b).await, "patd_cache_bypass") == 0.0
    })
    .await;
    assert!(fresh, "{}", scrape(&b).await);
    let before = scrape(&b).await;
    // One miss fills the cache, five hits follow.
    for _ in 0..6 {
        assert!(is_active(&mut on_b, &token).await);
    }
    let after = scrape(&b).await;
    let delta = |name: &str| counter(&after, name) - counter(&before, name);
    assert_eq!(delta("patd_cache_misses_total"), 1.0, "{after}");
    assert_eq!(delta("patd_cache_hits_total"), 5.0, "{after}");
    on_a.revoke("acct-metrics", &token_id)
        .await
        .expect("revoke");
    let invalidated = eventually(Duration::from_secs(3), || async {
        counter(&scrape(&b).await, "patd_cache_invalidations_total")
            > counter(&after, "patd_cache_invalidations_total")
    })
    .await;
    assert!(invalidated, "{}", scrape(&b).await);
    // A stopped Redis: the cache is bypassed, and the gauge says so.
    redis.signal("STOP");
    let bypassed = eventually(Duration::from_secs(5), || async {
        counter(&scrape(&b).await, "patd_cache_bypass") == 1.0
    })
    .await;
    redis.signal("CONT");
    assert!(bypassed, "{}", scrape(&b).await);
}
