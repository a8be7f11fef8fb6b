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
    // The audit trail tells the same story: the token issued last, and
    // before it either nothing (the stopped Issue never ran) or its Issue
    // and the undo's Revoke, under the one request id of the failed call.
    let trail = client
        .audit_events("acct-undo", 0, "")
        .await
        .expect("audit")
        .events;
    assert_eq!(trail[0].action, "Issue");
    assert_eq!(trail[0].token_ids, [listed[0].token_id.clone()]);
    match &trail[1..] {
        [] => {}
        [undo, issued] => {
            assert_eq!(
                (undo.action.as_str(), issued.action.as_str()),
                ("Revoke", "Issue")
            );
            assert_eq!(undo.token_ids, issued.token_ids);
            assert_eq!(undo.request_id, issued.request_id);
        }
        other => panic!("unexpected events {other:?}"),
    }
}

/// The Redis ACL README documents for patd's user (the line starting
/// `ACL SETUSER patd`), with this test's password and key prefix, less
/// `without`. Every command the Lua scripts call must be in it.
fn acl_for(prefix: &str, password: &str, without: &str) -> Vec<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    let line = readme
        .lines()
        .find_map(|l| l.trim().strip_prefix("ACL SETUSER patd "))
        .expect("README documents the ACL");
    let rules: Vec<String> = line
        .split_whitespace()
        .filter(|r| *r != without)
        .map(|r| match r {
            ">PASSWORD" => format!(">{password}"),
            "~patd:*" => format!("~{prefix}:*"),
            "&patd:*" => format!("&{prefix}:*"),
            other => other.to_owned(),
        })
        .collect();
    let scripts =
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/src/store/lua")).expect("lua dir");
    for script in scripts {
        let text = std::fs::read_to_string(script.expect("entry").path()).expect("script");
        for call in text.split("redis.call('").skip(1) {
            let command = call.split('\'').next().unwrap_or_default().to_lowercase();
            assert!(
                rules.contains(&format!("+{command}")),
                "README's ACL lacks +{command}, which a script calls"
            );
        }
    }
    rules
}

fn set_user(redis: &RedisServer, name: &str, rules: &[String]) {
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(name)
        .arg(rules)
        .query(&mut redis.conn())
        .expect("ACL SETUSER");
}

