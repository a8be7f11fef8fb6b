//! The Redis store's introspection cache: token records held in this
//! process (bounded in entries and in age, never answered past the token's
//! expiry), and the invalidation channel that takes a revoked token out of
//! every instance's cache.
//!
//! **What it guarantees.** The scripts that end a token `PUBLISH` its id on
//! `<prefix>:invalidate` in the same atomic step. Each instance holds one
//! subscription and sends a `PING` on it every [`PING_EVERY`]; Redis answers
//! a `PING` after every message published before it, so an answered `PING`
//! proves that no invalidation older than it is missing. The cache answers
//! only while the last answered `PING` was sent less than [`FRESH_FOR`] ago:
//! a revocation acknowledged to anyone is honoured by every instance within
//! [`FRESH_FOR`], whether the channel works, broke silently (a paused or
//! unreachable Redis) or was closed. A closed channel empties the cache at
//! once and it stays bypassed until the subscription is back.
//!
//! A lookup that misses reads Redis and may fill the cache; an invalidation
//! that arrives while that read is under way wins (a generation counter),
//! so a record read before its revocation is never kept after it. Only
//! records are cached, never "no such token": an Issue is visible at once.
//! The caller still verifies the presented value against the cached
//! digest (in constant time), the live digest keys and the record's seal
//! (its `mac`, see `token::RecordMac`) on every hit: a cached record is
//! held to the same checks as one just read. The seal script publishes
//! the token's id too, so no instance keeps a copy read before the seal.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{FutureExt as _, StreamExt as _};
use redis::Client;

use super::StoredToken;
use crate::domain::{TokenId, UnixMillis};
use crate::metrics;

/// How often the subscription is proven alive by a `PING`.
pub const PING_EVERY: Duration = Duration::from_millis(100);

/// How long after its last proof of life the cache may still answer: the
/// bound on how late an instance honours a revocation.
pub const FRESH_FOR: Duration = Duration::from_secs(1);

/// Pause between two attempts to subscribe again.
const RESUBSCRIBE_AFTER: Duration = Duration::from_millis(200);

/// The cache's two bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSettings {
    /// Longest time a record is kept, even without any invalidation
    /// (`PATD_CACHE_TTL`).
    pub ttl: Duration,
    /// Most records kept (`PATD_CACHE_MAX_ENTRIES`, at least 1).
    pub max_entries: u64,
}

/// A cached record with the Redis clock it was read at.
struct Entry {
    token: StoredToken,
    /// Redis's now when the record was read, and this process's instant.
    read_at: UnixMillis,
    fetched: Instant,
    /// Last use recorded through this instance (Unix ms, 0 = none), so a
    /// cached record does not ask for a last-used write on every hit.
    touched: AtomicU64,
}

impl Entry {
    /// Redis's now, estimated from the read and the time since (this
    /// process's monotonic clock; the drift over `PATD_CACHE_TTL` is
    /// negligible).
    fn now(&self) -> UnixMillis {
        let elapsed = u64::try_from(self.fetched.elapsed().as_millis()).unwrap_or(u64::MAX);
        UnixMillis(self.read_at.0.saturating_add(elapsed))
    }
}

/// Token records by token id, with the freshness of the invalidation
/// channel. Shared by every clone of the store.
pub struct Cache {
    entries: moka::sync::Cache<String, Arc<Entry>>,
    /// Bumped by every invalidation and flush; a read that saw another
    /// value may not stay in the cache.
    generation: AtomicU64,
    /// Milliseconds after `epoch` until which the cache may answer.
    usable_until: AtomicU64,
    epoch: Instant,
}

