//! Typed settings, parsed once at start from the command line (`Config`):
//! every rule about what makes sense lives here, so a bad setting stops
//! patd with a one-line reason before anything starts, and nothing later
//! re-parses a string. Secrets (digest keys, the Redis URL's password) stay
//! wrapped: `Debug` shows neither.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret as _;
use thiserror::Error;

use crate::audit::AuditPolicy;
use crate::auth::{Callers, CallersError};
use crate::config::Config;
use crate::domain::LifetimePolicy;
use crate::forward_auth::ForwardAuth;
use crate::listener::Limits;
use crate::service::Rules;
use crate::store::RedisTls;
use crate::store::cache::CacheSettings;
use crate::store::connection::{RedisUrl, UrlError};
use crate::telemetry::LogFormat;
use crate::tls::{TlsConfig, TlsError, TlsFiles};
use crate::token::{HashKeyError, PrefixError, TokenFormat, TokenHasher};

/// A setting that parsed but makes no sense. Names the variable; never
/// shows a secret.
#[derive(Debug, Error)]
pub enum SettingsError {
    #[error("{0}")]
    Store(#[from] UrlError),
    #[error(
        "refusing to serve {0} on the embedded memory store, whose tokens vanish on restart \
         and are not shared between instances: set PATD_STORE to a redis:// URL, or \
         PATD_STORE=memory to mean it"
    )]
    MemoryExposed(SocketAddr),
    #[error(
        "PATD_REDIS_CA and PATD_REDIS_CLIENT_CERT need a TLS PATD_STORE (rediss://, \
         rediss-cluster:// or rediss-sentinel://); without TLS they would never be used"
    )]
    RedisTlsWithoutTls,
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("PATD_TOKEN_PREFIX: {0}")]
    TokenPrefix(#[from] PrefixError),
    #[error("PATD_KEY_PREFIX must be 1..=64 characters without spaces or braces")]
    KeyPrefix,
    #[error("PATD_DEFAULT_TTL must be positive and at most PATD_MAX_TTL")]
    DefaultTtl,
    #[error("PATD_REDIS_TIMEOUT and PATD_REQUEST_TIMEOUT must be positive")]
    Timeout,
    #[error("PATD_SEND_TIMEOUT must be positive and at most 1h")]
    SendTimeout,
    #[error("PATD_CACHE_TTL must be positive (PATD_CACHE_MAX_ENTRIES=0 turns the cache off)")]
    CacheTtl,
    #[error("PATD_AUDIT_RETENTION must be between 1s and 3650d")]
    AuditRetention,
    #[error("PATD_TOKEN_HASH_KEYS: {0}")]
    HashKeys(#[from] HashKeyError),
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("PATD_CALLERS_FILE names cert_san callers, but PATD_TLS_CLIENT_CA is not set")]
    CertCallersWithoutCa,
    #[error("PATD_CALLERS_FILE: {0}")]
    Callers(#[from] CallersError),
    #[error(
        "refusing to serve {0} without caller authentication: set PATD_CALLERS_FILE, \
         listen on loopback, or set PATD_ALLOW_UNAUTHENTICATED=true"
    )]
    Exposed(SocketAddr),
}

/// A Redis key prefix: 1..=64 characters, no whitespace, control
/// characters or braces (braces would break the `{tag}` hash tags that keep
/// an account's keys in one Cluster slot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPrefix(String);

impl KeyPrefix {
    /// # Errors
    /// `SettingsError::KeyPrefix`.
    pub fn parse(raw: &str) -> Result<Self, SettingsError> {
        let ok = !raw.is_empty()
            && raw.len() <= 64
            && !raw
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '{' || c == '}');
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(SettingsError::KeyPrefix)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The store to open.
#[derive(Debug, Clone)]
// Made once at start and never moved around: its size does not matter.
#[allow(clippy::large_enum_variant)]
pub enum StoreSettings {
    /// The embedded memory store.
    Memory,
    /// Redis at `url` (one Redis, a Cluster or a Sentinel primary; its
    /// `Debug` shows only which), every key under `key_prefix`, every call
    /// bounded by `timeout`, every write acknowledged by
    /// `min_replicas_ack` replicas, with `tls` beyond what the URL says,
    /// and Introspect's `cache` (`None`: off).
    Redis {
        url: RedisUrl,
        key_prefix: KeyPrefix,
        timeout: Duration,
        min_replicas_ack: u32,
        tls: RedisTls,
        cache: Option<CacheSettings>,
    },
}

impl StoreSettings {
    /// A name safe to log (no URL, which may hold a password).
    pub fn name(&self) -> &'static str {
        match self {
            StoreSettings::Memory => "memory",
            StoreSettings::Redis { url, .. } => url.kind(),
        }
    }
}

