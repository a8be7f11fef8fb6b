//! One decision table, three doors: Introspect, HTTP forward-auth and Envoy
//! ext_authz Check must agree on every case, so they can never drift apart.
//! Also the forward-auth specifics: the extra token header, caching, health
//! endpoints and request limits.

use std::collections::HashMap;
use std::time::Duration;

use envoy_types::ext_authz::v3::pb::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

use crate::helpers::{Backend, Patd, PatdOptions, RedisServer, issue, random_name};
use crate::helpers::{issue_revoked, issue_scoped, kill_redis_until_unavailable, wait_inactive};
use crate::http_helpers::get;

/// What each door answered, reduced to what a gateway acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Answers {
    /// Introspect: Ok(active) or the gRPC code.
    introspect: Result<bool, Code>,
    forward_auth: u16,
    /// Check: the HTTP status Envoy would send (200 = let through).
    check: u16,
}

fn check_request(authorization: Option<&str>, scopes: Option<&str>) -> CheckRequest {
    let mut headers = HashMap::new();
    if let Some(value) = authorization {
        headers.insert("authorization".to_owned(), value.to_owned());
    }
    let mut context_extensions = HashMap::new();
    if let Some(scopes) = scopes {
        context_extensions.insert("patd_scopes".to_owned(), scopes.to_owned());
    }
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions,
            ..Default::default()
        }),
    }
}

