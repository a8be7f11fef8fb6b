//! The embedded store: everything in one process behind one mutex. It is the
//! default for `cargo run` and the reference model the Redis store is tested
//! against, so its rules mirror the Lua scripts line for line.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use super::{
    DEFAULT_TOMBSTONE_TTL, Ending, Entry, Found, IssueOutcome, IssueTerms, Listing, NewToken,
    RotateOutcome, Rotation, Store, StoreError, StoredToken, Tombstone,
};
use crate::audit::{Actor, AuditAction, AuditEvent, AuditPageRequest, AuditPolicy, EventId};
use crate::domain::{AccountId, Expiry, TokenId, UnixMillis};
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

/// A tombstone and the instant it goes (like its key's `PEXPIREAT`).
#[derive(Debug, Clone)]
struct Kept {
    tombstone: Tombstone,
    until: UnixMillis,
}

#[derive(Default)]
struct Inner {
    tokens: HashMap<TokenId, StoredToken>,
    accounts: HashMap<AccountId, BTreeSet<TokenId>>,
    /// Each account's audit trail, oldest first: the bounded ring that
    /// mirrors the Redis stream (`lua/audit.lua`).
    audit: HashMap<AccountId, VecDeque<AuditEvent>>,
    tombstones: HashMap<TokenId, Kept>,
    /// Every token id of an account that has a tombstone (the Redis
    /// store's history index).
    history: HashMap<AccountId, BTreeSet<TokenId>>,
}

impl Inner {
    /// Unexpired, not past its rotation grace and verifiable: what every
    /// revocation count means by a live token.
    fn is_live(&self, id: &TokenId, now: UnixMillis, live_keys: &LiveKeys) -> bool {
        self.tokens.get(id).is_some_and(|t| {
            t.info.expires_at > now
                && t.rotated_at.is_none_or(|end| end > now)
                && live_keys.admits(t.key_id.as_deref())
        })
    }

    /// Whether Redis would still hold the record: it drops a record at its
    /// expiry, or at the close of its rotation grace (`PEXPIREAT`).
    fn exists(&self, id: &TokenId, now: UnixMillis) -> bool {
        self.tokens
            .get(id)
            .is_some_and(|t| t.info.expires_at > now && t.rotated_at.is_none_or(|end| end > now))
    }

    /// Removes a record; if Redis would still have held it, its tombstone
    /// is marked revoked (as the revoke scripts do after a `DEL` that hit).
    fn remove_revoked(&mut self, id: &TokenId, now: UnixMillis, ttl: Duration) {
        let existed = self.exists(id, now);
        self.tokens.remove(id);
        if existed {
            self.end(id, Ending::Revoked, now, ttl);
        }
    }

    /// Live and not rotated: what counts toward the limit.
    fn holds_slot(&self, id: &TokenId, now: UnixMillis, live_keys: &LiveKeys) -> bool {
        self.is_live(id, now, live_keys)
            && self.tokens.get(id).is_some_and(|t| t.rotated_at.is_none())
    }

    /// The tombstone of `id` unless its time is up.
    fn tombstone(&self, id: &TokenId, now: UnixMillis) -> Option<Tombstone> {
        self.tombstones
            .get(id)
            .filter(|k| k.until > now)
            .map(|k| k.tombstone.clone())
    }

    /// Writes a new token's record and tombstone.
    fn store(&mut self, token: &NewToken, now: UnixMillis, expires_at: UnixMillis, ttl: Duration) {
        let id = &token.token_id;
        let account = &token.account_id;
        self.tokens.insert(
            id.clone(),
            StoredToken {
                info: token.info(now, expires_at),
                digest: token.digest.clone(),
                key_id: token.key_id.clone(),
                rotated_at: None,
            },
        );
        self.accounts
            .entry(account.clone())
            .or_default()
            .insert(id.clone());
        self.tombstones.insert(
            id.clone(),
            Kept {
                tombstone: Tombstone {
                    account_id: account.clone(),
                    digest: token.digest.clone(),
                    key_id: token.key_id.clone(),
                    created_at: now,
                    expires_at,
                    ended: None,
                },
                until: expires_at.saturating_add(ttl),
            },
        );
        self.history
            .entry(account.clone())
            .or_default()
            .insert(id.clone());
    }

