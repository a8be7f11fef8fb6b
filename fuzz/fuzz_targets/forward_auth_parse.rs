//! `patd::forward_auth::parse_forward_auth` on arbitrary request headers and query.
//!
//! The input is a list of (name, value) header pairs, an optional raw query
//! string and an optional extra token header name. Pairs whose name or value
//! `http` refuses are skipped, as hyper would never hand them over. Names
//! and values may be raw bytes, or steered towards `authorization`, the
//! extra header and `Bearer ...` so the interesting paths are reached early.
//!
//! Besides "never panics": a presented token comes out of the Authorization
//! or the extra header (or is `""`, "present but unreadable"), carries no
//! surrounding whitespace, nothing is presented when neither header is
//! there, several Authorization headers are unreadable, and only a query can
//! make the call fail.

#![no_main]

use arbitrary::Arbitrary;
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Name {
    Authorization,
    /// The extra token header, or `x-api-key` when there is none.
    Extra,
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Value {
    /// `Bearer ` followed by the bytes.
    Bearer(Vec<u8>),
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Input {
    headers: Vec<(Name, Value)>,
    query: Option<String>,
    extra: Option<Vec<u8>>,
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

fuzz_target!(|input: Input| {
    let extra = input
        .extra
        .as_deref()
        .and_then(|name| HeaderName::from_bytes(name).ok());
    let mut headers = HeaderMap::new();
    for (name, value) in &input.headers {
        let name = match name {
            Name::Authorization => Some(AUTHORIZATION),
            Name::Extra => extra
                .clone()
                .or_else(|| Some(HeaderName::from_static("x-api-key"))),
            Name::Raw(bytes) => HeaderName::from_bytes(bytes).ok(),
        };
        let value = match value {
            Value::Bearer(bytes) => HeaderValue::from_bytes(&[b"Bearer ", &bytes[..]].concat()),
            Value::Raw(bytes) => HeaderValue::from_bytes(bytes),
        };
        if let (Some(name), Ok(value)) = (name, value) {
            headers.append(name, value);
        }
    }

    let result = patd::forward_auth::parse_forward_auth(&headers, input.query.as_deref(), extra.as_ref());

    if input.query.is_none() {
        assert!(result.is_ok(), "no query, yet {result:?}");
    }
    let Ok((token, _scopes)) = result else {
        return;
    };
    let authorization = headers.get_all(AUTHORIZATION).iter().count();
    let extra_present = extra
        .as_ref()
        .is_some_and(|name| headers.contains_key(name));
    if authorization == 0 && !extra_present {
        assert_eq!(token, None, "nothing presented, yet a token");
    }
    if authorization > 1 {
        assert_eq!(
            token,
            Some(""),
            "several Authorization headers are unreadable"
        );
    }
    let Some(token) = token else {
        return;
    };
    if token.is_empty() {
        return;
    }
    assert_eq!(token, token.trim(), "a token with surrounding whitespace");
    let sources = headers
        .get_all(AUTHORIZATION)
        .iter()
        .chain(extra.iter().flat_map(|name| headers.get_all(name).iter()));
    let found = sources
        .into_iter()
        .any(|v| contains(v.as_bytes(), token.as_bytes()));
    assert!(
        found,
        "token {token:?} is in no credential header of {headers:?}"
    );
});
