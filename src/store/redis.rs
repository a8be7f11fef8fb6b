//! The production store on Redis (7.0 or newer: the scripts declare their
//! flags in a `#!lua` line). Every multi-key change is one Lua script (see
//! `lua/`), called by SHA and reloaded by the client after a restart or
//! failover. A script that changes an account carries the audit fragment
//! (`lua/audit.lua`, see `audited`), so its event is appended in the same
//! atomic step; Issue and Rotate also carry the token fragment
//! (`lua/token.lua`), so they write a token the same way. Reads (Introspect, List, the audit trail, readiness) and
//! writes (the scripts)
//! use two connections, so a paused or slow write (`CLIENT PAUSE WRITE`,
//! as `FAILOVER` does) never queues a read behind it. Connections reconnect
//! by themselves, and every call is bounded by a timeout so a stalled Redis
//! turns into UNAVAILABLE, never a hang.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use redis::io::tcp::{TcpSettings, socket2};
use redis::{Client, ClientTlsConfig, FromRedisValue, Script, ScriptInvocation, TlsCertificates};

use super::cache::{self, Cache, CacheSettings};
use super::connection::{Acked, Link, LinkOptions, RedisUrl};
use super::keys::Keys;
use super::{
    DEFAULT_TOMBSTONE_TTL, Ending, Entry, Found, IssueOutcome, IssueTerms, Listing, NewToken,
    RotateOutcome, Rotation, Store, StoreError, StoredToken, Tombstone,
};
use crate::audit::{Actor, AuditAction, AuditEvent, AuditPageRequest, AuditPolicy, EventId};
use crate::domain::{
    AccountId, Expiry, ExpiryRefusal, Note, Scopes, TokenId, TokenInfo, UnixMillis,
};
use crate::metrics;
use crate::token::{LiveKeys, RecordMac, TokenDigest};

/// Hash fields read back for a token, in this order.
const FIELDS: [&str; 10] = [
    "account", "digest", "note", "scopes", "created", "expires", "used", "kid", "rotated", "mac",
];

/// One `HMGET` reply, field by field, as bytes.
type Row = Vec<Option<Vec<u8>>>;

/// Hash fields read back for a tombstone, in this order.
const TOMBSTONE_FIELDS: [&str; 7] = [
    "account", "digest", "kid", "created", "expires", "end", "ended",
];

/// A connection whose sent data stays unacknowledged this long is dead.
const DEAD_PEER_AFTER: Duration = Duration::from_secs(10);

/// How often RevokeAll re-reads an index that kept changing under it.
const REVOKE_ALL_ATTEMPTS: usize = 16;

/// A script that writes nothing (so a write pause or a replica does not
/// stop it): readiness runs it to prove `SCRIPT LOAD` and `EVALSHA` are
/// allowed, as every change patd makes needs them.
const PROBE_SCRIPT: &str = "#!lua flags=no-writes\nreturn 1\n";

struct Scripts {
    issue: Script,
    revoke: Script,
    revoke_all: Script,
    touch: Script,
    audit_events: Script,
    rotate: Script,
    seal: Script,
}

/// The audit fragment every changing script carries.
const AUDIT_FRAGMENT: &str = include_str!("lua/audit.lua");

/// The fragment of the scripts that write a new token (`token_expiry`,
/// `write_token`): Issue and Rotate write one the same way.
const TOKEN_FRAGMENT: &str = include_str!("lua/token.lua");

/// `source` with the audit fragment put right after its `#!lua` line (the
/// flags must stay first), so the script can call `audit(action, ids)`.
/// A new script that changes an account is loaded through this, and its
/// calls get their audit key and arguments from [`RedisStore::audited`].
fn carrying_audit(source: &str) -> String {
    carrying(source, &[AUDIT_FRAGMENT])
}

/// As [`carrying_audit`], with the token fragment after the audit one.
fn writing_tokens(source: &str) -> String {
    carrying(source, &[AUDIT_FRAGMENT, TOKEN_FRAGMENT])
}

/// `source` with `fragments` put right after its `#!lua` line, in order.
fn carrying(source: &str, fragments: &[&str]) -> String {
    let (shebang, body) = source.split_once('\n').unwrap_or((source, ""));
    let mut script = format!("{shebang}\n");
    for fragment in fragments {
        script.push_str(fragment);
        script.push('\n');
    }
    script.push_str(body);
    script
}

/// TLS to Redis beyond what a `rediss://` URL says: a private CA (the
/// usual case for managed and in-cluster Redis) and a client certificate.
/// `Debug` shows neither.
#[derive(Clone, Default)]
pub struct RedisTls {
    /// PEM CA certificate(s) Redis's certificate must chain to, instead of
    /// the public web roots.
    pub ca_pem: Option<Vec<u8>>,
    /// PEM client certificate and key, for Redis's `tls-auth-clients`.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTls")
            .field("ca", &self.ca_pem.is_some())
            .field("client_certificate", &self.client.is_some())
            .finish()
    }
}