#[tokio::test]
async fn patd_works_as_the_documented_acl_user_and_names_a_missing_permission() {
    let redis = RedisServer::start();
    let prefix = crate::helpers::random_name("acl");
    set_user(&redis, "patd", &acl_for(&prefix, "pw-acl", ""));
    let url = redis.url().replace("redis://", "redis://patd:pw-acl@");
    let patd = Patd::spawn(PatdOptions::new(Backend::Redis { url }).key_prefix(&prefix)).await;
    let ready = eventually(Duration::from_secs(10), || async {
        get(patd.http_addr, "/readyz", &[]).await.status == 200
    })
    .await;
    assert!(ready, "logs:\n{}", patd.logs());
    let mut client = patd.client().await;
    let issued = client
        .issue(issue_request("acct-acl", 600))
        .await
        .expect("issue");
    let token_id = issued.info.expect("info").token_id;
    assert!(
        client
            .introspect(&issued.token)
            .await
            .expect("introspect")
            .active
    );
    assert_eq!(client.list("acct-acl").await.expect("list").tokens.len(), 1);
    client.revoke("acct-acl", &token_id).await.expect("revoke");
    // The revoked token's tombstone says why.
    let revoked = client.introspect(&issued.token).await.expect("introspect");
    assert_eq!(revoked.reason, patd::pb::InactiveReason::Revoked as i32);
    let second = client
        .issue(issue_request("acct-acl", 600))
        .await
        .expect("issue");
    let rotated = client
        .rotate(patd::pb::RotateRequest {
            account_id: "acct-acl".to_owned(),
            token_id: second.info.expect("info").token_id,
            grace: Some(pbjson_types::Duration {
                seconds: 60,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .expect("rotate");
    client
        .revoke_token(&rotated.token, "acl test")
        .await
        .expect("revoke token");
    let listed = client.list_all("acct-acl").await.expect("list all").tokens;
    assert_eq!(listed.len(), 3, "{listed:?}");
    assert_eq!(
        client
            .revoke_all("acct-acl")
            .await
            .expect("revoke all")
            .revoked,
        1,
        "the rotated token, in its grace window"
    );
    let trail = client
        .audit_events("acct-acl", 0, "")
        .await
        .expect("audit trail")
        .events;
    let actions: Vec<&str> = trail.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "RevokeAll",
            "RevokeToken",
            "Rotate",
            "Issue",
            "Revoke",
            "Issue"
        ]
    );

    // The same user without EVALSHA: not ready, and the log says why.
    set_user(&redis, "patd", &["-evalsha".to_owned()]);
    let named = eventually(Duration::from_secs(10), || async {
        get(patd.http_addr, "/readyz", &[]).await.status == 503
            && patd.logs().contains("store not ready")
            && patd.logs().contains("evalsha")
    })
    .await;
    assert!(named, "logs:\n{}", patd.logs());

    // Without TIME (Redis's clock decides expiry): not ready either.
    set_user(&redis, "patd", &["-time".to_owned()]);
    let named = eventually(Duration::from_secs(10), || async {
        get(patd.http_addr, "/readyz", &[]).await.status == 503 && patd.logs().contains("'time'")
    })
    .await;
    assert!(named, "logs:\n{}", patd.logs());
    // Granted again: patd recovers by itself.
    set_user(&redis, "patd", &["+evalsha".to_owned(), "+time".to_owned()]);
    let back = eventually(Duration::from_secs(10), || async {
        get(patd.http_addr, "/readyz", &[]).await.status == 200
    })
    .await;
    assert!(back, "logs:\n{}", patd.logs());
    client
        .issue(issue_request("acct-acl", 600))
        .await
        .expect("issue once the permission is back");
}

#[tokio::test]
async fn a_replica_is_not_ready_and_the_log_says_so() {
    let redis = RedisServer::start();
    let patd = Patd::redis(&redis).await;
    let ready = || async { get(patd.http_addr, "/readyz", &[]).await.status == 200 };
    assert!(eventually(Duration::from_secs(10), ready).await);
    // Demoted (a primary that does not exist keeps it a replica).
    let _: () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg("1")
        .query(&mut redis.conn())
        .expect("REPLICAOF");
    let unready = eventually(Duration::from_secs(10), || async {
        get(patd.http_addr, "/readyz", &[]).await.status == 503
            && patd.logs().contains("read-only replica")
    })
    .await;
    assert!(unready, "logs:\n{}", patd.logs());
    let _: () = redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query(&mut redis.conn())
        .expect("REPLICAOF NO ONE");
    assert!(eventually(Duration::from_secs(10), ready).await);
    let mut client = patd.client().await;
    client
        .issue(issue_request("acct-primary", 600))
        .await
        .expect("writes work again on the primary");
}

#[tokio::test]
async fn patd_recovers_by_itself_when_its_redis_user_comes_back() {
    let redis = RedisServer::start();
    let prefix = crate::helpers::random_name("acl");
    let rules = acl_for(&prefix, "pw-back", "");
    let url = redis.url().replace("redis://", "redis://patd:pw-back@");
    // patd starts before its user exists.
    let patd = Patd::spawn(PatdOptions::new(Backend::Redis { url }).key_prefix(&prefix)).await;
    let ready = || async { get(patd.http_addr, "/readyz", &[]).await.status == 200 };
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(!ready().await, "ready without its user");
    set_user(&redis, "patd", &rules);
    assert!(
        eventually(Duration::from_secs(15), ready).await,
        "did not recover once the user exists; logs:\n{}",
        patd.logs()
    );
    let mut client = patd.client().await;
    client
        .issue(issue_request("acct-back", 600))
        .await
        .expect("issue");
    // The user is deleted (its connections are closed), one call fails,
    // then the user comes back.
    let _: () = redis::cmd("ACL")
        .arg("DELUSER")
        .arg("patd")
        .query(&mut redis.conn())
        .expect("ACL DELUSER");
    assert!(client.issue(issue_request("acct-back", 600)).await.is_err());
    assert!(client.list("acct-back").await.is_err());
    set_user(&redis, "patd", &rules);
    let back = eventually(Duration::from_secs(15), || {
        let mut client = client.clone();
        async move {
            client.issue(issue_request("acct-back", 600)).await.is_ok()
                && client.list("acct-back").await.is_ok()
        }
    })
    .await;
    assert!(
        back,
        "still failing after the user came back; logs:\n{}",
        patd.logs()
    );
    assert!(eventually(Duration::from_secs(15), ready).await);
}

#[tokio::test]
async fn corrupt_entries_next_to_a_token_never_block_its_revocation() {
    let redis = RedisServer::start();
    let patd = Patd::redis(&redis).await;
    let mut client = patd.client().await;
    let prefix = &patd.key_prefix;
    let keys = |account: &str| {
        let tag = patd::domain::shard_tag(account);
        (
            format!("{prefix}:{{{tag}}}:a:{account}"),
            move |id: &str| format!("{prefix}:{{{tag}}}:t:{id}"),
        )
    };
    let mut conn = redis.conn();

    // A non-UTF-8 index member and a non-UTF-8 note beside good tokens.
    let (index, token_key) = keys("acct-corrupt");
    let mut issued = Vec::new();
    for _ in 0..3 {
        issued.push(crate::helpers::issue(&mut client, "acct-corrupt", 600).await);
    }
    let _: () = redis::cmd("ZADD")
        .arg(&index)
        .arg("99999999999999")
        .arg(&b"\xff\xfe"[..])
        .query(&mut conn)
        .expect("ZADD");
    let _: () = redis::cmd("HSET")
        .arg(token_key(&issued[1].1))
        .arg("note")
        .arg(&b"\xff"[..])
        .query(&mut conn)
        .expect("HSET");
    let listed = client
        .list("acct-corrupt")
        .await
        .expect("List past corrupt data");
    let listed: Vec<String> = listed.tokens.into_iter().map(|t| t.token_id).collect();
    assert!(
        listed.contains(&issued[0].1) && listed.contains(&issued[2].1),
        "{listed:?}"
    );
    client
        .revoke("acct-corrupt", &issued[0].1)
        .await
        .expect("Revoke past corrupt data");
    client
        .revoke_all("acct-corrupt")
        .await
        .expect("RevokeAll past corrupt data");
    for (token, _) in &issued {
        assert!(!client.introspect(token).await.expect("introspect").active);
    }

    // An index of the wrong type: Revoke and RevokeAll still end the tokens.
    let (index, _) = keys("acct-wrongtype");
    let first = crate::helpers::issue(&mut client, "acct-wrongtype", 600).await;
    let second = crate::helpers::issue(&mut client, "acct-wrongtype", 600).await;
    let _: () = redis::cmd("DEL").arg(&index).query(&mut conn).expect("DEL");
    let _: () = redis::cmd("SET")
        .arg(&index)
        .arg("oops")
        .query(&mut conn)
        .expect("SET");
    client
        .revoke("acct-wrongtype", &first.1)
        .await
        .expect("Revoke with a wrong-type index");
    assert!(
        !client
            .introspect(&first.0)
            .await
            .expect("introspect")
            .active
    );
    let revoked = client
        .revoke_all("acct-wrongtype")
        .await
        .expect("RevokeAll with a wrong-type index")
        .revoked;
    assert_eq!(revoked, 1);
    assert!(
        !client
            .introspect(&second.0)
            .await
            .expect("introspect")
            .active
    );
    let left: i64 = redis::cmd("EXISTS")
        .arg(&index)
        .query(&mut conn)
        .expect("EXISTS");
    assert_eq!(left, 0, "the corrupt index is gone");
}

/// A Rotate whose answer was lost (Redis held its write past
/// PATD_REDIS_TIMEOUT) is undone like an Issue: if its script ran after
/// all, the successor nobody saw is revoked and the trail shows the Rotate
/// followed by the undo's Revoke of the successor, both under the failed
/// call's request id; if it never ran, the trail shows nothing and the old
/// token can be rotated again. Either way the old token stays active.
#[tokio::test]
async fn a_rotate_that_timed_out_is_undone_and_the_trail_says_so() {
    let redis = RedisServer::start();
    let patd = Patd::redis(&redis).await;
    let mut client = patd.client().await;
    let account = crate::helpers::random_name("acct-");
    let (old_value, old) = crate::helpers::issue(&mut client, &account, 3600).await;
    let rotation = patd::pb::RotateRequest {
        account_id: account.clone(),
        token_id: old.clone(),
        grace: Some(pbjson_types::Duration {
            seconds: 600,
            nanos: 0,
        }),
        ..Default::default()
    };
    // Writes wait, reads go on: Rotate's lookup answers, its script waits.
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(2500)
        .arg("WRITE")
        .query(&mut redis.conn())
        .expect("CLIENT PAUSE WRITE");
    let lost = client.rotate(rotation.clone()).await;
    assert_eq!(lost.expect_err("timed out").code(), Code::Unavailable);
    let undone = eventually(Duration::from_secs(20), || async {
        patd.logs().contains("undid a failed Rotate")
    })
    .await;
    assert!(undone, "logs:\n{}", patd.logs());
    let landed = patd.logs().contains("landed=true");
    let trail = client
        .audit_events(&account, 0, "")
        .await
        .expect("audit")
        .events;
    let actions: Vec<&str> = trail.iter().map(|e| e.action.as_str()).collect();
    if landed {
        assert_eq!(actions, ["Revoke", "Rotate", "Issue"]);
        let new = trail[1].token_ids[1].clone();
        assert_eq!(trail[1].token_ids, [old.clone(), new.clone()]);
        assert_eq!(trail[0].token_ids, [new]);
        assert_eq!(trail[0].request_id, trail[1].request_id);
        assert!(patd.logs().contains("audit action=\"Rotate\""));
    } else {
        assert_eq!(actions, ["Issue"], "no event for a Rotate that never ran");
        client
            .rotate(rotation)
            .await
            .expect("the old token was never rotated");
    }
    assert!(crate::helpers::is_active(&mut client, &old_value).await);
}
