//! Black-box tests of patd: the real binary against a real redis-server.

// Tests fail by panicking; Cargo.toml denies these for the service only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod accounting;
mod audit;
mod bad_input;
mod cache;
mod clock;
mod configuration;
mod dead_keys;
mod decision;
mod gateways;
mod hardening;
mod helpers;
mod http_helpers;
mod json_api;
mod lifecycle;
mod limits;
mod mtls;
pub mod observability;
mod operators;
mod properties;
mod record_seal;
mod redis_failure;
mod redis_faults;
mod redis_tls;
pub mod rotation;
mod secrets;
mod security;
pub mod stalls;
mod tampered;
