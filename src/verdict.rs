//! The one table of answers a caller can see, and how each door renders
//! it: gRPC (`tonic::Status`), HTTP forward-auth (status, `Cache-Control`,
//! `WWW-Authenticate`, body) and Envoy ext_authz (`CheckResponse`). Every
//! door converts its outcome into a [`Verdict`] and renders it here, so
//! the doors cannot drift apart.
//!
//! | verdict | HTTP | forward-auth | gRPC | challenge (RFC 6750 §3) |
//! |---|---|---|---|---|
//! | allow | 200 | 200 | OK | |
//! | missing credential | 401 | 401 | UNAUTHENTICATED | `Bearer realm="patd"` |
//! | invalid token (reason) | 401 | 401 | UNAUTHENTICATED | `error="invalid_token", error_description="<reason>"` |
//! | insufficient scope | 403 | 403 | PERMISSION_DENIED | `error="insufficient_scope"` |
//! | route misconfigured | 500 | 500 | INTERNAL | |
//! | unauthenticated caller | 401 | 500 | UNAUTHENTICATED | |
//! | forbidden caller | 403 | 500 | PERMISSION_DENIED | |
//! | overloaded | 503 | 503 | RESOURCE_EXHAUSTED | |
//! | deadline | 504 | 504 | DEADLINE_EXCEEDED | |
//! | store unavailable | 503 | 503 | UNAVAILABLE | |
//! | internal | 500 | 500 | INTERNAL | |
//! | invalid argument | 400 | 400 | INVALID_ARGUMENT | |
//! | limit reached | 409 | 409 | RESOURCE_EXHAUSTED | |
//! | not found | 404 | 404 | NOT_FOUND | |
//! | already rotated | 409 | 409 | FAILED_PRECONDITION | |
//! | store full | 507 | 507 | RESOURCE_EXHAUSTED | |
//! | body too large | 413 | 413 | OUT_OF_RANGE | |
//! | unsupported media type | 415 | 415 | INVALID_ARGUMENT | |
//!
//! An invalid token's reason (`malformed`, `unknown`, `expired`, `revoked`,
//! `rotated`) is said in the challenge's `error_description`, in the
//! `X-Patd-Reason` header (forward-auth and ext_authz denials alike) and in
//! the body; `expired`, `revoked` and `rotated` only ever for the token's
//! own value (see `service::Inactive`).
//!
//! The JSON API renders the same HTTP column as an RFC 9457
//! `application/problem+json` body ([`Verdict::to_problem`]), with the gRPC
//! code's name in `code` and, for a bad field, its name in `field`.
//! The forward-auth column differs only for refused callers: there the
//! caller is a gateway relaying an end user's request, and the status
//! reaches that user (Caddy and Traefik copy it, nginx passes 401 and 403
//! through). A gateway without valid caller credentials is the operator's
//! misconfiguration, so it answers 500, never a 401 the user would read
//! as "your token is wrong".
//!
//! A malformed, empty or misspelled scope *requirement* comes from the
//! route's configuration, not from the request: the gateway must not blame
//! the user, so it is a server error (500), never a 4xx.

use std::borrow::Cow;
use std::time::Duration;

use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, WWW_AUTHENTICATE};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use envoy_types::ext_authz::v3::pb::{CheckResponse, HeaderAppendAction, HttpStatusCode};
use envoy_types::ext_authz::v3::{
    CheckResponseExt, DeniedHttpResponseBuilder, OkHttpResponseBuilder,
};
use tonic::{Code, Status};

use crate::auth::{Refusal, Role};
use crate::bearer;
use crate::domain::{FieldError, Scopes, TokenInfo};
use crate::service::{Decision, Inactive, Introspection, Live, ServiceError};

/// Upstream header naming the token's account (forward-auth and ext_authz).
pub const ACCOUNT_ID_HEADER: &str = "x-account-id";
/// Upstream header naming the token's public id.
pub const TOKEN_ID_HEADER: &str = "x-token-id";
/// Upstream header listing the token's scopes, space-separated.
pub const TOKEN_SCOPES_HEADER: &str = "x-token-scopes";
/// Denial header naming why a token is inactive (`Inactive::as_str`).
pub const REASON_HEADER: &str = "x-patd-reason";

