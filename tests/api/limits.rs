//! The live-token limit holds under concurrency, across patd instances; a
//! large account lists in bounded pages.

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

/// With a high limit, an account's tokens (at their largest: full notes,
/// 32 long scopes) come a bounded page at a time, every one exactly once,
/// newest first, and no response nears gRPC's customary 4 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_account_lists_in_bounded_pages() {
    use prost::Message as _;
    const TOKENS: usize = 1_400;
    let patd =
        Patd::spawn(PatdOptions::new(Backend::Memory).env("PATD_MAX_TOKENS_PER_ACCOUNT", "2000"))
            .await;
    let mut client = patd.client().await;
    let scopes: Vec<String> = (0..32)
        .map(|i| format!("{i:0>2}{}", "s".repeat(62)))
        .collect();
    let mut issued = std::collections::HashSet::new();
    for i in 0..TOKENS {
        let mut request = issue_request("acct-many", 3600);
        request.note = format!("{i:\u{e9}>256}");
        request.scopes = scopes.clone();
        let id = client
            .issue(request)
            .await
            .expect("issue")
            .info
            .expect("info")
            .token_id;
        issued.insert(id);
    }
    let mut seen = Vec::new();
    let mut page_token = String::new();
    let mut pages = 0;
    loop {
        let page = client
            .list_page("acct-many", 0, &page_token)
            .await
            .expect("list page");
        pages += 1;
        assert!(
            page.encoded_len() < 4 * 1024 * 1024 / 2,
            "a page of {} bytes",
            page.encoded_len()
        );
        assert!(page.tokens.len() <= 100, "default page size");
        seen.extend(page.tokens);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(pages, TOKENS.div_ceil(100));
    let ids: std::collections::HashSet<String> = seen.iter().map(|t| t.token_id.clone()).collect();
    assert_eq!(ids.len(), TOKENS, "every token exactly once");
    assert_eq!(ids, issued);
    let order: Vec<_> = seen
        .iter()
        .map(|t| {
            let c = t.created_at.as_ref().expect("created");
            (std::cmp::Reverse((c.seconds, c.nanos)), t.token_id.clone())
        })
        .collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted, "newest first, then by id");
    // A larger page is capped at the maximum.
    let big = client
        .list_page("acct-many", 100_000, "")
        .await
        .expect("list");
    assert_eq!(big.tokens.len(), 500);
    assert!(!big.next_page_token.is_empty());
}
