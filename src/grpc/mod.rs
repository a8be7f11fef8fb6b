//! gRPC transport: thin adapters from protobuf requests to the service layer.
//! Each handler destructures, parses into domain types, calls the service
//! and maps the result; `status.rs` owns the error mapping.

pub(crate) mod convert;
pub mod ext_authz;
pub mod guard;
mod status;

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::audit::AuditPageRequest;
use crate::auth::{ANONYMOUS, CallerName};
use crate::domain::{AccountId, FieldError, PageRequest, RevocationReason, TokenId};
use crate::metrics::{self, Door};
use crate::pb;
use crate::pb::token_service_server::TokenService;
use crate::service::Tokens;
use crate::store::Store;

pub use crate::pb::token_service_server::TokenServiceServer;

/// `patd.v1.TokenService` over the token use cases.
pub struct TokenApi<S> {
    tokens: Tokens<S>,
}

impl<S> TokenApi<S> {
    pub fn new(tokens: Tokens<S>) -> Self {
        Self { tokens }
    }
}

/// Who made a request, for the log: the caller gate's name for it, or
/// `anonymous` without caller authentication.
fn caller_of<T>(request: &Request<T>) -> Arc<str> {
    request
        .extensions()
        .get::<CallerName>()
        .map_or_else(|| Arc::from(ANONYMOUS), |c| c.0.clone())
}

impl<S: Store> TokenApi<S> {
    /// Parses a field, or logs the refusal and answers INVALID_ARGUMENT.
    fn parse<T>(
        &self,
        rpc: &'static str,
        caller: &str,
        parsed: Result<T, FieldError>,
    ) -> Result<T, Status> {
        parsed.map_err(|e| self.tokens.refuse(rpc, caller, e).into())
    }
}

#[tonic::async_trait]
impl<S: Store> TokenService for TokenApi<S> {
    async fn issue(
        &self,
        request: Request<pb::IssueRequest>,
    ) -> Result<Response<pb::IssueResponse>, Status> {
        let caller = caller_of(&request);
        let cmd = self.parse(
            "Issue",
            &caller,
            convert::issue_command(request.into_inner()),
        )?;
        let issued = self.tokens.issue(&caller, cmd).await?;
        Ok(Response::new(pb::IssueResponse {
            token: issued.token.into_exposed(),
            info: Some(convert::token_info(issued.info)),
        }))
    }

    async fn introspect(
        &self,
        request: Request<pb::IntrospectRequest>,
    ) -> Result<Response<pb::IntrospectResponse>, Status> {
        let pb::IntrospectRequest { token } = request.into_inner();
        let result = self.tokens.introspect(&token).await;
        metrics::introspection(Door::Grpc, crate::verdict::introspect_outcome(&result));
        let answer = convert::introspect_response(result?);
        Ok(Response::new(answer))
    }

    async fn revoke(
        &self,
        request: Request<pb::RevokeRequest>,
    ) -> Result<Response<pb::RevokeResponse>, Status> {
        let caller = caller_of(&request);
        let pb::RevokeRequest {
            account_id,
            token_id,
        } = request.into_inner();
        let account = self.parse("Revoke", &caller, AccountId::parse(account_id))?;
        let token_id = self.parse("Revoke", &caller, TokenId::parse(token_id))?;
        self.tokens.revoke(&caller, account, token_id).await?;
        Ok(Response::new(pb::RevokeResponse {}))
    }

    async fn revoke_all(
        &self,
        request: Request<pb::RevokeAllRequest>,
    ) -> Result<Response<pb::RevokeAllResponse>, Status> {
        let caller = caller_of(&request);
        let raw = request.into_inner().account_id;
        let account = self.parse("RevokeAll", &caller, AccountId::parse(raw))?;
        let revoked = self.tokens.revoke_all(&caller, account).await?;
        Ok(Response::new(pb::RevokeAllResponse { revoked }))
    }

    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let caller = caller_of(&request);
        let pb::ListRequest {
            account_id,
            page_size,
            page_token,
            include_inactive,
        } = request.into_inner();
        let account = self.parse("List", &caller, AccountId::parse(account_id))?;
        let page = self.parse("List", &caller, PageRequest::parse(page_size, &page_token))?;
        let page = self
            .tokens
            .list(&caller, account, page, include_inactive)
            .await?;
        Ok(Response::new(convert::list_response(page)))
    }

    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        const RPC: &str = "ListAuditEvents";
        let caller = caller_of(&request);
        let pb::ListAuditEventsRequest {
            account_id,
            page_size,
            page_token,
        } = request.into_inner();
        let account = self.parse(RPC, &caller, AccountId::parse(account_id))?;
        let page = AuditPageRequest::parse(page_size, &page_token);
        let page = self.parse(RPC, &caller, page)?;
        let page = self
            .tokens
            .list_audit_events(&caller, account, page)
            .await?;
        Ok(Response::new(convert::audit_events_response(page)))
    }

    async fn rotate(
        &self,
        request: Request<pb::RotateRequest>,
    ) -> Result<Response<pb::RotateResponse>, Status> {
        let caller = caller_of(&request);
        let cmd = self.parse(
            "Rotate",
            &caller,
            convert::rotate_command(request.into_inner()),
        )?;
        let rotated = self.tokens.rotate(&caller, cmd).await?;
        Ok(Response::new(convert::rotate_response(rotated)))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let caller = caller_of(&request);
        let pb::RevokeTokenRequest { token, reason } = request.into_inner();
        let reason = self.parse("RevokeToken", &caller, RevocationReason::parse(reason))?;
        let (account, token_id) = self.tokens.revoke_token(&caller, &token, reason).await?;
        Ok(Response::new(pb::RevokeTokenResponse {
            account_id: account.as_str().to_owned(),
            token_id: token_id.as_str().to_owned(),
        }))
    }
}
