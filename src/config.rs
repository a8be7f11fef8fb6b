//! The command line: flags, each with a `PATD_*` environment variable
//! fallback, as clap parses them (this is also `--help` and the README's
//! settings table). Nothing here is checked beyond its type: `settings`
//! turns a `Config` into the typed `Settings` the rest of patd takes.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{CommandFactory as _, FromArgMatches as _, Parser};
use secrecy::SecretString;
use thiserror::Error;

use crate::auth::Role;

/// patd: personal access tokens over gRPC.
#[derive(Debug, Clone, Parser)]
#[command(name = "patd", version, about)]
pub struct Config {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Address of the gRPC listener (TokenService, health, reflection).
    #[arg(long, env = "PATD_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    pub grpc_addr: SocketAddr,

    /// Address of the HTTP listener (forward-auth, /healthz, /readyz).
    #[arg(long, env = "PATD_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,

    /// An extra request header that may carry the raw token for
    /// forward-auth (e.g. `X-API-Key`), tried when there is no
    /// `Authorization: Bearer`.
    #[arg(long, env = "PATD_FORWARD_AUTH_TOKEN_HEADER")]
    pub forward_auth_token_header: Option<http::HeaderName>,

    /// How long a gateway may cache a forward-auth allow (`private,
    /// max-age`, never beyond the token's expiry); 0s sends `no-store`.
    #[arg(long, env = "PATD_FORWARD_AUTH_MAX_AGE", default_value = "0s")]
    pub forward_auth_max_age: humantime::Duration,

