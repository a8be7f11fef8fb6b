//! Records the store cannot forge: with `PATD_TOKEN_HASH_KEYS`, every token
//! record carries a seal (`mac`, an HMAC under its digest key over every
//! field a decision uses). Someone who can write Redis and holds a token
//! of their own rewrites its record, as issue 17 describes (account,
//! scopes, expiry with `PERSIST`, key id, digest, created): the token is
//! then unknown everywhere (Introspect, forward-auth), logged as tampered
//! without its value, skipped by List, and still removed by Revoke and
//! RevokeAll. The note is not sealed (shown, never decided on). Records
//! without a seal are refused unless `PATD_ACCEPT_UNSEALED=true` (for an
//! upgrade); a seal that cannot be written undoes the Issue or Rotate.

use std::time::Duration;

use patd::audit::{Actor, AuditAction, AuditPageRequest};
use patd::domain::{
    AccountId, ExpiryRequest, LifetimePolicy, Note, PageRequest, RevocationReason, Scopes, TokenId,
    UnixMillis,
};
use patd::pb::{InactiveReason, RotateRequest};
use patd::service::{IssueCommand, RotateCommand, Rules, ServiceError, Tokens};
use patd::store::connection::RedisUrl;
use patd::store::{
    Found, IssueOutcome, IssueTerms, Listing, MemoryStore, NewToken, RedisStore, RedisTls,
    RotateOutcome, Rotation, Store, StoreError,
};
use patd::token::{LiveKeys, RecordMac, TokenFormat, TokenHasher};
use tonic::Code;

use crate::helpers::{Backend, Client, Patd, PatdOptions, RedisServer, eventually, random_name};
use crate::http_helpers::get;

fn hash_key(byte: u8) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode([byte; 32])
}

/// Two live keys: `k1` current, `k2` older (so a record relabelled `k2`
/// names a configured key, and only its seal can tell).
fn keys() -> String {
    format!("k1:{},k2:{}", hash_key(1), hash_key(2))
}

fn record_key(prefix: &str, token_id: &str) -> String {
    format!("{prefix}:{{{}}}:t:{token_id}", &token_id[..3])
}

fn hget(redis: &RedisServer, prefix: &str, token_id: &str, field: &str) -> Option<String> {
    redis::cmd("HGET")
        .arg(record_key(prefix, token_id))
        .arg(field)
        .query(&mut redis.conn())
        .expect("HGET")
}

fn hset(redis: &RedisServer, prefix: &str, token_id: &str, field: &str, value: &str) {
    let _: i64 = redis::cmd("HSET")
        .arg(record_key(prefix, token_id))
        .arg(field)
        .arg(value)
        .query(&mut redis.conn())
        .expect("HSET");
}

fn keyed(redis: &RedisServer, extra: &[(&str, &str)]) -> PatdOptions {
    let mut opts =
        PatdOptions::new(Backend::Redis { url: redis.url() }).env("PATD_TOKEN_HASH_KEYS", &keys());
    for (k, v) in extra {
        opts = opts.env(k, v);
    }
    opts
}