const NO_STORE: &str = "no-store";

const OUTCOME_ACTIVE: &str = "active";
const OUTCOME_UNAVAILABLE: &str = "unavailable";

/// The `outcome` label of a gRPC Introspect, as
/// [`Verdict::introspection_outcome`] names the same answer at a gateway
/// door (without building a verdict on the hot path).
pub fn introspect_outcome(result: &Result<Introspection, ServiceError>) -> &'static str {
    match result {
        Ok(Introspection::Active(_)) => OUTCOME_ACTIVE,
        Ok(Introspection::Inactive(why)) => why.as_str(),
        Err(_) => OUTCOME_UNAVAILABLE,
    }
}

/// An RFC 9457 problem details object (see [`Verdict::problem`]).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub title: &'static str,
    pub status: u16,
    pub detail: Cow<'static, str>,
    pub code: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<&'static str>,
}

/// RFC 9457's media type.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// The name grpcurl and the gRPC spec give a code (`INVALID_ARGUMENT`):
/// problem details' `code` member and the `code` label of
/// `patd_requests_total`.
pub fn grpc_code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Every answer patd gives, whichever door asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A live token holding every required scope.
    Allow(Live),
    /// No credential was presented.
    MissingCredential,
    /// A credential that is not a live token of ours, and why.
    InvalidToken(Inactive),
    /// A live token lacking some of `required`.
    InsufficientScope { required: Scopes },
    /// The route's requirement is malformed, empty or misspelled: the
    /// gateway's configuration is wrong, not the request.
    RouteMisconfigured(FieldError),
    /// The calling gateway or service did not authenticate as a caller.
    UnauthenticatedCaller,
    /// A known caller without the role this call needs.
    ForbiddenCaller(Role),
    /// Beyond the concurrency limit: refused at once, not queued.
    Overloaded,
    /// The request ran past `PATD_REQUEST_TIMEOUT`.
    Deadline,
    /// The store could not answer; every door fails closed.
    StoreUnavailable,
    /// A bug (a panic); details are in the log only.
    Internal,
    /// A request field failed validation; names the field.
    InvalidArgument(FieldError),
    /// The account holds its limit of live tokens.
    LimitReached { limit: u32 },
    /// The account holds no such live token.
    NotFound,
    /// The token was already rotated (Rotate).
    AlreadyRotated,
    /// Redis is at `maxmemory`: new tokens are refused, revocations work.
    StoreFull,
    /// A request body over `PATD_MAX_REQUEST_BYTES` (tonic answers an
    /// oversized gRPC message with OUT_OF_RANGE itself).
    TooLarge { limit: usize },
    /// A request body in a media type the route does not take; names the
    /// one it takes.
    UnsupportedMediaType { expected: &'static str },
}

impl Verdict {
    /// The gateway decision for a route requiring `required`.
    pub fn from_decision(decision: Result<Decision, ServiceError>, required: &Scopes) -> Self {
        match decision {
            Ok(Decision::Allow(info)) => Verdict::Allow(info),
            Ok(Decision::Missing) => Verdict::MissingCredential,
            Ok(Decision::Invalid(why)) => Verdict::InvalidToken(why),
            Ok(Decision::InsufficientScope(_)) => Verdict::InsufficientScope {
                required: required.clone(),
            },
            Err(e) => e.into(),
        }
    }

