//! The `Store` interface and its two implementations: `memory` (embedded,
//! and the reference model) and `redis` (production). Both keep the same
//! rules: the live-token limit is enforced atomically, expiry is decided on
//! the store's one clock, expired tokens vanish on their own, a token whose
//! digest can no longer verify is not live, and a revocation is final.

pub mod connection;
pub mod keys;
pub mod memory;
pub mod redis;

use std::future::Future;
use std::time::Duration;

use thiserror::Error;

use crate::domain::{
    AccountId, Expiry, ExpiryRefusal, Note, Scopes, TokenId, TokenInfo, UnixMillis,
};
use crate::metrics;
use crate::token::{KeyId, LiveKeys, TokenDigest};

pub use self::memory::MemoryStore;
pub use self::redis::{RedisStore, RedisTls};

/// The store could not give an answer. Callers must fail closed.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("store call timed out after {0:?}")]
    Timeout(std::time::Duration),
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("the account's index kept changing; gave up")]
    Contended,
    /// The Redis patd reaches is a replica: it would refuse every write
    /// (READONLY).
    #[error("Redis is a read-only replica (ROLE); patd needs the primary")]
    Replica,
    /// Redis is at `maxmemory` and refused a write (`OOM`); nothing was
    /// written.
    #[error("the store is full (Redis OOM: at maxmemory)")]
    Full,
    #[error("corrupt record for token {token_id}: {reason}")]
    Corrupt { token_id: String, reason: String },
}

/// One token as stored: its public facts and the digest of its value.
#[derive(Debug, Clone)]
pub struct StoredToken {
    pub info: TokenInfo,
    pub digest: TokenDigest,
    /// The digest key that made `digest`; `None` for plain SHA-256.
    pub key_id: Option<KeyId>,
}

/// A token to issue: everything but its times, which the store sets on its
/// own clock.
#[derive(Debug, Clone)]
pub struct NewToken {
    pub token_id: TokenId,
    pub account_id: AccountId,
    pub note: Note,
    pub scopes: Scopes,
    pub digest: TokenDigest,
    /// The digest key that made `digest`; `None` for plain SHA-256.
    pub key_id: Option<KeyId>,
}

impl NewToken {
    /// Its public facts once issued at `created_at`.
    pub fn info(&self, created_at: UnixMillis, expires_at: UnixMillis) -> TokenInfo {
        TokenInfo {
            token_id: self.token_id.clone(),
            account_id: self.account_id.clone(),
            note: self.note.clone(),
            scopes: self.scopes.clone(),
            created_at,
            expires_at,
            last_used_at: None,
        }
    }
}

/// The rules an Issue is held to, besides the token's own expiry.
#[derive(Debug, Clone, Copy)]
pub struct IssueTerms<'a> {
    /// Most live tokens per account.
    pub limit: u32,
    /// Longest lifetime, from the store's now.
    pub max_ttl: Duration,
    /// Which records are live tokens (the others do not count).
    pub live_keys: &'a LiveKeys,
}

/// What an atomic issue did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueOutcome {
    /// Stored, created and expiring at these instants of the store's clock.
    Issued {
        created_at: UnixMillis,
        expires_at: UnixMillis,
    },
    /// The account already holds `limit` live tokens; nothing was written.
    LimitReached,
    /// The random token id is already taken (astronomically rare); nothing
    /// was written and the caller retries with a fresh token.
    IdTaken,
    /// The expiry is not acceptable at the store's now; nothing was written.
    Refused(ExpiryRefusal),
}

/// A token record and the store's now, read together: whether the token
/// has expired is decided against this `now`, never a caller's clock.
#[derive(Debug, Clone)]
pub struct Found {
    pub token: StoredToken,
    pub now: UnixMillis,
}

