//! Reading the presented token out of request headers (RFC 6750), shared by
//! HTTP forward-auth and Envoy ext_authz so both read credentials alike:
//! the credential rule ([`presented`]), the `WWW-Authenticate` challenges
//! and the route's required scopes.

use crate::domain::{FieldError, Scopes};

/// The token in an `Authorization` header value: scheme `Bearer`, matched
/// case-insensitively, then the token. `None` for any other scheme or an
/// empty token, which gateways treat as "no credential".
pub fn from_authorization(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = rest.trim();
    (!token.is_empty()).then_some(token)
}

/// What a request presented as a credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presented<'a> {
    Nothing,
    Token(&'a str),
    /// Present but unreadable: several `Authorization` headers, or bytes
    /// that are not header text. Treated as an invalid token, never as "no
    /// credential".
    Unreadable,
}

impl<'a> Presented<'a> {
    /// The value to check: `None` for no credential. An unreadable
    /// credential becomes the empty string, which fails parsing: an invalid
    /// token, without a store round trip.
    pub fn value(self) -> Option<&'a str> {
        match self {
            Presented::Nothing => None,
            Presented::Token(token) => Some(token),
            Presented::Unreadable => Some(""),
        }
    }
}

/// The credential rule of both gateway doors. `authorization` yields every
/// `Authorization` header value, `extra` every value of the optional token
/// header (e.g. `X-API-Key`), as raw bytes. A `Bearer` credential wins;
/// the extra header is the fallback.
pub fn presented<'a>(
    authorization: impl IntoIterator<Item = &'a [u8]>,
    extra: impl IntoIterator<Item = &'a [u8]>,
) -> Presented<'a> {
    let mut authorization = authorization.into_iter();
    if let Some(value) = authorization.next() {
        if authorization.next().is_some() {
            return Presented::Unreadable;
        }
        let Some(text) = header_text(value) else {
            return Presented::Unreadable;
        };
        if let Some(token) = from_authorization(text) {
            return Presented::Token(token);
        }
    }
    match extra.into_iter().next() {
        Some(value) => match header_text(value) {
            Some(text) if !text.trim().is_empty() => Presented::Token(text.trim()),
            Some(_) => Presented::Nothing,
            None => Presented::Unreadable,
        },
        None => Presented::Nothing,
    }
}

/// A header value as text: visible ASCII and tabs only (the rule of the
/// `http` crate's `HeaderValue::to_str`).
fn header_text(value: &[u8]) -> Option<&str> {
    value
        .iter()
        .all(|&b| b == b'\t' || (32..127).contains(&b))
        .then(|| std::str::from_utf8(value).ok())
        .flatten()
}

/// `WWW-Authenticate` when no credential was presented.
pub const CHALLENGE_MISSING: &str = r#"Bearer realm="patd""#;
/// `WWW-Authenticate` for a credential that is not a live token.
pub const CHALLENGE_INVALID: &str = r#"Bearer realm="patd", error="invalid_token""#;

/// `WWW-Authenticate` for a live token lacking some of `required`.
pub fn challenge_insufficient_scope(required: &Scopes) -> String {
    format!(
        r#"Bearer realm="patd", error="insufficient_scope", scope="{}""#,
        required.joined()
    )
}

/// Scopes a route requires, from space-separated lists (a query string's
/// repeated `scope` values, or an ext_authz context extension).
///
/// # Errors
/// A listed scope is malformed or there are too many.
pub fn required_scopes<'a>(lists: impl IntoIterator<Item = &'a str>) -> Result<Scopes, FieldError> {
    let raw: Vec<String> = lists
        .into_iter()
        .flat_map(str::split_whitespace)
        .map(str::to_owned)
        .collect();
    Scopes::parse(raw).map_err(|e| FieldError::new("scope", e.reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        assert_eq!(from_authorization("Bearer pat_abc"), Some("pat_abc"));
        assert_eq!(from_authorization("bearer pat_abc"), Some("pat_abc"));
        assert_eq!(from_authorization("BEARER   pat_abc  "), Some("pat_abc"));
    }

    #[test]
    fn other_schemes_and_empty_tokens_are_no_credential() {
        assert_eq!(from_authorization("Basic dXNlcjpwYXNz"), None);
        assert_eq!(from_authorization("Bearer"), None);
        assert_eq!(from_authorization("Bearer    "), None);
        assert_eq!(from_authorization("pat_abc"), None);
        assert_eq!(from_authorization(""), None);
    }

    #[test]
    fn the_bearer_header_wins_and_the_extra_header_is_a_fallback() {
        let none: [&[u8]; 0] = [];
        let a: &[u8] = b"Bearer a";
        let b: &[u8] = b"b";
        assert_eq!(presented([a], [b]), Presented::Token("a"));
        assert_eq!(presented(none, [b]), Presented::Token("b"));
        assert_eq!(presented(none, none), Presented::Nothing);
        let basic: &[u8] = b"Basic Zm9v";
        assert_eq!(presented([basic], [b]), Presented::Token("b"));
    }

    #[test]
    fn two_authorization_headers_or_non_text_are_unreadable_not_missing() {
        let none: [&[u8]; 0] = [];
        let (a, b): (&[u8], &[u8]) = (b"Bearer a", b"Bearer b");
        assert_eq!(presented([a, b], none), Presented::Unreadable);
        let binary: &[u8] = b"Bearer \xff";
        assert_eq!(presented([binary], none), Presented::Unreadable);
        assert_eq!(Presented::Unreadable.value(), Some(""));
    }

    #[test]
    fn required_scopes_come_from_repeated_or_spaced_lists() {
        let s = required_scopes(["a:read b:write", "c"]).unwrap();
        assert_eq!(s.as_slice(), ["a:read", "b:write", "c"]);
        assert!(required_scopes([]).unwrap().as_slice().is_empty());
        assert_eq!(required_scopes(["BAD"]).unwrap_err().field, "scope");
    }
}