/// Everything patd runs with, checked.
#[derive(Debug, Clone)]
pub struct Settings {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub store: StoreSettings,
    /// Token format, digests, the per-account limit and lifetimes.
    pub rules: Rules,
    /// How many audit events each account keeps, and for how long.
    pub audit: AuditPolicy,
    /// How long a tombstone outlives its token's end (`PATD_TOMBSTONE_TTL`).
    pub tombstone_ttl: Duration,
    /// Caller authentication; empty = off (loopback only, or opted out).
    pub callers: Callers,
    /// Where the callers came from, read again on SIGHUP.
    pub callers_file: Option<PathBuf>,
    /// TLS for both listeners (reloadable).
    pub tls: Option<Arc<TlsConfig>>,
    pub limits: Limits,
    pub forward_auth: ForwardAuth,
    /// Largest gRPC request message, in bytes.
    pub max_request_bytes: usize,
    /// How long health says NOT_SERVING before the listeners stop.
    pub shutdown_grace: Duration,
    /// Where to write the bound addresses once listening.
    pub ready_file: Option<PathBuf>,
    pub log_format: LogFormat,
    /// Whether `/metrics` serves the Prometheus text.
    pub metrics: bool,
}

/// The Redis TLS files, read and checked against the URL.
fn redis_tls(config: &Config, url: &RedisUrl) -> Result<RedisTls, SettingsError> {
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|source| SettingsError::Read {
            path: path.display().to_string(),
            source,
        })
    };
    let tls = RedisTls {
        ca_pem: config.redis_ca.as_ref().map(read).transpose()?,
        client: match (&config.redis_client_cert, &config.redis_client_key) {
            (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
            _ => None,
        },
    };
    if (tls.ca_pem.is_some() || tls.client.is_some()) && !url.tls() {
        return Err(SettingsError::RedisTlsWithoutTls);
    }
    Ok(tls)
}

/// The introspection cache's bounds; `None` when
/// `PATD_CACHE_MAX_ENTRIES` is 0.
fn cache_settings(config: &Config) -> Result<Option<CacheSettings>, SettingsError> {
    if config.cache_max_entries == 0 {
        return Ok(None);
    }
    if config.cache_ttl.is_zero() {
        return Err(SettingsError::CacheTtl);
    }
    Ok(Some(CacheSettings {
        ttl: *config.cache_ttl,
        max_entries: config.cache_max_entries,
    }))
}

impl TryFrom<Config> for Settings {
    type Error = SettingsError;