async fn ask_all(patd: &Patd, token: Option<&str>, scope: Option<&str>) -> Answers {
    let mut client = patd.client().await;
    let introspect = client
        .introspect(token.unwrap_or_default())
        .await
        .map(|r| r.active)
        .map_err(|s| s.code());

    let authorization = token.map(|t| format!("Bearer {t}"));
    let path = match scope {
        Some(s) => format!("/v1/forward-auth?scope={s}"),
        None => "/v1/forward-auth".to_owned(),
    };
    let headers: Vec<(&str, &str)> = authorization
        .as_deref()
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    let forward_auth = get(patd.http_addr, &path, &headers).await.status;

    let mut ext_authz = AuthorizationClient::new(patd.channel().await);
    let response = ext_authz
        .check(check_request(authorization.as_deref(), scope))
        .await
        .expect("Check answers in its response, not as an RPC error")
        .into_inner();
    let code = response.status.as_ref().map_or(-1, |s| s.code);
    let check = match response.http_response {
        Some(HttpResponse::OkResponse(_)) if code == 0 => 200,
        Some(HttpResponse::DeniedResponse(d)) if code != 0 => {
            d.status.map_or(403, |s| u16::try_from(s.code).unwrap_or(0))
        }
        other => panic!("inconsistent CheckResponse: status {code}, http {other:?}"),
    };
    Answers {
        introspect,
        forward_auth,
        check,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspect_forward_auth_and_check_agree_on_every_case() {
    let mut redis = RedisServer::start();
    let patd = Patd::redis(&redis).await;
    let mut client = patd.client().await;
    let account = random_name("acct-");
    let (expiring, _) = issue(&mut client, &account, 1).await;
    let scoped = issue_scoped(&mut client, &account, &["repo:read"]).await;
    let revoked = issue_revoked(&mut client, &account).await;
    let mut tampered = scoped.clone();
    tampered.pop();
    tampered.push(if scoped.ends_with('A') { 'B' } else { 'A' });
    wait_inactive(&client, &expiring).await;

    let allow = |introspect| Answers {
        introspect: Ok(introspect),
        forward_auth: 200,
        check: 200,
    };
    let unauthorized = Answers {
        introspect: Ok(false),
        forward_auth: 401,
        check: 401,
    };
    let table: Vec<(&str, Option<&str>, Option<&str>, Answers)> = vec![
        ("no credential", None, None, unauthorized.clone()),
        ("garbage", Some("garbage"), None, unauthorized.clone()),
        ("tampered", Some(&tampered), None, unauthorized.clone()),
        ("revoked", Some(&revoked), None, unauthorized.clone()),
        ("expired", Some(&expiring), None, unauthorized.clone()),
        ("active", Some(&scoped), None, allow(true)),
        (
            "active with the scope",
            Some(&scoped),
            Some("repo:read"),
            allow(true),
        ),
        (
            "active without the scope",
            Some(&scoped),
            Some("repo:write"),
            Answers {
                introspect: Ok(true),
                forward_auth: 403,
                check: 403,
            },
        ),
        // The route's configuration is wrong, not the user's token: a
        // server error at both gateway doors, never a 4xx that blames the
        // user (Introspect takes no scope).
        (
            "malformed required scope",
            Some(&scoped),
            Some("BAD"),
            Answers {
                introspect: Ok(true),
                forward_auth: 500,
                check: 500,
            },
        ),
    ];
    for (case, token, scope, expected) in table {
        assert_eq!(ask_all(&patd, token, scope).await, expected, "case: {case}");
    }

    kill_redis_until_unavailable(&mut redis, &patd.client().await, &scoped).await;
    let down = ask_all(&patd, Some(&scoped), None).await;
    assert_eq!(
        down,
        Answers {
            introspect: Err(Code::Unavailable),
            forward_auth: 503,
            check: 503
        },
        "store down"
    );
}

#[tokio::test]
async fn forward_auth_reads_the_extra_header_and_caches_only_when_allowed() {
    let patd = Patd::spawn(
        PatdOptions::new(Backend::Memory)
            .env("PATD_FORWARD_AUTH_TOKEN_HEADER", "X-API-Key")
            .env("PATD_FORWARD_AUTH_MAX_AGE", "60s"),
    )
    .await;
    let mut client = patd.client().await;
    let (long, _) = issue(&mut client, "acct", 3600).await;
    let (short, _) = issue(&mut client, "acct", 20).await;

    let reply = get(patd.http_addr, "/v1/forward-auth", &[("X-API-Key", &long)]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-account-id"), Some("acct"));
    assert_eq!(reply.header("cache-control"), Some("private, max-age=60"));
    // Never cached beyond the token's own expiry.
    let reply = get(
        patd.http_addr,
        "/v1/forward-auth",
        &[("Authorization", &format!("bearer {short}"))],
    )
    .await;
    assert_eq!(reply.status, 200);
    let max_age = reply.max_age().expect("max-age");
    assert!(max_age <= 20, "max-age {max_age} outlives the token");
    // Denials are never cached.
    let reply = get(patd.http_addr, "/v1/forward-auth", &[("X-API-Key", "nope")]).await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    // Two Authorization headers are ambiguous: invalid, not missing.
    let two = get(
        patd.http_addr,
        "/v1/forward-auth",
        &[
            ("Authorization", &format!("Bearer {long}")),
            ("Authorization", "Bearer other"),
        ],
    )
    .await;
    assert_eq!(two.status, 401);
    assert!(
        two.header("www-authenticate")
            .unwrap_or_default()
            .contains("invalid_token")
    );
    // A malformed required scope is the gateway's mistake: deny, name it.
    let bad = get(
        patd.http_addr,
        "/v1/forward-auth?scope=Bad%20Scope",
        &[("X-API-Key", &long)],
    )
    .await;
    assert_eq!(bad.status, 500);
    assert!(bad.body.contains("scope:"), "{bad:?}");
}

#[tokio::test]
async fn forward_auth_without_the_setting_ignores_other_headers() {
    let patd = Patd::memory().await;
    let mut client = patd.client().await;
    let (token, _) = issue(&mut client, "acct", 60).await;
    let reply = get(patd.http_addr, "/v1/forward-auth", &[("X-API-Key", &token)]).await;
    assert_eq!(reply.status, 401);
    assert_eq!(
        reply.header("www-authenticate"),
        Some(r#"Bearer realm="patd""#)
    );
    let reply = get(
        patd.http_addr,
        "/v1/forward-auth",
        &[("Authorization", &format!("Bearer {token}"))],
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("cache-control"), Some("no-store"));
}

#[tokio::test]
async fn healthz_is_the_process_and_readyz_is_the_store() {
    let mut redis = RedisServer::start();
    let patd = Patd::redis(&redis).await;
    assert_eq!(get(patd.http_addr, "/healthz", &[]).await.status, 200);
    assert_eq!(get(patd.http_addr, "/readyz", &[]).await.status, 200);
    redis.kill();
    assert_eq!(get(patd.http_addr, "/healthz", &[]).await.status, 200);
    let ready = get(patd.http_addr, "/readyz", &[]).await;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.body, "store unavailable\n");
}

#[tokio::test]
async fn huge_or_slow_request_heads_cannot_pin_a_connection() {
    let patd = Patd::memory().await;
    let big = "x".repeat(16 * 1024);
    let reply = get(patd.http_addr, "/v1/forward-auth", &[("X-Padding", &big)]).await;
    assert_eq!(reply.status, 431, "{:?}", reply.status);

    // Half a request head, then silence: patd hangs up after its header
    // read timeout instead of waiting forever.
    let mut stream = tokio::net::TcpStream::connect(patd.http_addr)
        .await
        .unwrap();
    stream
        .write_all(b"GET /v1/forward-auth HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "the connection was still open after 30 s");
    // Connect and say nothing at all: dropped too.
    let mut silent = tokio::net::TcpStream::connect(patd.http_addr)
        .await
        .unwrap();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(30), silent.read_to_end(&mut buf)).await;
    assert!(
        closed.is_ok(),
        "a silent connection was still open after 30 s"
    );
    // The server is still fine.
    assert_eq!(get(patd.http_addr, "/healthz", &[]).await.status, 200);
}

/// ext_authz Check with these context extensions; the denial's HTTP status
/// (200 = let through).
async fn check_with_extensions(patd: &Patd, token: &str, extensions: &[(&str, &str)]) -> u16 {
    let mut request = check_request(Some(&format!("Bearer {token}")), None);
    if let Some(attributes) = request.attributes.as_mut() {
        for (key, value) in extensions {
            attributes
                .context_extensions
                .insert((*key).to_owned(), (*value).to_owned());
        }
    }
    let response = AuthorizationClient::new(patd.channel().await)
        .check(request)
        .await
        .expect("Check answers in its response")
        .into_inner();
    match response.http_response {
        Some(HttpResponse::OkResponse(_)) => 200,
        Some(HttpResponse::DeniedResponse(d)) => d.status.map_or(403, |s| s.code as u16),
        other => panic!("unexpected http response {other:?}"),
    }
}

#[tokio::test]
async fn a_misspelled_or_empty_route_requirement_denies_at_both_doors_without_blaming_the_user() {
    let patd = Patd::memory().await;
    let mut client = patd.client().await;
    // A token without `admin`: a silently dropped requirement would let it
    // through.
    let token = issue_scoped(&mut client, "acct", &["repo:read"]).await;
    let bearer = format!("Bearer {token}");
    for query in [
        "scopes=admin",
        "Scope=admin",
        "scope=",
        "scope=%20",
        "scope=admin&x=1",
    ] {
        let reply = get(
            patd.http_addr,
            &format!("/v1/forward-auth?{query}"),
            &[("Authorization", &bearer)],
        )
        .await;
        assert_eq!(reply.status, 500, "?{query}: {reply:?}");
        assert_eq!(reply.header("www-authenticate"), None, "?{query}");
    }
    for extensions in [
        vec![("patd_scope", "admin")],
        vec![("PATD_SCOPES", "admin")],
        vec![("patd_scopes", "")],
        vec![("patd_scopes", "  ")],
    ] {
        let status = check_with_extensions(&patd, &token, &extensions).await;
        assert_eq!(status, 500, "{extensions:?}");
    }
    // Extensions of other filters are not ours to judge.
    let other = check_with_extensions(&patd, &token, &[("virtual_host", "api")]).await;
    assert_eq!(other, 200);
    assert!(patd.logs().contains("route is misconfigured"));
}

#[tokio::test]
async fn two_different_credentials_are_an_invalid_token_at_both_gateway_doors() {
    let patd = Patd::spawn(
        PatdOptions::new(Backend::Memory).env("PATD_FORWARD_AUTH_TOKEN_HEADER", "X-API-Key"),
    )
    .await;
    let mut client = patd.client().await;
    let (mine, _) = issue(&mut client, "acct-a", 600).await;
    let (theirs, _) = issue(&mut client, "acct-b", 600).await;
    let bearer = format!("Bearer {mine}");
    let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        (
            "two X-API-Key headers",
            vec![("X-API-Key", &mine), ("X-API-Key", &theirs)],
        ),
        (
            "Bearer plus a different X-API-Key",
            vec![("Authorization", &bearer), ("X-API-Key", &theirs)],
        ),
    ];
    for (case, headers) in cases {
        let reply = get(patd.http_addr, "/v1/forward-auth", &headers).await;
        assert_eq!(reply.status, 401, "{case}");
        assert!(
            reply
                .header("www-authenticate")
                .unwrap_or_default()
                .contains("invalid_token"),
            "{case}"
        );
    }
    // The same token twice over is not ambiguous.
    let same = get(
        patd.http_addr,
        "/v1/forward-auth",
        &[("Authorization", &bearer), ("X-API-Key", &mine)],
    )
    .await;
    assert_eq!(same.status, 200);
    assert_eq!(same.header("x-account-id"), Some("acct-a"));
}

/// Whether Check lets the request through, with the `Authorization` value
/// given in the `headers` map, or (Envoy's `encode_raw_headers`) as raw
/// bytes in `header_map`.
async fn check_allows(patd: &Patd, authorization: &[u8], raw: bool) -> bool {
    use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
    let mut request = check_request(None, None);
    let http = request
        .attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|r| r.http.as_mut())
        .expect("http attributes");
    if raw {
        http.header_map = Some(HeaderMap {
            headers: vec![HeaderValue {
                key: "authorization".into(),
                raw_value: authorization.to_vec(),
                ..Default::default()
            }],
        });
    } else {
        let text = String::from_utf8(authorization.to_vec()).expect("utf-8");
        http.headers.insert("authorization".into(), text);
    }
    let response = AuthorizationClient::new(patd.channel().await)
        .check(request)
        .await
        .expect("Check answers in its response")
        .into_inner();
    matches!(response.http_response, Some(HttpResponse::OkResponse(_)))
}

/// Token-shaped strings around a valid token: characters appended,
/// prepended or put in its place (newlines, NUL, no-break and ideographic
/// spaces, zero-width space, commas, quotes, non-ASCII), truncation, and
/// two tokens joined as a proxy joins repeated headers. Spaces and tabs at
/// the ends are HTTP's optional whitespace, not token bytes, so they are
/// only put inside.
fn near_tokens(token: String) -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    const ODD: [char; 14] = [
        '\n', '\r', '\0', '\u{a0}', '\u{3000}', '\u{200b}', '\u{7f}', 'x', ',', '"', '=', 'é', ' ',
        '\t',
    ];
    let edge = proptest::sample::select(&ODD[..12]);
    let inner = proptest::sample::select(&ODD[..]);
    let len = token.len();
    let (t1, t2, t3, t4, t5) = (
        token.clone(),
        token.clone(),
        token.clone(),
        token.clone(),
        token.clone(),
    );
    prop_oneof![
        Just(token.clone()),
        edge.clone().prop_map(move |c| format!("{t1}{c}")),
        edge.prop_map(move |c| format!("{c}{t2}")),
        (1..len - 1, inner).prop_map(move |(i, c)| {
            let mut chars: Vec<char> = t3.chars().collect();
            chars[i] = c;
            chars.into_iter().collect()
        }),
        (1..len).prop_map(move |n| t4[..n].to_owned()),
        Just(format!("{t5},{t5}")),
        Just(token.to_uppercase()),
    ]
}

