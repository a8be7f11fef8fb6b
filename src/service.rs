//! The use cases: issue, introspect, revoke, revoke all, list, rotate,
//! revoke by value, and the audit trail of the changes (list audit
//! events). Transport code
//! calls these with validated domain types; this layer applies the rules
//! (limit, lifetime, digest check) and talks to the store. It never sees
//! protobuf or HTTP.
//!
//! It never reads the wall clock either: the store's clock decides when a
//! token was created, when it expires, whether it has expired and when it
//! was last used (see `store::Store`), so patd instances whose clocks
//! disagree still give one answer. `Instant` here only measures latency
//! and the undo's patience. (`UnixMillis::now()` is left to the memory
//! store's start, and to certificate-expiry warnings in `reload`, which
//! are about the wall clock by nature.)

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::audit::{Actor, AuditAction, AuditEvent, AuditPageRequest, EventId, RequestId};
use crate::domain::{
    AccountId, Expiry, ExpiryRequest, FieldError, LifetimePolicy, ListCursor, ListedToken, Note,
    PageRequest, RevocationReason, Scopes, TokenId, TokenInfo, TokenState, UnixMillis,
    rotation_grace,
};
use crate::metrics;
use crate::store::{
    Ending, Found, IssueOutcome, IssueTerms, NewToken, RotateOutcome, Rotation, Store, StoreError,
    StoredToken, Tombstone,
};
use crate::token::{ParseError, PlainToken, TokenDigest, TokenFormat, TokenHasher};

/// Last-use times are written at most this often per token, so Introspect
/// stays one read on the hot path.
const TOUCH_INTERVAL: Duration = Duration::from_secs(60);

/// How many more times a failed Issue's undo asks after "no such token".
const UNDO_CONFIRMATIONS: u32 = 2;

/// How long a failed Issue's undo keeps retrying.
const UNDO_PATIENCE: Duration = Duration::from_secs(60);

/// Fresh ids per Issue before giving up on random-id collisions.
const ISSUE_ATTEMPTS: usize = 3;

/// What went wrong, named for what the caller should do next.
#[derive(Debug, Error)]
pub enum ServiceError {
    /// Fix the named field; nothing was written.
    #[error(transparent)]
    InvalidArgument(#[from] FieldError),
    /// Revoke a token first.
    #[error("the account already holds its limit of {limit} live tokens")]
    LimitReached { limit: u32 },
    /// Nothing to act on.
    #[error("the account holds no such live token")]
    NotFound,
    /// Rotate the successor instead: this token was already rotated.
    #[error("the token was already rotated: rotate its successor")]
    AlreadyRotated,
    /// Revoke tokens or give Redis more memory; nothing was written.
    #[error("the token store is full: revoke tokens or raise Redis's maxmemory")]
    StoreFull,
    /// Try again later; the store could not answer.
    #[error("the token store is unavailable")]
    Unavailable(#[source] StoreError),
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Full => Self::StoreFull,
            e => Self::Unavailable(e),
        }
    }
}

/// Server-wide rules for tokens.
#[derive(Debug, Clone)]
pub struct Rules {
    pub format: TokenFormat,
    pub hasher: TokenHasher,
    pub max_tokens_per_account: u32,
    pub lifetime: LifetimePolicy,
    /// Longest grace window a Rotate may give (`PATD_MAX_ROTATION_GRACE`).
    pub max_rotation_grace: Duration,
    /// With digest keys, whether a record without any seal (issued before
    /// seals existed) is still accepted (`PATD_ACCEPT_UNSEALED`, for an
    /// upgrade); a record with a wrong seal never is.
    pub accept_unsealed: bool,
}

/// A validated Issue request.
#[derive(Debug)]
pub struct IssueCommand {
    pub account: AccountId,
    pub note: Note,
    pub scopes: Scopes,
    pub expiry: ExpiryRequest,
}

/// A freshly issued token: the only time its value exists outside the
/// caller's hands.
#[derive(Debug)]
pub struct Issued {
    pub token: PlainToken,
    pub info: TokenInfo,
}

/// A validated Rotate request (the grace window is checked against the
/// rules here, as `PATD_MAX_ROTATION_GRACE` is a rule).
#[derive(Debug)]
pub struct RotateCommand {
    pub account: AccountId,
    pub token_id: TokenId,
    /// The grace window as sent (seconds, nanos); unset is 0.
    pub grace: (i64, i32),
    /// `Default` means the old token's lifetime length, from now.
    pub expiry: ExpiryRequest,
}

/// A rotation done: the successor (the only time its value exists outside
/// the caller's hands) and when the old token stops being active.
#[derive(Debug)]
pub struct Rotated {
    pub token: PlainToken,
    pub info: TokenInfo,
    pub previous_expires_at: UnixMillis,
}

/// One page of a List.
#[derive(Debug)]
pub struct Page {
    pub tokens: Vec<ListedToken>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<ListCursor>,
}

/// One page of an account's audit trail.
#[derive(Debug)]
pub struct AuditPage {
    /// Newest first.
    pub events: Vec<AuditEvent>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<EventId>,
}

/// A live token as the store saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Live {
    pub info: TokenInfo,
    /// Its lifetime left, on the store's clock (a gateway may cache an
    /// allow this long at most).
    pub remaining: Duration,
}

/// The answer to "is this token good?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Introspection {
    Active(Live),
    Inactive(Inactive),
}

/// Why a token is inactive: told to callers (Introspect's `reason`,
/// forward-auth's `error_description` and `X-Patd-Reason`, ext_authz's
/// denial). `Expired`, `Revoked` and `Rotated` only when the presented
/// value matched the kept digest, so a guessed id learns nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inactive {
    Malformed,
    Unknown,
    Expired,
    Revoked,
    Rotated,
}

