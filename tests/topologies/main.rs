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

/// A Cluster or Sentinel URL that cannot work stops patd at start with one
/// line naming PATD_STORE and the reason, never the password.
#[test]
fn unusable_cluster_and_sentinel_urls_stop_patd_without_showing_the_password() {
    let secret = "hunter2-do-not-print";
    for (url, why) in [
        (
            format!("redis-cluster://patd:{secret}@127.0.0.1"),
            "host:port",
        ),
        (
            format!("redis-cluster://patd:{secret}@127.0.0.1:7000/0"),
            "no databases",
        ),
        (
            format!("redis-sentinel://patd:{secret}@127.0.0.1:26379"),
            "#master-name",
        ),
        (
            format!("rediss-sentinel://patd:{secret}@h:26379#insecure"),
            "#insecure",
        ),
        (
            format!("redis-clutser://patd:{secret}@h:7000"),
            "redis-cluster://",
        ),
    ] {
        let env = [
            ("PATD_STORE".to_owned(), url.clone()),
            ("PATD_GRPC_ADDR".to_owned(), "127.0.0.1:0".to_owned()),
            ("PATD_HTTP_ADDR".to_owned(), "127.0.0.1:0".to_owned()),
        ];
        let out = helpers::patd_command(&env).output().expect("run patd");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{url}: {stderr}");
        assert!(
            stderr.contains("PATD_STORE") && stderr.contains(why),
            "{url}: {stderr}"
        );
        assert!(!stderr.contains(secret), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
}
