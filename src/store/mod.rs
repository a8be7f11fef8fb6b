//! The `Store` interface and its two implementations: `memory` (embedded,
//! and the reference model) and `redis` (production). Both keep the same
//! rules: the live-token limit is enforced atomically, expired tokens vanish
//! on their own, and a revocation is final.

pub mod connection;
pub mod keys;
pub mod memory;
pub mod redis;

use std::future::Future;
use std::time::Duration;

use thiserror::Error;

use crate::domain::{AccountId, TokenId, TokenInfo, UnixMillis};
use crate::token::{KeyId, TokenDigest};

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

/// What an atomic issue did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueOutcome {
    Issued,
    /// The account already holds `limit` live tokens; nothing was written.
    LimitReached,
    /// The random token id is already taken (astronomically rare); nothing
    /// was written and the caller retries with a fresh token.
    IdTaken,
}

/// Persistence of tokens. Every method is one atomic step. Implementations
/// are cheap handles (`Clone` shares the underlying store), so background
/// work such as the last-used write can take its own copy.
pub trait Store: Clone + Send + Sync + 'static {
    /// Prunes the account's expired tokens, refuses at `limit` live ones,
    /// otherwise stores `token`.
    fn issue(
        &self,
        token: &StoredToken,
        limit: u32,
        now: UnixMillis,
    ) -> impl Future<Output = Result<IssueOutcome, StoreError>> + Send;

    /// The live record of a token id, if any.
    fn lookup(
        &self,
        token_id: &TokenId,
        now: UnixMillis,
    ) -> impl Future<Output = Result<Option<StoredToken>, StoreError>> + Send;

    /// Records a use, only if the token still exists (never resurrects one)
    /// and its last recorded use is at least `min_interval` old.
    fn touch(
        &self,
        token_id: &TokenId,
        at: UnixMillis,
        min_interval: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Revokes one token of an account; `false` when the account holds no
    /// such live token.
    fn revoke(
        &self,
        account: &AccountId,
        token_id: &TokenId,
        now: UnixMillis,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Revokes every token of an account; returns how many were live.
    fn revoke_all(
        &self,
        account: &AccountId,
        now: UnixMillis,
    ) -> impl Future<Output = Result<u32, StoreError>> + Send;

    /// The account's live tokens, newest first.
    fn list(
        &self,
        account: &AccountId,
        now: UnixMillis,
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

macro_rules! dispatch {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            AnyStore::Memory($s) => $call.await,
            AnyStore::Redis($s) => $call.await,
        }
    };
}

impl Store for AnyStore {
    async fn issue(
        &self,
        token: &StoredToken,
        limit: u32,
        now: UnixMillis,
    ) -> Result<IssueOutcome, StoreError> {
        dispatch!(self, s => s.issue(token, limit, now))
    }

    async fn lookup(
        &self,
        token_id: &TokenId,
        now: UnixMillis,
    ) -> Result<Option<StoredToken>, StoreError> {
        dispatch!(self, s => s.lookup(token_id, now))
    }

    async fn touch(
        &self,
        token_id: &TokenId,
        at: UnixMillis,
        min_interval: Duration,
    ) -> Result<(), StoreError> {
        dispatch!(self, s => s.touch(token_id, at, min_interval))
    }

    async fn revoke(
        &self,
        account: &AccountId,
        token_id: &TokenId,
        now: UnixMillis,
    ) -> Result<bool, StoreError> {
        dispatch!(self, s => s.revoke(account, token_id, now))
    }

    async fn revoke_all(&self, account: &AccountId, now: UnixMillis) -> Result<u32, StoreError> {
        dispatch!(self, s => s.revoke_all(account, now))
    }

    async fn list(
        &self,
        account: &AccountId,
        now: UnixMillis,
    ) -> Result<Vec<TokenInfo>, StoreError> {
        dispatch!(self, s => s.list(account, now))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        dispatch!(self, s => s.ping())
    }
}
