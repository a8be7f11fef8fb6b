//! A Redis connection that heals itself. redis-rs's `ConnectionManager`
//! reconnects after an I/O error, but a failure while *setting up* a
//! connection (a password refused, a user deleted and re-created, a TLS
//! handshake that failed) sticks to the manager: every later call fails
//! the same way until the process restarts. Here such a failure replaces
//! the manager with a fresh one (at most once a second), so patd recovers
//! by itself as soon as Redis would accept it again.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use futures_util::FutureExt as _;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, Value};

/// Least time between two replacements of the connection.
const REBUILD_AT_MOST_EVERY: Duration = Duration::from_secs(1);

struct Shared {
    client: Client,
    config: ConnectionManagerConfig,
    current: ArcSwap<ConnectionManager>,
    rebuilt: Mutex<Instant>,
}

/// A `ConnectionLike` over a replaceable `ConnectionManager`. Cheap to
/// clone: clones share the connection.
#[derive(Clone)]
pub struct HealingConnection {
    shared: Arc<Shared>,
}

/// Whether `e` may mean this connection (not the command) is broken, so
/// that a new connection could succeed where this one fails. Server
/// answers about the command (a script error, NOSCRIPT, which redis-rs
/// answers by loading the script, or OOM) are not.
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
    /// A lazy connection to `client`: nothing is dialled until the first
    /// call, so patd starts while Redis is down.
    ///
    /// # Errors
    /// The client configuration is unusable.
    pub fn new(client: Client, config: ConnectionManagerConfig) -> Result<Self, RedisError> {
        let manager = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())?;
        Ok(Self {
            shared: Arc::new(Shared {
                client,
                config,
                current: ArcSwap::from_pointee(manager),
                // The first failure may rebuild at once.
                rebuilt: Mutex::new(Instant::now() - REBUILD_AT_MOST_EVERY),
            }),
        })
    }

    fn manager(&self) -> ConnectionManager {
        (*self.shared.current.load_full()).clone()
    }

    /// Replaces the manager after a failure that a new connection might
    /// not meet; calls already under way keep the old one.
    fn failed(&self, e: &RedisError) {
        if !worth_a_new_connection(e) {
            return;
        }
        let mut rebuilt = self
            .shared
            .rebuilt
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if rebuilt.elapsed() < REBUILD_AT_MOST_EVERY {
            return;
        }
        *rebuilt = Instant::now();
        match ConnectionManager::new_lazy_with_config(
            self.shared.client.clone(),
            self.shared.config.clone(),
        ) {
            Ok(fresh) => {
                self.shared.current.store(Arc::new(fresh));
                tracing::debug!(error = %e, "replaced the Redis connection after a failure");
            }
            Err(e) => tracing::debug!(error = %e, "could not make a new Redis connection"),
        }
    }
}

impl ConnectionLike for HealingConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let mut manager = self.manager();
        async move {
            let result = manager.req_packed_command(cmd).await;
            if let Err(e) = &result {
                self.failed(e);
            }
            result
        }
        .boxed()
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let mut manager = self.manager();
        async move {
            let result = manager.req_packed_commands(pipeline, offset, count).await;
            if let Err(e) = &result {
                self.failed(e);
            }
            result
        }
        .boxed()
    }

    fn get_db(&self) -> i64 {
        self.manager().get_db()
    }
}
