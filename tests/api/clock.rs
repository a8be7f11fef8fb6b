//! One clock decides expiry: the store's. patd runs here under libfaketime
//! (LD_PRELOAD) with its wall clock off from Redis's, or stepped while it
//! runs, and every answer must still follow Redis's clock (Redis store) or
//! a clock that never goes backwards (memory store).

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use patd::pb::IssueRequest;
use tonic::Code;

use crate::helpers::{
    Backend, Client, Patd, PatdOptions, RedisServer, eventually, is_active, issue, random_name,
};
use crate::http_helpers::get;

/// libfaketime's thread-safe library (Debian package `faketime`, which
/// scripts/test.sh installs).
fn libfaketime() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib")
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path().join("faketime"))
                .collect()
        })
        .unwrap_or_default();
    dirs.extend(["/usr/lib/faketime", "/usr/local/lib/faketime"].map(PathBuf::from));
    dirs.into_iter()
        .map(|dir| dir.join("libfaketimeMT.so.1"))
        .find(|lib| lib.exists())
        .expect("libfaketime not found: run scripts/test.sh, which installs faketime")
}

/// patd's wall clock set off by `offset` (libfaketime syntax: `-10m`,
/// `+90`). Only the wall clock: the monotonic clock stays true, as when a
/// real clock is wrong or stepped.
fn skewed(opts: PatdOptions, offset: &str) -> PatdOptions {
    faked(opts).env("FAKETIME", offset)
}

fn faked(opts: PatdOptions) -> PatdOptions {
    opts.env("LD_PRELOAD", &libfaketime().to_string_lossy())
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
}

fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).expect("after 1970").as_secs() as i64
}

/// How far patd's wall clock is from this process's (and Redis's), in
/// seconds, read off the timestamp of its latest log line.
fn wall_clock_offset(patd: &Patd) -> Option<i64> {
    let logs = patd.logs();
    let at = logs.lines().rev().find_map(|line| {
        let stamp = line.split_whitespace().next()?;
        humantime::parse_rfc3339_weak(stamp.trim_end_matches('Z')).ok()
    })?;
    Some(unix_secs(at) - unix_secs(SystemTime::now()))
}

/// Proves the fake clock took hold (so a test cannot pass by running
/// unskewed): patd's latest log line is `expected` seconds off, give or
/// take 5. Log lines arrive asynchronously, so this waits up to 5 s.
async fn assert_offset(patd: &Patd, expected: i64) {
    let held = eventually(Duration::from_secs(5), || async {
        wall_clock_offset(patd).is_some_and(|offset| (offset - expected).abs() <= 5)
    })
    .await;
    assert!(
        held,
        "patd's wall clock is {:?} s off, not {expected} s",
        wall_clock_offset(patd)
    );
}

fn secs(t: &Option<pbjson_types::Timestamp>) -> i64 {
    t.as_ref().expect("timestamp").seconds
}

/// An issued token: value, id, and its `created_at`/`expires_at` seconds.
struct Issued {
    token: String,
    id: String,
    created: i64,
    expires: i64,
}

async fn issue_ttl(client: &mut Client, account: &str, ttl: i64) -> Issued {
    let issued = client
        .issue(crate::helpers::issue_request(account, ttl))
        .await
        .expect("issue");
    let info = issued.info.expect("info");
    Issued {
        token: issued.token,
        id: info.token_id,
        created: secs(&info.created_at),
        expires: secs(&info.expires_at),
    }
}

/// Its times are on the real (Redis's) clock, `ttl` apart.
fn assert_on_redis_clock(issued: &Issued, ttl: i64) {
    let now = unix_secs(SystemTime::now());
    assert!(
        (issued.created - now).abs() <= 10,
        "created_at {} is not on Redis's clock ({now})",
        issued.created
    );
    assert_eq!(issued.expires - issued.created, ttl);
}

async fn listed(client: &mut Client, account: &str) -> Vec<String> {
    let mut ids: Vec<String> = client
        .list(account)
        .await
        .expect("list")
        .tokens
        .into_iter()
        .map(|t| t.token_id)
        .collect();
    ids.sort();
    ids
}

