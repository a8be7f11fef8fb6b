//! gRPC transport: thin adapters from protobuf requests to the service layer.
//! Each handler destructures, parses into domain types, calls the service
//! and maps the result; `status.rs` owns the error mapping.

mod convert;
pub mod ext_authz;
pub mod guard;
mod status;

use tonic::{Request, Response, Status};

use crate::domain::{AccountId, TokenId};
use crate::pb;
use crate::pb::token_service_server::TokenService;
use crate::service::{Introspection, ServiceError, Tokens};
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

fn account(raw: String) -> Result<AccountId, Status> {
    AccountId::parse(raw).map_err(|e| ServiceError::from(e).into())
}

#[tonic::async_trait]
impl<S: Store> TokenService for TokenApi<S> {
    async fn issue(
        &self,
        request: Request<pb::IssueRequest>,
    ) -> Result<Response<pb::IssueResponse>, Status> {
        let cmd = convert::issue_command(request.into_inner()).map_err(ServiceError::from)?;
        let issued = self.tokens.issue(cmd).await?;
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
        let answer = match self.tokens.introspect(&token).await? {
            Introspection::Active(info) => pb::IntrospectResponse {
                active: true,
                info: Some(convert::token_info(info)),
            },
            Introspection::Inactive(_) => pb::IntrospectResponse::default(),
        };
        Ok(Response::new(answer))
    }

    async fn revoke(
        &self,
        request: Request<pb::RevokeRequest>,
    ) -> Result<Response<pb::RevokeResponse>, Status> {
        let pb::RevokeRequest {
            account_id,
            token_id,
        } = request.into_inner();
        let account = account(account_id)?;
        let token_id = TokenId::parse(token_id).map_err(ServiceError::from)?;
        self.tokens.revoke(account, token_id).await?;
        Ok(Response::new(pb::RevokeResponse {}))
    }

    async fn revoke_all(
        &self,
        request: Request<pb::RevokeAllRequest>,
    ) -> Result<Response<pb::RevokeAllResponse>, Status> {
        let account = account(request.into_inner().account_id)?;
        let revoked = self.tokens.revoke_all(account).await?;
        Ok(Response::new(pb::RevokeAllResponse { revoked }))
    }

    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let account = account(request.into_inner().account_id)?;
        let tokens = self.tokens.list(account).await?;
        Ok(Response::new(pb::ListResponse {
            tokens: tokens.into_iter().map(convert::token_info).collect(),
        }))
    }
}
