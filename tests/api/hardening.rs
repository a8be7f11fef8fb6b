//! Protocol edges an anonymous peer can reach, held to their specs, and
//! secrets kept out of core files: a gRPC request that is not gRPC (HTTP
//! 415), a reflection request naming a 60 KiB symbol (refused, not echoed),
//! `chunked` applied twice (RFC 9112: 400), core dumps off unless asked for.

use std::io::{Read as _, Write as _};
use std::time::Duration;

use tokio_stream::StreamExt as _;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;

use crate::helpers::{Patd, ReadyFile};
use crate::http_helpers::{grpc_frame, h2_post};

#[tokio::test]
async fn a_request_that_is_not_grpc_gets_415() {
    let patd = Patd::memory().await;
    for content_type in ["application/json", "text/plain", "application/grpcx"] {
        let answer = h2_post(
            patd.grpc_addr,
            "/patd.v1.TokenService/Introspect",
            &[("content-type", content_type), ("te", "trailers")],
            grpc_frame(b""),
        )
        .await;
        assert_eq!(
            answer.map(|(status, _)| status),
            Some(415),
            "{content_type}"
        );
    }
    let grpc = h2_post(
        patd.grpc_addr,
        "/patd.v1.TokenService/Introspect",
        &[("content-type", "application/grpc"), ("te", "trailers")],
        grpc_frame(b""),
    )
    .await;
    assert_eq!(grpc, Some((200, Some("0".to_owned()))), "a real gRPC call");
}

#[tokio::test]
async fn reflection_refuses_a_huge_name_without_echoing_it() {
    let patd = Patd::memory().await;
    let name = "x".repeat(60 * 1024);
    let mut reflection = ServerReflectionClient::new(patd.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(name.clone())),
    };
    let answer = match reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
    {
        Err(status) => status.message().to_owned(),
        Ok(response) => match response.into_inner().next().await {
            Some(Err(status)) => status.message().to_owned(),
            other => format!("{other:?}"),
        },
    };
    assert!(answer.len() < 1024, "answer of {} bytes", answer.len());
    assert!(!answer.contains(&name[..1024]), "the name was echoed");
    // An ordinary lookup still works.
    let ok = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection
        .server_reflection_info(tokio_stream::iter([ok]))
        .await
        .expect("reflection")
        .into_inner();
    assert!(stream.next().await.expect("answer").is_ok());
}

#[tokio::test]
async fn chunked_applied_twice_is_refused() {
    let patd = Patd::memory().await;
    let mut stream = std::net::TcpStream::connect(patd.http_addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    stream
        .write_all(
            b"POST /v1/forward-auth HTTP/1.1\r\nHost: patd\r\nTransfer-Encoding: chunked\r\n\
              Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n",
        )
        .expect("write");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
}

/// The soft core-file limit of a patd started with `limit` and `env`.
async fn core_limit(env: &[(&str, &str)]) -> String {
    let ready = ReadyFile::new();
    let mut command = std::process::Command::new("prlimit");
    command
        .args(["--core=1048576:1048576", "--", env!("CARGO_BIN_EXE_patd")])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs([
            ("PATD_GRPC_ADDR", "127.0.0.1:0"),
            ("PATD_HTTP_ADDR", "127.0.0.1:0"),
        ])
        .envs(env.iter().copied())
        .env(ready.env().0, ready.env().1)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = command.spawn().expect("prlimit patd");
    ready.wait(&mut child).await.expect("patd started");
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).expect("limits");
    let _ = child.kill();
    let _ = child.wait();
    limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .and_then(|l| l.split_whitespace().nth(4))
        .expect("core line")
        .to_owned()
}

#[tokio::test]
async fn core_dumps_are_off_unless_an_operator_opts_in() {
    assert_eq!(core_limit(&[]).await, "0");
    assert_eq!(
        core_limit(&[("PATD_ALLOW_CORE_DUMPS", "true")]).await,
        "1048576"
    );
}
