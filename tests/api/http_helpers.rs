//! HTTP test fixtures: GET on hyper's HTTP/1.1 client, an echo upstream
//! that records what reached it, and real nginx / Caddy processes running
//! the configs from deploy/gateways/ with only their ports replaced.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::{HeaderMap, Uri};
use http_body_util::{BodyExt as _, Full};
use hyper::Request;
use hyper::body::Bytes;
use hyper::client::conn::http1;
use hyper::header::{CONNECTION, HOST};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::helpers::random_name;

/// A parsed HTTP response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The seconds of `Cache-Control: private, max-age=N`, if that is what
    /// the reply says.
    pub fn max_age(&self) -> Option<u64> {
        self.header("cache-control")
            .and_then(|v| v.strip_prefix("private, max-age="))
            .and_then(|v| v.parse().ok())
    }
}

/// `GET path` with extra headers, over a fresh connection.
pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    let stream = TcpStream::connect(addr).await.expect("connect");
    get_over(stream, &addr.to_string(), path, headers).await
}

/// `method path` with extra headers and a body, over a fresh connection.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let stream = TcpStream::connect(addr).await.expect("connect");
    exchange(
        stream,
        &addr.to_string(),
        method,
        path,
        headers,
        body.to_vec(),
    )
    .await
    .expect("an HTTP answer")
}

/// `GET path` over an already open stream (plain or TLS). No response at
/// all (the peer hung up or broke the connection) is status 0.
pub async fn get_over<S>(stream: S, host: &str, path: &str, headers: &[(&str, &str)]) -> Reply
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    exchange(stream, host, "GET", path, headers, Vec::new())
        .await
        .unwrap_or_else(|e| Reply {
            status: 0,
            headers: Vec::new(),
            body: e.to_string(),
        })
}

async fn exchange<S>(
    stream: S,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<Reply, hyper::Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, host)
        .header(CONNECTION, "close");
    for (name, value) in headers {
        // Appends: a name given twice is sent twice.
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(Bytes::from(body))).expect("request");
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(name, value)| {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            (name.as_str().to_owned(), value)
        })
        .collect();
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    // A TLS peer may close without close_notify; what arrived still counts.
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(data) = frame.into_data() {
            bytes.extend_from_slice(&data);
        }
    }
    Ok(Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    })
}

/// `GET path` with header lines written byte for byte (names keep their
/// case and spelling, a name given twice is sent twice); returns the status
/// (0 when no status line came back).
pub async fn raw_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> u16 {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(head.as_bytes()).await.expect("send");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    answer
        .lines()
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|status| status.parse().ok())
        .unwrap_or(0)
}

/// An upstream API that records the URI and headers of every request it
/// gets.
pub struct Upstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<(Uri, HeaderMap)>>>,
}