    /// Marks a tombstone: the token ended (`how`) at `at`.
    fn end(&mut self, id: &TokenId, how: Ending, at: UnixMillis, ttl: Duration) {
        if let Some(kept) = self.tombstones.get_mut(id) {
            kept.tombstone.ended = Some((how, at));
            kept.until = at.saturating_add(ttl);
        }
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
            .filter(|id| {
                self.tokens.get(id).is_none_or(|t| {
                    t.info.expires_at <= now || t.rotated_at.is_some_and(|end| end <= now)
                })
            })
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
        self.tombstones.retain(|_, kept| kept.until > now);
        let tombstones = &self.tombstones;
        self.history.retain(|_, ids| {
            ids.retain(|id| tombstones.contains_key(id));
            !ids.is_empty()
        });
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
    /// How long a tombstone outlives its token's end.
    tombstone_ttl: Duration,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self {
            inner: Arc::default(),
            clock: Clock::start(),
            audit: AuditPolicy::default(),
            tombstone_ttl: DEFAULT_TOMBSTONE_TTL,
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

    /// Keeps tombstones `ttl` after their token's end
    /// (`PATD_TOMBSTONE_TTL`; 30 days unless set).
    pub fn with_tombstone_ttl(mut self, ttl: Duration) -> Self {
        self.tombstone_ttl = ttl;
        self
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
                .filter(|id| inner.holds_slot(id, now, terms.live_keys))
                .count()
        });
        if held >= terms.limit as usize {
            return Ok(IssueOutcome::LimitReached);
        }
        if inner.tokens.contains_key(&token.token_id) {
            return Ok(IssueOutcome::IdTaken);
        }
        inner.store(token, now, expires_at, self.tombstone_ttl);
        let ids = vec![token.token_id.clone()];
        inner.append_event(&self.audit, now, AuditAction::Issue, account, ids, actor);
        Ok(IssueOutcome::Issued {
            created_at: now,
            expires_at,
        })
    }

    async fn lookup(&self, token_id: &TokenId) -> Result<Found, StoreError> {
        let inner = self.lock();
        let now = self.clock.now();
        // As Redis: a record past its expiry or grace is gone, and the
        // tombstone is only read without a record.
        let token = inner
            .tokens
            .get(token_id)
            .filter(|_| inner.exists(token_id, now))
            .cloned();
        let tombstone = match token {
            Some(_) => None,
            None => inner.tombstone(token_id, now),
        };
        Ok(Found {
            token,
            tombstone,
            now,
        })
    }

    /// Mirrors `rotate.lua`.
    async fn rotate(
        &self,
        rotation: &Rotation<'_>,
        terms: &IssueTerms<'_>,
        actor: &Actor,
    ) -> Result<RotateOutcome, StoreError> {
        let mut inner = self.lock();
        let now = self.clock.now();
        let new = rotation.new;
        let account = &new.account_id;
        let old = rotation.old;
        let held = inner
            .accounts
            .get(account)
            .is_some_and(|ids| ids.contains(old));
        let record = inner
            .tokens
            .get(old)
            .filter(|_| held && inner.exists(old, now));
        let Some(record) = record else {
            let superseded = inner.tombstone(old, now).is_some_and(|t| {
                &t.account_id == account && matches!(t.ended, Some((Ending::Rotated, _)))
            });
            return Ok(if superseded {
                RotateOutcome::Superseded
            } else {
                RotateOutcome::NotFound
            });
        };
        if record.rotated_at.is_some() {
            return Ok(RotateOutcome::Superseded);
        }
        if !inner.is_live(old, now, terms.live_keys) {
            return Ok(RotateOutcome::NotFound);
        }
        let old_expires = record.info.expires_at;
        let expires_at = match rotation.expiry.resolve(now, terms.max_ttl) {
            Ok(at) => at,
            Err(why) => return Ok(RotateOutcome::Refused(why)),
        };
        if inner.tokens.contains_key(&new.token_id) {
            return Ok(RotateOutcome::IdTaken);
        }
        let ends = now.saturating_add(rotation.grace).min(old_expires);
        if ends <= now {
            inner.tokens.remove(old);
            if let Some(ids) = inner.accounts.get_mut(account) {
                ids.remove(old);
            }
        } else if let Some(t) = inner.tokens.get_mut(old) {
            t.rotated_at = Some(ends);
        }
        inner.end(old, Ending::Rotated, ends, self.tombstone_ttl);
        inner.store(new, now, expires_at, self.tombstone_ttl);
        let ids = vec![old.clone(), new.token_id.clone()];
        inner.append_event(&self.audit, now, AuditAction::Rotate, account, ids, actor);
        Ok(RotateOutcome::Rotated {
            created_at: now,
            expires_at,
            previous_ends_at: ends,
        })
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
        action: AuditAction,
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
        inner.remove_revoked(token_id, now, self.tombstone_ttl);
        if live {
            let ids = vec![token_id.clone()];
            inner.append_event(&self.audit, now, action, account, ids, actor);
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
            inner.remove_revoked(&id, now, self.tombstone_ttl);
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

    async fn list(&self, account: &AccountId, include_ended: bool) -> Result<Listing, StoreError> {
        let inner = self.lock();
        let now = self.clock.now();
        let mut ids: BTreeSet<&TokenId> =
            inner.accounts.get(account).into_iter().flatten().collect();
        if include_ended {
            ids.extend(inner.history.get(account).into_iter().flatten());
        }
        let entries = ids
            .into_iter()
            .map(|id| Entry {
                token_id: id.clone(),
                token: inner
                    .tokens
                    .get(id)
                    .filter(|t| &t.info.account_id == account && inner.exists(id, now))
                    .cloned(),
                tombstone: include_ended
                    .then(|| inner.tombstone(id, now))
                    .flatten()
                    .filter(|t| &t.account_id == account),
            })
            .collect();
        Ok(Listing { entries, now })
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
