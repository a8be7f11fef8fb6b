//! The OpenAPI document against the code: the same routes, and every
//! schema the same shape as pbjson's JSON of the message.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::*;

fn document() -> Value {
    serde_json::from_str(OPENAPI).unwrap()
}

fn schema(name: &str) -> Value {
    document()["components"]["schemas"][name].clone()
}

fn keys(value: &Value) -> BTreeSet<String> {
    value.as_object().unwrap().keys().cloned().collect()
}

fn info() -> pb::TokenInfo {
    let at = pbjson_types::Timestamp {
        seconds: 1_700_000_000,
        nanos: 0,
    };
    pb::TokenInfo {
        token_id: "t".into(),
        account_id: "a".into(),
        note: "n".into(),
        scopes: vec!["read".into()],
        created_at: Some(at),
        expires_at: Some(at),
        last_used_at: Some(at),
        state: pb::token_info::State::Rotating as i32,
        ended_at: Some(at),
    }
}

fn audit_event() -> pb::AuditEvent {
    pb::AuditEvent {
        event_id: "1700000000000-0".into(),
        time: Some(pbjson_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 0,
        }),
        action: "Rotate".into(),
        account_id: "a".into(),
        token_ids: vec!["t".into(), "u".into()],
        caller: "console".into(),
        request_id: "r".into(),
    }
}

/// A schema's property names are exactly the keys pbjson writes for a
/// fully populated message, and its required ones always appear.
fn same_shape(name: &str, message: &impl serde::Serialize) {
    let written = serde_json::to_value(message).unwrap();
    let schema = schema(name);
    assert_eq!(keys(&written), keys(&schema["properties"]), "{name}");
    let required = schema["required"].as_array().cloned().unwrap_or_default();
    for required in required {
        assert!(written.get(required.as_str().unwrap()).is_some(), "{name}");
    }
}

#[test]
fn the_document_lists_exactly_the_routes_served() {
    let doc = document();
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if method == "parameters" {
                continue;
            }
            let id = op["operationId"].as_str().unwrap().to_owned();
            documented.insert((method.to_uppercase(), path.clone(), id));
        }
    }
    let served: BTreeSet<_> = ROUTES
        .iter()
        .map(|r| {
            let id = format!("{:?}", r.operation);
            (r.method.as_str().to_owned(), r.path.to_owned(), id)
        })
        .collect();
    assert_eq!(documented, served);
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn response_schemas_have_the_shapes_pbjson_writes() {
    same_shape("TokenInfo", &info());
    same_shape(
        "IssueResponse",
        &pb::IssueResponse {
            token: "pat_x".into(),
            info: Some(info()),
        },
    );
    same_shape(
        "ListResponse",
        &pb::ListResponse {
            tokens: vec![info()],
            next_page_token: "c".into(),
        },
    );
    same_shape("RevokeAllResponse", &pb::RevokeAllResponse { revoked: 0 });
    same_shape(
        "IntrospectResponse",
        &pb::IntrospectResponse {
            active: true,
            info: Some(info()),
            reason: pb::InactiveReason::Revoked as i32,
        },
    );
    same_shape(
        "RotateResponse",
        &pb::RotateResponse {
            token: "pat_x".into(),
            info: Some(info()),
            previous_expires_at: info().expires_at,
        },
    );
    same_shape(
        "RevokeTokenResponse",
        &pb::RevokeTokenResponse {
            account_id: "a".into(),
            token_id: "t".into(),
        },
    );
    same_shape("AuditEvent", &audit_event());
    same_shape(
        "ListAuditEventsResponse",
        &pb::ListAuditEventsResponse {
            events: vec![audit_event()],
            next_page_token: "c".into(),
        },
    );
    // Enums are written by name.
    let revoked = pb::IntrospectResponse {
        reason: pb::InactiveReason::Revoked as i32,
        ..Default::default()
    };
    assert_eq!(
        serde_json::to_value(revoked).unwrap(),
        json!({"active": false, "reason": "REVOKED"})
    );
    // Defaults are written, as grpcurl -emit-defaults writes them
    // (`{"revoked": 0}`); an unset message field is left out.
    let inactive = serde_json::to_value(pb::IntrospectResponse::default()).unwrap();
    assert_eq!(
        inactive,
        json!({"active": false, "reason": "INACTIVE_REASON_UNSPECIFIED"})
    );
}

