//! The embedded store: everything in one process behind one mutex. It is the
//! default for `cargo run` and the reference model the Redis store is tested
//! against, so its rules mirror the Lua scripts line for line.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use super::{IssueOutcome, Store, StoreError, StoredToken};
use crate::domain::{AccountId, TokenId, TokenInfo, UnixMillis};

/// How often expired tokens are swept out of memory.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Inner {
    tokens: HashMap<TokenId, StoredToken>,
    accounts: HashMap<AccountId, BTreeSet<TokenId>>,
}

impl Inner {
    fn is_live(&self, id: &TokenId, now: UnixMillis) -> bool {
        self.tokens.get(id).is_some_and(|t| t.info.expires_at > now)
    }

    /// Drops the account's expired tokens, like the index pruning in
    /// `issue.lua`.
    fn prune(&mut self, account: &AccountId, now: UnixMillis) {
        let Some(ids) = self.accounts.get(account) else {
            return;
        };
        let expired: Vec<TokenId> = ids
            .iter()
            .filter(|id| !self.is_live(id, now))
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

    fn sweep(&mut self, now: UnixMillis) {
        let accounts: Vec<AccountId> = self.accounts.keys().cloned().collect();
        for account in &accounts {
            self.prune(account, now);
        }
    }
}

/// In-process token store.
#[derive(Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
}

impl MemoryStore {
    /// A store whose expired tokens are swept in the background; the sweeper
    /// stops when the last handle to the store is dropped. Needs a tokio
    /// runtime.
    pub fn new() -> Self {
        let store = Self::default();
        let weak: Weak<Mutex<Inner>> = Arc::downgrade(&store.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { break };
                lock(&inner).sweep(UnixMillis::now());
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
        token: &StoredToken,
        limit: u32,
        now: UnixMillis,
    ) -> Result<IssueOutcome, StoreError> {
        let mut inner = self.lock();
        let account = &token.info.account_id;
        inner.prune(account, now);
        let held = inner.accounts.get(account).map_or(0, BTreeSet::len);
        if held >= limit as usize {
            return Ok(IssueOutcome::LimitReached);
        }
        let id = &token.info.token_id;
        if inner.tokens.contains_key(id) {
            return Ok(IssueOutcome::IdTaken);
        }
        inner.tokens.insert(id.clone(), token.clone());
        inner
            .accounts
            .entry(account.clone())
            .or_default()
            .insert(id.clone());
        Ok(IssueOutcome::Issued)
    }

    async fn lookup(
        &self,
        token_id: &TokenId,
        now: UnixMillis,
    ) -> Result<Option<StoredToken>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .tokens
            .get(token_id)
            .filter(|t| t.info.expires_at > now)
            .cloned())
    }

    async fn touch(
        &self,
        token_id: &TokenId,
        at: UnixMillis,
        min_interval: Duration,
    ) -> Result<(), StoreError> {
        if let Some(t) = self.lock().tokens.get_mut(token_id) {
            let last = t.info.last_used_at.map_or(0, |u| u.0);
            if u128::from(at.0.saturating_sub(last)) >= min_interval.as_millis() {
                t.info.last_used_at = Some(at);
            }
        }
        Ok(())
    }

    async fn revoke(
        &self,
        account: &AccountId,
        token_id: &TokenId,
        now: UnixMillis,
    ) -> Result<bool, StoreError> {
        let mut inner = self.lock();
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
        Ok(inner
            .tokens
            .remove(token_id)
            .is_some_and(|t| t.info.expires_at > now))
    }

    async fn revoke_all(&self, account: &AccountId, now: UnixMillis) -> Result<u32, StoreError> {
        let mut inner = self.lock();
        let ids = inner.accounts.remove(account).unwrap_or_default();
        let mut live = 0u32;
        for id in &ids {
            if inner
                .tokens
                .remove(id)
                .is_some_and(|t| t.info.expires_at > now)
            {
                live += 1;
            }
        }
        Ok(live)
    }

    async fn list(
        &self,
        account: &AccountId,
        now: UnixMillis,
    ) -> Result<Vec<TokenInfo>, StoreError> {
        let inner = self.lock();
        let Some(ids) = inner.accounts.get(account) else {
            return Ok(Vec::new());
        };
        Ok(ids
            .iter()
            .filter_map(|id| inner.tokens.get(id))
            .filter(|t| t.info.expires_at > now)
            .map(|t| t.info.clone())
            .collect())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
