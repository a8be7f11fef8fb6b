//! The baseline server: `patd.v1.TokenService` on a bare tonic server (the
//! same tonic, h2, hyper and prost codec as patd, with no layers) whose
//! handlers do no work and answer constants. Its throughput is the local
//! limit patd is judged against, so patd's own layers (panic shield,
//! deadline, load shedding, concurrency limit, caller gate) count as
//! patd's cost. The constants are what the checks accept under
//! `--expect-baseline`.
//!
//! With `--redis-url`, Introspect also does one Redis `GET` (of a key that
//! does not exist) on one multiplexed connection of the `redis` crate, as
//! patd's: the limit for any uncached answer that needs the store.

use std::io::Write as _;
use std::net::SocketAddr;

use patd::pb;
use patd::pb::token_service_server::{TokenService, TokenServiceServer};
use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

/// The token id of every token the baseline knows.
pub const TOKEN_ID: &str = "BASbaselinetoken";
/// The value Issue always returns (shaped like a real token).
pub const TOKEN: &str = "pat_BASbaselinetoken0123456789abcdefghijABCDEFGHIJ01000000";
const ACCOUNT: &str = "bench-baseline";

/// A TokenInfo of the same shape and size as patd's answers.
fn info() -> pb::TokenInfo {
    pb::TokenInfo {
        token_id: TOKEN_ID.to_owned(),
        account_id: ACCOUNT.to_owned(),
        note: "bench".to_owned(),
        scopes: vec!["bench:read".to_owned()],
        created_at: Some(pbjson_types::Timestamp {
            seconds: 1_767_225_600,
            nanos: 0,
        }),
        expires_at: Some(pbjson_types::Timestamp {
            seconds: 1_767_232_800,
            nanos: 0,
        }),
        last_used_at: None,
        ..Default::default()
    }
}

/// The key the Redis baseline reads.
const REDIS_KEY: &str = "patd-bench:baseline";

struct Baseline {
    redis: Option<redis::aio::MultiplexedConnection>,
}

#[tonic::async_trait]
impl TokenService for Baseline {
    async fn issue(
        &self,
        _request: Request<pb::IssueRequest>,
    ) -> Result<Response<pb::IssueResponse>, Status> {
        Ok(Response::new(pb::IssueResponse {
            token: TOKEN.to_owned(),
            info: Some(info()),
        }))
    }

    async fn introspect(
        &self,
        _request: Request<pb::IntrospectRequest>,
    ) -> Result<Response<pb::IntrospectResponse>, Status> {
        if let Some(redis) = &self.redis {
            let mut conn = redis.clone();
            let _: Option<Vec<u8>> = redis::cmd("GET")
                .arg(REDIS_KEY)
                .query_async(&mut conn)
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
        }
        Ok(Response::new(pb::IntrospectResponse {
            active: true,
            info: Some(info()),
            ..Default::default()
        }))
    }

    async fn revoke(
        &self,
        _request: Request<pb::RevokeRequest>,
    ) -> Result<Response<pb::RevokeResponse>, Status> {
        Ok(Response::new(pb::RevokeResponse {}))
    }

    async fn revoke_all(
        &self,
        _request: Request<pb::RevokeAllRequest>,
    ) -> Result<Response<pb::RevokeAllResponse>, Status> {
        Ok(Response::new(pb::RevokeAllResponse::default()))
    }

    async fn list(
        &self,
        _request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        Ok(Response::new(pb::ListResponse::default()))
    }

    async fn list_audit_events(
        &self,
        _request: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        Ok(Response::new(pb::ListAuditEventsResponse::default()))
    }

    async fn rotate(
        &self,
        _request: Request<pb::RotateRequest>,
    ) -> Result<Response<pb::RotateResponse>, Status> {
        Ok(Response::new(pb::RotateResponse {
            token: TOKEN.to_owned(),
            info: Some(info()),
            ..Default::default()
        }))
    }

    async fn revoke_token(
        &self,
        _request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        Ok(Response::new(pb::RevokeTokenResponse {
            account_id: ACCOUNT.to_owned(),
            token_id: TOKEN_ID.to_owned(),
        }))
    }
}

/// Binds `addr`, prints `listening <addr>` and serves until killed.
/// `nodelay` sets TCP_NODELAY on accepted connections, as tonic's own
/// `serve(addr)` does; without it the sockets are left as accepted, as
/// patd's `serve_with_incoming` leaves them (Nagle on). With `redis_url`,
/// every Introspect reads Redis once.
pub async fn serve(addr: SocketAddr, nodelay: bool, redis_url: Option<&str>) -> Result<(), String> {
    let redis = match redis_url {
        Some(url) => Some(crate::redis_rtt::connect(url).await?),
        None => None,
    };
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let bound = listener
        .local_addr()
        .map_err(|e| format!("cannot read the bound address: {e}"))?;
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "listening {bound}");
    let _ = stdout.flush();
    Server::builder()
        .add_service(TokenServiceServer::new(Baseline { redis }).max_decoding_message_size(65_536))
        .serve_with_incoming(TcpIncoming::from(listener).with_nodelay(nodelay.then_some(true)))
        .await
        .map_err(|e| format!("baseline server: {e}"))
}