    /// The `outcome` label of `patd_introspections_total` for a token
    /// check answered with this verdict: `active`, the inactive reason
    /// (`malformed`, `unknown`, `expired`, `revoked`, `rotated`: the
    /// `InactiveReason` a tombstone proves), `insufficient_scope`,
    /// `unavailable`, or `missing` (no credential at a gateway door).
    /// `None` for answers that checked no token (a refused caller, a
    /// misconfigured route, shed, deadline, a panic).
    pub fn introspection_outcome(&self) -> Option<&'static str> {
        match self {
            Verdict::Allow(_) => Some(OUTCOME_ACTIVE),
            Verdict::InvalidToken(why) => Some(why.as_str()),
            Verdict::InsufficientScope { .. } => Some("insufficient_scope"),
            Verdict::StoreUnavailable => Some(OUTCOME_UNAVAILABLE),
            Verdict::MissingCredential => Some("missing"),
            Verdict::RouteMisconfigured(_)
            | Verdict::UnauthenticatedCaller
            | Verdict::ForbiddenCaller(_)
            | Verdict::Overloaded
            | Verdict::Deadline
            | Verdict::Internal
            | Verdict::InvalidArgument(_)
            | Verdict::LimitReached { .. }
            | Verdict::NotFound
            | Verdict::AlreadyRotated
            | Verdict::TooLarge { .. }
            | Verdict::UnsupportedMediaType { .. }
            | Verdict::StoreFull => None,
        }
    }

    /// The HTTP status code for the caller's own request (ext_authz's
    /// denial; forward-auth differs for refused callers).
    pub fn http_status(&self) -> StatusCode {
        match self {
            Verdict::Allow(_) => StatusCode::OK,
            Verdict::MissingCredential
            | Verdict::InvalidToken(_)
            | Verdict::UnauthenticatedCaller => StatusCode::UNAUTHORIZED,
            Verdict::InsufficientScope { .. } | Verdict::ForbiddenCaller(_) => {
                StatusCode::FORBIDDEN
            }
            Verdict::RouteMisconfigured(_) | Verdict::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Verdict::Overloaded | Verdict::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Verdict::Deadline => StatusCode::GATEWAY_TIMEOUT,
            Verdict::InvalidArgument(_) => StatusCode::BAD_REQUEST,
            Verdict::LimitReached { .. } | Verdict::AlreadyRotated => StatusCode::CONFLICT,
            Verdict::NotFound => StatusCode::NOT_FOUND,
            Verdict::StoreFull => StatusCode::INSUFFICIENT_STORAGE,
            Verdict::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Verdict::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        }
    }

    /// The HTTP status at the forward-auth door (see the module table).
    pub fn forward_auth_status(&self) -> StatusCode {
        match self {
            Verdict::UnauthenticatedCaller | Verdict::ForbiddenCaller(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            other => other.http_status(),
        }
    }

    /// The gRPC status code (gRPC calls, and ext_authz's `CheckResponse`).
    pub fn grpc_code(&self) -> Code {
        match self {
            Verdict::Allow(_) => Code::Ok,
            Verdict::MissingCredential
            | Verdict::InvalidToken(_)
            | Verdict::UnauthenticatedCaller => Code::Unauthenticated,
            Verdict::InsufficientScope { .. } | Verdict::ForbiddenCaller(_) => {
                Code::PermissionDenied
            }
            Verdict::RouteMisconfigured(_) | Verdict::Internal => Code::Internal,
            Verdict::Overloaded | Verdict::LimitReached { .. } | Verdict::StoreFull => {
                Code::ResourceExhausted
            }
            Verdict::Deadline => Code::DeadlineExceeded,
            Verdict::StoreUnavailable => Code::Unavailable,
            Verdict::InvalidArgument(_) | Verdict::UnsupportedMediaType { .. } => {
                Code::InvalidArgument
            }
            Verdict::NotFound => Code::NotFound,
            Verdict::AlreadyRotated => Code::FailedPrecondition,
            Verdict::TooLarge { .. } => Code::OutOfRange,
        }
    }

    /// `WWW-Authenticate` (RFC 6750 §3), only for answers about the end
    /// user's token: a refused caller is the gateway's problem, never the
    /// user's.
    pub fn challenge(&self) -> Option<Cow<'static, str>> {
        match self {
            Verdict::MissingCredential => Some(bearer::CHALLENGE_MISSING.into()),
            Verdict::InvalidToken(why) => Some(bearer::challenge_invalid(why.as_str()).into()),
            Verdict::InsufficientScope { required } => {
                Some(bearer::challenge_insufficient_scope(required).into())
            }
            _ => None,
        }
    }

    /// Why a token is inactive, for the `X-Patd-Reason` header of a
    /// denial; `None` for every other answer.
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            Verdict::InvalidToken(why) => Some(why.as_str()),
            _ => None,
        }
    }

    /// The public message. Never a cause: store errors and panics stay in
    /// the log.
    pub fn message(&self) -> Cow<'static, str> {
        match self {
            Verdict::Allow(_) => "".into(),
            Verdict::MissingCredential => "missing bearer token".into(),
            Verdict::InvalidToken(why) => format!("invalid token: {}", why.as_str()).into(),
            Verdict::InsufficientScope { .. } => "insufficient scope".into(),
            Verdict::RouteMisconfigured(e) => format!("route configuration: {e}").into(),
            Verdict::UnauthenticatedCaller => Refusal::Unauthenticated.to_string().into(),
            Verdict::ForbiddenCaller(role) => Refusal::PermissionDenied(*role).to_string().into(),
            Verdict::Overloaded => "overloaded: too many requests in flight".into(),
            Verdict::Deadline => "request timed out".into(),
            Verdict::StoreUnavailable => "the token store is unavailable".into(),
            Verdict::Internal => "internal error".into(),
            Verdict::InvalidArgument(e) => e.to_string().into(),
            Verdict::LimitReached { limit } => ServiceError::LimitReached { limit: *limit }
                .to_string()
                .into(),
            Verdict::NotFound => ServiceError::NotFound.to_string().into(),
            Verdict::AlreadyRotated => ServiceError::AlreadyRotated.to_string().into(),
            Verdict::StoreFull => ServiceError::StoreFull.to_string().into(),
            Verdict::TooLarge { limit } => {
                format!("the request body is larger than {limit} bytes").into()
            }
            Verdict::UnsupportedMediaType { expected } => {
                format!("the request body must be {expected}").into()
            }
        }
    }

    /// The RFC 9457 problem details: `type` `about:blank` (the status says
    /// it all), `title` the status's reason phrase, `status`, `detail` the
    /// public message, plus `code` (the gRPC code's name, as grpcurl shows
    /// it) and, for a bad field, `field` (its proto name, as gRPC names it).
    pub fn problem(&self) -> Problem {
        let status = self.http_status();
        Problem {
            kind: "about:blank",
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            detail: self.message(),
            code: grpc_code_name(self.grpc_code()),
            field: match self {
                Verdict::InvalidArgument(e) => Some(e.field),
                _ => None,
            },
        }
    }

    /// As an `application/problem+json` answer (the JSON API and RFC 7662
    /// doors), `no-store`. A refused caller is challenged to present its
    /// caller key as a bearer credential (RFC 9110 §11.6.1: every 401
    /// carries a challenge).
    pub fn to_problem(&self) -> Response {
        let body = serde_json::to_vec(&self.problem()).unwrap_or_default();
        let mut response = (self.http_status(), body).into_response();
        let h = response.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        h.insert(CACHE_CONTROL, HeaderValue::from_static(NO_STORE));
        if let Verdict::UnauthenticatedCaller = self {
            h.insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static(bearer::CHALLENGE_MISSING),
            );
        }
        response
    }

    /// As a gRPC status.
    pub fn to_status(&self) -> Status {
        Status::new(self.grpc_code(), self.message())
    }

    /// As a forward-auth answer. An allow carries the identity headers and
    /// may be cached by the gateway for `max_age` (never past the token's
    /// expiry); everything else is `no-store`, with the challenge where
    /// there is one and the message as a one-line body.
    pub fn to_forward_auth(&self, max_age: Duration) -> Response {
        let Verdict::Allow(Live { info, remaining }) = self else {
            return self.forward_auth_denial();
        };
        let Some(identity) = identity_headers(info) else {
            // Cannot happen for validated values; if it did, deny.
            return Verdict::Internal.forward_auth_denial();
        };
        let mut response = StatusCode::OK.into_response();
        let h = response.headers_mut();
        for (name, value) in identity {
            h.insert(name, value);
        }
        // The lifetime left on the store's clock, not this instance's.
        let cache = match max_age.min(*remaining).as_secs() {
            0 => HeaderValue::from_static(NO_STORE),
            secs => HeaderValue::from_str(&format!("private, max-age={secs}"))
                .unwrap_or(HeaderValue::from_static(NO_STORE)),
        };
        h.insert(CACHE_CONTROL, cache);
        response
    }

    fn forward_auth_denial(&self) -> Response {
        let status = self.forward_auth_status();
        let mut response = (status, format!("{}\n", self.message())).into_response();
        let h = response.headers_mut();
        h.insert(CACHE_CONTROL, HeaderValue::from_static(NO_STORE));
        if let Some(challenge) = self
            .challenge()
            .and_then(|c| HeaderValue::from_str(&c).ok())
        {
            h.insert(WWW_AUTHENTICATE, challenge);
        }
        if let Some(reason) = self.reason() {
            h.insert(REASON_HEADER, HeaderValue::from_static(reason));
        }
        response
    }

    /// As an ext_authz answer. An allow sets the identity headers with
    /// OVERWRITE_IF_EXISTS_OR_ADD, which replaces any client-sent copy (they
    /// are deliberately not also in `headers_to_remove`: Envoy applies
    /// removals after additions, which would strip patd's own values).
    /// Anything else is a denial carrying the HTTP status Envoy sends to
    /// the client: Envoy treats every non-OK `CheckResponse` as a denial
    /// (403 unless told otherwise), so a store outage says 503 here.
    pub fn to_check_response(&self) -> CheckResponse {
        let overwrite = Some(HeaderAppendAction::OverwriteIfExistsOrAdd);
        if let Verdict::Allow(Live { info, .. }) = self {
            let mut ok = OkHttpResponseBuilder::new();
            ok.add_header(ACCOUNT_ID_HEADER, info.account_id.as_str(), overwrite, true)
                .add_header(TOKEN_ID_HEADER, info.token_id.as_str(), overwrite, true)
                .add_header(TOKEN_SCOPES_HEADER, info.scopes.joined(), overwrite, true);
            let mut response = CheckResponse::with_status(Status::ok(""));
            response.set_http_response(ok.build());
            return response;
        }
        let message = self.message();
        let http_status = HttpStatusCode::try_from(i32::from(self.http_status().as_u16()))
            .unwrap_or(HttpStatusCode::InternalServerError);
        let mut denied = DeniedHttpResponseBuilder::new();
        denied
            .set_http_status(http_status)
            .set_body(message.as_ref());
        denied.add_header(CACHE_CONTROL.as_str(), NO_STORE, overwrite, false);
        if let Some(challenge) = self.challenge() {
            denied.add_header(WWW_AUTHENTICATE.as_str(), challenge, overwrite, false);
        }
        if let Some(reason) = self.reason() {
            denied.add_header(REASON_HEADER, reason, overwrite, false);
        }
        let mut response = CheckResponse::with_status(self.to_status());
        response.set_http_response(denied.build());
        response
    }
}

