//! patd on a Redis Cluster of 3 primaries and 3 replicas
//! (`redis-cluster://` seed nodes): the whole lifecycle from two
//! instances, the limit under concurrency, accounts on every primary,
//! readiness that needs every shard, a slot migrated under load and a
//! primary killed.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::helpers::{
    Backend, Client, Patd, PatdOptions, health_becomes, is_active, issue, issue_request,
    random_name,
};
use crate::nodes::Cluster;
use crate::workload::{Workload, accounts, check, serves_again};

const SERVICE: &str = "patd.v1.TokenService";

/// patd on `cluster`, logged in as README's ACL user, once ready.
async fn on(cluster: &Cluster, prefix: &str, env: &[(&str, &str)]) -> Patd {
    let url = cluster.add_patd_user(prefix);
    let mut opts = PatdOptions::new(Backend::Redis { url }).key_prefix(prefix);
    for (k, v) in env {
        opts = opts.env(k, v);
    }
    let patd = Patd::spawn(opts).await;
    let ready = health_becomes(
        &patd.channel().await,
        SERVICE,
        ServingStatus::Serving,
        Duration::from_secs(30),
    )
    .await;
    assert!(ready, "patd on the cluster is not ready:\n{}", patd.logs());
    patd
}

/// Fires `count` Issues at once over `clients`; returns (ok, refused).
async fn race(clients: &[Client], account: &str, count: usize) -> (usize, usize) {
    let tasks: Vec<_> = (0..count)
        .map(|i| {
            let mut client = clients[i % clients.len()].clone();
            let req = issue_request(account, 3600);
            tokio::spawn(async move { client.issue(req).await })
        })
        .collect();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_serves_the_lifecycle_the_limit_and_every_shard() {
    let cluster = Cluster::start(3);
    let prefix = random_name("t");
    // With digest keys, so every Issue is sealed by a second script on
    // the Cluster (and reloaded after the SCRIPT FLUSH below).
    let keys = [(
        "PATD_TOKEN_HASH_KEYS",
        "k1:AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=",
    )];
    let a = on(&cluster, &prefix, &keys).await;
    let b = on(&cluster, &prefix, &keys).await;
    let (mut ca, mut cb) = (a.client().await, b.client().await);

    // The lifecycle, each step seen by the other instance.
    let account = random_name("acct-");
    let (token, id) = issue(&mut ca, &account, 600).await;
    assert!(is_active(&mut cb, &token).await);
    assert_eq!(cb.list(&account).await.unwrap().tokens.len(), 1);
    cb.revoke(&account, &id).await.unwrap();
    assert!(!is_active(&mut ca, &token).await);
    let mut more = Vec::new();
    for _ in 0..3 {
        more.push(issue(&mut ca, &account, 600).await.0);
    }
    assert_eq!(cb.revoke_all(&account).await.unwrap().revoked, 3);
    for t in &more {
        assert!(!is_active(&mut ca, t).await);
    }
    assert!(ca.list(&account).await.unwrap().tokens.is_empty());

    // Every node forgets the scripts (as after a failover to a replica
    // that never loaded them): NOSCRIPT makes patd load and retry once.
    for node in &cluster.nodes {
        let _: () = node.query(&["SCRIPT", "FLUSH"]);
    }
    let (token, id) = issue(&mut ca, &account, 600).await;
    cb.revoke(&account, &id).await.unwrap();
    assert!(!is_active(&mut ca, &token).await);

    // The limit holds across instances on a Cluster.
    let racer = random_name("acct-");
    assert_eq!(race(&[ca.clone(), cb.clone()], &racer, 120).await, (50, 70));
    assert_eq!(ca.list(&racer).await.unwrap().tokens.len(), 50);

    // Accounts land on every primary, and each is served.
    let mut tokens = Vec::new();
    for _ in 0..30 {
        tokens.push(issue(&mut ca, &random_name("acct-"), 600).await.0);
    }
    for t in &tokens {
        assert!(is_active(&mut cb, t).await);
    }
    let primaries = cluster.primaries();
    assert_eq!(primaries.len(), 3);
    for (_, port, _) in &primaries {
        let node = cluster.nodes.iter().find(|n| n.port == *port).unwrap();
        let keys: Vec<String> = node.query(&["KEYS", &format!("{prefix}:*")]);
        assert!(!keys.is_empty(), "no account on the primary at {port}");
    }

    // Readiness needs every shard: one primary not answering (paused, no
    // failover; not the one holding the readiness probe's key) makes patd
    // unready, and ready again once it answers.
    let channel = a.channel().await;
    let probe_owner = cluster.owner(cluster.slot("{probe}")).port;
    let (_, port, _) = primaries
        .iter()
        .find(|(_, port, _)| *port != probe_owner)
        .unwrap();
    let paused = cluster.nodes.iter().find(|n| n.port == *port).unwrap();
    let _: () = paused.query(&["CLIENT", "PAUSE", "6000", "ALL"]);
    let unready = health_becomes(
        &channel,
        SERVICE,
        ServingStatus::NotServing,
        Duration::from_secs(6),
    )
    .await;
    assert!(unready, "readiness ignored a shard that does not answer");
    let ready = health_becomes(
        &channel,
        SERVICE,
        ServingStatus::Serving,
        Duration::from_secs(30),
    )
    .await;
    assert!(ready);
    assert!(
        !a.logs().contains("MOVED") && !b.logs().contains("MOVED"),
        "a MOVED reached the log"
    );
}

/// Accounts whose keys live in the first `slots` slots of the primary
/// serving slot 0 (those `redis-cli --cluster reshard` moves first).
fn accounts_in_first_slots(cluster: &Cluster, slots: u16, n: usize) -> Vec<String> {
    let mut found = Vec::new();
    while found.len() < n {
        let account = random_name("acct-");
        let tag = patd::domain::shard_tag(&account);
        if cluster.slot(&format!("{{{tag}}}")) < slots {
            found.push(account);
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slot_migrated_under_load_gives_no_wrong_answer() {
    let cluster = Cluster::start(3);
    let prefix = random_name("t");
    let patd = on(&cluster, &prefix, &[("PATD_REDIS_TIMEOUT", "5s")]).await;
    let client = patd.client().await;
    let moving = accounts_in_first_slots(&cluster, 100, 6);
    let source = cluster.owner(0).port;
    let (from, _, _) = cluster
        .primaries()
        .into_iter()
        .find(|(_, port, _)| *port == source)
        .unwrap();
    let (to, _, _) = cluster
        .primaries()
        .into_iter()
        .find(|(_, port, _)| *port != source)
        .unwrap();

    let load = Workload::start(std::slice::from_ref(&client), moving.clone(), false);
    while load.acknowledged() < 150 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seed = cluster.nodes[0].addr();
    let reshard = tokio::task::spawn_blocking(move || {
        std::process::Command::new("redis-cli")
            .args(["--cluster", "reshard", &seed])
            .args(["--cluster-from", &from, "--cluster-to", &to])
            .args(["--cluster-slots", "100", "--cluster-yes"])
            .args(["--cluster-pipeline", "2"])
            .output()
            .expect("redis-cli")
    })
    .await
    .unwrap();
    assert!(
        reshard.status.success(),
        "reshard: {}",
        String::from_utf8_lossy(&reshard.stdout)
    );
    let before = load.acknowledged();
    while load.acknowledged() < before + 100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The accounts did move.
    let slot_of = |account: &str| {
        let tag = patd::domain::shard_tag(account);
        cluster.slot(&format!("{{{tag}}}"))
    };
    for account in &moving {
        let slot = slot_of(account);
        assert_ne!(cluster.owner(slot).port, source, "slot {slot} did not move");
    }
    // One slot goes back step by step, held 2 s between its keys' move and
    // its own, under load: every call on it meets ASK meanwhile.
    let back = slot_of(&moving[0]);
    let cluster = std::sync::Arc::new(cluster);
    let c = cluster.clone();
    let before = load.acknowledged();
    tokio::task::spawn_blocking(move || c.migrate_slot(back, source, Duration::from_secs(2)))
        .await
        .unwrap();
    assert!(
        load.acknowledged() > before,
        "no call went through during the ASK phase"
    );
    assert_eq!(cluster.owner(back).port, source);
    // patd followed ASK: the importing node ran its ASKING.
    let stats: String = cluster.owner(back).query(&["INFO", "commandstats"]);
    let asked = stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_asking:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(asked > 0, "no ASKING reached the importing node:\n{stats}");
    let before = load.acknowledged();
    while load.acknowledged() < before + 100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let tally = load.tally.clone();
    let tokens = load.stop().await;

    assert_eq!(tally.wrong.load(Ordering::Relaxed), 0, "wrong answers");
    // With a 5 s PATD_REDIS_TIMEOUT, redirections and TRYAGAIN are
    // followed to an answer: nothing was refused either.
    assert_eq!(
        tally.failed.load(Ordering::Relaxed),
        0,
        "refused calls:\n{}",
        patd.logs()
    );
    let (active, revoked) = check(&client, &tokens).await;
    eprintln!(
        "reshard under load: {} acknowledged, {} failed, {active} active and {revoked} revoked checked",
        tally.ok.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
    );
    assert!(!patd.logs().contains("MOVED"), "a MOVED reached the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_primary_is_replaced_and_no_acknowledged_revocation_is_lost() {
    let mut cluster = Cluster::start(3);
    let prefix = random_name("t");
    let patd = on(&cluster, &prefix, &[("PATD_REDIS_MIN_REPLICAS_ACK", "1")]).await;
    let client = patd.client().await;

    let load = Workload::start(std::slice::from_ref(&client), accounts(6), false);
    load.until(200, 20).await;
    // Kill the primary holding the first active token's account.
    let probe = load.an_active_token();
    let tag = patd::domain::shard_tag(&probe.account);
    let victim = cluster.owner(cluster.slot(&format!("{{{tag}}}"))).port;
    let killed_at = Instant::now();
    cluster.node_mut(victim).kill();
    // Stopped at once, so the ledger keeps what was acknowledged before
    // the kill (later writes to that shard are refused until it has a
    // replica again, and each refused Revoke makes its token "unknown").
    let tokens = load.stop().await;
    let (took, refused) = serves_again(&client, &probe.value, Duration::from_secs(30)).await;
    eprintln!(
        "cluster failover: Introspect served again {:?} after kill -9 ({took:?} of polling, \
         {refused} refused meanwhile)",
        killed_at.elapsed()
    );
    let (active, revoked) = check(&client, &tokens).await;
    eprintln!("cluster failover: 0 lost of {active} active, 0 resurrected of {revoked} revoked");
    assert!(
        active > 0 && revoked > 0,
        "active {active}, revoked {revoked}"
    );
    assert_ne!(
        cluster.owner(cluster.slot(&format!("{{{tag}}}"))).port,
        victim
    );

    // The old primary returns as a replica: writes on its shard are
    // acknowledged again, and every shard is ready.
    cluster.node_mut(victim).restart();
    cluster.add_patd_user(&prefix);
    cluster.wait_ok(Duration::from_secs(30));
    let mut c = client.clone();
    let back = crate::helpers::eventually(Duration::from_secs(60), || {
        let mut c = c.clone();
        let account = probe.account.clone();
        async move { c.issue(issue_request(&account, 60)).await.is_ok() }
    })
    .await;
    assert!(back, "writes did not come back:\n{}", patd.logs());
    assert!(is_active(&mut c, &probe.value).await);
    let ready = health_becomes(
        &patd.channel().await,
        SERVICE,
        ServingStatus::Serving,
        Duration::from_secs(30),
    )
    .await;
    assert!(ready);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn patd_starts_while_the_cluster_is_down_and_serves_once_it_is_up() {
    let mut cluster = Cluster::start(3);
    let prefix = random_name("t");
    let url = cluster.add_patd_user(&prefix);
    for node in &mut cluster.nodes {
        node.kill();
    }
    let patd = Patd::spawn(PatdOptions::new(Backend::Redis { url }).key_prefix(&prefix)).await;
    let channel = patd.channel().await;
    let mut client = patd.client().await;
    let refused = client
        .issue(issue_request("acct-down", 60))
        .await
        .expect_err("no cluster");
    assert_eq!(refused.code(), Code::Unavailable);
    assert!(
        health_becomes(
            &channel,
            SERVICE,
            ServingStatus::NotServing,
            Duration::from_secs(10)
        )
        .await
    );
    for node in &mut cluster.nodes {
        node.restart();
    }
    cluster.add_patd_user(&prefix);
    cluster.wait_ok(Duration::from_secs(30));
    let ready = health_becomes(
        &channel,
        SERVICE,
        ServingStatus::Serving,
        Duration::from_secs(30),
    )
    .await;
    assert!(ready, "patd did not find the cluster:\n{}", patd.logs());
    let (token, _) = issue(&mut client, "acct-down", 60).await;
    assert!(is_active(&mut client, &token).await);
}
