//! One Redis with `appendonly yes` and `appendfsync always` (as
//! deploy/redis.conf): killed with SIGKILL in the middle of a stream of
//! writes and restarted from its AOF, it has lost nothing patd
//! acknowledged.

use std::time::Duration;

use crate::helpers::{Backend, Patd, PatdOptions};
use crate::nodes::durable_standalone;
use crate::workload::{Workload, accounts, check, serves_again};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kill_9_of_an_aof_redis_loses_no_acknowledged_write() {
    let mut redis = durable_standalone();
    let url = format!("redis://{}/0", redis.addr());
    let patd = Patd::spawn(PatdOptions::new(Backend::Redis { url })).await;
    let client = patd.client().await;

    let load = Workload::start(std::slice::from_ref(&client), accounts(8), true);
    // Mid-stream: some writes acknowledged, more on their way.
    while load.acknowledged() < 300 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    redis.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.restart();
    let tokens = load.stop().await;

    let probe = &tokens.first().expect("some tokens").value;
    serves_again(&client, probe, Duration::from_secs(30)).await;
    let (active, revoked) = check(&client, &tokens).await;
    assert!(
        active > 0 && revoked > 0,
        "active {active}, revoked {revoked}"
    );
}

#[tokio::test]
async fn a_write_no_replica_acknowledged_is_unavailable_and_the_issue_undone() {
    let redis = durable_standalone();
    let url = format!("redis://{}/0", redis.addr());
    let prefix = crate::helpers::random_name("t");
    let patd = Patd::spawn(
        PatdOptions::new(Backend::Redis { url })
            .key_prefix(&prefix)
            .env("PATD_REDIS_MIN_REPLICAS_ACK", "1")
            .env("PATD_REDIS_TIMEOUT", "1s"),
    )
    .await;
    let mut client = patd.client().await;
    // No replica: the write is applied on the primary but never
    // acknowledged by one, so patd answers UNAVAILABLE and undoes it.
    let refused = client
        .issue(crate::helpers::issue_request("acct-wait", 60))
        .await
        .expect_err("no replica acknowledged the Issue");
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    let undone = crate::helpers::eventually(Duration::from_secs(15), || async {
        let keys: Vec<String> = redis.query(&["KEYS", &format!("{prefix}:*:t:*")]);
        keys.is_empty()
    })
    .await;
    assert!(undone, "the unacknowledged Issue was not undone");
    assert!(patd.logs().contains("NOTREPLICATED"), "{}", patd.logs());
}