#[test]
fn the_three_doors_agree_on_generated_credentials() {
    use proptest::test_runner::{Config, TestCaseError, TestRunner};
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (patd, token) = runtime.block_on(async {
        let patd = Patd::memory().await;
        let mut client = patd.client().await;
        let (token, _) = issue(&mut client, "acct-doors", 3600).await;
        (patd, token)
    });
    // The raw form Envoy sends with encode_raw_headers is read at all.
    let bearer = format!("Bearer {token}");
    assert!(runtime.block_on(check_allows(&patd, bearer.as_bytes(), true)));

    let mut runner = TestRunner::new(Config {
        cases: 96,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&near_tokens(token.clone()), |candidate| {
        runtime.block_on(async {
            let mut client = patd.client().await;
            let introspect = client
                .introspect(&candidate)
                .await
                .map_err(|s| TestCaseError::fail(format!("Introspect: {s}")))?
                .active;
            let value = format!("Bearer {candidate}");
            let check = check_allows(&patd, value.as_bytes(), false).await;
            let raw = check_allows(&patd, value.as_bytes(), true).await;
            let forward_auth = match axum::http::HeaderValue::from_str(&value) {
                Ok(_) => Some(
                    get(
                        patd.http_addr,
                        "/v1/forward-auth",
                        &[("Authorization", &value)],
                    )
                    .await
                    .status
                        == 200,
                ),
                // Not sendable over HTTP at all.
                Err(_) => None,
            };
            let agree = check == introspect
                && raw == introspect
                && forward_auth.is_none_or(|f| f == introspect);
            if agree {
                Ok(())
            } else {
                Err(TestCaseError::fail(format!(
                    "{candidate:?}: introspect {introspect}, check {check}, raw {raw}, \
                     forward-auth {forward_auth:?}"
                )))
            }
        })
    });
    if let Err(e) = result {
        panic!("the doors disagree: {e}");
    }
}
