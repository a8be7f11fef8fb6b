//! Black-box tests of patd: the real binary against a real redis-server.

mod bad_input;
mod decision;
mod gateways;
mod helpers;
mod http_helpers;
mod lifecycle;
mod limits;
mod mtls;
mod operators;
mod properties;
mod redis_failure;
mod secrets;
mod security;
mod tampered;