/// Redis-backed token store; cheap to clone (two shared multiplexed
/// connections).
#[derive(Clone)]
pub struct RedisStore {
    /// HMGET, ZRANGE, TIME and readiness.
    reads: Link,
    /// The scripts.
    writes: Link,
    keys: Keys,
    timeout: Duration,
    /// Replicas that must acknowledge every write (`WAIT`); 0: none asked.
    min_replicas_ack: u32,
    scripts: Arc<Scripts>,
    audit: AuditPolicy,
    /// How long a tombstone outlives its token's end.
    tombstone_ttl: Duration,
    /// For the cache's subscription (a connection of its own); `None` on
    /// a Cluster or behind Sentinel (see `connection::pubsub_client`).
    client: Option<Arc<Client>>,
    /// Records for Introspect; `None` when turned off.
    cache: Option<Arc<Cache>>,
}

impl RedisStore {
    /// Prepares a store for `url` (one Redis, a Cluster or a Sentinel
    /// primary; with `tls` for a private CA or a client certificate). It
    /// connects lazily, so patd starts even while Redis is down and serves
    /// as soon as it is back; a connection that fails is replaced by
    /// itself. With `min_replicas_ack` above 0, every write is followed by
    /// `WAIT` for that many replicas within `timeout`, and fails when
    /// fewer acknowledge it.
    ///
    /// # Errors
    /// The URL cannot be used, or the TLS material is not usable PEM.
    pub fn connect(
        url: &RedisUrl,
        key_prefix: &str,
        timeout: Duration,
        min_replicas_ack: u32,
        tls: &RedisTls,
    ) -> Result<Self, StoreError> {
        // A Redis host that vanishes without closing the connection (a
        // rescheduled pod, a NAT that forgot it) must not leave patd waiting
        // on a dead socket for the kernel's ~15 minutes: unacknowledged
        // data fails the connection after 10 s and idle ones are probed, so
        // it is reconnected. (TCP_NODELAY stays as it was: an A/B run showed
        // no difference within this machine's noise.)
        let tcp = TcpSettings::default()
            .set_keepalive(
                socket2::TcpKeepalive::new()
                    .with_time(Duration::from_secs(10))
                    .with_interval(Duration::from_secs(5)),
            )
            .set_user_timeout(DEAD_PEER_AFTER);
        let certificates =
            (tls.ca_pem.is_some() || tls.client.is_some()).then(|| TlsCertificates {
                client_tls: tls.client.as_ref().map(|(cert, key)| ClientTlsConfig {
                    client_cert: cert.clone(),
                    client_key: key.clone(),
                }),
                root_cert: tls.ca_pem.clone(),
            });
        let options = LinkOptions {
            tcp,
            certificates,
            connect_timeout: timeout,
        };
        let reads = super::connection::open(url, &options)?;
        let writes = super::connection::open(url, &options)?;
        let client = super::connection::pubsub_client(url, &options)?;
        Ok(Self {
            reads,
            writes,
            keys: Keys::new(key_prefix),
            timeout,
            min_replicas_ack,
            scripts: Arc::new(Scripts {
                issue: Script::new(&writing_tokens(include_str!("lua/issue.lua"))),
                revoke: Script::new(&carrying_audit(include_str!("lua/revoke.lua"))),
                revoke_all: Script::new(&carrying_audit(include_str!("lua/revoke_all.lua"))),
                touch: Script::new(include_str!("lua/touch.lua")),
                audit_events: Script::new(include_str!("lua/audit_events.lua")),
                rotate: Script::new(&writing_tokens(include_str!("lua/rotate.lua"))),
                seal: Script::new(include_str!("lua/seal.lua")),
            }),
            audit: AuditPolicy::default(),
            tombstone_ttl: DEFAULT_TOMBSTONE_TTL,
            client: client.map(Arc::new),
            cache: None,
        })
    }

    /// Turns on the introspection cache (see `store::cache`) and starts
    /// following its invalidation channel in the background; the cache is
    /// bypassed until the subscription is up. Needs a Tokio runtime.
    #[must_use]
    pub fn with_cache(mut self, settings: CacheSettings) -> Self {
        let Some(client) = &self.client else {
            tracing::warn!(
                "the introspection cache is off on a Redis Cluster or behind Sentinel: its \
                 1 s revocation bound needs the scripts to publish on the node it subscribes to"
            );
            return self;
        };
        let cache = Arc::new(Cache::new(settings));
        tokio::spawn(cache::follow(
            Arc::clone(&cache),
            Client::clone(client),
            self.keys.invalidations(),
            self.timeout,
        ));
        self.cache = Some(cache);
        self
    }

