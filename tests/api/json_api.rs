//! The JSON doors on the HTTP listener: the management API (same shapes as
//! grpcurl shows), RFC 9457 problems, caller roles, RFC 7662
//! `/oauth2/introspect`, and the third-party Python tools run against the
//! live API (openapi-spec-validator, schemathesis, a `requests` scenario),
//! from the virtualenv scripts/test.sh fills.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use patd::auth::{Role, new_caller_key};
use serde_json::{Value, json};

use crate::helpers::{Backend, Patd, PatdOptions, RedisServer, eventually, random_name};
use crate::http_helpers::{Reply, send};
use crate::operators::run_grpcurl;

/// A callers file: `console` (manage and introspect), `gw` (introspect
/// only), `admin` (manage only); removed on drop.
struct Callers {
    path: PathBuf,
    console: String,
    gateway: String,
    admin: String,
}

impl Callers {
    fn new() -> Self {
        let (console, a) = new_caller_key("console", &[Role::Manage, Role::Introspect]);
        let (gateway, b) = new_caller_key("gw", &[Role::Introspect]);
        let (admin, c) = new_caller_key("admin", &[Role::Manage]);
        let path = std::env::temp_dir().join(random_name("patd-json-callers-"));
        std::fs::write(&path, format!("{a}\n{b}\n{c}")).unwrap();
        Self {
            path,
            console,
            gateway,
            admin,
        }
    }

    async fn patd(&self, backend: Backend) -> Patd {
        Patd::spawn(PatdOptions::new(backend).env("PATD_CALLERS_FILE", self.path.to_str().unwrap()))
            .await
    }
}

impl Drop for Callers {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A JSON API client for one caller key (none: no `Authorization`).
struct Api {
    addr: SocketAddr,
    key: Option<String>,
}

impl Api {
    fn new(patd: &Patd, key: Option<&str>) -> Self {
        Self {
            addr: patd.http_addr,
            key: key.map(str::to_owned),
        }
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value, Reply) {
        let auth = self.key.as_ref().map(|k| format!("Bearer {k}"));
        let mut headers = vec![("content-type", "application/json")];
        if let Some(auth) = &auth {
            headers.push(("authorization", auth));
        }
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let reply = send(self.addr, method, path, &headers, body.as_bytes()).await;
        let value = serde_json::from_str(&reply.body).unwrap_or(Value::Null);
        (reply.status, value, reply)
    }
}

/// `POST /oauth2/introspect` with a form body and extra headers.
async fn oauth_introspect(addr: SocketAddr, form: &str, headers: &[(&str, &str)]) -> Reply {
    let mut all = vec![("content-type", "application/x-www-form-urlencoded")];
    all.extend_from_slice(headers);
    send(addr, "POST", "/oauth2/introspect", &all, form.as_bytes()).await
}

fn basic(name: &str, key: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{name}:{key}")))
}

fn assert_problem(reply: &Reply, status: u16, code: &str) -> Value {
    assert_eq!(reply.status, status, "{}", reply.body);
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json")
    );
    let body: Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(body["status"], status);
    assert_eq!(body["code"], code, "{body}");
    body
}

