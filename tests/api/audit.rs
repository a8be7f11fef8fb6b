//! The audit trail (ListAuditEvents): every Issue, Revoke, RevokeAll,
//! Rotate and RevokeToken that changed an account left its event, written
//! in the same atomic step (Redis: the same script), newest first, with the
//! caller's name and the request id of its RPC log line; refused calls
//! leave none; the trail is capped by count and by age, survives a patd
//! restart on Redis, pages like List, needs the `manage` role, and is also
//! written as `audit` log lines.

use std::collections::HashSet;
use std::time::Duration;

use patd::pb::{AuditEvent, ListAuditEventsResponse, RotateRequest};
use tonic::Code;

use crate::helpers::{
    Backend, Client, Patd, PatdOptions, RedisServer, eventually, issue, issue_request, random_name,
};
use crate::rotation::rotate_request;

/// Both stores, each with its own Redis when it needs one.
fn backends(redis: &RedisServer) -> [Backend; 2] {
    [Backend::Memory, Backend::Redis { url: redis.url() }]
}

/// Every event of the account, newest first (one page of the maximum).
async fn events(client: &mut Client, account: &str) -> Vec<AuditEvent> {
    let page = client.audit_events(account, 500, "").await.expect("audit");
    assert!(page.next_page_token.is_empty(), "more than 500 events");
    page.events
}

/// `(action, token ids)` of each event, newest first.
fn summary(events: &[AuditEvent]) -> Vec<(String, Vec<String>)> {
    events
        .iter()
        .map(|e| (e.action.clone(), e.token_ids.clone()))
        .collect()
}

fn owned(action: &str, ids: &[&String]) -> (String, Vec<String>) {
    (
        action.to_owned(),
        ids.iter().map(|id| (*id).clone()).collect(),
    )
}

/// The JSON log lines of `patd` with this `target`.
fn json_lines(patd: &Patd, target: &str) -> Vec<serde_json::Value> {
    patd.logs()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["target"] == target)
        .collect()
}

#[tokio::test]
async fn each_change_appends_its_event_newest_first_with_caller_and_request_id() {
    let redis = RedisServer::start();
    let (file, console, _) = crate::security::callers_file();
    for backend in backends(&redis) {
        let patd = Patd::spawn(
            PatdOptions::new(backend.clone())
                .env("PATD_CALLERS_FILE", file.to_str().unwrap())
                .env("PATD_LOG_FORMAT", "json"),
        )
        .await;
        let mut client = patd.client().await.as_caller(&console);
        let account = random_name("acct-");
        let other = random_name("acct-");
        let (_, a) = issue(&mut client, &account, 600).await;
        let (_, b) = issue(&mut client, &account, 600).await;
        let (_, c) = issue(&mut client, &account, 600).await;
        let (_, elsewhere) = issue(&mut client, &other, 600).await;
        client.revoke(&account, &a).await.expect("revoke");
        let all = client.revoke_all(&account).await.expect("revoke all");
        assert_eq!(all.revoked, 2);

        let trail = events(&mut client, &account).await;
        let mut revoked_by_all = vec![b.clone(), c.clone()];
        revoked_by_all.sort();
        let mut last = trail[0].token_ids.clone();
        last.sort();
        assert_eq!(
            last, revoked_by_all,
            "{backend:?}: RevokeAll names the live tokens"
        );
        assert_eq!(
            summary(&trail[1..]),
            vec![
                owned("Revoke", &[&a]),
                owned("Issue", &[&c]),
                owned("Issue", &[&b]),
                owned("Issue", &[&a]),
            ],
            "{backend:?}"
        );
        assert_eq!(trail[0].action, "RevokeAll");
        let mut request_ids = HashSet::new();
        for event in &trail {
            assert_eq!(event.account_id, account);
            assert_eq!(event.caller, "console", "{backend:?}");
            assert_eq!(event.request_id.len(), 32, "{event:?}");
            assert!(event.request_id.bytes().all(|c| c.is_ascii_hexdigit()));
            request_ids.insert(event.request_id.clone());
            assert!(event.time.is_some());
        }
        assert_eq!(request_ids.len(), trail.len(), "one request id per call");
        // Newest first: ids (and times) never go up down the list.
        let ids: Vec<(u64, u64)> = trail
            .iter()
            .map(|e| {
                let (ms, seq) = e.event_id.split_once('-').expect("<ms>-<seq>");
                (ms.parse().unwrap(), seq.parse().unwrap())
            })
            .collect();
        assert!(ids.windows(2).all(|w| w[0] > w[1]), "{ids:?}");
        for (event, (ms, _)) in trail.iter().zip(&ids) {
            let time = event.time.as_ref().unwrap();
            assert_eq!(
                time.seconds as u64 * 1000 + time.nanos as u64 / 1_000_000,
                *ms
            );
        }
        // The other account's trail is its own.
        assert_eq!(
            summary(&events(&mut client, &other).await),
            vec![owned("Issue", &[&elsewhere])]
        );

        // Each event is also an `audit` log line, and its request id is the
        // one in the RPC's own line.
        let flushed = eventually(Duration::from_secs(5), || async {
            json_lines(&patd, "audit").len() >= 6
        })
        .await;
        assert!(flushed, "audit lines:\n{}", patd.logs());
        let audit_lines: Vec<_> = json_lines(&patd, "audit")
            .into_iter()
            .filter(|l| l["account_id"] == account.as_str())
            .collect();
        assert_eq!(audit_lines.len(), trail.len(), "{audit_lines:?}");
        let rpc_lines: Vec<serde_json::Value> = patd
            .logs()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|l| l["message"] == "rpc" && l["account_id"] == account.as_str())
            .collect();
        for (line, event) in audit_lines.iter().rev().zip(&trail) {
            assert_eq!(line["action"], event.action.as_str());
            assert_eq!(line["caller"], "console");
            assert_eq!(line["request_id"], event.request_id.as_str());
            assert_eq!(line["token_ids"], event.token_ids.join(" ").as_str());
            let rpc = rpc_lines
                .iter()
                .find(|l| l["request_id"] == event.request_id.as_str())
                .unwrap_or_else(|| panic!("no rpc line for {event:?}"));
            assert_eq!(rpc["rpc"], event.action.as_str());
        }
    }
    let _ = std::fs::remove_file(file);
}

