//! The `introspect` scenario: Introspect calls presenting values picked by
//! the mix, each answer checked against what the value is (a valid token
//! must come back active and owned by its account; anything else inactive
//! and without facts). `mixed` reuses `call`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use patd::pb;

use crate::baseline;
use crate::driver::{Client, Clock};
use crate::rng::Rng;
use crate::setup::{Fleet, Pick};
use crate::stats::{Outcome, Recorder};

pub const OP: &str = "introspect";

/// One Introspect of a value picked from `fleet`; the latency and whether
/// the answer was right.
pub async fn call(
    client: &mut Client,
    fleet: &Fleet,
    rng: &mut Rng,
    baseline: bool,
) -> (Duration, Outcome) {
    let pick = fleet.pick(rng);
    let token = match &pick {
        Pick::Valid(held) => held.token.clone(),
        Pick::Invalid(value) => (*value).to_owned(),
    };
    let started = Instant::now();
    let result = client.introspect(pb::IntrospectRequest { token }).await;
    let latency = started.elapsed();
    let outcome = match result {
        Ok(response) => check(&pick, fleet, baseline, &response.into_inner()),
        Err(status) => Outcome::Grpc(status),
    };
    (latency, outcome)
}

fn check(
    pick: &Pick<'_>,
    fleet: &Fleet,
    baseline: bool,
    answer: &pb::IntrospectResponse,
) -> Outcome {
    if baseline {
        return match &answer.info {
            Some(info) if answer.active && info.token_id == baseline::TOKEN_ID => Outcome::Ok,
            _ => Outcome::Wrong("not the baseline's constant answer".to_owned()),
        };
    }
    match (pick, answer.active, &answer.info) {
        (Pick::Valid(held), true, Some(info)) => {
            if info.token_id != held.token_id {
                Outcome::Wrong(format!(
                    "token {} answered as token id {}",
                    held.token_id, info.token_id
                ))
            } else if info.account_id != fleet.accounts[held.account] {
                Outcome::Wrong(format!(
                    "token {} answered for another account",
                    held.token_id
                ))
            } else {
                Outcome::Ok
            }
        }
        (Pick::Valid(held), _, _) => Outcome::Wrong(format!(
            "valid token {} answered inactive or without info",
            held.token_id
        )),
        (Pick::Invalid(_), false, None) => Outcome::Ok,
        (Pick::Invalid(_), true, _) => {
            Outcome::Wrong("a revoked, malformed or forged value answered active".to_owned())
        }
        (Pick::Invalid(_), false, Some(_)) => {
            Outcome::Wrong("an inactive answer carried token info".to_owned())
        }
    }
}

/// One load task: Introspect until the clock says stop.
pub async fn task(
    mut client: Client,
    fleet: Arc<Fleet>,
    clock: Arc<Clock>,
    mut rng: Rng,
    baseline: bool,
) -> Recorder {
    let mut rec = Recorder::default();
    while let Some(phase) = clock.next() {
        let (latency, outcome) = call(&mut client, &fleet, &mut rng, baseline).await;
        rec.record(phase, OP, latency, &outcome);
    }
    rec
}
