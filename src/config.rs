//! Configuration: command-line flags, each with a `PATD_*` environment
//! variable fallback. Everything is checked before anything starts, so a bad
//! setting stops patd with a one-line reason instead of a half-working
//! service.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use axum::http;
use clap::Parser;
use thiserror::Error;

use crate::auth::Callers;
use crate::domain::LifetimePolicy;
use crate::tls::TlsFiles;
use crate::token::{TokenFormat, TokenHasher};

/// Where tokens live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKind {
    /// In-process; tokens are lost on restart. For development and a single
    /// instance.
    Memory,
    /// A `redis://` or `rediss://` URL.
    Redis(String),
}

impl FromStr for StoreKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "memory" {
            Ok(Self::Memory)
        } else if s.starts_with("redis://") || s.starts_with("rediss://") {
            Ok(Self::Redis(s.to_owned()))
        } else {
            Err("expected `memory` or a redis:// or rediss:// URL".to_owned())
        }
    }
}

impl StoreKind {
    /// A name safe to log (no URL, which may hold a password).
    pub fn name(&self) -> &'static str {
        match self {
            StoreKind::Memory => "memory",
            StoreKind::Redis(_) => "redis",
        }
    }
}

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

    /// `memory`, or a redis:// / rediss:// URL.
    #[arg(long, env = "PATD_STORE", default_value = "memory")]
    pub store: StoreKind,

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

    /// Bound on every Redis call; past it the call fails as UNAVAILABLE.
    #[arg(long, env = "PATD_REDIS_TIMEOUT", default_value = "1s")]
    pub redis_timeout: humantime::Duration,

    /// Bound on every request, end to end.
    #[arg(long, env = "PATD_REQUEST_TIMEOUT", default_value = "5s")]
    pub request_timeout: humantime::Duration,

    /// Largest gRPC request message accepted, in bytes.
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

    /// Serve a non-loopback address without caller authentication anyway.
    #[arg(long, env = "PATD_ALLOW_UNAUTHENTICATED", action = clap::ArgAction::SetTrue)]
    pub allow_unauthenticated: bool,

    /// Digest keys, `id:base64key,...` (first = current; each at least 32
    /// bytes): tokens are stored as HMAC-SHA256 under them. Removing a key
    /// revokes every token made with it.
    #[arg(
        long,
        env = "PATD_TOKEN_HASH_KEYS",
        hide_env_values = true,
        default_value = ""
    )]
    pub token_hash_keys: String,

    /// Requests served at once per listener; beyond it new requests are
    /// refused at once (RESOURCE_EXHAUSTED / HTTP 503) instead of queueing.
    #[arg(long, env = "PATD_MAX_CONCURRENT_REQUESTS", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_concurrent_requests: u32,

    /// HTTP/2 streams one connection may have open at once.
    #[arg(long, env = "PATD_HTTP2_MAX_CONCURRENT_STREAMS", default_value_t = 256,
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
        roles: Vec<crate::auth::Role>,
    },
}

/// A setting that parsed but makes no sense.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("PATD_TOKEN_PREFIX: {0}")]
    TokenPrefix(#[from] crate::token::PrefixError),
    #[error("PATD_KEY_PREFIX must be 1..=64 characters without spaces or braces")]
    KeyPrefix,
    #[error("PATD_DEFAULT_TTL must be positive and at most PATD_MAX_TTL")]
    DefaultTtl,
    #[error("PATD_REDIS_TIMEOUT and PATD_REQUEST_TIMEOUT must be positive")]
    Timeout,
    #[error("PATD_TOKEN_HASH_KEYS: {0}")]
    HashKeys(#[from] crate::token::HashKeyError),
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("PATD_CALLERS_FILE names cert_san callers, but PATD_TLS_CLIENT_CA is not set")]
    CertCallersWithoutCa,
    #[error("PATD_CALLERS_FILE: {0}")]
    Callers(#[from] crate::auth::CallersError),
    #[error(
        "refusing to serve {0} without caller authentication: set PATD_CALLERS_FILE, \
         listen on loopback, or set PATD_ALLOW_UNAUTHENTICATED=true"
    )]
    Exposed(SocketAddr),
}

impl Config {
    /// The token format this configuration asks for.
    ///
    /// # Errors
    /// The token prefix is unusable.
    pub fn token_format(&self) -> Result<TokenFormat, ConfigError> {
        Ok(TokenFormat::new(&self.token_prefix)?)
    }

    /// # Errors
    /// A malformed `PATD_TOKEN_HASH_KEYS`.
    pub fn token_hasher(&self) -> Result<TokenHasher, ConfigError> {
        Ok(TokenHasher::from_setting(&self.token_hash_keys)?)
    }