/// A JSON value without its nulls (grpcurl's `-emit-defaults` writes an
/// unset message field as null; pbjson leaves it out).
fn without_nulls(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

/// Seconds since the epoch of an RFC 3339 timestamp in UTC (`…Z`).
fn epoch_seconds(value: &Value) -> u64 {
    let text = value.as_str().expect("a timestamp");
    assert!(text.ends_with('Z'), "not Z-normalized: {text}");
    let t = humantime::parse_rfc3339(text).expect("RFC 3339");
    t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

#[tokio::test]
async fn json_and_grpcurl_show_the_same_shapes_for_the_same_token() {
    let patd = Patd::memory().await;
    let api = Api::new(&patd, None);
    let account = random_name("acct-");
    // snake_case is accepted in; the account comes from the path.
    let (status, issued, reply) = api
        .call(
            "POST",
            &format!("/v1/accounts/{account}/tokens"),
            Some(json!({"note": "CI deploy", "ttl": "3600s", "scopes": ["repo:read", "a"]})),
        )
        .await;
    assert_eq!(status, 201, "{issued}");
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    let token = issued["token"].as_str().unwrap().to_owned();
    assert_eq!(issued["info"]["accountId"], account);
    assert_eq!(issued["info"]["scopes"], json!(["a", "repo:read"]));

    // The first check sets lastUsedAt (then unchanged for a minute).
    api.call(
        "POST",
        "/v1/tokens:introspect",
        Some(json!({"token": token})),
    )
    .await;
    let (status, json_seen, _) = api
        .call(
            "POST",
            "/v1/tokens:introspect",
            Some(json!({"token": token})),
        )
        .await;
    assert!(json_seen["info"]["lastUsedAt"].is_string(), "{json_seen}");
    assert_eq!(status, 200);
    // Token checks at the JSON door are counted as at every other.
    let metrics = crate::observability::scrape(&patd).await;
    assert_eq!(
        crate::observability::counter(
            &metrics,
            "patd_introspections_total{door=\"json\",outcome=\"active\"}"
        ),
        2.0,
        "{metrics}"
    );
    let grpc_seen = run_grpcurl(
        &patd,
        &["-emit-defaults", "-d", &json!({"token": token}).to_string()],
        &["patd.v1.TokenService/Introspect"],
    );
    let grpc_seen: Value = serde_json::from_str(&grpc_seen).unwrap();
    assert_eq!(without_nulls(&json_seen), without_nulls(&grpc_seen));
    let mut seen_info = json_seen["info"].clone();
    seen_info.as_object_mut().unwrap().remove("lastUsedAt");
    assert_eq!(seen_info, issued["info"]);

    let (status, json_list, _) = api
        .call("GET", &format!("/v1/accounts/{account}/tokens"), None)
        .await;
    assert_eq!(status, 200);
    let grpc_list = run_grpcurl(
        &patd,
        &[
            "-emit-defaults",
            "-d",
            &json!({"account_id": account}).to_string(),
        ],
        &["patd.v1.TokenService/List"],
    );
    let grpc_list: Value = serde_json::from_str(&grpc_list).unwrap();
    assert_eq!(without_nulls(&json_list), without_nulls(&grpc_list));
    assert_eq!(json_list["tokens"][0]["tokenId"], issued["info"]["tokenId"]);
    assert_eq!(json_list["nextPageToken"], "");

    // An inactive token, with why, as grpcurl -emit-defaults shows it.
    let (_, inactive, _) = api
        .call(
            "POST",
            "/v1/tokens:introspect",
            Some(json!({"token": "pat_x"})),
        )
        .await;
    assert_eq!(inactive, json!({"active": false, "reason": "MALFORMED"}));
}

#[tokio::test]
async fn the_management_routes_issue_list_revoke_and_revoke_all() {
    let patd = Patd::memory().await;
    let api = Api::new(&patd, None);
    // Decoded exactly once: `%25` in the account stays `%25`.
    let account = random_name("acct é/%25");
    let encoded: String = url_path_segment(&account);
    let tokens = format!("/v1/accounts/{encoded}/tokens");
    let at =
        humantime::format_rfc3339_seconds(std::time::SystemTime::now() + Duration::from_secs(7200))
            .to_string();
    let (status, first, _) = api
        .call(
            "POST",
            &tokens,
            Some(json!({"note": "laptop", "expiresAt": at})),
        )
        .await;
    assert_eq!(status, 201, "{first}");
    // The percent-decoded segment is the account.
    assert_eq!(first["info"]["accountId"], account);
    assert_eq!(first["info"]["expiresAt"], json!(at));
    let (_, second, _) = api.call("POST", &tokens, Some(json!({}))).await;
    let first_id = first["info"]["tokenId"].as_str().unwrap();

    let (status, _, reply) = api
        .call("DELETE", &format!("{tokens}/{first_id}"), None)
        .await;
    assert_eq!(status, 204);
    assert!(reply.body.is_empty());
    let (_, list, _) = api.call("GET", &tokens, None).await;
    assert_eq!(list["tokens"].as_array().unwrap().len(), 1);
    assert_eq!(list["tokens"][0]["tokenId"], second["info"]["tokenId"]);

    let (_, _, reply) = api
        .call("DELETE", &format!("{tokens}/{first_id}"), None)
        .await;
    assert_problem(&reply, 404, "NOT_FOUND");

    let (status, revoked, _) = api.call("DELETE", &tokens, None).await;
    assert_eq!((status, revoked), (200, json!({"revoked": 1})));
    let (status, revoked, _) = api.call("DELETE", &tokens, None).await;
    assert_eq!((status, revoked), (200, json!({"revoked": 0})));

    // Paging: page_size and the token handed out.
    for _ in 0..3 {
        api.call("POST", &tokens, Some(json!({}))).await;
    }
    let (_, page, _) = api
        .call("GET", &format!("{tokens}?page_size=2"), None)
        .await;
    assert_eq!(page["tokens"].as_array().unwrap().len(), 2);
    let next = page["nextPageToken"].as_str().unwrap();
    let (_, rest, _) = api
        .call(
            "GET",
            &format!("{tokens}?pageToken={next}&pageSize=2"),
            None,
        )
        .await;
    assert_eq!(rest["tokens"].as_array().unwrap().len(), 1);
}

/// `grpcurl -emit-defaults -d <body> patd.v1.TokenService/<rpc>`, as JSON.
fn grpcurl_json(patd: &Patd, rpc: &str, body: &Value) -> Value {
    let out = run_grpcurl(
        patd,
        &["-emit-defaults", "-d", &body.to_string()],
        &[&format!("patd.v1.TokenService/{rpc}")],
    );
    serde_json::from_str(&out).unwrap()
}

/// The same keys at every depth (values aside): the shape two answers
/// about different tokens share.
fn shape(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), shape(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(shape).collect()),
        _ => Value::Null,
    }
}

