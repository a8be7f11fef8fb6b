//! The embedded store: everything in one process behind one mutex. It is the
//! default for `cargo run` and the reference model the Redis store is tested
//! against, so its rules mirror the Lua scripts line for line.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use super::{Found, IssueOutcome, IssueTerms, NewToken, Store, StoreError, StoredToken};
use crate::audit::{Actor, AuditAction, AuditEvent, AuditPageRequest, AuditPolicy, EventId};
use crate::domain::{AccountId, Expiry, TokenId, TokenInfo, UnixMillis};
use crate::token::LiveKeys;

/// How often expired tokens are swept out of memory.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// The store's one clock: the wall clock read once, when the store is made,
/// plus the monotonic time elapsed since. A wall clock stepped later (by
/// NTP or by hand) moves no expiry: an expired token never comes back and
/// a live one is not cut short. Timestamps it gives are wall time as of the
/// start, advanced by a clock that never goes backwards.
#[derive(Debug, Clone, Copy)]
struct Clock {
    wall_at_start: UnixMillis,
    started: Instant,
}

impl Clock {
    fn start() -> Self {
        Self {
            wall_at_start: UnixMillis::now(),
            started: Instant::now(),
        }
    }

    fn now(&self) -> UnixMillis {
        self.wall_at_start.saturating_add(self.started.elapsed())
    }
}

#[derive(Default)]
struct Inner {
    tokens: HashMap<TokenId, StoredToken>,
    accounts: HashMap<AccountId, BTreeSet<TokenId>>,
    /// Each account's audit trail, oldest first: the bounded ring that
    /// mirrors the Redis stream (`lua/audit.lua`).
    audit: HashMap<AccountId, VecDeque<AuditEvent>>,
}

impl Inner {
    /// Unexpired and verifiable: what every count and listing means by a
    /// live token.
    fn is_live(&self, id: &TokenId, now: UnixMillis, live_keys: &LiveKeys) -> bool {
        self.tokens
            .get(id)
            .is_some_and(|t| t.info.expires_at > now && live_keys.admits(t.key_id.as_deref()))
    }

    /// Drops the account's expired tokens, like the index pruning in
    /// `issue.lua`. Tokens whose key is gone stay until they expire or are
    /// revoked (the key may come back), but are never live.
    fn prune(&mut self, account: &AccountId, now: UnixMillis) {
        let Some(ids) = self.accounts.get(account) else {
            return;
        };
        let expired: Vec<TokenId> = ids
            .iter()
            .filter(|id| self.tokens.get(id).is_none_or(|t| t.info.expires_at <= now))
            .cloned()
            .collect();
        for id in &expired {
            self.tokens.remove(id);
        }
        if let Some(ids) = self.accounts.get_mut(account) {
            for id in &expired {
                ids.remove(id);
            }
            if ids.is_empty() {
                self.accounts.remove(account);
            }
        }
    }

    fn sweep(&mut self, now: UnixMillis, policy: &AuditPolicy) {
        let accounts: Vec<AccountId> = self.accounts.keys().cloned().collect();
        for account in &accounts {
            self.prune(account, now);
        }
        // Like the stream key's expiry: a trail whose newest event is past
        // the retention is gone whole.
        let oldest_kept = now.0.saturating_sub(policy.retention_ms());
        self.audit
            .retain(|_, ring| ring.back().is_some_and(|e| e.id.ms >= oldest_kept));
    }

    /// Appends the audit event of a change made under this same lock (so
    /// it is atomic with it), as `lua/audit.lua` does on Redis: the id is
    /// the store's now, or one past the newest id when the clock has not
    /// moved on; then at most `max_events` are kept and none older than the
    /// retention. Every change wires its event with one call of this.
    fn append_event(
        &mut self,
        policy: &AuditPolicy,
        now: UnixMillis,
        action: AuditAction,
        account: &AccountId,
        token_ids: Vec<TokenId>,
        actor: &Actor,
    ) {
        let ring = self.audit.entry(account.clone()).or_default();
        let id = match ring.back() {
            Some(last) if last.id.ms >= now.0 => EventId {
                ms: last.id.ms,
                seq: last.id.seq.saturating_add(1),
            },
            _ => EventId { ms: now.0, seq: 0 },
        };
        ring.push_back(AuditEvent {
            id,
            action: action.as_str().to_owned(),
            account_id: account.clone(),
            token_ids,
            caller: actor.caller.to_string(),
            request_id: actor.request_id.as_str().to_owned(),
        });
        let max = usize::try_from(policy.max_events).unwrap_or(usize::MAX);
        let oldest_kept = id.ms.saturating_sub(policy.retention_ms());
        while ring.len() > max || ring.front().is_some_and(|e| e.id.ms < oldest_kept) {
            ring.pop_front();
        }
    }
}

/// In-process token store.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
    clock: Clock,
    audit: AuditPolicy,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self {
            inner: Arc::default(),
            clock: Clock::start(),
            audit: AuditPolicy::default(),
        }
    }
}

impl MemoryStore {
    /// A store whose expired tokens are swept in the background; the sweeper
    /// stops when the last handle to the store is dropped. Needs a tokio
    /// runtime.
    pub fn new() -> Self {
        Self::with_audit(AuditPolicy::default())
    }

