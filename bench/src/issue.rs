//! The `issue` scenario: Issue a token for a fresh account (named from the
//! seeded generator, so the per-account limit never bites), check it, then
//! Revoke it so a Redis store stays bounded. One operation is the pair;
//! the `issue` and `revoke` steps are also reported on their own. `mixed`
//! reuses `issue_and_revoke`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use patd::pb;

use crate::baseline;
use crate::driver::{Client, Clock};
use crate::rng::Rng;
use crate::setup::issue_request;
use crate::stats::{Outcome, Phase, Recorder};

/// The operation: Issue then Revoke.
pub const OP: &str = "issue+revoke";
const ISSUE: &str = "issue";
const REVOKE: &str = "revoke";
const TTL: Duration = Duration::from_secs(3600);

/// Issues for a fresh account and revokes the token; records both steps
/// and returns the pair's outcome.
pub async fn issue_and_revoke(
    client: &mut Client,
    nonce: &str,
    rng: &mut Rng,
    baseline: bool,
    phase: Phase,
    rec: &mut Recorder,
) -> Outcome {
    let account = format!("bench-{nonce}-n{:016x}", rng.next_u64());
    let started = Instant::now();
    let result = client.issue(issue_request(account.clone(), TTL)).await;
    let outcome = match result {
        Ok(response) => check_issued(&account, baseline, response.into_inner()),
        Err(status) => Err(Outcome::Grpc(status)),
    };
    let token_id = match outcome {
        Ok(token_id) => {
            rec.record(phase, ISSUE, started.elapsed(), &Outcome::Ok);
            token_id
        }
        Err(failed) => {
            rec.record(phase, ISSUE, started.elapsed(), &failed);
            return failed;
        }
    };
    let started = Instant::now();
    let request = pb::RevokeRequest {
        account_id: account,
        token_id,
    };
    let outcome = match client.revoke(request).await {
        Ok(_) => Outcome::Ok,
        Err(status) => Outcome::Grpc(status),
    };
    rec.record(phase, REVOKE, started.elapsed(), &outcome);
    outcome
}

/// The issued token's id, if the answer is right.
fn check_issued(
    account: &str,
    baseline: bool,
    answer: pb::IssueResponse,
) -> Result<String, Outcome> {
    let info = answer
        .info
        .ok_or_else(|| Outcome::Wrong("Issue answered without info".to_owned()))?;
    if baseline {
        return if answer.token == baseline::TOKEN {
            Ok(info.token_id)
        } else {
            Err(Outcome::Wrong(
                "not the baseline's constant token".to_owned(),
            ))
        };
    }
    if info.account_id != account {
        return Err(Outcome::Wrong(
            "Issue answered for another account".to_owned(),
        ));
    }
    if info.token_id.is_empty() || !answer.token.contains(info.token_id.as_str()) {
        return Err(Outcome::Wrong(
            "the issued token does not carry its token id".to_owned(),
        ));
    }
    Ok(info.token_id)
}

/// One load task: Issue+Revoke until the clock says stop.
pub async fn task(
    mut client: Client,
    nonce: Arc<str>,
    clock: Arc<Clock>,
    mut rng: Rng,
    baseline: bool,
) -> Recorder {
    let mut rec = Recorder::default();
    while let Some(phase) = clock.next() {
        let started = Instant::now();
        let outcome =
            issue_and_revoke(&mut client, &nonce, &mut rng, baseline, phase, &mut rec).await;
        rec.record(phase, OP, started.elapsed(), &outcome);
    }
    rec
}
