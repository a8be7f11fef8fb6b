//! The use cases: issue, introspect, revoke, revoke all, list, and the
//! audit trail of the changes (list audit events). Transport code
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

use std::time::{Duration, Instant};

use thiserror::Error;

use crate::audit::{Actor, AuditAction, AuditEvent, AuditPageRequest, EventId, RequestId};
use crate::domain::{
    AccountId, ExpiryRequest, FieldError, LifetimePolicy, ListCursor, Note, PageRequest, Scopes,
    TokenId, TokenInfo, UnixMillis,
};
use crate::store::{Found, IssueOutcome, IssueTerms, NewToken, Store, StoreError};
use crate::token::{ParseError, PlainToken, TokenFormat, TokenHasher};

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

/// One page of a List.
#[derive(Debug)]
pub struct Page {
    pub tokens: Vec<TokenInfo>,
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

/// Why a token is inactive; for logs and metrics, never sent to callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inactive {
    Malformed,
    Unknown,
    Expired,
}

impl Inactive {
    pub fn as_str(self) -> &'static str {
        match self {
            Inactive::Malformed => "malformed",
            Inactive::Unknown => "unknown",
            Inactive::Expired => "expired",
        }
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
            Decision::InsufficientScope(_) => "deny_scope",
        }
    }
}

/// The token use cases over one store.
#[derive(Clone)]
pub struct Tokens<S> {
    store: S,
    rules: Rules,
}

