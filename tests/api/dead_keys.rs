//! Removing a digest key (or turning keys on over plain SHA-256 tokens, or
//! off over keyed ones) is a clean mass revocation: the tokens that can
//! never verify again are not listed, hold no slot under the limit and are
//! not counted by RevokeAll (which still deletes them). Rotation keeps the
//! old key's tokens live. One scenario, run on Redis through the real
//! binary (restarted with the new keys) and on the memory model through
//! the service (the memory store does not outlive a restart); both must
//! give the same answers.

use std::time::Duration;

use patd::domain::{AccountId, ExpiryRequest, LifetimePolicy, Note, PageRequest, Scopes, TokenId};
use patd::service::{Introspection, IssueCommand, Rules, Tokens};
use patd::store::MemoryStore;
use patd::token::{TokenFormat, TokenHasher};
use patd::verdict::Verdict;
use tonic::Code;

use crate::helpers::{Backend, Client, Patd, PatdOptions, RedisServer, random_name};

const LIMIT: u32 = 3;

/// What the scenario does to patd, through either door.
trait Door {
    /// `Ok((value, id))` or the status code.
    async fn issue(&mut self, account: &str) -> Result<(String, String), Code>;
    async fn active(&mut self, token: &str) -> bool;
    async fn listed(&mut self, account: &str) -> usize;
    async fn revoke(&mut self, account: &str, token_id: &str) -> Code;
    async fn revoke_all(&mut self, account: &str) -> u32;
}

impl Door for Client {
    async fn issue(&mut self, account: &str) -> Result<(String, String), Code> {
        let issued = Client::issue(self, crate::helpers::issue_request(account, 3600))
            .await
            .map_err(|s| s.code())?;
        Ok((issued.token, issued.info.expect("info").token_id))
    }

    async fn active(&mut self, token: &str) -> bool {
        self.introspect(token).await.expect("introspect").active
    }

    async fn listed(&mut self, account: &str) -> usize {
        self.list(account).await.expect("list").tokens.len()
    }

    async fn revoke(&mut self, account: &str, token_id: &str) -> Code {
        match Client::revoke(self, account, token_id).await {
            Ok(_) => Code::Ok,
            Err(s) => s.code(),
        }
    }

    async fn revoke_all(&mut self, account: &str) -> u32 {
        Client::revoke_all(self, account)
            .await
            .expect("revoke all")
            .revoked
    }
}

fn rules(keys: &str) -> Rules {
    Rules {
        format: TokenFormat::new("pat").expect("prefix"),
        hasher: TokenHasher::from_setting(keys).expect("keys"),
        max_tokens_per_account: LIMIT,
        lifetime: LifetimePolicy {
            default_ttl: Duration::from_secs(3600),
            max_ttl: Duration::from_secs(86_400),
        },
    }
}

fn account(raw: &str) -> AccountId {
    AccountId::parse(raw.to_owned()).expect("account id")
}

fn code(e: patd::service::ServiceError) -> Code {
    Verdict::from(e).to_status().code()
}

impl Door for Tokens<MemoryStore> {
    async fn issue(&mut self, raw: &str) -> Result<(String, String), Code> {
        let cmd = IssueCommand {
            account: account(raw),
            note: Note::default(),
            scopes: Scopes::default(),
            expiry: ExpiryRequest::Ttl {
                seconds: 3600,
                nanos: 0,
            },
        };
        let issued = Tokens::issue(self, "test", cmd).await.map_err(code)?;
        let id = issued.info.token_id.as_str().to_owned();
        Ok((issued.token.into_exposed(), id))
    }

    async fn active(&mut self, token: &str) -> bool {
        matches!(self.introspect(token).await, Ok(Introspection::Active(_)))
    }

    async fn listed(&mut self, raw: &str) -> usize {
        let page = PageRequest::parse(0, "").expect("page");
        self.list("test", account(raw), page)
            .await
            .expect("list")
            .tokens
            .len()
    }

    async fn revoke(&mut self, raw: &str, token_id: &str) -> Code {
        let id = TokenId::parse(token_id.to_owned()).expect("token id");
        match Tokens::revoke(self, "test", account(raw), id).await {
            Ok(()) => Code::Ok,
            Err(e) => code(e),
        }
    }

    async fn revoke_all(&mut self, raw: &str) -> u32 {
        Tokens::revoke_all(self, "test", account(raw))
            .await
            .expect("revoke all")
    }
}

/// Before the key change: an account at its limit, another with two.
struct Before {
    account: String,
    other: String,
    tokens: Vec<(String, String)>,
    log: Vec<String>,
}