impl Inactive {
    pub fn as_str(self) -> &'static str {
        match self {
            Inactive::Malformed => "malformed",
            Inactive::Unknown => "unknown",
            Inactive::Expired => "expired",
            Inactive::Revoked => "revoked",
            Inactive::Rotated => "rotated",
        }
    }
}

/// A token's state and when it ended (or, rotating, will end), from its
/// record and tombstone at the store's `now`: the one rule that Introspect,
/// RevokeToken and List share. `None` when neither says anything true
/// about it (no record, and a tombstone of a token that has not ended:
/// its record was removed by other means).
fn lifecycle(
    token: Option<&StoredToken>,
    tombstone: Option<&Tombstone>,
    now: UnixMillis,
) -> Option<(TokenState, Option<UnixMillis>)> {
    if let Some(t) = token {
        let expires = t.info.expires_at;
        return Some(match t.rotated_at {
            Some(end) if end > now && expires > now => (TokenState::Rotating, Some(end)),
            Some(end) => (TokenState::Rotated, Some(end)),
            None if expires > now => (TokenState::Active, None),
            None => (TokenState::Expired, Some(expires)),
        });
    }
    let t = tombstone?;
    match t.ended {
        Some((Ending::Revoked, at)) => Some((TokenState::Revoked, Some(at))),
        Some((Ending::Rotated, at)) if at <= now => Some((TokenState::Rotated, Some(at))),
        // Still in its grace window, yet the record is gone: unknown.
        Some((Ending::Rotated, _)) => None,
        None if t.expires_at <= now => Some((TokenState::Expired, Some(t.expires_at))),
        None => None,
    }
}

impl From<ParseError> for Inactive {
    fn from(_: ParseError) -> Self {
        Inactive::Malformed
    }
}

/// A gateway's answer: let the request through, or why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// A live token holding every required scope.
    Allow(Live),
    /// No credential was presented.
    Missing,
    /// A credential that is not a live token of ours.
    Invalid(Inactive),
    /// A live token without some required scope.
    InsufficientScope(TokenInfo),
}

impl Decision {
    fn label(&self) -> &'static str {
        match self {
            Decision::Allow(_) => "allow",
            Decision::Missing => "deny_missing",
            Decision::Invalid(Inactive::Malformed) => "deny_malformed",
            Decision::Invalid(Inactive::Unknown) => "deny_unknown",
            Decision::Invalid(Inactive::Expired) => "deny_expired",
            Decision::Invalid(Inactive::Revoked) => "deny_revoked",
            Decision::Invalid(Inactive::Rotated) => "deny_rotated",
            Decision::InsufficientScope(_) => "deny_scope",
        }
    }
}

/// Most token ids remembered as already warned about (unsealed records
/// accepted under `PATD_ACCEPT_UNSEALED`); past it the memory starts over.
const UNSEALED_WARNED_MAX: usize = 4096;

/// The token use cases over one store.
#[derive(Clone)]
pub struct Tokens<S> {
    store: S,
    rules: Rules,
    /// Token ids whose unsealed record was accepted and warned about: each
    /// gets one warning, later acceptances are at debug.
    unsealed_warned: Arc<Mutex<HashSet<TokenId>>>,
}

impl<S: Store> Tokens<S> {
    pub fn new(store: S, rules: Rules) -> Self {
        Self {
            store,
            rules,
            unsealed_warned: Arc::default(),
        }
    }

    /// Whether a record's seal holds, the check before any decision on a
    /// record: with digest keys, its `mac` must seal every field a
    /// decision uses (`token::RecordFields`) under its own key. A record
    /// that fails is as if it did not exist (the caller learns only
    /// "unknown", never which check failed) and is logged as tampered
    /// with its public id. Without keys there is no secret to seal with:
    /// every record passes (README: record integrity needs
    /// `PATD_TOKEN_HASH_KEYS`).
    fn intact(&self, rpc: &'static str, token: &StoredToken) -> bool {
        let hasher = &self.rules.hasher;
        if !hasher.is_keyed() {
            return true;
        }
        let token_id = token.info.token_id.as_str();
        match &token.mac {
            Some(mac) if hasher.verify_seal(&token.sealed_fields(), mac) => true,
            None if self.rules.accept_unsealed => {
                let first = {
                    let mut warned = self
                        .unsealed_warned
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    if warned.len() >= UNSEALED_WARNED_MAX {
                        warned.clear();
                    }
                    warned.insert(token.info.token_id.clone())
                };
                if first {
                    tracing::warn!(
                        rpc,
                        token_id,
                        "accepted an unsealed token record (PATD_ACCEPT_UNSEALED): rotate or revoke this token"
                    );
                } else {
                    tracing::debug!(rpc, token_id, "accepted an unsealed token record");
                }
                true
            }
            mac => {
                tracing::warn!(
                    rpc,
                    token_id,
                    sealed = mac.is_some(),
                    "tampered token record: its seal does not match; treated as unknown"
                );
                metrics::record_tampered(rpc);
                false
            }
        }
    }

    /// Seals a token just written by Issue or Rotate; the token's value
    /// may reach the caller only once this answered `Ok`. Without digest
    /// keys there is nothing to seal with and nothing is sent.
    async fn seal(
        &self,
        token: &NewToken,
        created_at: UnixMillis,
        expires_at: UnixMillis,
    ) -> Result<(), StoreError> {
        let Some(mac) = self
            .rules
            .hasher
            .seal(&token.sealed_fields(created_at, expires_at))
        else {
            return Ok(());
        };
        match self
            .store
            .seal(&token.token_id, created_at, expires_at, &mac)
            .await?
        {
            true => Ok(()),
            false => Err(StoreError::Unsealed {
                token_id: token.token_id.as_str().to_owned(),
            }),
        }
    }

