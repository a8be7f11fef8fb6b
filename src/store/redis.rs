//! The production store on Redis (7.0 or newer: the scripts declare their
//! flags in a `#!lua` line). Every multi-key change is one Lua script (see
//! `lua/`), called by SHA and reloaded by the client after a restart or
//! failover. A script that changes an account carries the audit fragment
//! (`lua/audit.lua`, see `audited`), so its event is appended in the same
//! atomic step. Reads (Introspect, List, the audit trail, readiness) and
//! writes (the scripts)
//! use two connections, so a paused or slow write (`CLIENT PAUSE WRITE`,
//! as `FAILOVER` does) never queues a read behind it. Connections reconnect
//! by themselves, and every call is bounded by a timeout so a stalled Redis
//! turns into UNAVAILABLE, never a hang.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManagerConfig;
use redis::io::tcp::{TcpSettings, socket2};
use redis::{
    Client, ClientTlsConfig, IntoConnectionInfo as _, Script, ScriptInvocation, TlsCertificates,
};

use super::connection::HealingConnection;
use super::keys::Keys;
use super::{Found, IssueOutcome, IssueTerms, NewToken, Store, StoreError, StoredToken};
use crate::audit::{Actor, AuditEvent, AuditPageRequest, AuditPolicy, EventId};
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
    audit_events: Script,
}

/// The audit fragment every changing script carries.
const AUDIT_FRAGMENT: &str = include_str!("lua/audit.lua");

/// `source` with the audit fragment put right after its `#!lua` line (the
/// flags must stay first), so the script can call `audit(action, ids)`.
/// A new script that changes an account is loaded through this, and its
/// calls get their audit key and arguments from [`RedisStore::audited`].
fn carrying_audit(source: &str) -> String {
    let (shebang, body) = source.split_once('\n').unwrap_or((source, ""));
    format!("{shebang}\n{AUDIT_FRAGMENT}\n{body}")
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
    reads: HealingConnection,
    /// The scripts.
    writes: HealingConnection,
    keys: Keys,
    timeout: Duration,
    scripts: Arc<Scripts>,
    audit: AuditPolicy,
}

impl RedisStore {
    /// Prepares a store for `url` (`redis://` or `rediss://`, with `tls`
    /// for a private CA or a client certificate). It connects lazily, so
    /// patd starts even while Redis is down and serves as soon as it is
    /// back; a connection that fails is replaced by itself.
    ///
    /// # Errors
    /// The URL cannot be parsed, or the TLS material is not usable PEM.
    pub fn connect(
        url: &str,
        key_prefix: &str,
        timeout: Duration,
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
        let url = url.into_connection_info()?.set_tcp_settings(tcp);
        let client = if tls.ca_pem.is_none() && tls.client.is_none() {
            Client::open(url)?
        } else {
            Client::build_with_tls(
                url,
                TlsCertificates {
                    client_tls: tls.client.as_ref().map(|(cert, key)| ClientTlsConfig {
                        client_cert: cert.clone(),
                        client_key: key.clone(),
                    }),
                    root_cert: tls.ca_pem.clone(),
                },
            )?
        };
        // Responses are bounded by `timed` (one timer per call, covering
        // reconnects too), so the manager gets no response timeout of its own.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(None)
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let reads = HealingConnection::new(client.clone(), config.clone())?;
        let writes = HealingConnection::new(client, config)?;
        Ok(Self {
            reads,
            writes,
            keys: Keys::new(key_prefix),
            timeout,
            scripts: Arc::new(Scripts {
                issue: Script::new(&carrying_audit(include_str!("lua/issue.lua"))),
                revoke: Script::new(&carrying_audit(include_str!("lua/revoke.lua"))),
                revoke_all: Script::new(&carrying_audit(include_str!("lua/revoke_all.lua"))),
                touch: Script::new(include_str!("lua/touch.lua")),
                audit_events: Script::new(include_str!("lua/audit_events.lua")),
            }),
            audit: AuditPolicy::default(),
        })
    }

    /// The same store keeping the audit trail by `audit`.
    #[must_use]
    pub fn with_audit(mut self, audit: AuditPolicy) -> Self {
        self.audit = audit;
        self
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
        let mut cursor: u64 = 0;
        let mut ids = Vec::new();
        loop {
            let (next, keys): (u64, Vec<Vec<u8>>) = self
                .timed(
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut reads),
                )
                .await?;
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
            if self.revoke(account, &id, live_keys, actor).await? {
                revoked.push(id);
            }
        }
        let mut writes = self.writes.clone();
        let mut call = self.scripts.revoke_all.prepare_invoke();
        call.key(self.keys.account(account)).arg(0);
        self.audited(&mut call, account, actor);
        let _: redis::Value = self.timed(call.invoke_async(&mut writes)).await?;
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
        let mut conn = self.writes.clone();
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
        self.audited(&mut call, &token.account_id, actor);
        let (outcome, now, expires): (i64, u64, u64) =
            self.timed(call.invoke_async(&mut conn)).await?;
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
        actor: &Actor,
    ) -> Result<bool, StoreError> {
        let mut conn = self.writes.clone();
        let mut call = self.scripts.revoke.prepare_invoke();
        call.key(self.keys.account(account))
            .key(self.keys.token(token_id))
            .arg(token_id.as_str())
            .arg(account.as_str())
            .arg(live_keys.as_args());
        self.audited(&mut call, account, actor);
        let revoked: i64 = self.timed(call.invoke_async(&mut conn)).await?;
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
        let mut writes = self.writes.clone();
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
            self.audited(&mut call, account, actor);
            // -1 when the index changed in between; else the ids revoked.
            let revoked: redis::Value = self.timed(call.invoke_async(&mut writes)).await?;
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
    /// script that writes nothing). A refusal comes back as Redis's own
    /// words (`NOPERM ... 'evalsha'`), which the readiness log line carries.
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
            return Err(StoreError::Replica);
        }
        let ran: i64 = self
            .timed(redis::cmd("EVALSHA").arg(sha).arg(0).query_async(&mut conn))
            .await?;
        if ran == 1 {
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
    fn every_script_that_appends_an_event_carries_the_fragment() {
        // A script calling audit() without the fragment would fail at run
        // time only; the ones loaded through carrying_audit are these.
        let carried = [
            include_str!("lua/issue.lua"),
            include_str!("lua/revoke.lua"),
            include_str!("lua/revoke_all.lua"),
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
