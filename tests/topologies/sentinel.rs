//! patd behind Sentinel (`redis-sentinel://...#patd`): 1 primary, 1
//! replica, 3 sentinels. The primary is killed; patd follows the promoted
//! replica by itself, and with `PATD_REDIS_MIN_REPLICAS_ACK=1` nothing it
//! acknowledged is lost.

use std::time::{Duration, Instant};

use tonic_health::pb::health_check_response::ServingStatus;

use crate::helpers::{
    Backend, Patd, PatdOptions, eventually, health_becomes, is_active, issue_request,
};
use crate::nodes::Sentinels;
use crate::workload::{Workload, accounts, check, serves_again};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn patd_follows_a_sentinel_failover_and_loses_no_acknowledged_write() {
    let mut topology = Sentinels::start();
    let patd = Patd::spawn(
        PatdOptions::new(Backend::Redis {
            url: topology.url(),
        })
        .env("PATD_REDIS_MIN_REPLICAS_ACK", "1"),
    )
    .await;
    let channel = patd.channel().await;
    let service = "patd.v1.TokenService";
    let ready = health_becomes(
        &channel,
        service,
        ServingStatus::Serving,
        Duration::from_secs(30),
    )
    .await;
    assert!(ready, "patd behind Sentinel is not ready:\n{}", patd.logs());
    let client = patd.client().await;

    let load = Workload::start(std::slice::from_ref(&client), accounts(6), false);
    load.until(200, 20).await;
    let probe = load.an_active_token();
    let old = topology.primary.port;
    let killed_at = Instant::now();
    topology.primary.kill();
    // Stopped at once, so the ledger keeps what was acknowledged before
    // the kill (later writes are refused until the new primary has a
    // replica again, and each refused Revoke makes its token "unknown").
    let tokens = load.stop().await;
    let (took, refused) = serves_again(&client, &probe.value, Duration::from_secs(30)).await;
    eprintln!(
        "sentinel failover: Introspect served again {:?} after kill -9 ({took:?} of polling, \
         {refused} refused meanwhile)",
        killed_at.elapsed()
    );
    // Sentinels other than the one patd asked may learn of it a moment
    // later.
    let promoted = eventually(Duration::from_secs(15), || async {
        topology.primary_port() == Some(topology.replica.port)
    })
    .await;
    assert!(
        promoted,
        "the sentinels did not agree on the promoted replica"
    );
    let (active, revoked) = check(&client, &tokens).await;
    eprintln!("sentinel failover: 0 lost of {active} active, 0 resurrected of {revoked} revoked");
    assert!(
        active > 0 && revoked > 0,
        "active {active}, revoked {revoked}"
    );
    assert_ne!(topology.primary_port(), Some(old));

    // The old primary comes back; the sentinels make it a replica of the
    // new one, and writes are acknowledged again.
    topology.primary.restart();
    let mut c = client.clone();
    let back = eventually(Duration::from_secs(60), || {
        let mut c = c.clone();
        let account = probe.account.clone();
        async move { c.issue(issue_request(&account, 60)).await.is_ok() }
    })
    .await;
    assert!(back, "writes did not come back:\n{}", patd.logs());
    assert!(is_active(&mut c, &probe.value).await);
    let ready = health_becomes(
        &channel,
        service,
        ServingStatus::Serving,
        Duration::from_secs(30),
    )
    .await;
    assert!(ready);
}
