//! The `forward-auth` scenario: what nginx `auth_request` or Caddy
//! `forward_auth` send. Each task holds its own HTTP/1.1 keep-alive
//! connection (HTTP/1.1 has one request in flight per connection, so
//! `--connections` x `--in-flight` sockets) and sends
//! `GET /v1/forward-auth` with `Authorization: Bearer <value>`: a valid
//! token must get 200 with its account in `X-Account-Id`, anything else
//! 401.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{AUTHORIZATION, HOST};
use hyper::http::HeaderValue;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::driver::Clock;
use crate::rng::Rng;
use crate::setup::{Fleet, Pick};
use crate::stats::{Outcome, Recorder};

pub const OP: &str = "forward-auth";
const PATH: &str = "/v1/forward-auth";
/// Pause after a failed connect, so a dead server is not hammered.
const RECONNECT_PAUSE: Duration = Duration::from_millis(50);

type Sender = SendRequest<Empty<Bytes>>;

async fn connect(addr: SocketAddr) -> Result<Sender, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP/1.1 handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// One request on `sender`; the status and `X-Account-Id` of the answer
/// (its body read to the end so the connection can be reused).
async fn send(
    sender: &mut Sender,
    host: &HeaderValue,
    value: &str,
) -> Result<(StatusCode, Option<HeaderValue>), String> {
    let authorization = HeaderValue::try_from(format!("Bearer {value}"))
        .map_err(|e| format!("unusable header value: {e}"))?;
    let request = Request::get(PATH)
        .header(HOST, host)
        .header(AUTHORIZATION, authorization)
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    sender
        .ready()
        .await
        .map_err(|e| format!("connection: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = response.status();
    let account = response.headers().get("x-account-id").cloned();
    response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("response body: {e}"))?;
    Ok((status, account))
}

fn check(
    pick: &Pick<'_>,
    fleet: &Fleet,
    status: StatusCode,
    account: Option<&HeaderValue>,
) -> Outcome {
    match pick {
        Pick::Valid(held) if status == StatusCode::OK => {
            let expected = fleet.accounts[held.account].as_bytes();
            if account.is_some_and(|a| a.as_bytes() == expected) {
                Outcome::Ok
            } else {
                Outcome::Wrong("200 without the token's X-Account-Id".to_owned())
            }
        }
        Pick::Invalid(_) if status == StatusCode::UNAUTHORIZED => Outcome::Ok,
        Pick::Invalid(_) if status.is_success() => {
            Outcome::Wrong(format!("a revoked, malformed or forged value got {status}"))
        }
        _ => Outcome::Http(status.as_u16()),
    }
}

/// One load task on its own keep-alive connection, reconnecting if the
/// connection drops (each drop counts as a transport error).
pub async fn task(
    addr: SocketAddr,
    fleet: Arc<Fleet>,
    clock: Arc<Clock>,
    mut rng: Rng,
) -> Recorder {
    let mut rec = Recorder::default();
    let host =
        HeaderValue::try_from(addr.to_string()).unwrap_or(HeaderValue::from_static("localhost"));
    let mut sender: Option<Sender> = None;
    while let Some(phase) = clock.next() {
        let pick = fleet.pick(&mut rng);
        let value = match &pick {
            Pick::Valid(held) => held.token.as_str(),
            Pick::Invalid(value) => value,
        };
        let started = Instant::now();
        let conn = match sender.as_mut() {
            Some(s) => s,
            None => match connect(addr).await {
                Ok(s) => sender.insert(s),
                Err(e) => {
                    rec.record(phase, OP, started.elapsed(), &Outcome::Transport(e));
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                    continue;
                }
            },
        };
        let outcome = match send(conn, &host, value).await {
            Ok((status, account)) => check(&pick, &fleet, status, account.as_ref()),
            Err(e) => {
                sender = None;
                Outcome::Transport(e)
            }
        };
        rec.record(phase, OP, started.elapsed(), &outcome);
    }
    rec
}