    /// `memory`; `redis://[user:pass@]host:port[/db]` (one Redis);
    /// `redis-cluster://[user:pass@]host:port[,host:port...]` (Redis
    /// Cluster seed nodes); or
    /// `redis-sentinel://[user:pass@]host:port[,host:port...][/db]#master-name`
    /// (the sentinels watching the primary). `rediss`... for TLS. Kept
    /// secret (it may hold a password): never shown in `--help`, an error
    /// or a log line.
    #[arg(
        long,
        env = "PATD_STORE",
        default_value = "memory",
        hide_env_values = true,
        value_parser = secret
    )]
    pub store: SecretString,

    /// Whether `--store`/`PATD_STORE` was given, rather than defaulted.
    #[arg(skip)]
    pub store_given: bool,

    /// PEM CA certificate(s) that Redis's TLS certificate must chain to
    /// (a private CA), instead of the public web roots; needs a TLS
    /// PATD_STORE (rediss://, rediss-cluster:// or rediss-sentinel://).
    #[arg(long, env = "PATD_REDIS_CA")]
    pub redis_ca: Option<PathBuf>,

    /// PEM client certificate for Redis's `tls-auth-clients`; needs
    /// PATD_REDIS_CLIENT_KEY and a TLS (rediss...) PATD_STORE.
    #[arg(long, env = "PATD_REDIS_CLIENT_CERT", requires = "redis_client_key")]
    pub redis_client_cert: Option<PathBuf>,

    /// PEM private key of PATD_REDIS_CLIENT_CERT.
    #[arg(long, env = "PATD_REDIS_CLIENT_KEY", requires = "redis_client_cert")]
    pub redis_client_key: Option<PathBuf>,

    /// Prefix of every Redis key.
    #[arg(long, env = "PATD_KEY_PREFIX", default_value = "patd")]
    pub key_prefix: String,

    /// Type marker at the start of every token (lowercase letters and
    /// digits), so secret scanners can find leaked tokens.
    #[arg(long, env = "PATD_TOKEN_PREFIX", default_value = "pat")]
    pub token_prefix: String,

    /// Most live tokens one account may hold.
    #[arg(long, env = "PATD_MAX_TOKENS_PER_ACCOUNT", default_value_t = 50,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_tokens_per_account: u32,

    /// Lifetime of a token issued without ttl or expires_at.
    #[arg(long, env = "PATD_DEFAULT_TTL", default_value = "30d")]
    pub default_ttl: humantime::Duration,

    /// Longest lifetime a token may be issued with.
    #[arg(long, env = "PATD_MAX_TTL", default_value = "365d")]
    pub max_ttl: humantime::Duration,

    /// Most audit events kept per account (the oldest go first).
    #[arg(long, env = "PATD_AUDIT_MAX_EVENTS", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub audit_max_events: u32,

    /// How long audit events are kept (on the store's clock); an account's
    /// trail vanishes this long after its last event.
    #[arg(long, env = "PATD_AUDIT_RETENTION", default_value = "90d")]
    pub audit_retention: humantime::Duration,

    /// How long what is kept of an ended token (its digest and times, for
    /// Introspect's reason and List's ended tokens) outlives its end.
    #[arg(long, env = "PATD_TOMBSTONE_TTL", default_value = "30d")]
    pub tombstone_ttl: humantime::Duration,

    /// Longest grace window a Rotate may give the old token.
    #[arg(long, env = "PATD_MAX_ROTATION_GRACE", default_value = "7d")]
    pub max_rotation_grace: humantime::Duration,

    /// Bound on every Redis call; past it the call fails as UNAVAILABLE.
    #[arg(long, env = "PATD_REDIS_TIMEOUT", default_value = "1s")]
    pub redis_timeout: humantime::Duration,

    /// Replicas that must acknowledge every write (Redis `WAIT`, within
    /// PATD_REDIS_TIMEOUT) before patd answers it; fewer: UNAVAILABLE. 0
    /// asks none.
    #[arg(long, env = "PATD_REDIS_MIN_REPLICAS_ACK", default_value_t = 0,
          value_parser = clap::value_parser!(u32).range(0..=16))]
    pub redis_min_replicas_ack: u32,

    /// Longest time the Redis store's introspection cache keeps a token
    /// record without hearing of any change to it.
    #[arg(long, env = "PATD_CACHE_TTL", default_value = "30s")]
    pub cache_ttl: humantime::Duration,

    /// Most token records the Redis store's introspection cache holds;
    /// 0 turns the cache off.
    #[arg(long, env = "PATD_CACHE_MAX_ENTRIES", default_value_t = 100_000)]
    pub cache_max_entries: u64,

    /// Bound on every request, end to end.
    #[arg(long, env = "PATD_REQUEST_TIMEOUT", default_value = "5s")]
    pub request_timeout: humantime::Duration,

    /// Largest gRPC request message, and JSON or form request body,
    /// accepted, in bytes.
    #[arg(long, env = "PATD_MAX_REQUEST_BYTES", default_value_t = 65_536,
          value_parser = clap::value_parser!(u32).range(1024..=4_194_304))]
    pub max_request_bytes: u32,

    /// TOML file of callers allowed to use patd (`[[caller]] name, roles,
    /// key_sha256 | cert_san`). Without it, patd only listens on loopback.
    #[arg(long, env = "PATD_CALLERS_FILE")]
    pub callers_file: Option<PathBuf>,

    /// PEM certificate chain: serve both listeners over TLS.
    #[arg(long, env = "PATD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of `PATD_TLS_CERT`.
    #[arg(long, env = "PATD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificate(s) for client certificates (mutual TLS); callers
    /// may then be identified by `cert_san` instead of a key.
    #[arg(long, env = "PATD_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Serve a non-loopback address without caller authentication anyway
    /// (`true`/`false`; also `yes`/`no`, `on`/`off`, `1`/`0`).
    #[arg(
        long,
        env = "PATD_ALLOW_UNAUTHENTICATED",
        num_args = 0..=1,
        default_value = "false",
        default_missing_value = "true",
        value_parser = boolean
    )]
    pub allow_unauthenticated: bool,

    /// Allow core dumps. Off by default: patd sets its core-file limit to 0
    /// at start, since a crash would write the digest keys, the Redis
    /// password and fresh tokens to disk.
    #[arg(
        long,
        env = "PATD_ALLOW_CORE_DUMPS",
        num_args = 0..=1,
        default_value = "false",
        default_missing_value = "true",
        value_parser = boolean
    )]
    pub allow_core_dumps: bool,

    /// Digest keys, `id:base64key,...` (first = current; each at least 32
    /// bytes): tokens are stored as HMAC-SHA256 under them. Removing a key
    /// revokes every token made with it.
    #[arg(
        long,
        env = "PATD_TOKEN_HASH_KEYS",
        hide_env_values = true,
        hide_default_value = true,
        default_value = "",
        value_parser = secret
    )]
    pub token_hash_keys: SecretString,

    /// With digest keys, also accept token records that carry no seal at
    /// all (issued before seals existed), for an upgrade; a wrong seal is
    /// refused regardless. Turn it off once every unsealed token has
    /// expired or been rotated (`true`/`false`).
    #[arg(
        long,
        env = "PATD_ACCEPT_UNSEALED",
        num_args = 0..=1,
        default_value = "false",
        default_missing_value = "true",
        value_parser = boolean
    )]
    pub accept_unsealed: bool,

    /// Requests served at once per listener; beyond it new requests are
    /// refused at once (RESOURCE_EXHAUSTED / HTTP 503) instead of queueing.
    #[arg(long, env = "PATD_MAX_CONCURRENT_REQUESTS", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_concurrent_requests: u32,

    /// Connections one listener holds at once; beyond it a new connection
    /// is closed at once. Lowered at start to fit the file-descriptor limit
    /// (patd raises its soft limit to the hard one first).
    #[arg(long, env = "PATD_MAX_CONNECTIONS", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,

    /// Connections one IP address may hold on one listener.
    #[arg(long, env = "PATD_MAX_CONNECTIONS_PER_PEER", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections_per_peer: u32,

    /// Token-service requests one client connection may have in flight at
    /// once (its share of PATD_MAX_CONCURRENT_REQUESTS), so a few
    /// connections cannot take every slot.
    #[arg(long, env = "PATD_MAX_REQUESTS_PER_CONNECTION", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_requests_per_connection: u32,

    /// Requests (HTTP/2 streams, HTTP/1.1 requests) both listeners hold at
    /// once, each from its headers until its answer's last frame has been
    /// handed to the connection; beyond it a request is refused at once
    /// (RESOURCE_EXHAUSTED / HTTP 503). Bounds the memory requests can
    /// hold.
    #[arg(long, env = "PATD_MAX_STREAMS", default_value_t = 4096,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_streams: u32,

    /// Of PATD_MAX_STREAMS, the requests the open services may hold at
    /// once: those that need no caller key (gRPC health and reflection,
    /// unknown gRPC methods, `/healthz`, `/readyz`, `/metrics`,
    /// `/v1/openapi.json`, unknown paths). Long-lived streams (health
    /// Watch, reflection) may take half of them (at least one).
    #[arg(long, env = "PATD_MAX_OPEN_SERVICE_STREAMS", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_open_service_streams: u32,

    /// How long an answer may wait for the peer to read it, then its
    /// connection is closed (positive, at most 1 h): starved of HTTP/2 flow-control
    /// window (added up over the answer's life), or the transport taking
    /// no byte.
    #[arg(long, env = "PATD_SEND_TIMEOUT", default_value = "10s")]
    pub send_timeout: humantime::Duration,

    /// HTTP/2 streams one connection may have open at once.
    #[arg(long, env = "PATD_HTTP2_MAX_CONCURRENT_STREAMS", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub http2_max_concurrent_streams: u32,

    /// Interval of HTTP/2 keepalive pings (dead peers are dropped after 20 s
    /// without an answer).
    #[arg(long, env = "PATD_HTTP2_KEEPALIVE", default_value = "30s")]
    pub http2_keepalive: humantime::Duration,

    /// Once both listeners are bound, write their addresses here as JSON
    /// (`{"grpc_addr":"127.0.0.1:50051","http_addr":"127.0.0.1:8080"}`),
    /// for scripts and tests that start patd on port 0. Written atomically
    /// (a temporary file renamed into place).
    #[arg(long, env = "PATD_READY_FILE")]
    pub ready_file: Option<PathBuf>,

    /// Log lines as text, or as one JSON object per line for log
    /// pipelines. Levels come from `RUST_LOG` (default `info`).
    #[arg(long, env = "PATD_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: crate::telemetry::LogFormat,

    /// Serve Prometheus metrics at `GET /metrics` on the HTTP listener
    /// (`true`/`false`). OTLP export is configured by the standard
    /// `OTEL_*` variables instead.
    #[arg(
        long,
        env = "PATD_METRICS",
        num_args = 0..=1,
        default_value = "true",
        default_missing_value = "true",
        value_parser = boolean
    )]
    pub metrics: bool,

    /// On SIGTERM, how long health reports NOT_SERVING before the listeners
    /// stop accepting (lets load balancers drain).
    #[arg(long, env = "PATD_SHUTDOWN_GRACE", default_value = "0s")]
    pub shutdown_grace: humantime::Duration,
}