#[test]
fn request_schemas_name_fields_pbjson_reads_in_both_spellings() {
    let issue: pb::IssueRequest = serde_json::from_value(json!({
        "accountId": "a", "note": "n", "ttl": "3600s",
        "expiresAt": "2030-01-01T00:00:00Z", "scopes": ["read"],
    }))
    .unwrap();
    assert_eq!(issue.ttl.unwrap().seconds, 3600);
    assert_eq!(issue.expires_at.unwrap().seconds, 1_893_456_000);
    let issue_keys = keys(&schema("IssueRequest")["properties"]);
    assert_eq!(
        issue_keys,
        ["accountId", "expiresAt", "note", "scopes", "ttl"]
            .map(String::from)
            .into()
    );
    let snake: pb::IssueRequest =
        serde_json::from_value(json!({"account_id": "a", "expires_at": "2030-01-01T00:00:00Z"}))
            .unwrap();
    assert_eq!(snake.account_id, "a");
    assert!(serde_json::from_value::<pb::IssueRequest>(json!({"tll": "1s"})).is_err());
    same_shape(
        "IntrospectRequest",
        &pb::IntrospectRequest { token: "x".into() },
    );
    same_shape(
        "RevokeTokenRequest",
        &pb::RevokeTokenRequest {
            token: "x".into(),
            reason: "leaked".into(),
        },
    );
    let at = pbjson_types::Timestamp {
        seconds: 1_700_000_000,
        nanos: 0,
    };
    let rotate = pb::RotateRequest {
        account_id: "a".into(),
        token_id: "t".into(),
        grace: Some(pbjson_types::Duration {
            seconds: 60,
            nanos: 0,
        }),
        ttl: Some(pbjson_types::Duration {
            seconds: 3600,
            nanos: 0,
        }),
        expires_at: Some(at),
    };
    // The path names the account and the token: the body documents the
    // rest (a body naming them must name the same, as for Issue).
    let mut written = keys(&serde_json::to_value(&rotate).unwrap());
    written.remove("accountId");
    written.remove("tokenId");
    assert_eq!(written, keys(&schema("RotateRequest")["properties"]));
    let snake: pb::RotateRequest =
        serde_json::from_value(json!({"grace": "60s", "expires_at": "2030-01-01T00:00:00Z"}))
            .unwrap();
    assert_eq!(snake.grace.unwrap().seconds, 60);
}

#[test]
fn list_queries_take_either_spelling_and_refuse_the_rest() {
    assert_eq!(list_query(None, true).unwrap(), ListQuery::default());
    assert_eq!(
        list_query(Some("pageSize=5&page_token=abc&includeInactive=true"), true).unwrap(),
        ListQuery {
            page_size: 5,
            page_token: "abc".to_owned(),
            include_inactive: true,
        }
    );
    assert!(
        list_query(Some("include_inactive=true"), true)
            .unwrap()
            .include_inactive
    );
    assert!(
        !list_query(Some("include_inactive=false"), true)
            .unwrap()
            .include_inactive
    );
    for (query, field) in [
        ("page_size=x", "page_size"),
        ("page_size=1&pageSize=2", "page_size"),
        ("limit=1", "query"),
        ("include_inactive=yes", "include_inactive"),
        (
            "include_inactive=true&includeInactive=true",
            "include_inactive",
        ),
    ] {
        assert_eq!(
            list_query(Some(query), true).unwrap_err().field,
            field,
            "{query}"
        );
    }
    // A listing without ended entries (the audit trail) does not take it.
    assert_eq!(
        list_query(Some("include_inactive=true"), false)
            .unwrap_err()
            .field,
        "query"
    );
}

#[test]
fn path_segments_are_percent_decoded_exactly_once() {
    let uri: Uri = "/v1/accounts/a%2525b%20c/tokens/t%2F1".parse().unwrap();
    let [account, token] = path_params(&uri, [ACCOUNT, TOKEN_ID]).unwrap();
    assert_eq!((account.as_str(), token.as_str()), ("a%25b c", "t/1"));
    let uri: Uri = "/v1/accounts/%FF/tokens".parse().unwrap();
    assert_eq!(
        path_params(&uri, [ACCOUNT]).unwrap_err().field,
        "account_id"
    );
}

#[test]
fn custom_methods_on_a_resource_are_served_at_its_parameter() {
    assert_eq!(axum_path(TOKEN), TOKEN);
    assert_eq!(axum_path("/v1/tokens:introspect"), "/v1/tokens:introspect");
    assert_eq!(
        axum_path("/v1/accounts/{account_id}/tokens/{token_id}:rotate"),
        TOKEN
    );
}

#[test]
fn timestamps_are_z_normalized_and_notes_are_left_alone() {
    for name in [
        "createdAt",
        "expiresAt",
        "lastUsedAt",
        "endedAt",
        "previousExpiresAt",
        "time",
    ] {
        assert!(pb::TIMESTAMP_JSON_FIELDS.contains(&name), "{name}");
    }
    assert!(!pb::TIMESTAMP_JSON_FIELDS.contains(&"note"));
    let mut value = serde_json::to_value(pb::ListResponse {
        tokens: vec![pb::TokenInfo {
            note: "2026-01-01T00:00:00+00:00".into(),
            ..info()
        }],
        next_page_token: String::new(),
    })
    .unwrap();
    z_normalize(&mut value);
    let token = &value["tokens"][0];
    assert_eq!(token["createdAt"], "2023-11-14T22:13:20Z");
    assert_eq!(token["lastUsedAt"], "2023-11-14T22:13:20Z");
    assert_eq!(token["note"], "2026-01-01T00:00:00+00:00");
}
