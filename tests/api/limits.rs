//! The live-token limit holds under concurrency, across patd instances.

use tonic::Code;

use crate::helpers::{
    Backend, Client, Patd, PatdOptions, RedisServer, issue, issue_request, random_name,
};

/// Fires `count` Issues at once, spread over `clients`; returns (ok, refused).
async fn race(clients: &[Client], account: &str, count: usize) -> (usize, usize) {
    let mut tasks = Vec::new();
    for i in 0..count {
        let mut client = clients[i % clients.len()].clone();
        let req = issue_request(account, 3600);
        tasks.push(tokio::spawn(async move { client.issue(req).await }));
    }
    let (mut ok, mut refused) = (0, 0);
    for task in tasks {
        match task.await.expect("task") {
            Ok(_) => ok += 1,
            Err(s) if s.code() == Code::ResourceExhausted => refused += 1,
            Err(s) => panic!("unexpected status {s:?}"),
        }
    }
    (ok, refused)
}

async fn listed(client: &mut Client, account: &str) -> usize {
    client.list(account).await.expect("list").tokens.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_on_one_redis_never_exceed_the_limit() {
    let redis = RedisServer::start();
    let prefix = random_name("t");
    let backend = Backend::Redis { url: redis.url() };
    let a = Patd::spawn(PatdOptions::new(backend.clone()).key_prefix(&prefix)).await;
    let b = Patd::spawn(PatdOptions::new(backend).key_prefix(&prefix)).await;
    let clients = [a.client().await, b.client().await];
    let account = random_name("acct-");

    assert_eq!(race(&clients, &account, 120).await, (50, 70));
    let mut client = clients[0].clone();
    assert_eq!(listed(&mut client, &account).await, 50);

    // Revoking one frees exactly one slot.
    let first = client.list(&account).await.unwrap().tokens.remove(0);
    client
        .revoke(&account, &first.token_id)
        .await
        .expect("revoke");
    assert_eq!(race(&clients, &account, 10).await, (1, 9));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_memory_store_enforces_the_same_limit_under_concurrency() {
    let patd = Patd::memory().await;
    let clients = [patd.client().await, patd.client().await];
    let account = random_name("acct-");
    assert_eq!(race(&clients, &account, 120).await, (50, 70));
    let mut client = clients[0].clone();
    assert_eq!(listed(&mut client, &account).await, 50);
}

#[tokio::test]
async fn the_limit_is_configurable_and_counted_per_account() {
    let patd =
        Patd::spawn(PatdOptions::new(Backend::Memory).env("PATD_MAX_TOKENS_PER_ACCOUNT", "2"))
            .await;
    let mut client = patd.client().await;
    let (a, b) = (random_name("a-"), random_name("b-"));
    issue(&mut client, &a, 60).await;
    issue(&mut client, &a, 60).await;
    let refused = client
        .issue(issue_request(&a, 60))
        .await
        .expect_err("limit");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(refused.message().contains('2'), "{}", refused.message());
    issue(&mut client, &b, 60).await;
}
