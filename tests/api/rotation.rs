//! The token lifecycle beyond Issue and Revoke (issue 12): Rotate with a
//! grace window, RevokeToken by value, why a token is inactive (through
//! Introspect, forward-auth and ext_authz), tombstones and List with ended
//! tokens. Every scenario runs on both stores; one transcript runs through
//! both and must read the same.

use std::collections::HashMap;
use std::time::Duration;

use envoy_types::ext_authz::v3::pb::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use patd::pb::token_info::State;
use patd::pb::{InactiveReason, IssueRequest, RotateRequest};
use tonic::Code;

use crate::helpers::{Backend, Client, Patd, PatdOptions, RedisServer, issue, random_name};
use crate::http_helpers::get;

/// One patd per store, with these settings, on a shared Redis.
async fn both(redis: &RedisServer, env: &[(&str, &str)]) -> Vec<(&'static str, Patd)> {
    let mut out = Vec::new();
    for (name, backend) in [
        ("memory", Backend::Memory),
        ("redis", Backend::Redis { url: redis.url() }),
    ] {
        let mut opts = PatdOptions::new(backend);
        for (k, v) in env {
            opts = opts.env(k, v);
        }
        out.push((name, Patd::spawn(opts).await));
    }
    out
}

fn duration(seconds: i64, nanos: i32) -> Option<pbjson_types::Duration> {
    Some(pbjson_types::Duration { seconds, nanos })
}

/// How concurrent calls ended, as status codes in code order (OK first).
async fn outcomes<T>(tasks: Vec<tokio::task::JoinHandle<Result<T, tonic::Status>>>) -> Vec<Code> {
    let mut codes = Vec::new();
    for t in tasks {
        codes.push(
            t.await
                .unwrap()
                .map(|_| Code::Ok)
                .unwrap_or_else(|e| e.code()),
        );
    }
    codes.sort_by_key(|c| *c as i32);
    codes
}

pub fn rotate_request(account: &str, token_id: &str, grace_ms: i64) -> RotateRequest {
    RotateRequest {
        account_id: account.to_owned(),
        token_id: token_id.to_owned(),
        grace: duration(
            grace_ms / 1000,
            i32::try_from(grace_ms % 1000).unwrap() * 1_000_000,
        ),
        ..Default::default()
    }
}

/// Introspect's answer: "active", or the reason's proto name.
async fn reason(client: &mut Client, token: &str) -> String {
    let r = client.introspect(token).await.expect("introspect");
    if r.active {
        assert_eq!(r.reason, 0, "an active token has no reason");
        return "active".to_owned();
    }
    InactiveReason::try_from(r.reason)
        .expect("a known reason")
        .as_str_name()
        .to_owned()
}

/// The states List (with ended tokens) shows, by token id.
async fn states(client: &mut Client, account: &str) -> HashMap<String, (String, bool)> {
    client
        .list_all(account)
        .await
        .expect("list")
        .tokens
        .into_iter()
        .map(|t| {
            let state = State::try_from(t.state).unwrap().as_str_name().to_owned();
            (t.token_id, (state, t.ended_at.is_some()))
        })
        .collect()
}

/// Recomputes the 6-character CRC32 checksum, as a forger would.
fn with_valid_checksum(signed: &str) -> String {
    let crc = crc32fast::hash(signed.as_bytes());
    format!("{signed}{:0>6}", base62::encode(crc))
}

