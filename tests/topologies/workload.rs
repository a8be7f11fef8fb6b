//! A stream of Issue / Revoke / RevokeAll, one worker per account (so the
//! test knows each token's fate), with a ledger of what patd
//! acknowledged: after a crash or a failover, every acknowledged Issue not
//! later revoked must be active and every acknowledged revocation must
//! stay revoked.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::helpers::{Client, eventually, issue_request, random_name};

/// `n` fresh account names.
pub fn accounts(n: usize) -> Vec<String> {
    (0..n).map(|_| random_name("acct-")).collect()
}

/// What the test knows for sure about a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Its Issue was acknowledged and nothing acknowledged removed it.
    Active,
    /// Its revocation (Revoke or RevokeAll) was acknowledged.
    Revoked,
    /// A call about it failed: it may be either.
    Unknown,
}

#[derive(Debug, Clone)]
pub struct Token {
    pub account: String,
    pub id: String,
    pub value: String,
    pub fate: Fate,
}

/// Counts of what the stream saw.
#[derive(Default)]
pub struct Tally {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    /// Revocations acknowledged (Revoke answered revoked, or RevokeAll).
    pub revocations: AtomicU64,
    /// Introspect right after an acknowledged Issue said inactive, or
    /// right after an acknowledged Revoke said active.
    pub wrong: AtomicU64,
}

