//! How patd reaches Redis: the store URL's three kinds (one Redis, a
//! Redis Cluster, a Sentinel-watched primary), parsed once, and the
//! connection the store talks through (`Link`), which knows where a
//! command must run (the node owning an account's slot, every primary).
//!
//! One Redis and a Sentinel primary go through a `HealingConnection`.
//! redis-rs's `ConnectionManager` reconnects after an I/O error, but a
//! failure while *setting up* a connection (a password refused, a user
//! deleted and re-created, a TLS handshake that failed) sticks to the
//! manager: every later call fails the same way until the process
//! restarts. Here such a failure replaces the manager with a fresh one (at
//! most once a second), so patd recovers by itself as soon as Redis would
//! accept it again; behind Sentinel, the fresh one asks the sentinels
//! where the primary is now, which is how patd follows a failover.
//! A Cluster goes through redis-rs's async cluster client, which discovers
//! the topology from the seed nodes and follows `MOVED` and `ASK`.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use futures_util::FutureExt as _;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{
    MultipleNodeRoutingInfo, ResponsePolicy, Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr,
};
use redis::io::tcp::TcpSettings;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    Client, Cmd, ConnectionAddr, ErrorKind, IntoConnectionInfo as _, Pipeline, RedisError,
    RedisFuture, TlsCertificates, TlsMode, Value,
};
use thiserror::Error;

/// Least time between two replacements of the connection.
const REBUILD_AT_MOST_EVERY: Duration = Duration::from_secs(1);

/// A store URL that cannot be used; says why without showing the URL
/// (it may hold a password).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("PATD_STORE: {0} (the value is not shown: it may hold a password)")]
pub struct UrlError(&'static str);

/// A parsed Redis store URL.
///
/// - `redis://` / `rediss://`: one Redis (redis-rs's own URL syntax).
/// - `redis-cluster://[user:pass@]host:port[,host:port...]` (and
///   `rediss-cluster://`): seed nodes of a Redis Cluster; the rest of the
///   topology is discovered.
/// - `redis-sentinel://[user:pass@]host:port[,host:port...][/db]#master-name`
///   (and `rediss-sentinel://`): the sentinels watching `master-name`; the
///   credentials and the db are the primary's (sentinels are asked without
///   a password), TLS applies to both.
#[derive(Clone)]
pub enum RedisUrl {
    Standalone(String),
    Cluster {
        /// One redis(s):// URL per seed node, with the credentials.
        nodes: Vec<String>,
        tls: bool,
    },
    Sentinel {
        sentinels: Vec<(String, u16)>,
        master: String,
        /// A redis(s):// URL of the first sentinel's address carrying the
        /// primary's credentials and db (parsed by redis-rs).
        primary: String,
        tls: bool,
    },
}

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kind())
    }
}

/// `host:port` or `[v6]:port`.
fn host_port(s: &str) -> Result<(String, u16), UrlError> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (host, port) = rest
            .split_once("]:")
            .ok_or(UrlError("an IPv6 node is written [address]:port"))?;
        (host, port)
    } else {
        s.rsplit_once(':')
            .ok_or(UrlError("every node is written host:port"))?
    };
    if host.is_empty() {
        return Err(UrlError("a node has no host"));
    }
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or(UrlError("a node's port is not a number from 1 to 65535"))?;
    Ok((host.to_owned(), port))
}

