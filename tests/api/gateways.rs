//! Real nginx and Caddy, running the configs from deploy/gateways/, in front
//! of an echo upstream: patd decides, the gateway obeys, and the upstream
//! only ever sees identities patd vouched for.

use crate::helpers::{Patd, RedisServer, issue, random_name};
use crate::helpers::{issue_revoked, issue_scoped, wait_inactive};
use crate::http_helpers::{Gateway, GatewayKind, Upstream, get};

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

async fn gateway_obeys_patd(kind: GatewayKind) {
    let mut redis = RedisServer::start();
    let patd = Patd::redis(&redis).await;
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(kind, patd.http_addr, upstream.addr).await;
    let mut client = patd.client().await;
    let account = random_name("acct-");

    let (expiring, _) = issue(&mut client, &account, 1).await;
    let valid = issue_scoped(&mut client, &account, &["repo:read", "repo:write"]).await;
    // The token id is the 16 characters after `pat_`.
    let valid_id = valid[4..20].to_owned();
    let admin = issue_scoped(&mut client, &account, &["admin"]).await;
    let revoked = issue_revoked(&mut client, &account).await;

    // An active token reaches the upstream with patd's identity, and a
    // client-forged identity header is replaced, not passed along.
    let reply = get(
        gateway.addr,
        "/api/things",
        &[
            ("Authorization", &bearer(&valid)),
            ("X-Account-Id", "mallory"),
            ("X-Token-Scopes", "admin"),
        ],
    )
    .await;
    assert_eq!(reply.status, 200, "{kind:?}: {reply:?}");
    assert_eq!(reply.body, "upstream reached\n");
    assert_eq!(upstream.calls(), 1);
    assert_eq!(upstream.last_values("x-account-id"), vec![account.as_str()]);
    assert_eq!(upstream.last_values("x-token-id"), [valid_id]);
    assert_eq!(
        upstream.last_values("x-token-scopes"),
        ["repo:read repo:write"]
    );

    // Every denial stops at the gateway.
    wait_inactive(&client, &expiring).await;
    let garbage = "pat_garbage";
    for (what, headers, challenge) in [
        ("no token", vec![], r#"Bearer realm="patd""#),
        (
            "forged identity only",
            vec![("X-Account-Id", account.clone())],
            r#"Bearer realm="patd""#,
        ),
        (
            "garbage",
            vec![("Authorization", bearer(garbage))],
            "invalid_token",
        ),
        (
            "revoked",
            vec![("Authorization", bearer(&revoked))],
            "invalid_token",
        ),
        (
            "expired",
            vec![("Authorization", bearer(&expiring))],
            "invalid_token",
        ),
    ] {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let reply = get(gateway.addr, "/api/things", &headers).await;
        assert_eq!(reply.status, 401, "{kind:?} {what}: {reply:?}");
        let shown = reply.header("www-authenticate").unwrap_or_default();
        assert!(
            shown.contains(challenge),
            "{kind:?} {what}: WWW-Authenticate {shown:?}"
        );
    }
    assert_eq!(
        upstream.calls(),
        1,
        "{kind:?}: a denied request reached the upstream"
    );

    // A route that requires a scope the token lacks.
    let reply = get(
        gateway.addr,
        "/api/admin/users",
        &[("Authorization", &bearer(&valid))],
    )
    .await;
    assert_eq!(reply.status, 403, "{kind:?}: {reply:?}");
    assert_eq!(upstream.calls(), 1);
    let reply = get(
        gateway.addr,
        "/api/admin/users",
        &[("Authorization", &bearer(&admin))],
    )
    .await;
    assert_eq!(reply.status, 200, "{kind:?}: {reply:?}");
    assert_eq!(upstream.calls(), 2);
    assert_eq!(upstream.last_values("x-token-scopes"), ["admin"]);

    // patd cannot reach its store: the gateway denies with a 5xx.
    redis.kill();
    let reply = get(
        gateway.addr,
        "/api/things",
        &[("Authorization", &bearer(&valid))],
    )
    .await;
    assert!(
        (500..600).contains(&reply.status),
        "{kind:?} with redis down: {reply:?}"
    );
    assert_eq!(
        upstream.calls(),
        2,
        "{kind:?}: forwarded while patd could not decide"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_auth_request_obeys_patd() {
    gateway_obeys_patd(GatewayKind::Nginx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caddy_forward_auth_obeys_patd() {
    gateway_obeys_patd(GatewayKind::Caddy).await;
}