    /// Issues a token.
    ///
    /// # Errors
    /// `InvalidArgument` for an expiry outside the policy, `LimitReached`,
    /// `Unavailable`.
    pub async fn issue(&self, caller: &str, cmd: IssueCommand) -> Result<Issued, ServiceError> {
        let log = RpcLog::start("Issue", Some(caller));
        let actor = log.actor();
        let account = cmd.account.clone();
        let result = self.issue_inner(cmd, &actor).await;
        if result.is_ok() {
            metrics::token_issued();
        }
        let token_id = result.as_ref().ok().map(|i| &i.info.token_id);
        if let Some(id) = token_id {
            crate::audit::log_event(
                AuditAction::Issue,
                &account,
                std::slice::from_ref(id),
                &actor,
            );
        }
        log.account(Some(&account))
            .token_id(token_id)
            .finish(result.as_ref().map(|_| "ok"));
        result
    }

    /// Logs a request refused before it reached a use case (a field that
    /// failed validation), so every refusal has its line too; returns the
    /// error to send.
    pub fn refuse(&self, rpc: &'static str, caller: &str, field: FieldError) -> ServiceError {
        let refused = ServiceError::InvalidArgument(field);
        RpcLog::start(rpc, Some(caller)).finish(Err(&refused));
        refused
    }

    /// A fresh token for `account` and what the store keeps of it: its
    /// digest under the current key, never the value.
    fn mint(&self, account: &AccountId, note: &Note, scopes: &Scopes) -> (PlainToken, NewToken) {
        let (token, parsed) = self.rules.format.generate(account);
        let (key_id, digest) = self.rules.hasher.for_new(token.expose(), &parsed.digest);
        let new = NewToken {
            token_id: parsed.token_id,
            account_id: account.clone(),
            note: note.clone(),
            scopes: scopes.clone(),
            digest,
            key_id,
        };
        (token, new)
    }

    async fn issue_inner(&self, cmd: IssueCommand, actor: &Actor) -> Result<Issued, ServiceError> {
        let lifetime = self.rules.lifetime;
        let expiry = lifetime.request(cmd.expiry)?;
        let live_keys = self.rules.hasher.live_keys();
        let terms = IssueTerms {
            limit: self.rules.max_tokens_per_account,
            max_ttl: lifetime.max_ttl,
            live_keys: &live_keys,
        };
        for _ in 0..ISSUE_ATTEMPTS {
            let (token, new) = self.mint(&cmd.account, &cmd.note, &cmd.scopes);
            let outcome = match self.store.issue(&new, expiry, &terms, actor).await {
                Ok(outcome) => outcome,
                // Refused whole before any write: nothing to undo.
                Err(StoreError::Full) => return Err(ServiceError::StoreFull),
                Err(e) => {
                    self.undo_issue(&new, None, actor);
                    return Err(e.into());
                }
            };
            match outcome {
                IssueOutcome::Issued {
                    created_at,
                    expires_at,
                } => {
                    // Nobody may hold a value whose record is unsealed: a
                    // seal that failed undoes the Issue like a lost one.
                    if let Err(e) = self.seal(&new, created_at, expires_at).await {
                        self.undo_issue(&new, None, actor);
                        return Err(e.into());
                    }
                    return Ok(Issued {
                        token,
                        info: new.info(created_at, expires_at),
                    });
                }
                IssueOutcome::LimitReached => {
                    return Err(ServiceError::LimitReached { limit: terms.limit });
                }
                IssueOutcome::Refused(why) => return Err(lifetime.refused(expiry, why).into()),
                IssueOutcome::IdTaken => continue,
            }
        }
        Err(ServiceError::Unavailable(StoreError::Contended))
    }

    /// A failed or timed-out Issue may still have been applied by the store
    /// (a timeout does not cancel a Redis script, and the script may run
    /// once a paused Redis resumes). Nobody saw that token's value, so it is
    /// removed, lest it hold a slot until expiry: the revoke is retried with
    /// back-off until the store gives a definite answer (revoked, or no such
    /// token), for at most `UNDO_PATIENCE`.
    ///
    /// The audit trail then shows both steps: the Issue's event (or, for a
    /// Rotate, which `replaced` names, the Rotate's; written with the
    /// token, if it landed) and a Revoke event by the same caller with the
    /// same request id (written by the undo's revocation, only if it
    /// removed the token).
    fn undo_issue(&self, token: &NewToken, replaced: Option<&TokenId>, actor: &Actor) {
        let store = self.store.clone();
        let actor = actor.clone();
        let replaced = replaced.cloned();
        let rpc = if replaced.is_some() {
            "Rotate"
        } else {
            "Issue"
        };
        let account = token.account_id.clone();
        let token_id = token.token_id.clone();
        let live_keys = self.rules.hasher.live_keys();
        tokio::spawn(async move {
            let deadline = Instant::now() + UNDO_PATIENCE;
            let mut pause = Duration::from_millis(100);
            // "No such token" may only mean the Issue has not run yet (it can
            // still be on its way over a connection that is being replaced),
            // so it is asked again before the undo rests.
            let mut absent = 0;
            loop {
                let revoked =
                    store.revoke(&account, &token_id, &live_keys, &actor, AuditAction::Revoke);
                match revoked.await {
                    Ok(false) if absent < UNDO_CONFIRMATIONS => {
                        absent += 1;
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                    Ok(landed) => {
                        if landed {
                            // The Issue did land (its event is in the trail
                            // though its RPC failed): both get their line.
                            let ids = [token_id.clone()];
                            match &replaced {
                                Some(old) => {
                                    let both = [old.clone(), token_id.clone()];
                                    crate::audit::log_event(
                                        AuditAction::Rotate,
                                        &account,
                                        &both,
                                        &actor,
                                    );
                                }
                                None => {
                                    crate::audit::log_event(
                                        AuditAction::Issue,
                                        &account,
                                        &ids,
                                        &actor,
                                    );
                                }
                            }
                            crate::audit::log_event(AuditAction::Revoke, &account, &ids, &actor);
                        }
                        metrics::tokens_revoked("undo", u64::from(landed));
                        tracing::info!(
                            account_id = account.as_str(),
                            token_id = token_id.as_str(),
                            request_id = actor.request_id.as_str(),
                            landed,
                            "undid a failed {rpc}"
                        );
                        return;
                    }
                    Err(e) if Instant::now() >= deadline => {
                        tracing::error!(
                            account_id = account.as_str(),
                            token_id = token_id.as_str(),
                            error = %crate::telemetry::error_chain(&e),
                            "could not undo a failed {rpc}; revoke this token id by hand"
                        );
                        return;
                    }
                    Err(_) => {
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(2));
                    }
                }
            }
        });
    }