/// Persistence of tokens. Every method is one atomic step. Implementations
/// are cheap handles (`Clone` shares the underlying store), so background
/// work such as the last-used write can take its own copy.
///
/// **One clock.** Every instant (created, expires, last use) and every
/// "has it expired?" comes from the store's own clock: Redis's `TIME` for
/// the Redis store (shared by every instance), a monotonic clock anchored
/// once at start for the memory store. A caller's wall clock decides
/// nothing.
///
/// **Live tokens.** A token is live while it has not expired and its
/// record can verify (its key id is admitted by the `LiveKeys` given):
/// only live tokens are listed, counted toward the limit and counted as
/// revoked.
pub trait Store: Clone + Send + Sync + 'static {
    /// Resolves `expiry` at the store's now, prunes the account's expired
    /// tokens, refuses at `terms.limit` live ones, otherwise stores `token`.
    fn issue(
        &self,
        token: &NewToken,
        expiry: Expiry,
        terms: &IssueTerms<'_>,
    ) -> impl Future<Output = Result<IssueOutcome, StoreError>> + Send;

    /// The record of a token id, if the store holds one, with the store's
    /// now (an expired record may still be returned; the caller compares).
    fn lookup(
        &self,
        token_id: &TokenId,
    ) -> impl Future<Output = Result<Option<Found>, StoreError>> + Send;

    /// Records a use at the store's now, only if the token still exists
    /// (never resurrects one) and its last recorded use is at least
    /// `min_interval` old.
    fn touch(
        &self,
        token_id: &TokenId,
        min_interval: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Revokes (removes) one token of an account; `true` only when it was
    /// live.
    fn revoke(
        &self,
        account: &AccountId,
        token_id: &TokenId,
        live_keys: &LiveKeys,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Removes every token of an account; returns how many were live.
    fn revoke_all(
        &self,
        account: &AccountId,
        live_keys: &LiveKeys,
    ) -> impl Future<Output = Result<u32, StoreError>> + Send;

    /// The account's live tokens, in no particular order.
    fn list(
        &self,
        account: &AccountId,
        live_keys: &LiveKeys,
    ) -> impl Future<Output = Result<Vec<TokenInfo>, StoreError>> + Send;

    /// Whether the store can do its job (readiness); the error says why
    /// not.
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// The store chosen by configuration.
#[derive(Clone)]
pub enum AnyStore {
    Memory(MemoryStore),
    Redis(RedisStore),
}

impl AnyStore {
    /// `db.system` of its spans: `redis`, or `memory` for the in-process
    /// map (no registered value fits an embedded store).
    fn db_system(&self) -> &'static str {
        match self {
            AnyStore::Memory(_) => "memory",
            AnyStore::Redis(_) => "redis",
        }
    }
}

/// Calls the chosen store inside one client span (`db.system`,
/// `db.operation.name` = `$op`, a child of the request's span) and records
/// the call's duration and failure as metrics.
macro_rules! dispatch {
    ($self:ident, $op:literal, $s:ident => $call:expr) => {{
        let span = tracing::info_span!(
            "store",
            otel.name = $op,
            otel.kind = "client",
            db.system = $self.db_system(),
            db.operation.name = $op,
        );
        let started = std::time::Instant::now();
        let result = tracing::Instrument::instrument(
            async {
                match $self {
                    AnyStore::Memory($s) => $call.await,
                    AnyStore::Redis($s) => $call.await,
                }
            },
            span,
        )
        .await;
        metrics::store_call($op, started.elapsed(), result.is_ok());
        result
    }};
}

impl Store for AnyStore {
    async fn issue(
        &self,
        token: &NewToken,
        expiry: Expiry,
        terms: &IssueTerms<'_>,
    ) -> Result<IssueOutcome, StoreError> {
        dispatch!(self, "issue", s => s.issue(token, expiry, terms))
    }

    async fn lookup(&self, token_id: &TokenId) -> Result<Option<Found>, StoreError> {
        dispatch!(self, "lookup", s => s.lookup(token_id))
    }

    async fn touch(&self, token_id: &TokenId, min_interval: Duration) -> Result<(), StoreError> {
        dispatch!(self, "touch", s => s.touch(token_id, min_interval))
    }

    async fn revoke(
        &self,
        account: &AccountId,
        token_id: &TokenId,
        live_keys: &LiveKeys,
    ) -> Result<bool, StoreError> {
        dispatch!(self, "revoke", s => s.revoke(account, token_id, live_keys))
    }

    async fn revoke_all(
        &self,
        account: &AccountId,
        live_keys: &LiveKeys,
    ) -> Result<u32, StoreError> {
        dispatch!(self, "revoke_all", s => s.revoke_all(account, live_keys))
    }

    async fn list(
        &self,
        account: &AccountId,
        live_keys: &LiveKeys,
    ) -> Result<Vec<TokenInfo>, StoreError> {
        dispatch!(self, "list", s => s.list(account, live_keys))
    }

    /// Readiness: metrics only, no span (it runs every few seconds on its
    /// own, outside any request).
    async fn ping(&self) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        let result = match self {
            AnyStore::Memory(s) => s.ping().await,
            AnyStore::Redis(s) => s.ping().await,
        };
        metrics::store_call("ping", started.elapsed(), result.is_ok());
        result
    }
}
