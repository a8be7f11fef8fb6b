//! Envoy `envoy.service.auth.v3.Authorization/Check` (Envoy, Istio, Contour):
//! the same gateway decision as HTTP forward-auth, rendered in ext_authz's
//! terms by `verdict`. A route may require scopes through the context
//! extension `patd_scopes` (space-separated; see
//! `bearer::route_scopes_from_extensions`).

use envoy_types::ext_authz::v3::CheckRequestExt;
use envoy_types::ext_authz::v3::pb::{Authorization, CheckRequest, CheckResponse};
use tonic::{Request, Response, Status};

use crate::bearer;
use crate::service::Tokens;
use crate::store::Store;
use crate::verdict::Verdict;

pub use envoy_types::ext_authz::v3::pb::AuthorizationServer;

pub use crate::bearer::SCOPES_EXTENSION;

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
impl<S: Store> Authorization for ExtAuthz<S> {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let request = request.into_inner();
        let authorization = request
            .get_client_headers()
            .and_then(|h| h.get("authorization"))
            .map(String::as_bytes);
        let presented = bearer::presented(authorization, std::iter::empty()).value();
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
        Ok(Response::new(verdict.to_check_response()))
    }
}