#[tokio::test]
async fn without_callers_the_caller_is_anonymous() {
    let patd = Patd::memory().await;
    let mut client = patd.client().await;
    let account = random_name("acct-");
    issue(&mut client, &account, 600).await;
    let trail = events(&mut client, &account).await;
    assert_eq!(trail.len(), 1);
    assert_eq!(trail[0].caller, "anonymous");
}

#[tokio::test]
async fn refused_calls_write_no_event() {
    let redis = RedisServer::start();
    for backend in backends(&redis) {
        let patd = Patd::spawn(PatdOptions::new(backend.clone())).await;
        let mut client = patd.client().await;
        let account = random_name("acct-");
        let mut issued = Vec::new();
        for _ in 0..50 {
            issued.push(issue(&mut client, &account, 600).await.1);
        }
        // The limit (50) is reached: refused, and no event.
        let full = client.issue(issue_request(&account, 600)).await;
        assert_eq!(full.unwrap_err().code(), Code::ResourceExhausted);
        // Bad input.
        let bad = client
            .issue(patd::pb::IssueRequest {
                account_id: account.clone(),
                note: "x".repeat(300),
                ..Default::default()
            })
            .await;
        assert_eq!(bad.unwrap_err().code(), Code::InvalidArgument);
        let bad_id = client.revoke(&account, "not-an-id").await;
        assert_eq!(bad_id.unwrap_err().code(), Code::InvalidArgument);
        // An unknown token id with the account's own shard tag, someone
        // else's token, and one revoked twice.
        let unknown = format!("{}{}", &issued[0][..3], "0000000000000");
        let missing = client.revoke(&account, &unknown).await;
        assert_eq!(missing.unwrap_err().code(), Code::NotFound);
        let other = random_name("acct-");
        let (_, theirs) = issue(&mut client, &other, 600).await;
        let foreign = client.revoke(&account, &theirs).await;
        assert_eq!(foreign.unwrap_err().code(), Code::NotFound);
        client.revoke(&account, &issued[0]).await.expect("revoke");
        let twice = client.revoke(&account, &issued[0]).await;
        assert_eq!(twice.unwrap_err().code(), Code::NotFound);

        let trail = events(&mut client, &account).await;
        let mut expected = vec![owned("Revoke", &[&issued[0]])];
        expected.extend(issued.iter().rev().map(|id| owned("Issue", &[id])));
        assert_eq!(summary(&trail), expected, "{backend:?}");
        assert_eq!(
            summary(&events(&mut client, &other).await),
            vec![owned("Issue", &[&theirs])],
            "{backend:?}"
        );
    }
}