fn write_host(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

impl RedisUrl {
    /// Parses a store URL (not `memory`).
    ///
    /// # Errors
    /// An unknown scheme, no node, a node without a valid port, a Sentinel
    /// URL without `#master-name`, `#insecure` (no certificate check), or
    /// anything redis-rs refuses.
    pub fn parse(url: &str) -> Result<Self, UrlError> {
        let (scheme, rest) = url.split_once("://").ok_or(UrlError(
            "expected `memory` or a redis://, rediss://, redis-cluster://, \
             rediss-cluster://, redis-sentinel:// or rediss-sentinel:// URL",
        ))?;
        let (tls, kind) = match scheme {
            "redis" => (false, 0),
            "rediss" => (true, 0),
            "redis-cluster" => (false, 1),
            "rediss-cluster" => (true, 1),
            "redis-sentinel" => (false, 2),
            "rediss-sentinel" => (true, 2),
            _ => {
                return Err(UrlError(
                    "expected `memory` or a redis://, rediss://, redis-cluster://, \
                     rediss-cluster://, redis-sentinel:// or rediss-sentinel:// URL",
                ));
            }
        };
        let (rest, fragment) = match rest.split_once('#') {
            Some((rest, fragment)) => (rest, Some(fragment)),
            None => (rest, None),
        };
        if fragment == Some("insecure") {
            return Err(UrlError(
                "`#insecure` (no check of Redis's certificate) is refused; set \
                 PATD_REDIS_CA to the CA that signed it",
            ));
        }
        let plain = if tls { "rediss" } else { "redis" };
        if kind == 0 {
            if fragment.is_some() {
                return Err(UrlError("a redis:// URL takes no #fragment"));
            }
            url.into_connection_info()
                .map_err(|_| UrlError("not a usable redis:// or rediss:// URL"))?;
            return Ok(Self::Standalone(url.to_owned()));
        }
        let (authority, path) = match rest.split_once('/') {
            Some((authority, path)) => (authority, path),
            None => (rest, ""),
        };
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => (Some(userinfo), hosts),
            None => (None, authority),
        };
        let nodes = hosts
            .split(',')
            .map(host_port)
            .collect::<Result<Vec<_>, _>>()?;
        let with_credentials = |(host, port): &(String, u16), path: &str| {
            let userinfo = userinfo.map(|u| format!("{u}@")).unwrap_or_default();
            format!("{plain}://{userinfo}{}:{port}{path}", write_host(host))
        };
        if kind == 1 {
            if fragment.is_some() || !path.is_empty() {
                return Err(UrlError(
                    "a redis-cluster:// URL is only [user:pass@]host:port[,host:port...] \
                     (a Cluster has no databases)",
                ));
            }
            let nodes: Vec<String> = nodes.iter().map(|n| with_credentials(n, "")).collect();
            for node in &nodes {
                node.as_str()
                    .into_connection_info()
                    .map_err(|_| UrlError("a Cluster node is not usable"))?;
            }
            return Ok(Self::Cluster { nodes, tls });
        }
        let master = fragment
            .filter(|m| !m.is_empty())
            .ok_or(UrlError(
                "a redis-sentinel:// URL ends with #master-name (the name the \
                 sentinels monitor)",
            ))?
            .to_owned();
        if !path.is_empty() && path.parse::<u32>().is_err() {
            return Err(UrlError("the /db of a Sentinel URL is not a number"));
        }
        let db = if path.is_empty() {
            String::new()
        } else {
            format!("/{path}")
        };
        let primary = with_credentials(&nodes[0], &db);
        primary
            .as_str()
            .into_connection_info()
            .map_err(|_| UrlError("not a usable redis-sentinel:// URL"))?;
        Ok(Self::Sentinel {
            sentinels: nodes,
            master,
            primary,
            tls,
        })
    }

    /// Whether the connections use TLS.
    pub fn tls(&self) -> bool {
        match self {
            Self::Standalone(url) => url.starts_with("rediss://"),
            Self::Cluster { tls, .. } | Self::Sentinel { tls, .. } => *tls,
        }
    }

    /// A name safe to log.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Standalone(_) => "redis",
            Self::Cluster { .. } => "redis-cluster",
            Self::Sentinel { .. } => "redis-sentinel",
        }
    }
}

/// What the store needs to open its connections.
pub struct LinkOptions {
    pub tcp: TcpSettings,
    pub certificates: Option<TlsCertificates>,
    /// Bound on dialling a node.
    pub connect_timeout: Duration,
}

