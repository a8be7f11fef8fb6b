//! The JSON doors on the HTTP listener, for console backends and for
//! gateways' OAuth 2.0 introspection plugins:
//!
//! - the management API (`/v1/accounts/{account_id}/tokens…`,
//!   `/v1/tokens:introspect`): the same messages as gRPC in their proto3
//!   JSON mapping (pbjson: lowerCamelCase out, snake_case accepted in,
//!   durations `"3600s"`, timestamps RFC 3339), the same use cases, the
//!   same roles;
//! - `POST /oauth2/introspect`: RFC 7662 token introspection
//!   ([`introspection`]);
//! - `GET /v1/openapi.json`: the OpenAPI 3.1 document of all of it, kept
//!   beside this file (`openapi.json`) and tested against [`ROUTES`] and the
//!   pbjson shapes.
//!
//! Handlers are thin adapters, as in `grpc`: parse (through the same
//! `grpc::convert` and domain parsers), call `service`, render. Every
//! refusal is a [`Verdict`] rendered as RFC 9457 problem details.
//!
//! Adding a route: a variant of [`Operation`], its line in [`ROUTES`], its
//! arms in `Operation::rpc` and `Operation::handler`, the handler, and its
//! entry in `openapi.json` (a unit test fails until the last two agree).

// A refusal travels as the `Response` (or `Verdict`) it renders to, as
// axum handlers return it; refusals are the cold path.
#![allow(clippy::result_large_err)]

mod introspection;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::error_handling::HandleErrorLayer;
use axum::extract::{Extension, RawQuery, State};
use axum::http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse as _, Response};
use axum::routing::{MethodRouter, delete, get, post};
use percent_encoding::percent_decode_str;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::load_shed::LoadShedLayer;
use tower::timeout::TimeoutLayer;
use tower::{BoxError, ServiceBuilder};

use crate::audit::AuditPageRequest;
use crate::auth::{ANONYMOUS, LiveCallers, Refusal, Role};
use crate::bearer;
use crate::domain::{AccountId, FieldError, PageRequest, RevocationReason, TokenId};
use crate::grpc::convert;
use crate::metrics::{self, Door};
use crate::pb;
use crate::service::{ServiceError, Tokens};
use crate::store::Store;
use crate::telemetry::{RpcName, Unfinished};
use crate::tls::PeerSans;
use crate::verdict::Verdict;

/// The OpenAPI 3.1 document served at `GET /v1/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

const JSON: &str = "application/json";
const NO_STORE: &str = "no-store";

/// Every operation of the JSON doors; the OpenAPI `operationId` is the
/// variant's name (the RPC's name where there is one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// `Issue`: 201 with the token value.
    Issue,
    /// `List`: one page of the account's tokens (live ones, or with
    /// `include_inactive` ended ones too).
    List,
    /// `Revoke`: 204.
    Revoke,
    /// `RevokeAll`: 200 `{"revoked": n}`.
    RevokeAll,
    /// `Rotate`, an AIP-136 custom method (`…/tokens/{token_id}:rotate`):
    /// 200 with the successor's value.
    Rotate,
    /// `RevokeToken`: revoke by value (`POST /v1/tokens:revoke`), 200 with
    /// whose token it was.
    RevokeToken,
    /// `ListAuditEvents`: one page of the account's audit trail, newest
    /// first.
    ListAuditEvents,
    /// `Introspect`, in its JSON form.
    Introspect,
    /// RFC 7662 introspection ([`introspection`]).
    OAuthIntrospect,
    /// The OpenAPI document.
    OpenApi,
}

/// One route: its method, its path as OpenAPI writes it (axum's syntax
/// too) and its operation.
#[derive(Debug, Clone)]
pub struct Route {
    pub method: Method,
    /// With `{name}` parameters, as OpenAPI and axum both write them.
    pub path: &'static str,
    pub operation: Operation,
}

const fn route(method: Method, path: &'static str, operation: Operation) -> Route {
    Route {
        method,
        path,
        operation,
    }
}

const TOKENS: &str = "/v1/accounts/{account_id}/tokens";
const TOKEN: &str = "/v1/accounts/{account_id}/tokens/{token_id}";
/// Rotate's custom-method suffix (AIP-136).
const ROTATE: &str = ":rotate";

