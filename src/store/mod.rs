//! The `Store` interface and its two implementations: `memory` (embedded,
//! and the reference model) and `redis` (production). Both keep the same
//! rules: the live-token limit is enforced atomically, expiry is decided on
//! the store's one clock, expired tokens vanish on their own, a token whose
//! digest can no longer verify is not live, and a revocation is final.
//! Every change that succeeds appends its audit event in the same atomic
//! step (see `audit`), kept per account by the same count and age rules.
//!
//! **Seals.** With digest keys, a record carries its seal (`mac`, see
//! `token::RecordMac`), written by [`Store::seal`] right after Issue or
//! Rotate (whose times come from the store's clock) and returned with the
//! record. The store keeps it and never judges it: the service checks it
//! (a store cannot, without the key), and the limit counted inside the
//! store counts unsealed and tampered records too.
//!
//! **Tombstones.** Beside each token record the store keeps a tombstone
//! from Issue on: the token's account, digest, key id and times (never its
//! note, scopes or value), and once it ended, how and when (revoked,
//! rotated). It outlives the record by the store's tombstone TTL
//! (`PATD_TOMBSTONE_TTL`) after the token's end (its expiry, revocation,
//! or the close of its rotation grace window), so Introspect can say
//! *why* a presented token is inactive and List can show ended tokens.
//! Tombstones are never counted toward the limit and never make a token
//! live: only the record does. Audit events are not tombstones: they stay
//! by the audit policy, whatever happened to the token.

pub mod cache;
pub mod connection;
pub mod keys;
pub mod memory;
pub mod redis;

use std::future::Future;
use std::time::Duration;

use thiserror::Error;

use crate::audit::{Actor, AuditAction, AuditEvent, AuditPageRequest};
use crate::domain::{
    AccountId, Expiry, ExpiryRefusal, Note, Scopes, TokenId, TokenInfo, UnixMillis,
};
use crate::metrics;
use crate::token::{KeyId, LiveKeys, RecordFields, RecordMac, TokenDigest};

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
    /// A new token's record changed or vanished between its Issue (or
    /// Rotate) and its seal; it was not sealed.
    #[error("the new record of token {token_id} changed or vanished before it was sealed")]
    Unsealed { token_id: String },
}

/// How long a tombstone is kept after its token ended, unless configured
/// (`PATD_TOMBSTONE_TTL`).
pub const DEFAULT_TOMBSTONE_TTL: Duration = Duration::from_secs(30 * 86_400);

/// One token as stored: its public facts and the digest of its value.
#[derive(Debug, Clone)]
pub struct StoredToken {
    pub info: TokenInfo,
    pub digest: TokenDigest,
    /// The digest key that made `digest`; `None` for plain SHA-256.
    pub key_id: Option<KeyId>,
    /// Set once the token was rotated: when its grace window closes (at
    /// most its expiry). A rotated token does not count toward the limit
    /// and cannot be rotated again.
    pub rotated_at: Option<UnixMillis>,
    /// The record's seal (`mac`), as found; `None` when it has none (never
    /// sealed: issued without digest keys, or before seals existed). The
    /// service checks it (`TokenHasher::verify_seal`) before any decision.
    pub mac: Option<RecordMac>,
}

impl StoredToken {
    /// The fields its seal covers.
    pub fn sealed_fields(&self) -> RecordFields<'_> {
        RecordFields {
            token_id: &self.info.token_id,
            account_id: &self.info.account_id,
            scopes: &self.info.scopes,
            key_id: self.key_id.as_deref().unwrap_or_default(),
            created_at: self.info.created_at,
            expires_at: self.info.expires_at,
            digest: &self.digest,
        }
    }
}

/// How a token ended before its expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Revoked,
    Rotated,
}