/// Opens one connection (lazily: nothing is dialled until the first call,
/// so patd starts while Redis is down).
///
/// # Errors
/// The URL or the TLS material is unusable.
pub fn open(url: &RedisUrl, options: &LinkOptions) -> Result<Link, RedisError> {
    let manager_config = || {
        // Responses are bounded by the store's timer (one per call,
        // covering reconnects too), so the manager gets no response
        // timeout of its own.
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.connect_timeout))
            .set_response_timeout(None)
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500))
    };
    match url {
        RedisUrl::Standalone(url) => {
            let info = url
                .as_str()
                .into_connection_info()?
                .set_tcp_settings(options.tcp.clone());
            let client = match &options.certificates {
                None => Client::open(info)?,
                Some(certificates) => Client::build_with_tls(info, certificates.clone())?,
            };
            Ok(Link::Single(HealingConnection::new(
                Source::Fixed(client),
                manager_config(),
            )))
        }
        RedisUrl::Cluster { nodes, tls } => {
            let mut builder = ClusterClientBuilder::new(nodes.iter().map(String::as_str))
                .connection_timeout(options.connect_timeout)
                .tcp_settings(options.tcp.clone())
                // A failover or a reshard (TRYAGAIN while an account's
                // keys are split between two nodes) is waited out by
                // retrying, up to ~8 s; the store's timer
                // (PATD_REDIS_TIMEOUT) bounds the whole call first.
                .retries(20)
                .min_retry_wait(50)
                .max_retry_wait(500);
            if *tls {
                builder = builder.tls(TlsMode::Secure);
            }
            if let Some(certificates) = &options.certificates {
                builder = builder.certs(certificates.clone());
            }
            let client = builder.build()?;
            Ok(Link::Cluster(Box::new(
                client.get_pending_async_connection_with_config(
                    redis::cluster::ClusterConfig::new()
                        .set_connection_timeout(options.connect_timeout),
                ),
            )))
        }
        RedisUrl::Sentinel {
            sentinels,
            master,
            primary,
            tls,
        } => {
            let primary = primary.as_str().into_connection_info()?;
            let addrs = sentinels.iter().map(|(host, port)| {
                if *tls {
                    ConnectionAddr::TcpTls {
                        host: host.clone(),
                        port: *port,
                        insecure: false,
                        tls_params: None,
                    }
                } else {
                    ConnectionAddr::Tcp(host.clone(), *port)
                }
            });
            let mut builder =
                SentinelClientBuilder::new(addrs, master, SentinelServerType::Master)?
                    .set_client_to_redis_db(primary.redis_settings().db())
                    .set_client_to_redis_tcp_settings(options.tcp.clone())
                    .set_client_to_sentinel_tcp_settings(options.tcp.clone());
            if let Some(user) = primary.redis_settings().username() {
                builder = builder.set_client_to_redis_username(user);
            }
            if let Some(password) = primary.redis_settings().password() {
                builder = builder.set_client_to_redis_password(password);
            }
            if *tls {
                builder = builder
                    .set_client_to_redis_tls_mode(TlsMode::Secure)
                    .set_client_to_sentinel_tls_mode(TlsMode::Secure);
                if let Some(certificates) = &options.certificates {
                    builder = builder
                        .set_client_to_redis_certificates(certificates.clone())
                        .set_client_to_sentinel_certificates(certificates.clone());
                }
            }
            let sentinel = builder.build()?;
            Ok(Link::Single(HealingConnection::new(
                Source::Sentinel(tokio::sync::Mutex::new(sentinel)),
                manager_config(),
            )))
        }
    }
}

/// A client for the introspection cache's subscription to its
/// invalidations, or `None` where that cache could not keep its promise.
/// Its staleness bound rests on a `PING` answered on the subscription
/// proving that every invalidation published before it has arrived, which
/// holds only when the scripts `PUBLISH` on the node patd subscribes to:
/// one Redis. On a Cluster the scripts publish on their slot's node and
/// the message reaches the others over the cluster bus, later; behind
/// Sentinel the primary moves.
///
/// # Errors
/// The URL or the TLS material is unusable.
pub fn pubsub_client(url: &RedisUrl, options: &LinkOptions) -> Result<Option<Client>, RedisError> {
    let RedisUrl::Standalone(url) = url else {
        return Ok(None);
    };
    let info = url
        .as_str()
        .into_connection_info()?
        .set_tcp_settings(options.tcp.clone());
    Ok(Some(match &options.certificates {
        None => Client::open(info)?,
        Some(certificates) => Client::build_with_tls(info, certificates.clone())?,
    }))
}