/// Where axum serves an OpenAPI path. A custom method on a resource
/// (AIP-136: `/tokens/{token_id}:rotate`) has a dynamic segment with a
/// static suffix, which axum's router (matchit 0.8) cannot match; it is
/// served at the bare parameter (`/tokens/{token_id}`), and its handler
/// takes the segment and requires the `:verb` suffix. A static
/// `/v1/tokens:introspect` is served as written.
fn axum_path(path: &str) -> String {
    match path.rsplit_once("}:") {
        Some((base, verb)) if !verb.contains('/') => format!("{base}}}"),
        _ => path.to_owned(),
    }
}

/// The routes the router serves; `openapi.json` documents exactly these.
pub const ROUTES: &[Route] = &[
    route(Method::POST, TOKENS, Operation::Issue),
    route(Method::GET, TOKENS, Operation::List),
    route(Method::DELETE, TOKENS, Operation::RevokeAll),
    route(Method::DELETE, TOKEN, Operation::Revoke),
    route(
        Method::POST,
        "/v1/accounts/{account_id}/tokens/{token_id}:rotate",
        Operation::Rotate,
    ),
    route(Method::POST, "/v1/tokens:revoke", Operation::RevokeToken),
    route(
        Method::GET,
        "/v1/accounts/{account_id}/auditEvents",
        Operation::ListAuditEvents,
    ),
    route(Method::POST, "/v1/tokens:introspect", Operation::Introspect),
    route(
        Method::POST,
        "/oauth2/introspect",
        Operation::OAuthIntrospect,
    ),
    route(Method::GET, "/v1/openapi.json", Operation::OpenApi),
];

impl Operation {
    /// How log lines name it: the RPC it serves.
    fn rpc(self) -> &'static str {
        match self {
            Operation::Issue => "Issue",
            Operation::List => "List",
            Operation::Revoke => "Revoke",
            Operation::RevokeAll => "RevokeAll",
            Operation::Rotate => "Rotate",
            Operation::RevokeToken => "RevokeToken",
            Operation::ListAuditEvents => "ListAuditEvents",
            Operation::Introspect | Operation::OAuthIntrospect => "Introspect",
            Operation::OpenApi => "OpenApi",
        }
    }

    fn handler<S: Store>(self) -> MethodRouter<Api<S>> {
        match self {
            Operation::Issue => post(issue::<S>),
            Operation::List => get(list::<S>),
            Operation::Revoke => delete(revoke::<S>),
            Operation::RevokeAll => delete(revoke_all::<S>),
            Operation::Rotate => post(rotate::<S>),
            Operation::RevokeToken => post(revoke_token::<S>),
            Operation::ListAuditEvents => get(list_audit_events::<S>),
            Operation::Introspect => post(introspect::<S>),
            Operation::OAuthIntrospect => post(introspection::introspect::<S>),
            Operation::OpenApi => get(openapi),
        }
    }
}

/// What the JSON handlers share.
struct Api<S> {
    tokens: Tokens<S>,
    callers: LiveCallers,
    /// `PATD_MAX_REQUEST_BYTES`, as for a gRPC message.
    max_body: usize,
}

impl<S> Clone for Api<S>
where
    Tokens<S>: Clone,
{
    fn clone(&self) -> Self {
        Self {
            tokens: self.tokens.clone(),
            callers: self.callers.clone(),
            max_body: self.max_body,
        }
    }
}

/// The JSON routes, each counted against the listener's concurrency limit
/// (`admission`, shared with forward-auth) and bounded by
/// `request_timeout`; overload and timeouts answer problem details.
pub fn router<S: Store>(
    tokens: Tokens<S>,
    callers: LiveCallers,
    max_body: usize,
    request_timeout: Duration,
    admission: GlobalConcurrencyLimitLayer,
) -> Router {
    let mut router = Router::new();
    for r in ROUTES {
        let rpc = r.operation.rpc();
        let guards = ServiceBuilder::new()
            .layer(HandleErrorLayer::new(move |e| overloaded_or_late(e, rpc)))
            .layer(TimeoutLayer::new(request_timeout))
            .layer(LoadShedLayer::new())
            .layer(admission.clone());
        let handler = r.operation.handler::<S>().layer(guards);
        router = router.route(&axum_path(r.path), handler);
    }
    router.with_state(Api {
        tokens,
        callers,
        max_body,
    })
}