    /// Checks a presented token value. Anything that is not a live token of
    /// ours is `Inactive`; only a store failure is an error.
    ///
    /// # Errors
    /// `Unavailable`: the caller must deny, never guess.
    pub async fn introspect(&self, presented: &str) -> Result<Introspection, ServiceError> {
        let log = RpcLog::start("Introspect", None);
        let (token_id, result) = self.introspect_inner(presented).await;
        let (account, label) = match &result {
            Ok(Introspection::Active(live)) => (Some(&live.info.account_id), "active"),
            Ok(Introspection::Inactive(why)) => (None, why.as_str()),
            Err(_) => (None, ""),
        };
        log.account(account)
            .token_id(token_id.as_ref())
            .finish(result.as_ref().map(|_| label));
        result
    }

    /// The gateway decision (forward-auth, ext_authz): the same check as
    /// Introspect, plus the scopes the route requires. `rpc` names the
    /// caller in the log line.
    ///
    /// # Errors
    /// `Unavailable`: the gateway must deny, never guess.
    pub async fn authorize(
        &self,
        rpc: &'static str,
        presented: Option<&str>,
        required: &Scopes,
    ) -> Result<Decision, ServiceError> {
        let log = RpcLog::start(rpc, None);
        let (token_id, result) = match presented {
            None => (None, Ok(Decision::Missing)),
            Some(value) => {
                let (token_id, result) = self.introspect_inner(value).await;
                let decision = result.map(|answer| match answer {
                    Introspection::Active(live) if live.info.scopes.contains_all(required) => {
                        Decision::Allow(live)
                    }
                    Introspection::Active(live) => Decision::InsufficientScope(live.info),
                    Introspection::Inactive(why) => Decision::Invalid(why),
                });
                (token_id, decision)
            }
        };
        let (account, label) = match &result {
            Ok(d @ (Decision::Allow(Live { info, .. }) | Decision::InsufficientScope(info))) => {
                (Some(&info.account_id), d.label())
            }
            Ok(d) => (None, d.label()),
            Err(_) => (None, ""),
        };
        log.account(account)
            .token_id(token_id.as_ref())
            .finish(result.as_ref().map(|_| label));
        result
    }

    async fn introspect_inner(
        &self,
        presented: &str,
    ) -> (Option<TokenId>, Result<Introspection, ServiceError>) {
        let parsed = match self.rules.format.parse(presented) {
            Ok(p) => p,
            Err(e) => return (None, Ok(Introspection::Inactive(e.into()))),
        };
        let found = match self.store.lookup(&parsed.token_id).await {
            Ok(found) => found,
            Err(e) => return (Some(parsed.token_id), Err(e.into())),
        };
        let Found {
            token,
            tombstone,
            now,
        } = found;
        let verifies = |digest: &TokenDigest, key_id: Option<&str>| -> bool {
            self.rules
                .hasher
                .verify(presented, &parsed.digest, key_id, digest)
        };
        // A record whose seal fails is as if absent (checked before the
        // digest, so a rewritten digest is reported too); its tombstone,
        // not read while a record exists, says nothing either.
        let token = token.filter(|t| self.intact("Introspect", t));
        // Only a record or tombstone the presented value matches tells
        // anything: a guessed id with a wrong secret stays unknown.
        let token = token.filter(|t| verifies(&t.digest, t.key_id.as_deref()));
        let tombstone = tombstone.filter(|t| verifies(&t.digest, t.key_id.as_deref()));
        // Expired on the store's clock, not this instance's.
        let answer = match (lifecycle(token.as_ref(), tombstone.as_ref(), now), token) {
            (Some((TokenState::Active | TokenState::Rotating, ends)), Some(token)) => {
                self.maybe_touch(&token.info, now);
                let end = ends.unwrap_or(token.info.expires_at);
                Introspection::Active(Live {
                    info: token.info,
                    remaining: Duration::from_millis(end.0.saturating_sub(now.0)),
                })
            }
            (Some((TokenState::Expired, _)), _) => Introspection::Inactive(Inactive::Expired),
            (Some((TokenState::Revoked, _)), _) => Introspection::Inactive(Inactive::Revoked),
            (Some((TokenState::Rotated, _)), _) => Introspection::Inactive(Inactive::Rotated),
            _ => Introspection::Inactive(Inactive::Unknown),
        };
        (Some(parsed.token_id), Ok(answer))
    }