    /// Runs a script on the write connection (on the primary owning its
    /// keys' slot; redis-rs loads it again after NOSCRIPT and retries
    /// once), then, when replicas must acknowledge writes, `WAIT`s for
    /// them on the same connection.
    async fn write<T: FromRedisValue>(&self, call: &ScriptInvocation<'_>) -> Result<T, StoreError> {
        let mut link = self.writes.clone();
        if self.min_replicas_ack == 0 {
            return self.timed(call.invoke_async(&mut link)).await;
        }
        let mut acked = Acked {
            link: &mut link,
            replicas: self.min_replicas_ack,
            timeout: self.timeout,
        };
        // Each WAIT may use the whole timeout, and a script Redis lost
        // (NOSCRIPT) is sent twice, each time with its WAIT: the call gets
        // the timeout three times.
        let bound = self.timeout * 3;
        match tokio::time::timeout(bound, call.invoke_async(&mut acked)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) if e.code() == Some("OOM") => Err(StoreError::Full),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(StoreError::Timeout(bound)),
        }
    }

    /// The record (or, without one, the tombstone) and Redis's now, from
    /// Redis.
    async fn read_found(&self, token_id: &TokenId) -> Result<Found, StoreError> {
        let mut conn = self.reads.clone();
        let mut pipe = redis::Pipeline::with_capacity(2);
        pipe.add_command(hmget(self.keys.token(token_id), &FIELDS))
            .cmd("TIME");
        let (values, time): (Row, (u64, u64)) = self.timed(pipe.query_async(&mut conn)).await?;
        let now = redis_millis(time);
        if let Some(token) = decode_record(token_id, values)? {
            return Ok(Found {
                token: Some(token),
                tombstone: None,
                now,
            });
        }
        let tomb: Row = self
            .timed(hmget(self.keys.tombstone(token_id), &TOMBSTONE_FIELDS).query_async(&mut conn))
            .await?;
        Ok(Found {
            token: None,
            tombstone: decode_tombstone(token_id, tomb)?,
            now,
        })
    }

    /// Forgets these tokens in this instance's cache at once (the other
    /// instances hear of it from the script's `PUBLISH`).
    fn forget<'a>(&self, token_ids: impl IntoIterator<Item = &'a str>) {
        if let Some(cache) = &self.cache {
            cache.invalidate(token_ids);
        }
    }

    /// The same store keeping the audit trail by `audit`.
    #[must_use]
    pub fn with_audit(mut self, audit: AuditPolicy) -> Self {
        self.audit = audit;
        self
    }

    /// Keeps tombstones `ttl` after their token's end
    /// (`PATD_TOMBSTONE_TTL`; 30 days unless set).
    pub fn with_tombstone_ttl(mut self, ttl: Duration) -> Self {
        self.tombstone_ttl = ttl;
        self
    }

    fn tombstone_ttl_ms(&self) -> u64 {
        u64::try_from(self.tombstone_ttl.as_millis()).unwrap_or(u64::MAX)
    }

    /// The records (and, with `tombstones`, the tombstones) of `ids` and
    /// Redis's `TIME`, in one pipelined round trip. An unreadable or
    /// corrupt record or tombstone is skipped and logged: one bad key must
    /// not hide the account's other tokens.
    async fn entries(&self, ids: Vec<TokenId>, tombstones: bool) -> Result<Listing, StoreError> {
        let mut conn = self.reads.clone();
        let mut pipe = redis::pipe();
        // A key of the wrong type answers an error for itself only.
        pipe.ignore_errors();
        for id in &ids {
            pipe.cmd("HMGET").arg(self.keys.token(id)).arg(&FIELDS);
            if tombstones {
                pipe.cmd("HMGET")
                    .arg(self.keys.tombstone(id))
                    .arg(&TOMBSTONE_FIELDS);
            }
        }
        pipe.cmd("TIME");
        let mut replies: Vec<redis::Value> = self.timed(pipe.query_async(&mut conn)).await?;
        let time = replies.pop().unwrap_or(redis::Value::Nil);
        let now = redis_millis(redis::from_redis_value(time).map_err(redis::RedisError::from)?);
        let mut replies = replies.into_iter();
        let mut entries = Vec::with_capacity(ids.len());
        for id in ids {
            let row = |reply: Option<redis::Value>| -> Option<Vec<Option<Vec<u8>>>> {
                match redis::from_redis_value(reply.unwrap_or(redis::Value::Nil)) {
                    Ok(row) => Some(row),
                    Err(e) => {
                        tracing::warn!(token_id = id.as_str(), error = %e, "skipping an unreadable key in List");
                        None
                    }
                }
            };
            let token = row(replies.next()).and_then(|r| match decode_record(&id, r) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(error = %e, "skipping a corrupt token record in List");
                    None
                }
            });
            let tombstone = if tombstones {
                row(replies.next()).and_then(|r| match decode_tombstone(&id, r) {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::warn!(error = %e, "skipping a corrupt tombstone in List");
                        None
                    }
                })
            } else {
                None
            };
            entries.push(Entry {
                token_id: id,
                token,
                tombstone,
            });
        }
        Ok(Listing { entries, now })
    }

    /// The members of an index that name a token id; others are logged
    /// and skipped.
    async fn index_ids(
        &self,
        key: String,
        account: &AccountId,
    ) -> Result<Vec<TokenId>, StoreError> {
        let mut conn = self.reads.clone();
        let members: Vec<Vec<u8>> = self
            .timed(
                redis::cmd("ZRANGE")
                    .arg(key)
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut conn),
            )
            .await?;
        Ok(members
            .into_iter()
            .filter_map(|m| {
                let id = String::from_utf8(m)
                    .ok()
                    .and_then(|m| TokenId::parse(m).ok());
                if id.is_none() {
                    tracing::warn!(
                        account_id = account.as_str(),
                        "skipping an index entry that names no token in List"
                    );
                }
                id
            })
            .collect())
    }

    /// Adds what the audit fragment reads to a call of a script loaded
    /// through [`carrying_audit`]: after every key and argument of the script's own,
    /// so call this last.
    fn audited(&self, call: &mut ScriptInvocation<'_>, account: &AccountId, actor: &Actor) {
        call.key(self.keys.audit(account))
            .arg(self.audit.max_events)
            .arg(self.audit.retention_ms())
            .arg(account.as_str())
            .arg(&*actor.caller)
            .arg(actor.request_id.as_str());
    }

    /// RevokeAll when the account's index is not a sorted set (written by
    /// hand, or corrupt): the account's tokens are found by scanning its
    /// shard tag's keys and checking each record's `account`, each is
    /// revoked on its own (the Revoke script does not need the index),
    /// and the index is removed. Slow, and only for this repair.
    async fn revoke_all_without_index(
        &self,
        account: &AccountId,
        live_keys: &LiveKeys,
        actor: &Actor,
    ) -> Result<Vec<TokenId>, StoreError> {
        tracing::error!(
            account_id = account.as_str(),
            "the account's index is not a sorted set; revoking its tokens by scanning"
        );
        let mut reads = self.reads.clone();
        let pattern = self.keys.token_pattern(account);
        let index = self.keys.account(account);
        let mut cursor: u64 = 0;
        let mut ids = Vec::new();
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000);
            // In a Cluster, SCAN runs on the node holding the account's slot.
            let page = self.timed(reads.on_owner_of(&index, &scan)).await?;
            let (next, keys): (u64, Vec<Vec<u8>>) =
                redis::from_redis_value(page).map_err(redis::RedisError::from)?;
            for key in keys {
                let id = std::str::from_utf8(&key)
                    .ok()
                    .and_then(|k| k.rsplit(':').next())
                    .and_then(|id| TokenId::parse(id.to_owned()).ok());
                if let Some(id) = id {
                    ids.push(id);
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        // Each revocation appends its own Revoke event; the removal of the
        // index appends a RevokeAll event naming none.
        let mut revoked = Vec::new();
        for id in ids {
            if self
                .revoke(account, &id, live_keys, actor, AuditAction::Revoke)
                .await?
            {
                revoked.push(id);
            }
        }
        let mut call = self.scripts.revoke_all.prepare_invoke();
        call.key(&index)
            .key(self.keys.history(account))
            .arg(self.tombstone_ttl_ms())
            .arg(0);
        self.audited(&mut call, account, actor);
        let _: redis::Value = self.write(&call).await?;
        Ok(revoked)
    }

    async fn timed<T>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            // Over maxmemory: a script without allow-oom was refused whole.
            Ok(Err(e)) if e.code() == Some("OOM") => Err(StoreError::Full),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        }
    }
}