/// The three identity headers of an allow; `None` if a value is not a
/// valid header value.
fn identity_headers(info: &TokenInfo) -> Option<[(HeaderName, HeaderValue); 3]> {
    Some([
        (
            HeaderName::from_static(ACCOUNT_ID_HEADER),
            HeaderValue::from_bytes(info.account_id.as_str().as_bytes()).ok()?,
        ),
        (
            HeaderName::from_static(TOKEN_ID_HEADER),
            HeaderValue::from_str(info.token_id.as_str()).ok()?,
        ),
        (
            HeaderName::from_static(TOKEN_SCOPES_HEADER),
            HeaderValue::from_str(&info.scopes.joined()).ok()?,
        ),
    ])
}

impl From<ServiceError> for Verdict {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::InvalidArgument(field) => Verdict::InvalidArgument(field),
            ServiceError::LimitReached { limit } => Verdict::LimitReached { limit },
            ServiceError::NotFound => Verdict::NotFound,
            ServiceError::AlreadyRotated => Verdict::AlreadyRotated,
            ServiceError::StoreFull => Verdict::StoreFull,
            ServiceError::Unavailable(_) => Verdict::StoreUnavailable,
        }
    }
}

impl From<Refusal> for Verdict {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Unauthenticated => Verdict::UnauthenticatedCaller,
            Refusal::PermissionDenied(role) => Verdict::ForbiddenCaller(role),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_denial() -> Vec<Verdict> {
        vec![
            Verdict::MissingCredential,
            Verdict::InvalidToken(Inactive::Malformed),
            Verdict::InvalidToken(Inactive::Unknown),
            Verdict::InvalidToken(Inactive::Expired),
            Verdict::InvalidToken(Inactive::Revoked),
            Verdict::InvalidToken(Inactive::Rotated),
            Verdict::InsufficientScope {
                required: Scopes::parse(vec!["admin".into()]).unwrap(),
            },
            Verdict::RouteMisconfigured(FieldError::new("scope", "bad")),
            Verdict::UnauthenticatedCaller,
            Verdict::ForbiddenCaller(Role::Manage),
            Verdict::Overloaded,
            Verdict::Deadline,
            Verdict::StoreUnavailable,
            Verdict::Internal,
            Verdict::InvalidArgument(FieldError::new("note", "too long")),
            Verdict::LimitReached { limit: 50 },
            Verdict::NotFound,
            Verdict::AlreadyRotated,
            Verdict::StoreFull,
            Verdict::TooLarge { limit: 65536 },
            Verdict::UnsupportedMediaType {
                expected: "application/json",
            },
        ]
    }