    /// Records the use in the background, at most once per interval: a
    /// lost last-used time is harmless, a slower Introspect is not. `now`
    /// is the store's, read with the record.
    fn maybe_touch(&self, info: &TokenInfo, now: UnixMillis) {
        let fresh = info
            .last_used_at
            .is_some_and(|t| now.0.saturating_sub(t.0) < TOUCH_INTERVAL.as_millis() as u64);
        if fresh {
            return;
        }
        let store = self.store.clone();
        let token_id = info.token_id.clone();
        // Under the request's span, so its store span joins the trace.
        let touch = async move {
            if let Err(e) = store.touch(&token_id, TOUCH_INTERVAL).await {
                tracing::debug!(token_id = token_id.as_str(), error = %e, "last-used update failed");
            }
        };
        tokio::spawn(tracing::Instrument::in_current_span(touch));
    }

    /// Revokes one token of an account.
    ///
    /// # Errors
    /// `NotFound` when the account holds no such live token, `Unavailable`.
    pub async fn revoke(
        &self,
        caller: &str,
        account: AccountId,
        token_id: TokenId,
    ) -> Result<(), ServiceError> {
        let log = RpcLog::start("Revoke", Some(caller));
        let actor = log.actor();
        // An id with another shard tag cannot be this account's: answer
        // without a round trip (in Redis Cluster it would also cross slots).
        let result = if token_id.shard_tag() != account.shard_tag() {
            Err(ServiceError::NotFound)
        } else {
            let live_keys = self.rules.hasher.live_keys();
            match self
                .store
                .revoke(&account, &token_id, &live_keys, &actor, AuditAction::Revoke)
                .await
            {
                Ok(true) => {
                    metrics::tokens_revoked("revoke", 1);
                    let ids = [token_id.clone()];
                    crate::audit::log_event(AuditAction::Revoke, &account, &ids, &actor);
                    Ok(())
                }
                Ok(false) => Err(ServiceError::NotFound),
                Err(e) => Err(e.into()),
            }
        };
        log.account(Some(&account))
            .token_id(Some(&token_id))
            .finish(result.as_ref().map(|_| "ok"));
        result
    }

    /// Revokes every token of an account, live or not; returns how many
    /// were live (unexpired, and verifiable with the configured keys).
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn revoke_all(&self, caller: &str, account: AccountId) -> Result<u32, ServiceError> {
        let mut log = RpcLog::start("RevokeAll", Some(caller));
        let actor = log.actor();
        let result = match self
            .store
            .revoke_all(&account, &self.rules.hasher.live_keys(), &actor)
            .await
        {
            Ok(ids) => {
                crate::audit::log_event(AuditAction::RevokeAll, &account, &ids, &actor);
                Ok(u32::try_from(ids.len()).unwrap_or(u32::MAX))
            }
            Err(e) => Err(ServiceError::from(e)),
        };
        log.revoked = result.as_ref().ok().copied();
        if let Some(n) = log.revoked {
            metrics::tokens_revoked("revoke_all", u64::from(n));
        }
        log.account(Some(&account))
            .finish(result.as_ref().map(|_| "ok"));
        result
    }

    /// One page of the account's live tokens (with `include_inactive`,
    /// also those ended within the tombstone TTL), newest first (then by
    /// id), and the cursor of the next page if there is one.
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn list(
        &self,
        caller: &str,
        account: AccountId,
        page: PageRequest,
        include_inactive: bool,
    ) -> Result<Page, ServiceError> {
        let log = RpcLog::start("List", Some(caller));
        let live_keys = self.rules.hasher.live_keys();
        let result = self
            .store
            .list(&account, include_inactive)
            .await
            .map(|listing| {
                let now = listing.now;
                let mut tokens: Vec<ListedToken> = listing
                    .entries
                    .into_iter()
                    .filter_map(|entry| {
                        // A record or tombstone whose key is gone can never
                        // verify: as if it did not exist.
                        let token = entry
                            .token
                            .filter(|t| live_keys.admits(t.key_id.as_deref()))
                            .filter(|t| self.intact("List", t));
                        let tombstone = entry
                            .tombstone
                            .filter(|t| live_keys.admits(t.key_id.as_deref()));
                        let (state, ended_at) = lifecycle(token.as_ref(), tombstone.as_ref(), now)?;
                        if !state.is_live() && !include_inactive {
                            return None;
                        }
                        let info = match (token, tombstone) {
                            (Some(t), _) => t.info,
                            (None, Some(t)) => TokenInfo {
                                token_id: entry.token_id,
                                account_id: t.account_id,
                                note: Note::default(),
                                scopes: Scopes::default(),
                                created_at: t.created_at,
                                expires_at: t.expires_at,
                                last_used_at: None,
                            },
                            (None, None) => return None,
                        };
                        Some(ListedToken {
                            info,
                            state,
                            ended_at,
                        })
                    })
                    .collect();
                // Both stores return the same set; the order is decided here.
                tokens.sort_by(|a, b| {
                    b.info
                        .created_at
                        .cmp(&a.info.created_at)
                        .then_with(|| a.info.token_id.cmp(&b.info.token_id))
                });
                let mut rest = tokens
                    .into_iter()
                    .filter(|t| page.after.as_ref().is_none_or(|c| c.precedes(&t.info)));
                let tokens: Vec<ListedToken> = rest.by_ref().take(page.size).collect();
                let next = match (rest.next(), tokens.last()) {
                    (Some(_), Some(last)) => Some(ListCursor::after(&last.info)),
                    _ => None,
                };
                Page { tokens, next }
            })
            .map_err(ServiceError::from);
        log.account(Some(&account))
            .finish(result.as_ref().map(|_| "ok"));
        result
    }

