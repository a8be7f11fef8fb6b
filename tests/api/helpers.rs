//! Test harness: a real `redis-server` on a free port and real `patd`
//! processes (the built binary) on port 0, with typed gRPC clients. Each
//! patd gets its own random key prefix, so tests never flush or share data.
//! `TEST_LOG=1` echoes every patd log line.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use patd::pb::token_service_client::TokenServiceClient;
use patd::pb::{
    IntrospectRequest, IntrospectResponse, IssueRequest, IssueResponse, ListAuditEventsRequest,
    ListAuditEventsResponse, ListRequest, ListResponse, RevokeAllRequest, RevokeAllResponse,
    RevokeRequest, RevokeResponse, RevokeTokenRequest, RevokeTokenResponse, RotateRequest,
    RotateResponse,
};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Request, Status};

/// The generated TokenService client, for requests that are malformed or
/// oversized on purpose.
pub type RawClient = TokenServiceClient<Channel>;

/// The TokenService client tests use: plain-string arguments, the answer
/// without its tonic envelope, and optionally a caller key on every call.
#[derive(Clone)]
pub struct Client {
    inner: RawClient,
    caller_key: Option<String>,
}

impl Client {
    pub fn new(channel: Channel) -> Self {
        Self {
            inner: TokenServiceClient::new(channel),
            caller_key: None,
        }
    }

    /// The same connection, each call sending `authorization: Bearer <key>`.
    pub fn as_caller(&self, key: &str) -> Self {
        Self {
            inner: self.inner.clone(),
            caller_key: Some(key.to_owned()),
        }
    }

    /// The generated client underneath (no caller key).
    pub fn raw(&mut self) -> &mut RawClient {
        &mut self.inner
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(key) = &self.caller_key {
            let value: MetadataValue<_> = format!("Bearer {key}").parse().expect("metadata");
            request.metadata_mut().insert("authorization", value);
        }
        request
    }

    pub async fn issue(&mut self, message: IssueRequest) -> Result<IssueResponse, Status> {
        let request = self.request(message);
        Ok(self.inner.issue(request).await?.into_inner())
    }

    pub async fn introspect(&mut self, token: &str) -> Result<IntrospectResponse, Status> {
        let token = token.to_owned();
        let request = self.request(IntrospectRequest { token });
        Ok(self.inner.introspect(request).await?.into_inner())
    }

    /// The first page (of the default size) of the account's tokens.
    pub async fn list(&mut self, account: &str) -> Result<ListResponse, Status> {
        self.list_page(account, 0, "").await
    }

    pub async fn list_page(
        &mut self,
        account: &str,
        page_size: i32,
        page_token: &str,
    ) -> Result<ListResponse, Status> {
        let request = self.request(ListRequest {
            account_id: account.to_owned(),
            page_size,
            page_token: page_token.to_owned(),
            include_inactive: false,
        });
        Ok(self.inner.list(request).await?.into_inner())
    }

    /// The first page of the account's tokens, ended ones included.
    pub async fn list_all(&mut self, account: &str) -> Result<ListResponse, Status> {
        let request = self.request(ListRequest {
            account_id: account.to_owned(),
            include_inactive: true,
            ..Default::default()
        });
        Ok(self.inner.list(request).await?.into_inner())
    }

    pub async fn rotate(&mut self, message: RotateRequest) -> Result<RotateResponse, Status> {
        let request = self.request(message);
        Ok(self.inner.rotate(request).await?.into_inner())
    }

    pub async fn revoke_token(
        &mut self,
        token: &str,
        reason: &str,
    ) -> Result<RevokeTokenResponse, Status> {
        let request = self.request(RevokeTokenRequest {
            token: token.to_owned(),
            reason: reason.to_owned(),
        });
        Ok(self.inner.revoke_token(request).await?.into_inner())
    }

    pub async fn revoke(
        &mut self,
        account: &str,
        token_id: &str,
    ) -> Result<RevokeResponse, Status> {
        let (account_id, token_id) = (account.to_owned(), token_id.to_owned());
        let request = self.request(RevokeRequest {
            account_id,
            token_id,
        });
        Ok(self.inner.revoke(request).await?.into_inner())
    }

    pub async fn revoke_all(&mut self, account: &str) -> Result<RevokeAllResponse, Status> {
        let account_id = account.to_owned();
        let request = self.request(RevokeAllRequest { account_id });
        Ok(self.inner.revoke_all(request).await?.into_inner())
    }