/// Where a `HealingConnection` gets its client from.
enum Source {
    /// Always the same Redis.
    Fixed(Client),
    /// The primary the sentinels name at the time of asking.
    Sentinel(tokio::sync::Mutex<SentinelClient>),
}

struct Shared {
    source: Source,
    config: ConnectionManagerConfig,
    /// `None` until the first call, and after a failure that a new
    /// connection might not meet.
    current: ArcSwapOption<ConnectionManager>,
    /// One caller at a time makes the new manager.
    making: tokio::sync::Mutex<()>,
    dropped: Mutex<Instant>,
}

/// A `ConnectionLike` over a replaceable `ConnectionManager`. Cheap to
/// clone: clones share the connection.
#[derive(Clone)]
pub struct HealingConnection {
    shared: Arc<Shared>,
}

/// Whether `e` may mean this connection (not the command) is broken, or
/// points at a node that is no longer the primary, so that a new
/// connection could succeed where this one fails. Server answers about
/// the command (a script error, NOSCRIPT, which redis-rs answers by
/// loading the script, or OOM) are not.
fn worth_a_new_connection(e: &RedisError) -> bool {
    e.kind() == ErrorKind::AuthenticationFailed
        || e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.code(),
            Some("NOAUTH" | "WRONGPASS" | "NOPERM" | "READONLY" | "LOADING" | "MASTERDOWN")
        )
}

impl HealingConnection {
    fn new(source: Source, config: ConnectionManagerConfig) -> Self {
        Self {
            shared: Arc::new(Shared {
                source,
                config,
                current: ArcSwapOption::empty(),
                making: tokio::sync::Mutex::new(()),
                // The first failure may rebuild at once.
                dropped: Mutex::new(Instant::now() - REBUILD_AT_MOST_EVERY),
            }),
        }
    }

    /// The current manager, made (lazily: it dials on first use) if there
    /// is none; behind Sentinel, making one asks where the primary is.
    async fn manager(&self) -> Result<ConnectionManager, RedisError> {
        if let Some(current) = self.shared.current.load_full() {
            return Ok((*current).clone());
        }
        let _making = self.shared.making.lock().await;
        if let Some(current) = self.shared.current.load_full() {
            return Ok((*current).clone());
        }
        let client = match &self.shared.source {
            Source::Fixed(client) => client.clone(),
            Source::Sentinel(sentinel) => sentinel.lock().await.async_get_client().await?,
        };
        let manager = ConnectionManager::new_lazy_with_config(client, self.shared.config.clone())?;
        self.shared.current.store(Some(Arc::new(manager.clone())));
        Ok(manager)
    }

    /// Drops the manager after a failure that a new connection might not
    /// meet, so the next call makes a fresh one; calls already under way
    /// keep the old one.
    fn failed(&self, e: &RedisError) {
        if worth_a_new_connection(e) {
            self.drop_connection(e);
        }
    }

    /// Forgets the current connection (at most once a second).
    pub fn drop_connection(&self, why: &dyn std::fmt::Display) {
        let mut dropped = self
            .shared
            .dropped
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if dropped.elapsed() < REBUILD_AT_MOST_EVERY {
            return;
        }
        *dropped = Instant::now();
        if self.shared.current.swap(None).is_some() {
            tracing::debug!(error = %why, "replacing the Redis connection after a failure");
        }
    }

    async fn call<T>(
        &self,
        run: impl AsyncFnOnce(&mut ConnectionManager) -> Result<T, RedisError>,
    ) -> Result<T, RedisError> {
        let result = match self.manager().await {
            Ok(mut manager) => run(&mut manager).await,
            Err(e) => Err(e),
        };
        self.after(result)
    }