    /// One page of the account's audit trail, newest first, and the cursor
    /// of the next page if there is one.
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn list_audit_events(
        &self,
        caller: &str,
        account: AccountId,
        page: AuditPageRequest,
    ) -> Result<AuditPage, ServiceError> {
        let log = RpcLog::start("ListAuditEvents", Some(caller));
        let result = self
            .store
            .audit_events(&account, &page)
            .await
            .map(|mut events| {
                // The store gives one more than asked when more follow.
                let more = events.len() > page.size;
                events.truncate(page.size);
                let next = match (more, events.last()) {
                    (true, Some(last)) => Some(last.id),
                    _ => None,
                };
                AuditPage { events, next }
            })
            .map_err(ServiceError::from);
        log.account(Some(&account))
            .finish(result.as_ref().map(|_| "ok"));
        result
    }

    /// Replaces a live token with a successor that inherits its note and
    /// scopes; the old one stays active for the grace window (never past
    /// its expiry), then reads `Rotated`.
    ///
    /// # Errors
    /// `InvalidArgument` (a grace above `PATD_MAX_ROTATION_GRACE`, an
    /// expiry outside the policy), `NotFound`, `AlreadyRotated`,
    /// `Unavailable`.
    pub async fn rotate(&self, caller: &str, cmd: RotateCommand) -> Result<Rotated, ServiceError> {
        let log = RpcLog::start("Rotate", Some(caller));
        let actor = log.actor();
        let (account, old) = (cmd.account.clone(), cmd.token_id.clone());
        let result = self.rotate_inner(cmd, &actor).await;
        if let Ok(rotated) = &result {
            // A successor is issued; the old token ends with its window.
            metrics::token_issued();
            metrics::tokens_revoked("rotate", 1);
            let ids = [old.clone(), rotated.info.token_id.clone()];
            crate::audit::log_event(AuditAction::Rotate, &account, &ids, &actor);
        }
        log.account(Some(&account))
            .token_id(Some(&old))
            .successor(result.as_ref().ok().map(|r| &r.info.token_id))
            .finish(result.as_ref().map(|_| "ok"));
        result
    }

    async fn rotate_inner(
        &self,
        cmd: RotateCommand,
        actor: &Actor,
    ) -> Result<Rotated, ServiceError> {
        let (seconds, nanos) = cmd.grace;
        let grace = rotation_grace(seconds, nanos, self.rules.max_rotation_grace)?;
        let lifetime = self.rules.lifetime;
        // Checked before any read, like Issue: a bad field writes nothing.
        let requested = match cmd.expiry {
            ExpiryRequest::Default => None,
            other => Some(lifetime.request(other)?),
        };
        if cmd.token_id.shard_tag() != cmd.account.shard_tag() {
            return Err(ServiceError::NotFound);
        }
        // Note, scopes and lifetime never change, so reading them ahead of
        // the atomic step is safe; the script re-checks everything else.
        let Found {
            token, tombstone, ..
        } = self.store.lookup(&cmd.token_id).await?;
        // A tampered record must not hand its forged scopes or lifetime to
        // a successor that would be sealed: not found.
        let token = token.filter(|t| self.intact("Rotate", t));
        let Some(old) = token.filter(|t| t.info.account_id == cmd.account) else {
            let rotated = tombstone.is_some_and(|t| {
                t.account_id == cmd.account && matches!(t.ended, Some((Ending::Rotated, _)))
            });
            return Err(if rotated {
                ServiceError::AlreadyRotated
            } else {
                ServiceError::NotFound
            });
        };
        let expiry = match requested {
            Some(expiry) => expiry,
            None => {
                // The lifetime the old token was issued with, from now.
                let length = old.info.expires_at.0.saturating_sub(old.info.created_at.0);
                let max = u64::try_from(lifetime.max_ttl.as_millis()).unwrap_or(u64::MAX);
                Expiry::AfterMillis(length.clamp(1, max))
            }
        };
        let live_keys = self.rules.hasher.live_keys();
        let terms = IssueTerms {
            limit: self.rules.max_tokens_per_account,
            max_ttl: lifetime.max_ttl,
            live_keys: &live_keys,
        };
        for _ in 0..ISSUE_ATTEMPTS {
            let (token, new) = self.mint(&cmd.account, &old.info.note, &old.info.scopes);
            let rotation = Rotation {
                old: &cmd.token_id,
                new: &new,
                expiry,
                grace,
            };
            let outcome = match self.store.rotate(&rotation, &terms, actor).await {
                Ok(outcome) => outcome,
                Err(StoreError::Full) => return Err(ServiceError::StoreFull),
                Err(e) => {
                    // The rotation may still land: its successor's value was
                    // never shown, so it must not live on.
                    self.undo_issue(&new, Some(&cmd.token_id), actor);
                    return Err(e.into());
                }
            };
            match outcome {
                RotateOutcome::Rotated {
                    created_at,
                    expires_at,
                    previous_ends_at,
                } => {
                    if let Err(e) = self.seal(&new, created_at, expires_at).await {
                        self.undo_issue(&new, Some(&cmd.token_id), actor);
                        return Err(e.into());
                    }
                    return Ok(Rotated {
                        token,
                        info: new.info(created_at, expires_at),
                        previous_expires_at: previous_ends_at,
                    });
                }
                RotateOutcome::NotFound => return Err(ServiceError::NotFound),
                RotateOutcome::Superseded => return Err(ServiceError::AlreadyRotated),
                RotateOutcome::Refused(why) => return Err(lifetime.refused(expiry, why).into()),
                RotateOutcome::IdTaken => continue,
            }
        }
        Err(ServiceError::Unavailable(StoreError::Contended))
    }

