//! patd on real Redis topologies, started by the tests: a persistent
//! standalone Redis killed mid-stream, a Redis Cluster (lifecycle, limit,
//! spread, a slot migrated under load, a primary killed) and a
//! Sentinel-watched primary killed. Slow (each test builds its own
//! topology), so it is its own test binary, run in parallel with `api`.

// Tests fail by panicking; Cargo.toml denies these for the service only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

// The black-box harness of tests/api (patd processes, clients), shared.
#[allow(dead_code)]
#[path = "../api/helpers.rs"]
mod helpers;

mod cluster;
mod nodes;
mod sentinel;
mod standalone;
mod workload;