/// `HMGET key fields...`, its buffers sized once (this is on the path of
/// every Introspect the cache does not answer).
fn hmget(key: String, fields: &[&str]) -> redis::Cmd {
    let data = "HMGET".len() + key.len() + fields.iter().map(|f| f.len()).sum::<usize>();
    let mut cmd = redis::Cmd::with_capacity(2 + fields.len(), data);
    cmd.arg("HMGET").arg(key).arg(fields);
    cmd
}

/// Redis's `TIME` (seconds, microseconds) in Unix ms: the one clock that
/// decides expiry for every instance sharing this Redis.
fn redis_millis((seconds, micros): (u64, u64)) -> UnixMillis {
    UnixMillis(seconds.saturating_mul(1000).saturating_add(micros / 1000))
}

/// Rebuilds a stored token from its hash fields; a record is re-validated
/// because anyone with write access to Redis could have written it. `None`
/// when there is no record. Whether it has expired is the caller's
/// question, asked against Redis's clock.
fn decode_record(
    token_id: &TokenId,
    values: Vec<Option<Vec<u8>>>,
) -> Result<Option<StoredToken>, StoreError> {
    let corrupt = |reason: &str| StoreError::Corrupt {
        token_id: token_id.as_str().to_owned(),
        reason: reason.to_owned(),
    };
    // Fields are read as bytes: one that is not UTF-8 makes this record
    // corrupt, never the whole reply (and so never a whole List).
    let values = values
        .into_iter()
        .map(|v| v.map(String::from_utf8).transpose())
        .collect::<Result<Vec<Option<String>>, _>>()
        .map_err(|_| corrupt("a field is not UTF-8"))?;
    let mut it = values.into_iter();
    let mut next = || it.next().flatten();
    let (Some(account), digest, note, scopes, created, expires, used, key_id, rotated, mac) = (
        next(),
        next(),
        next(),
        next(),
        next(),
        next(),
        next(),
        next(),
        next(),
        next(),
    ) else {
        return Ok(None);
    };
    let millis = |v: Option<String>, field: &str| -> Result<UnixMillis, StoreError> {
        v.and_then(|s| s.parse().ok())
            .map(UnixMillis)
            .ok_or_else(|| corrupt(field))
    };
    let info = TokenInfo {
        token_id: token_id.clone(),
        account_id: AccountId::parse(account).map_err(|_| corrupt("account"))?,
        note: Note::parse(note.unwrap_or_default()).map_err(|_| corrupt("note"))?,
        scopes: Scopes::from_stored(&scopes.unwrap_or_default()),
        created_at: millis(created, "created")?,
        expires_at: millis(expires, "expires")?,
        last_used_at: used.and_then(|s| s.parse().ok()).map(UnixMillis),
    };
    let digest = digest
        .as_deref()
        .and_then(TokenDigest::from_hex)
        .ok_or_else(|| corrupt("digest"))?;
    let rotated_at = match rotated {
        Some(ms) => Some(millis(Some(ms), "rotated")?),
        None => None,
    };
    Ok(Some(StoredToken {
        info,
        digest,
        // The scripts treat an empty key id as none (plain SHA-256).
        key_id: key_id.filter(|kid| !kid.is_empty()),
        rotated_at,
        mac: mac.as_deref().map(RecordMac::from_stored),
    }))
}

