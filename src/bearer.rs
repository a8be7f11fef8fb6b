//! Reading the presented token out of request headers (RFC 6750), shared by
//! HTTP forward-auth and Envoy ext_authz so both read credentials alike:
//! the credential rule ([`presented`]), the `WWW-Authenticate` challenges
//! and the route's required scopes.

use crate::domain::{FieldError, Scopes};

/// The token in an `Authorization` header value (RFC 6750 §2.1:
/// `Bearer 1*SP b64token`): scheme `Bearer`, matched case-insensitively,
/// then the token. `None` for any other scheme or an empty token, which
/// gateways treat as "no credential". Only optional whitespace (space and
/// tab, RFC 9110 §5.6.3) around the value is ignored: any other byte (a
/// newline, a NUL, a no-break space) stays part of the token, which then
/// fails to parse, exactly as `Introspect` of the same bytes would.
pub fn from_authorization(value: &str) -> Option<&str> {
    let (scheme, rest) = trim_ows(value).split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = trim_ows(rest);
    (!token.is_empty()).then_some(token)
}

/// `value` without leading and trailing spaces and tabs (OWS).
fn trim_ows(value: &str) -> &str {
    value.trim_matches([' ', '\t'])
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
/// header (e.g. `X-API-Key`), as raw bytes. A `Bearer` credential or the
/// extra header's value is the token. Anything ambiguous is unreadable (an
/// invalid token, never a guess): two `Authorization` headers, two values
/// of the extra header, or a `Bearer` token and an extra-header value that
/// differ.
pub fn presented<'a>(
    authorization: impl IntoIterator<Item = &'a [u8]>,
    extra: impl IntoIterator<Item = &'a [u8]>,
) -> Presented<'a> {
    let mut bearer = None;
    let mut authorization = authorization.into_iter();
    if let Some(value) = authorization.next() {
        if authorization.next().is_some() {
            return Presented::Unreadable;
        }
        let Some(text) = header_text(value) else {
            return Presented::Unreadable;
        };
        bearer = from_authorization(text);
    }
    let mut extra = extra.into_iter();
    let fallback = match (extra.next(), extra.next()) {
        (None, _) => None,
        (Some(_), Some(_)) => return Presented::Unreadable,
        (Some(value), None) => match header_text(value) {
            Some(text) if !trim_ows(text).is_empty() => Some(trim_ows(text)),
            Some(_) => None,
            None => return Presented::Unreadable,
        },
    };
    match (bearer, fallback) {
        (Some(a), Some(b)) if a != b => Presented::Unreadable,
        (Some(token), _) | (None, Some(token)) => Presented::Token(token),
        (None, None) => Presented::Nothing,
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

/// `WWW-Authenticate` for a credential that is not a live token, saying
/// why in `error_description` (RFC 6750 §3: human-readable, and here one
/// of patd's reason words, so a client can act on it).
pub fn challenge_invalid(reason: &str) -> String {
    format!(r#"{CHALLENGE_INVALID}, error_description="{reason}""#)
}

/// `WWW-Authenticate` for a live token lacking some of `required`.
pub fn challenge_insufficient_scope(required: &Scopes) -> String {
    format!(
        r#"Bearer realm="patd", error="insufficient_scope", scope="{}""#,
        required.joined()
    )
}

/// The query parameter naming the scopes a forward-auth route requires.
pub const SCOPE_PARAMETER: &str = "scope";
/// The ext_authz context extension naming the scopes a route requires.
pub const SCOPES_EXTENSION: &str = "patd_scopes";

/// Scopes a forward-auth route requires, from its query string: `scope`
/// values (repeatable, each space-separated), all of which must be held.
/// The query is the route's configuration, so anything patd would not read
/// is a configuration error rather than a silently weaker check: an
/// unknown parameter (`scopes`, `Scope`), or a `scope` present but empty.
///
/// # Errors
/// A `FieldError` naming what to fix in the route.
pub fn route_scopes_from_query(query: Option<&str>) -> Result<Scopes, FieldError> {
    let mut lists = Vec::new();
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if key != SCOPE_PARAMETER {
            return Err(FieldError::new(
                "query",
                format!(
                    "unknown parameter {:?}: only `{SCOPE_PARAMETER}` is read",
                    shorten(&key)
                ),
            ));
        }
        lists.push(value.into_owned());
    }
    required_scopes(lists.iter().map(String::as_str))
}

/// Scopes an ext_authz route requires, from its context extensions:
/// `patd_scopes` (space-separated). Other extensions belong to other
/// filters and are ignored, but a key that looks like ours and is not
/// (`patd_scope`, `PATD_SCOPES`) is a configuration error, as is a
/// `patd_scopes` present but empty.
///
/// # Errors
/// A `FieldError` naming what to fix in the route.
pub fn route_scopes_from_extensions<'a>(
    extensions: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<Scopes, FieldError> {
    let mut lists = Vec::new();
    for (key, value) in extensions {
        if key == SCOPES_EXTENSION {
            lists.push(value);
        } else if key.to_ascii_lowercase().starts_with("patd") {
            return Err(FieldError::new(
                "context_extensions",
                format!(
                    "unknown key {:?}: only `{SCOPES_EXTENSION}` is read",
                    shorten(key)
                ),
            ));
        }
    }
    required_scopes(lists)
}

/// Scopes from space-separated lists; a list that is present must name at
/// least one scope.
fn required_scopes<'a>(lists: impl IntoIterator<Item = &'a str>) -> Result<Scopes, FieldError> {
    let mut raw = Vec::new();
    for list in lists {
        let before = raw.len();
        raw.extend(list.split_whitespace().map(str::to_owned));
        if raw.len() == before {
            return Err(FieldError::new(
                "scope",
                "is present but empty: name a scope, or leave the requirement out",
            ));
        }
    }
    Scopes::parse(raw).map_err(|e| FieldError::new("scope", e.reason))
}