/// One-off commands instead of serving.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Generate a caller key: prints the key (give it to the caller) and
    /// the `[[caller]]` entry for PATD_CALLERS_FILE (only its digest).
    CallerKey {
        /// Name of the caller, shown in logs.
        #[arg(long)]
        name: String,
        /// Roles to grant, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        roles: Vec<Role>,
    },
}

/// A boolean in any of the usual spellings (case-insensitive).
fn boolean(value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => Err("expected true or false (also yes/no, on/off, 1/0)".to_owned()),
    }
}

/// A flag value that must never be printed, kept as a secret from the
/// moment it is parsed.
fn secret(value: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(value))
}

/// Why the command line or the environment cannot be used.
#[derive(Debug, Error)]
pub enum LoadError {
    /// clap's own message, whole (what is wrong, the usage, the hint).
    #[error("{}", .0.render().to_string().trim_end().trim_start_matches("error: "))]
    Cli(#[from] clap::Error),
    /// A `PATD_*` variable patd does not know: most likely a typo that would
    /// silently leave a setting at its default.
    #[error("unknown variable {name}{}", suggestion(.closest.as_deref()))]
    UnknownVariable {
        name: String,
        closest: Option<String>,
    },
}

fn suggestion(closest: Option<&str>) -> String {
    closest
        .map(|c| format!(" (did you mean {c}?)"))
        .unwrap_or_else(|| ": see `patd --help` for the settings".to_owned())
}

/// Every `PATD_*` variable patd reads, sorted.
pub fn known_variables() -> Vec<String> {
    let mut names: Vec<String> = Config::command()
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|name| name.to_string_lossy().into_owned())
        .collect();
    names.sort_unstable();
    names
}