/// What is kept of a token for the tombstone TTL after it ended (and, from
/// Issue on, while it lives): enough to recognise its value and say how it
/// ended, nothing to show (no note, no scopes).
#[derive(Debug, Clone)]
pub struct Tombstone {
    pub account_id: AccountId,
    pub digest: TokenDigest,
    /// The digest key that made `digest`; `None` for plain SHA-256.
    pub key_id: Option<KeyId>,
    pub created_at: UnixMillis,
    pub expires_at: UnixMillis,
    /// How and when it ended before its expiry; a rotation's instant is
    /// the close of its grace window, which may lie ahead.
    pub ended: Option<(Ending, UnixMillis)>,
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
    /// The fields its seal covers once issued at `created_at`.
    pub fn sealed_fields(
        &self,
        created_at: UnixMillis,
        expires_at: UnixMillis,
    ) -> RecordFields<'_> {
        RecordFields {
            token_id: &self.token_id,
            account_id: &self.account_id,
            scopes: &self.scopes,
            key_id: self.key_id.as_deref().unwrap_or_default(),
            created_at,
            expires_at,
            digest: &self.digest,
        }
    }

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

/// A token id's record, or without one its tombstone (either may be
/// missing), and the store's now, read together: whether the token has expired is decided
/// against this `now`, never a caller's clock.
#[derive(Debug, Clone)]
pub struct Found {
    pub token: Option<StoredToken>,
    pub tombstone: Option<Tombstone>,
    pub now: UnixMillis,
}

/// One token of a listing: its id, its record while it has one, and its
/// tombstone (read only for a listing that includes ended tokens).
#[derive(Debug, Clone)]
pub struct Entry {
    pub token_id: TokenId,
    pub token: Option<StoredToken>,
    pub tombstone: Option<Tombstone>,
}

/// An account's tokens as the store holds them, with the store's now; the
/// service decides which are live and in which state.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    pub entries: Vec<Entry>,
    pub now: UnixMillis,
}

/// A rotation to apply: the token it replaces and its successor.
#[derive(Debug, Clone)]
pub struct Rotation<'a> {
    /// The token being replaced (of `new.account_id`).
    pub old: &'a TokenId,
    /// The successor, with the note and scopes it inherits.
    pub new: &'a NewToken,
    /// The successor's expiry.
    pub expiry: Expiry,
    /// How long the old token stays active (capped at its expiry).
    pub grace: Duration,
}