/// Rotate names the old token then its successor; RevokeToken names the
/// token it revoked (never its value, nor the caller's free-text reason)
/// with the caller; a token kept in its grace window is still named by
/// RevokeAll. Each event joins its RPC's log line on the request id.
#[tokio::test]
async fn rotate_and_revoke_token_append_one_event_each_with_the_caller() {
    let redis = RedisServer::start();
    let (file, console, _) = crate::security::callers_file();
    for backend in backends(&redis) {
        let patd = Patd::spawn(
            PatdOptions::new(backend.clone())
                .env("PATD_CALLERS_FILE", file.to_str().unwrap())
                .env("PATD_LOG_FORMAT", "json"),
        )
        .await;
        let mut client = patd.client().await.as_caller(&console);
        let account = random_name("acct-");
        let (_, old) = issue(&mut client, &account, 600).await;
        let rotated = client
            .rotate(rotate_request(&account, &old, 600_000))
            .await
            .expect("rotate");
        let new = rotated.info.expect("info").token_id;
        assert_eq!(
            summary(&events(&mut client, &account).await),
            vec![owned("Rotate", &[&old, &new]), owned("Issue", &[&old])],
            "{backend:?}: one Rotate event, old id first"
        );
        let marker = random_name("reason-");
        let revoked = client
            .revoke_token(&rotated.token, &marker)
            .await
            .expect("revoke token");
        assert_eq!(revoked.token_id, new);
        // The old token is live in its grace window: RevokeAll names it.
        let all = client.revoke_all(&account).await.expect("revoke all");
        assert_eq!(all.revoked, 1);

        let trail = events(&mut client, &account).await;
        assert_eq!(
            summary(&trail),
            vec![
                owned("RevokeAll", &[&old]),
                owned("RevokeToken", &[&new]),
                owned("Rotate", &[&old, &new]),
                owned("Issue", &[&old]),
            ],
            "{backend:?}"
        );
        for event in &trail {
            assert_eq!(event.account_id, account);
            assert_eq!(event.caller, "console", "{backend:?}");
            assert_eq!(event.request_id.len(), 32, "{event:?}");
        }
        let flushed = eventually(Duration::from_secs(5), || async {
            json_lines(&patd, "audit")
                .iter()
                .filter(|l| l["account_id"] == account.as_str())
                .count()
                >= trail.len()
        })
        .await;
        assert!(flushed, "audit lines:\n{}", patd.logs());
        let audit_lines: Vec<_> = json_lines(&patd, "audit")
            .into_iter()
            .filter(|l| l["account_id"] == account.as_str())
            .collect();
        assert_eq!(audit_lines.len(), trail.len(), "{audit_lines:?}");
        let rpc_lines: Vec<serde_json::Value> = patd
            .logs()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|l| l["message"] == "rpc")
            .collect();
        for (line, event) in audit_lines.iter().rev().zip(&trail) {
            assert_eq!(line["action"], event.action.as_str());
            assert_eq!(line["caller"], "console");
            assert_eq!(line["request_id"], event.request_id.as_str());
            assert_eq!(line["token_ids"], event.token_ids.join(" ").as_str());
            let rpc = rpc_lines
                .iter()
                .find(|l| l["request_id"] == event.request_id.as_str())
                .unwrap_or_else(|| panic!("no rpc line for {event:?}"));
            assert_eq!(rpc["rpc"], event.action.as_str());
        }
        // The reason is in RevokeToken's log line only: not in the event,
        // not in Redis.
        let revoke_token_line = rpc_lines
            .iter()
            .find(|l| l["rpc"] == "RevokeToken")
            .expect("RevokeToken's line");
        assert_eq!(revoke_token_line["reason"], marker.as_str());
        assert!(!format!("{trail:?}").contains(&marker));
        if let Backend::Redis { .. } = backend {
            let dump = format!("{:?}", redis.dump(&patd.key_prefix));
            assert!(dump.contains("RevokeToken"), "{dump}");
            assert!(!dump.contains(&marker), "the reason reached Redis");
        }
    }
    let _ = std::fs::remove_file(file);
}