/// A configuration string for a message: at most 64 characters.
fn shorten(text: &str) -> String {
    text.chars().take(64).collect()
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
    fn only_spaces_and_tabs_around_the_token_are_ignored() {
        assert_eq!(from_authorization("\tBearer  pat_abc\t "), Some("pat_abc"));
        assert_eq!(from_authorization("Bearer pat_abc\n"), Some("pat_abc\n"));
        assert_eq!(
            from_authorization("Bearer pat_abc\u{a0}"),
            Some("pat_abc\u{a0}")
        );
        let newline: &[u8] = b"Bearer pat_abc\n";
        assert_eq!(presented([newline], []), Presented::Unreadable);
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
    fn the_bearer_header_or_the_extra_header_carries_the_token() {
        let none: [&[u8]; 0] = [];
        let a: &[u8] = b"Bearer a";
        let b: &[u8] = b"b";
        assert_eq!(presented([a], none), Presented::Token("a"));
        assert_eq!(presented(none, [b]), Presented::Token("b"));
        assert_eq!(presented(none, none), Presented::Nothing);
        let basic: &[u8] = b"Basic Zm9v";
        assert_eq!(presented([basic], [b]), Presented::Token("b"));
        let same: &[u8] = b"a";
        assert_eq!(presented([a], [same]), Presented::Token("a"));
    }

    #[test]
    fn two_different_credentials_are_unreadable() {
        let none: [&[u8]; 0] = [];
        let (a, b, c): (&[u8], &[u8], &[u8]) = (b"Bearer a", b"b", b"c");
        assert_eq!(presented([a], [b]), Presented::Unreadable);
        assert_eq!(presented(none, [b, c]), Presented::Unreadable);
        assert_eq!(presented(none, [b, b]), Presented::Unreadable);
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
    fn route_scopes_come_from_repeated_or_spaced_lists() {
        let s = route_scopes_from_query(Some("scope=a:read%20b:write&scope=c")).unwrap();
        assert_eq!(s.as_slice(), ["a:read", "b:write", "c"]);
        assert!(route_scopes_from_query(None).unwrap().as_slice().is_empty());
        let s = route_scopes_from_extensions([("patd_scopes", "a b"), ("virtual_host", "x")]);
        assert_eq!(s.unwrap().as_slice(), ["a", "b"]);
        assert!(
            route_scopes_from_extensions([])
                .unwrap()
                .as_slice()
                .is_empty()
        );
    }

    #[test]
    fn a_misspelled_or_empty_requirement_is_a_configuration_error() {
        for query in [
            "scope=BAD",
            "scopes=admin",
            "Scope=admin",
            "scope=",
            "scope=%20",
            "x=1",
        ] {
            assert!(route_scopes_from_query(Some(query)).is_err(), "{query}");
        }
        for key in ["patd_scope", "PATD_SCOPES", "patd-scopes"] {
            assert!(
                route_scopes_from_extensions([(key, "admin")]).is_err(),
                "{key}"
            );
        }
        assert!(route_scopes_from_extensions([("patd_scopes", " ")]).is_err());
        assert!(route_scopes_from_extensions([("patd_scopes", "BAD")]).is_err());
    }
}
