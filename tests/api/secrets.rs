//! Nothing secret at rest, in logs or in telemetry: after driving every
//! RPC, no token value (nor its secret part) appears in patd's log,
//! anywhere in Redis, in any span attribute or metric label a real OTLP
//! receiver got, or in `/metrics`.

use std::time::Duration;

use crate::helpers::{
    Backend, Patd, PatdOptions, RedisServer, eventually, is_active, issue, issue_request,
    random_name,
};
use crate::http_helpers::get;

#[tokio::test]
async fn no_token_value_reaches_the_logs_or_redis() {
    let redis = RedisServer::start();
    // Token checks' lines are DEBUG: turned on, so they are audited too.
    let patd = Patd::spawn(
        PatdOptions::new(Backend::Redis { url: redis.url() }).env("RUST_LOG", "info,patd=debug"),
    )
    .await;
    let mut client = patd.client().await;
    let account = random_name("acct-");

    let mut tokens = Vec::new();
    for _ in 0..3 {
        tokens.push(issue(&mut client, &account, 600).await);
    }
    for (token, _) in &tokens {
        assert!(is_active(&mut client, token).await);
        // A near miss and a wrong-length variant are logged as failures too.
        let mut near = token.clone();
        near.pop();
        near.push('0');
        assert!(!is_active(&mut client, &near).await);
        assert!(!is_active(&mut client, &format!("{token}x")).await);
    }
    client.list(&account).await.unwrap();
    client.revoke(&account, &tokens[0].1).await.unwrap();
    client.revoke_all(&account).await.unwrap();
    let _ = client.issue(issue_request("", 60)).await.expect_err("bad");
    let kept = issue(&mut client, &account, 600).await;
    client.introspect(&kept.0).await.unwrap();

    // Lines reach the log from a background writer: wait for the last ones.
    let flushed = eventually(Duration::from_secs(5), || async {
        patd.logs().contains(&kept.1)
    })
    .await;
    assert!(flushed, "token ids are logged");
    let logs = patd.logs();
    assert!(
        logs.contains("rpc=\"Introspect\""),
        "expected RPC lines in:\n{logs}"
    );
    let dump = format!("{:?}", redis.dump(&patd.key_prefix));
    assert!(dump.contains(&kept.1), "the live token is in redis: {dump}");
    for (token, _) in tokens.iter().chain([&kept]) {
        let secret = &token[20..52];
        for (place, text) in [("logs", &logs), ("redis", &dump)] {
            assert!(!text.contains(token.as_str()), "token value in {place}");
            assert!(!text.contains(secret), "token secret in {place}");
        }
    }
}

