//! Untimed set-up and clean-up of the token scenarios: issues `--tokens`
//! tokens over `--accounts` fresh accounts (within the per-account limit),
//! revokes the share the mix needs, derives malformed and forged values
//! from them (`derived`), and revokes everything once the run is over.
//! Also owns picking a presented value by the mix.

use std::sync::Arc;
use std::time::Duration;

use patd::pb;
use tokio::task::JoinSet;
use tonic::transport::Channel;

use crate::cli::{Mix, RunArgs};
use crate::derived::{forge, malformed};
use crate::driver::Client;
use crate::rng::Rng;

/// Concurrent calls during set-up and clean-up.
const SETUP_TASKS: usize = 64;
/// Distinct malformed and forged values derived.
const DERIVED: usize = 64;
/// Lifetime of set-up tokens: outlives any sensible run, and bounds Redis
/// if clean-up never happens.
const SETUP_TTL: Duration = Duration::from_secs(2 * 3600);

/// A pre-issued, live token.
#[derive(Debug)]
pub struct Held {
    pub token: String,
    pub token_id: String,
    /// Index into `Fleet::accounts`.
    pub account: usize,
}

/// The accounts and token values a run presents.
#[derive(Debug)]
pub struct Fleet {
    /// Namespaces this run's account ids (a random hex string).
    pub nonce: String,
    pub accounts: Vec<String>,
    /// Live tokens per account after set-up (what List must return).
    pub live: Vec<usize>,
    pub valid: Vec<Held>,
    pub revoked: Vec<String>,
    pub malformed: Vec<String>,
    pub forged: Vec<String>,
    mix: Mix,
}

/// A presented value and what it is.
pub enum Pick<'a> {
    Valid(&'a Held),
    /// Revoked, malformed or forged: must be inactive.
    Invalid(&'a str),
}

impl Fleet {
    /// A value to present, by the mix.
    pub fn pick(&self, rng: &mut Rng) -> Pick<'_> {
        let mut roll = rng.below(u64::from(self.mix.total())) as u32;
        if roll < self.mix.valid {
            return Pick::Valid(&self.valid[rng.index(self.valid.len())]);
        }
        roll -= self.mix.valid;
        let pool = if roll < self.mix.revoked {
            &self.revoked
        } else if roll < self.mix.revoked + self.mix.malformed {
            &self.malformed
        } else {
            &self.forged
        };
        Pick::Invalid(&pool[rng.index(pool.len())])
    }
}

/// A random hex string naming this run's accounts, so runs never share
/// accounts (or hit each other's limits) on a shared Redis.
pub fn nonce() -> String {
    let mut bytes = [0u8; 4];
    // Only namespacing: the seed still decides every choice.
    let _ = getrandom::fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An Issue request of the benchmark's usual shape.
pub fn issue_request(account: String, ttl: Duration) -> pb::IssueRequest {
    pb::IssueRequest {
        account_id: account,
        note: "bench".to_owned(),
        ttl: Some(pbjson_types::Duration {
            seconds: i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX),
            nanos: 0,
        }),
        expires_at: None,
        scopes: vec!["bench:read".to_owned()],
    }
}

/// Checks, before connecting, that the fleet the arguments ask for fits
/// the per-account limit and the mix.
pub fn check(args: &RunArgs) -> Result<(), String> {
    let (tokens, accounts) = (args.tokens as usize, args.accounts as usize);
    let per_account = tokens.div_ceil(accounts);
    if per_account > args.account_limit as usize {
        return Err(format!(
            "{tokens} tokens over {accounts} accounts is {per_account} per account, over the limit \
             of {}: raise --accounts",
            args.account_limit
        ));
    }
    revoked_share(tokens, &args.mix).map(|_| ())
}

/// Issues the fleet, revokes the revoked share, derives the rest.
pub async fn prepare(channels: &[Channel], args: &RunArgs) -> Result<Fleet, String> {
    check(args)?;
    let (tokens, accounts) = (args.tokens as usize, args.accounts as usize);
    let mix = args.mix;
    let revoke_count = revoked_share(tokens, &mix)?;
    let nonce = nonce();
    let account_ids: Vec<String> = (0..accounts)
        .map(|i| format!("bench-{nonce}-a{i}"))
        .collect();

    let issued = issue_all(channels, &account_ids, tokens, args.expect_baseline).await?;
    // Derived from live tokens first (a forged value then names a real
    // record), from revoked ones when the mix leaves none live.
    let sources: Vec<&str> = issued
        .iter()
        .skip(revoke_count)
        .chain(issued.iter().take(revoke_count))
        .map(|h| h.token.as_str())
        .take(DERIVED)
        .collect();
    let malformed: Vec<String> = (0..DERIVED)
        .map(|i| malformed(sources[i % sources.len()], i))
        .collect();
    let forged: Vec<String> = sources.iter().filter_map(|t| forge(t)).collect();
    if mix.forged > 0 && forged.is_empty() {
        return Err("cannot forge tokens: the issued tokens have an unknown shape".to_owned());
    }
    let mut valid = Vec::with_capacity(tokens);
    let mut revoke = Vec::with_capacity(revoke_count);
    let mut live = vec![0usize; accounts];
    for (i, held) in issued.into_iter().enumerate() {
        if i < revoke_count {
            revoke.push(held);
        } else {
            live[held.account] += 1;
            valid.push(held);
        }
    }
    revoke_all_of(channels, &account_ids, &revoke).await?;
    let revoked = revoke.into_iter().map(|h| h.token).collect();
    Ok(Fleet {
        nonce,
        accounts: account_ids,
        live,
        valid,
        revoked,
        malformed,
        forged,
        mix,
    })
}

