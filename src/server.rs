//! Wiring: builds the store, the service and the listeners from checked
//! `Settings`, and runs them until shutdown: health, reflection, the guard
//! layers around gRPC, the staged shutdown (health NOT_SERVING, grace, stop
//! accepting, drain, hard stop) and the readiness watch that ties health
//! to the store. `main` starts patd through this code.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic_health::pb::health_check_response::ServingStatus;

use arc_swap::ArcSwap;

use crate::auth::LiveCallers;
use crate::grpc::ext_authz::{AuthorizationServer, ExtAuthz};
use crate::grpc::guard::ShieldLayer;
use crate::grpc::{TokenApi, TokenServiceServer};
use crate::health::Health;
use crate::listener::budget::StreamBudget;
use crate::listener::gate::ConnectionGate;
use crate::listener::{HTTP2_KEEPALIVE_TIMEOUT, Limits, MAX_HEADER_BYTES};
use crate::pb::token_service_server::SERVICE_NAME as TOKEN_SERVICE;
use crate::reload::Reloader;
use crate::service::Tokens;
use crate::settings::{Settings, SettingsError, StoreSettings};
use crate::store::{AnyStore, MemoryStore, RedisStore, StoreError};
/// Largest server-reflection request accepted, in bytes.
const REFLECTION_MAX_REQUEST_BYTES: usize = 4096;

/// How often the store is pinged for the health status.
const READINESS_EVERY: Duration = Duration::from_secs(2);

/// Why patd could not start.
#[derive(Debug, Error)]
pub enum StartError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("cannot write the ready file {path}: {source}")]
    ReadyFile {
        path: String,
        source: std::io::Error,
    },
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// A built, bound, not yet running patd.
pub struct Application {
    settings: Settings,
    /// The callers in force; replaced whole by the reloader.
    callers: LiveCallers,
    grpc_listener: TcpListener,
    grpc_addr: SocketAddr,
    http_listener: TcpListener,
    http_addr: SocketAddr,
    tokens: Tokens<AnyStore>,
}

impl Application {
    /// Prepares the store and binds the listeners.
    ///
    /// # Errors
    /// An unusable store URL, or an address that cannot be bound.
    pub async fn build(settings: Settings) -> Result<Self, StartError> {
        let store = match &settings.store {
            StoreSettings::Memory => AnyStore::Memory(
                MemoryStore::with_audit(settings.audit).with_tombstone_ttl(settings.tombstone_ttl),
            ),
            StoreSettings::Redis {
                url,
                key_prefix,
                timeout,
                min_replicas_ack,
                tls,
                cache,
            } => {
                let store = RedisStore::connect(
                    url,
                    key_prefix.as_str(),
                    *timeout,
                    *min_replicas_ack,
                    tls,
                )?
                .with_audit(settings.audit)
                .with_tombstone_ttl(settings.tombstone_ttl);
                AnyStore::Redis(match cache {
                    Some(cache) => store.with_cache(*cache),
                    None => store,
                })
            }
        };
        warn_about_exposure(&settings);
        match (
            settings.rules.accept_unsealed,
            settings.rules.hasher.is_keyed(),
        ) {
            (true, true) => tracing::warn!(
                "PATD_ACCEPT_UNSEALED: token records without a seal are accepted (weaker integrity); turn it off once every unsealed token has expired or been rotated"
            ),
            (true, false) => tracing::warn!(
                "PATD_ACCEPT_UNSEALED has no effect without PATD_TOKEN_HASH_KEYS: no record is sealed"
            ),
            _ => {}
        }
        let (grpc_listener, grpc_addr) = bind(settings.grpc_addr).await?;
        let (http_listener, http_addr) = bind(settings.http_addr).await?;
        Ok(Self {
            tokens: Tokens::new(store, settings.rules.clone()),
            callers: Arc::new(ArcSwap::from_pointee(settings.callers.clone())),
            settings,
            grpc_listener,
            grpc_addr,
            http_listener,
            http_addr,
        })
    }

    /// What reloads the callers file and TLS files (on SIGHUP, from
    /// `main`); shares the sets this application serves with.
    pub fn reloader(&self) -> Reloader {
        Reloader::new(
            self.settings.callers_file.clone(),
            self.callers.clone(),
            self.settings.tls.clone(),
        )
    }