/// Whether `token` turns inactive within `within`, and not before `after`.
async fn expires_between(client: &Client, token: &str, after: Duration, within: Duration) {
    let start = std::time::Instant::now();
    let gone = eventually(within, || {
        let mut c = client.clone();
        let t = token.to_owned();
        async move { !is_active(&mut c, &t).await }
    })
    .await;
    assert!(gone, "still active after {within:?}");
    assert!(
        start.elapsed() >= after,
        "inactive after {:?}, before its expiry",
        start.elapsed()
    );
}

/// How long a gateway may cache forward-auth's allow of `token`.
async fn forward_auth_max_age(patd: &Patd, token: &str) -> u64 {
    let reply = get(
        patd.http_addr,
        "/v1/forward-auth",
        &[("Authorization", &format!("Bearer {token}"))],
    )
    .await;
    assert_eq!(reply.status, 200);
    reply.max_age().unwrap_or(0)
}

/// patd's clock 10 min behind Redis's: a 300 s token is active at once,
/// listed, lives 300 s on Redis's clock (its key's TTL) and a 3 s token
/// expires 3 s later; `expires_at` is checked against Redis's clock; a
/// gateway never caches an allow past the expiry.
#[tokio::test]
async fn a_patd_clock_behind_redis_changes_no_expiry() {
    let redis = RedisServer::start();
    let patd = Patd::spawn(
        skewed(
            PatdOptions::new(Backend::Redis { url: redis.url() }),
            "-10m",
        )
        .env("PATD_MAX_TTL", "1h")
        .env("PATD_DEFAULT_TTL", "1h")
        .env("PATD_FORWARD_AUTH_MAX_AGE", "300s"),
    )
    .await;
    assert_offset(&patd, -600).await;
    let mut client = patd.client().await;
    let account = random_name("acct-");

    let long = issue_ttl(&mut client, &account, 300).await;
    let long_id = long.id.clone();
    assert!(
        is_active(&mut client, &long.token).await,
        "inactive at once"
    );
    assert_eq!(
        listed(&mut client, &account).await,
        std::slice::from_ref(&long_id)
    );
    assert_on_redis_clock(&long, 300);
    let key = format!("{}:{{{}}}:t:{long_id}", patd.key_prefix, &long_id[..3]);
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query(&mut redis.conn())
        .expect("PTTL");
    assert!(
        (295_000..=300_000).contains(&pttl),
        "the token key's TTL is {pttl} ms, not 300 s"
    );

    // A 3 s token from an on-time instance on the same Redis, then one
    // from this one: neither allow is cached past its expiry.
    let on_time = Patd::spawn(
        PatdOptions::new(Backend::Redis { url: redis.url() }).key_prefix(&patd.key_prefix),
    )
    .await;
    let theirs = issue_ttl(&mut on_time.client().await, &account, 3)
        .await
        .token;
    let short = issue_ttl(&mut client, &account, 3).await;
    assert!(is_active(&mut client, &short.token).await);
    assert_on_redis_clock(&short, 3);
    let short = short.token;
    for token in [&theirs, &short] {
        let max_age = forward_auth_max_age(&patd, token).await;
        assert!(max_age <= 3, "an allow cached {max_age} s for a 3 s token");
    }
    expires_between(
        &client,
        &short,
        Duration::from_millis(2000),
        Duration::from_secs(6),
    )
    .await;
    expires_between(&client, &theirs, Duration::ZERO, Duration::from_secs(6)).await;
    assert_eq!(listed(&mut client, &account).await, [long_id]);

    // expires_at is the client's absolute instant, judged on Redis's clock.
    let at = |offset_secs: i64| IssueRequest {
        account_id: account.clone(),
        expires_at: Some(pbjson_types::Timestamp {
            seconds: unix_secs(SystemTime::now()) + offset_secs,
            nanos: 0,
        }),
        ..Default::default()
    };
    let past = client.issue(at(-120)).await.expect_err("2 min ago");
    assert_eq!(past.code(), Code::InvalidArgument);
    assert!(past.message().starts_with("expires_at"), "{past:?}");
    let within = client
        .issue(at(55 * 60))
        .await
        .expect("55 min ahead, within 1h");
    assert!(is_active(&mut client, &within.token).await);
    let beyond = client.issue(at(65 * 60)).await.expect_err("beyond 1h");
    assert_eq!(beyond.code(), Code::InvalidArgument);
}