/// Rebuilds a tombstone from its hash fields (`TOMBSTONE_FIELDS`), checked
/// like a record. `None` when there is none.
fn decode_tombstone(
    token_id: &TokenId,
    values: Vec<Option<Vec<u8>>>,
) -> Result<Option<Tombstone>, StoreError> {
    let corrupt = |reason: &str| StoreError::Corrupt {
        token_id: token_id.as_str().to_owned(),
        reason: format!("tombstone {reason}"),
    };
    let mut it = values
        .into_iter()
        .map(|v| v.map(|bytes| String::from_utf8(bytes).map_err(|_| ())));
    let mut next = || -> Result<Option<String>, StoreError> {
        it.next()
            .flatten()
            .transpose()
            .map_err(|()| corrupt("field is not UTF-8"))
    };
    let (account, digest, kid, created, expires, end, ended) = (
        next()?,
        next()?,
        next()?,
        next()?,
        next()?,
        next()?,
        next()?,
    );
    let Some(account) = account else {
        return Ok(None);
    };
    let millis = |v: Option<String>, field: &str| -> Result<UnixMillis, StoreError> {
        v.and_then(|s| s.parse().ok())
            .map(UnixMillis)
            .ok_or_else(|| corrupt(field))
    };
    let ended = match end.as_deref() {
        None => None,
        Some("revoked") => Some((Ending::Revoked, millis(ended, "ended")?)),
        Some("rotated") => Some((Ending::Rotated, millis(ended, "ended")?)),
        Some(_) => return Err(corrupt("end")),
    };
    Ok(Some(Tombstone {
        account_id: AccountId::parse(account).map_err(|_| corrupt("account"))?,
        digest: digest
            .as_deref()
            .and_then(TokenDigest::from_hex)
            .ok_or_else(|| corrupt("digest"))?,
        key_id: kid.filter(|kid| !kid.is_empty()),
        created_at: millis(created, "created")?,
        expires_at: millis(expires, "expires")?,
        ended,
    }))
}

/// Rebuilds an audit event from a stream entry (`[id, [field, value,
/// ...]]`); `None` when it is not one patd wrote.
fn decode_event(entry: redis::Value) -> Option<AuditEvent> {
    let (id, fields): (String, Vec<(String, String)>) = redis::from_redis_value(entry).ok()?;
    let field = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let token_ids = field("tokens")?
        .split_whitespace()
        .map(|id| TokenId::parse(id.to_owned()).ok())
        .collect::<Option<Vec<_>>>()?;
    Some(AuditEvent {
        id: EventId::parse(&id)?,
        action: field("action")?,
        account_id: AccountId::parse(field("account")?).ok()?,
        token_ids,
        caller: field("caller")?,
        request_id: field("request")?,
    })
}

impl Store for RedisStore {
    async fn issue(
        &self,
        token: &NewToken,
        expiry: Expiry,
        terms: &IssueTerms<'_>,
        actor: &Actor,
    ) -> Result<IssueOutcome, StoreError> {
        let mut call = self.scripts.issue.prepare_invoke();
        let (kind, value) = match expiry {
            Expiry::AfterMillis(ms) => ("ttl", ms),
            Expiry::At(at) => ("at", at.0),
        };
        call.key(self.keys.account(&token.account_id))
            .key(self.keys.token(&token.token_id))
            .key(self.keys.history(&token.account_id))
            .key(self.keys.tombstone(&token.token_id))
            .arg(token.token_id.as_str())
            .arg(token.account_id.as_str())
            .arg(token.digest.to_hex())
            .arg(token.note.as_str())
            .arg(token.scopes.joined())
            .arg(token.key_id.as_deref().unwrap_or_default())
            .arg(kind)
            .arg(value)
            .arg(u64::try_from(terms.max_ttl.as_millis()).unwrap_or(u64::MAX))
            .arg(terms.limit)
            .arg(self.tombstone_ttl_ms())
            .arg(terms.live_keys.as_args());
        self.audited(&mut call, &token.account_id, actor);
        let (outcome, now, expires): (i64, u64, u64) = self.write(&call).await?;
        Ok(match outcome {
            1 => IssueOutcome::Issued {
                created_at: UnixMillis(now),
                expires_at: UnixMillis(expires),
            },
            0 => IssueOutcome::LimitReached,
            -2 => IssueOutcome::Refused(ExpiryRefusal::NotInFuture),
            -3 => IssueOutcome::Refused(ExpiryRefusal::BeyondMax),
            _ => IssueOutcome::IdTaken,
        })
    }