    /// The bound gRPC address (the real port when configured with port 0).
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The bound HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Serves until `shutdown` is cancelled: health turns NOT_SERVING first,
    /// then, after the configured grace, listeners stop accepting and
    /// in-flight requests finish.
    ///
    /// # Errors
    /// The server failed.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), StartError> {
        // The process is serving; the token service waits for the first
        // store check.
        let health = Health::new(&["", TOKEN_SERVICE], ServingStatus::Serving);
        health.set(TOKEN_SERVICE, ServingStatus::NotServing);
        let health_service = health.service();
        // A reflection request names a symbol or file, a few hundred bytes
        // at most; a larger one is refused, not echoed back in an error.
        let reflection_v1 = reflection()
            .build_v1()?
            .max_decoding_message_size(REFLECTION_MAX_REQUEST_BYTES);
        let reflection_v1alpha = reflection()
            .build_v1alpha()?
            .max_decoding_message_size(REFLECTION_MAX_REQUEST_BYTES);
        let settings = self.settings;
        let max_request = settings.max_request_bytes;
        let limits = fit_to_descriptors(settings.limits);
        let grpc_gate =
            ConnectionGate::new(limits.max_connections, limits.max_connections_per_peer);
        let http_gate =
            ConnectionGate::new(limits.max_connections, limits.max_connections_per_peer);
        let callers = self.callers.clone();
        let budget = StreamBudget::new(limits.max_streams, limits.max_open_service_streams);
        let api = TokenServiceServer::new(TokenApi::new(self.tokens.clone()))
            .max_decoding_message_size(max_request);
        let ext_authz = AuthorizationServer::new(ExtAuthz::new(
            self.tokens.clone(),
            settings.forward_auth.token_header.clone(),
        ))
        .max_decoding_message_size(max_request);
        let http_app = crate::forward_auth::router(
            self.tokens.clone(),
            settings.forward_auth,
            callers.clone(),
            crate::forward_auth::Bounds {
                limits,
                budget: budget.clone(),
                max_request_bytes: max_request,
            },
            shutdown.clone(),
            settings.metrics,
        );

        tokio::spawn(watch_readiness(
            self.tokens.clone(),
            health.clone(),
            shutdown.clone(),
        ));
        tokio::spawn(
            Reloader::new(
                settings.callers_file.clone(),
                callers.clone(),
                settings.tls.clone(),
            )
            .watch(shutdown.clone()),
        );

        tracing::info!(
            grpc_addr = %self.grpc_addr,
            http_addr = %self.http_addr,
            store = settings.store.name(),
            tls = settings.tls.is_some(),
            "patd listening"
        );
        if let Some(path) = &settings.ready_file {
            write_ready_file(path, self.grpc_addr, self.http_addr)?;
        }
        let grace = settings.shutdown_grace;
        // In-flight requests get their own timeout to finish; a client that
        // never lets its connection close must not keep patd alive.
        let drain = limits.request_timeout + Duration::from_secs(1);
        let hard_stop = grace + drain;
        // Cancelled once the grace period after the shutdown signal is over:
        // then both listeners stop accepting.
        let stop_accepting = CancellationToken::new();
        tokio::spawn({
            let health = health.clone();
            let shutdown = shutdown.clone();
            let stop_accepting = stop_accepting.clone();
            async move {
                shutdown.cancelled().await;
                tracing::info!("shutting down: health NOT_SERVING, draining");
                health.set_all(ServingStatus::NotServing);
                tokio::time::sleep(grace).await;
                stop_accepting.cancel();
                // NOT_SERVING was sent; open watches must not hold patd.
                health.close_watches();
            }
        });
        let http = tokio::spawn(crate::listener::serve(
            self.http_listener,
            http_gate,
            http_app,
            settings.tls.clone(),
            limits,
            stop_accepting.clone(),
            drain,
        ));
        let stop = {
            let stop_accepting = stop_accepting.clone();
            async move { stop_accepting.cancelled().await }
        };
        // One layer: the stream budget, panics, deadlines, caller
        // authentication on the headers, then shedding beyond the
        // concurrency limit once the message has arrived (a fast
        // RESOURCE_EXHAUSTED rather than a queue).
        let layers = tower::ServiceBuilder::new().layer(ShieldLayer::new(
            limits.request_timeout,
            limits.max_concurrent_requests,
            limits.max_requests_per_connection,
            // The message and its 5-byte gRPC frame header.
            max_request + 5,
            budget,
            callers,
        ));
        let router = Server::builder()
            .max_concurrent_streams(limits.http2_max_concurrent_streams)
            .http2_max_header_list_size(MAX_HEADER_BYTES as u32)
            .http2_keepalive_interval(limits.http2_keepalive_interval())
            .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE_TIMEOUT))
            .layer(layers)
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(api)
            .add_service(ext_authz);
        let serve = async move {
            match &settings.tls {
                // TLS handshakes happen in `listener`, with the certificate
                // current at each accept, so a reload needs no restart.
                Some(tls) => {
                    let incoming = crate::listener::grpc_tls_incoming(
                        self.grpc_listener,
                        grpc_gate,
                        tls.clone(),
                        limits.send_timeout,
                        stop_accepting.clone(),
                    );
                    router.serve_with_incoming_shutdown(incoming, stop).await
                }
                None => {
                    let incoming = crate::listener::grpc_incoming(
                        self.grpc_listener,
                        grpc_gate,
                        limits.send_timeout,
                        stop_accepting.clone(),
                    );
                    router.serve_with_incoming_shutdown(incoming, stop).await
                }
            }
        };
        tokio::select! {
            served = serve => served?,
            _ = async { shutdown.cancelled().await; tokio::time::sleep(hard_stop).await } => {
                tracing::warn!("connections still open after the drain deadline; stopping anyway");
            }
        }
        let _ = http.await;
        tracing::info!("patd stopped");
        Ok(())
    }
}