pub struct Workload {
    pub tokens: Arc<Mutex<Vec<Token>>>,
    pub tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Workload {
    /// Starts one worker per account over `clients` (round robin), with
    /// RevokeAll now and then when `revoke_all`.
    pub fn start(clients: &[Client], accounts: Vec<String>, revoke_all: bool) -> Self {
        let tokens = Arc::new(Mutex::new(Vec::new()));
        let tally = Arc::new(Tally::default());
        let stop = Arc::new(AtomicBool::new(false));
        let workers = accounts
            .into_iter()
            .enumerate()
            .map(|(i, account)| {
                let mut client = clients[i % clients.len()].clone();
                let (tokens, tally, stop) = (tokens.clone(), tally.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut step: u64 = i as u64;
                    while !stop.load(Ordering::Relaxed) {
                        step += 1;
                        let mine: Vec<usize> = {
                            let tokens = tokens.lock().unwrap();
                            tokens
                                .iter()
                                .enumerate()
                                .filter(|(_, t): &(usize, &Token)| {
                                    t.account == account && t.fate == Fate::Active
                                })
                                .map(|(n, _)| n)
                                .collect()
                        };
                        if revoke_all && step.is_multiple_of(23) {
                            let ok = client.revoke_all(&account).await.is_ok();
                            let mut tokens = tokens.lock().unwrap();
                            for t in tokens.iter_mut().filter(|t| t.account == account) {
                                t.fate = match (ok, t.fate) {
                                    (true, _) => Fate::Revoked,
                                    (false, Fate::Revoked) => Fate::Revoked,
                                    (false, _) => Fate::Unknown,
                                };
                            }
                            count(&tally, ok);
                            if ok {
                                tally.revocations.fetch_add(1, Ordering::Relaxed);
                            }
                        } else if step.is_multiple_of(3) && !mine.is_empty() {
                            let n = mine[(step as usize / 3) % mine.len()];
                            let id = tokens.lock().unwrap()[n].id.clone();
                            let answer = client.revoke(&account, &id).await;
                            let ok = answer.is_ok();
                            let value = {
                                let mut tokens = tokens.lock().unwrap();
                                tokens[n].fate = if ok { Fate::Revoked } else { Fate::Unknown };
                                tokens[n].value.clone()
                            };
                            count(&tally, ok);
                            if ok {
                                tally.revocations.fetch_add(1, Ordering::Relaxed);
                                if let Ok(r) = client.introspect(&value).await
                                    && r.active
                                {
                                    tally.wrong.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        } else if mine.len() < 40 {
                            match client.issue(issue_request(&account, 3600)).await {
                                Ok(resp) => {
                                    let id = resp.info.expect("info").token_id;
                                    tokens.lock().unwrap().push(Token {
                                        account: account.clone(),
                                        id,
                                        value: resp.token.clone(),
                                        fate: Fate::Active,
                                    });
                                    count(&tally, true);
                                    if let Ok(r) = client.introspect(&resp.token).await
                                        && !r.active
                                    {
                                        tally.wrong.fetch_add(1, Ordering::Relaxed);
                                    }
                                }
                                // Nobody saw the value: it can never be
                                // presented, patd undoes it.
                                Err(_) => count(&tally, false),
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                })
            })
            .collect();
        Self {
            tokens,
            tally,
            stop,
            workers,
        }
    }

    /// Stops the stream and returns the ledger.
    pub async fn stop(self) -> Vec<Token> {
        self.stop.store(true, Ordering::Relaxed);
        for worker in self.workers {
            worker.await.expect("worker");
        }
        self.tokens.lock().unwrap().clone()
    }

    pub fn acknowledged(&self) -> u64 {
        self.tally.ok.load(Ordering::Relaxed)
    }

    /// Waits until the stream has `acknowledged` operations and
    /// `revocations` revocations acknowledged: enough history for a fault
    /// to land on.
    pub async fn until(&self, acknowledged: u64, revocations: u64) {
        while self.acknowledged() < acknowledged
            || self.tally.revocations.load(Ordering::Relaxed) < revocations
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A token the stream issued and left active.
    pub fn an_active_token(&self) -> Token {
        self.tokens
            .lock()
            .unwrap()
            .iter()
            .find(|t| t.fate == Fate::Active)
            .cloned()
            .expect("an active token")
    }
}

fn count(tally: &Tally, ok: bool) {
    if ok {
        tally.ok.fetch_add(1, Ordering::Relaxed);
    } else {
        tally.failed.fetch_add(1, Ordering::Relaxed);
    }
}

/// Waits until patd answers Introspect again (no error) and returns how
/// long that took and how many Introspects it refused meanwhile.
pub async fn serves_again(client: &Client, token: &str, within: Duration) -> (Duration, u64) {
    let start = Instant::now();
    let refused = Arc::new(AtomicU64::new(0));
    let served = eventually(within, || {
        let mut client = client.clone();
        let (token, refused) = (token.to_owned(), refused.clone());
        async move {
            let ok = client.introspect(&token).await.is_ok();
            if !ok {
                refused.fetch_add(1, Ordering::Relaxed);
            }
            ok
        }
    })
    .await;
    assert!(served, "patd did not serve again within {within:?}");
    (start.elapsed(), refused.load(Ordering::Relaxed))
}

/// Checks the ledger against patd: acknowledged Issues not revoked since
/// are active, acknowledged revocations stay revoked, no account lists
/// more than the limit. Returns (active checked, revoked checked).
pub async fn check(client: &Client, tokens: &[Token]) -> (usize, usize) {
    let mut client = client.clone();
    let (mut active, mut revoked) = (0, 0);
    let mut resurrected = Vec::new();
    let mut lost = Vec::new();
    for t in tokens {
        let is_active = client
            .introspect(&t.value)
            .await
            .expect("introspect")
            .active;
        match t.fate {
            Fate::Active if !is_active => lost.push(t.id.clone()),
            Fate::Active => active += 1,
            Fate::Revoked if is_active => resurrected.push(t.id.clone()),
            Fate::Revoked => revoked += 1,
            Fate::Unknown => {}
        }
    }
    assert!(
        resurrected.is_empty(),
        "acknowledged revocations undone: {resurrected:?}"
    );
    assert!(lost.is_empty(), "acknowledged Issues lost: {lost:?}");
    let mut per_account: HashMap<&str, ()> = HashMap::new();
    for t in tokens {
        per_account.insert(&t.account, ());
    }
    for account in per_account.keys() {
        let listed = client.list(account).await.expect("list").tokens.len();
        assert!(listed <= 50, "{account} holds {listed} tokens");
    }
    (active, revoked)
}