/// What an atomic rotation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotateOutcome {
    /// The successor is stored; the old token ends at `previous_ends_at`
    /// (now, for no grace).
    Rotated {
        created_at: UnixMillis,
        expires_at: UnixMillis,
        previous_ends_at: UnixMillis,
    },
    /// The account holds no such live token; nothing was written.
    NotFound,
    /// The token was already rotated; nothing was written.
    Superseded,
    /// The successor's random id is taken; nothing was written.
    IdTaken,
    /// The successor's expiry is not acceptable at the store's now.
    Refused(ExpiryRefusal),
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
    /// tokens, refuses at `terms.limit` live ones, otherwise stores `token`
    /// and appends an `Issue` event by `actor` (only then).
    fn issue(
        &self,
        token: &NewToken,
        expiry: Expiry,
        terms: &IssueTerms<'_>,
        actor: &Actor,
    ) -> impl Future<Output = Result<IssueOutcome, StoreError>> + Send;

    /// The record of a token id, or, when it has none, its tombstone, with
    /// the store's now (an expired record may still be returned; the caller
    /// compares). A tombstone past its TTL is never returned.
    fn lookup(&self, token_id: &TokenId) -> impl Future<Output = Result<Found, StoreError>> + Send;

    /// Atomically: if `account` holds `rotation.old` live and not already
    /// rotated, stores the successor (whatever the limit: the old token no
    /// longer counts) and marks the old one to end after the grace window,
    /// and appends a `Rotate` event by `actor` naming the old id then the
    /// new one (only then).
    fn rotate(
        &self,
        rotation: &Rotation<'_>,
        terms: &IssueTerms<'_>,
        actor: &Actor,
    ) -> impl Future<Output = Result<RotateOutcome, StoreError>> + Send;

    /// Seals a token just issued (or rotated in): stores `mac` with its
    /// record, only if the record still exists with these `created_at`
    /// and `expires_at` (it never recreates a revoked or expired record).
    /// `true` when sealed. No audit event: the Issue's or Rotate's stands
    /// for it.
    fn seal(
        &self,
        token_id: &TokenId,
        created_at: UnixMillis,
        expires_at: UnixMillis,
        mac: &RecordMac,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Records a use at the store's now, only if the token still exists
    /// (never resurrects one) and its last recorded use is at least
    /// `min_interval` old.
    fn touch(
        &self,
        token_id: &TokenId,
        min_interval: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Revokes (removes) one token of an account, a token in its rotation
    /// grace window included, and marks its tombstone revoked; `true` only
    /// when it was live, and only then is an event by `actor` appended,
    /// named `action` (`Revoke` when asked by id, `RevokeToken` by value).
    fn revoke(
        &self,
        account: &AccountId,
        token_id: &TokenId,
        live_keys: &LiveKeys,
        actor: &Actor,
        action: AuditAction,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Removes every token of an account (marking their tombstones
    /// revoked) and appends a `RevokeAll` event by `actor` naming the live
    /// ones; returns the ids of those that were live.
    fn revoke_all(
        &self,
        account: &AccountId,
        live_keys: &LiveKeys,
        actor: &Actor,
    ) -> impl Future<Output = Result<Vec<TokenId>, StoreError>> + Send;

    /// The account's audit events newest first: at most `page.size + 1`
    /// (one more tells the caller another page follows), after
    /// `page.after`, none older than the retention on the store's clock.
    fn audit_events(
        &self,
        account: &AccountId,
        page: &AuditPageRequest,
    ) -> impl Future<Output = Result<Vec<AuditEvent>, StoreError>> + Send;

    /// The account's token records, in no particular order (expired ones
    /// may be among them); with `include_ended`, also every token the
    /// account still has a tombstone of, with that tombstone.
    fn list(
        &self,
        account: &AccountId,
        include_ended: bool,
    ) -> impl Future<Output = Result<Listing, StoreError>> + Send;

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
            // Set by the Redis store when its introspection cache answered.
            patd.cache_hit = tracing::field::Empty,
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
        actor: &Actor,
    ) -> Result<IssueOutcome, StoreError> {
        dispatch!(self, "issue", s => s.issue(token, expiry, terms, actor))
    }

    async fn lookup(&self, token_id: &TokenId) -> Result<Found, StoreError> {
        dispatch!(self, "lookup", s => s.lookup(token_id))
    }

    async fn rotate(
        &self,
        rotation: &Rotation<'_>,
        terms: &IssueTerms<'_>,
        actor: &Actor,
    ) -> Result<RotateOutcome, StoreError> {
        dispatch!(self, "rotate", s => s.rotate(rotation, terms, actor))
    }

    async fn seal(
        &self,
        token_id: &TokenId,
        created_at: UnixMillis,
        expires_at: UnixMillis,
        mac: &RecordMac,
    ) -> Result<bool, StoreError> {
        dispatch!(self, "seal", s => s.seal(token_id, created_at, expires_at, mac))
    }

    async fn touch(&self, token_id: &TokenId, min_interval: Duration) -> Result<(), StoreError> {
        dispatch!(self, "touch", s => s.touch(token_id, min_interval))
    }

    async fn revoke(
        &self,
        account: &AccountId,
        token_id: &TokenId,
        live_keys: &LiveKeys,
        actor: &Actor,
        action: AuditAction,
    ) -> Result<bool, StoreError> {
        dispatch!(self, "revoke", s => s.revoke(account, token_id, live_keys, actor, action))
    }

    async fn revoke_all(
        &self,
        account: &AccountId,
        live_keys: &LiveKeys,
        actor: &Actor,
    ) -> Result<Vec<TokenId>, StoreError> {
        dispatch!(self, "revoke_all", s => s.revoke_all(account, live_keys, actor))
    }

    async fn audit_events(
        &self,
        account: &AccountId,
        page: &AuditPageRequest,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        dispatch!(self, "audit_events", s => s.audit_events(account, page))
    }

    async fn list(&self, account: &AccountId, include_ended: bool) -> Result<Listing, StoreError> {
        dispatch!(self, "list", s => s.list(account, include_ended))
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
