//! The `mixed` scenario: what a gateway plus a console send together.
//! Each operation is an Introspect by the mix, or with `--management`
//! percent probability a management call: half Issue+Revoke on a fresh
//! account, half List of a set-up account (checked against its live
//! count). Judged on all operations together (`all`); each kind is also
//! reported on its own.

use std::sync::Arc;
use std::time::Instant;

use patd::pb;

use crate::driver::{Client, Clock};
use crate::rng::Rng;
use crate::setup::Fleet;
use crate::stats::{Outcome, Recorder};
use crate::{introspect, issue};

pub const OP: &str = "all";
const LIST: &str = "list";

/// One load task: mixed operations until the clock says stop.
pub async fn task(
    mut client: Client,
    fleet: Arc<Fleet>,
    clock: Arc<Clock>,
    mut rng: Rng,
    baseline: bool,
    management_percent: u32,
) -> Recorder {
    let mut rec = Recorder::default();
    while let Some(phase) = clock.next() {
        let started = Instant::now();
        let outcome = if rng.below(100) >= u64::from(management_percent) {
            let (latency, outcome) =
                introspect::call(&mut client, &fleet, &mut rng, baseline).await;
            rec.record(phase, introspect::OP, latency, &outcome);
            outcome
        } else if rng.below(2) == 0 {
            let outcome = issue::issue_and_revoke(
                &mut client,
                &fleet.nonce,
                &mut rng,
                baseline,
                phase,
                &mut rec,
            )
            .await;
            rec.record(phase, issue::OP, started.elapsed(), &outcome);
            outcome
        } else {
            let outcome = list(&mut client, &fleet, &mut rng, baseline).await;
            rec.record(phase, LIST, started.elapsed(), &outcome);
            outcome
        };
        rec.record(phase, OP, started.elapsed(), &outcome);
    }
    rec
}

/// Lists a set-up account; its live tokens never change during a run.
async fn list(client: &mut Client, fleet: &Fleet, rng: &mut Rng, baseline: bool) -> Outcome {
    let account = rng.index(fleet.accounts.len());
    let request = pb::ListRequest {
        account_id: fleet.accounts[account].clone(),
        ..Default::default()
    };
    let answer = match client.list(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => return Outcome::Grpc(status),
    };
    if baseline {
        return Outcome::Ok;
    }
    let expected = fleet.live[account];
    if answer.tokens.len() != expected {
        return Outcome::Wrong(format!(
            "List returned {} tokens, the account holds {expected}",
            answer.tokens.len()
        ));
    }
    if answer
        .tokens
        .iter()
        .any(|t| t.account_id != fleet.accounts[account])
    {
        return Outcome::Wrong("List returned another account's token".to_owned());
    }
    Outcome::Ok
}