/// Refused Rotates (already rotated, no such token, someone else's token,
/// a grace or a lifetime out of bounds) and refused RevokeTokens (not a
/// token, not a live one) append nothing to any trail.
#[tokio::test]
async fn refused_rotations_and_revocations_by_value_write_no_event() {
    let redis = RedisServer::start();
    for backend in backends(&redis) {
        let patd = Patd::spawn(PatdOptions::new(backend.clone())).await;
        let mut client = patd.client().await;
        let account = random_name("acct-");
        let other = random_name("acct-");
        let (old_value, old) = issue(&mut client, &account, 600).await;
        let (theirs_value, theirs) = issue(&mut client, &other, 600).await;
        // No grace: the old token ends at once.
        let rotated = client
            .rotate(rotate_request(&account, &old, 0))
            .await
            .expect("rotate");
        let new = rotated.info.expect("info").token_id;

        let refusals = [
            (rotate_request(&account, &old, 0), Code::FailedPrecondition),
            (
                rotate_request(&account, &format!("{}0000000000000", &new[..3]), 0),
                Code::NotFound,
            ),
            (rotate_request(&account, &theirs, 0), Code::NotFound),
            (
                rotate_request(&account, &new, 8 * 86_400_000),
                Code::InvalidArgument,
            ),
            (
                rotate_request(&account, &new, -1_000),
                Code::InvalidArgument,
            ),
            (
                RotateRequest {
                    ttl: Some(pbjson_types::Duration {
                        seconds: 400 * 86_400,
                        nanos: 0,
                    }),
                    ..rotate_request(&account, &new, 0)
                },
                Code::InvalidArgument,
            ),
        ];
        for (request, code) in refusals {
            let refused = client.rotate(request.clone()).await;
            assert_eq!(
                refused.expect_err("refused").code(),
                code,
                "{backend:?}: {request:?}"
            );
        }
        client.revoke(&other, &theirs).await.expect("revoke");
        for (value, code) in [
            ("not a token", Code::InvalidArgument),
            (old_value.as_str(), Code::NotFound),
            (theirs_value.as_str(), Code::NotFound),
        ] {
            let refused = client.revoke_token(value, "").await;
            assert_eq!(refused.expect_err("refused").code(), code, "{backend:?}");
        }

        assert_eq!(
            summary(&events(&mut client, &account).await),
            vec![owned("Rotate", &[&old, &new]), owned("Issue", &[&old])],
            "{backend:?}"
        );
        assert_eq!(
            summary(&events(&mut client, &other).await),
            vec![owned("Revoke", &[&theirs]), owned("Issue", &[&theirs])],
            "{backend:?}"
        );
    }
}

#[tokio::test]
async fn the_trail_keeps_at_most_the_configured_number_of_events() {
    let redis = RedisServer::start();
    for backend in backends(&redis) {
        let patd =
            Patd::spawn(PatdOptions::new(backend.clone()).env("PATD_AUDIT_MAX_EVENTS", "3")).await;
        let mut client = patd.client().await;
        let account = random_name("acct-");
        let mut ids = Vec::new();
        for _ in 0..5 {
            ids.push(issue(&mut client, &account, 600).await.1);
        }
        let trail = events(&mut client, &account).await;
        assert_eq!(
            summary(&trail),
            vec![
                owned("Issue", &[&ids[4]]),
                owned("Issue", &[&ids[3]]),
                owned("Issue", &[&ids[2]]),
            ],
            "{backend:?}"
        );
        if let Backend::Redis { .. } = backend {
            // Trimmed in Redis itself, not only hidden.
            let key = format!("{}:{{{}}}:e:{account}", patd.key_prefix, &ids[0][..3]);
            let len: u64 = redis::cmd("XLEN")
                .arg(&key)
                .query(&mut redis.conn())
                .unwrap();
            assert_eq!(len, 3);
        }
    }
}

