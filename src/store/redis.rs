//! The production store on Redis (7.0 or newer: the scripts declare their
//! flags in a `#!lua` line). Every multi-key change is one Lua script (see
//! `lua/`), called by SHA and reloaded by the client after a restart or
//! failover. Reads (Introspect, List, readiness) and writes (the scripts)
//! use two connections, so a paused or slow write (`CLIENT PAUSE WRITE`,
//! as `FAILOVER` does) never queues a read behind it. Connections reconnect
//! by themselves, and every call is bounded by a timeout so a stalled Redis
//! turns into UNAVAILABLE, never a hang.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use redis::io::tcp::{TcpSettings, socket2};
use redis::{ClientTlsConfig, FromRedisValue, Script, ScriptInvocation, TlsCertificates};

use super::connection::{Acked, Link, LinkOptions, RedisUrl};
use super::keys::Keys;
use super::{Found, IssueOutcome, IssueTerms, NewToken, Store, StoreError, StoredToken};
use crate::domain::{
    AccountId, Expiry, ExpiryRefusal, Note, Scopes, TokenId, TokenInfo, UnixMillis,
};
use crate::token::{LiveKeys, TokenDigest};

/// Hash fields read back for a token, in this order.
const FIELDS: [&str; 8] = [
    "account", "digest", "note", "scopes", "created", "expires", "used", "kid",
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

/// Redis-backed token store; cheap to clone (two shared connections:
/// multiplexed ones to one Redis or the Sentinel primary, or two Cluster
/// clients).
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
        Ok(Self {
            reads,
            writes,
            keys: Keys::new(key_prefix),
            timeout,
            min_replicas_ack,
            scripts: Arc::new(Scripts {
                issue: Script::new(include_str!("lua/issue.lua")),
                revoke: Script::new(include_str!("lua/revoke.lua")),
                revoke_all: Script::new(include_str!("lua/revoke_all.lua")),
                touch: Script::new(include_str!("lua/touch.lua")),
            }),
        })
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

    /// RevokeAll when the account's index is not a sorted set (written by
    /// hand, or corrupt): the account's tokens are found by scanning its
    /// shard tag's keys and checking each record's `account`, each is
    /// revoked on its own (the Revoke script does not need the index),
    /// and the index is removed. Slow, and only for this repair.
    async fn revoke_all_without_index(
        &self,
        account: &AccountId,
        live_keys: &LiveKeys,
    ) -> Result<u32, StoreError> {
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
        let mut revoked = 0;
        for id in &ids {
            if self.revoke(account, id, live_keys).await? {
                revoked += 1;
            }
        }
        let mut call = self.scripts.revoke_all.prepare_invoke();
        call.key(&index).arg(0);
        let _: i64 = self.write(&call).await?;
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
    if values
        .iter()
        .flatten()
        .any(|v| std::str::from_utf8(v).is_err())
    {
        return Err(corrupt("a field is not UTF-8"));
    }
    let mut it = values
        .into_iter()
        .map(|v| v.and_then(|bytes| String::from_utf8(bytes).ok()));
    let mut next = || it.next().flatten();
    let (Some(account), digest, note, scopes, created, expires, used, key_id) = (
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
    Ok(Some(StoredToken {
        info,
        digest,
        // The scripts treat an empty key id as none (plain SHA-256).
        key_id: key_id.filter(|kid| !kid.is_empty()),
    }))
}

impl Store for RedisStore {
    async fn issue(
        &self,
        token: &NewToken,
        expiry: Expiry,
        terms: &IssueTerms<'_>,
    ) -> Result<IssueOutcome, StoreError> {
        let mut call = self.scripts.issue.prepare_invoke();
        let (kind, value) = match expiry {
            Expiry::AfterMillis(ms) => ("ttl", ms),
            Expiry::At(at) => ("at", at.0),
        };
        call.key(self.keys.account(&token.account_id))
            .key(self.keys.token(&token.token_id))
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
            .arg(terms.live_keys.as_args());
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

    /// One round trip on the read connection: the record, then Redis's
    /// `TIME` (so "expired?" is decided on Redis's clock, at or after the
    /// read). Redis drops an expired key by itself as well.
    async fn lookup(&self, token_id: &TokenId) -> Result<Option<Found>, StoreError> {
        let mut conn = self.reads.clone();
        let mut pipe = redis::pipe();
        pipe.cmd("HMGET")
            .arg(self.keys.token(token_id))
            .arg(&FIELDS)
            .cmd("TIME");
        let (values, time): (Vec<Option<Vec<u8>>>, (u64, u64)) =
            self.timed(pipe.query_async(&mut conn)).await?;
        let now = redis_millis(time);
        Ok(decode_record(token_id, values)?.map(|token| Found { token, now }))
    }

    async fn touch(&self, token_id: &TokenId, min_interval: Duration) -> Result<(), StoreError> {
        let mut conn = self.writes.clone();
        let mut call = self.scripts.touch.prepare_invoke();
        call.key(self.keys.token(token_id))
            .arg(u64::try_from(min_interval.as_millis()).unwrap_or(u64::MAX));
        let _: i64 = self.timed(call.invoke_async(&mut conn)).await?;
        Ok(())
    }

    async fn revoke(
        &self,
        account: &AccountId,
        token_id: &TokenId,
        live_keys: &LiveKeys,
    ) -> Result<bool, StoreError> {
        let mut call = self.scripts.revoke.prepare_invoke();
        call.key(self.keys.account(account))
            .key(self.keys.token(token_id))
            .arg(token_id.as_str())
            .arg(account.as_str())
            .arg(live_keys.as_args());
        let revoked: i64 = self.write(&call).await?;
        Ok(revoked == 1)
    }

    async fn revoke_all(
        &self,
        account: &AccountId,
        live_keys: &LiveKeys,
    ) -> Result<u32, StoreError> {
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
                    return self.revoke_all_without_index(account, live_keys).await;
                }
                Err(e) => return Err(e),
            };
            let mut call = self.scripts.revoke_all.prepare_invoke();
            call.key(&index)
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
                        call.key(self.keys.token(&id));
                    }
                    None => unnamed += 1,
                }
            }
            let revoked: i64 = self.write(&call).await?;
            if let Ok(n) = u32::try_from(revoked) {
                if unnamed > 0 {
                    tracing::warn!(
                        account_id = account.as_str(),
                        unnamed,
                        "RevokeAll removed index entries that name no token"
                    );
                }
                return Ok(n);
            }
        }
        Err(StoreError::Contended)
    }

    /// Two round trips on the read connection: the index, then every
    /// record and Redis's `TIME` (which decides what has expired).
    async fn list(
        &self,
        account: &AccountId,
        live_keys: &LiveKeys,
    ) -> Result<Vec<TokenInfo>, StoreError> {
        let mut conn = self.reads.clone();
        let members: Vec<Vec<u8>> = self
            .timed(
                redis::cmd("ZRANGE")
                    .arg(self.keys.account(account))
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut conn),
            )
            .await?;
        let ids: Vec<TokenId> = members
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
            .collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        // A record of the wrong type answers an error for itself only.
        pipe.ignore_errors();
        for id in &ids {
            pipe.cmd("HMGET").arg(self.keys.token(id)).arg(&FIELDS);
        }
        pipe.cmd("TIME");
        let mut replies: Vec<redis::Value> = self.timed(pipe.query_async(&mut conn)).await?;
        let time = replies.pop().unwrap_or(redis::Value::Nil);
        let now = redis_millis(redis::from_redis_value(time).map_err(redis::RedisError::from)?);
        let mut tokens = Vec::with_capacity(ids.len());
        for (id, reply) in ids.iter().zip(replies) {
            let row: Vec<Option<Vec<u8>>> = match redis::from_redis_value(reply) {
                Ok(row) => row,
                Err(e) => {
                    tracing::warn!(
                        token_id = id.as_str(),
                        error = %e,
                        "skipping an unreadable token record in List"
                    );
                    continue;
                }
            };
            // One bad record must not hide the account's other tokens.
            match decode_record(id, row) {
                Ok(Some(t)) if t.info.expires_at > now && live_keys.admits(t.key_id.as_deref()) => {
                    tokens.push(t.info);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "skipping a corrupt token record in List"),
            }
        }
        Ok(tokens)
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