/// The audit: with caller keys and digest keys configured, drive every RPC
/// and endpoint, including refusals, errors and overload, then look for any
/// token, caller key or key material in the log, in every error message,
/// in the audit trail and in Redis. A token's digest stays in one place
/// only: its tombstone's `digest` field (what lets Introspect say why a
/// presented value is inactive), never in a record left over, an index or
/// the audit stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_of_any_kind_leaks_anywhere() {
    use base64::Engine as _;
    use patd::pb::IssueRequest;

    let redis = RedisServer::start();
    let (file, console, gateway) = crate::security::callers_file();
    let hash_key = base64::engine::general_purpose::STANDARD.encode([42u8; 32]);
    // Spans and metrics go to a real OTLP receiver, to be searched too.
    let collector = crate::observability::Collector::start().await;
    let patd = Patd::spawn(
        collector
            .options(PatdOptions::new(Backend::Redis { url: redis.url() }))
            .env("RUST_LOG", "info,patd=debug")
            .env("PATD_CALLERS_FILE", file.to_str().unwrap())
            .env("PATD_TOKEN_HASH_KEYS", &format!("main:{hash_key}"))
            .env("PATD_MAX_CONCURRENT_REQUESTS", "2"),
    )
    .await;
    let client = patd.client().await;
    let mut as_console = client.as_caller(&console);
    let mut as_gateway = client.as_caller(&gateway);
    let account = random_name("acct-");
    let mut messages = Vec::new();
    let mut tokens = Vec::new();
    for _ in 0..3 {
        let issued = as_console
            .issue(issue_request(&account, 600))
            .await
            .unwrap();
        tokens.push((issued.token, issued.info.unwrap().token_id));
    }
    // The digests at rest, read while the records exist: after RevokeAll
    // none may be left anywhere.
    let mut digests = Vec::new();
    for (_, id) in &tokens {
        let digest: String = redis::cmd("HGET")
            .arg(format!("{}:{{{}}}:t:{id}", patd.key_prefix, &id[..3]))
            .arg("digest")
            .query(&mut redis.conn())
            .unwrap();
        assert_eq!(digest.len(), 64);
        digests.push(digest);
    }
    for (token, _) in &tokens {
        let seen = as_gateway.introspect(token).await.unwrap();
        assert!(seen.active);
        // Wrong roles, no key, the user token used as a caller key.
        for key in [console.as_str(), token.as_str(), ""] {
            let r = client.as_caller(key).introspect(token).await.unwrap_err();
            messages.push(r.message().to_owned());
        }
        let r = client
            .as_caller(token)
            .issue(issue_request(&account, 60))
            .await
            .unwrap_err();
        messages.push(r.message().to_owned());
        // HTTP forward-auth: right, wrong and missing caller keys.
        let bearer = format!("Bearer {token}");
        for key in [gateway.as_str(), console.as_str(), token.as_str()] {
            let reply = get(
                patd.http_addr,
                "/v1/forward-auth",
                &[("Authorization", &bearer), ("X-Patd-Caller-Key", key)],
            )
            .await;
            messages.push(format!("{reply:?}"));
        }
    }
    let bad = as_console
        .issue(IssueRequest {
            account_id: String::new(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    messages.push(bad.message().to_owned());
    as_console.list(&account).await.unwrap();
    as_console.revoke(&account, &tokens[0].1).await.unwrap();
    // Rotate one token (it stays in its grace window), then revoke its
    // successor by value with a reason that quotes the value.
    let rotated = as_console
        .rotate(patd::pb::RotateRequest {
            account_id: account.clone(),
            token_id: tokens[2].1.clone(),
            grace: Some(pbjson_types::Duration {
                seconds: 600,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let successor = (rotated.token, rotated.info.unwrap().token_id);
    let digest: String = redis::cmd("HGET")
        .arg(format!(
            "{}:{{{}}}:t:{}",
            patd.key_prefix,
            &successor.1[..3],
            successor.1
        ))
        .arg("digest")
        .query(&mut redis.conn())
        .unwrap();
    digests.push(digest);
    as_console
        .revoke_token(&successor.0, &format!("pasted in a chat: {}", successor.0))
        .await
        .unwrap();
    tokens.push(successor);
    // Overload: more concurrent calls than the limit of 2, with Redis stalled.
    redis.pause(800);
    let mut burst = Vec::new();
    for (token, _) in tokens[..3].iter().cycle().take(12) {
        let mut c = as_gateway.clone();
        let t = token.clone();
        burst.push(tokio::spawn(async move { c.introspect(&t).await }));
    }
    for task in burst {
        if let Err(status) = task.await.unwrap() {
            messages.push(status.message().to_owned());
        }
    }
    tokio::time::sleep(std::time::Duration::from_millis(900)).await;
    let kept = tokens[1].0.clone();
    as_console.revoke_all(&account).await.unwrap();
    // The audit trail: as returned, in Redis (the dump below holds the
    // stream), and its `audit` log lines.
    let trail = as_console.audit_events(&account, 0, "").await.unwrap();
    let actions: Vec<&str> = trail.events.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "RevokeAll",
            "RevokeToken",
            "Rotate",
            "Revoke",
            "Issue",
            "Issue",
            "Issue"
        ]
    );
    let trail = format!("{trail:?}");
    let audited = eventually(Duration::from_secs(5), || async {
        patd.logs().matches("audit action=").count() >= 7
    })
    .await;
    assert!(audited, "audit lines are logged");

    // Every span and metric point of the run reaches the receiver (the
    // last RevokeAll's span and a metrics push after it).
    let exported = eventually(Duration::from_secs(10), || async {
        collector
            .spans()
            .iter()
            .any(|s| s.name == "patd.v1.TokenService/RevokeAll")
            && collector.everything().contains("patd.caller_refusals")
            && collector.everything().contains("patd.shed")
    })
    .await;
    assert!(exported, "spans or metrics missing");
    let telemetry = collector.everything();
    let scraped = get(patd.http_addr, "/metrics", &[]).await.body;
    for family in ["patd_caller_refusals_total", "patd_shed_total"] {
        assert!(scraped.contains(family), "{family} in:\n{scraped}");
    }

    let logs = patd.logs();
    // Redis, with each tombstone's `digest` field set aside: each token's
    // digest must be there and nowhere else.
    let mut kept_digests = Vec::new();
    let mut entries = redis.dump(&patd.key_prefix);
    for (key, values) in &mut entries {
        if key.contains("}:x:") {
            let at = values
                .chunks(2)
                .position(|pair| pair[0] == "digest")
                .expect("a tombstone keeps the digest");
            kept_digests.push(values.remove(at * 2 + 1));
            values.remove(at * 2);
        }
    }
    kept_digests.sort();
    let mut expected_digests = digests.clone();
    expected_digests.sort();
    assert_eq!(kept_digests, expected_digests, "one tombstone per token");
    let dump = format!("{entries:?}");
    assert!(
        dump.contains("}:e:") && dump.contains("RevokeToken"),
        "the dump holds the audit stream: {dump}"
    );
    let errors = messages.join("\n");
    assert!(logs.contains("caller refused"), "refusals are logged");
    let mut secrets: Vec<(&str, String)> = vec![
        ("console caller key", console.clone()),
        ("gateway caller key", gateway.clone()),
        ("digest key", hash_key.clone()),
        ("kept token", kept),
    ];
    for digest in &digests {
        secrets.push(("token digest", digest.clone()));
    }
    for (token, _) in &tokens {
        secrets.push(("token", token.clone()));
        secrets.push(("token secret", token[20..52].to_owned()));
    }
    for (what, secret) in &secrets {
        for (place, text) in [
            ("logs", &logs),
            ("redis", &dump),
            ("error messages", &errors),
            ("audit events", &trail),
            ("span attributes and OTLP metric labels", &telemetry),
            ("/metrics", &scraped),
        ] {
            assert!(!text.contains(secret.as_str()), "{what} found in {place}");
        }
    }
    let _ = std::fs::remove_file(file);
}