/// The bound addresses, as the JSON object `--ready-file` documents. A
/// reader never sees a half-written file: it is renamed into place.
fn write_ready_file(path: &Path, grpc: SocketAddr, http: SocketAddr) -> Result<(), StartError> {
    let body = serde_json::json!({
        "grpc_addr": grpc.to_string(),
        "http_addr": http.to_string(),
    });
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    std::fs::write(&partial, format!("{body}\n"))
        .and_then(|()| std::fs::rename(&partial, path))
        .map_err(|source| StartError::ReadyFile {
            path: path.display().to_string(),
            source,
        })
}

/// File descriptors kept back from the connection caps (Redis connections,
/// the callers and TLS files, the log).
const RESERVED_DESCRIPTORS: u64 = 64;

/// Raises the soft file-descriptor limit to the hard one (systemd's
/// default soft limit is 1024) and lowers the connection caps so that both
/// listeners together stay below it: at the limit, accepting fails for
/// every client, so patd refuses new connections a little before.
fn fit_to_descriptors(mut limits: Limits) -> Limits {
    let soft = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(soft) => soft,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the file-descriptor limit");
            return limits;
        }
    };
    let per_listener = usize::try_from(soft.saturating_sub(RESERVED_DESCRIPTORS) / 2)
        .unwrap_or(usize::MAX)
        .max(1);
    if limits.max_connections > per_listener {
        tracing::warn!(
            configured = limits.max_connections,
            allowed = per_listener,
            descriptor_limit = soft,
            "PATD_MAX_CONNECTIONS lowered to fit the file-descriptor limit"
        );
        limits.max_connections = per_listener;
    }
    limits.max_connections_per_peer = limits.max_connections_per_peer.min(limits.max_connections);
    tracing::info!(
        max_connections = limits.max_connections,
        max_connections_per_peer = limits.max_connections_per_peer,
        descriptor_limit = soft,
        "connection caps"
    );
    limits
}

/// Start-up warnings for a patd reachable beyond loopback.
fn warn_about_exposure(settings: &Settings) {
    let exposed = settings.exposed_addrs();
    let Some(addr) = exposed.first() else {
        return;
    };
    if !settings.callers.is_enabled() {
        tracing::warn!(%addr, "serving beyond loopback WITHOUT caller authentication (PATD_ALLOW_UNAUTHENTICATED)");
    }
    if !settings.rules.hasher.is_keyed() {
        tracing::warn!(%addr, "tokens are stored as plain SHA-256: set PATD_TOKEN_HASH_KEYS so a Redis writer cannot mint tokens");
    }
}

async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), StartError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| StartError::Bind { addr, source })?;
    Ok((listener, bound))
}

fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(crate::pb::ENVOY_AUTHZ_DESCRIPTOR_SET)
}

/// Keeps the TokenService health status in step with the store, so a
/// health-checking load balancer stops sending traffic to an instance whose
/// Redis is gone. The overall ("") status stays SERVING: the process is fine.
async fn watch_readiness(tokens: Tokens<AnyStore>, health: Health, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(READINESS_EVERY);
    // The status and, when not ready, its cause: a change of either is
    // logged, so an operator sees why (wrong password, refused connection,
    // missing permission) without sending a request.
    let mut last: Option<(ServingStatus, String)> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (status, cause) = match tokens.ready().await {
            Ok(()) => (ServingStatus::Serving, String::new()),
            Err(e) => (ServingStatus::NotServing, crate::telemetry::error_chain(&e)),
        };
        // Shutdown began during the ping: NOT_SERVING must stay.
        if shutdown.is_cancelled() {
            return;
        }
        let now = Some((status, cause));
        if last == now {
            continue;
        }
        let status_changed = last.as_ref().map(|(s, _)| *s) != Some(status);
        if let Some((status, cause)) = &now {
            if *status == ServingStatus::Serving {
                tracing::info!(
                    ready = true,
                    health = "SERVING",
                    service = TOKEN_SERVICE,
                    "store ready"
                );
            } else {
                tracing::warn!(
                    ready = false,
                    health = "NOT_SERVING",
                    service = TOKEN_SERVICE,
                    cause = cause.as_str(),
                    "store not ready"
                );
            }
            if status_changed {
                health.set(TOKEN_SERVICE, *status);
            }
        }
        last = now;
    }
}
