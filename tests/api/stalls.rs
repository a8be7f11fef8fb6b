//! Issue 17, finding 1 and the control-frame floods: peers that never read
//! their answers (a zero HTTP/2 flow-control window), and peers that send
//! PING, SETTINGS or WINDOW_UPDATE frames in a loop. Every attack here
//! is bounded (a few seconds, loopback only) and checks the figures README
//! documents under "Limits an anonymous peer meets".

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::helpers::{Backend, Patd, PatdOptions};
use crate::http_helpers::get;
use crate::observability::{counter, scrape};

/// The resident set of `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// How a stalled call's answer began.
#[derive(Debug, PartialEq, Eq)]
pub enum Began {
    /// Its headers came, its body never can (a zero window).
    Held,
    /// Refused at once with this `grpc-status`, or this HTTP status.
    Refused(String),
}

/// A call the attacker makes over and over.
#[derive(Clone)]
pub enum Call {
    /// A gRPC call to this path with this message.
    Grpc(&'static str, Bytes),
    /// A gRPC call to this path whose message never comes.
    Headers(&'static str),
    /// `GET` of this path on the HTTP listener.
    Get(&'static str),
}

/// A connection that announces a zero stream window (legal: RFC 9113
/// §6.9.2) and answers pings, so patd can send answer headers but never a
/// byte of a body. Returns how each of `calls` calls began, and the
/// connection's driver, which ends when patd closes the connection.
async fn zero_window_calls(
    addr: SocketAddr,
    call: Call,
    calls: usize,
) -> (Vec<Began>, tokio::task::JoinHandle<()>) {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    zero_window_calls_over(tcp, &addr.to_string(), call, calls).await
}

/// As [`zero_window_calls`], over `io` (a TLS stream, say) to `authority`.
pub async fn zero_window_calls_over<IO>(
    io: IO,
    authority: &str,
    call: Call,
    calls: usize,
) -> (Vec<Began>, tokio::task::JoinHandle<()>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, Bytes>(io)
        .await
        .expect("h2 handshake");
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    // One call at a time: what patd holds is then what it keeps, not
    // what a burst has in flight for a moment.
    let mut began = Vec::new();
    for _ in 0..calls {
        let mut client = client.clone().ready().await.expect("ready");
        let response = match &call {
            Call::Grpc(path, message) => {
                let request = http::Request::post(format!("http://{authority}{path}"))
                    .header("content-type", "application/grpc")
                    .header("te", "trailers")
                    .body(())
                    .expect("request");
                let (response, mut body) = client.send_request(request, false).expect("send");
                // A refusal can come on the headers alone, and end the
                // stream before the message goes: then there is nothing
                // to send it on.
                let _ = body.send_data(grpc_frame(message), true);
                response
            }
            Call::Headers(path) => {
                let request = http::Request::post(format!("http://{authority}{path}"))
                    .header("content-type", "application/grpc")
                    .header("te", "trailers")
                    .body(())
                    .expect("request");
                let (response, body) = client.send_request(request, false).expect("send");
                std::mem::forget(body);
                response
            }
            Call::Get(path) => {
                let request = http::Request::get(format!("http://{authority}{path}"))
                    .body(())
                    .expect("request");
                client.send_request(request, true).expect("send").0
            }
        };
        let response = tokio::time::timeout(Duration::from_secs(10), response)
            .await
            .expect("answer headers in time")
            .unwrap_or_else(|e| panic!("answer headers after {} calls: {e}", began.len()));
        let refused = match &call {
            Call::Grpc(..) | Call::Headers(_) => response
                .headers()
                .get("grpc-status")
                .map(|s| s.to_str().expect("ascii").to_owned()),
            Call::Get(_) => {
                Some(response.status().as_str().to_owned()).filter(|status| status != "200")
            }
        };
        began.push(refused.map_or(Began::Held, Began::Refused));
        // Keep the stream: dropping the response would reset it.
        std::mem::forget(response);
    }
    (began, driver)
}

/// `message` in its gRPC length-prefixed frame.
fn grpc_frame(message: &[u8]) -> Bytes {
    let mut frame = vec![0];
    frame.extend_from_slice(&u32::try_from(message.len()).expect("small").to_be_bytes());
    frame.extend_from_slice(message);
    Bytes::from(frame)
}

/// A health check of the server as a whole (an empty HealthCheckRequest).
pub fn health_check() -> Call {
    Call::Grpc("/grpc.health.v1.Health/Check", Bytes::new())
}

/// An Introspect of `token` (IntrospectRequest: field 1, the token).
fn introspect(token: &str) -> Call {
    let mut message = vec![0x0a, u8::try_from(token.len()).expect("a short token")];
    message.extend_from_slice(token.as_bytes());
    Call::Grpc("/patd.v1.TokenService/Introspect", Bytes::from(message))
}

async fn health_status(patd: &Patd) -> Result<(), tonic::Status> {
    let mut health = tonic_health::pb::health_client::HealthClient::new(patd.channel().await);
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .map(|_| ())
}

/// Stalled health checks on `connections` connections of 256 streams;
/// returns how many answers each connection holds, and its driver.
async fn stall_health_checks(
    patd: &Patd,
    connections: usize,
) -> Vec<(usize, tokio::task::JoinHandle<()>)> {
    let mut stalled = Vec::new();
    for _ in 0..connections {
        let (began, driver) = zero_window_calls(patd.grpc_addr, health_check(), 256).await;
        for b in &began {
            assert!(
                *b == Began::Held || *b == Began::Refused("8".into()),
                "{b:?}"
            );
        }
        stalled.push((began.iter().filter(|b| **b == Began::Held).count(), driver));
    }
    stalled
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_nobody_reads_are_bounded_then_their_connections_closed() {
    const CONNECTIONS: usize = 8;
    const OPEN_BUDGET: usize = 64;
    let patd = Patd::spawn(
        PatdOptions::new(Backend::Memory)
            // Longer than the attack takes (on a busy machine too), so
            // the budget is seen full.
            .env("PATD_SEND_TIMEOUT", "8s")
            .env("PATD_MAX_OPEN_SERVICE_STREAMS", &OPEN_BUDGET.to_string()),
    )
    .await;
    // The same attack on a patd whose budgets do not bind: what it held
    // before they existed.
    let unbounded = Patd::spawn(
        PatdOptions::new(Backend::Memory)
            .env("PATD_SEND_TIMEOUT", "60s")
            .env("PATD_HTTP2_MAX_CONCURRENT_STREAMS", "256")
            .env("PATD_MAX_STREAMS", "100000")
            .env("PATD_MAX_OPEN_SERVICE_STREAMS", "100000"),
    )
    .await;
    let mut client = patd.client().await;
    let (token, _) = crate::helpers::issue(&mut client, "acct-stall", 600).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let before = rss_kib(patd.pid());
    let stalled = stall_health_checks(&patd, CONNECTIONS).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let grown = rss_kib(patd.pid()).saturating_sub(before);
    // While the stalls last (checked at once, well inside the send
    // timeout): token-service callers are not starved by them, probes are.
    assert!(crate::helpers::is_active(&mut client, &token).await);
    assert_eq!(
        health_status(&patd).await.map_err(|s| s.code()),
        Err(tonic::Code::ResourceExhausted),
        "the open services' budget is spent while the stalls last"
    );
    let held: usize = stalled.iter().map(|(n, _)| n).sum();
    assert_eq!(held, OPEN_BUDGET, "the open services' budget holds");

    let before_uncapped = rss_kib(unbounded.pid());
    let uncapped = stall_health_checks(&unbounded, CONNECTIONS).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let grown_uncapped = rss_kib(unbounded.pid()).saturating_sub(before_uncapped);
    let held_uncapped: usize = uncapped.iter().map(|(n, _)| n).sum();
    eprintln!(
        "{CONNECTIONS} connections x 256 stalled health checks: {held} held, RSS +{grown} KiB; \
         without the budget {held_uncapped} held, RSS +{grown_uncapped} KiB"
    );
    assert_eq!(held_uncapped, CONNECTIONS * 256);
    // README: about 45 KiB per connection and 20 KiB per held answer,
    // give or take what the allocator keeps (a few MiB).
    let bound = CONNECTIONS as u64 * 45 + held as u64 * 20 + 8 * 1024;
    assert!(
        grown <= bound,
        "RSS grew {grown} KiB, over the documented {bound} KiB"
    );
    assert!(
        grown_uncapped > bound,
        "without the budget the same attack should break the bound: {grown_uncapped} KiB"
    );
    drop(unbounded);

    // The send timeout closes every connection that holds a stalled
    // answer, and only those, and gives the places back.
    let mut closed = 0;
    for (n, driver) in stalled {
        if n > 0 {
            tokio::time::timeout(Duration::from_secs(20), driver)
                .await
                .expect("a stalled connection was closed")
                .expect("driver");
            closed += 1;
        } else {
            assert!(
                !driver.is_finished(),
                "a connection holding nothing was closed"
            );
        }
    }
    health_status(&patd).await.expect("health answers again");
    let metrics = scrape(&patd).await;
    assert_eq!(
        counter(
            &metrics,
            "patd_connections_closed_total{reason=\"send_timeout\"}"
        ),
        closed as f64,
        "{metrics}"
    );
    assert_eq!(
        counter(&metrics, "patd_streams_refused_total{budget=\"open\"}"),
        (CONNECTIONS * 256 - held + 1) as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_door_shares_the_total_budget_until_answers_are_sent() {
    const BUDGET: usize = 48;
    let patd = Patd::spawn(
        PatdOptions::new(Backend::Memory)
            .env("PATD_SEND_TIMEOUT", "6s")
            .env("PATD_MAX_STREAMS", &BUDGET.to_string()),
    )
    .await;
    let mut client = patd.client().await;
    let (token, _) = crate::helpers::issue(&mut client, "acct-budget", 600).await;
    let bearer = format!("Bearer {token}");
    let forward_auth = |patd_http| {
        let bearer = bearer.clone();
        async move {
            get(patd_http, "/v1/forward-auth", &[("authorization", &bearer)])
                .await
                .status
        }
    };

    let (began, driver) = zero_window_calls(patd.grpc_addr, introspect(&token), 60).await;
    let held = began.iter().filter(|b| **b == Began::Held).count();
    assert_eq!(held, BUDGET, "{began:?}");
    assert!(
        began[BUDGET..]
            .iter()
            .all(|b| *b == Began::Refused("8".into()))
    );

    // While the stalled answers hold every place, every door refuses at
    // once, and says why.
    let status = client.introspect(&token).await.expect_err("refused");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert_eq!(forward_auth(patd.http_addr).await, 503);

    // The send timeout closes the stalled connection; every door works.
    tokio::time::timeout(Duration::from_secs(20), driver)
        .await
        .expect("the stalled connection was closed")
        .expect("driver");
    assert!(crate::helpers::is_active(&mut client, &token).await);
    assert_eq!(forward_auth(patd.http_addr).await, 200);
    let metrics = scrape(&patd).await;
    assert_eq!(
        counter(&metrics, "patd_streams_refused_total{budget=\"total\"}"),
        (60 - BUDGET + 2) as f64,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_listener_closes_connections_that_leave_answers_unread() {
    let patd = Patd::spawn(PatdOptions::new(Backend::Memory).env("PATD_SEND_TIMEOUT", "4s")).await;
    let (began, driver) = zero_window_calls(patd.http_addr, Call::Get("/healthz"), 10).await;
    assert!(began.iter().all(|b| *b == Began::Held), "{began:?}");
    tokio::time::timeout(Duration::from_secs(20), driver)
        .await
        .expect("the stalled connection was closed")
        .expect("driver");
    let metrics = scrape(&patd).await;
    assert_eq!(
        counter(
            &metrics,
            "patd_connections_closed_total{reason=\"send_timeout\"}"
        ),
        1.0,
        "{metrics}"
    );
}

/// One HTTP/2 frame.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let n = u32::try_from(payload.len()).expect("small").to_be_bytes();
    let mut f = vec![n[1], n[2], n[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Sends the HTTP/2 preface, an empty SETTINGS and then `frame` `n`
/// times, reading whatever patd sends meanwhile; `true` when patd closed
/// the connection within `within`.
async fn flood(addr: SocketAddr, frame: Vec<u8>, n: usize, within: Duration) -> bool {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (mut reader, mut writer) = tcp.into_split();
    let write = tokio::spawn(async move {
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend(self::frame(0x4, 0, 0, &[]));
        for _ in 0..n {
            bytes.extend_from_slice(&frame);
        }
        let _ = writer.write_all(&bytes).await;
        // Hold the connection open (until the test ends).
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(writer);
    });
    let closed = tokio::time::timeout(within, async {
        let mut buf = vec![0; 64 * 1024];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok();
    write.abort();
    closed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_frame_floods_close_the_connection_and_nothing_else() {
    let patd = Patd::memory().await;
    let mut client = patd.client().await;
    let (token, _) = crate::helpers::issue(&mut client, "acct-flood", 600).await;
    let ping = frame(0x6, 0, 0, &[7; 8]);
    let window_update = frame(0x8, 0, 0, &1u32.to_be_bytes());
    let settings = frame(0x4, 0, 0, &[]);
    let priority = frame(0x2, 0, 1, &[0, 0, 0, 0, 16]);
    let wait = Duration::from_secs(5);
    for (name, f) in [
        ("PING", &ping),
        ("WINDOW_UPDATE", &window_update),
        ("SETTINGS", &settings),
        ("PRIORITY", &priority),
    ] {
        assert!(
            flood(patd.grpc_addr, f.clone(), 5_000, wait).await,
            "a {name} flood was not stopped"
        );
        assert!(
            flood(patd.http_addr, f.clone(), 5_000, wait).await,
            "a {name} flood on the HTTP listener was not stopped"
        );
        assert!(crate::helpers::is_active(&mut client, &token).await);
    }
    // A peer that pings now and then is no flood.
    assert!(
        !flood(patd.grpc_addr, ping, 50, Duration::from_secs(1)).await,
        "50 pings closed a connection"
    );
    let metrics = scrape(&patd).await;
    let closed = counter(
        &metrics,
        "patd_connections_closed_total{reason=\"control_flood\"}",
    );
    // h2 itself may be first to refuse a SETTINGS flood (it waits for
    // each ACK to be sent); every other flood is the meter's.
    assert!((6.0..=8.0).contains(&closed), "{closed}: {metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_callers_file_an_anonymous_call_is_refused_on_its_headers() {
    let dir = std::env::temp_dir().join(crate::helpers::random_name("patd-callers-"));
    std::fs::create_dir_all(&dir).expect("dir");
    let callers = dir.join("callers.toml");
    let (key, entry) = patd::auth::new_caller_key(
        "console",
        &[patd::auth::Role::Manage, patd::auth::Role::Introspect],
    );
    std::fs::write(&callers, entry).expect("write callers");
    let patd = Patd::spawn(
        PatdOptions::new(Backend::Memory)
            .env("PATD_CALLERS_FILE", &callers.to_string_lossy())
            .env("PATD_MAX_STREAMS", "32"),
    )
    .await;
    let mut client = patd.client().await.as_caller(&key);
    let (token, _) = crate::helpers::issue(&mut client, "acct-anon", 600).await;
    // 100 anonymous calls that never send their message: each is refused
    // at once (UNAUTHENTICATED), none waits for its body holding a place.
    let (began, _driver) = zero_window_calls(
        patd.grpc_addr,
        Call::Headers("/patd.v1.TokenService/Introspect"),
        100,
    )
    .await;
    assert!(
        began.iter().all(|b| *b == Began::Refused("16".into())),
        "{began:?}"
    );
    assert!(crate::helpers::is_active(&mut client, &token).await);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn long_lived_open_streams_leave_room_for_probes() {
    let patd =
        Patd::spawn(PatdOptions::new(Backend::Memory).env("PATD_MAX_OPEN_SERVICE_STREAMS", "8"))
            .await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(patd.channel().await);
    let mut watches = Vec::new();
    let mut refused = 0;
    for _ in 0..10 {
        match health
            .watch(tonic_health::pb::HealthCheckRequest::default())
            .await
        {
            Ok(watch) => watches.push(watch),
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
                refused += 1;
            }
        }
    }
    assert_eq!((watches.len(), refused), (4, 6), "half the open places");
    for _ in 0..20 {
        health_status(&patd).await.expect("probes still answer");
    }
    assert_eq!(
        get(patd.http_addr, "/healthz", &[]).await.status,
        200,
        "and on the HTTP listener"
    );
}