/// The token's id with another secret, checksum valid.
fn other_secret(token: &str) -> String {
    let body_end = token.len() - 6;
    with_valid_checksum(&format!("{}{}", &token[..20], "A".repeat(body_end - 20)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_token_works_through_its_grace_window_then_reads_rotated() {
    let redis = RedisServer::start();
    for (store, patd) in both(&redis, &[]).await {
        let mut client = patd.client().await;
        let account = random_name("acct-");
        let issued = client
            .issue(IssueRequest {
                account_id: account.clone(),
                note: "CI deploy".into(),
                scopes: vec!["repo:read".into()],
                ttl: duration(3600, 0),
                ..Default::default()
            })
            .await
            .unwrap();
        let old_id = issued.info.unwrap().token_id;
        let rotated = client
            .rotate(rotate_request(&account, &old_id, 4000))
            .await
            .expect("rotate");
        let info = rotated.info.clone().unwrap();
        assert_eq!(info.note, "CI deploy", "{store}: the note is inherited");
        assert_eq!(info.scopes, vec!["repo:read".to_owned()], "{store}");
        // The same lifetime length as the old token, from now.
        let lifetime = info.expires_at.unwrap().seconds - info.created_at.unwrap().seconds;
        assert!((3599..=3600).contains(&lifetime), "{store}: {lifetime}");
        let ends = rotated.previous_expires_at.unwrap();
        let created = info.created_at.unwrap();
        let grace_ms = (ends.seconds - created.seconds) * 1000
            + i64::from(ends.nanos - created.nanos) / 1_000_000;
        assert_eq!(
            grace_ms, 4000,
            "{store}: the old token ends after the grace"
        );

        assert_eq!(
            reason(&mut client, &issued.token).await,
            "active",
            "{store}"
        );
        assert_eq!(
            reason(&mut client, &rotated.token).await,
            "active",
            "{store}"
        );
        let listed = states(&mut client, &account).await;
        assert_eq!(listed[&old_id], ("ROTATING".to_owned(), true), "{store}");
        assert_eq!(
            listed[&info.token_id],
            ("ACTIVE".to_owned(), false),
            "{store}"
        );
        // A token already rotated cannot be rotated again.
        let again = client
            .rotate(rotate_request(&account, &old_id, 0))
            .await
            .expect_err("second rotate");
        assert_eq!(again.code(), Code::FailedPrecondition, "{store}");

        tokio::time::sleep(Duration::from_millis(4300)).await;
        assert_eq!(
            reason(&mut client, &issued.token).await,
            "ROTATED",
            "{store}"
        );
        assert_eq!(
            reason(&mut client, &rotated.token).await,
            "active",
            "{store}"
        );
        let listed = states(&mut client, &account).await;
        assert_eq!(listed[&old_id], ("ROTATED".to_owned(), true), "{store}");
        let live = client.list(&account).await.unwrap().tokens;
        assert_eq!(live.len(), 1, "{store}: only the successor is live");
        assert_eq!(live[0].state, State::Active as i32);
        let again = client
            .rotate(rotate_request(&account, &old_id, 0))
            .await
            .expect_err("rotate after the grace");
        assert_eq!(again.code(), Code::FailedPrecondition, "{store}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_without_grace_ends_the_old_token_at_once() {
    let redis = RedisServer::start();
    for (store, patd) in both(&redis, &[]).await {
        let mut client = patd.client().await;
        let account = random_name("acct-");
        let (old, old_id) = issue(&mut client, &account, 600).await;
        let rotated = client
            .rotate(RotateRequest {
                account_id: account.clone(),
                token_id: old_id.clone(),
                ttl: duration(120, 0),
                ..Default::default()
            })
            .await
            .expect("rotate");
        let info = rotated.info.unwrap();
        assert_eq!(
            info.expires_at.unwrap().seconds - info.created_at.unwrap().seconds,
            120,
            "{store}: the requested ttl"
        );
        assert_eq!(rotated.previous_expires_at, info.created_at, "{store}");
        assert_eq!(reason(&mut client, &old).await, "ROTATED", "{store}");
        assert_eq!(
            reason(&mut client, &rotated.token).await,
            "active",
            "{store}"
        );
        let again = client
            .rotate(rotate_request(&account, &old_id, 0))
            .await
            .expect_err("rotate a rotated token");
        assert_eq!(again.code(), Code::FailedPrecondition, "{store}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_refuses_bad_requests_and_unknown_tokens() {
    let redis = RedisServer::start();
    for (store, patd) in both(&redis, &[("PATD_MAX_ROTATION_GRACE", "1h")]).await {
        let mut client = patd.client().await;
        let account = random_name("acct-");
        let (token, id) = issue(&mut client, &account, 600).await;
        let cases = [
            (
                rotate_request(&account, &id, 3_600_001),
                Code::InvalidArgument,
                "grace",
            ),
            (
                rotate_request(&account, &id, -1000),
                Code::InvalidArgument,
                "grace",
            ),
            (
                rotate_request(&account, "short", 0),
                Code::InvalidArgument,
                "token_id",
            ),
            (
                RotateRequest {
                    ttl: duration(400 * 86_400, 0),
                    ..rotate_request(&account, &id, 0)
                },
                Code::InvalidArgument,
                "ttl",
            ),
            (
                rotate_request(&random_name("other-"), &id, 0),
                Code::NotFound,
                "",
            ),
            (
                rotate_request(&account, &format!("{}zzzzzzzzzzzzz", &id[..3]), 0),
                Code::NotFound,
                "",
            ),
        ];
        for (request, code, field) in cases {
            let e = client.rotate(request).await.expect_err("refused");
            assert_eq!(e.code(), code, "{store}: {e:?}");
            assert!(e.message().starts_with(field), "{store}: {e:?}");
        }
        assert_eq!(
            reason(&mut client, &token).await,
            "active",
            "{store}: untouched"
        );
        assert_eq!(client.list(&account).await.unwrap().tokens.len(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_at_the_limit_succeeds_and_the_count_stays_the_same() {
    const LIMIT: usize = 50;
    let redis = RedisServer::start();
    for (store, patd) in both(&redis, &[]).await {
        let mut client = patd.client().await;
        let account = random_name("acct-");
        let mut ids = Vec::new();
        for _ in 0..LIMIT {
            ids.push(issue(&mut client, &account, 600).await.1);
        }
        let full = client
            .issue(crate::helpers::issue_request(&account, 600))
            .await
            .expect_err("at the limit");
        assert_eq!(full.code(), Code::ResourceExhausted, "{store}");
        let rotated = client
            .rotate(rotate_request(&account, &ids[0], 60_000))
            .await
            .expect("rotation never fails on the limit");
        let listed = client.list(&account).await.unwrap().tokens;
        let rotating = listed
            .iter()
            .filter(|t| t.state == State::Rotating as i32)
            .count();
        assert_eq!((listed.len(), rotating), (LIMIT + 1, 1), "{store}");
        // Still exactly at the limit: one more is refused, and one revoked
        // frees exactly one slot.
        let full = client
            .issue(crate::helpers::issue_request(&account, 600))
            .await
            .expect_err("still at the limit");
        assert_eq!(full.code(), Code::ResourceExhausted, "{store}");
        client.revoke(&account, &ids[1]).await.unwrap();
        issue(&mut client, &account, 600).await;
        let full = client
            .issue(crate::helpers::issue_request(&account, 600))
            .await
            .expect_err("at the limit again");
        assert_eq!(full.code(), Code::ResourceExhausted, "{store}");
        assert!(rotated.info.is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_rotations_of_one_token_have_exactly_one_winner() {
    let redis = RedisServer::start();
    for (store, patd) in both(&redis, &[]).await {
        let client = patd.client().await;
        let account = random_name("acct-");
        let mut rotated = Vec::new();
        for grace in [0, 30_000] {
            for _ in 0..5 {
                let (_, id) = issue(&mut client.clone(), &account, 600).await;
                rotated.push(id.clone());
                let tasks: Vec<_> = (0..2)
                    .map(|_| {
                        let mut c = client.clone();
                        let request = rotate_request(&account, &id, grace);
                        tokio::spawn(async move { c.rotate(request).await })
                    })
                    .collect();
                assert_eq!(
                    outcomes(tasks).await,
                    vec![Code::Ok, Code::FailedPrecondition],
                    "{store}, grace {grace}"
                );
            }
        }
        // Only the winners wrote an audit event: one Rotate per token.
        let trail = client
            .clone()
            .audit_events(&account, 500, "")
            .await
            .expect("audit")
            .events;
        let mut olds: Vec<String> = trail
            .iter()
            .filter(|e| e.action == "Rotate")
            .map(|e| e.token_ids[0].clone())
            .collect();
        olds.sort();
        rotated.sort();
        assert_eq!(olds, rotated, "{store}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_all_and_revoke_end_tokens_in_their_grace_window() {
    let redis = RedisServer::start();
    for (store, patd) in both(&redis, &[]).await {
        let mut client = patd.client().await;
        let account = random_name("acct-");
        let (old, id) = issue(&mut client, &account, 600).await;
        let rotated = client
            .rotate(rotate_request(&account, &id, 60_000))
            .await
            .unwrap();
        let all = client.revoke_all(&account).await.unwrap();
        assert_eq!(all.revoked, 2, "{store}: both the old and the new token");
        assert_eq!(reason(&mut client, &old).await, "REVOKED", "{store}");
        assert_eq!(
            reason(&mut client, &rotated.token).await,
            "REVOKED",
            "{store}"
        );
        assert!(client.list(&account).await.unwrap().tokens.is_empty());

        // Revoke by id, in the window.
        let (old, id) = issue(&mut client, &account, 600).await;
        client
            .rotate(rotate_request(&account, &id, 60_000))
            .await
            .unwrap();
        client.revoke(&account, &id).await.expect("revoke in grace");
        assert_eq!(reason(&mut client, &old).await, "REVOKED", "{store}");
        let again = client.revoke(&account, &id).await.expect_err("twice");
        assert_eq!(again.code(), Code::NotFound, "{store}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_token_revokes_by_value_whichever_account_holds_it() {
    let redis = RedisServer::start();
    for (store, patd) in both(&redis, &[]).await {
        let mut client = patd.client().await;
        let (a, b) = (random_name("acct-a-"), random_name("acct-b-"));
        let (token_a, id_a) = issue(&mut client, &a, 600).await;
        let (token_b, id_b) = issue(&mut client, &b, 600).await;
        let (kept, _) = issue(&mut client, &b, 600).await;
        for (token, account, id) in [(&token_a, &a, &id_a), (&token_b, &b, &id_b)] {
            let r = client
                .revoke_token(token, "found in a public repository")
                .await
                .expect("revoke by value");
            assert_eq!((&r.account_id, &r.token_id), (account, id), "{store}");
            assert_eq!(reason(&mut client, token).await, "REVOKED", "{store}");
            let twice = client
                .revoke_token(token, "again")
                .await
                .expect_err("twice");
            assert_eq!(twice.code(), Code::NotFound, "{store}");
        }
        assert_eq!(reason(&mut client, &kept).await, "active", "{store}");
        for malformed in ["", "pat_short", &format!("{}x", &kept[..kept.len() - 1])] {
            let e = client
                .revoke_token(malformed, "")
                .await
                .expect_err("malformed");
            assert_eq!(e.code(), Code::InvalidArgument, "{store}: {malformed:?}");
            assert!(e.message().starts_with("token"), "{store}: {e:?}");
        }
        // The right id with a wrong secret is no token: nothing revoked.
        let e = client
            .revoke_token(&other_secret(&kept), "")
            .await
            .expect_err("wrong secret");
        assert_eq!(e.code(), Code::NotFound, "{store}");
        let e = client
            .revoke_token(&kept, &"x".repeat(257))
            .await
            .expect_err("long reason");
        assert_eq!(e.code(), Code::InvalidArgument, "{store}");
        assert!(e.message().starts_with("reason"), "{store}: {e:?}");
        assert_eq!(reason(&mut client, &kept).await, "active", "{store}");
    }
}

/// What forward-auth and ext_authz say about a denied token: (status,
/// `X-Patd-Reason`, the challenge's `error_description`).
async fn gateway_reasons(patd: &Patd, token: &str) -> [(u16, String, String); 2] {
    let authorization = format!("Bearer {token}");
    let reply = get(
        patd.http_addr,
        "/v1/forward-auth",
        &[("Authorization", authorization.as_str())],
    )
    .await;
    let description = |challenge: &str| {
        challenge
            .split("error_description=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_default()
            .to_owned()
    };
    let forward_auth = (
        reply.status,
        reply.header("x-patd-reason").unwrap_or_default().to_owned(),
        description(reply.header("www-authenticate").unwrap_or_default()),
    );
    let request = CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    headers: HashMap::from([("authorization".to_owned(), authorization)]),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    let response = AuthorizationClient::new(patd.channel().await)
        .check(request)
        .await
        .expect("Check answers")
        .into_inner();
    let Some(HttpResponse::DeniedResponse(denied)) = response.http_response else {
        panic!("not denied");
    };
    let header = |name: &str| {
        denied
            .headers
            .iter()
            .filter_map(|h| h.header.as_ref())
            .find(|h| h.key == name)
            .map(|h| h.value.clone())
            .unwrap_or_default()
    };
    let check = (
        u16::try_from(denied.status.map_or(0, |s| s.code)).unwrap(),
        header("x-patd-reason"),
        description(&header("www-authenticate")),
    );
    [forward_auth, check]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_door_says_why_a_token_is_inactive_and_tombstones_expire() {
    let redis = RedisServer::start();
    for (store, patd) in both(&redis, &[("PATD_TOMBSTONE_TTL", "5s")]).await {
        let mut client = patd.client().await;
        let account = random_name("acct-");
        let expiring = issue(&mut client, &account, 1).await.0;
        let (revoked, revoked_id) = issue(&mut client, &account, 600).await;
        client.revoke(&account, &revoked_id).await.unwrap();
        let (rotated, rotated_id) = issue(&mut client, &account, 600).await;
        client
            .rotate(rotate_request(&account, &rotated_id, 0))
            .await
            .unwrap();
        let unknown = with_valid_checksum(&format!("pat_{}", "B".repeat(48)));
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let cases = [
            ("pat_short", "MALFORMED"),
            (unknown.as_str(), "UNKNOWN"),
            (expiring.as_str(), "EXPIRED"),
            (revoked.as_str(), "REVOKED"),
            (rotated.as_str(), "ROTATED"),
            // A revoked token's id with another secret: nothing to tell.
            (&other_secret(&revoked), "UNKNOWN"),
        ];
        for (token, expected) in cases {
            assert_eq!(reason(&mut client, token).await, expected, "{store}");
            let word = expected.to_lowercase();
            for answer in gateway_reasons(&patd, token).await {
                assert_eq!(answer, (401, word.clone(), word.clone()), "{store}");
            }
        }
        let listed = states(&mut client, &account).await;
        let mut seen: Vec<(&str, bool)> = listed.values().map(|(s, e)| (s.as_str(), *e)).collect();
        seen.sort();
        let expected = [
            ("ACTIVE", false),
            ("EXPIRED", true),
            ("REVOKED", true),
            ("ROTATED", true),
        ];
        assert_eq!(seen, expected, "{store}");
        // After PATD_TOMBSTONE_TTL nothing is left to tell.
        tokio::time::sleep(Duration::from_millis(5200)).await;
        for token in [&expiring, &revoked, &rotated] {
            assert_eq!(reason(&mut client, token).await, "UNKNOWN", "{store}");
        }
        let left: Vec<String> = states(&mut client, &account)
            .await
            .into_values()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(left, ["ACTIVE"], "{store}: only the successor is left");
    }
}

/// One scenario of every new RPC, written as lines with token ids replaced
/// by their order of appearance and times left out.
async fn transcript(patd: &Patd) -> Vec<String> {
    let mut client = patd.client().await;
    let account = random_name("acct-");
    let mut aliases: Vec<String> = Vec::new();
    let mut alias = |id: &str| match aliases.iter().position(|a| a == id) {
        Some(i) => format!("t{i}"),
        None => {
            aliases.push(id.to_owned());
            format!("t{}", aliases.len() - 1)
        }
    };
    let mut log = Vec::new();
    let code = |r: Result<String, tonic::Status>| r.unwrap_or_else(|e| format!("{:?}", e.code()));
    let (a, a_id) = issue(&mut client, &account, 600).await;
    let (b, b_id) = issue(&mut client, &account, 600).await;
    log.push(format!("issued {} {}", alias(&a_id), alias(&b_id)));
    let r1 = client.rotate(rotate_request(&account, &a_id, 3000)).await;
    let (a2, a2_id) = match &r1 {
        Ok(r) => (r.token.clone(), r.info.as_ref().unwrap().token_id.clone()),
        Err(_) => (String::new(), String::new()),
    };
    log.push(format!("rotate a: {}", code(r1.map(|_| alias(&a2_id)))));
    let again = client.rotate(rotate_request(&account, &a_id, 0)).await;
    log.push(format!(
        "rotate a again: {}",
        code(again.map(|_| "ok".into()))
    ));
    let r2 = client.rotate(rotate_request(&account, &b_id, 0)).await;
    let b2 = r2.as_ref().map(|r| r.token.clone()).unwrap_or_default();
    log.push(format!(
        "rotate b: {}",
        code(r2.map(|r| alias(&r.info.unwrap().token_id)))
    ));
    for (name, token) in [("a", &a), ("a2", &a2), ("b", &b), ("b2", &b2)] {
        log.push(format!(
            "introspect {name}: {}",
            reason(&mut client, token).await
        ));
    }
    let mut listed: Vec<String> = client
        .list_all(&account)
        .await
        .unwrap()
        .tokens
        .into_iter()
        .map(|t| {
            let state = State::try_from(t.state).unwrap().as_str_name();
            format!(
                "{} {state} ended:{}",
                alias(&t.token_id),
                t.ended_at.is_some()
            )
        })
        .collect();
    listed.sort();
    log.push(format!("list all: {listed:?}"));
    let revoked = client.revoke_token(&a2, "transcript").await;
    log.push(format!(
        "revoke_token a2: {}",
        code(revoked.map(|r| alias(&r.token_id)))
    ));
    let twice = client.revoke_token(&a2, "transcript").await;
    log.push(format!(
        "revoke_token a2 again: {}",
        code(twice.map(|_| "ok".into()))
    ));
    tokio::time::sleep(Duration::from_millis(3300)).await;
    for (name, token) in [("a", &a), ("a2", &a2), ("b", &b), ("b2", &b2)] {
        log.push(format!(
            "introspect {name}: {}",
            reason(&mut client, token).await
        ));
    }
    let live = client.list(&account).await.unwrap().tokens.len();
    log.push(format!("live: {live}"));
    let all = client
        .revoke_all(&account)
        .await
        .map(|r| r.revoked.to_string());
    log.push(format!("revoke_all: {}", code(all)));
    let mut listed: Vec<String> = client
        .list_all(&account)
        .await
        .unwrap()
        .tokens
        .into_iter()
        .map(|t| {
            let state = State::try_from(t.state).unwrap().as_str_name();
            format!("{} {state}", alias(&t.token_id))
        })
        .collect();
    listed.sort();
    log.push(format!("list all: {listed:?}"));
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_model_and_redis_read_the_same_transcript() {
    let redis = RedisServer::start();
    let mut transcripts = Vec::new();
    for (store, patd) in both(&redis, &[]).await {
        transcripts.push((store, transcript(&patd).await));
    }
    let (_, memory) = &transcripts[0];
    let (_, on_redis) = &transcripts[1];
    assert_eq!(memory, on_redis, "the stores disagree");
    // And the transcript says what the issue asks.
    let text = memory.join("\n");
    for line in [
        "rotate a again: FailedPrecondition",
        "introspect a: active",
        "revoke_token a2 again: NotFound",
        "introspect a: ROTATED",
        "introspect a2: REVOKED",
        "introspect b: ROTATED",
        "live: 1",
        "revoke_all: 1",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_of_the_lifecycle_writes_a_value_or_digest_to_the_log() {
    let redis = RedisServer::start();
    for (store, patd) in both(&redis, &[]).await {
        let mut client = patd.client().await;
        let account = random_name("acct-");
        let (old, id) = issue(&mut client, &account, 600).await;
        let rotated = client
            .rotate(rotate_request(&account, &id, 60_000))
            .await
            .unwrap();
        let (leaked, _) = issue(&mut client, &account, 600).await;
        // A responder pasting the value into the reason.
        client
            .revoke_token(&leaked, &format!("found {leaked} in a build log"))
            .await
            .unwrap();
        let _ = client.revoke_token(&leaked, "again").await;
        let _ = client.revoke_token(&other_secret(&old), "guess").await;
        for token in [&old, &rotated.token, &leaked, &other_secret(&old)] {
            client.introspect(token).await.unwrap();
            get(
                patd.http_addr,
                "/v1/forward-auth",
                &[("Authorization", &format!("Bearer {token}"))],
            )
            .await;
        }
        client.list_all(&account).await.unwrap();
        let flushed = crate::helpers::eventually(Duration::from_secs(5), || async {
            patd.logs().contains("rpc=\"RevokeToken\"") && patd.logs().contains("guess")
        })
        .await;
        assert!(flushed, "{store}: RevokeToken lines are logged");
        let logs = patd.logs();
        assert!(
            logs.contains("<token>"),
            "{store}: the reason is logged, redacted"
        );
        for token in [&old, &rotated.token, &leaked] {
            let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(token.as_bytes()));
            assert!(
                !logs.contains(token.as_str()),
                "{store}: a token value in the log"
            );
            assert!(
                !logs.contains(&token[20..52]),
                "{store}: a secret in the log"
            );
            assert!(!logs.contains(&digest), "{store}: a digest in the log");
        }
        if store == "redis" {
            let dump = format!("{:?}", redis.dump(&patd.key_prefix));
            for token in [&old, &rotated.token, &leaked] {
                assert!(!dump.contains(&token[20..52]), "a secret in redis");
            }
            assert!(!dump.contains("build log"), "the reason is not stored");
        }
    }
}

#[tokio::test]
async fn rotate_and_revoke_token_need_the_manage_role() {
    let (file, console, gateway) = crate::security::callers_file();
    let patd = Patd::spawn(
        PatdOptions::new(Backend::Memory).env("PATD_CALLERS_FILE", file.to_str().unwrap()),
    )
    .await;
    let client = patd.client().await;
    let (mut console, mut gateway) = (client.as_caller(&console), client.as_caller(&gateway));
    let account = random_name("acct-");
    let (token, id) = issue(&mut console, &account, 600).await;
    let refused = gateway
        .rotate(rotate_request(&account, &id, 0))
        .await
        .expect_err("a gateway cannot rotate");
    assert_eq!(refused.code(), Code::PermissionDenied);
    let refused = gateway
        .revoke_token(&token, "")
        .await
        .expect_err("a gateway cannot revoke");
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert_eq!(reason(&mut gateway, &token).await, "active");
    let rotated = console
        .rotate(rotate_request(&account, &id, 0))
        .await
        .unwrap();
    console.revoke_token(&rotated.token, "").await.unwrap();
    assert_eq!(reason(&mut gateway, &rotated.token).await, "REVOKED");
    let _ = std::fs::remove_file(file);
}

/// Every `grpcurl` command in README.md (continuation lines joined) that
/// contains `needle`.
fn readme_recipes(needle: &str) -> Vec<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let mut commands = Vec::new();
    let mut lines = readme.lines();
    while let Some(line) = lines.next() {
        let line = line.trim();
        if !line.starts_with("grpcurl ") {
            continue;
        }
        let mut command = line.to_owned();
        while command.ends_with('\\') {
            command.pop();
            command.push(' ');
            command.push_str(lines.next().unwrap_or_default().trim());
        }
        if command.contains(needle) {
            commands.push(command);
        }
    }
    assert!(!commands.is_empty(), "README has no recipe with {needle}");
    commands
}

/// Runs a README recipe as written, through `sh`, with the placeholders
/// filled in; returns its JSON output.
fn run_recipe(patd: &Patd, recipe: &str, fill: &[(&str, &str)]) -> serde_json::Value {
    let mut command = recipe.replace("127.0.0.1:50051", &patd.grpc_addr.to_string());
    for (placeholder, value) in fill {
        command = command.replace(placeholder, value);
    }
    let grpcurl = crate::operators::grpcurl();
    let path = format!(
        "{}:{}",
        grpcurl.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(&command)
        .env("PATH", path)
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "{command}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("grpcurl prints JSON")
}

#[tokio::test]
async fn the_readme_grpcurl_recipes_for_the_lifecycle_work() {
    let patd = Patd::memory().await;
    let mut client = patd.client().await;
    let account = random_name("acct-");
    let (old, old_id) = issue(&mut client, &account, 600).await;

    let rotate = &readme_recipes("TokenService/Rotate")[0];
    let rotated = run_recipe(
        &patd,
        rotate,
        &[("acct-42", &account), ("<token_id from List>", &old_id)],
    );
    let new = rotated["token"].as_str().expect("the new value").to_owned();
    assert!(rotated["previousExpiresAt"].is_string(), "{rotated}");
    assert_eq!(
        reason(&mut client, &old).await,
        "active",
        "in its grace window"
    );

    // Both RevokeToken recipes: the one with the RPCs, and the runbook's.
    let (leaked, leaked_id) = issue(&mut client, &account, 600).await;
    let recipes = readme_recipes("TokenService/RevokeToken");
    assert_eq!(recipes.len(), 2, "{recipes:?}");
    for (recipe, token) in recipes.iter().zip([&new, &leaked]) {
        let revoked = run_recipe(&patd, recipe, &[("pat_...", token)]);
        assert_eq!(revoked["accountId"], account.as_str(), "{revoked}");
    }
    let introspect = &readme_recipes("TokenService/Introspect")[0];
    let answer = run_recipe(&patd, introspect, &[("pat_...", &leaked)]);
    assert_eq!(answer["active"], false, "{answer}");
    assert_eq!(answer["reason"], "REVOKED", "{answer}");

    let list = &readme_recipes("include_inactive")[0];
    let listed = run_recipe(&patd, list, &[("acct-42", &account)]);
    let states: HashMap<String, String> = listed["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .map(|t| {
            (
                t["tokenId"].as_str().unwrap().to_owned(),
                t["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(states[&old_id], "ROTATING", "{listed}");
    assert_eq!(states[&leaked_id], "REVOKED", "{listed}");
    assert_eq!(states.len(), 3, "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_never_caches_a_rotating_token_past_its_grace_window() {
    let redis = RedisServer::start();
    for (store, patd) in both(&redis, &[("PATD_FORWARD_AUTH_MAX_AGE", "1h")]).await {
        let mut client = patd.client().await;
        let account = random_name("acct-");
        let (old, id) = issue(&mut client, &account, 3000).await;
        let allow = |token: String| {
            let addr = patd.http_addr;
            async move {
                let authorization = format!("Bearer {token}");
                get(
                    addr,
                    "/v1/forward-auth",
                    &[("Authorization", &authorization)],
                )
                .await
            }
        };
        let before = allow(old.clone()).await.max_age().expect("cached");
        assert!(before > 2000, "{store}: {before}");
        client
            .rotate(rotate_request(&account, &id, 20_000))
            .await
            .unwrap();
        let reply = allow(old).await;
        assert_eq!(reply.status, 200, "{store}: still allowed in the window");
        let max_age = reply.max_age().expect("cached");
        assert!(
            max_age <= 20,
            "{store}: max-age {max_age} outlives the grace window"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_rotating_one_token_on_one_redis_have_one_winner() {
    let redis = RedisServer::start();
    let first = Patd::redis(&redis).await;
    let second = Patd::spawn(
        PatdOptions::new(Backend::Redis { url: redis.url() }).key_prefix(&first.key_prefix),
    )
    .await;
    let clients = [first.client().await, second.client().await];
    let account = random_name("acct-");
    for round in 0..10 {
        let (_, id) = issue(&mut clients[0].clone(), &account, 600).await;
        let tasks: Vec<_> = clients
            .iter()
            .map(|c| {
                let mut c = c.clone();
                let request = rotate_request(&account, &id, 30_000 * (round % 2));
                tokio::spawn(async move { c.rotate(request).await })
            })
            .collect();
        assert_eq!(
            outcomes(tasks).await,
            vec![Code::Ok, Code::FailedPrecondition],
            "round {round}"
        );
    }
    // Ten rotations, each one successor: 10 live tokens, the odd rounds'
    // old tokens still in their windows.
    let listed = clients[1].clone().list(&account).await.unwrap().tokens;
    let active = listed
        .iter()
        .filter(|t| t.state == State::Active as i32)
        .count();
    let rotating = listed
        .iter()
        .filter(|t| t.state == State::Rotating as i32)
        .count();
    assert_eq!((active, rotating), (10, 5));
}