    #[test]
    fn token_check_outcomes_are_the_metric_labels() {
        const LABELS: [&str; 9] = [
            "active",
            "malformed",
            "unknown",
            "expired",
            "revoked",
            "rotated",
            "insufficient_scope",
            "unavailable",
            "missing",
        ];
        for v in every_denial() {
            if let Some(outcome) = v.introspection_outcome() {
                assert!(LABELS.contains(&outcome), "{v:?}: {outcome}");
            }
        }
        // Only answers about a presented credential (or its absence) count.
        assert_eq!(Verdict::Overloaded.introspection_outcome(), None);
        assert_eq!(Verdict::UnauthenticatedCaller.introspection_outcome(), None);
        assert_eq!(
            Verdict::StoreUnavailable.introspection_outcome(),
            Some("unavailable")
        );
        // gRPC Introspect names the same answers the same way.
        for why in [
            Inactive::Malformed,
            Inactive::Unknown,
            Inactive::Expired,
            Inactive::Revoked,
            Inactive::Rotated,
        ] {
            assert_eq!(
                introspect_outcome(&Ok(Introspection::Inactive(why))),
                Verdict::InvalidToken(why).introspection_outcome().unwrap()
            );
        }
        assert_eq!(
            introspect_outcome(&Err(ServiceError::NotFound)),
            Verdict::StoreUnavailable.introspection_outcome().unwrap()
        );
    }

