//! Envoy `envoy.service.auth.v3.Authorization/Check` (Envoy, Istio, Contour):
//! the same gateway decision as HTTP forward-auth, rendered in ext_authz's
//! terms by `verdict`. A route may require scopes through the context
//! extension `patd_scopes` (space-separated; see
//! `bearer::route_scopes_from_extensions`).

use axum::http::HeaderName;
use envoy_types::ext_authz::v3::pb::{Authorization, CheckRequest, CheckResponse};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest;
use tonic::{Request, Response, Status};

use crate::bearer;
use crate::metrics::{self, Door};
use crate::service::Tokens;
use crate::store::Store;
use crate::verdict::Verdict;

pub use envoy_types::ext_authz::v3::pb::AuthorizationServer;

pub use crate::bearer::SCOPES_EXTENSION;

/// The ext_authz service over the token use cases.
pub struct ExtAuthz<S> {
    tokens: Tokens<S>,
    /// The extra token header (`PATD_FORWARD_AUTH_TOKEN_HEADER`), read here
    /// as at forward-auth so both doors take the same credentials.
    token_header: Option<HeaderName>,
}

impl<S> ExtAuthz<S> {
    pub fn new(tokens: Tokens<S>, token_header: Option<HeaderName>) -> Self {
        Self {
            tokens,
            token_header,
        }
    }
}

/// Every value of the header `name` (lower case) in the request, in the
/// form Envoy sent it: the `headers` map (repeated headers already joined
/// with commas), or, with `encode_raw_headers`, the `header_map` list of
/// raw bytes.
fn header_values<'a>(
    http: Option<&'a HttpRequest>,
    name: &'a str,
) -> impl Iterator<Item = &'a [u8]> + 'a {
    let map = http.and_then(|h| h.headers.get(name)).map(String::as_bytes);
    let raw = http
        .and_then(|h| h.header_map.as_ref())
        .into_iter()
        .flat_map(|m| &m.headers)
        .filter(move |h| h.key.eq_ignore_ascii_case(name))
        .map(|h| {
            if h.raw_value.is_empty() {
                h.value.as_bytes()
            } else {
                h.raw_value.as_slice()
            }
        });
    map.into_iter().chain(raw)
}

#[tonic::async_trait]
impl<S: Store> Authorization for ExtAuthz<S> {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let request = request.into_inner();
        let http = request
            .attributes
            .as_ref()
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref());
        // The user's request carries the trace this decision belongs to.
        if let Some(http) = http {
            crate::telemetry::parent_from_map(&tracing::Span::current(), &http.headers);
        }
        let authorization = header_values(http, "authorization");
        let extra = self
            .token_header
            .iter()
            .flat_map(|name| header_values(http, name.as_str()));
        let presented = bearer::presented(authorization, extra).value();
        let extensions = request
            .attributes
            .iter()
            .flat_map(|a| &a.context_extensions)
            .map(|(k, v)| (k.as_str(), v.as_str()));
        let verdict = match bearer::route_scopes_from_extensions(extensions) {
            Ok(required) => {
                let decision = self.tokens.authorize("Check", presented, &required).await;
                Verdict::from_decision(decision, &required)
            }
            Err(e) => {
                // The route's configuration is wrong, not the user's token.
                tracing::warn!(error = %e, "ext_authz route is misconfigured");
                Verdict::RouteMisconfigured(e)
            }
        };
        if let Some(outcome) = verdict.introspection_outcome() {
            metrics::introspection(Door::ExtAuthz, outcome);
        }
        Ok(Response::new(verdict.to_check_response()))
    }
}
