//! patd: a personal-access-token service.
//!
//! # Layout
//!
//! Data flows one way: transport -> service -> store. Each module below
//! lists the crate modules it uses; `tests/architecture.rs` checks the list
//! against the `use crate::` lines and that the graph has no cycle.
//!
//! Start-up:
//! - [`config`] (uses `auth`, `telemetry`): the command line, flags with
//!   `PATD_*` variable fallbacks; unknown `PATD_*` variables are refused.
//! - [`settings`] (uses `audit`, `auth`, `config`, `domain`, `forward_auth`,
//!   `listener`, `service`, `store`, `telemetry`, `tls`, `token`): `Settings`, parsed once from
//!   `Config`; every rule about settings; secrets wrapped.
//! - [`server`] (uses `auth`, `forward_auth`, `grpc`, `health`, `listener`, `pb`, `service`,
//!   `reload`, `settings`, `store`, `telemetry`): wiring, health, reflection, the staged shutdown,
//!   the readiness watch and `--ready-file`.
//! - [`reload`] (uses `auth`, `domain`, `telemetry`, `tls`): reloading the
//!   callers file and TLS files on SIGHUP and when they change on disk;
//!   certificate expiry warnings.
//! - [`telemetry`] (uses `metrics`): the tracing subscriber (`RUST_LOG`,
//!   text or JSON), the OpenTelemetry providers (OTLP traces and metrics
//!   from the standard `OTEL_*` variables, the Prometheus reader), W3C
//!   trace-context extraction, error chains and panic messages for the log.
//! - [`metrics`] (uses nothing): the metric instruments and the Prometheus
//!   text of `/metrics`.
//!
//! Transport (the doors):
//! - [`grpc`] (uses `audit`, `auth`, `bearer`, `domain`, `listener`, `metrics`, `pb`,
//!   `service`, `store`, `telemetry`, `tls`, `verdict`): `patd.v1.TokenService` and Envoy
//!   ext_authz; `grpc::guard` holds the gRPC guard (stream budget, panic
//!   catcher, deadline, caller gate, load shedding) and the method -> role
//!   rule.
//! - [`forward_auth`] (uses `auth`, `bearer`, `domain`, `json_api`,
//!   `listener`, `metrics`, `service`, `store`, `telemetry`, `tls`,
//!   `verdict`): HTTP
//!   forward-auth, `/healthz`, `/readyz`, and the HTTP guard layers.
//! - [`json_api`] (uses `audit`, `auth`, `bearer`, `domain`, `grpc`, `metrics`, `pb`, `service`,
//!   `store`, `telemetry`, `tls`, `verdict`): the JSON management API (proto3 JSON
//!   mapping of the gRPC messages), RFC 7662 `/oauth2/introspect` and the
//!   OpenAPI document, on the HTTP listener.
//! - [`health`] (uses nothing): `grpc.health.v1` per its protocol (Watch
//!   of an unknown service, watches ended at shutdown).
//! - [`listener`] (uses `metrics`, `tls`): limits shared by both listeners
//!   (head size and time, HTTP/2 streams and keepalive, the stream budget,
//!   the frame meter's send timeout and control-frame allowance) and the
//!   HTTP accept loop (TCP_NODELAY, first-bytes deadline, TLS handshake,
//!   drain).
//! - [`tls`] (uses `auth`): TLS and mutual TLS; client-certificate SANs,
//!   typed.
//! - [`verdict`] (uses `auth`, `bearer`, `domain`, `service`): the one table
//!   of answers a caller can see and its rendering for every door (gRPC
//!   status, forward-auth response, ext_authz `CheckResponse`, RFC 9457
//!   problem details for the JSON doors).
//! - [`bearer`] (uses `domain`): the credential rule both gateway doors
//!   share (RFC 6750), challenges, required scopes.
//! - [`auth`] (uses `token`): callers, their roles and keys.
//!
//! Core:
//! - [`service`] (uses `audit`, `domain`, `metrics`, `store`, `telemetry`,
//!   `token`): the use cases and their rules (limit, lifetime, digest
//!   check, record seals checked before any decision, rotation, a token's
//!   state and why it is inactive, the gateway
//!   decision), with one error enum, and the one log line per request.
//! - [`store`] (uses `audit`, `domain`, `metrics`, `token`): the `Store`
//!   trait, memory and Redis implementations (one Redis, a Cluster or a
//!   Sentinel primary, reached through `store::connection`), the
//!   introspection cache, key names and the Lua scripts (each change
//!   appends its audit event in the same atomic step).
//! - [`audit`] (uses `domain`): the audit trail's types (actor, request
//!   id, event, paging, the count and age caps) and its `audit` log line.
//! - [`token`] (uses `domain`): the token format, the digests at rest and
//!   the record seals (HMACs over what a decision uses).
//! - [`domain`] (uses nothing): validated types (`AccountId`, `TokenId`,
//!   `Note`, `Scopes`, expiry, rotation grace, token states) and the shard
//!   tag.
//!
//! # Where cross-cutting behaviour lives
//!
//! - Guards (panic, deadline, load shedding, caller authentication):
//!   `grpc::guard` for gRPC, `forward_auth::router` for HTTP (the JSON
//!   routes add their own deadline and shedding, answered as problem
//!   details, in `json_api::router`).
//! - Every status, challenge and body a caller sees: `verdict`.
//! - The one log line per request: `service` (`log_rpc`); a management
//!   request's id is made there too.
//! - The audit trail: `audit` (its types and `audit` log line); each
//!   store appends an event inside the change itself (`store::memory`'s
//!   `append_event`, the Lua fragment `store/lua/audit.lua` that
//!   `store::redis` puts into every changing script).
//! - Server spans and request metrics: `grpc::guard` (gRPC) and
//!   `forward_auth` (HTTP); store spans and timings: `store` (`AnyStore`);
//!   the instruments: `metrics`; the providers: `telemetry`.
//! - Listener limits (head size and time, HTTP/2): `listener`.
//! - The shard tag that keeps an account in one Cluster slot:
//!   `domain::shard_tag`, used by `token` (ids) and `store::keys` (keys).

pub mod audit;
pub mod auth;
pub mod bearer;
pub mod config;
pub mod domain;
pub mod forward_auth;
pub mod grpc;
pub mod health;
pub mod json_api;
pub mod listener;
pub mod metrics;
pub mod reload;
pub mod server;
pub mod service;
pub mod settings;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod token;
pub mod verdict;

/// Generated protobuf types and the descriptor set served by reflection.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("patd.v1");
    include!(concat!(env!("OUT_DIR"), "/patd.v1.serde.rs"));
    include!(concat!(env!("OUT_DIR"), "/timestamp_fields.rs"));

    /// Encoded descriptors of `patd.v1`, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("patd_descriptor");

    /// Encoded descriptors of `envoy.service.auth.v3.Authorization` (from
    /// `proto/envoy_subset`), so grpcurl can call ext_authz Check.
    pub const ENVOY_AUTHZ_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("envoy_authz_descriptor");
}