    /// [`MemoryStore::new`] keeping the audit trail by `audit`.
    pub fn with_audit(audit: AuditPolicy) -> Self {
        let store = Self {
            audit,
            ..Self::default()
        };
        let weak: Weak<Mutex<Inner>> = Arc::downgrade(&store.inner);
        let clock = store.clock;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { break };
                lock(&inner).sweep(clock.now(), &audit);
            }
        });
        store
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        lock(&self.inner)
    }
}

/// A panic while holding the lock cannot leave `Inner` half-updated in a way
/// that matters more than refusing every later request, so keep serving.
fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    inner.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Store for MemoryStore {
    async fn issue(
        &self,
        token: &NewToken,
        expiry: Expiry,
        terms: &IssueTerms<'_>,
        actor: &Actor,
    ) -> Result<IssueOutcome, StoreError> {
        let mut inner = self.lock();
        let now = self.clock.now();
        let expires_at = match expiry.resolve(now, terms.max_ttl) {
            Ok(at) => at,
            Err(why) => return Ok(IssueOutcome::Refused(why)),
        };
        let account = &token.account_id;
        inner.prune(account, now);
        let held = inner.accounts.get(account).map_or(0, |ids| {
            ids.iter()
                .filter(|id| inner.is_live(id, now, terms.live_keys))
                .count()
        });
        if held >= terms.limit as usize {
            return Ok(IssueOutcome::LimitReached);
        }
        let id = &token.token_id;
        if inner.tokens.contains_key(id) {
            return Ok(IssueOutcome::IdTaken);
        }
        let stored = StoredToken {
            info: token.info(now, expires_at),
            digest: token.digest.clone(),
            key_id: token.key_id.clone(),
        };
        inner.tokens.insert(id.clone(), stored);
        inner
            .accounts
            .entry(account.clone())
            .or_default()
            .insert(id.clone());
        let ids = vec![id.clone()];
        inner.append_event(&self.audit, now, AuditAction::Issue, account, ids, actor);
        Ok(IssueOutcome::Issued {
            created_at: now,
            expires_at,
        })
    }

    async fn lookup(&self, token_id: &TokenId) -> Result<Option<Found>, StoreError> {
        let inner = self.lock();
        let now = self.clock.now();
        Ok(inner.tokens.get(token_id).map(|t| Found {
            token: t.clone(),
            now,
        }))
    }

    async fn touch(&self, token_id: &TokenId, min_interval: Duration) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let now = self.clock.now();
        if let Some(t) = inner.tokens.get_mut(token_id) {
            let last = t.info.last_used_at.map_or(0, |u| u.0);
            if u128::from(now.0.saturating_sub(last)) >= min_interval.as_millis() {
                t.info.last_used_at = Some(now);
            }
        }
        Ok(())
    }

    async fn revoke(
        &self,
        account: &AccountId,
        token_id: &TokenId,
        live_keys: &LiveKeys,
        actor: &Actor,
    ) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        let now = self.clock.now();
        let held = inner
            .accounts
            .get_mut(account)
            .is_some_and(|ids| ids.remove(token_id));
        if !held {
            return Ok(false);
        }
        if inner.accounts.get(account).is_some_and(BTreeSet::is_empty) {
            inner.accounts.remove(account);
        }
        let live = inner.is_live(token_id, now, live_keys);
        inner.tokens.remove(token_id);
        if live {
            let ids = vec![token_id.clone()];
            inner.append_event(&self.audit, now, AuditAction::Revoke, account, ids, actor);
        }
        Ok(live)
    }

    async fn revoke_all(
        &self,
        account: &AccountId,
        live_keys: &LiveKeys,
        actor: &Actor,
    ) -> Result<Vec<TokenId>, StoreError> {
        let mut inner = self.lock();
        let now = self.clock.now();
        let ids = inner.accounts.remove(account).unwrap_or_default();
        let mut live = Vec::new();
        for id in ids {
            if inner.is_live(&id, now, live_keys) {
                live.push(id.clone());
            }
            inner.tokens.remove(&id);
        }
        let ids = live.clone();
        inner.append_event(
            &self.audit,
            now,
            AuditAction::RevokeAll,
            account,
            ids,
            actor,
        );
        Ok(live)
    }

    async fn audit_events(
        &self,
        account: &AccountId,
        page: &AuditPageRequest,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        let inner = self.lock();
        let oldest_kept = self.clock.now().0.saturating_sub(self.audit.retention_ms());
        let Some(ring) = inner.audit.get(account) else {
            return Ok(Vec::new());
        };
        Ok(ring
            .iter()
            .rev()
            .filter(|e| page.after.is_none_or(|after| e.id < after))
            .take_while(|e| e.id.ms >= oldest_kept)
            .take(page.size.saturating_add(1))
            .cloned()
            .collect())
    }

    async fn list(
        &self,
        account: &AccountId,
        live_keys: &LiveKeys,
    ) -> Result<Vec<TokenInfo>, StoreError> {
        let inner = self.lock();
        let now = self.clock.now();
        let Some(ids) = inner.accounts.get(account) else {
            return Ok(Vec::new());
        };
        Ok(ids
            .iter()
            .filter(|id| inner.is_live(id, now, live_keys))
            .filter_map(|id| inner.tokens.get(id))
            .map(|t| t.info.clone())
            .collect())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