    /// Passes a call's result on, first dropping the manager when it
    /// failed in a way a new connection might not.
    fn after<T>(&self, result: Result<T, RedisError>) -> Result<T, RedisError> {
        if let Err(e) = &result {
            self.failed(e);
        }
        result
    }
}

impl ConnectionLike for HealingConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        // The usual case, a manager in place, skips `manager()`: its future
        // (which may wait for the sentinels) would make every call's boxed
        // future as large as that slow path.
        if let Some(current) = self.shared.current.load_full() {
            let mut manager = (*current).clone();
            return async move { self.after(manager.req_packed_command(cmd).await) }.boxed();
        }
        async move { self.call(async |m| m.req_packed_command(cmd).await).await }.boxed()
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        if let Some(current) = self.shared.current.load_full() {
            let mut manager = (*current).clone();
            return async move {
                self.after(manager.req_packed_commands(pipeline, offset, count).await)
            }
            .boxed();
        }
        async move {
            self.call(async |m| m.req_packed_commands(pipeline, offset, count).await)
                .await
        }
        .boxed()
    }

    fn get_db(&self) -> i64 {
        self.shared
            .current
            .load_full()
            .map_or(0, |manager| manager.get_db())
    }
}

/// The connection the store talks through: one Redis (or the Sentinel
/// primary), or a whole Cluster. Cheap to clone: clones share it.
#[derive(Clone)]
pub enum Link {
    Single(HealingConnection),
    Cluster(Box<ClusterConnection>),
}

impl Link {
    /// Runs `cmd` on the primary owning `key`'s slot: where a command
    /// without a key of its own (SCAN for an account's keys) must run in a
    /// Cluster. On one Redis, simply runs it.
    ///
    /// # Errors
    /// Redis's, or the connection's.
    pub async fn on_owner_of(&mut self, key: &str, cmd: &Cmd) -> Result<Value, RedisError> {
        match self {
            Self::Single(conn) => conn.req_packed_command(cmd).await?.extract_error(),
            Self::Cluster(cluster) => {
                let route = Route::with_key(key, SlotAddr::Master);
                cluster
                    .route_command(
                        cmd.clone(),
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                    )
                    .await?
                    .extract_error()
            }
        }
    }

    /// Runs `cmd` on every primary of a Cluster (on one Redis, on it) and
    /// returns each answer; an error from any node is the error.
    ///
    /// # Errors
    /// The first node that failed.
    pub async fn on_every_primary(&mut self, cmd: &Cmd) -> Result<Vec<Value>, RedisError> {
        match self {
            Self::Single(conn) => Ok(vec![conn.req_packed_command(cmd).await?.extract_error()?]),
            Self::Cluster(cluster) => {
                let answers = cluster
                    .route_command(
                        cmd.clone(),
                        RoutingInfo::MultiNode((
                            MultipleNodeRoutingInfo::AllMasters,
                            Some(ResponsePolicy::Special),
                        )),
                    )
                    .await?;
                let pairs = match answers.extract_error()? {
                    Value::Map(pairs) => pairs,
                    other => return Ok(vec![other]),
                };
                pairs
                    .into_iter()
                    .map(|(_node, answer)| answer.extract_error())
                    .collect()
            }
        }
    }

    /// Forgets a connection that reached a replica (a demoted primary
    /// behind Sentinel), so the next call asks again; a Cluster finds its
    /// primaries by itself.
    pub fn reached_a_replica(&self) {
        if let Self::Single(conn) = self {
            conn.drop_connection(&"Redis answered as a replica");
        }
    }

    /// Whether this is a Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(conn) => conn.req_packed_command(cmd),
            Self::Cluster(cluster) => cluster.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Self::Cluster(cluster) => cluster.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(conn) => conn.get_db(),
            Self::Cluster(cluster) => cluster.get_db(),
        }
    }
}