    /// One page of the account's audit trail (newest first).
    pub async fn audit_events(
        &mut self,
        account: &str,
        page_size: i32,
        page_token: &str,
    ) -> Result<ListAuditEventsResponse, Status> {
        let request = self.request(ListAuditEventsRequest {
            account_id: account.to_owned(),
            page_size,
            page_token: page_token.to_owned(),
        });
        Ok(self.inner.list_audit_events(request).await?.into_inner())
    }
}

/// A random lowercase-hex string, for key prefixes and account ids.
pub fn random_name(prefix: &str) -> String {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("OS random");
    format!("{prefix}{}", hex::encode(bytes))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

/// A `redis-server` child process on a free loopback port.
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisServer {
    pub fn start() -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(random_name("patd-test-redis-"));
        std::fs::create_dir_all(&dir).expect("redis dir");
        let mut server = Self {
            port,
            dir,
            child: None,
        };
        server.launch();
        server
    }

    fn launch(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server not found: run scripts/test.sh, which installs it");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.connection().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {} did not come up", self.port);
    }

    fn connection(&self) -> Option<redis::Connection> {
        let client = redis::Client::open(self.url()).ok()?;
        let mut conn = client
            .get_connection_with_timeout(Duration::from_millis(500))
            .ok()?;
        redis::cmd("PING").query::<String>(&mut conn).ok()?;
        Some(conn)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// A direct connection, for inspecting what patd wrote.
    pub fn conn(&self) -> redis::Connection {
        self.connection().expect("redis is up")
    }

    /// Kills the server at once (SIGKILL), like a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port (empty: tests run without
    /// persistence).
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// Every key under `prefix` with every value it holds, as text.
    pub fn dump(&self, prefix: &str) -> Vec<(String, Vec<String>)> {
        let mut conn = self.conn();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query(&mut conn)
            .expect("KEYS");
        keys.into_iter()
            .map(|key| {
                let kind: String = redis::cmd("TYPE").arg(&key).query(&mut conn).expect("TYPE");
                let values: Vec<String> = match kind.as_str() {
                    "hash" => redis::cmd("HGETALL").arg(&key).query(&mut conn),
                    "zset" => redis::cmd("ZRANGE")
                        .arg(&key)
                        .arg(0)
                        .arg(-1)
                        .arg("WITHSCORES")
                        .query(&mut conn),
                    // An audit stream: each entry's id, then its fields
                    // and values.
                    "stream" => redis::cmd("XRANGE")
                        .arg(&key)
                        .arg("-")
                        .arg("+")
                        .query::<Vec<(String, Vec<String>)>>(&mut conn)
                        .map(|entries| {
                            entries
                                .into_iter()
                                .flat_map(|(id, fields)| std::iter::once(id).chain(fields))
                                .collect()
                        }),
                    other => panic!("unexpected key type {other} for {key}"),
                }
                .expect("read value");
                (key, values)
            })
            .collect()
    }

    /// The keys under `prefix` that are not tombstones (`:x:`), their
    /// index (`:h:`) or audit streams (`:e:`): what a revocation must leave
    /// none of (those three stay by design).
    pub fn live_keys(&self, prefix: &str) -> Vec<String> {
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query(&mut self.conn())
            .expect("KEYS");
        keys.retain(|k| !k.contains("}:x:") && !k.contains("}:h:") && !k.contains("}:e:"));
        keys.sort();
        keys
    }

    /// Freezes Redis for `ms`: it accepts bytes but answers nothing.
    pub fn pause(&self, ms: u64) {
        let _: () = redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(ms)
            .arg("ALL")
            .query(&mut self.conn())
            .expect("CLIENT PAUSE");
    }

    /// Sends a signal to the server process (`STOP`, `CONT`, ...).
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("redis is running").id();
        let status = Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal}");
    }

    pub fn dbsize(&self) -> u64 {
        redis::cmd("DBSIZE")
            .query(&mut self.conn())
            .expect("DBSIZE")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Which store a patd under test uses.
#[derive(Clone, Debug)]
pub enum Backend {
    Memory,
    Redis { url: String },
}

/// A running `patd` process.
pub struct Patd {
    child: Child,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub key_prefix: String,
    logs: Arc<Mutex<String>>,
    _ready: ReadyFile,
}

/// How long patd may take to bind both listeners.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// What patd writes to `PATD_READY_FILE` once both listeners are bound.
#[derive(Debug, serde::Deserialize)]
pub struct ReadyAddrs {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
}

/// A fresh path for `PATD_READY_FILE`, removed on drop.
pub struct ReadyFile {
    path: PathBuf,
}

impl ReadyFile {
    pub fn new() -> Self {
        let name = format!("{}.json", random_name("patd-ready-"));
        Self {
            path: std::env::temp_dir().join(name),
        }
    }

    /// The `PATD_READY_FILE` setting that points patd here.
    pub fn env(&self) -> (String, String) {
        (
            "PATD_READY_FILE".to_owned(),
            self.path.to_string_lossy().into_owned(),
        )
    }

    /// `Ok` once the file is there, `Err` if `child` exited first, `None`
    /// while neither. patd renames the file into place, so it is whole.
    fn check(&self, child: &mut Child) -> Option<Result<ReadyAddrs, ExitStatus>> {
        if let Ok(text) = std::fs::read_to_string(&self.path) {
            let addrs = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("ready file {}: {e}: {text:?}", self.path.display()));
            return Some(Ok(addrs));
        }
        match child.try_wait() {
            Ok(Some(status)) => Some(Err(status)),
            _ => None,
        }
    }

    /// Waits (up to 20 s) for the addresses; `Err` says why there are none.
    pub async fn wait(&self, child: &mut Child) -> Result<ReadyAddrs, String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.check(child) {
                Some(Ok(addrs)) => return Ok(addrs),
                Some(Err(status)) => return Err(format!("exited with {status}")),
                None if Instant::now() >= deadline => return Err("timed out".to_owned()),
                None => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    /// [`Self::wait`] for tests outside a runtime.
    pub fn wait_blocking(&self, child: &mut Child) -> Result<ReadyAddrs, String> {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a runtime")
            .block_on(self.wait(child))
    }
}

impl Drop for ReadyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        // patd writes `<path>.partial` first; gone unless it was killed
        // mid-write.
        let mut partial = self.path.clone().into_os_string();
        partial.push(".partial");
        let _ = std::fs::remove_file(partial);
    }
}