#[tokio::test]
async fn rotate_keeps_both_active_for_the_grace_window_then_refuses_a_second_rotate() {
    let patd = Patd::memory().await;
    let api = Api::new(&patd, None);
    let account = random_name("acct-");
    let tokens = format!("/v1/accounts/{account}/tokens");
    let (_, issued, _) = api
        .call(
            "POST",
            &tokens,
            Some(json!({"note": "deploy", "scopes": ["repo:read"], "ttl": "3600s"})),
        )
        .await;
    let (old, old_id) = (
        issued["token"].as_str().unwrap().to_owned(),
        issued["info"]["tokenId"].as_str().unwrap().to_owned(),
    );

    // The custom method is only `…/{token_id}:rotate`.
    let (_, _, reply) = api
        .call("POST", &format!("{tokens}/{old_id}"), Some(json!({})))
        .await;
    assert_problem(&reply, 404, "NOT_FOUND");
    let rotate = format!("{tokens}/{old_id}:rotate");
    for (body, field) in [
        (json!({"grace": "-1s"}), "grace"),
        (
            json!({"grace": "60s", "accountId": "someone-else"}),
            "account_id",
        ),
        (json!({"tokenId": "AAAAAAAAAAAAAAAA"}), "token_id"),
        (
            json!({"ttl": "60s", "expiresAt": "2099-01-01T00:00:00Z"}),
            "ttl",
        ),
        (json!({"grace": 60}), "body"),
    ] {
        let (_, problem, reply) = api.call("POST", &rotate, Some(body.clone())).await;
        assert_problem(&reply, 400, "INVALID_ARGUMENT");
        assert_eq!(problem["field"], field, "{body}: {problem}");
    }
    let (_, problem, reply) = api
        .call("POST", &format!("{tokens}/short:rotate"), Some(json!({})))
        .await;
    assert_problem(&reply, 400, "INVALID_ARGUMENT");
    assert_eq!(problem["field"], "token_id");

    // snake_case in, as for every message.
    let (status, rotated, reply) = api
        .call(
            "POST",
            &rotate,
            Some(json!({"grace": "600s", "ttl": "7200s"})),
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    let new = rotated["token"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    assert_eq!(rotated["info"]["state"], "ACTIVE");
    assert_eq!(rotated["info"]["note"], "deploy");
    assert_eq!(rotated["info"]["scopes"], json!(["repo:read"]));
    let grace_end = epoch_seconds(&rotated["previousExpiresAt"]);
    let rotated_at = epoch_seconds(&rotated["info"]["createdAt"]);
    assert!((600..=601).contains(&(grace_end - rotated_at)), "{rotated}");
    assert_eq!(
        epoch_seconds(&rotated["info"]["expiresAt"]) - rotated_at,
        7200
    );

    // Both active during the grace window.
    for token in [&old, &new] {
        let (_, seen, _) = api
            .call(
                "POST",
                "/v1/tokens:introspect",
                Some(json!({"token": token})),
            )
            .await;
        assert_eq!(seen["active"], true, "{seen}");
    }
    // The listing shows the old one rotating until the window closes.
    let (_, listed, _) = api.call("GET", &tokens, None).await;
    let old_listed = listed["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tokenId"] == old_id.as_str())
        .unwrap()
        .clone();
    assert_eq!(old_listed["state"], "ROTATING");
    assert_eq!(old_listed["endedAt"], rotated["previousExpiresAt"]);

    // Rotated once: the table's 409, FAILED_PRECONDITION, naming the way on.
    let (_, problem, reply) = api.call("POST", &rotate, Some(json!({}))).await;
    assert_problem(&reply, 409, "FAILED_PRECONDITION");
    assert_eq!(
        problem["detail"],
        "the token was already rotated: rotate its successor"
    );
    assert!(problem.get("field").is_none());

    // The same shape grpcurl shows for a Rotate of the successor.
    let new_id = rotated["info"]["tokenId"].as_str().unwrap();
    let grpc = grpcurl_json(
        &patd,
        "Rotate",
        &json!({"account_id": account, "token_id": new_id, "grace": "600s", "ttl": "7200s"}),
    );
    assert_eq!(shape(&rotated), shape(&grpc));
    assert_eq!(grpc["info"]["state"], "ACTIVE");
}

#[tokio::test]
async fn revoke_token_by_value_says_whose_it_was_and_introspection_says_why() {
    let patd = Patd::memory().await;
    let api = Api::new(&patd, None);
    let account = random_name("acct-");
    let tokens = format!("/v1/accounts/{account}/tokens");
    let mut issued = Vec::new();
    for _ in 0..2 {
        let (_, answer, _) = api.call("POST", &tokens, Some(json!({}))).await;
        issued.push(answer);
    }
    let token = issued[0]["token"].as_str().unwrap().to_owned();
    let token_id = issued[0]["info"]["tokenId"].clone();

    let (_, problem, reply) = api
        .call(
            "POST",
            "/v1/tokens:revoke",
            Some(json!({"token": "not-a-token"})),
        )
        .await;
    assert_problem(&reply, 400, "INVALID_ARGUMENT");
    assert_eq!(problem["field"], "token");
    let (_, problem, reply) = api
        .call(
            "POST",
            "/v1/tokens:revoke",
            Some(json!({"token": token, "reason": "a\u{7}b"})),
        )
        .await;
    assert_problem(&reply, 400, "INVALID_ARGUMENT");
    assert_eq!(problem["field"], "reason");

    let (status, revoked, reply) = api
        .call(
            "POST",
            "/v1/tokens:revoke",
            Some(json!({"token": token, "reason": "leaked in CI logs"})),
        )
        .await;
    assert_eq!(status, 200, "{revoked}");
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    assert_eq!(revoked, json!({"accountId": account, "tokenId": token_id}));
    let (_, _, reply) = api
        .call("POST", "/v1/tokens:revoke", Some(json!({"token": token})))
        .await;
    assert_problem(&reply, 404, "NOT_FOUND");
    // grpcurl's answer for the other token has the same shape.
    let other = issued[1]["token"].as_str().unwrap();
    let grpc = grpcurl_json(&patd, "RevokeToken", &json!({"token": other}));
    assert_eq!(
        grpc,
        json!({"accountId": account, "tokenId": issued[1]["info"]["tokenId"]})
    );

    // Introspect's JSON says why, exactly as grpcurl shows it...
    let (_, seen, _) = api
        .call(
            "POST",
            "/v1/tokens:introspect",
            Some(json!({"token": token})),
        )
        .await;
    assert_eq!(seen, json!({"active": false, "reason": "REVOKED"}));
    let grpc = grpcurl_json(&patd, "Introspect", &json!({"token": token}));
    assert_eq!(without_nulls(&seen), without_nulls(&grpc));
    // ...while RFC 7662 says only `{"active":false}`.
    let reply = oauth_introspect(patd.http_addr, &format!("token={token}"), &[]).await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, r#"{"active":false}"#)
    );

    // Ended tokens are listed only when asked, with their state and end.
    let (_, live, _) = api.call("GET", &tokens, None).await;
    assert_eq!(live["tokens"], json!([]));
    for query in ["includeInactive=true", "include_inactive=true"] {
        let (status, all, _) = api.call("GET", &format!("{tokens}?{query}"), None).await;
        assert_eq!(status, 200, "{all}");
        let listed = all["tokens"].as_array().unwrap();
        assert_eq!(listed.len(), 2, "{all}");
        for t in listed {
            assert_eq!(t["state"], "REVOKED", "{t}");
            assert!(epoch_seconds(&t["endedAt"]) > 0, "{t}");
        }
        let grpc = grpcurl_json(
            &patd,
            "List",
            &json!({"account_id": account, "include_inactive": true}),
        );
        assert_eq!(without_nulls(&all), without_nulls(&grpc));
    }
    let (_, problem, reply) = api
        .call("GET", &format!("{tokens}?include_inactive=yes"), None)
        .await;
    assert_problem(&reply, 400, "INVALID_ARGUMENT");
    assert_eq!(problem["field"], "include_inactive");
}