impl Upstream {
    pub async fn start() -> Self {
        let seen: Arc<Mutex<Vec<(Uri, HeaderMap)>>> = Arc::default();
        let sink = seen.clone();
        let app = Router::new().fallback(move |uri: Uri, headers: HeaderMap| {
            let sink = sink.clone();
            async move {
                sink.lock().expect("lock").push((uri, headers));
                "upstream reached\n"
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, seen }
    }

    pub fn calls(&self) -> usize {
        self.seen.lock().expect("lock").len()
    }

    /// The last request that reached the upstream.
    fn last(&self) -> (Uri, HeaderMap) {
        let seen = self.seen.lock().expect("lock");
        seen.last().expect("the upstream was called").clone()
    }

    /// Every value of `name` in the last request that reached the upstream.
    pub fn last_values(&self, name: &str) -> Vec<String> {
        self.last()
            .1
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// The path and query of the last request that reached the upstream.
    pub fn last_uri(&self) -> String {
        self.last().0.to_string()
    }

    /// Every (name, value) of the last request whose name a WSGI/CGI
    /// upstream would read as `name`'s variable (`HTTP_X_ACCOUNT_ID` for
    /// `X-Account-Id`, `x_account_id`, `X-ACCOUNT_ID`, ...).
    pub fn last_cgi_values(&self, name: &str) -> Vec<(String, String)> {
        let cgi = |n: &str| n.to_ascii_uppercase().replace('-', "_");
        let want = cgi(name);
        self.last()
            .1
            .iter()
            .filter(|(k, _)| cgi(k.as_str()) == want)
            .map(|(k, v)| {
                let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
                (k.as_str().to_owned(), v)
            })
            .collect()
    }

    /// Every header of every request that reached the upstream whose name
    /// or value contains `needle`.
    pub fn headers_containing(&self, needle: &str) -> Vec<(String, String)> {
        let seen = self.seen.lock().expect("lock");
        seen.iter()
            .flat_map(|(_, headers)| headers.iter())
            .map(|(k, v)| {
                let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
                (k.as_str().to_owned(), v)
            })
            .filter(|(k, v)| k.contains(needle) || v.contains(needle))
            .collect()
    }
}

#[derive(Clone, Copy, Debug)]
pub enum GatewayKind {
    Nginx,
    Caddy,
}

/// A real gateway process running a deploy/gateways/ config.
pub struct Gateway {
    child: Child,
    pub addr: SocketAddr,
    dir: PathBuf,
}

/// A loopback address nothing listens on (yet).
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
}

pub fn deploy_file(name: &str) -> String {
    let path = format!("{}/deploy/gateways/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn binary(name: &str) -> String {
    ["/usr/sbin", "/usr/bin", "/usr/local/bin"]
        .iter()
        .map(|dir| format!("{dir}/{name}"))
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or_else(|| panic!("{name} is missing: run scripts/test.sh, which installs it"))
}

/// The nginx include that carries the caller key, in the format nginx.conf's
/// "Run" lines generate.
pub fn nginx_caller_key_line(key: &str) -> String {
    format!("proxy_set_header X-Patd-Caller-Key \"{key}\";\n")
}

/// A deploy/gateways/ file with its example ports replaced.
pub fn deploy_file_with_ports(
    name: &str,
    listen: SocketAddr,
    patd_http: SocketAddr,
    upstream: SocketAddr,
) -> String {
    deploy_file(name)
        .replace("127.0.0.1:8000", &listen.to_string())
        .replace("127.0.0.1:8080", &patd_http.to_string())
        .replace("127.0.0.1:9000", &upstream.to_string())
        .replace("127.0.0.1:2019", &free_addr().to_string())
}

impl Gateway {
    /// Runs the recipe as its comment says: nginx with the caller key in
    /// `patd-caller-key.conf` next to nginx.conf, Caddy with
    /// `PATD_CALLER_KEY` in its environment.
    pub async fn start(
        kind: GatewayKind,
        patd_http: SocketAddr,
        upstream: SocketAddr,
        caller_key: &str,
    ) -> Self {
        let dir = std::env::temp_dir().join(random_name("patd-gateway-"));
        std::fs::create_dir_all(&dir).expect("gateway dir");
        let addr = free_addr();
        let name = match kind {
            GatewayKind::Nginx => "nginx.conf",
            GatewayKind::Caddy => "Caddyfile",
        };
        let config = deploy_file_with_ports(name, addr, patd_http, upstream);
        let conf = dir.join(name);
        std::fs::write(&conf, config).expect("write the gateway config");
        let child = match kind {
            GatewayKind::Nginx => {
                let include = dir.join("patd-caller-key.conf");
                std::fs::write(&include, nginx_caller_key_line(caller_key))
                    .expect("write patd-caller-key.conf");
                // The recipe's own command line, kept in the foreground.
                Command::new(binary("nginx"))
                    .arg("-p")
                    .arg(&dir)
                    .arg("-c")
                    .arg(&conf)
                    .args(["-e", "stderr", "-g", "daemon off;"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::inherit())
                    .spawn()
                    .expect("start nginx")
            }
            GatewayKind::Caddy => Command::new(binary("caddy"))
                .args(["run", "--adapter", "caddyfile", "--config"])
                .arg(&conf)
                .env("HOME", &dir)
                .env("XDG_DATA_HOME", &dir)
                .env("XDG_CONFIG_HOME", &dir)
                .env("PATD_CALLER_KEY", caller_key)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start caddy"),
        };
        let gateway = Self { child, addr, dir };
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(addr).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "{kind:?} did not start listening"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        gateway
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        // SIGTERM lets nginx's master take its workers down with it; SIGKILL
        // would orphan them, still listening.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A gRPC message frame: uncompressed flag, 4-byte length, the message.
pub fn grpc_frame(message: &[u8]) -> Vec<u8> {
    let mut frame = vec![0u8];
    frame.extend(u32::try_from(message.len()).expect("small").to_be_bytes());
    frame.extend(message);
    frame
}

/// POST over a bare HTTP/2 connection (no gRPC client in between): the
/// HTTP status and the `grpc-status` (from the headers or the trailers);
/// `None` if the exchange failed.
pub async fn h2_post(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Option<(u16, Option<String>)> {
    use http_body_util::Full;
    use hyper_util::rt::TokioExecutor;
    let tcp = TcpStream::connect(addr).await.ok()?;
    let (mut send, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .ok()?;
    tokio::spawn(connection);
    let mut request = Request::post(format!("http://{addr}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(Bytes::from(body))).ok()?;
    let response = send.send_request(request).await.ok()?;
    let status = response.status().as_u16();
    let text = |v: &axum::http::HeaderValue| v.to_str().ok().map(str::to_owned);
    if let Some(grpc) = response.headers().get("grpc-status") {
        return Some((status, text(grpc)));
    }
    let body = response.into_body().collect().await.ok()?;
    let grpc = body
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .and_then(text);
    Some((status, grpc))
}