/// A request shed or past its deadline never reached the service, which
/// writes every other request's line: this is its one line.
async fn overloaded_or_late(error: BoxError, rpc: &'static str) -> Response {
    let (verdict, outcome) = if error.is::<tower::timeout::error::Elapsed>() {
        (Verdict::Deadline, "deadline_exceeded")
    } else {
        (Verdict::Overloaded, "overloaded")
    };
    Unfinished::new(RpcName::Fixed(rpc)).finish(outcome);
    verdict.to_problem()
}

/// A JSON answer, never cached (an Issue's answer holds the token value).
fn json_response(status: StatusCode, body: &impl serde::Serialize) -> Response {
    let encoded = serde_json::to_value(body).and_then(|mut value| {
        z_normalize(&mut value);
        serde_json::to_vec(&value)
    });
    match encoded {
        Ok(bytes) => {
            let mut response = (status, bytes).into_response();
            let h = response.headers_mut();
            h.insert(CONTENT_TYPE, HeaderValue::from_static(JSON));
            h.insert(CACHE_CONTROL, HeaderValue::from_static(NO_STORE));
            response
        }
        Err(e) => {
            tracing::error!(error = %e, "could not encode a JSON answer");
            Verdict::Internal.to_problem()
        }
    }
}

/// Timestamps as the proto3 JSON mapping writes them, Z-normalized
/// (`…T22:44:22.851Z`, as grpcurl shows them): pbjson-types writes the
/// same UTC instant as `+00:00`. Only the values of Timestamp fields
/// (by their JSON names, from the descriptors) are touched, never a
/// note's text.
fn z_normalize(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, field) in map.iter_mut() {
                let is_timestamp = pb::TIMESTAMP_JSON_FIELDS.contains(&key.as_str());
                match field {
                    serde_json::Value::String(text) if is_timestamp => {
                        if let Some(utc) = text.strip_suffix("+00:00") {
                            *text = format!("{utc}Z");
                        }
                    }
                    other => z_normalize(other),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(z_normalize),
        _ => {}
    }
}

/// The credential a caller presented to a JSON door.
enum CallerCredential<'a> {
    None,
    /// `Authorization: Bearer <caller key>`.
    Key(&'a str),
    /// HTTP Basic or form `client_id`/`client_secret` (RFC 6749 §2.3.1):
    /// the caller's name and key.
    NameAndKey(String, String),
}

impl<S: Store> Api<S> {
    /// The caller's name if it may act in `role` (`anonymous` without
    /// caller authentication, as for gRPC); else the refusal to send.
    fn admit(
        &self,
        credential: CallerCredential<'_>,
        peer: Option<Extension<PeerSans>>,
        role: Role,
    ) -> Result<Arc<str>, Verdict> {
        let callers = self.callers.load();
        if !callers.is_enabled() {
            return Ok(Arc::from(ANONYMOUS));
        }
        let sans = peer.map(|p| p.0.0).unwrap_or_default();
        let (key, name) = match &credential {
            CallerCredential::None => (None, None),
            CallerCredential::Key(key) => (Some(*key), None),
            CallerCredential::NameAndKey(name, key) => (Some(key.as_str()), Some(name.as_str())),
        };
        let admitted = callers.authorize(key, &sans, role).and_then(|caller| {
            // A key presented with a name must be that caller's key.
            match name {
                Some(name) if name != &*caller.name => Err(Refusal::Unauthenticated),
                _ => Ok(caller.name.clone()),
            }
        });
        admitted.map_err(|refusal| {
            tracing::info!(refusal = %refusal, role = role.as_str(), "caller refused");
            Verdict::from(refusal)
        })
    }