/// With a 4 s retention: an event 2.5 s older than the next one is gone
/// (trimmed from the Redis stream at the next append, hidden before that)
/// while the younger one is still listed; then the whole trail of the
/// idle account vanishes.
#[tokio::test]
async fn events_older_than_the_retention_are_dropped_and_idle_trails_vanish() {
    let redis = RedisServer::start();
    for backend in backends(&redis) {
        let patd =
            Patd::spawn(PatdOptions::new(backend.clone()).env("PATD_AUDIT_RETENTION", "4s")).await;
        let mut client = patd.client().await;
        let account = random_name("acct-");
        let (_, old) = issue(&mut client, &account, 600).await;
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let (_, young) = issue(&mut client, &account, 600).await;
        // The first listing without the old event must still hold the
        // young one (it has 2.5 s left when the old one goes).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let seen = loop {
            let trail = events(&mut client, &account).await;
            if !trail.iter().any(|e| e.token_ids.contains(&old)) {
                break summary(&trail);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{backend:?}: the old event was never dropped"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(seen, vec![owned("Issue", &[&young])], "{backend:?}");
        if let Backend::Redis { .. } = backend {
            let key = format!("{}:{{{}}}:e:{account}", patd.key_prefix, &old[..3]);
            let (_, newest) = issue(&mut client, &account, 600).await;
            let entries: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
                .arg(&key)
                .arg("-")
                .arg("+")
                .query(&mut redis.conn())
                .unwrap();
            let text = format!("{entries:?}");
            assert!(!text.contains(&old), "the old entry was trimmed: {text}");
            assert!(text.contains(&newest), "{text}");
            let ttl: i64 = redis::cmd("PTTL")
                .arg(&key)
                .query(&mut redis.conn())
                .unwrap();
            assert!(ttl > 0 && ttl <= 4000, "the stream expires: {ttl}");
            let vanished = eventually(Duration::from_secs(10), || async {
                let exists: u64 = redis::cmd("EXISTS")
                    .arg(&key)
                    .query(&mut redis.conn())
                    .unwrap();
                exists == 0
            })
            .await;
            assert!(vanished, "the idle trail's key is gone");
        }
        let empty = eventually(Duration::from_secs(10), || {
            let mut client = client.clone();
            let account = account.clone();
            async move { events(&mut client, &account).await.is_empty() }
        })
        .await;
        assert!(empty, "{backend:?}: the idle trail is gone");
    }
}

#[tokio::test]
async fn the_trail_survives_a_patd_restart_on_redis() {
    let redis = RedisServer::start();
    let prefix = random_name("t");
    let options = || PatdOptions::new(Backend::Redis { url: redis.url() }).key_prefix(&prefix);
    let account = random_name("acct-");
    let first = Patd::spawn(options()).await;
    let mut client = first.client().await;
    let (_, a) = issue(&mut client, &account, 600).await;
    client.revoke(&account, &a).await.expect("revoke");
    let before = events(&mut client, &account).await;
    drop(first);
    let second = Patd::spawn(options()).await;
    let after = events(&mut second.client().await, &account).await;
    assert_eq!(after, before);
    assert_eq!(
        summary(&after),
        vec![owned("Revoke", &[&a]), owned("Issue", &[&a])]
    );
}

#[tokio::test]
async fn pages_follow_lists_rules_and_bad_pages_are_refused_by_field() {
    let redis = RedisServer::start();
    for backend in backends(&redis) {
        let patd = Patd::spawn(PatdOptions::new(backend.clone())).await;
        let mut client = patd.client().await;
        let account = random_name("acct-");
        for _ in 0..7 {
            issue(&mut client, &account, 600).await;
        }
        let all = events(&mut client, &account).await;
        assert_eq!(all.len(), 7);
        let mut paged = Vec::new();
        let mut sizes = Vec::new();
        let mut token = String::new();
        loop {
            let ListAuditEventsResponse {
                events,
                next_page_token,
            } = client
                .audit_events(&account, 3, &token)
                .await
                .expect("page");
            sizes.push(events.len());
            paged.extend(events);
            if next_page_token.is_empty() {
                break;
            }
            token = next_page_token;
        }
        assert_eq!(sizes, [3, 3, 1], "{backend:?}");
        assert_eq!(paged, all, "{backend:?}");
        // 0 is the default size (100).
        assert_eq!(
            client.audit_events(&account, 0, "").await.unwrap().events,
            all
        );

        // A List page token is not an audit page token.
        let list_token = client
            .list_page(&account, 1, "")
            .await
            .expect("list")
            .next_page_token;
        assert!(!list_token.is_empty());
        for (size, page_token, field) in [
            (-1, "", "page_size"),
            (0, "not a token", "page_token"),
            (0, list_token.as_str(), "page_token"),
            (0, "YXVkaXQxOng", "page_token"),
        ] {
            let status = client
                .audit_events(&account, size, page_token)
                .await
                .expect_err("refused");
            assert_eq!(status.code(), Code::InvalidArgument, "{page_token}");
            assert!(
                status.message().starts_with(field),
                "{backend:?}: {field}: {}",
                status.message()
            );
        }
        let status = client.audit_events("", 0, "").await.expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().starts_with("account_id"), "{status:?}");
        // Nothing was written by any of it.
        assert_eq!(events(&mut client, &account).await, all);
    }
}

