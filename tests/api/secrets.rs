//! Nothing secret at rest or in logs: after driving every RPC, no token value
//! (nor its secret part) appears in patd's log or anywhere in Redis.

use patd::pb::{IntrospectRequest, ListRequest, RevokeAllRequest, RevokeRequest};

use crate::helpers::{Patd, RedisServer, is_active, issue, issue_request, random_name};

#[tokio::test]
async fn no_token_value_reaches_the_logs_or_redis() {
    let redis = RedisServer::start();
    let patd = Patd::redis(&redis).await;
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
    client
        .list(ListRequest {
            account_id: account.clone(),
        })
        .await
        .unwrap();
    client
        .revoke(RevokeRequest {
            account_id: account.clone(),
            token_id: tokens[0].1.clone(),
        })
        .await
        .unwrap();
    client
        .revoke_all(RevokeAllRequest {
            account_id: account.clone(),
        })
        .await
        .unwrap();
    let _ = client.issue(issue_request("", 60)).await.expect_err("bad");
    let kept = issue(&mut client, &account, 600).await;
    client
        .introspect(IntrospectRequest {
            token: kept.0.clone(),
        })
        .await
        .unwrap();

    let logs = patd.logs();
    assert!(
        logs.contains("rpc=\"Introspect\""),
        "expected RPC lines in:\n{logs}"
    );
    assert!(logs.contains(&kept.1), "token ids are logged");
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