    #[test]
    fn every_door_renders_the_same_status_and_challenge() {
        for v in every_denial() {
            let http = v.to_forward_auth(Duration::from_secs(60));
            let check = v.to_check_response();
            assert_eq!(http.status(), v.forward_auth_status(), "{v:?}");
            let grpc = v.to_status();
            assert_eq!(grpc.code(), v.grpc_code(), "{v:?}");
            assert_eq!(check.status.as_ref().unwrap().code, v.grpc_code() as i32);
            let Some(envoy_types::ext_authz::v3::pb::HttpResponse::DeniedResponse(denied)) =
                check.http_response
            else {
                panic!("{v:?}: not a denial");
            };
            let envoy_status = denied.status.unwrap().code;
            assert_eq!(envoy_status, i32::from(v.http_status().as_u16()), "{v:?}");
            let http_challenge = http
                .headers()
                .get(WWW_AUTHENTICATE)
                .map(|h| h.to_str().unwrap().to_owned());
            let envoy_challenge = denied
                .headers
                .iter()
                .filter_map(|h| h.header.as_ref())
                .find(|h| h.key == "www-authenticate")
                .map(|h| h.value.clone());
            assert_eq!(http_challenge, envoy_challenge, "{v:?}");
            assert_eq!(http_challenge.as_deref(), v.challenge().as_deref());
            let http_reason = http
                .headers()
                .get(REASON_HEADER)
                .map(|h| h.to_str().unwrap().to_owned());
            let envoy_reason = denied
                .headers
                .iter()
                .filter_map(|h| h.header.as_ref())
                .find(|h| h.key == REASON_HEADER)
                .map(|h| h.value.clone());
            assert_eq!(http_reason, envoy_reason, "{v:?}");
            assert_eq!(http_reason.as_deref(), v.reason(), "{v:?}");
            assert_eq!(
                http.headers().get(CACHE_CONTROL).unwrap(),
                NO_STORE,
                "{v:?}"
            );
        }
    }