async fn before(door: &mut impl Door) -> Before {
    let account = random_name("acct-");
    let other = random_name("other-");
    let mut tokens = Vec::new();
    for _ in 0..LIMIT {
        tokens.push(door.issue(&account).await.expect("issue"));
    }
    let refused = door.issue(&account).await.expect_err("at the limit");
    for _ in 0..2 {
        door.issue(&other).await.expect("issue");
    }
    let log = vec![
        format!("before: at the limit {refused:?}"),
        format!("before: listed {}", door.listed(&account).await),
    ];
    Before {
        account,
        other,
        tokens,
        log,
    }
}

async fn after(door: &mut impl Door, state: Before) -> Vec<String> {
    let Before {
        account,
        other,
        tokens,
        mut log,
    } = state;
    let mut active = 0;
    for (token, _) in &tokens {
        active += usize::from(door.active(token).await);
    }
    log.push(format!("old tokens active {active}"));
    log.push(format!("listed {}", door.listed(&account).await));
    let mut issued = 0;
    let refused = loop {
        match door.issue(&account).await {
            Ok(_) => issued += 1,
            Err(code) => break code,
        }
    };
    log.push(format!("issued {issued} more, then {refused:?}"));
    log.push(format!("listed {}", door.listed(&account).await));
    let (_, old_id) = &tokens[0];
    log.push(format!(
        "revoke an old token {:?}",
        door.revoke(&account, old_id).await
    ));
    log.push(format!(
        "revoke_all of the other account {}",
        door.revoke_all(&other).await
    ));
    log.push(format!("revoke_all {}", door.revoke_all(&account).await));
    log.push(format!("listed {}", door.listed(&account).await));
    log
}

fn key(id: &str, byte: u8) -> String {
    use base64::Engine as _;
    let material = base64::engine::general_purpose::STANDARD.encode([byte; 32]);
    format!("{id}:{material}")
}

/// (name, keys before, keys after, whether the old tokens stay live).
fn transitions() -> Vec<(&'static str, String, String, bool)> {
    let (k1, k2) = (key("k1", 1), key("k2", 2));
    vec![
        ("k1 removed", k1.clone(), k2.clone(), false),
        ("keys turned on", String::new(), k1.clone(), false),
        ("keys turned off", k1.clone(), String::new(), false),
        ("rotation", k1.clone(), format!("{k2},{k1}"), true),
    ]
}

fn expected(live: bool) -> Vec<String> {
    let limit = LIMIT as usize;
    let (active, listed, more, revoke, other, all) = if live {
        (limit, limit, 0, "Ok", 2, limit - 1)
    } else {
        (0, 0, limit, "NotFound", 0, limit)
    };
    vec![
        "before: at the limit ResourceExhausted".to_owned(),
        format!("before: listed {limit}"),
        format!("old tokens active {active}"),
        format!("listed {listed}"),
        format!("issued {more} more, then ResourceExhausted"),
        format!("listed {limit}"),
        format!("revoke an old token {revoke}"),
        format!("revoke_all of the other account {other}"),
        format!("revoke_all {all}"),
        "listed 0".to_owned(),
    ]
}

async fn keyed_patd(redis: &RedisServer, prefix: &str, keys: &str) -> Patd {
    Patd::spawn(
        PatdOptions::new(Backend::Redis { url: redis.url() })
            .key_prefix(prefix)
            .env("PATD_TOKEN_HASH_KEYS", keys)
            .env("PATD_MAX_TOKENS_PER_ACCOUNT", &LIMIT.to_string()),
    )
    .await
}

#[tokio::test]
async fn a_key_change_on_redis_revokes_cleanly_and_rotation_keeps_tokens() {
    let redis = RedisServer::start();
    for (name, from, to, live) in transitions() {
        let prefix = random_name("t");
        let first = keyed_patd(&redis, &prefix, &from).await;
        let state = before(&mut first.client().await).await;
        drop(first);
        let second = keyed_patd(&redis, &prefix, &to).await;
        let log = after(&mut second.client().await, state).await;
        assert_eq!(log, expected(live), "{name}");
        // RevokeAll removed the dead records too, not only the live ones.
        // (The accounts' audit streams stay: they are the trail.)
        let left: Vec<_> = redis
            .dump(&prefix)
            .into_iter()
            .filter(|(key, _)| !key.contains("}:e:"))
            .collect();
        assert_eq!(left, Vec::new(), "{name}: records left");
    }
}

#[tokio::test]
async fn a_key_change_on_the_memory_model_gives_the_same_answers() {
    for (name, from, to, live) in transitions() {
        let store = MemoryStore::new();
        let state = before(&mut Tokens::new(store.clone(), rules(&from))).await;
        let log = after(&mut Tokens::new(store, rules(&to)), state).await;
        assert_eq!(log, expected(live), "{name}");
    }
}