/// Two instances 90 s apart on one Redis give the same answers: a 60 s
/// token is active on both whichever issued it, and short tokens expire on
/// both at the same moment, Redis's.
#[tokio::test]
async fn two_instances_with_clocks_90_s_apart_agree() {
    let redis = RedisServer::start();
    let prefix = random_name("t");
    let backend = Backend::Redis { url: redis.url() };
    let on_time = Patd::spawn(PatdOptions::new(backend.clone()).key_prefix(&prefix)).await;
    let ahead = Patd::spawn(skewed(PatdOptions::new(backend).key_prefix(&prefix), "+90")).await;
    assert_offset(&ahead, 90).await;
    let mut a = on_time.client().await;
    let mut b = ahead.client().await;
    let account = random_name("acct-");

    let by_a = issue_ttl(&mut a, &account, 60).await;
    let by_b = issue_ttl(&mut b, &account, 60).await;
    for token in [&by_a.token, &by_b.token] {
        assert!(
            is_active(&mut a, token).await,
            "the on-time instance says no"
        );
        assert!(is_active(&mut b, token).await, "the fast instance says no");
    }
    assert_on_redis_clock(&by_a, 60);
    assert_on_redis_clock(&by_b, 60);
    assert_eq!(listed(&mut a, &account).await.len(), 2);
    assert_eq!(listed(&mut b, &account).await.len(), 2);

    let short_a = issue_ttl(&mut a, &account, 3).await.token;
    let short_b = issue_ttl(&mut b, &account, 3).await.token;
    for token in [&short_a, &short_b] {
        assert!(is_active(&mut a, token).await);
        assert!(is_active(&mut b, token).await);
    }
    for client in [&a, &b] {
        for token in [&short_a, &short_b] {
            expires_between(client, token, Duration::ZERO, Duration::from_secs(6)).await;
        }
    }
    assert_eq!(
        listed(&mut a, &account).await,
        listed(&mut b, &account).await
    );
    assert_eq!(listed(&mut a, &account).await.len(), 2);
}

/// The memory store: stepping patd's wall clock back an hour does not
/// bring back a token whose ttl has passed, and stepping it forward does
/// not end a live one.
#[tokio::test]
async fn a_stepped_wall_clock_neither_revives_nor_ends_a_memory_token() {
    let offset_file = std::env::temp_dir().join(format!("{}.rc", random_name("patd-faketime-")));
    std::fs::write(&offset_file, "+0\n").expect("offset file");
    let patd = Patd::spawn(
        faked(PatdOptions::new(Backend::Memory))
            .env("FAKETIME_TIMESTAMP_FILE", &offset_file.to_string_lossy())
            .env("FAKETIME_NO_CACHE", "1")
            // `assert_offset` reads the time of Introspect's (DEBUG) lines.
            .env("RUST_LOG", "info,patd=debug"),
    )
    .await;
    let mut client = patd.client().await;
    let account = random_name("acct-");
    let (short, _) = issue(&mut client, &account, 1).await;
    let (long, long_id) = issue(&mut client, &account, 3600).await;
    expires_between(
        &client,
        &short,
        Duration::from_millis(500),
        Duration::from_secs(5),
    )
    .await;

    std::fs::write(&offset_file, "-1h\n").expect("step back");
    assert!(is_active(&mut client, &long).await);
    assert_offset(&patd, -3600).await;
    assert!(
        !is_active(&mut client, &short).await,
        "an expired token came back"
    );
    assert_eq!(
        listed(&mut client, &account).await,
        std::slice::from_ref(&long_id)
    );

    std::fs::write(&offset_file, "+2h\n").expect("step forward");
    assert!(is_active(&mut client, &long).await, "a live token ended");
    assert_offset(&patd, 7200).await;
    assert_eq!(listed(&mut client, &account).await, [long_id]);
    let _ = std::fs::remove_file(offset_file);
}