    /// As [`Api::admit`] with the bearer caller key of the JSON API.
    fn admit_bearer(
        &self,
        headers: &HeaderMap,
        peer: Option<Extension<PeerSans>>,
        role: Role,
    ) -> Result<Arc<str>, Response> {
        let key = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer::from_authorization);
        let credential = key.map_or(CallerCredential::None, CallerCredential::Key);
        self.admit(credential, peer, role)
            .map_err(|v| v.to_problem())
    }

    /// Logs a field that failed validation and renders its refusal.
    fn refuse(&self, rpc: &'static str, caller: &str, field: FieldError) -> Response {
        Verdict::from(self.tokens.refuse(rpc, caller, field)).to_problem()
    }

    /// The request body, at most `max_body` bytes, in `expected` media type.
    async fn body(
        &self,
        headers: &HeaderMap,
        body: Body,
        expected: &'static str,
    ) -> Result<Bytes, Verdict> {
        let media_type = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(str::trim);
        if !media_type.is_some_and(|m| m.eq_ignore_ascii_case(expected)) {
            return Err(Verdict::UnsupportedMediaType { expected });
        }
        axum::body::to_bytes(body, self.max_body)
            .await
            .map_err(|_| Verdict::TooLarge {
                limit: self.max_body,
            })
    }

    /// A JSON request message, as pbjson reads it (either spelling of a
    /// field name; unknown fields refused).
    async fn message<T: serde::de::DeserializeOwned>(
        &self,
        rpc: &'static str,
        caller: &str,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<T, Response> {
        let bytes = self.body(headers, body, JSON).await.map_err(|v| {
            // Refused before the use case: its line is written here.
            self.tokens
                .refuse(rpc, caller, FieldError::new("body", v.message()));
            v.to_problem()
        })?;
        serde_json::from_slice(&bytes)
            .map_err(|e| {
                // serde's message names the field or the position; it can quote
                // what was sent, so it goes back to the sender only.
                let reason = format!("not a valid {rpc} request: {e}");
                Verdict::InvalidArgument(FieldError::new("body", reason)).to_problem()
            })
            .inspect_err(|_| {
                self.tokens
                    .refuse(rpc, caller, FieldError::new("body", "not valid JSON"));
            })
    }
}