    /// From the cache when it holds the record, else one round trip on
    /// the read connection for a token that has a record: the record, then
    /// Redis's `TIME` (so "expired?" is decided on
    /// Redis's clock, at or after the read); Redis drops an expired key by
    /// itself as well. Only without a record (an ended, unknown or guessed
    /// token) a second read fetches the tombstone, so the hot path stays
    /// one `HMGET`.
    async fn lookup(&self, token_id: &TokenId) -> Result<Found, StoreError> {
        let Some(cache) = &self.cache else {
            return self.read_found(token_id).await;
        };
        let cached = cache.get(token_id);
        metrics::cache_lookup(cached.is_some());
        if let Some((token, now)) = cached {
            // No round trip: the store span says so.
            tracing::Span::current().record("patd.cache_hit", true);
            return Ok(Found {
                token: Some(token),
                tombstone: None,
                now,
            });
        }
        let generation = cache.generation();
        let found = self.read_found(token_id).await?;
        if let Some(token) = &found.token {
            cache.put(token, found.now, generation);
        }
        Ok(found)
    }

    async fn rotate(
        &self,
        rotation: &Rotation<'_>,
        terms: &IssueTerms<'_>,
        actor: &Actor,
    ) -> Result<RotateOutcome, StoreError> {
        let mut call = self.scripts.rotate.prepare_invoke();
        let new = rotation.new;
        let account = &new.account_id;
        let (kind, value) = match rotation.expiry {
            Expiry::AfterMillis(ms) => ("ttl", ms),
            Expiry::At(at) => ("at", at.0),
        };
        call.key(self.keys.account(account))
            .key(self.keys.token(rotation.old))
            .key(self.keys.token(&new.token_id))
            .key(self.keys.history(account))
            .key(self.keys.tombstone(rotation.old))
            .key(self.keys.tombstone(&new.token_id))
            .arg(rotation.old.as_str())
            .arg(new.token_id.as_str())
            .arg(account.as_str())
            .arg(new.digest.to_hex())
            .arg(new.note.as_str())
            .arg(new.scopes.joined())
            .arg(new.key_id.as_deref().unwrap_or_default())
            .arg(kind)
            .arg(value)
            .arg(u64::try_from(terms.max_ttl.as_millis()).unwrap_or(u64::MAX))
            .arg(u64::try_from(rotation.grace.as_millis()).unwrap_or(u64::MAX))
            .arg(self.tombstone_ttl_ms())
            .arg(terms.live_keys.as_args());
        self.audited(&mut call, account, actor);
        let rotated = self.write(&call).await;
        self.forget([rotation.old.as_str()]);
        let (outcome, now, expires, ends): (i64, u64, u64, u64) = rotated?;
        Ok(match outcome {
            1 => RotateOutcome::Rotated {
                created_at: UnixMillis(now),
                expires_at: UnixMillis(expires),
                previous_ends_at: UnixMillis(ends),
            },
            0 => RotateOutcome::NotFound,
            -2 => RotateOutcome::Refused(ExpiryRefusal::NotInFuture),
            -3 => RotateOutcome::Refused(ExpiryRefusal::BeyondMax),
            -4 => RotateOutcome::Superseded,
            _ => RotateOutcome::IdTaken,
        })
    }

    /// One script on the write connection (`lua/seal.lua`), which also
    /// publishes the id so no instance's cache keeps the unsealed copy;
    /// like every change it waits for `PATD_REDIS_MIN_REPLICAS_ACK`
    /// replicas (a seal lost in a failover would leave the token refused).
    async fn seal(
        &self,
        token_id: &TokenId,
        created_at: UnixMillis,
        expires_at: UnixMillis,
        mac: &RecordMac,
    ) -> Result<bool, StoreError> {
        let mut call = self.scripts.seal.prepare_invoke();
        call.key(self.keys.token(token_id))
            .arg(token_id.as_str())
            .arg(created_at.0)
            .arg(expires_at.0)
            .arg(mac.to_hex());
        let sealed = self.write(&call).await;
        self.forget([token_id.as_str()]);
        let sealed: i64 = sealed?;
        Ok(sealed == 1)
    }

    async fn touch(&self, token_id: &TokenId, min_interval: Duration) -> Result<(), StoreError> {
        let mut conn = self.writes.clone();
        let mut call = self.scripts.touch.prepare_invoke();
        call.key(self.keys.token(token_id))
            .arg(u64::try_from(min_interval.as_millis()).unwrap_or(u64::MAX));
        if let Some(cache) = &self.cache {
            cache.touched(token_id);
        }
        let _: i64 = self.timed(call.invoke_async(&mut conn)).await?;
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
        let mut call = self.scripts.revoke.prepare_invoke();
        call.key(self.keys.account(account))
            .key(self.keys.token(token_id))
            .key(self.keys.history(account))
            .key(self.keys.tombstone(token_id))
            .arg(token_id.as_str())
            .arg(account.as_str())
            .arg(self.tombstone_ttl_ms())
            .arg(action.as_str())
            .arg(live_keys.as_args());
        self.audited(&mut call, account, actor);
        let revoked = self.write(&call).await;
        // Whatever the answer: this instance stops trusting its copy.
        self.forget([token_id.as_str()]);
        let revoked: i64 = revoked?;
        Ok(revoked == 1)
    }