/// How many set-up tokens to revoke so the revoked pool is not empty when
/// the mix asks for revoked values, while valid ones remain.
fn revoked_share(tokens: usize, mix: &Mix) -> Result<usize, String> {
    if mix.revoked == 0 {
        return Ok(0);
    }
    let share = (tokens * mix.revoked as usize).div_ceil(mix.total() as usize);
    let keep = if mix.valid > 0 || mix.malformed > 0 || mix.forged > 0 {
        1
    } else {
        0
    };
    if tokens < 1 + keep {
        return Err("--tokens too small for the mix: need a revoked and a valid one".to_owned());
    }
    Ok(share.clamp(1, tokens - keep))
}

/// Issues `tokens` tokens, token `i` to account `i % accounts`, in order.
async fn issue_all(
    channels: &[Channel],
    accounts: &[String],
    tokens: usize,
    baseline: bool,
) -> Result<Vec<Held>, String> {
    let accounts = Arc::new(accounts.to_vec());
    let workers = SETUP_TASKS.min(tokens);
    let mut set = JoinSet::new();
    for w in 0..workers {
        let mut client = Client::new(channels[w % channels.len()].clone());
        let accounts = accounts.clone();
        set.spawn(async move {
            let mut out = Vec::new();
            for i in (w..tokens).step_by(workers) {
                let account = i % accounts.len();
                let request = issue_request(accounts[account].clone(), SETUP_TTL);
                let response = client
                    .issue(request)
                    .await
                    .map_err(|s| format!("set-up Issue failed: {:?}: {}", s.code(), s.message()))?
                    .into_inner();
                let info = response.info.unwrap_or_default();
                if !baseline && info.account_id != accounts[account] {
                    return Err("set-up Issue answered for another account".to_owned());
                }
                out.push((
                    i,
                    Held {
                        token: response.token,
                        token_id: info.token_id,
                        account,
                    },
                ));
            }
            Ok::<_, String>(out)
        });
    }
    let mut all = Vec::with_capacity(tokens);
    while let Some(done) = set.join_next().await {
        all.extend(done.map_err(|e| format!("set-up task failed: {e}"))??);
    }
    all.sort_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, h)| h).collect())
}

/// Revokes `held` tokens one by one (by account and token id).
async fn revoke_all_of(
    channels: &[Channel],
    accounts: &[String],
    held: &[Held],
) -> Result<(), String> {
    let jobs: Vec<(String, String)> = held
        .iter()
        .map(|h| (accounts[h.account].clone(), h.token_id.clone()))
        .collect();
    let jobs = Arc::new(jobs);
    let workers = SETUP_TASKS.min(jobs.len());
    let mut set = JoinSet::new();
    for w in 0..workers {
        let mut client = Client::new(channels[w % channels.len()].clone());
        let jobs = jobs.clone();
        set.spawn(async move {
            for (account_id, token_id) in jobs.iter().skip(w).step_by(workers) {
                client
                    .revoke(pb::RevokeRequest {
                        account_id: account_id.clone(),
                        token_id: token_id.clone(),
                    })
                    .await
                    .map_err(|s| {
                        format!("set-up Revoke failed: {:?}: {}", s.code(), s.message())
                    })?;
            }
            Ok::<_, String>(())
        });
    }
    while let Some(done) = set.join_next().await {
        done.map_err(|e| format!("set-up task failed: {e}"))??;
    }
    Ok(())
}

/// Revokes every token of the fleet's accounts (RevokeAll), untimed, so a
/// shared Redis stays small. Failures are reported, not fatal.
pub async fn cleanup(channels: &[Channel], fleet: &Fleet) {
    let accounts = Arc::new(fleet.accounts.clone());
    let workers = SETUP_TASKS.min(accounts.len());
    let mut set = JoinSet::new();
    for w in 0..workers {
        let mut client = Client::new(channels[w % channels.len()].clone());
        let accounts = accounts.clone();
        set.spawn(async move {
            let mut failed = 0u32;
            for account_id in accounts.iter().skip(w).step_by(workers) {
                let request = pb::RevokeAllRequest {
                    account_id: account_id.clone(),
                };
                if client.revoke_all(request).await.is_err() {
                    failed += 1;
                }
            }
            failed
        });
    }
    let mut failed = 0;
    while let Some(done) = set.join_next().await {
        failed += done.unwrap_or(1);
    }
    if failed > 0 {
        eprintln!("patd-bench: clean-up: RevokeAll failed for {failed} accounts");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_revoked_share_leaves_valid_tokens() {
        let mix: Mix = "valid=90,revoked=5,malformed=5".parse().unwrap();
        assert_eq!(revoked_share(1000, &mix).unwrap(), 50);
        assert_eq!(revoked_share(2, &mix).unwrap(), 1);
        let only: Mix = "revoked=1".parse().unwrap();
        assert_eq!(revoked_share(3, &only).unwrap(), 3);
    }
}
