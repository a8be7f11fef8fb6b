//! patd: a personal-access-token service.
//!
//! # Layout
//!
//! Data flows one way: transport -> service -> store.
//!
//! - [`config`]: flags and `PATD_*` variables, checked before start.
//! - [`telemetry`]: the tracing subscriber and error-chain formatting.
//! - [`token`]: the token format: generate, parse, checksum, digest.
//! - [`domain`]: validated types (`AccountId`, `Note`, `Scopes`, expiry).
//! - [`store`]: the `Store` trait, the memory and Redis implementations, key
//!   names and the Lua scripts.
//! - [`service`]: the use cases and their rules (limit, lifetime, digest
//!   comparison), with one error enum.
//! - [`auth`]: callers, their roles and keys (who may call which RPC).
//! - [`bearer`]: reading a presented token out of request headers, shared
//!   by both gateway transports.
//! - [`grpc`]: `patd.v1.TokenService` and Envoy ext_authz over the service;
//!   the one mapping of errors to `tonic::Status`.
//! - [`http`]: forward-auth for HTTP gateways, `/healthz`, `/readyz`.
//! - [`tls`]: TLS and mutual TLS for both listeners; client-certificate
//!   SANs for caller authentication.
//! - [`server`]: wiring, listeners, health, reflection, graceful shutdown.

pub mod auth;
pub mod bearer;
pub mod config;
pub mod domain;
pub mod grpc;
pub mod http;
pub mod server;
pub mod service;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod token;

/// Generated protobuf types and the descriptor set served by reflection.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("patd.v1");

    /// Encoded descriptors of `patd.v1`, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("patd_descriptor");

    /// Encoded descriptors of `envoy.service.auth.v3.Authorization` (from
    /// `proto/envoy_subset`), so grpcurl can call ext_authz Check.
    pub const ENVOY_AUTHZ_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("envoy_authz_descriptor");
}