    /// Checks every setting and loads the files they name (callers, TLS).
    ///
    /// # Errors
    /// The first setting that makes no sense.
    fn try_from(config: Config) -> Result<Self, SettingsError> {
        let format = TokenFormat::new(&config.token_prefix)?;
        let hasher = TokenHasher::from_setting(config.token_hash_keys.expose_secret())?;
        if config.default_ttl.is_zero() || *config.default_ttl > *config.max_ttl {
            return Err(SettingsError::DefaultTtl);
        }
        if config.redis_timeout.is_zero() || config.request_timeout.is_zero() {
            return Err(SettingsError::Timeout);
        }
        if config.send_timeout.is_zero() || *config.send_timeout > Duration::from_secs(3600) {
            return Err(SettingsError::SendTimeout);
        }
        // Ten years keeps every millisecond count well inside what Redis's
        // Lua numbers hold exactly.
        let retention = *config.audit_retention;
        if retention < Duration::from_secs(1) || retention > Duration::from_secs(3650 * 86_400) {
            return Err(SettingsError::AuditRetention);
        }
        let audit = AuditPolicy {
            max_events: config.audit_max_events,
            retention,
        };
        let key_prefix = KeyPrefix::parse(&config.key_prefix)?;
        let url = config.store.expose_secret();
        let store = if url == "memory" {
            StoreSettings::Memory
        } else {
            let url = RedisUrl::parse(url)?;
            StoreSettings::Redis {
                tls: redis_tls(&config, &url)?,
                url,
                key_prefix,
                timeout: *config.redis_timeout,
                min_replicas_ack: config.redis_min_replicas_ack,
                cache: cache_settings(&config)?,
            }
        };
        // Secure by default, like Redis's protected mode: open to anyone
        // only where only this machine can reach it.
        let exposed = [config.grpc_addr, config.http_addr]
            .into_iter()
            .find(|a| !a.ip().is_loopback());
        if let (None, false, Some(addr)) =
            (&config.callers_file, config.allow_unauthenticated, exposed)
        {
            return Err(SettingsError::Exposed(addr));
        }
        // Beyond loopback, a defaulted memory store is almost certainly a
        // forgotten (or misspelled) PATD_STORE.
        if let (StoreSettings::Memory, false, Some(addr)) = (&store, config.store_given, exposed) {
            return Err(SettingsError::MemoryExposed(addr));
        }
        let callers = match &config.callers_file {
            Some(path) => Callers::load(path)?,
            None => Callers::default(),
        };
        // Such callers could never be identified: say so now, not at 3 am.
        if callers.uses_certificates() && config.tls_client_ca.is_none() {
            return Err(SettingsError::CertCallersWithoutCa);
        }
        let tls = match (config.tls_cert, config.tls_key) {
            (Some(cert), Some(key)) => Some(Arc::new(TlsConfig::load(TlsFiles {
                cert,
                key,
                client_ca: config.tls_client_ca,
            })?)),
            _ => None,
        };
        Ok(Self {
            grpc_addr: config.grpc_addr,
            http_addr: config.http_addr,
            store,
            rules: Rules {
                format,
                hasher,
                max_tokens_per_account: config.max_tokens_per_account,
                lifetime: LifetimePolicy {
                    default_ttl: *config.default_ttl,
                    max_ttl: *config.max_ttl,
                },
                max_rotation_grace: *config.max_rotation_grace,
                accept_unsealed: config.accept_unsealed,
            },
            audit,
            tombstone_ttl: *config.tombstone_ttl,
            callers,
            callers_file: config.callers_file,
            tls,
            limits: Limits {
                request_timeout: *config.request_timeout,
                max_concurrent_requests: config.max_concurrent_requests as usize,
                max_requests_per_connection: config.max_requests_per_connection as usize,
                http2_max_concurrent_streams: config.http2_max_concurrent_streams,
                http2_keepalive: *config.http2_keepalive,
                max_connections: config.max_connections as usize,
                max_connections_per_peer: config.max_connections_per_peer as usize,
                max_streams: config.max_streams as usize,
                max_open_service_streams: config.max_open_service_streams as usize,
                send_timeout: *config.send_timeout,
            },
            forward_auth: ForwardAuth {
                token_header: config.forward_auth_token_header,
                max_age: *config.forward_auth_max_age,
            },
            max_request_bytes: config.max_request_bytes as usize,
            shutdown_grace: *config.shutdown_grace,
            ready_file: config.ready_file,
            log_format: config.log_format,
            metrics: config.metrics,
        })
    }
}