/// `PATD_*` variables the shipped gateway recipes read (not patd): an
/// environment shared with a gateway may hold them.
const GATEWAY_VARIABLES: [&str; 1] = ["PATD_CALLER_KEY"];

/// Whether `name` has the shape of a variable Kubernetes sets for a
/// Service (`<SVC>_SERVICE_HOST`, `<SVC>_SERVICE_PORT[_<PORT>]`,
/// `<SVC>_PORT[_<n>_<PROTO>[_PROTO|_PORT|_ADDR]]`): a Service named `patd`
/// or `patd-redis` puts such `PATD_*` names in every pod of its namespace.
fn is_service_link(name: &str) -> bool {
    if name.ends_with("_SERVICE_HOST") || name.contains("_SERVICE_PORT") {
        return true;
    }
    let Some((_, tail)) = name.rsplit_once("_PORT") else {
        return false;
    };
    // `_PORT` alone, or `_PORT_<n>_<PROTO>` with an optional last part.
    let mut parts = tail.split('_').skip(1);
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (None, ..) => tail.is_empty(),
        (Some(n), Some(proto), last, None) => {
            n.bytes().all(|b| b.is_ascii_digit())
                && !n.is_empty()
                && matches!(proto, "TCP" | "UDP" | "SCTP")
                && last.is_none_or(|l| matches!(l, "PROTO" | "PORT" | "ADDR"))
        }
        _ => false,
    }
}

/// Refuses an environment holding a `PATD_*` variable patd does not know,
/// naming the closest known one.
///
/// # Errors
/// The first unknown variable.
pub fn check_variables(
    vars: impl IntoIterator<Item = (OsString, OsString)>,
) -> Result<(), LoadError> {
    let known = known_variables();
    for (name, _) in vars {
        let name = name.to_string_lossy();
        if !name.starts_with("PATD_")
            || known.iter().any(|k| *k == name)
            || GATEWAY_VARIABLES.contains(&name.as_ref())
            || is_service_link(&name)
        {
            continue;
        }
        let closest = known
            .iter()
            .map(|k| (strsim::damerau_levenshtein(k, &name), k))
            .filter(|(distance, _)| *distance <= 3)
            .min()
            .map(|(_, k)| k.clone());
        return Err(LoadError::UnknownVariable {
            name: name.into_owned(),
            closest,
        });
    }
    Ok(())
}

impl Config {
    /// Parses `args` (the command line, with the program name first) and
    /// the process environment, refusing unknown `PATD_*` variables.
    ///
    /// # Errors
    /// A flag or variable clap refuses, with clap's whole message (help and
    /// version requests come back as `LoadError::Cli` too), or an unknown
    /// `PATD_*` variable.
    pub fn load<I, T>(args: I) -> Result<Self, LoadError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let matches = Config::command().try_get_matches_from(args)?;
        let mut config = Config::from_arg_matches(&matches)?;
        config.store_given = !matches!(
            matches.value_source("store"),
            None | Some(ValueSource::DefaultValue)
        );
        if config.command.is_none() {
            check_variables(std::env::vars_os())?;
        }
        Ok(config)
    }
}