    /// The callers file, loaded; empty when none is configured.
    ///
    /// # Errors
    /// An unreadable or malformed file.
    pub fn callers(&self) -> Result<Callers, ConfigError> {
        match &self.callers_file {
            Some(path) => Ok(Callers::load(path)?),
            None => Ok(Callers::default()),
        }
    }

    /// The TLS files, when TLS is on.
    pub fn tls_files(&self) -> Option<TlsFiles> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.tls_client_ca.clone(),
            }),
            _ => None,
        }
    }

    /// Listeners bound beyond loopback.
    pub fn exposed_addrs(&self) -> Vec<SocketAddr> {
        [self.grpc_addr, self.http_addr]
            .into_iter()
            .filter(|a| !a.ip().is_loopback())
            .collect()
    }

    pub fn lifetime(&self) -> LifetimePolicy {
        LifetimePolicy {
            default_ttl: *self.default_ttl,
            max_ttl: *self.max_ttl,
        }
    }

    /// Checks what the types alone cannot.
    ///
    /// # Errors
    /// The first setting that makes no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.token_format()?;
        self.token_hasher()?;
        let key_ok = !self.key_prefix.is_empty()
            && self.key_prefix.len() <= 64
            && !self
                .key_prefix
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '{' || c == '}');
        if !key_ok {
            return Err(ConfigError::KeyPrefix);
        }
        if self.default_ttl.is_zero() || *self.default_ttl > *self.max_ttl {
            return Err(ConfigError::DefaultTtl);
        }
        if self.redis_timeout.is_zero() || self.request_timeout.is_zero() {
            return Err(ConfigError::Timeout);
        }
        // Secure by default, like Redis's protected mode: open to anyone
        // only where only this machine can reach it.
        let exposed = self.exposed_addrs();
        if let (None, false, Some(addr)) = (
            &self.callers_file,
            self.allow_unauthenticated,
            exposed.first(),
        ) {
            return Err(ConfigError::Exposed(*addr));
        }
        Ok(())
    }

    pub fn redis_timeout(&self) -> Duration {
        *self.redis_timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_public_address_needs_callers_or_an_explicit_opt_out() {
        let exposed = parse(&["--grpc-addr", "0.0.0.0:50051"]).unwrap();
        assert!(matches!(exposed.validate(), Err(ConfigError::Exposed(_))));
        let http = parse(&["--http-addr", "10.1.2.3:8080"]).unwrap();
        assert!(matches!(http.validate(), Err(ConfigError::Exposed(_))));
        let opted_out =
            parse(&["--grpc-addr", "0.0.0.0:50051", "--allow-unauthenticated"]).unwrap();
        assert!(opted_out.validate().is_ok());
        let v6_loopback = parse(&["--grpc-addr", "[::1]:50051"]).unwrap();
        assert!(v6_loopback.validate().is_ok());
    }

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Config::try_parse_from(std::iter::once("patd").chain(args.iter().copied()))
    }

    #[test]
    fn the_defaults_are_loopback_memory_and_fifty_tokens() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.grpc_addr.to_string(), "127.0.0.1:50051");
        assert_eq!(c.http_addr.to_string(), "127.0.0.1:8080");
        assert!(c.forward_auth_token_header.is_none());
        assert_eq!(c.store, StoreKind::Memory);
        assert_eq!(c.max_tokens_per_account, 50);
        assert_eq!(*c.default_ttl, Duration::from_secs(30 * 86_400));
        assert_eq!(*c.max_ttl, Duration::from_secs(365 * 86_400));
        c.validate().unwrap();
    }

    #[test]
    fn stores_are_memory_or_redis_urls() {
        assert!(parse(&["--store", "redis://127.0.0.1:6379/0"]).is_ok());
        assert!(parse(&["--store", "rediss://h:6380"]).is_ok());
        assert!(parse(&["--store", "postgres://x"]).is_err());
    }

    #[test]
    fn nonsense_settings_are_refused() {
        let bad = |args: &[&str]| parse(args).map(|c| c.validate().is_err()).unwrap_or(true);
        assert!(bad(&["--default-ttl", "400d"]));
        assert!(bad(&["--default-ttl", "0s"]));
        assert!(bad(&["--token-prefix", "Bad_"]));
        assert!(bad(&["--key-prefix", "a b"]));
        assert!(bad(&["--key-prefix", "{x}"]));
        assert!(bad(&["--max-tokens-per-account", "0"]));
        assert!(bad(&["--max-ttl", "soon"]));
        assert!(bad(&["--forward-auth-token-header", "bad header"]));
        assert!(!bad(&["--forward-auth-token-header", "X-API-Key"]));
        assert!(!bad(&["--token-prefix", "acme"]));
        assert!(bad(&["--token-hash-keys", "k1:short"]));
        assert!(bad(&["--max-concurrent-requests", "0"]));
    }
}