impl Settings {
    /// Listeners bound beyond loopback.
    pub fn exposed_addrs(&self) -> Vec<SocketAddr> {
        [self.grpc_addr, self.http_addr]
            .into_iter()
            .filter(|a| !a.ip().is_loopback())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, crate::config::LoadError> {
        Config::load(std::iter::once("patd").chain(args.iter().copied()))
    }

    fn settings(args: &[&str]) -> Result<Settings, SettingsError> {
        Settings::try_from(parse(args).unwrap())
    }

    #[test]
    fn a_public_address_needs_callers_or_an_explicit_opt_out() {
        let exposed = settings(&["--grpc-addr", "0.0.0.0:50051"]);
        assert!(matches!(exposed, Err(SettingsError::Exposed(_))));
        let http = settings(&["--http-addr", "10.1.2.3:8080"]);
        assert!(matches!(http, Err(SettingsError::Exposed(_))));
        let opted_out = settings(&[
            "--grpc-addr",
            "0.0.0.0:50051",
            "--allow-unauthenticated",
            "--store",
            "memory",
        ]);
        assert_eq!(opted_out.unwrap().exposed_addrs().len(), 1);
        let v6_loopback = settings(&["--grpc-addr", "[::1]:50051"]);
        assert!(v6_loopback.unwrap().exposed_addrs().is_empty());
    }

    #[test]
    fn an_audit_retention_out_of_range_is_refused() {
        for bad in ["0s", "999ms", "3651d"] {
            let refused = settings(&["--audit-retention", bad]);
            assert!(
                matches!(refused, Err(SettingsError::AuditRetention)),
                "{bad}"
            );
        }
        let s = settings(&["--audit-retention", "2s", "--audit-max-events", "3"]).unwrap();
        assert_eq!(s.audit.retention, Duration::from_secs(2));
        assert_eq!(s.audit.max_events, 3);
    }

    #[test]
    fn the_defaults_are_loopback_memory_and_fifty_tokens() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.grpc_addr.to_string(), "127.0.0.1:50051");
        assert_eq!(s.http_addr.to_string(), "127.0.0.1:8080");
        assert!(s.forward_auth.token_header.is_none());
        assert!(matches!(s.store, StoreSettings::Memory));
        assert_eq!(s.rules.max_tokens_per_account, 50);
        assert_eq!(s.audit.max_events, 1000);
        assert_eq!(s.audit.retention, Duration::from_secs(90 * 86_400));
        assert_eq!(
            s.rules.lifetime.default_ttl,
            Duration::from_secs(30 * 86_400)
        );
        assert_eq!(s.rules.lifetime.max_ttl, Duration::from_secs(365 * 86_400));
        assert!(!s.rules.hasher.is_keyed());
    }

    #[test]
    fn stores_are_memory_or_redis_urls() {
        let s = settings(&["--store", "redis://127.0.0.1:6379/0"]).unwrap();
        assert_eq!(s.store.name(), "redis");
        assert!(settings(&["--store", "rediss://h:6380"]).is_ok());
        let refused = settings(&["--store", "postgres://u:hunter2@db"]).unwrap_err();
        assert!(matches!(refused, SettingsError::Store(_)));
        assert!(!refused.to_string().contains("hunter2"));
    }

    #[test]
    fn redis_tls_settings_that_could_not_work_are_refused() {
        let ca = std::env::temp_dir().join(format!("patd-ca-{}.pem", std::process::id()));
        std::fs::write(&ca, "not checked here").unwrap();
        let ca = ca.to_string_lossy().into_owned();
        let plain = settings(&["--store", "redis://h:6379", "--redis-ca", &ca]).unwrap_err();
        assert!(matches!(plain, SettingsError::RedisTlsWithoutTls));
        let insecure = settings(&["--store", "rediss://h:6380/#insecure"]).unwrap_err();
        assert!(insecure.to_string().contains("#insecure"), "{insecure}");
        assert!(settings(&["--store", "rediss://h:6380", "--redis-ca", &ca]).is_ok());
        let missing = settings(&["--store", "rediss://h:6380", "--redis-ca", "/no/such.pem"]);
        assert!(matches!(missing, Err(SettingsError::Read { .. })));
        // A certificate without its key stops at the command line.
        assert!(parse(&["--redis-client-cert", &ca]).is_err());
        let _ = std::fs::remove_file(&ca);
    }

    #[test]
    fn a_defaulted_memory_store_is_refused_beyond_loopback() {
        let public = ["--grpc-addr", "0.0.0.0:50051", "--allow-unauthenticated"];
        let defaulted = settings(&public).unwrap_err();
        assert!(matches!(defaulted, SettingsError::MemoryExposed(_)));
        let meant: Vec<&str> = public
            .iter()
            .copied()
            .chain(["--store", "memory"])
            .collect();
        assert!(settings(&meant).is_ok());
        // On loopback the default is the development setup.
        assert!(settings(&[]).is_ok());
    }

    #[test]
    fn booleans_take_the_usual_spellings_and_say_which() {
        for yes in ["true", "1", "yes", "on"] {
            let c = parse(&[&format!("--allow-unauthenticated={yes}")]).unwrap();
            assert!(c.allow_unauthenticated, "{yes}");
        }
        for no in ["false", "0", "no", "off"] {
            let c = parse(&[&format!("--allow-unauthenticated={no}")]).unwrap();
            assert!(!c.allow_unauthenticated, "{no}");
        }
        assert!(
            parse(&["--allow-unauthenticated"])
                .unwrap()
                .allow_unauthenticated
        );
        let e = parse(&["--allow-unauthenticated=maybe"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("true") && e.contains("false"), "{e}");
    }

    #[test]
    fn unknown_patd_variables_are_refused_with_the_closest_name() {
        use crate::config::{LoadError, check_variables};
        let vars = |pairs: &[(&str, &str)]| -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect()
        };
        let e = check_variables(vars(&[("PATD_STROE", "redis://x")])).unwrap_err();
        assert!(
            matches!(&e, LoadError::UnknownVariable { closest: Some(c), .. } if c == "PATD_STORE")
        );
        assert!(e.to_string().contains("did you mean PATD_STORE?"), "{e}");
        let e = check_variables(vars(&[("PATD_XYZZY_PLUGH", "1")])).unwrap_err();
        assert!(e.to_string().contains("patd --help"), "{e}");
        let fine = vars(&[
            ("PATD_STORE", "memory"),
            ("HOME", "/root"),
            ("RUST_LOG", "info"),
        ]);
        assert!(check_variables(fine).is_ok());
    }

    #[test]
    fn nonsense_settings_are_refused() {
        let bad = |args: &[&str]| {
            parse(args)
                .map(|c| Settings::try_from(c).is_err())
                .unwrap_or(true)
        };
        assert!(bad(&["--default-ttl", "400d"]));
        assert!(bad(&["--default-ttl", "0s"]));
        assert!(bad(&["--token-prefix", "Bad_"]));
        assert!(bad(&["--key-prefix", "a b"]));
        assert!(bad(&["--key-prefix", "{x}"]));
        assert!(bad(&["--key-prefix", ""]));
        assert!(bad(&["--max-tokens-per-account", "0"]));
        assert!(bad(&["--max-ttl", "soon"]));
        assert!(bad(&["--forward-auth-token-header", "bad header"]));
        assert!(!bad(&["--forward-auth-token-header", "X-API-Key"]));
        assert!(!bad(&["--token-prefix", "acme"]));
        assert!(bad(&["--token-hash-keys", "k1:short"]));
        assert!(bad(&["--max-concurrent-requests", "0"]));
        assert!(bad(&["--redis-timeout", "0s"]));
    }

    #[test]
    fn debug_never_shows_the_redis_password_or_a_digest_key() {
        use base64::Engine as _;
        let password = "hunter2-very-secret";
        let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        let url = format!("redis://patd:{password}@127.0.0.1:6379/0");
        let keys = format!("k1:{key}");
        let config = parse(&["--store", &url, "--token-hash-keys", &keys]).unwrap();
        let config_debug = format!("{config:?}");
        let settings = Settings::try_from(config).unwrap();
        let settings_debug = format!("{settings:?} {:?}", settings.store);
        for shown in [&config_debug, &settings_debug] {
            assert!(!shown.contains(password), "{shown}");
            assert!(!shown.contains(&key), "{shown}");
        }
        // The URL is still there for the store to use.
        let StoreSettings::Redis { url: kept, .. } = &settings.store else {
            panic!("not redis");
        };
        let RedisUrl::Standalone(kept) = kept else {
            panic!("not one Redis");
        };
        assert!(kept.contains(password));
    }
}