async fn issue_for(client: &mut Client, account: &str, scopes: &[&str]) -> (String, String) {
    let issued = client
        .issue(patd::pb::IssueRequest {
            account_id: account.to_owned(),
            note: "mine".to_owned(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            ttl: Some(pbjson_types::Duration {
                seconds: 600,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .expect("issue");
    (issued.token, issued.info.expect("info").token_id)
}

/// What a caller and a gateway see for `token`: (active, reason,
/// forward-auth status, forward-auth's X-Account-Id); RFC 7662
/// introspection must agree on `active`.
async fn seen(patd: &Patd, client: &mut Client, token: &str) -> (bool, i32, u16, Option<String>) {
    let answer = client.introspect(token).await.expect("introspect");
    let oauth = crate::http_helpers::send(
        patd.http_addr,
        "POST",
        "/oauth2/introspect",
        &[("content-type", "application/x-www-form-urlencoded")],
        format!("token={token}").as_bytes(),
    )
    .await;
    assert_eq!(oauth.status, 200, "{}", oauth.body);
    let oauth: serde_json::Value = serde_json::from_str(&oauth.body).expect("JSON");
    assert_eq!(oauth["active"], answer.active, "RFC 7662 disagrees");
    let reply = get(
        patd.http_addr,
        "/v1/forward-auth",
        &[("Authorization", &format!("Bearer {token}"))],
    )
    .await;
    (
        answer.active,
        answer.reason,
        reply.status,
        reply.header("x-account-id").map(str::to_owned),
    )
}

/// Records refused as tampered so far, by `rpc` (`None`: all), from
/// `/metrics` (counted before the answer is sent, so a scrape after an
/// answer sees it).
async fn tampered_count(patd: &Patd, rpc: Option<&str>) -> f64 {
    let text = crate::observability::scrape(patd).await;
    text.lines()
        .filter(|l| l.starts_with("patd_records_tampered_total{"))
        .filter(|l| rpc.is_none_or(|rpc| l.contains(&format!("rpc=\"{rpc}\""))))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// The rewrites of issue 17, each of one field a decision uses.
fn rewrites(now_ms: u64) -> Vec<(&'static str, &'static str, String)> {
    vec![
        ("account", "account", "acct-alice".to_owned()),
        ("scopes", "scopes", "admin read".to_owned()),
        (
            "expires (+10 years, PERSIST)",
            "expires",
            (now_ms + 10 * 365 * 86_400_000).to_string(),
        ),
        ("key id", "kid", "k2".to_owned()),
        ("digest", "digest", "ab".repeat(32)),
        ("created", "created", (now_ms - 86_400_000).to_string()),
    ]
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test]
async fn a_rewritten_record_is_unknown_everywhere_and_logged_as_tampered() {
    let redis = RedisServer::start();
    let patd = Patd::spawn(keyed(&redis, &[])).await;
    let mut client = patd.client().await;
    let prefix = patd.key_prefix.clone();
    let mallory = random_name("acct-mallory-");

    let (untouched, untouched_id) = issue_for(&mut client, &mallory, &["read"]).await;
    assert!(
        hget(&redis, &prefix, &untouched_id, "mac").is_some(),
        "Issue sealed the record"
    );
    let mut tampered = Vec::new();
    for (what, field, value) in rewrites(unix_ms()) {
        let (token, token_id) = issue_for(&mut client, &mallory, &["read"]).await;
        hset(&redis, &prefix, &token_id, field, &value);
        if field == "expires" {
            let _: i64 = redis::cmd("PERSIST")
                .arg(record_key(&prefix, &token_id))
                .query(&mut redis.conn())
                .expect("PERSIST");
        }
        // Twice: the second answer may come from the introspection cache,
        // which is held to the same check.
        for round in 0..2 {
            let (active, reason, status, account) = seen(&patd, &mut client, &token).await;
            assert!(!active, "{what} (round {round}): still active");
            assert_eq!(reason, InactiveReason::Unknown as i32, "{what}");
            assert_eq!(status, 401, "{what}: forward-auth");
            assert_eq!(account, None, "{what}: X-Account-Id sent");
        }
        // The log is read from patd's stderr by a thread: wait for it.
        let warned = eventually(Duration::from_secs(5), || async {
            patd.logs()
                .lines()
                .any(|l| l.contains("WARN") && l.contains("tampered") && l.contains(&token_id))
        })
        .await;
        assert!(
            warned,
            "{what}: no tampered warning; logs:\n{}",
            patd.logs()
        );
        assert!(
            !patd.logs().contains(&token),
            "{what}: the value was logged"
        );
        tampered.push((what, token_id, token));
    }
    // Each refusal is counted: six per rewrite (two rounds of gRPC
    // Introspect, RFC 7662 and forward-auth, the same token check).
    assert_eq!(
        tampered_count(&patd, Some("Introspect")).await,
        (tampered.len() * 6) as f64,
        "{}",
        crate::observability::scrape(&patd).await
    );
    // The untouched token is unaffected.
    let (active, _, status, account) = seen(&patd, &mut client, &untouched).await;
    assert!(active);
    assert_eq!(status, 200);
    assert_eq!(account.as_deref(), Some(mallory.as_str()));
    let logs = patd.logs();
    for digest in tampered
        .iter()
        .filter_map(|(_, id, _)| hget(&redis, &prefix, id, "digest"))
    {
        assert!(!logs.contains(&digest), "a digest was logged");
    }

    // List shows only the untouched token.
    let listed: Vec<String> = client
        .list(&mallory)
        .await
        .expect("list")
        .tokens
        .into_iter()
        .map(|t| t.token_id)
        .collect();
    assert_eq!(listed, std::slice::from_ref(&untouched_id));
    // RevokeToken does not take a tampered record's word for its account:
    // it is no live token (Revoke by id and RevokeAll still remove it).
    let (what, first, first_value) = &tampered[0];
    assert_eq!(*what, "account");
    let refused = client
        .revoke_token(first_value, "leaked")
        .await
        .expect_err("a tampered record is no live token");
    assert_eq!(refused.code(), Code::NotFound);
    // Nor does Rotate: a successor would inherit the forged scopes and be
    // sealed.
    let (what, scopes_id, _) = &tampered[1];
    assert_eq!(*what, "scopes");
    let refused = client
        .rotate(RotateRequest {
            account_id: mallory.clone(),
            token_id: scopes_id.clone(),
            ..Default::default()
        })
        .await
        .expect_err("a tampered record cannot be rotated");
    assert_eq!(refused.code(), Code::NotFound);
    // Revoke by id still removes a tampered record (its own account's
    // index names it), and RevokeAll removes the rest.
    client.revoke(&mallory, scopes_id).await.expect("revoke");
    assert_eq!(hget(&redis, &prefix, scopes_id, "account"), None);
    client.revoke_all(&mallory).await.expect("revoke all");
    for (what, id, _) in &tampered {
        assert_eq!(
            hget(&redis, &prefix, id, "account"),
            None,
            "{what}: record left after RevokeAll"
        );
    }
    assert_eq!(hget(&redis, &prefix, first, "scopes"), None);
    assert!(!crate::helpers::is_active(&mut client, &untouched).await);
}

#[tokio::test]
async fn the_note_is_not_sealed_and_may_change_without_effect_on_the_decision() {
    let redis = RedisServer::start();
    let patd = Patd::spawn(keyed(&redis, &[])).await;
    let mut client = patd.client().await;
    let account = random_name("acct-");
    let (token, token_id) = issue_for(&mut client, &account, &["read"]).await;
    hset(
        &redis,
        &patd.key_prefix,
        &token_id,
        "note",
        "renamed by hand",
    );
    let answer = client.introspect(&token).await.expect("introspect");
    assert!(answer.active);
    let info = answer.info.expect("info");
    assert_eq!(info.note, "renamed by hand");
    assert_eq!(info.scopes, ["read"]);
    assert_eq!(tampered_count(&patd, None).await, 0.0);
    assert!(!patd.logs().contains("tampered"));
}

/// A record without any `mac` (as every record issued before seals) is
/// refused, unless PATD_ACCEPT_UNSEALED=true, which warns once per token;
/// a wrong seal is refused either way.
#[tokio::test]
async fn an_unsealed_record_is_refused_unless_accepted_for_an_upgrade() {
    let redis = RedisServer::start();
    let prefix = random_name("t");
    let strict =
        Patd::spawn(keyed(&redis, &[("PATD_CACHE_MAX_ENTRIES", "0")]).key_prefix(&prefix)).await;
    let mut client = strict.client().await;
    let account = random_name("acct-");
    let (unsealed, unsealed_id) = issue_for(&mut client, &account, &["read"]).await;
    let (wrong, wrong_id) = issue_for(&mut client, &account, &["read"]).await;
    let _: i64 = redis::cmd("HDEL")
        .arg(record_key(&prefix, &unsealed_id))
        .arg("mac")
        .query(&mut redis.conn())
        .expect("HDEL");
    let other_mac = hget(&redis, &prefix, &unsealed_id, "digest").expect("digest");
    hset(&redis, &prefix, &wrong_id, "mac", &other_mac);
    assert!(!crate::helpers::is_active(&mut client, &unsealed).await);
    assert!(!crate::helpers::is_active(&mut client, &wrong).await);
    let warned = eventually(Duration::from_secs(5), || async {
        strict.logs().contains("tampered")
    })
    .await;
    assert!(warned, "logs:\n{}", strict.logs());
    drop(strict);

    let upgrading = Patd::spawn(
        keyed(
            &redis,
            &[
                ("PATD_ACCEPT_UNSEALED", "true"),
                ("PATD_CACHE_MAX_ENTRIES", "0"),
            ],
        )
        .key_prefix(&prefix),
    )
    .await;
    let mut client = upgrading.client().await;
    for _ in 0..3 {
        assert!(crate::helpers::is_active(&mut client, &unsealed).await);
    }
    assert!(!crate::helpers::is_active(&mut client, &wrong).await);
    let warnings = || {
        upgrading
            .logs()
            .lines()
            .filter(|l| l.contains("WARN") && l.contains("unsealed") && l.contains(&unsealed_id))
            .count()
    };
    // The wrongly sealed token's refusal is logged after the three
    // acceptances: once it is there, so are they.
    let seen = eventually(Duration::from_secs(5), || async {
        upgrading
            .logs()
            .lines()
            .any(|l| l.contains("tampered") && l.contains(&wrong_id))
    })
    .await;
    assert!(seen, "logs:\n{}", upgrading.logs());
    assert_eq!(
        warnings(),
        1,
        "one warning per token; logs:\n{}",
        upgrading.logs()
    );
    assert!(
        upgrading.logs().contains("PATD_ACCEPT_UNSEALED"),
        "the start warns"
    );
    assert_eq!(
        client.list(&account).await.expect("list").tokens.len(),
        1,
        "the unsealed token is listed, the wrongly sealed one is not"
    );
    // Rotating an unsealed token gives a sealed successor.
    let rotated = client
        .rotate(RotateRequest {
            account_id: account.clone(),
            token_id: unsealed_id,
            ..Default::default()
        })
        .await
        .expect("rotate");
    let new_id = rotated.info.expect("info").token_id;
    assert!(hget(&redis, &prefix, &new_id, "mac").is_some());
    assert!(crate::helpers::is_active(&mut client, &rotated.token).await);
}

#[tokio::test]
async fn issue_and_rotate_seal_their_tokens_and_plain_digests_carry_no_seal() {
    let redis = RedisServer::start();
    let patd = Patd::spawn(keyed(&redis, &[])).await;
    let mut client = patd.client().await;
    let prefix = patd.key_prefix.clone();
    let account = random_name("acct-");
    let (token, token_id) = issue_for(&mut client, &account, &["read"]).await;
    assert!(crate::helpers::is_active(&mut client, &token).await);
    let rotated = client
        .rotate(RotateRequest {
            account_id: account.clone(),
            token_id: token_id.clone(),
            grace: Some(pbjson_types::Duration {
                seconds: 60,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .expect("rotate");
    let new_id = rotated.info.expect("info").token_id;
    assert!(hget(&redis, &prefix, &new_id, "mac").is_some());
    assert!(crate::helpers::is_active(&mut client, &rotated.token).await);
    // The old token's seal still holds: `rotated` only shortens its life.
    assert!(crate::helpers::is_active(&mut client, &token).await);
    assert_eq!(tampered_count(&patd, None).await, 0.0);
    assert!(!patd.logs().contains("tampered"));
    drop(patd);

    let plain = Patd::redis(&redis).await;
    let mut client = plain.client().await;
    let (token, token_id) = issue_for(&mut client, &account, &[]).await;
    assert!(crate::helpers::is_active(&mut client, &token).await);
    assert_eq!(hget(&redis, &plain.key_prefix, &token_id, "mac"), None);
}

/// The store around a real one that makes Redis hold writes (`CLIENT PAUSE
/// WRITE`, as `FAILOVER` does) right when a seal is asked for, so the seal
/// times out after its Issue or Rotate succeeded.
#[derive(Clone)]
struct PausedAtSeal<S> {
    inner: S,
    redis_url: String,
}

impl<S: Store> Store for PausedAtSeal<S> {
    async fn issue(
        &self,
        token: &NewToken,
        expiry: patd::domain::Expiry,
        terms: &IssueTerms<'_>,
        actor: &Actor,
    ) -> Result<IssueOutcome, StoreError> {
        self.inner.issue(token, expiry, terms, actor).await
    }

    async fn lookup(&self, token_id: &TokenId) -> Result<Found, StoreError> {
        self.inner.lookup(token_id).await
    }

    async fn rotate(
        &self,
        rotation: &Rotation<'_>,
        terms: &IssueTerms<'_>,
        actor: &Actor,
    ) -> Result<RotateOutcome, StoreError> {
        self.inner.rotate(rotation, terms, actor).await
    }

    async fn seal(
        &self,
        token_id: &TokenId,
        created_at: UnixMillis,
        expires_at: UnixMillis,
        mac: &RecordMac,
    ) -> Result<bool, StoreError> {
        let mut conn = redis::Client::open(self.redis_url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let _: () = redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(1500)
            .arg("WRITE")
            .query_async(&mut conn)
            .await
            .unwrap();
        self.inner.seal(token_id, created_at, expires_at, mac).await
    }

    async fn touch(&self, token_id: &TokenId, min_interval: Duration) -> Result<(), StoreError> {
        self.inner.touch(token_id, min_interval).await
    }

    async fn revoke(
        &self,
        account: &AccountId,
        token_id: &TokenId,
        live_keys: &LiveKeys,
        actor: &Actor,
        action: AuditAction,
    ) -> Result<bool, StoreError> {
        self.inner
            .revoke(account, token_id, live_keys, actor, action)
            .await
    }

    async fn revoke_all(
        &self,
        account: &AccountId,
        live_keys: &LiveKeys,
        actor: &Actor,
    ) -> Result<Vec<TokenId>, StoreError> {
        self.inner.revoke_all(account, live_keys, actor).await
    }

    async fn audit_events(
        &self,
        account: &AccountId,
        page: &AuditPageRequest,
    ) -> Result<Vec<patd::audit::AuditEvent>, StoreError> {
        self.inner.audit_events(account, page).await
    }

    async fn list(&self, account: &AccountId, include_ended: bool) -> Result<Listing, StoreError> {
        self.inner.list(account, include_ended).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
}

fn rules(accept_unsealed: bool) -> Rules {
    Rules {
        format: TokenFormat::new("pat").expect("prefix"),
        hasher: TokenHasher::from_setting(&keys()).expect("keys"),
        max_tokens_per_account: 50,
        lifetime: LifetimePolicy {
            default_ttl: Duration::from_secs(3600),
            max_ttl: Duration::from_secs(86_400),
        },
        max_rotation_grace: Duration::from_secs(3600),
        accept_unsealed,
    }
}

fn command(account: &AccountId) -> IssueCommand {
    IssueCommand {
        account: account.clone(),
        note: Note::parse("n".into()).expect("note"),
        scopes: Scopes::parse(vec!["read".into()]).expect("scopes"),
        expiry: ExpiryRequest::Default,
    }
}

/// An Issue (and a Rotate) whose seal cannot be written answers
/// UNAVAILABLE, returns no value, and its token is undone once Redis
/// takes writes again: nothing unsealed outlives the call.
#[tokio::test]
async fn a_seal_that_cannot_be_written_undoes_the_issue_and_the_rotate() {
    let redis = RedisServer::start();
    let prefix = random_name("t");
    let store = RedisStore::connect(
        &RedisUrl::parse(&redis.url()).expect("url"),
        &prefix,
        Duration::from_millis(500),
        0,
        &RedisTls::default(),
    )
    .expect("store");
    let tokens = Tokens::new(store.clone(), rules(false));
    let paused = Tokens::new(
        PausedAtSeal {
            inner: store,
            redis_url: redis.url(),
        },
        rules(false),
    );
    let account = AccountId::parse(random_name("acct-")).expect("account");

    let failed = paused.issue("console", command(&account)).await;
    assert!(
        matches!(failed, Err(ServiceError::Unavailable(_))),
        "{failed:?}"
    );
    // The Issue landed, its seal did not: the undo revokes it.
    let undone = eventually(Duration::from_secs(15), || async {
        tokens
            .list_audit_events(
                "console",
                account.clone(),
                AuditPageRequest::parse(0, "").unwrap(),
            )
            .await
            .is_ok_and(|page| page.events.first().is_some_and(|e| e.action == "Revoke"))
    })
    .await;
    assert!(undone, "the unsealed token was not undone");
    let page = tokens
        .list(
            "console",
            account.clone(),
            PageRequest::parse(0, "").unwrap(),
            false,
        )
        .await
        .expect("list");
    assert!(page.tokens.is_empty());
    assert_eq!(redis.live_keys(&prefix), Vec::<String>::new());

    // A Rotate whose successor cannot be sealed: UNAVAILABLE, the
    // successor is undone, the old token keeps working (in its grace).
    let issued = tokens
        .issue("console", command(&account))
        .await
        .expect("issue");
    let failed = paused
        .rotate(
            "console",
            RotateCommand {
                account: account.clone(),
                token_id: issued.info.token_id.clone(),
                grace: (600, 0),
                expiry: ExpiryRequest::Default,
            },
        )
        .await;
    assert!(
        matches!(failed, Err(ServiceError::Unavailable(_))),
        "{failed:?}"
    );
    let undone = eventually(Duration::from_secs(15), || async {
        tokens
            .list_audit_events(
                "console",
                account.clone(),
                AuditPageRequest::parse(0, "").unwrap(),
            )
            .await
            .is_ok_and(|page| {
                let actions: Vec<&str> = page.events.iter().map(|e| e.action.as_str()).collect();
                actions.starts_with(&["Revoke", "Rotate", "Issue"])
            })
    })
    .await;
    assert!(undone, "the unsealed successor was not undone");
    let active = tokens
        .introspect(issued.token.expose())
        .await
        .expect("introspect");
    assert!(matches!(active, patd::service::Introspection::Active(_)));
    // A value revoked by hand afterwards: nothing else lives.
    tokens
        .revoke_token(
            "console",
            issued.token.expose(),
            RevocationReason::default(),
        )
        .await
        .expect("revoke token");
    assert_eq!(redis.live_keys(&prefix), Vec::<String>::new());
}

/// Both stores seal the same way: only the record as issued, only while
/// it exists; a wrong or missing seal is refused by the service either way.
#[tokio::test]
async fn both_stores_seal_only_the_record_as_issued() {
    let redis = RedisServer::start();
    let redis_store = RedisStore::connect(
        &RedisUrl::parse(&redis.url()).expect("url"),
        &random_name("t"),
        Duration::from_secs(2),
        0,
        &RedisTls::default(),
    )
    .expect("store");
    seal_rules(MemoryStore::new()).await;
    seal_rules(redis_store).await;
}

async fn seal_rules<S: Store>(store: S) {
    let hasher = TokenHasher::from_setting(&keys()).expect("keys");
    let live = hasher.live_keys();
    let account = AccountId::parse(random_name("acct-")).expect("account");
    let (value, parsed) = TokenFormat::new("pat").unwrap().generate(&account);
    let (key_id, digest) = hasher.for_new(value.expose(), &parsed.digest);
    let new = NewToken {
        token_id: parsed.token_id.clone(),
        account_id: account.clone(),
        note: Note::default(),
        scopes: Scopes::parse(vec!["read".into()]).unwrap(),
        digest,
        key_id,
    };
    let terms = IssueTerms {
        limit: 50,
        max_ttl: Duration::from_secs(86_400),
        live_keys: &live,
    };
    let actor = Actor {
        caller: "test".into(),
        request_id: patd::audit::RequestId::new(),
    };
    let IssueOutcome::Issued {
        created_at,
        expires_at,
    } = store
        .issue(
            &new,
            patd::domain::Expiry::AfterMillis(60_000),
            &terms,
            &actor,
        )
        .await
        .expect("issue")
    else {
        panic!("not issued");
    };
    let mac = hasher
        .seal(&new.sealed_fields(created_at, expires_at))
        .expect("keyed");
    let id = &parsed.token_id;
    let later = UnixMillis(expires_at.0 + 1);
    assert!(!store.seal(id, created_at, later, &mac).await.unwrap());
    let found = store.lookup(id).await.unwrap().token.expect("record");
    assert!(found.mac.is_none(), "a mismatched seal was stored");
    assert!(store.seal(id, created_at, expires_at, &mac).await.unwrap());
    let found = store.lookup(id).await.unwrap().token.expect("record");
    assert!(hasher.verify_seal(&found.sealed_fields(), found.mac.as_ref().unwrap()));
    store
        .revoke(&account, id, &live, &actor, AuditAction::Revoke)
        .await
        .unwrap();
    assert!(
        !store.seal(id, created_at, expires_at, &mac).await.unwrap(),
        "a revoked record was sealed (recreated)"
    );
    assert!(store.lookup(id).await.unwrap().token.is_none());
}

/// The memory store (the reference model) keeps the seals Issue and
/// Rotate write, and they verify like Redis's.
#[tokio::test]
async fn the_memory_store_keeps_the_seals_issue_and_rotate_write() {
    let store = MemoryStore::new();
    let tokens = Tokens::new(store.clone(), rules(false));
    let hasher = TokenHasher::from_setting(&keys()).expect("keys");
    let account = AccountId::parse(random_name("acct-")).expect("account");
    let issued = tokens
        .issue("console", command(&account))
        .await
        .expect("issue");
    let rotated = tokens
        .rotate(
            "console",
            RotateCommand {
                account: account.clone(),
                token_id: issued.info.token_id.clone(),
                grace: (60, 0),
                expiry: ExpiryRequest::Default,
            },
        )
        .await
        .expect("rotate");
    for (value, id) in [
        (&issued.token, &issued.info.token_id),
        (&rotated.token, &rotated.info.token_id),
    ] {
        let record = store.lookup(id).await.unwrap().token.expect("record");
        let mac = record.mac.as_ref().expect("sealed");
        assert!(hasher.verify_seal(&record.sealed_fields(), mac));
        let answer = tokens.introspect(value.expose()).await.expect("introspect");
        assert!(matches!(answer, patd::service::Introspection::Active(_)));
    }
}
