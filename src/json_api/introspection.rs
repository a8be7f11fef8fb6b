//! `POST /oauth2/introspect`: OAuth 2.0 Token Introspection (RFC 7662), so
//! gateways' stock introspection plugins (Kong, APISIX, oauth2-proxy,
//! Traefik plugins) can ask patd with configuration alone.
//!
//! The request is a form (`application/x-www-form-urlencoded`, §2.1):
//! `token`, and an optional `token_type_hint`, which is ignored (patd has
//! one kind of token, and §2.1 lets a server ignore hints it does not
//! know). The caller authenticates as for the JSON API (bearer caller key
//! or client certificate) or as an OAuth client (RFC 6749 §2.3.1): HTTP
//! Basic (RFC 7617) or form `client_id`/`client_secret`, each the caller's
//! name and key form-urlencoded; role `introspect`.
//!
//! An active token answers `{"active": true, "sub", "scope", "exp", "iat",
//! "jti", "token_type": "pat"}` (§2.2; `scope` space-separated, left out
//! when the token has none); any inactive token exactly `{"active":
//! false}`, whatever the reason (§2.2: no more is said). A store that
//! cannot answer is a 503 problem, never `active: false`.

use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Serialize;

use super::{Api, CallerCredential, json_response};
use crate::auth::Role;
use crate::bearer;
use crate::domain::{FieldError, TokenInfo};
use crate::metrics::{self, Door};
use crate::service::{Introspection, Live};
use crate::store::Store;
use crate::tls::PeerSans;
use crate::verdict::Verdict;

const FORM: &str = "application/x-www-form-urlencoded";

/// `token_type` of every active answer (RFC 7662 §2.2 leaves the values
/// open; patd's tokens are personal access tokens).
pub const TOKEN_TYPE: &str = "pat";

/// The challenge of a 401 at this door: the OAuth client's Basic scheme
/// (RFC 6749 §2.3.1) and the caller key as a bearer credential.
const CHALLENGE: &str = r#"Basic realm="patd", Bearer realm="patd""#;

/// An RFC 7662 §2.2 answer.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Answer {
    Active {
        active: bool,
        sub: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        scope: Option<String>,
        /// Seconds since the epoch, as JWT's `NumericDate`.
        exp: u64,
        iat: u64,
        jti: String,
        token_type: &'static str,
    },
    Inactive {
        active: bool,
    },
}

impl Answer {
    fn of(info: &TokenInfo) -> Self {
        let scopes = info.scopes.joined();
        Answer::Active {
            active: true,
            sub: info.account_id.as_str().to_owned(),
            scope: (!scopes.is_empty()).then_some(scopes),
            exp: info.expires_at.0 / 1000,
            iat: info.created_at.0 / 1000,
            jti: info.token_id.as_str().to_owned(),
            token_type: TOKEN_TYPE,
        }
    }
}

/// The form's fields this door reads.
#[derive(Default)]
struct Form {
    token: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
}

/// Reads the form; other parameters (`token_type_hint`, extensions) are
/// ignored, as §2.1 allows. A field given twice is refused: two parsers
/// could take different copies.
fn parse_form(body: &[u8]) -> Result<Form, FieldError> {
    let mut form = Form::default();
    for (name, value) in form_urlencoded::parse(body) {
        let (slot, field) = match &*name {
            "token" => (&mut form.token, "token"),
            "client_id" => (&mut form.client_id, "client_id"),
            "client_secret" => (&mut form.client_secret, "client_secret"),
            _ => continue,
        };
        if slot.replace(value.into_owned()).is_some() {
            return Err(FieldError::new(field, "given twice"));
        }
    }
    Ok(form)
}

/// `Authorization: Basic` (RFC 7617) as RFC 6749 §2.3.1 uses it: the
/// client id and secret, each form-urlencoded, joined by the first `:`.
/// `None` for another scheme or a malformed value.
fn basic_credentials(value: &str) -> Option<(String, String)> {
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    Some((form_decode(id), form_decode(secret)))
}

/// One form-urlencoded component (`+` is a space).
fn form_decode(component: &str) -> String {
    let plus_decoded = component.replace('+', " ");
    percent_encoding::percent_decode_str(&plus_decoded)
        .decode_utf8_lossy()
        .into_owned()
}

/// A refusal at this door; a 401 also names the Basic scheme.
fn refused(verdict: &Verdict) -> Response {
    let mut response = verdict.to_problem();
    if response.status() == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static(CHALLENGE));
    }
    response
}

pub(super) async fn introspect<S: Store>(
    State(api): State<Api<S>>,
    peer: Option<Extension<PeerSans>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Response> {
    let body = api
        .body(&headers, body, FORM)
        .await
        .map_err(|v| refused(&v))?;
    let form = parse_form(&body);
    let authorization = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok());
    let credential = match authorization {
        Some(value) => match basic_credentials(value) {
            Some((name, key)) => CallerCredential::NameAndKey(name, key),
            None => bearer::from_authorization(value)
                .map_or(CallerCredential::None, CallerCredential::Key),
        },
        None => match &form {
            Ok(Form {
                client_id: Some(id),
                client_secret: Some(secret),
                ..
            }) => CallerCredential::NameAndKey(id.clone(), secret.clone()),
            _ => CallerCredential::None,
        },
    };
    let caller = api
        .admit(credential, peer, Role::Introspect)
        .map_err(|v| refused(&v))?;
    let token = match form {
        Ok(Form {
            token: Some(token), ..
        }) => token,
        Ok(_) => {
            let e = FieldError::new("token", "required");
            return Err(refused(&api.tokens.refuse("Introspect", &caller, e).into()));
        }
        Err(e) => return Err(refused(&api.tokens.refuse("Introspect", &caller, e).into())),
    };
    let result = api.tokens.introspect(&token).await;
    metrics::introspection(Door::Rfc7662, crate::verdict::introspect_outcome(&result));
    match result {
        Ok(Introspection::Active(Live { info, .. })) => {
            Ok(json_response(StatusCode::OK, &Answer::of(&info)))
        }
        Ok(Introspection::Inactive(_)) => Ok(json_response(
            StatusCode::OK,
            &Answer::Inactive { active: false },
        )),
        Err(e) => Err(refused(&Verdict::from(e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_form_decoded_and_split_at_the_first_colon() {
        let value = format!("Basic {}", STANDARD.encode("gate+way%3A1:key:with%2Bcolon"));
        assert_eq!(
            basic_credentials(&value),
            Some(("gate way:1".to_owned(), "key:with+colon".to_owned()))
        );
        assert_eq!(basic_credentials("Bearer abc"), None);
        assert_eq!(basic_credentials("Basic !!!"), None);
        let no_colon = format!("Basic {}", STANDARD.encode("nocolon"));
        assert_eq!(basic_credentials(&no_colon), None);
    }

    #[test]
    fn the_form_ignores_hints_and_refuses_a_repeated_token() {
        let form = parse_form(b"token=a%2Bb&token_type_hint=refresh_token&x=1")
            .ok()
            .unwrap();
        assert_eq!(form.token.as_deref(), Some("a+b"));
        assert_eq!(parse_form(b"token=a&token=b").err().unwrap().field, "token");
        assert!(parse_form(b"").ok().unwrap().token.is_none());
    }

    #[test]
    fn an_inactive_answer_is_exactly_active_false() {
        let body = serde_json::to_string(&Answer::Inactive { active: false }).unwrap();
        assert_eq!(body, r#"{"active":false}"#);
    }
}