impl Cache {
    /// An empty cache, bypassed until the channel proves itself.
    pub fn new(settings: CacheSettings) -> Self {
        metrics::cache_bypass(true);
        Self {
            entries: moka::sync::Cache::builder()
                .max_capacity(settings.max_entries)
                .time_to_live(settings.ttl)
                .build(),
            generation: AtomicU64::new(0),
            usable_until: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn since_epoch(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether the channel is proven fresh enough for the cache to answer.
    pub fn usable(&self) -> bool {
        self.since_epoch(Instant::now()) < self.usable_until.load(Ordering::SeqCst)
    }

    /// The cached record of `token_id` with Redis's estimated now, unless
    /// the cache is bypassed or the record has expired.
    pub fn get(&self, token_id: &TokenId) -> Option<(StoredToken, UnixMillis)> {
        if !self.usable() {
            return None;
        }
        let entry = self.entries.get(token_id.as_str())?;
        let now = entry.now();
        let ended = entry.token.info.expires_at <= now
            || entry.token.rotated_at.is_some_and(|end| end <= now);
        if ended {
            // Redis answers for an ended token (from its tombstone).
            self.entries.invalidate(token_id.as_str());
            return None;
        }
        let mut token = entry.token.clone();
        let touched = entry.touched.load(Ordering::Relaxed);
        if touched > 0 && token.info.last_used_at.is_none_or(|t| t.0 < touched) {
            token.info.last_used_at = Some(UnixMillis(touched));
        }
        Some((token, now))
    }

    /// The generation to hand back to [`Cache::put`] with a record read
    /// after this call.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Keeps a record read from Redis, unless an invalidation or a flush
    /// came since `generation` (the record may predate it), the cache is
    /// bypassed, or the record has expired.
    pub fn put(&self, token: &StoredToken, now: UnixMillis, generation: u64) {
        if !self.usable() || token.info.expires_at <= now {
            return;
        }
        let key = token.info.token_id.as_str().to_owned();
        self.entries.insert(
            key.clone(),
            Arc::new(Entry {
                token: token.clone(),
                read_at: now,
                fetched: Instant::now(),
                touched: AtomicU64::new(0),
            }),
        );
        // An invalidation bumps the generation before it removes: either it
        // removed this entry, or this check sees the new generation.
        if self.generation.load(Ordering::SeqCst) != generation {
            self.entries.invalidate(&key);
        }
    }

    /// Notes a use written through this instance.
    pub fn touched(&self, token_id: &TokenId) {
        if let Some(entry) = self.entries.get(token_id.as_str()) {
            entry.touched.store(entry.now().0, Ordering::Relaxed);
        }
    }

    /// Forgets these tokens (an invalidation message, or a revocation made
    /// through this instance).
    pub fn invalidate<'a>(&self, token_ids: impl IntoIterator<Item = &'a str>) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        let mut n = 0;
        for id in token_ids {
            self.entries.invalidate(id);
            n += 1;
        }
        metrics::cache_invalidations(n);
    }

    /// Forgets everything.
    fn flush(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.entries.invalidate_all();
    }

    /// The channel is gone: stop answering and forget everything.
    fn down(&self) {
        self.usable_until.store(0, Ordering::SeqCst);
        metrics::cache_bypass(true);
        self.flush();
    }

    /// Every invalidation published before `sent` has been applied.
    fn fresh_since(&self, sent: Instant) {
        let until = self
            .since_epoch(sent)
            .saturating_add(u64::try_from(FRESH_FOR.as_millis()).unwrap_or(u64::MAX));
        self.usable_until.fetch_max(until, Ordering::SeqCst);
        metrics::cache_bypass(false);
    }
}

/// Applies one invalidation message: token ids separated by spaces.
fn apply(cache: &Cache, payload: &[u8]) {
    let text = String::from_utf8_lossy(payload);
    cache.invalidate(text.split(' ').filter(|id| !id.is_empty()));
}

/// Keeps the subscription to `channel` for as long as the process lives:
/// subscribes, proves it alive every [`PING_EVERY`], and on any failure
/// bypasses and empties the cache, then subscribes again.
pub async fn follow(cache: Arc<Cache>, client: Client, channel: String, timeout: Duration) {
    loop {
        let ended = subscribe_and_serve(&cache, &client, &channel, timeout).await;
        // At once: a revocation may be published while nobody listens.
        cache.down();
        if ended.subscribed {
            tracing::warn!(
                error = %ended.why,
                "the cache's invalidation channel dropped; the cache is bypassed until it is back"
            );
        } else {
            tracing::debug!(error = %ended.why, "the cache's invalidation channel is not up");
        }
        tokio::time::sleep(RESUBSCRIBE_AFTER).await;
    }
}

/// Why a subscription ended, and whether it had been up.
struct Ended {
    subscribed: bool,
    why: String,
}

async fn subscribe_and_serve(
    cache: &Cache,
    client: &Client,
    channel: &str,
    timeout: Duration,
) -> Ended {
    let failed = |why: String| Ended {
        subscribed: false,
        why,
    };
    let pubsub = match tokio::time::timeout(timeout, client.get_async_pubsub()).await {
        Ok(Ok(pubsub)) => pubsub,
        Ok(Err(e)) => return failed(e.to_string()),
        Err(_) => return failed("connecting timed out".into()),
    };
    let (mut sink, mut stream) = pubsub.split();
    match tokio::time::timeout(timeout, sink.subscribe(channel)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return failed(e.to_string()),
        Err(_) => return failed("SUBSCRIBE timed out".into()),
    }
    // Records read before the subscription may have missed an
    // invalidation: start empty.
    cache.flush();
    tracing::info!(channel, "the cache's invalidation channel is up");
    let ended = |why: String| Ended {
        subscribed: true,
        why,
    };
    let mut ticker = tokio::time::interval(PING_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            message = stream.next() => match message {
                Some(message) => apply(cache, message.get_payload_bytes()),
                None => return ended("the subscription was closed".into()),
            },
            _ = ticker.tick() => {
                let sent = Instant::now();
                match tokio::time::timeout(FRESH_FOR, sink.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return ended(e.to_string()),
                    Err(_) => return ended("PING went unanswered".into()),
                }
                // Everything published before the PING was delivered ahead
                // of its answer: apply it before declaring the cache fresh.
                while let Some(Some(message)) = stream.next().now_or_never() {
                    apply(cache, message.get_payload_bytes());
                }
                cache.fresh_since(sent);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AccountId, Note, Scopes, TokenInfo};
    use crate::token::TokenDigest;

    fn found(id: &str, now: u64, expires: u64) -> (StoredToken, UnixMillis) {
        (
            StoredToken {
                info: TokenInfo {
                    token_id: TokenId::parse(id.into()).unwrap(),
                    account_id: AccountId::parse("acct-1".into()).unwrap(),
                    note: Note::parse(String::new()).unwrap(),
                    scopes: Scopes::from_stored(""),
                    created_at: UnixMillis(now),
                    expires_at: UnixMillis(expires),
                    last_used_at: None,
                },
                digest: TokenDigest::from_hex(&"ab".repeat(32)).unwrap(),
                key_id: None,
                rotated_at: None,
                mac: None,
            },
            UnixMillis(now),
        )
    }

    fn put(cache: &Cache, (token, now): (StoredToken, UnixMillis), generation: u64) {
        cache.put(&token, now, generation);
    }

    fn fresh_cache() -> Cache {
        let cache = Cache::new(CacheSettings {
            ttl: Duration::from_secs(30),
            max_entries: 100,
        });
        cache.fresh_since(Instant::now());
        cache
    }

    const ID: &str = "abc0123456789xyz";

    #[test]
    fn a_record_put_is_found_until_invalidated() {
        let cache = fresh_cache();
        let id = TokenId::parse(ID.into()).unwrap();
        put(&cache, found(ID, 1_000, 1_000_000), cache.generation());
        assert!(cache.get(&id).is_some());
        cache.invalidate([ID]);
        assert!(cache.get(&id).is_none());
    }

    #[test]
    fn a_read_overtaken_by_an_invalidation_is_not_kept() {
        let cache = fresh_cache();
        let id = TokenId::parse(ID.into()).unwrap();
        let seen = cache.generation();
        cache.invalidate([ID]);
        put(&cache, found(ID, 1_000, 1_000_000), seen);
        assert!(cache.get(&id).is_none());
    }

    #[test]
    fn nothing_is_answered_while_the_channel_is_not_proven() {
        let cache = Cache::new(CacheSettings {
            ttl: Duration::from_secs(30),
            max_entries: 100,
        });
        let id = TokenId::parse(ID.into()).unwrap();
        put(&cache, found(ID, 1_000, 1_000_000), cache.generation());
        assert!(cache.get(&id).is_none());
        cache.fresh_since(Instant::now());
        put(&cache, found(ID, 1_000, 1_000_000), cache.generation());
        assert!(cache.get(&id).is_some());
        cache.down();
        assert!(cache.get(&id).is_none());
        // Proven again, it starts empty.
        cache.fresh_since(Instant::now());
        assert!(cache.usable());
        assert!(cache.get(&id).is_none());
    }

    #[test]
    fn an_expired_record_is_never_answered() {
        let cache = fresh_cache();
        let id = TokenId::parse(ID.into()).unwrap();
        put(&cache, found(ID, 1_000, 1_050), cache.generation());
        assert!(cache.get(&id).is_some());
        std::thread::sleep(Duration::from_millis(80));
        assert!(cache.get(&id).is_none());
    }
}