    async fn revoke_all(
        &self,
        account: &AccountId,
        live_keys: &LiveKeys,
        actor: &Actor,
    ) -> Result<Vec<TokenId>, StoreError> {
        let index = self.keys.account(account);
        let mut reads = self.reads.clone();
        for _ in 0..REVOKE_ALL_ATTEMPTS {
            // Members as bytes: a member that is not UTF-8 (or no token
            // id) must not block the emergency button.
            let members: Vec<Vec<u8>> = match self
                .timed(
                    redis::cmd("ZRANGE")
                        .arg(&index)
                        .arg(0)
                        .arg(-1)
                        .query_async(&mut reads),
                )
                .await
            {
                Ok(members) => members,
                Err(StoreError::Redis(e)) if e.code() == Some("WRONGTYPE") => {
                    return self
                        .revoke_all_without_index(account, live_keys, actor)
                        .await;
                }
                Err(e) => return Err(e),
            };
            let mut call = self.scripts.revoke_all.prepare_invoke();
            call.key(&index)
                .key(self.keys.history(account))
                .arg(self.tombstone_ttl_ms())
                .arg(live_keys.as_args().len())
                .arg(live_keys.as_args());
            let mut unnamed = 0;
            for member in &members {
                call.arg(member.as_slice());
                // A member that is no token id (written by hand) names no
                // token key of ours; it is only listed, and goes with the
                // index.
                // Only ids with the account's shard tag can be its tokens
                // (and keep the script inside one Cluster slot).
                match std::str::from_utf8(member)
                    .ok()
                    .and_then(|m| TokenId::parse(m.to_owned()).ok())
                    .filter(|id| id.shard_tag() == account.shard_tag())
                {
                    Some(id) => {
                        call.key(self.keys.token(&id)).key(self.keys.tombstone(&id));
                    }
                    None => unnamed += 1,
                }
            }
            self.audited(&mut call, account, actor);
            // -1 when the index changed in between; else the ids revoked.
            let revoked = self.write(&call).await;
            self.forget(members.iter().filter_map(|m| std::str::from_utf8(m).ok()));
            let revoked: redis::Value = revoked?;
            if let redis::Value::Array(ids) = revoked {
                if unnamed > 0 {
                    tracing::warn!(
                        account_id = account.as_str(),
                        unnamed,
                        "RevokeAll removed index entries that name no token"
                    );
                }
                return Ok(ids
                    .into_iter()
                    .filter_map(|id| redis::from_redis_value::<String>(id).ok())
                    .filter_map(|id| TokenId::parse(id).ok())
                    .collect());
            }
        }
        Err(StoreError::Contended)
    }

    /// Two round trips on the read connection: the index (and, with
    /// `include_ended`, the tombstone index), then every record (and
    /// tombstone) and Redis's `TIME` (which decides what has expired).
    async fn list(&self, account: &AccountId, include_ended: bool) -> Result<Listing, StoreError> {
        let mut ids = self.index_ids(self.keys.account(account), account).await?;
        if include_ended {
            ids.extend(self.index_ids(self.keys.history(account), account).await?);
            ids.sort();
            ids.dedup();
        }
        if ids.is_empty() {
            return Ok(Listing::default());
        }
        let mut listing = self.entries(ids, include_ended).await?;
        // Only records and tombstones that say they are this account's.
        for entry in &mut listing.entries {
            if entry
                .token
                .as_ref()
                .is_some_and(|t| &t.info.account_id != account)
            {
                entry.token = None;
            }
            if entry
                .tombstone
                .as_ref()
                .is_some_and(|t| &t.account_id != account)
            {
                entry.tombstone = None;
            }
        }
        Ok(listing)
    }

    /// One round trip on the read connection: a script that reads `TIME`
    /// and the stream (`lua/audit_events.lua`), so the retention is
    /// judged on Redis's clock. An entry patd cannot decode (written by
    /// hand) is skipped and logged.
    async fn audit_events(
        &self,
        account: &AccountId,
        page: &AuditPageRequest,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        let mut conn = self.reads.clone();
        let start = page
            .after
            .map_or_else(|| "+".to_owned(), |after| format!("({after}"));
        let mut call = self.scripts.audit_events.prepare_invoke();
        call.key(self.keys.audit(account))
            .arg(self.audit.retention_ms())
            .arg(start)
            .arg(page.size.saturating_add(1));
        let entries: Vec<redis::Value> = self.timed(call.invoke_async(&mut conn)).await?;
        Ok(entries
            .into_iter()
            .filter_map(|entry| {
                let event = decode_event(entry);
                if event.is_none() {
                    tracing::warn!(
                        account_id = account.as_str(),
                        "skipping an audit entry patd cannot read"
                    );
                }
                event
            })
            .collect())
    }

