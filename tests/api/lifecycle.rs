//! The whole token lifecycle, run as one scenario against both stores: the
//! memory store is the model, so both must give the same answers.

use std::time::Duration;

use patd::pb::IssueRequest;
use tonic::Code;

use crate::helpers::{Client, Patd, RedisServer, eventually, is_active, issue, random_name};

/// Runs the scenario and returns a transcript of every answer, with the
/// random parts (token values, ids, times) replaced by what they stand for.
async fn scenario(client: &mut Client) -> Vec<String> {
    let mut log = Vec::new();
    let alice = random_name("alice-");
    let bob = random_name("bob-");

    let first = client
        .issue(IssueRequest {
            account_id: alice.clone(),
            note: "CI deploy".into(),
            ttl: Some(pbjson_types::Duration {
                seconds: 3600,
                nanos: 0,
            }),
            scopes: vec!["repo:write".into(), "repo:read".into(), "repo:read".into()],
            ..Default::default()
        })
        .await
        .expect("issue");
    let info = first.info.clone().expect("info");
    assert!(first.token.starts_with("pat_"));
    assert!(first.token.contains(&info.token_id));
    assert_eq!(info.account_id, alice);
    let created = info.created_at.expect("created");
    let expires = info.expires_at.expect("expires");
    assert_eq!(expires.seconds - created.seconds, 3600);
    assert!(info.last_used_at.is_none());
    log.push(format!(
        "issued note={:?} scopes={:?}",
        info.note, info.scopes
    ));

    let seen = client.introspect(&first.token).await.expect("introspect");
    let seen_info = seen.info.expect("info when active");
    assert_eq!(seen_info.token_id, info.token_id);
    log.push(format!(
        "introspect active={} account_is_alice={} scopes={:?}",
        seen.active,
        seen_info.account_id == alice,
        seen_info.scopes
    ));

    let at = pbjson_types::Timestamp {
        seconds: created.seconds + 7200,
        nanos: 0,
    };
    let second = client
        .issue(IssueRequest {
            account_id: alice.clone(),
            expires_at: Some(at),
            ..Default::default()
        })
        .await
        .expect("issue with expires_at");
    let second_info = second.info.expect("info");
    assert_eq!(second_info.expires_at, Some(at));
    log.push(format!(
        "issued note={:?} scopes={:?}",
        second_info.note, second_info.scopes
    ));

    let (bobs_token, bobs_id) = issue(client, &bob, 600).await;

    // The last use is recorded in the background after an Introspect.
    let used = eventually(Duration::from_secs(5), || {
        let mut c = client.clone();
        let alice = alice.clone();
        let id = info.token_id.clone();
        async move {
            let list = c.list(&alice).await.expect("list");
            list.tokens
                .iter()
                .any(|t| t.token_id == id && t.last_used_at.is_some())
        }
    })
    .await;
    log.push(format!("last_used recorded={used}"));

    let listed = client.list(&alice).await.expect("list").tokens;
    let ids: Vec<&str> = listed.iter().map(|t| t.token_id.as_str()).collect();
    log.push(format!(
        "list count={} newest_first={}",
        listed.len(),
        ids == [second_info.token_id.as_str(), info.token_id.as_str()]
            || (listed.len() == 2 && listed[0].created_at == listed[1].created_at)
    ));

    let r = client.revoke(&alice, &info.token_id).await;
    log.push(format!("revoke ok={}", r.is_ok()));
    log.push(format!(
        "introspect revoked active={}",
        is_active(client, &first.token).await
    ));
    let again = client
        .revoke(&alice, &info.token_id)
        .await
        .expect_err("twice");
    log.push(format!("revoke twice code={:?}", again.code()));
    let foreign = client.revoke(&alice, &bobs_id).await.expect_err("foreign");
    log.push(format!(
        "revoke bob's id as alice code={:?}",
        foreign.code()
    ));
    log.push(format!(
        "bob still active={}",
        is_active(client, &bobs_token).await
    ));

    let (third, _) = issue(client, &alice, 60).await;
    let all = client.revoke_all(&alice).await.expect("revoke all");
    log.push(format!("revoke_all revoked={}", all.revoked));
    log.push(format!(
        "after revoke_all active={} {}",
        is_active(client, &second.token).await,
        is_active(client, &third).await
    ));
    let empty = client.list(&alice).await.expect("list");
    log.push(format!(
        "list after revoke_all count={}",
        empty.tokens.len()
    ));
    let none = client.revoke_all(&alice).await.expect("revoke all again");
    log.push(format!("revoke_all again revoked={}", none.revoked));
    log.push(format!(
        "bob still active={}",
        is_active(client, &bobs_token).await
    ));
    log
}

