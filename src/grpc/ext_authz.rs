//! Envoy `envoy.service.auth.v3.Authorization/Check` (Envoy, Istio, Contour):
//! the same gateway decision as HTTP forward-auth, in ext_authz's terms.
//!
//! Allowed requests go upstream with `x-account-id`, `x-token-id` and
//! `x-token-scopes` set with OVERWRITE_IF_EXISTS_OR_ADD, which replaces any
//! client-sent copy. They are deliberately not also listed in
//! `headers_to_remove`: Envoy applies removals after additions, so that
//! would strip patd's own values. A route may require scopes through the
//! context extension `patd_scopes` (space-separated).

use envoy_types::ext_authz::v3::pb::{
    Authorization, CheckRequest, CheckResponse, HeaderAppendAction, HttpStatusCode,
};
use envoy_types::ext_authz::v3::{
    CheckRequestExt, CheckResponseExt, DeniedHttpResponseBuilder, OkHttpResponseBuilder,
};
use tonic::{Request, Response, Status};

use crate::bearer;
use crate::service::{Decision, Tokens};
use crate::store::Store;

pub use envoy_types::ext_authz::v3::pb::AuthorizationServer;

/// Context extension naming the scopes a route requires.
pub const SCOPES_EXTENSION: &str = "patd_scopes";

/// The ext_authz service over the token use cases.
pub struct ExtAuthz<S> {
    tokens: Tokens<S>,
}

impl<S> ExtAuthz<S> {
    pub fn new(tokens: Tokens<S>) -> Self {
        Self { tokens }
    }
}

#[tonic::async_trait]
impl<S: Store + Clone> Authorization for ExtAuthz<S> {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let request = request.into_inner();
        let presented = request
            .get_client_headers()
            .and_then(|h| h.get("authorization"))
            .and_then(|v| bearer::from_authorization(v));
        let extension = request
            .attributes
            .as_ref()
            .and_then(|a| a.context_extensions.get(SCOPES_EXTENSION))
            .map(String::as_str);
        let required = match bearer::required_scopes(extension) {
            Ok(scopes) => scopes,
            Err(e) => {
                return Ok(Response::new(denied(
                    HttpStatusCode::Forbidden,
                    None,
                    &e.to_string(),
                )));
            }
        };
        let response = match self.tokens.authorize("Check", presented, &required).await {
            Ok(Decision::Allow(info)) => {
                let mut ok = OkHttpResponseBuilder::new();
                let overwrite = Some(HeaderAppendAction::OverwriteIfExistsOrAdd);
                ok.add_header("x-account-id", info.account_id.as_str(), overwrite, true)
                    .add_header("x-token-id", info.token_id.as_str(), overwrite, true)
                    .add_header("x-token-scopes", info.scopes.joined(), overwrite, true);
                let mut response = CheckResponse::with_status(Status::ok(""));
                response.set_http_response(ok.build());
                response
            }
            Ok(Decision::Missing) => denied(
                HttpStatusCode::Unauthorized,
                Some(bearer::CHALLENGE_MISSING),
                "missing bearer token",
            ),
            Ok(Decision::Invalid(_)) => denied(
                HttpStatusCode::Unauthorized,
                Some(bearer::CHALLENGE_INVALID),
                "invalid token",
            ),
            Ok(Decision::InsufficientScope(_)) => {
                let challenge = bearer::challenge_insufficient_scope(&required);
                denied(
                    HttpStatusCode::Forbidden,
                    Some(&challenge),
                    "insufficient scope",
                )
            }
            // UNAVAILABLE in the response, and a 503 denial with it: Envoy
            // treats any non-OK CheckResponse as a denial (403 unless told
            // otherwise), so the 503 is what makes clients retry later.
            Err(_) => unavailable(),
        };
        Ok(Response::new(response))
    }
}

fn unavailable() -> CheckResponse {
    let message = "the token store is unavailable";
    let mut denied = DeniedHttpResponseBuilder::new();
    denied
        .set_http_status(HttpStatusCode::ServiceUnavailable)
        .set_body(message)
        .add_header(
            "cache-control",
            "no-store",
            Some(HeaderAppendAction::OverwriteIfExistsOrAdd),
            false,
        );
    let mut response = CheckResponse::with_status(Status::unavailable(message));
    response.set_http_response(denied.build());
    response
}

fn denied(code: HttpStatusCode, challenge: Option<&str>, body: &str) -> CheckResponse {
    let mut denied = DeniedHttpResponseBuilder::new();
    denied.set_http_status(code).set_body(body);
    let overwrite = Some(HeaderAppendAction::OverwriteIfExistsOrAdd);
    denied.add_header("cache-control", "no-store", overwrite, false);
    if let Some(challenge) = challenge {
        denied.add_header("www-authenticate", challenge, overwrite, false);
    }
    let status = if code == HttpStatusCode::Unauthorized {
        Status::unauthenticated(body)
    } else {
        Status::permission_denied(body)
    };
    let mut response = CheckResponse::with_status(status);
    response.set_http_response(denied.build());
    response
}