impl<S: Store> Tokens<S> {
    pub fn new(store: S, rules: Rules) -> Self {
        Self { store, rules }
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
            let (token, parsed) = self.rules.format.generate(&cmd.account);
            let (key_id, digest) = self.rules.hasher.for_new(token.expose(), &parsed.digest);
            let new = NewToken {
                token_id: parsed.token_id,
                account_id: cmd.account.clone(),
                note: cmd.note.clone(),
                scopes: cmd.scopes.clone(),
                digest,
                key_id,
            };
            let outcome = match self.store.issue(&new, expiry, &terms, actor).await {
                Ok(outcome) => outcome,
                // Refused whole before any write: nothing to undo.
                Err(StoreError::Full) => return Err(ServiceError::StoreFull),
                Err(e) => {
                    self.undo_issue(&new, actor);
                    return Err(e.into());
                }
            };
            match outcome {
                IssueOutcome::Issued {
                    created_at,
                    expires_at,
                } => {
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
    /// The audit trail then shows both steps: the Issue's event (written
    /// with the token, if it landed) and a Revoke event by the same caller
    /// with the same request id (written by the undo's revocation, only if
    /// it removed the token).
    fn undo_issue(&self, token: &NewToken, actor: &Actor) {
        let store = self.store.clone();
        let actor = actor.clone();
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
                match store.revoke(&account, &token_id, &live_keys, &actor).await {
                    Ok(false) if absent < UNDO_CONFIRMATIONS => {
                        absent += 1;
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                    Ok(landed) => {
                        if landed {
                            // The Issue did land (its event is in the trail
                            // though its RPC failed): both get their line.
                            let ids = [token_id.clone()];
                            crate::audit::log_event(AuditAction::Issue, &account, &ids, &actor);
                            crate::audit::log_event(AuditAction::Revoke, &account, &ids, &actor);
                        }
                        tracing::info!(
                            account_id = account.as_str(),
                            token_id = token_id.as_str(),
                            request_id = actor.request_id.as_str(),
                            landed,
                            "undid a failed Issue"
                        );
                        return;
                    }
                    Err(e) if Instant::now() >= deadline => {
                        tracing::error!(
                            account_id = account.as_str(),
                            token_id = token_id.as_str(),
                            error = %crate::telemetry::error_chain(&e),
                            "could not undo a failed Issue; revoke this token id by hand"
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
        let answer = match found {
            Some(Found { token, .. })
                if !self.rules.hasher.verify(
                    presented,
                    &parsed.digest,
                    token.key_id.as_deref(),
                    &token.digest,
                ) =>
            {
                Introspection::Inactive(Inactive::Unknown)
            }
            // Expired on the store's clock, not this instance's.
            Some(Found { token, now }) if token.info.expires_at <= now => {
                Introspection::Inactive(Inactive::Expired)
            }
            Some(Found { token, now }) => {
                self.maybe_touch(&token.info, now);
                let left = token.info.expires_at.0.saturating_sub(now.0);
                Introspection::Active(Live {
                    info: token.info,
                    remaining: Duration::from_millis(left),
                })
            }
            None => Introspection::Inactive(Inactive::Unknown),
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
        tokio::spawn(async move {
            if let Err(e) = store.touch(&token_id, TOUCH_INTERVAL).await {
                tracing::debug!(token_id = token_id.as_str(), error = %e, "last-used update failed");
            }
        });
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
                .revoke(&account, &token_id, &live_keys, &actor)
                .await
            {
                Ok(true) => {
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
        log.account(Some(&account))
            .finish(result.as_ref().map(|_| "ok"));
        result
    }

    /// One page of the account's live tokens, newest first (then by id),
    /// and the cursor of the next page if there is one.
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn list(
        &self,
        caller: &str,
        account: AccountId,
        page: PageRequest,
    ) -> Result<Page, ServiceError> {
        let log = RpcLog::start("List", Some(caller));
        let result = self
            .store
            .list(&account, &self.rules.hasher.live_keys())
            .await
            .map(|mut tokens| {
                // Both stores return the same set; the order is decided here.
                tokens.sort_by(|a, b| {
                    b.created_at
                        .cmp(&a.created_at)
                        .then_with(|| a.token_id.cmp(&b.token_id))
                });
                let mut rest = tokens
                    .into_iter()
                    .filter(|t| page.after.as_ref().is_none_or(|c| c.precedes(t)));
                let tokens: Vec<TokenInfo> = rest.by_ref().take(page.size).collect();
                let next = match (rest.next(), tokens.last()) {
                    (Some(_), Some(last)) => Some(ListCursor::after(last)),
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
        ServiceError::StoreFull => "store_full",
        ServiceError::Unavailable(_) => "unavailable",
    }
}

/// One log line per call: what, by whom (the caller's name, for
/// management calls), for which account, which token id (public), how it
/// ended and how long it took. Never the token value. A store failure is a
/// warning carrying its cause chain, which stays in the log. A management
/// call gets a fresh request id here, which its line and its audit events
/// carry.
struct RpcLog<'a> {
    rpc: &'static str,
    caller: Option<&'a str>,
    request_id: Option<RequestId>,
    started: Instant,
    account: Option<&'a AccountId>,
    token_id: Option<&'a TokenId>,
    /// How many tokens a RevokeAll ended.
    revoked: Option<u32>,
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
        }
    }

    /// Who is acting in this call, for its audit events.
    fn actor(&self) -> Actor {
        Actor {
            caller: self.caller.unwrap_or_default().into(),
            request_id: self.request_id.clone().unwrap_or_default(),
        }
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
        } = self;
        let latency_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let account_id = account.map(AccountId::as_str);
        let token_id = token_id.map(TokenId::as_str);
        let request_id = request_id.as_ref().map(RequestId::as_str);
        match outcome {
            Ok(label) => tracing::info!(
                rpc,
                caller,
                request_id,
                account_id,
                token_id,
                revoked,
                outcome = label,
                latency_us,
                "rpc"
            ),
            Err(e @ ServiceError::Unavailable(cause)) => tracing::warn!(
                rpc,
                caller,
                request_id,
                account_id,
                token_id,
                outcome = error_label(e),
                latency_us,
                cause = %crate::telemetry::error_chain(cause),
                "rpc"
            ),
            Err(e) => {
                // The refused field, when a field was refused.
                let field = match e {
                    ServiceError::InvalidArgument(field) => Some(field.field),
                    _ => None,
                };
                tracing::info!(
                    rpc,
                    caller,
                    request_id,
                    account_id,
                    token_id,
                    outcome = error_label(e),
                    field,
                    latency_us,
                    "rpc"
                )
            }
        }
    }
}