    /// Revokes a token by its value, whichever account holds it (a leaked
    /// token: the responder has the value, not the account and id). The
    /// value's digest must match the record's (constant time); `reason`
    /// goes to the log line, with any copy of the value in it redacted.
    /// The revocation appends a `RevokeToken` event (the token id and the
    /// caller) in the same atomic step; the free-text reason is not in the
    /// event, so nothing a caller types is stored in Redis. Returns the
    /// account and id of the revoked token.
    ///
    /// # Errors
    /// `InvalidArgument` (field `token`) for a value that is not of this
    /// format; `NotFound` for anything but a live token; `Unavailable`.
    pub async fn revoke_token(
        &self,
        caller: &str,
        presented: &str,
        reason: RevocationReason,
    ) -> Result<(AccountId, TokenId), ServiceError> {
        let mut log = RpcLog::start("RevokeToken", Some(caller));
        let actor = log.actor();
        let reason = reason.redacting(presented);
        log.reason = Some(reason.as_str());
        let result = self.revoke_token_inner(presented, &actor).await;
        let (account, token_id) = match &result {
            Ok((account, id)) => {
                metrics::tokens_revoked("revoke_token", 1);
                let ids = std::slice::from_ref(id);
                crate::audit::log_event(AuditAction::RevokeToken, account, ids, &actor);
                (Some(account), Some(id))
            }
            Err(_) => (None, None),
        };
        log.account(account)
            .token_id(token_id)
            .finish(result.as_ref().map(|_| "ok"));
        result
    }

    async fn revoke_token_inner(
        &self,
        presented: &str,
        actor: &Actor,
    ) -> Result<(AccountId, TokenId), ServiceError> {
        let parsed = self
            .rules
            .format
            .parse(presented)
            .map_err(|e| FieldError::new("token", format!("is not a token: {e}")))?;
        let Found { token, now, .. } = self.store.lookup(&parsed.token_id).await?;
        // A tampered record's account cannot be trusted: it is no live
        // token (Revoke by its id still deletes it).
        let token = token.filter(|t| self.intact("RevokeToken", t));
        let token = token.filter(|t| {
            self.rules
                .hasher
                .verify(presented, &parsed.digest, t.key_id.as_deref(), &t.digest)
        });
        let live = lifecycle(token.as_ref(), None, now).is_some_and(|(state, _)| state.is_live());
        let Some(token) = token.filter(|_| live) else {
            return Err(ServiceError::NotFound);
        };
        let account = token.info.account_id;
        let live_keys = self.rules.hasher.live_keys();
        match self
            .store
            .revoke(
                &account,
                &parsed.token_id,
                &live_keys,
                actor,
                AuditAction::RevokeToken,
            )
            .await?
        {
            true => Ok((account, parsed.token_id)),
            false => Err(ServiceError::NotFound),
        }
    }

    /// Whether the store answers (readiness).
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn ready(&self) -> Result<(), ServiceError> {
        Ok(self.store.ping().await?)
    }
}

fn error_label(e: &ServiceError) -> &'static str {
    match e {
        ServiceError::InvalidArgument(_) => "invalid_argument",
        ServiceError::LimitReached { .. } => "limit_reached",
        ServiceError::NotFound => "not_found",
        ServiceError::AlreadyRotated => "already_rotated",
        ServiceError::StoreFull => "store_full",
        ServiceError::Unavailable(_) => "unavailable",
    }
}

/// One log line per call: what, by whom (the caller's name, for
/// management calls), for which account, which token id (public), how it
/// ended and how long it took. Never the token value. A store failure is a
/// warning carrying its cause chain, which stays in the log. A management
/// call gets a fresh request id here, which its line and its audit events
/// carry. Token checks (Introspect, Check, ForwardAuth) log at DEBUG,
/// counted by metrics instead; the same outcome, token id and account id go
/// on the request's server span (`patd.outcome`, `patd.token_id`,
/// `patd.account_id`).
struct RpcLog<'a> {
    rpc: &'static str,
    caller: Option<&'a str>,
    request_id: Option<RequestId>,
    started: Instant,
    account: Option<&'a AccountId>,
    token_id: Option<&'a TokenId>,
    /// How many tokens a RevokeAll ended.
    revoked: Option<u32>,
    /// The successor's id, for a Rotate.
    successor: Option<&'a TokenId>,
    /// Why, for a RevokeToken (bounded like a note, value redacted).
    reason: Option<&'a str>,
}

impl<'a> RpcLog<'a> {
    fn start(rpc: &'static str, caller: Option<&'a str>) -> Self {
        Self {
            rpc,
            caller,
            // Only management calls (those with a caller) are audited: the
            // hot path makes no id.
            request_id: caller.map(|_| RequestId::new()),
            started: Instant::now(),
            account: None,
            token_id: None,
            revoked: None,
            successor: None,
            reason: None,
        }
    }

    /// Who is acting in this call, for its audit events.
    fn actor(&self) -> Actor {
        Actor {
            caller: self.caller.unwrap_or_default().into(),
            request_id: self.request_id.clone().unwrap_or_default(),
        }
    }