#[tokio::test]
async fn listing_the_trail_needs_the_manage_role() {
    let (file, console, gateway) = crate::security::callers_file();
    let patd = Patd::spawn(
        PatdOptions::new(Backend::Memory).env("PATD_CALLERS_FILE", file.to_str().unwrap()),
    )
    .await;
    let client = patd.client().await;
    let account = random_name("acct-");
    issue(&mut client.as_caller(&console), &account, 600).await;
    let refused = client
        .as_caller(&gateway)
        .audit_events(&account, 0, "")
        .await
        .expect_err("introspect-only caller");
    assert_eq!(refused.code(), Code::PermissionDenied);
    let anonymous = client.clone().audit_events(&account, 0, "").await;
    assert_eq!(anonymous.unwrap_err().code(), Code::Unauthenticated);
    let allowed = client
        .as_caller(&console)
        .audit_events(&account, 0, "")
        .await
        .expect("manage caller");
    assert_eq!(allowed.events.len(), 1);
    let _ = std::fs::remove_file(file);
}

/// The README's grpcurl line for ListAuditEvents, run as written (with
/// this patd's address and account).
#[tokio::test]
async fn the_readme_grpcurl_recipe_lists_the_trail() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    let recipe = readme
        .lines()
        .find(|l| l.starts_with("grpcurl ") && l.contains("TokenService/ListAuditEvents"))
        .expect("README has a grpcurl line for ListAuditEvents");
    let patd = Patd::memory().await;
    let mut client = patd.client().await;
    let account = random_name("acct-");
    let (_, id) = issue(&mut client, &account, 600).await;
    let command = recipe
        .replacen("grpcurl", &crate::operators::grpcurl().to_string_lossy(), 1)
        .replace("127.0.0.1:50051", &patd.grpc_addr.to_string())
        .replace("acct-42", &account);
    let out = std::process::Command::new("sh")
        .args(["-c", &command])
        .output()
        .expect("sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{command}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    let event = &answer["events"][0];
    assert_eq!(event["action"], "Issue");
    assert_eq!(event["tokenIds"][0], id.as_str());
    assert_eq!(event["caller"], "anonymous");
}

/// A key of another type where an account's trail belongs (written by
/// hand) blocks nothing: the trail reads as empty, and the next change
/// replaces the key with its stream.
#[tokio::test]
async fn a_trail_key_of_the_wrong_type_blocks_no_change() {
    let redis = RedisServer::start();
    let patd = Patd::redis(&redis).await;
    let mut client = patd.client().await;
    let account = random_name("acct-");
    let (_, first) = issue(&mut client, &account, 600).await;
    let key = format!("{}:{{{}}}:e:{account}", patd.key_prefix, &first[..3]);
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("not a stream")
        .query(&mut redis.conn())
        .unwrap();
    assert!(events(&mut client, &account).await.is_empty());
    client.revoke(&account, &first).await.expect("revoke");
    assert_eq!(
        summary(&events(&mut client, &account).await),
        vec![owned("Revoke", &[&first])]
    );
}