    /// Ready means able to do the job, checked with reads only (so a write
    /// pause never makes patd unready): Redis answers, is the primary
    /// (`ROLE`: a replica refuses every write with READONLY), lets this
    /// user read patd's keys (`HMGET`) and Redis's clock (`TIME`, which
    /// decides expiry) and run scripts (`SCRIPT LOAD` and `EVALSHA` of a
    /// script that writes nothing). In a Cluster, every primary (every
    /// shard) must answer, say `cluster_state:ok` (every slot served) and
    /// run the script. A refusal comes back as Redis's own words (`NOPERM
    /// ... 'evalsha'`), which the readiness log line carries.
    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.reads.clone();
        let mut pipe = redis::pipe();
        pipe.cmd("PING")
            .cmd("ROLE")
            .cmd("HMGET")
            .arg(self.keys.probe())
            .arg("probe")
            .cmd("TIME")
            .cmd("SCRIPT")
            .arg("LOAD")
            .arg(PROBE_SCRIPT);
        let (_pong, role, _probe, _time, sha): (
            String,
            redis::Value,
            redis::Value,
            redis::Value,
            String,
        ) = self.timed(pipe.query_async(&mut conn)).await?;
        let primary = matches!(
            &role,
            redis::Value::Array(items)
                if matches!(items.first(), Some(redis::Value::BulkString(r)) if r == b"master")
        );
        if !primary {
            // Behind Sentinel: a demoted primary; ask where the new one is.
            conn.reached_a_replica();
            return Err(StoreError::Replica);
        }
        if conn.is_cluster() {
            let mut load = redis::cmd("SCRIPT");
            load.arg("LOAD").arg(PROBE_SCRIPT);
            self.timed(conn.on_every_primary(&load)).await?;
            let mut info = redis::cmd("CLUSTER");
            info.arg("INFO");
            for answer in self.timed(conn.on_every_primary(&info)).await? {
                let text: String =
                    redis::from_redis_value(answer).map_err(redis::RedisError::from)?;
                if !text.contains("cluster_state:ok") {
                    return Err(redis::RedisError::from((
                        redis::ErrorKind::Server(redis::ServerErrorKind::ClusterDown),
                        "CLUSTERDOWN",
                        "a primary says cluster_state is not ok (some slots are not served)"
                            .to_owned(),
                    ))
                    .into());
                }
            }
        }
        let mut evalsha = redis::cmd("EVALSHA");
        evalsha.arg(sha).arg(0);
        let ran = self.timed(conn.on_every_primary(&evalsha)).await?;
        if ran.iter().all(|v| matches!(v, redis::Value::Int(1))) {
            Ok(())
        } else {
            Err(StoreError::Corrupt {
                token_id: String::new(),
                reason: "the readiness probe script answered wrongly".into(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_audit_fragment_goes_right_after_the_flags_line() {
        let script = carrying_audit("#!lua flags=allow-oom\nreturn audit('X', {})\n");
        assert!(script.starts_with("#!lua flags=allow-oom\n-- The audit fragment"));
        assert!(script.ends_with("\nreturn audit('X', {})\n"));
    }

    #[test]
    fn the_scripts_that_write_tokens_carry_both_fragments() {
        let script = writing_tokens("#!lua\nreturn write_token\n");
        let audit = script.find("-- The audit fragment").unwrap();
        let token = script.find("-- The token fragment").unwrap();
        assert!(script.starts_with("#!lua\n") && audit < token);
        assert!(script.ends_with("\nreturn write_token\n"));
        // Every script that calls them is loaded through writing_tokens.
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/store/lua");
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let calls = text.lines().any(|l| {
                !l.starts_with("local function")
                    && (l.contains("write_token(") || l.contains("token_expiry("))
            });
            assert_eq!(
                calls,
                name == "issue.lua" || name == "rotate.lua",
                "{name}: calls the token fragment but is not loaded with it, or the reverse"
            );
        }
    }

    #[test]
    fn every_script_that_appends_an_event_carries_the_fragment() {
        // A script calling audit() without the fragment would fail at run
        // time only; the ones loaded through carrying_audit are these.
        let carried = [
            include_str!("lua/issue.lua"),
            include_str!("lua/revoke.lua"),
            include_str!("lua/revoke_all.lua"),
            include_str!("lua/rotate.lua"),
        ];
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/store/lua");
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let calls_audit = text.lines().any(|l| l.trim_start().starts_with("audit("));
            if calls_audit {
                assert!(
                    carried.contains(&text.as_str()),
                    "{} calls audit() but is not loaded through carrying_audit",
                    path.display()
                );
            }
        }
    }

    #[test]
    fn a_stream_entry_decodes_into_an_event() {
        use redis::Value::{Array, BulkString};
        let text = |s: &str| BulkString(s.as_bytes().to_vec());
        let entry = Array(vec![
            text("1700000000123-2"),
            Array(vec![
                text("action"),
                text("Revoke"),
                text("account"),
                text("acct-1"),
                text("tokens"),
                text("abc0123456789xyz"),
                text("caller"),
                text("console"),
                text("request"),
                text("00ff"),
            ]),
        ]);
        let event = decode_event(entry).unwrap();
        assert_eq!(
            event.id,
            EventId {
                ms: 1_700_000_000_123,
                seq: 2
            }
        );
        assert_eq!(event.action, "Revoke");
        assert_eq!(event.token_ids[0].as_str(), "abc0123456789xyz");
        assert_eq!(event.caller, "console");
        assert!(decode_event(Array(vec![text("1-0"), Array(vec![])])).is_none());
    }
}
