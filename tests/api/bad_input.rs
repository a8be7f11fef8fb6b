//! Every bounded field: a bad value gets INVALID_ARGUMENT naming the field,
//! and nothing is written.

use patd::pb::{IssueRequest, ListRequest, RevokeAllRequest, RevokeRequest};
use pbjson_types::{Duration, Timestamp};
use tonic::{Code, Status};

use crate::helpers::{Patd, RawClient, RedisServer};

fn ttl(seconds: i64) -> Option<Duration> {
    Some(Duration { seconds, nanos: 0 })
}

fn issue_cases() -> Vec<(&'static str, IssueRequest)> {
    let ok = || IssueRequest {
        account_id: "acct".into(),
        ..Default::default()
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    vec![
        (
            "account_id",
            IssueRequest {
                account_id: String::new(),
                ..ok()
            },
        ),
        (
            "account_id",
            IssueRequest {
                account_id: "a".repeat(129),
                ..ok()
            },
        ),
        (
            "account_id",
            IssueRequest {
                account_id: "a\u{0}b".into(),
                ..ok()
            },
        ),
        (
            "account_id",
            IssueRequest {
                account_id: "line\nbreak".into(),
                ..ok()
            },
        ),
        (
            "note",
            IssueRequest {
                note: "n".repeat(257),
                ..ok()
            },
        ),
        (
            "note",
            IssueRequest {
                note: "bell\u{7}".into(),
                ..ok()
            },
        ),
        (
            "scopes",
            IssueRequest {
                scopes: (0..33).map(|i| format!("s{i}")).collect(),
                ..ok()
            },
        ),
        (
            "scopes",
            IssueRequest {
                scopes: vec!["Repo:Write".into()],
                ..ok()
            },
        ),
        (
            "scopes",
            IssueRequest {
                scopes: vec![String::new()],
                ..ok()
            },
        ),
        (
            "scopes",
            IssueRequest {
                scopes: vec!["s".repeat(65)],
                ..ok()
            },
        ),
        (
            "ttl",
            IssueRequest {
                ttl: ttl(0),
                ..ok()
            },
        ),
        (
            "ttl",
            IssueRequest {
                ttl: ttl(-60),
                ..ok()
            },
        ),
        (
            "ttl",
            IssueRequest {
                ttl: ttl(366 * 86_400),
                ..ok()
            },
        ),
        (
            "ttl",
            IssueRequest {
                ttl: Some(Duration {
                    seconds: 1,
                    nanos: 2_000_000_000,
                }),
                ..ok()
            },
        ),
        (
            "ttl",
            IssueRequest {
                ttl: ttl(60),
                expires_at: Some(Timestamp {
                    seconds: now + 600,
                    nanos: 0,
                }),
                ..ok()
            },
        ),
        (
            "expires_at",
            IssueRequest {
                expires_at: Some(Timestamp {
                    seconds: now - 1,
                    nanos: 0,
                }),
                ..ok()
            },
        ),
        (
            "expires_at",
            IssueRequest {
                expires_at: Some(Timestamp {
                    seconds: -5,
                    nanos: 0,
                }),
                ..ok()
            },
        ),
        (
            "expires_at",
            IssueRequest {
                expires_at: Some(Timestamp {
                    seconds: now + 400 * 86_400,
                    nanos: 0,
                }),
                ..ok()
            },
        ),
    ]
}

fn assert_names(status: &Status, field: &str, case: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
    assert!(
        status.message().starts_with(&format!("{field}: ")),
        "{case}: message {:?} does not name {field}",
        status.message()
    );
}

async fn run_matrix(client: &mut RawClient) {
    for (i, (field, req)) in issue_cases().into_iter().enumerate() {
        let status = client.issue(req).await.expect_err("bad issue accepted");
        assert_names(&status, field, &format!("issue case {i}"));
    }
    let revoke = |account: &str, id: &str| RevokeRequest {
        account_id: account.into(),
        token_id: id.into(),
    };
    for (field, req) in [
        ("account_id", revoke("", "abcdefghijklmnop")),
        ("token_id", revoke("acct", "")),
        ("token_id", revoke("acct", "short")),
        ("token_id", revoke("acct", "abcdefghijklmno!")),
    ] {
        let status = client.revoke(req).await.expect_err("bad revoke accepted");
        assert_names(&status, field, "revoke");
    }
    let status = client
        .revoke_all(RevokeAllRequest {
            account_id: "x".repeat(200),
        })
        .await
        .expect_err("bad revoke_all");
    assert_names(&status, "account_id", "revoke_all");
    let status = client
        .list(ListRequest {
            account_id: String::new(),
            ..Default::default()
        })
        .await
        .expect_err("bad list");
    assert_names(&status, "account_id", "list");
    for (page_size, page_token, field) in [(-1, "", "page_size"), (0, "not-ours", "page_token")] {
        let status = client
            .list(ListRequest {
                account_id: "acct".into(),
                page_size,
                page_token: page_token.into(),
                ..Default::default()
            })
            .await
            .expect_err("bad page");
        assert_names(&status, field, "list");
    }
}

#[tokio::test]
async fn bad_input_on_redis_is_refused_by_field_and_writes_nothing() {
    let redis = RedisServer::start();
    let patd = Patd::redis(&redis).await;
    let mut client = patd.client().await;
    assert_eq!(redis.dbsize(), 0);
    run_matrix(client.raw()).await;
    assert_eq!(redis.dbsize(), 0, "a rejected request wrote to redis");
}

#[tokio::test]
async fn bad_input_in_memory_is_refused_by_field_and_writes_nothing() {
    let patd = Patd::memory().await;
    let mut client = patd.client().await;
    run_matrix(client.raw()).await;
    let listed = client.list("acct").await.expect("list");
    assert!(listed.tokens.is_empty());
}
