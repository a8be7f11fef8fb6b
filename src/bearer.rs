//! Reading the presented token out of request headers (RFC 6750), shared by
//! HTTP forward-auth and Envoy ext_authz so both read credentials alike.

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
    fn required_scopes_come_from_repeated_or_spaced_lists() {
        let s = required_scopes(["a:read b:write", "c"]).unwrap();
        assert_eq!(s.as_slice(), ["a:read", "b:write", "c"]);
        assert!(required_scopes([]).unwrap().as_slice().is_empty());
        assert_eq!(required_scopes(["BAD"]).unwrap_err().field, "scope");
    }
}
