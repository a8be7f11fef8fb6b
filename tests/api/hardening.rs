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

/// A memory-store patd on loopback started under `prlimit` with `limit`
/// (e.g. `--core=0:0`) and `env`, once it listens.
async fn patd_under_prlimit(
    limit: &str,
    env: &[(&str, &str)],
) -> (std::process::Child, crate::helpers::ReadyAddrs) {
    let ready = ReadyFile::new();
    let mut child = std::process::Command::new("prlimit")
        .args([limit, "--", env!("CARGO_BIN_EXE_patd")])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs([
            ("PATD_GRPC_ADDR", "127.0.0.1:0"),
            ("PATD_HTTP_ADDR", "127.0.0.1:0"),
            ("PATD_STORE", "memory"),
        ])
        .envs(env.iter().copied())
        .env(ready.env().0, ready.env().1)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("prlimit patd");
    let addrs = ready.wait(&mut child).await.expect("patd started");
    (child, addrs)
}

/// The soft core-file limit of a patd started with a 1 MiB one and `env`.
async fn core_limit(env: &[(&str, &str)]) -> String {
    let (mut child, _) = patd_under_prlimit("--core=1048576:1048576", env).await;
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

/// Whether the server closed `socket` (EOF or reset) within `within`;
/// what it sent before (an HTTP/2 server's SETTINGS) is read and dropped.
fn closed_within(socket: &mut std::net::TcpStream, within: Duration) -> bool {
    let deadline = std::time::Instant::now() + within;
    let mut buf = [0u8; 256];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return false;
        }
        socket.set_read_timeout(Some(left)).expect("timeout");
        match socket.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) => {
                return !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                );
            }
        }
    }
}

async fn health_answers(patd: &Patd) -> bool {
    let channel = match tonic::transport::Channel::from_shared(patd.endpoint())
        .expect("endpoint")
        .connect()
        .await
    {
        Ok(channel) => channel,
        Err(_) => return false,
    };
    tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .is_ok()
}

#[tokio::test]
async fn silent_and_half_preface_connections_are_dropped_on_both_ports() {
    let patd = Patd::memory().await;
    let connect = |addr| std::net::TcpStream::connect(addr).expect("connect");
    let mut sockets: Vec<std::net::TcpStream> = Vec::new();
    for _ in 0..10 {
        sockets.push(connect(patd.grpc_addr));
        sockets.push(connect(patd.http_addr));
    }
    for addr in [patd.grpc_addr, patd.http_addr] {
        let mut half = connect(addr);
        half.write_all(b"PRI * HTTP/2.0\r\n")
            .expect("half a preface");
        sockets.push(half);
    }
    // Still open a moment later: the deadline is 5 s, not "at once".
    assert!(!closed_within(&mut sockets[0], Duration::from_millis(300)));
    tokio::time::sleep(Duration::from_millis(5200)).await;
    for (i, socket) in sockets.iter_mut().enumerate() {
        assert!(
            closed_within(socket, Duration::from_secs(2)),
            "socket {i} still open"
        );
    }
    assert!(health_answers(&patd).await);
}

#[tokio::test]
async fn a_peer_cannot_hold_more_than_its_connections() {
    let patd = Patd::spawn(
        crate::helpers::PatdOptions::new(crate::helpers::Backend::Memory)
            .env("PATD_MAX_CONNECTIONS_PER_PEER", "5"),
    )
    .await;
    let held: Vec<std::net::TcpStream> = (0..5)
        .map(|_| std::net::TcpStream::connect(patd.grpc_addr).expect("connect"))
        .collect();
    // Give the accept loop a moment to admit them.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut one_more = std::net::TcpStream::connect(patd.grpc_addr).expect("connect");
    assert!(
        closed_within(&mut one_more, Duration::from_secs(1)),
        "a sixth connection was kept"
    );
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(health_answers(&patd).await, "places came back");
}

/// CPU time (user + system, in clock ticks) `pid` has used.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after_name = stat.rsplit_once(')').expect("stat").1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat; 12 and 13 after `)`.
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

#[tokio::test]
async fn at_a_low_descriptor_limit_patd_caps_connections_and_does_not_spin() {
    let (mut child, addrs) = patd_under_prlimit("--nofile=160:160", &[]).await;
    // (160 - 64) / 2 = 48 per listener. 200 silent sockets would exhaust
    // the 160 descriptors, where accepting fails for everyone and an
    // accept loop without a back-off spins.
    let sockets: Vec<std::net::TcpStream> = (0..200)
        .filter_map(|_| std::net::TcpStream::connect(addrs.grpc_addr).ok())
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = cpu_ticks(child.id());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let used = cpu_ticks(child.id()) - before;
    assert!(used < 20, "patd used {used} ticks in 1 s holding the cap");
    let alive = std::net::TcpStream::connect(addrs.http_addr).is_ok();
    drop(sockets);
    let _ = child.kill();
    let _ = child.wait();
    assert!(alive, "the other listener still accepts");
}

/// Opens an HTTP/2 connection to `addr` and starts `streams` Introspect
/// calls whose headers are sent but whose body never comes; returns what
/// keeps them open.
async fn stalled_calls(
    addr: std::net::SocketAddr,
    streams: usize,
) -> Vec<tokio::task::JoinHandle<()>> {
    use http_body_util::StreamBody;
    use hyper::body::{Bytes, Frame};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (send, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2");
    let mut held = vec![tokio::spawn(async move {
        let _ = connection.await;
    })];
    for _ in 0..streams {
        let mut send = send.clone();
        let body = StreamBody::new(futures_util::stream::pending::<
            Result<Frame<Bytes>, std::convert::Infallible>,
        >());
        let request =
            hyper::Request::post(format!("http://{addr}/patd.v1.TokenService/Introspect"))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(body)
                .expect("request");
        held.push(tokio::spawn(async move {
            let _ = send.send_request(request).await;
        }));
    }
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_whose_body_never_comes_hold_no_slot() {
    let patd = Patd::spawn(
        crate::helpers::PatdOptions::new(crate::helpers::Backend::Memory)
            .env("PATD_MAX_CONCURRENT_REQUESTS", "64"),
    )
    .await;
    let mut client = patd.client().await;
    let (token, _) = crate::helpers::issue(&mut client, "acct-slots", 600).await;
    let mut stalls = Vec::new();
    for _ in 0..4 {
        stalls.extend(stalled_calls(patd.grpc_addr, 100).await);
    }
    // Let every stalled call reach patd.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut refused = 0;
    for _ in 0..200 {
        match client.introspect(&token).await {
            Ok(answer) => assert!(answer.active),
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
                refused += 1;
            }
        }
    }
    for stall in stalls {
        stall.abort();
    }
    assert_eq!(refused, 0, "{refused} of 200 legitimate calls were shed");
}