/// The path's parameters at `positions` (segment indexes of the route's
/// path, from the leading `/`), percent-decoded once (RFC 3986 §2.1) into
/// UTF-8; the domain parsers then judge them as they judge gRPC fields.
/// Read from the request's path rather than axum's captures, so bytes that
/// are not UTF-8 are refused naming the field, as every refusal here is.
fn path_params<const N: usize>(
    uri: &Uri,
    positions: [(usize, &'static str); N],
) -> Result<[String; N], FieldError> {
    let segments: Vec<&str> = uri.path().split('/').collect();
    let mut out: [String; N] = std::array::from_fn(|_| String::new());
    for (slot, (index, name)) in out.iter_mut().zip(positions) {
        let raw = segments.get(index).copied().unwrap_or_default();
        *slot = percent_decode_str(raw)
            .decode_utf8()
            .map_err(|_| FieldError::new(name, "not UTF-8 once percent-decoded"))?
            .into_owned();
    }
    Ok(out)
}

/// `/v1/accounts/{account_id}/…`: where the account is.
const ACCOUNT: (usize, &str) = (3, "account_id");
/// `/v1/accounts/{account_id}/tokens/{token_id}`: where the token id is.
const TOKEN_ID: (usize, &str) = (5, "token_id");

/// What the service refused or failed, as the JSON door answers it (an
/// RFC 9457 problem, from the one verdict table).
fn failed(e: ServiceError) -> Response {
    Verdict::from(e).to_problem()
}

async fn issue<S: Store>(
    State(api): State<Api<S>>,
    peer: Option<Extension<PeerSans>>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Response> {
    let caller = api.admit_bearer(&headers, peer, Role::Manage)?;
    let [account_id] = path_params(&uri, [ACCOUNT]).map_err(|e| api.refuse("Issue", &caller, e))?;
    let mut request: pb::IssueRequest = api.message("Issue", &caller, &headers, body).await?;
    // The path names the account; a body naming another is a mistake.
    if !request.account_id.is_empty() && request.account_id != account_id {
        let e = FieldError::new("account_id", "differs from the account in the path");
        return Err(api.refuse("Issue", &caller, e));
    }
    request.account_id = account_id;
    let cmd = convert::issue_command(request).map_err(|e| api.refuse("Issue", &caller, e))?;
    let issued = api.tokens.issue(&caller, cmd).await.map_err(failed)?;
    let answer = pb::IssueResponse {
        token: issued.token.into_exposed(),
        info: Some(convert::token_info(issued.info)),
    };
    Ok(json_response(StatusCode::CREATED, &answer))
}

/// A listing's query parameters.
#[derive(Debug, Default, PartialEq, Eq)]
struct ListQuery {
    page_size: i32,
    page_token: String,
    include_inactive: bool,
}

/// `?page_size=&page_token=` (either spelling), and where `inactive` says
/// the listing has it, `include_inactive=true|false`; anything else is
/// refused.
fn list_query(query: Option<&str>, inactive: bool) -> Result<ListQuery, FieldError> {
    let (mut size, mut token, mut include) = (None, None, None);
    for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match &*name {
            "page_size" | "pageSize" if size.is_none() => {
                let parsed = value
                    .parse::<i32>()
                    .map_err(|_| FieldError::new("page_size", "not an integer"))?;
                size = Some(parsed);
            }
            "page_token" | "pageToken" if token.is_none() => token = Some(value.into_owned()),
            "include_inactive" | "includeInactive" if inactive && include.is_none() => {
                // As the proto3 JSON mapping writes a bool.
                let parsed = match &*value {
                    "true" => true,
                    "false" => false,
                    _ => return Err(FieldError::new("include_inactive", "not true or false")),
                };
                include = Some(parsed);
            }
            "page_size" | "pageSize" => return Err(FieldError::new("page_size", "given twice")),
            "page_token" | "pageToken" => {
                return Err(FieldError::new("page_token", "given twice"));
            }
            "include_inactive" | "includeInactive" if inactive => {
                return Err(FieldError::new("include_inactive", "given twice"));
            }
            _ => return Err(FieldError::new("query", "unknown parameter")),
        }
    }
    Ok(ListQuery {
        page_size: size.unwrap_or_default(),
        page_token: token.unwrap_or_default(),
        include_inactive: include.unwrap_or_default(),
    })
}

async fn list<S: Store>(
    State(api): State<Api<S>>,
    peer: Option<Extension<PeerSans>>,
    uri: Uri,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, Response> {
    let caller = api.admit_bearer(&headers, peer, Role::Manage)?;
    let parsed = path_params(&uri, [ACCOUNT]).and_then(|[account_id]| {
        let account = AccountId::parse(account_id)?;
        let q = list_query(query.as_deref(), true)?;
        let page = PageRequest::parse(q.page_size, &q.page_token)?;
        Ok((account, page, q.include_inactive))
    });
    let (account, page, inactive) = parsed.map_err(|e| api.refuse("List", &caller, e))?;
    let page = api
        .tokens
        .list(&caller, account, page, inactive)
        .await
        .map_err(failed)?;
    Ok(json_response(StatusCode::OK, &convert::list_response(page)))
}

async fn revoke<S: Store>(
    State(api): State<Api<S>>,
    peer: Option<Extension<PeerSans>>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, Response> {
    let caller = api.admit_bearer(&headers, peer, Role::Manage)?;
    let parsed = path_params(&uri, [ACCOUNT, TOKEN_ID])
        .and_then(|[a, t]| Ok((AccountId::parse(a)?, TokenId::parse(t)?)));
    let (account, token_id) = parsed.map_err(|e| api.refuse("Revoke", &caller, e))?;
    api.tokens
        .revoke(&caller, account, token_id)
        .await
        .map_err(failed)?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static(NO_STORE));
    Ok(response)
}

async fn revoke_all<S: Store>(
    State(api): State<Api<S>>,
    peer: Option<Extension<PeerSans>>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, Response> {
    let caller = api.admit_bearer(&headers, peer, Role::Manage)?;
    let parsed = path_params(&uri, [ACCOUNT]).and_then(|[a]| AccountId::parse(a));
    let account = parsed.map_err(|e| api.refuse("RevokeAll", &caller, e))?;
    let revoked = api
        .tokens
        .revoke_all(&caller, account)
        .await
        .map_err(failed)?;
    Ok(json_response(
        StatusCode::OK,
        &pb::RevokeAllResponse { revoked },
    ))
}

async fn introspect<S: Store>(
    State(api): State<Api<S>>,
    peer: Option<Extension<PeerSans>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Response> {
    let caller = api.admit_bearer(&headers, peer, Role::Introspect)?;
    let pb::IntrospectRequest { token } =
        api.message("Introspect", &caller, &headers, body).await?;
    let result = api.tokens.introspect(&token).await;
    metrics::introspection(Door::Json, crate::verdict::introspect_outcome(&result));
    let answer = result.map_err(failed)?;
    // Unlike RFC 7662's answer, this one says why (`reason`), as gRPC does.
    Ok(json_response(
        StatusCode::OK,
        &convert::introspect_response(answer),
    ))
}

/// Served at `…/tokens/{token_id}` (see [`axum_path`]): only a segment
/// ending in `:rotate` is this route; any other POST there is a path
/// patd does not serve (404).
async fn rotate<S: Store>(
    State(api): State<Api<S>>,
    peer: Option<Extension<PeerSans>>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Response> {
    const RPC: &str = "Rotate";
    // Judged on the raw path: `%3Arotate` is not the custom method.
    if !uri.path().ends_with(ROTATE) {
        return Err(Verdict::NotFound.to_problem());
    }
    let caller = api.admit_bearer(&headers, peer, Role::Manage)?;
    let [account_id, token_id] =
        path_params(&uri, [ACCOUNT, TOKEN_ID]).map_err(|e| api.refuse(RPC, &caller, e))?;
    let token_id = token_id.strip_suffix(ROTATE).unwrap_or_default().to_owned();
    let mut request: pb::RotateRequest = api.message(RPC, &caller, &headers, body).await?;
    // The path names the token; a body naming another is a mistake.
    for (field, given, path) in [
        ("account_id", &request.account_id, &account_id),
        ("token_id", &request.token_id, &token_id),
    ] {
        if !given.is_empty() && given != path {
            let e = FieldError::new(field, "differs from the one in the path");
            return Err(api.refuse(RPC, &caller, e));
        }
    }
    request.account_id = account_id;
    request.token_id = token_id;
    let cmd = convert::rotate_command(request).map_err(|e| api.refuse(RPC, &caller, e))?;
    let rotated = api.tokens.rotate(&caller, cmd).await.map_err(failed)?;
    Ok(json_response(
        StatusCode::OK,
        &convert::rotate_response(rotated),
    ))
}

async fn revoke_token<S: Store>(
    State(api): State<Api<S>>,
    peer: Option<Extension<PeerSans>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Response> {
    const RPC: &str = "RevokeToken";
    let caller = api.admit_bearer(&headers, peer, Role::Manage)?;
    let pb::RevokeTokenRequest { token, reason } =
        api.message(RPC, &caller, &headers, body).await?;
    let reason = RevocationReason::parse(reason).map_err(|e| api.refuse(RPC, &caller, e))?;
    let (account, token_id) = api
        .tokens
        .revoke_token(&caller, &token, reason)
        .await
        .map_err(failed)?;
    let answer = pb::RevokeTokenResponse {
        account_id: account.as_str().to_owned(),
        token_id: token_id.as_str().to_owned(),
    };
    Ok(json_response(StatusCode::OK, &answer))
}

async fn list_audit_events<S: Store>(
    State(api): State<Api<S>>,
    peer: Option<Extension<PeerSans>>,
    uri: Uri,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, Response> {
    const RPC: &str = "ListAuditEvents";
    let caller = api.admit_bearer(&headers, peer, Role::Manage)?;
    let parsed = path_params(&uri, [ACCOUNT]).and_then(|[account_id]| {
        let account = AccountId::parse(account_id)?;
        let q = list_query(query.as_deref(), false)?;
        Ok((
            account,
            AuditPageRequest::parse(q.page_size, &q.page_token)?,
        ))
    });
    let (account, page) = parsed.map_err(|e| api.refuse(RPC, &caller, e))?;
    let page = api
        .tokens
        .list_audit_events(&caller, account, page)
        .await
        .map_err(failed)?;
    Ok(json_response(
        StatusCode::OK,
        &convert::audit_events_response(page),
    ))
}

async fn openapi() -> Response {
    let mut response = OPENAPI.into_response();
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(JSON));
    response
}

#[cfg(test)]
mod tests;