    #[test]
    fn an_invalid_tokens_reason_is_in_the_challenge_the_header_and_the_body() {
        for (why, word) in [
            (Inactive::Malformed, "malformed"),
            (Inactive::Unknown, "unknown"),
            (Inactive::Expired, "expired"),
            (Inactive::Revoked, "revoked"),
            (Inactive::Rotated, "rotated"),
        ] {
            let v = Verdict::InvalidToken(why);
            assert_eq!(
                v.challenge().unwrap(),
                format!(
                    r#"Bearer realm="patd", error="invalid_token", error_description="{word}""#
                )
            );
            assert_eq!(v.reason(), Some(word));
            assert!(v.message().ends_with(word));
        }
        assert_eq!(Verdict::MissingCredential.reason(), None);
    }

    #[test]
    fn every_problem_carries_the_http_status_and_the_grpc_code() {
        for v in every_denial() {
            let response = v.to_problem();
            assert_eq!(response.status(), v.http_status(), "{v:?}");
            assert_eq!(response.headers()[CONTENT_TYPE], PROBLEM_JSON);
            assert_eq!(response.headers()[CACHE_CONTROL], NO_STORE);
            let body = serde_json::to_value(v.problem()).unwrap();
            assert_eq!(body["status"], v.http_status().as_u16(), "{v:?}");
            assert_eq!(
                body["code"],
                format!("{:?}", v.grpc_code())
                    .chars()
                    .flat_map(|c| {
                        let sep = c.is_uppercase().then_some('_');
                        sep.into_iter().chain(c.to_uppercase())
                    })
                    .collect::<String>()
                    .trim_start_matches('_'),
                "{v:?}"
            );
            assert_eq!(body["detail"], v.message().as_ref());
            let challenged = response.headers().contains_key(WWW_AUTHENTICATE);
            assert_eq!(challenged, v == Verdict::UnauthenticatedCaller, "{v:?}");
        }
        let bad = Verdict::InvalidArgument(FieldError::new("note", "too long"));
        let bad = serde_json::to_value(bad.problem()).unwrap();
        assert_eq!(bad["field"], "note");
        assert_eq!(bad["type"], "about:blank");
        let not_found = serde_json::to_value(Verdict::NotFound.problem()).unwrap();
        assert!(not_found.get("field").is_none());
    }

    #[test]
    fn a_misconfigured_route_never_blames_the_user() {
        let v = Verdict::RouteMisconfigured(FieldError::new("scope", "bad"));
        assert!(v.http_status().is_server_error());
        assert!(v.challenge().is_none());
        assert!(v.message().contains("scope"));
    }

    #[test]
    fn a_refused_caller_never_looks_like_the_users_bad_token() {
        for v in [
            Verdict::UnauthenticatedCaller,
            Verdict::ForbiddenCaller(Role::Introspect),
        ] {
            assert!(v.challenge().is_none());
            assert!(v.forward_auth_status().is_server_error());
            assert!(v.http_status().is_client_error());
        }
    }
}