/// Options for one patd process.
pub struct PatdOptions {
    pub backend: Backend,
    pub key_prefix: String,
    pub env: Vec<(String, String)>,
}

impl PatdOptions {
    pub fn new(backend: Backend) -> Self {
        Self {
            backend,
            key_prefix: random_name("t"),
            env: Vec::new(),
        }
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    pub fn key_prefix(mut self, prefix: &str) -> Self {
        self.key_prefix = prefix.to_owned();
        self
    }
}

/// Runs the patd binary with a clean environment plus `env`.
pub fn patd_command(env: &[(String, String)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_patd"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .envs(env.iter().map(|(k, v)| (k, v)));
    cmd
}

impl Patd {
    pub async fn memory() -> Self {
        Self::spawn(PatdOptions::new(Backend::Memory)).await
    }

    pub async fn redis(redis: &RedisServer) -> Self {
        Self::spawn(PatdOptions::new(Backend::Redis { url: redis.url() })).await
    }

    pub async fn spawn(opts: PatdOptions) -> Self {
        let store = match &opts.backend {
            Backend::Memory => "memory".to_owned(),
            Backend::Redis { url } => url.clone(),
        };
        let ready = ReadyFile::new();
        let mut env = vec![
            ("PATD_GRPC_ADDR".to_owned(), "127.0.0.1:0".to_owned()),
            ("PATD_HTTP_ADDR".to_owned(), "127.0.0.1:0".to_owned()),
            ("PATD_STORE".to_owned(), store),
            ("PATD_KEY_PREFIX".to_owned(), opts.key_prefix.clone()),
            ready.env(),
        ];
        env.extend(opts.env.iter().cloned());
        let mut child = patd_command(&env)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn patd");
        let stderr = child.stderr.take().expect("piped stderr");
        let logs = Arc::new(Mutex::new(String::new()));
        let sink = logs.clone();
        let reader = std::thread::spawn(move || {
            let echo = std::env::var_os("TEST_LOG").is_some();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if echo {
                    eprintln!("[patd] {line}");
                }
                let mut logs = sink.lock().expect("log lock");
                logs.push_str(&line);
                logs.push('\n');
            }
        });
        let addrs = match ready.wait(&mut child).await {
            Ok(addrs) => addrs,
            Err(why) => {
                let _ = child.kill();
                let _ = child.wait();
                // stderr is closed now: the reader has every line.
                let _ = reader.join();
                panic!(
                    "patd did not start; logs:\n{}({why})",
                    logs.lock().expect("log lock")
                );
            }
        };
        Self {
            child,
            grpc_addr: addrs.grpc_addr,
            http_addr: addrs.http_addr,
            key_prefix: opts.key_prefix,
            logs,
            _ready: ready,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.endpoint())
            .expect("endpoint")
            .connect()
            .await
            .expect("connect to patd")
    }

    pub async fn client(&self) -> Client {
        Client::new(self.channel().await)
    }

    /// Everything patd logged so far.
    pub fn logs(&self) -> String {
        self.logs.lock().expect("log lock").clone()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the process to exit; `None` on timeout.
    /// Async so that this test's own clients keep answering (HTTP/2
    /// shutdown pings) while patd drains.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }
}

impl Drop for Patd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An Issue request for `account` with the given ttl in seconds.
pub fn issue_request(account: &str, ttl_secs: i64) -> IssueRequest {
    IssueRequest {
        account_id: account.to_owned(),
        note: "test".to_owned(),
        ttl: Some(pbjson_types::Duration {
            seconds: ttl_secs,
            nanos: 0,
        }),
        ..Default::default()
    }
}

/// Issues a token and returns (value, token id).
pub async fn issue(client: &mut Client, account: &str, ttl_secs: i64) -> (String, String) {
    let resp = client
        .issue(issue_request(account, ttl_secs))
        .await
        .expect("issue");
    let id = resp.info.expect("info").token_id;
    (resp.token, id)
}

/// Whether Introspect says the token is active.
pub async fn is_active(client: &mut Client, token: &str) -> bool {
    client.introspect(token).await.expect("introspect").active
}

/// Issues a token with `scopes` (default lifetime); returns its value.
pub async fn issue_scoped(client: &mut Client, account: &str, scopes: &[&str]) -> String {
    client
        .issue(IssueRequest {
            account_id: account.to_owned(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
        .await
        .expect("issue")
        .token
}

/// Issues a token and revokes it at once; returns its value.
pub async fn issue_revoked(client: &mut Client, account: &str) -> String {
    let (token, token_id) = issue(client, account, 600).await;
    client.revoke(account, &token_id).await.expect("revoke");
    token
}

/// Waits (up to 5 s) until Introspect says `token` is inactive.
pub async fn wait_inactive(client: &Client, token: &str) {
    let gone = eventually(Duration::from_secs(5), || {
        let mut c = client.clone();
        let t = token.to_owned();
        async move { !is_active(&mut c, &t).await }
    })
    .await;
    assert!(gone, "token still active");
}

/// Kills Redis and waits until patd has noticed for `token`: with the
/// introspection cache (on by default with Redis), a cached token may be
/// answered from memory until the cache's invalidation channel reports the
/// loss, within its documented bound (1 s); from then on, UNAVAILABLE.
pub async fn kill_redis_until_unavailable(redis: &mut RedisServer, client: &Client, token: &str) {
    redis.kill();
    let noticed = eventually(Duration::from_secs(3), || {
        let mut c = client.clone();
        let t = token.to_owned();
        async move {
            c.introspect(&t)
                .await
                .is_err_and(|s| s.code() == tonic::Code::Unavailable)
        }
    })
    .await;
    assert!(
        noticed,
        "the token was still answered long after Redis died"
    );
}

/// Waits (up to `timeout`) until gRPC health reports `status` for `service`.
pub async fn health_becomes(
    channel: &Channel,
    service: &str,
    status: tonic_health::pb::health_check_response::ServingStatus,
    timeout: Duration,
) -> bool {
    let health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    eventually(timeout, || {
        let mut h = health.clone();
        let service = service.to_owned();
        async move {
            h.check(tonic_health::pb::HealthCheckRequest { service })
                .await
                .map(|r| r.into_inner().status == status as i32)
                .unwrap_or(false)
        }
    })
    .await
}

/// Polls `check` until it holds or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