    fn successor(mut self, successor: Option<&'a TokenId>) -> Self {
        self.successor = successor;
        self
    }

    fn account(mut self, account: Option<&'a AccountId>) -> Self {
        self.account = account;
        self
    }

    fn token_id(mut self, token_id: Option<&'a TokenId>) -> Self {
        self.token_id = token_id;
        self
    }

    /// Writes the line: `outcome` is the success label, or the error.
    fn finish(self, outcome: Result<&'static str, &ServiceError>) {
        let RpcLog {
            rpc,
            caller,
            request_id,
            started,
            account,
            token_id,
            revoked,
            successor,
            reason,
        } = self;
        let successor = successor.map(TokenId::as_str);
        let latency_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let account_id = account.map(AccountId::as_str);
        let token_id = token_id.map(TokenId::as_str);
        let request_id = request_id.as_ref().map(RequestId::as_str);
        let label = match outcome {
            Ok(label) => label,
            Err(e) => error_label(e),
        };
        // The request's server span (if it is exported) carries the same
        // public facts as the line.
        let span = tracing::Span::current();
        if !span.is_disabled() {
            span.record("patd.outcome", label);
            if let Some(token_id) = token_id {
                span.record("patd.token_id", token_id);
            }
            if let Some(account_id) = account_id {
                span.record("patd.account_id", account_id);
            }
        }
        // Token checks are counted by metrics; their line is DEBUG.
        let hot = crate::telemetry::is_hot_path(rpc);
        match outcome {
            Err(ServiceError::Unavailable(cause)) => tracing::warn!(
                rpc,
                caller,
                request_id,
                account_id,
                token_id,
                outcome = label,
                latency_us,
                cause = %crate::telemetry::error_chain(cause),
                "rpc"
            ),
            _ => {
                // The refused field, when a field was refused.
                let field = match outcome {
                    Err(ServiceError::InvalidArgument(field)) => Some(field.field),
                    _ => None,
                };
                macro_rules! line {
                    ($level:ident) => {
                        tracing::$level!(
                            rpc,
                            caller,
                            request_id,
                            account_id,
                            token_id,
                            revoked,
                            successor,
                            reason,
                            outcome = label,
                            field,
                            latency_us,
                            "rpc"
                        )
                    };
                }
                match hot {
                    true => line!(debug),
                    false => line!(info),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: UnixMillis = UnixMillis(1_000_000);

    fn record(expires: u64, rotated: Option<u64>) -> StoredToken {
        let account = AccountId::parse("acct".into()).unwrap();
        let (_, parsed) = TokenFormat::new("pat").unwrap().generate(&account);
        StoredToken {
            info: TokenInfo {
                token_id: parsed.token_id,
                account_id: account,
                note: Note::default(),
                scopes: Scopes::default(),
                created_at: UnixMillis(0),
                expires_at: UnixMillis(expires),
                last_used_at: None,
            },
            digest: parsed.digest,
            key_id: None,
            rotated_at: rotated.map(UnixMillis),
            mac: None,
        }
    }

    fn tombstone(expires: u64, ended: Option<(Ending, u64)>) -> Tombstone {
        let t = record(expires, None);
        Tombstone {
            account_id: t.info.account_id,
            digest: t.digest,
            key_id: None,
            created_at: UnixMillis(0),
            expires_at: UnixMillis(expires),
            ended: ended.map(|(how, at)| (how, UnixMillis(at))),
        }
    }

    fn state(
        token: Option<StoredToken>,
        tomb: Option<Tombstone>,
    ) -> Option<(TokenState, Option<u64>)> {
        lifecycle(token.as_ref(), tomb.as_ref(), NOW).map(|(s, at)| (s, at.map(|t| t.0)))
    }

    #[test]
    fn a_record_decides_while_there_is_one() {
        let later = NOW.0 + 1;
        assert_eq!(
            state(Some(record(later, None)), None),
            Some((TokenState::Active, None))
        );
        assert_eq!(
            state(Some(record(later + 9, Some(later))), None),
            Some((TokenState::Rotating, Some(later)))
        );
        assert_eq!(
            state(Some(record(later, Some(NOW.0))), None),
            Some((TokenState::Rotated, Some(NOW.0)))
        );
        assert_eq!(
            state(Some(record(NOW.0, None)), None),
            Some((TokenState::Expired, Some(NOW.0)))
        );
        // A tombstone never overrides a live record.
        let revoked = tombstone(later, Some((Ending::Revoked, 5)));
        assert_eq!(
            state(Some(record(later, None)), Some(revoked)),
            Some((TokenState::Active, None))
        );
    }

    #[test]
    fn a_tombstone_tells_how_a_token_ended_and_never_makes_it_live() {
        let later = NOW.0 + 1;
        assert_eq!(
            state(None, Some(tombstone(later, Some((Ending::Revoked, 5))))),
            Some((TokenState::Revoked, Some(5)))
        );
        assert_eq!(
            state(None, Some(tombstone(later, Some((Ending::Rotated, NOW.0))))),
            Some((TokenState::Rotated, Some(NOW.0)))
        );
        assert_eq!(
            state(None, Some(tombstone(NOW.0, None))),
            Some((TokenState::Expired, Some(NOW.0)))
        );
        // Unended and unexpired, yet no record: nothing true to say.
        assert_eq!(state(None, Some(tombstone(later, None))), None);
        assert_eq!(
            state(None, Some(tombstone(later, Some((Ending::Rotated, later))))),
            None
        );
        assert_eq!(state(None, None), None);
    }
}