#[tokio::test]
async fn the_audit_trail_pages_newest_first_as_grpcurl_shows_it() {
    let patd = Patd::memory().await;
    let api = Api::new(&patd, None);
    let account = random_name("acct-");
    let tokens = format!("/v1/accounts/{account}/tokens");
    let events = format!("/v1/accounts/{account}/auditEvents");
    let (_, issued, _) = api.call("POST", &tokens, Some(json!({}))).await;
    let id = issued["info"]["tokenId"].as_str().unwrap().to_owned();
    let (_, rotated, _) = api
        .call("POST", &format!("{tokens}/{id}:rotate"), Some(json!({})))
        .await;
    let successor = rotated["token"].as_str().unwrap().to_owned();
    let successor_id = rotated["info"]["tokenId"].clone();
    api.call(
        "POST",
        "/v1/tokens:revoke",
        Some(json!({"token": successor})),
    )
    .await;

    let (status, all, _) = api.call("GET", &events, None).await;
    assert_eq!(status, 200, "{all}");
    let actions: Vec<&str> = all["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["RevokeToken", "Rotate", "Issue"]);
    assert_eq!(all["events"][1]["tokenIds"], json!([id, successor_id]));
    assert_eq!(all["events"][0]["caller"], "anonymous");
    assert!(epoch_seconds(&all["events"][0]["time"]) > 0);
    assert_eq!(all["nextPageToken"], "");
    let grpc = grpcurl_json(&patd, "ListAuditEvents", &json!({"account_id": account}));
    assert_eq!(without_nulls(&all), without_nulls(&grpc));

    // Paging, either spelling.
    let (_, first, _) = api
        .call("GET", &format!("{events}?page_size=2"), None)
        .await;
    assert_eq!(first["events"].as_array().unwrap().len(), 2);
    let next = first["nextPageToken"].as_str().unwrap();
    assert!(!next.is_empty());
    let (_, rest, _) = api
        .call(
            "GET",
            &format!("{events}?pageToken={next}&pageSize=2"),
            None,
        )
        .await;
    assert_eq!(rest["events"], json!([all["events"][2]]));
    assert_eq!(rest["nextPageToken"], "");

    // A List page token is not one of these; List's include_inactive neither.
    let (_, problem, reply) = api
        .call("GET", &format!("{events}?include_inactive=true"), None)
        .await;
    assert_problem(&reply, 400, "INVALID_ARGUMENT");
    assert_eq!(problem["field"], "query");
    let (_, problem, reply) = api
        .call("GET", &format!("{events}?page_size=-1"), None)
        .await;
    assert_problem(&reply, 400, "INVALID_ARGUMENT");
    assert_eq!(problem["field"], "page_size");
    let (_, problem, reply) = api
        .call("GET", &format!("{events}?page_token=bm9wZQ"), None)
        .await;
    assert_problem(&reply, 400, "INVALID_ARGUMENT");
    assert_eq!(problem["field"], "page_token");
}

/// Percent-encodes everything but unreserved characters (RFC 3986 §2.3).
fn url_path_segment(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn bad_input_is_a_problem_naming_the_field_and_nothing_is_written() {
    let patd = Patd::spawn(
        PatdOptions::new(Backend::Memory)
            .env("PATD_MAX_TOKENS_PER_ACCOUNT", "1")
            .env("PATD_MAX_REQUEST_BYTES", "1024"),
    )
    .await;
    let api = Api::new(&patd, None);
    let account = random_name("acct-");
    let tokens = format!("/v1/accounts/{account}/tokens");
    let cases = [
        ("/v1/accounts/a%07b/tokens", json!({}), "account_id"),
        ("/v1/accounts/%FF/tokens", json!({}), "account_id"),
        (&tokens, json!({"scopes": ["BAD"]}), "scopes"),
        (&tokens, json!({"note": "x".repeat(300)}), "note"),
        (
            &tokens,
            json!({"ttl": "60s", "expiresAt": "2099-01-01T00:00:00Z"}),
            "ttl",
        ),
        (&tokens, json!({"ttl": "-5s"}), "ttl"),
        (&tokens, json!({"tll": "60s"}), "body"),
        (&tokens, json!({"ttl": 60}), "body"),
        (&tokens, json!({"accountId": "someone-else"}), "account_id"),
    ];
    for (path, body, field) in cases {
        let (_, problem, reply) = api.call("POST", path, Some(body.clone())).await;
        assert_problem(&reply, 400, "INVALID_ARGUMENT");
        assert_eq!(problem["field"], field, "{body}: {problem}");
    }
    let (_, problem, reply) = api
        .call("GET", &format!("{tokens}?page_size=-1"), None)
        .await;
    assert_problem(&reply, 400, "INVALID_ARGUMENT");
    assert_eq!(problem["field"], "page_size");
    let (_, problem, reply) = api.call("DELETE", &format!("{tokens}/%00"), None).await;
    assert_problem(&reply, 400, "INVALID_ARGUMENT");
    assert_eq!(problem["field"], "token_id");

    // Bounded like a gRPC message; JSON only. Each refusal has its line.
    let body_refusals = || patd.logs().matches(r#"field="body""#).count();
    // The log writer runs in the background, in order: once the Revoke's
    // line is out, every refusal above is counted.
    let settled = eventually(Duration::from_secs(5), || async {
        patd.logs().contains(r#"rpc="Revoke""#)
    })
    .await;
    assert!(settled, "{}", patd.logs());
    let before = body_refusals();
    let big = json!({"note": "x".repeat(2000)});
    let (_, _, reply) = api.call("POST", &tokens, Some(big)).await;
    assert_problem(&reply, 413, "OUT_OF_RANGE");
    let reply = send(
        patd.http_addr,
        "POST",
        &tokens,
        &[("content-type", "text/plain")],
        b"{}",
    )
    .await;
    assert_problem(&reply, 415, "INVALID_ARGUMENT");
    let logged = eventually(Duration::from_secs(5), || async {
        body_refusals() == before + 2
    })
    .await;
    assert!(logged, "{}", patd.logs());

    let (_, list, _) = api.call("GET", &tokens, None).await;
    assert_eq!(list["tokens"], json!([]), "a refused request wrote nothing");

    let (status, _, _) = api.call("POST", &tokens, Some(json!({}))).await;
    assert_eq!(status, 201);
    let (_, _, reply) = api.call("POST", &tokens, Some(json!({}))).await;
    assert_problem(&reply, 409, "RESOURCE_EXHAUSTED");
}

#[tokio::test]
async fn callers_need_their_role_on_every_json_route() {
    let callers = Callers::new();
    let patd = callers.patd(Backend::Memory).await;
    let console = Api::new(&patd, Some(&callers.console));
    let gateway = Api::new(&patd, Some(&callers.gateway));
    let nobody = Api::new(&patd, None);
    let wrong = Api::new(&patd, Some("patdck_wrong"));
    let tokens = format!("/v1/accounts/{}/tokens", random_name("acct-"));

    for api in [&nobody, &wrong] {
        let (_, _, reply) = api.call("GET", &tokens, None).await;
        assert_problem(&reply, 401, "UNAUTHENTICATED");
        assert_eq!(
            reply.header("www-authenticate"),
            Some(r#"Bearer realm="patd""#)
        );
        let (_, _, reply) = api
            .call("POST", "/v1/tokens:introspect", Some(json!({"token": "x"})))
            .await;
        assert_problem(&reply, 401, "UNAUTHENTICATED");
    }
    let (_, _, reply) = gateway.call("POST", &tokens, Some(json!({}))).await;
    assert_problem(&reply, 403, "PERMISSION_DENIED");
    // Rotate, RevokeToken and ListAuditEvents need manage too.
    let events = tokens.replace("/tokens", "/auditEvents");
    let rotate = format!("{tokens}/AAAAAAAAAAAAAAAA:rotate");
    let manage_only = [
        ("POST", rotate.as_str(), Some(json!({}))),
        ("POST", "/v1/tokens:revoke", Some(json!({"token": "x"}))),
        ("GET", events.as_str(), None),
    ];
    for (method, path, body) in &manage_only {
        for api in [&nobody, &wrong] {
            let (_, _, reply) = api.call(method, path, body.clone()).await;
            assert_problem(&reply, 401, "UNAUTHENTICATED");
        }
        let (_, _, reply) = gateway.call(method, path, body.clone()).await;
        assert_problem(&reply, 403, "PERMISSION_DENIED");
    }
    let admin = Api::new(&patd, Some(&callers.admin));
    let (status, trail, _) = admin.call("GET", &events, None).await;
    assert_eq!(
        (status, trail),
        (200, json!({"events": [], "nextPageToken": ""}))
    );
    let admin = Api::new(&patd, Some(&callers.admin));
    let (_, _, reply) = admin
        .call("POST", "/v1/tokens:introspect", Some(json!({"token": "x"})))
        .await;
    assert_problem(&reply, 403, "PERMISSION_DENIED");

    let (status, issued, _) = console.call("POST", &tokens, Some(json!({}))).await;
    assert_eq!(status, 201);
    let (status, seen, _) = gateway
        .call(
            "POST",
            "/v1/tokens:introspect",
            Some(json!({"token": issued["token"]})),
        )
        .await;
    assert_eq!((status, &seen["active"]), (200, &json!(true)));
    // The document is open, like health.
    let (status, doc, _) = nobody.call("GET", "/v1/openapi.json", None).await;
    assert_eq!((status, &doc["openapi"]), (200, &json!("3.1.0")));
    assert!(
        !patd.logs().contains(&callers.console),
        "a caller key was logged"
    );
}

#[tokio::test]
async fn rfc7662_introspection_answers_gateways_plugins() {
    let callers = Callers::new();
    let patd = callers.patd(Backend::Memory).await;
    let console = Api::new(&patd, Some(&callers.console));
    let account = random_name("acct-");
    let tokens = format!("/v1/accounts/{account}/tokens");
    let (_, issued, _) = console
        .call(
            "POST",
            &tokens,
            Some(json!({"scopes": ["b", "a"], "ttl": "600s"})),
        )
        .await;
    let token = issued["token"].as_str().unwrap();
    let form = format!("token={token}&token_type_hint=access_token");
    let addr = patd.http_addr;

    let auth = basic("gw", &callers.gateway);
    let reply = oauth_introspect(addr, &form, &[("authorization", &auth)]).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let active: Value = serde_json::from_str(&reply.body).unwrap();
    let created = epoch_seconds(&issued["info"]["createdAt"]);
    let expires = epoch_seconds(&issued["info"]["expiresAt"]);
    assert_eq!(
        active,
        json!({
            "active": true, "sub": account, "scope": "a b", "exp": expires, "iat": created,
            "jti": issued["info"]["tokenId"], "token_type": "pat",
        })
    );
    // client_secret_post and a bearer caller key work too.
    let post = format!("{form}&client_id=gw&client_secret={}", callers.gateway);
    assert_eq!(oauth_introspect(addr, &post, &[]).await.status, 200);
    let bearer = format!("Bearer {}", callers.gateway);
    assert_eq!(
        oauth_introspect(addr, &form, &[("authorization", &bearer)])
            .await
            .status,
        200
    );

    // Wrong key, a right key under another name, no credential: 401.
    for auth in [
        basic("gw", "patdck_wrong"),
        basic("console", &callers.gateway),
        String::new(),
    ] {
        let headers: Vec<(&str, &str)> = if auth.is_empty() {
            vec![]
        } else {
            vec![("authorization", &auth)]
        };
        let reply = oauth_introspect(addr, &form, &headers).await;
        assert_problem(&reply, 401, "UNAUTHENTICATED");
        assert!(reply.header("www-authenticate").unwrap().contains("Basic"));
    }
    let admin = basic("admin", &callers.admin);
    let reply = oauth_introspect(addr, &form, &[("authorization", &admin)]).await;
    assert_problem(&reply, 403, "PERMISSION_DENIED");
    let reply = oauth_introspect(addr, "token_type_hint=x", &[("authorization", &auth)]).await;
    assert_eq!(
        assert_problem(&reply, 400, "INVALID_ARGUMENT")["field"],
        "token"
    );

    // Any inactive token: exactly {"active": false}.
    console
        .call(
            "DELETE",
            &format!("{tokens}/{}", issued["info"]["tokenId"].as_str().unwrap()),
            None,
        )
        .await;
    for form in [form.clone(), "token=garbage".into(), "token=".into()] {
        let reply = oauth_introspect(addr, &form, &[("authorization", &auth)]).await;
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (200, r#"{"active":false}"#)
        );
        assert_eq!(reply.header("content-type"), Some("application/json"));
    }
    // Every answered check is counted at its door; refused callers and a
    // missing token never reach one.
    let metrics = crate::observability::scrape(&patd).await;
    for (outcome, n) in [("active", 3.0), ("revoked", 1.0), ("malformed", 2.0)] {
        let series = format!("patd_introspections_total{{door=\"rfc7662\",outcome=\"{outcome}\"}}");
        assert_eq!(
            crate::observability::counter(&metrics, &series),
            n,
            "{series}: {metrics}"
        );
    }
}

#[tokio::test]
async fn a_store_outage_is_503_never_inactive() {
    let mut redis = RedisServer::start();
    let patd = Patd::redis(&redis).await;
    let api = Api::new(&patd, None);
    let tokens = format!("/v1/accounts/{}/tokens", random_name("acct-"));
    let (_, issued, _) = api.call("POST", &tokens, Some(json!({}))).await;
    let token = issued["token"].as_str().unwrap().to_owned();
    redis.kill();
    let form = format!("token={token}");
    let reply = oauth_introspect(patd.http_addr, &form, &[]).await;
    assert_problem(&reply, 503, "UNAVAILABLE");
    assert!(!reply.body.contains(&token));
    let (_, _, reply) = api
        .call(
            "POST",
            "/v1/tokens:introspect",
            Some(json!({"token": token})),
        )
        .await;
    assert_problem(&reply, 503, "UNAVAILABLE");
    let (_, _, reply) = api.call("POST", &tokens, Some(json!({}))).await;
    assert_problem(&reply, 503, "UNAVAILABLE");
    redis.restart();
    let back = eventually(Duration::from_secs(15), || async {
        api.call("POST", &tokens, Some(json!({}))).await.0 == 201
    })
    .await;
    assert!(back, "the JSON API did not recover with Redis");
}

/// The virtualenv scripts/test.sh fills (`<target dir>/py-venv`).
fn venv_bin(tool: &str) -> PathBuf {
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let path = target
        .parent()
        .unwrap()
        .join("py-venv")
        .join("bin")
        .join(tool);
    assert!(
        path.exists(),
        "{} is missing: run scripts/test.sh (it installs the Python test tools)",
        path.display()
    );
    path
}

fn run(command: &mut Command) -> String {
    let out = command.output().expect("run a Python tool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{command:?} failed:\n{text}");
    text
}

#[tokio::test]
async fn openapi_spec_validator_accepts_the_served_document() {
    let patd = Patd::memory().await;
    let reply = send(patd.http_addr, "GET", "/v1/openapi.json", &[], b"").await;
    assert_eq!(reply.status, 200);
    let path = std::env::temp_dir().join(format!("{}.json", random_name("patd-openapi-")));
    std::fs::write(&path, &reply.body).unwrap();
    let out = run(Command::new(venv_bin("openapi-spec-validator")).arg(&path));
    let _ = std::fs::remove_file(&path);
    assert!(out.contains(": OK"), "{out}");
}

#[tokio::test]
async fn schemathesis_finds_no_server_error_and_no_schema_violation() {
    let callers = Callers::new();
    let patd = callers.patd(Backend::Memory).await;
    let url = format!("http://{}/v1/openapi.json", patd.http_addr);
    let key = format!("Authorization: Bearer {}", callers.console);
    let config = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/schemathesis.toml"
    );
    let out = tokio::task::spawn_blocking(move || {
        run(Command::new(venv_bin("schemathesis"))
            .args(["--config-file", config])
            .args(["run", &url, "-H", &key])
            .args(["--max-examples", "30", "--seed", "7", "--workers", "1"])
            .args(["--generation-database", "none", "--no-color"])
            .args(["--request-timeout", "10"])
            .args([
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,\
                 response_headers_conformance,response_schema_conformance,\
                 negative_data_rejection",
            ])
            .env("SCHEMATHESIS_HOOKS", "")
            .current_dir(std::env::temp_dir()))
    })
    .await
    .unwrap();
    // Its summary ("Test cases: N generated, N passed", "No issues found
    // in Ns"), for the record.
    for line in out
        .lines()
        .filter(|l| l.contains("generated") || l.contains("No issues found"))
    {
        eprintln!(
            "schemathesis: {}",
            line.trim_matches(|c: char| c == '=' || c.is_whitespace())
        );
    }
    assert!(out.contains("No issues found"), "{out}");
    assert!(!out.contains("Operations:       0"), "{out}");
}

#[tokio::test]
async fn a_python_requests_client_runs_the_console_scenario() {
    let callers = Callers::new();
    let patd = callers.patd(Backend::Memory).await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/console_scenario.py"
    );
    let base = format!("http://{}", patd.http_addr);
    let (console, gateway) = (callers.console.clone(), callers.gateway.clone());
    let out = tokio::task::spawn_blocking(move || {
        run(Command::new(venv_bin("python"))
            .arg(script)
            .env("PATD_URL", base)
            .env("PATD_CONSOLE_KEY", console)
            .env("PATD_GATEWAY_NAME", "gw")
            .env("PATD_GATEWAY_KEY", gateway))
    })
    .await
    .unwrap();
    assert!(out.contains("console scenario: ok"), "{out}");
}