/// A connection that follows every script call (`EVALSHA`/`EVAL`) with
/// `WAIT replicas timeout` in one pipeline: on the same connection (WAIT
/// counts replicas that acknowledged *this client's* writes) and, in a
/// Cluster, on the node that ran the script (a pipeline goes to its first
/// key's slot owner, and is redirected whole). Fewer acknowledgements
/// than asked fail the call, which the store reports as UNAVAILABLE.
/// Anything else (the `SCRIPT LOAD` after NOSCRIPT) passes through.
pub struct Acked<'a> {
    pub link: &'a mut Link,
    pub replicas: u32,
    pub timeout: Duration,
}

/// The error of a write that fewer than the wanted replicas acknowledged.
pub const NOT_REPLICATED: &str = "NOTREPLICATED";

impl ConnectionLike for Acked<'_> {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let is_script = cmd.args_iter().next().is_some_and(|arg| {
            matches!(arg, redis::Arg::Simple(name)
                if name.eq_ignore_ascii_case(b"EVALSHA") || name.eq_ignore_ascii_case(b"EVAL"))
        });
        if !is_script {
            return self.link.req_packed_command(cmd);
        }
        async move {
            let mut pipe = redis::pipe();
            pipe.add_command(cmd.clone())
                .cmd("WAIT")
                .arg(self.replicas)
                .arg(
                    u64::try_from(self.timeout.as_millis())
                        .unwrap_or(u64::MAX)
                        .max(1),
                );
            let (value, acked): (Value, i64) = pipe.query_async(self.link).await?;
            if acked < i64::from(self.replicas) {
                return Err(RedisError::from((
                    ErrorKind::Server(redis::ServerErrorKind::ResponseError),
                    NOT_REPLICATED,
                    format!(
                        "{acked} of the {} replicas asked for (PATD_REDIS_MIN_REPLICAS_ACK) \
                         acknowledged the write in time",
                        self.replicas
                    ),
                )));
            }
            Ok(value)
        }
        .boxed()
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        self.link.req_packed_commands(pipeline, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.link.get_db()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_kinds_of_url_parse() {
        assert!(matches!(
            RedisUrl::parse("redis://127.0.0.1:6379/0"),
            Ok(RedisUrl::Standalone(_))
        ));
        let Ok(RedisUrl::Cluster { nodes, tls }) =
            RedisUrl::parse("rediss-cluster://u:p%40ss@10.0.0.1:7000,[::1]:7001")
        else {
            panic!("not a cluster URL");
        };
        assert!(tls);
        assert_eq!(
            nodes,
            [
                "rediss://u:p%40ss@10.0.0.1:7000",
                "rediss://u:p%40ss@[::1]:7001"
            ]
        );
        let Ok(RedisUrl::Sentinel {
            sentinels,
            master,
            primary,
            tls,
        }) = RedisUrl::parse("redis-sentinel://:pw@h1:26379,h2:26380/2#mymaster")
        else {
            panic!("not a sentinel URL");
        };
        assert!(!tls);
        assert_eq!(master, "mymaster");
        assert_eq!(sentinels, [("h1".into(), 26379), ("h2".into(), 26380)]);
        let info = primary.as_str().into_connection_info().unwrap();
        assert_eq!(info.redis_settings().db(), 2);
        assert_eq!(info.redis_settings().password(), Some("pw"));
    }

    #[test]
    fn bad_urls_say_why_without_showing_the_password() {
        for bad in [
            "http://u:secret@h:1",
            "redis-cluster://u:secret@h",
            "redis-cluster://u:secret@h:0",
            "redis-cluster://u:secret@h:1/0",
            "redis-sentinel://u:secret@h:1",
            "redis-sentinel://u:secret@h:1/x#m",
            "rediss-sentinel://u:secret@h:1#insecure",
            "rediss://u:secret@h:1/#insecure",
            "redis-cluster://u:secret@:1",
        ] {
            let e = RedisUrl::parse(bad).unwrap_err().to_string();
            assert!(e.starts_with("PATD_STORE"), "{bad}: {e}");
            assert!(!e.contains("secret"), "{bad}: {e}");
        }
    }
}