fn expected() -> Vec<String> {
    [
        r#"issued note="CI deploy" scopes=["repo:read", "repo:write"]"#,
        r#"introspect active=true account_is_alice=true scopes=["repo:read", "repo:write"]"#,
        r#"issued note="" scopes=[]"#,
        "last_used recorded=true",
        "list count=2 newest_first=true",
        "revoke ok=true",
        "introspect revoked active=false",
        &format!("revoke twice code={:?}", Code::NotFound),
        &format!("revoke bob's id as alice code={:?}", Code::NotFound),
        "bob still active=true",
        "revoke_all revoked=2",
        "after revoke_all active=false false",
        "list after revoke_all count=0",
        "revoke_all again revoked=0",
        "bob still active=true",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[tokio::test]
async fn the_memory_store_runs_the_whole_lifecycle() {
    let patd = Patd::memory().await;
    assert_eq!(scenario(&mut patd.client().await).await, expected());
}

#[tokio::test]
async fn the_redis_store_gives_the_same_answers_as_the_memory_model() {
    let redis = RedisServer::start();
    let on_redis = Patd::redis(&redis).await;
    let on_memory = Patd::memory().await;
    let redis_log = scenario(&mut on_redis.client().await).await;
    let memory_log = scenario(&mut on_memory.client().await).await;
    assert_eq!(redis_log, memory_log);
    assert_eq!(redis_log, expected());
}

#[tokio::test]
async fn redis_keys_follow_the_documented_layout_with_expiry() {
    let redis = RedisServer::start();
    let patd = Patd::redis(&redis).await;
    let mut client = patd.client().await;
    let account = random_name("acct-");
    let (_, id) = issue(&mut client, &account, 120).await;
    let tag = &id[..3];
    let token_key = format!("{}:{{{tag}}}:t:{id}", patd.key_prefix);
    let index_key = format!("{}:{{{tag}}}:a:{account}", patd.key_prefix);
    let mut conn = redis.conn();
    let pttl: i64 = redis::cmd("PTTL").arg(&token_key).query(&mut conn).unwrap();
    assert!(pttl > 100_000 && pttl <= 120_000, "token key PTTL {pttl}");
    let members: Vec<String> = redis::cmd("ZRANGE")
        .arg(&index_key)
        .arg(0)
        .arg(-1)
        .query(&mut conn)
        .unwrap();
    assert_eq!(members, vec![id]);
    let index_ttl: i64 = redis::cmd("PTTL").arg(&index_key).query(&mut conn).unwrap();
    assert!(index_ttl > 100_000, "index key PTTL {index_ttl}");
    let fields: Vec<String> = redis::cmd("HKEYS")
        .arg(&token_key)
        .query(&mut conn)
        .unwrap();
    for f in ["account", "digest", "note", "scopes", "created", "expires"] {
        assert!(fields.iter().any(|x| x == f), "missing field {f}");
    }
}

/// Expiry on Redis's clock: a 2 s token is active, then inactive, and its
/// slot under the limit is free again.
async fn expiry_frees_the_slot(patd: &Patd) {
    let mut client = patd.client().await;
    let account = random_name("acct-");
    issue(&mut client, &account, 3600).await;
    issue(&mut client, &account, 3600).await;
    let (short, _) = issue(&mut client, &account, 2).await;
    assert!(is_active(&mut client, &short).await);
    let refused = client
        .issue(crate::helpers::issue_request(&account, 3600))
        .await
        .expect_err("at the limit of 3");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    tokio::time::sleep(Duration::from_millis(2300)).await;
    assert!(!is_active(&mut client, &short).await);
    let listed = client.list(&account).await.unwrap();
    assert_eq!(listed.tokens.len(), 2);
    issue(&mut client, &account, 3600).await;
}

#[tokio::test]
async fn an_expired_token_is_inactive_and_frees_its_slot_on_redis() {
    let redis = RedisServer::start();
    let patd = crate::helpers::Patd::spawn(
        crate::helpers::PatdOptions::new(crate::helpers::Backend::Redis { url: redis.url() })
            .env("PATD_MAX_TOKENS_PER_ACCOUNT", "3"),
    )
    .await;
    expiry_frees_the_slot(&patd).await;
}

#[tokio::test]
async fn an_expired_token_is_inactive_and_frees_its_slot_in_memory() {
    let patd = crate::helpers::Patd::spawn(
        crate::helpers::PatdOptions::new(crate::helpers::Backend::Memory)
            .env("PATD_MAX_TOKENS_PER_ACCOUNT", "3"),
    )
    .await;
    expiry_frees_the_slot(&patd).await;
}

/// The emergency button works even when the index holds something that is
/// not a token id (written by hand), and List skips a corrupt record.
#[tokio::test]
async fn revoke_all_and_list_survive_a_corrupt_index_or_record() {
    let redis = RedisServer::start();
    let patd = Patd::redis(&redis).await;
    let mut client = patd.client().await;
    let account = random_name("acct-");
    let (first, first_id) = issue(&mut client, &account, 600).await;
    let (second, second_id) = issue(&mut client, &account, 600).await;
    let tag = &first_id[..3];
    let index = format!("{}:{{{tag}}}:a:{account}", patd.key_prefix);
    let mut conn = redis.conn();
    let far_future = 4_000_000_000_000u64;
    let _: () = redis::cmd("ZADD")
        .arg(&index)
        .arg(far_future)
        .arg("not a token id")
        .query(&mut conn)
        .unwrap();
    // A record whose note breaks the rules.
    let _: () = redis::cmd("HSET")
        .arg(format!("{}:{{{tag}}}:t:{first_id}", patd.key_prefix))
        .arg("note")
        .arg("x".repeat(300))
        .query(&mut conn)
        .unwrap();
    let listed = client
        .list(&account)
        .await
        .expect("List skips what it cannot read");
    assert_eq!(listed.tokens.len(), 1);
    let all = client
        .revoke_all(&account)
        .await
        .expect("RevokeAll despite the bad member");
    assert_eq!(all.revoked, 2);
    assert!(!is_active(&mut client, &first).await);
    assert!(!is_active(&mut client, &second).await);
    // Only the account's audit trail and the two tokens' tombstones (`:x:`,
    // with their index `:h:`) are left.
    assert_eq!(redis.live_keys(&patd.key_prefix), Vec::<String>::new());
    let mut left: Vec<String> = redis
        .dump(&patd.key_prefix)
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    left.sort();
    let p = &patd.key_prefix;
    let mut expected = vec![
        format!("{p}:{{{tag}}}:e:{account}"),
        format!("{p}:{{{tag}}}:h:{account}"),
        format!("{p}:{{{tag}}}:x:{first_id}"),
        format!("{p}:{{{tag}}}:x:{second_id}"),
    ];
    expected.sort();
    assert_eq!(left, expected);
}
