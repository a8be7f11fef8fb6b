//! Caller authentication, secure defaults, keyed digests and overload, each
//! against the real binary.

use std::io::Read as _;
use std::process::Command;
use std::time::{Duration, Instant};

use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::helpers::{
    Backend, Client, Patd, PatdOptions, ReadyFile, RedisServer, eventually, is_active, issue,
    issue_request, patd_command, random_name,
};
use crate::http_helpers::get;

/// A callers file with a console (manage) and a gateway (introspect);
/// returns (path, console key, gateway key).
pub fn callers_file() -> (std::path::PathBuf, String, String) {
    let (console_key, console) = patd::auth::new_caller_key("console", &[patd::auth::Role::Manage]);
    let (gateway_key, gateway) =
        patd::auth::new_caller_key("gateway", &[patd::auth::Role::Introspect]);
    let path = std::env::temp_dir().join(random_name("patd-callers-"));
    std::fs::write(&path, format!("{console}\n{gateway}")).expect("write callers file");
    (path, console_key, gateway_key)
}

async fn code_of<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> Code {
    match result {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

#[tokio::test]
async fn each_role_can_call_exactly_its_rpcs_over_grpc_and_http() {
    let (file, console, gateway) = callers_file();
    let patd = Patd::spawn(
        PatdOptions::new(Backend::Memory).env("PATD_CALLERS_FILE", file.to_str().unwrap()),
    )
    .await;
    let mut client: Client = patd.client().await;
    let account = random_name("acct-");

    // No key at all: refused, for management and introspection alike.
    assert_eq!(
        code_of(client.issue(issue_request(&account, 60)).await).await,
        Code::Unauthenticated
    );
    let anonymous = client.introspect("x").await;
    assert_eq!(code_of(anonymous).await, Code::Unauthenticated);
    let wrong = client
        .as_caller("patdck_wrong")
        .issue(issue_request(&account, 60))
        .await;
    assert_eq!(code_of(wrong).await, Code::Unauthenticated);

    // The console manages, and only manages.
    let mut as_console = client.as_caller(&console);
    let issued = as_console
        .issue(issue_request(&account, 60))
        .await
        .expect("console issues");
    let listed = as_console.list(&account).await;
    assert_eq!(code_of(listed).await, Code::Ok);
    let console_introspect = as_console.introspect(&issued.token).await;
    assert_eq!(code_of(console_introspect).await, Code::PermissionDenied);

    // The gateway checks, and only checks.
    let mut as_gateway = client.as_caller(&gateway);
    let seen = as_gateway
        .introspect(&issued.token)
        .await
        .expect("gateway introspects");
    assert!(seen.active);
    let gateway_issue = as_gateway.issue(issue_request(&account, 60)).await;
    assert_eq!(code_of(gateway_issue).await, Code::PermissionDenied);
    let gateway_revoke_all = as_gateway.revoke_all(&account).await;
    assert_eq!(code_of(gateway_revoke_all).await, Code::PermissionDenied);

    // Health stays open.
    let mut health = HealthClient::new(patd.channel().await);
    health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health needs no key");

    // HTTP forward-auth: the gateway's key in X-Patd-Caller-Key.
    let bearer = format!("Bearer {}", issued.token);
    let no_key = get(
        patd.http_addr,
        "/v1/forward-auth",
        &[("Authorization", &bearer)],
    )
    .await;
    // A gateway without caller credentials is its operator's mistake: a
    // server error, never a 401 an end user would read as a bad token.
    assert_eq!(no_key.status, 500);
    assert!(
        no_key.header("www-authenticate").is_none(),
        "no hint which credential was wrong"
    );
    let as_console = get(
        patd.http_addr,
        "/v1/forward-auth",
        &[("Authorization", &bearer), ("X-Patd-Caller-Key", &console)],
    )
    .await;
    assert_eq!(as_console.status, 500);
    // The log is written in the background: give it a moment.
    let told = eventually(Duration::from_secs(5), || async {
        patd.logs()
            .contains("the gateway is not an authorized patd caller")
    })
    .await;
    assert!(told, "the operator is told which side is wrong");
    let as_gateway = get(
        patd.http_addr,
        "/v1/forward-auth",
        &[("Authorization", &bearer), ("X-Patd-Caller-Key", &gateway)],
    )
    .await;
    assert_eq!(as_gateway.status, 200);
    assert_eq!(as_gateway.header("x-account-id"), Some(account.as_str()));
    assert_eq!(get(patd.http_addr, "/healthz", &[]).await.status, 200);

    let logs = patd.logs();
    for secret in [&console, &gateway, &issued.token] {
        assert!(
            !logs.contains(secret.as_str()),
            "a credential reached the log"
        );
    }
    let _ = std::fs::remove_file(file);
}

#[test]
fn a_public_bind_without_callers_is_refused_unless_explicitly_allowed() {
    let env = |extra: &[(&str, &str)]| {
        let mut env = vec![
            ("PATD_GRPC_ADDR".to_owned(), "0.0.0.0:0".to_owned()),
            ("PATD_HTTP_ADDR".to_owned(), "127.0.0.1:0".to_owned()),
        ];
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        env
    };
    let out = patd_command(&env(&[])).output().expect("run patd");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("PATD_CALLERS_FILE"), "{stderr}");

    // Explicitly allowed: it starts, with a warning.
    let ready = ReadyFile::new();
    // The memory store beyond loopback must be meant too.
    let mut allowed = env(&[
        ("PATD_ALLOW_UNAUTHENTICATED", "true"),
        ("PATD_STORE", "memory"),
    ]);
    allowed.push(ready.env());
    let mut child = patd_command(&allowed)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    // Started or not, the question is the warning, which comes first.
    let _ = ready.wait_blocking(&mut child);
    // SIGTERM, not SIGKILL: patd's log writer runs in the background, and a
    // clean exit flushes what it still holds.
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    let mut stderr = String::new();
    let _ = child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr);
    let warned = stderr.contains("WITHOUT caller authentication");
    assert!(warned, "no start-up warning");
}

#[test]
fn certificate_callers_without_a_client_ca_stop_patd_at_start() {
    let path = std::env::temp_dir().join(random_name("patd-callers-"));
    std::fs::write(
        &path,
        "[[caller]]\nname = \"mesh\"\nroles = [\"manage\"]\ncert_san = \"spiffe://x/y\"\n",
    )
    .unwrap();
    let env = [
        ("PATD_GRPC_ADDR".to_owned(), "127.0.0.1:0".to_owned()),
        ("PATD_HTTP_ADDR".to_owned(), "127.0.0.1:0".to_owned()),
        (
            "PATD_CALLERS_FILE".to_owned(),
            path.to_string_lossy().into_owned(),
        ),
    ];
    let out = patd_command(&env).output().expect("run patd");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("PATD_TLS_CLIENT_CA"), "{stderr}");
    let _ = std::fs::remove_file(path);
}

/// The hash of a token as `redis-cli` would see it.
fn record(
    redis: &RedisServer,
    prefix: &str,
    token_id: &str,
) -> std::collections::HashMap<String, String> {
    let key = format!("{prefix}:{{{}}}:t:{token_id}", &token_id[..3]);
    redis::cmd("HGETALL")
        .arg(key)
        .query(&mut redis.conn())
        .expect("HGETALL")
}

fn sha256_hex(value: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(value.as_bytes()))
}

fn hash_key(byte: u8) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode([byte; 32])
}

async fn keyed_patd(redis: &RedisServer, prefix: &str, keys: &str) -> Patd {
    Patd::spawn(
        PatdOptions::new(Backend::Redis { url: redis.url() })
            .key_prefix(prefix)
            .env("PATD_TOKEN_HASH_KEYS", keys),
    )
    .await
}

#[tokio::test]
async fn keyed_digests_differ_from_sha256_and_survive_rotation() {
    let redis = RedisServer::start();
    let prefix = random_name("t");
    let k1 = format!("k1:{}", hash_key(1));
    let k2 = format!("k2:{}", hash_key(2));

    let first = keyed_patd(&redis, &prefix, &k1).await;
    let mut client = first.client().await;
    let (old, old_id) = issue(&mut client, "acct", 600).await;
    let stored = record(&redis, &prefix, &old_id);
    assert_eq!(stored.get("kid").map(String::as_str), Some("k1"));
    assert_ne!(
        stored.get("digest"),
        Some(&sha256_hex(&old)),
        "stored plain SHA-256"
    );
    assert!(is_active(&mut client, &old).await);
    drop(first);

    // Rotation: k2 signs new tokens, k1 still verifies old ones.
    let rotated = keyed_patd(&redis, &prefix, &format!("{k2},{k1}")).await;
    let mut client = rotated.client().await;
    assert!(is_active(&mut client, &old).await);
    let (new, new_id) = issue(&mut client, "acct", 600).await;
    assert_eq!(
        record(&redis, &prefix, &new_id)
            .get("kid")
            .map(String::as_str),
        Some("k2")
    );
    drop(rotated);

    // k1 removed: every token it made is dead at once.
    let only_k2 = keyed_patd(&redis, &prefix, &k2).await;
    let mut client = only_k2.client().await;
    assert!(!is_active(&mut client, &old).await);
    assert!(is_active(&mut client, &new).await);
    let logs = only_k2.logs();
    assert!(
        !logs.contains(&hash_key(2)) && !logs.contains(&hash_key(1)),
        "key material logged"
    );
}

/// Writes a token record by hand, as someone with Redis write access but no
/// digest key would, and returns the token value it stands for.
fn forge(redis: &RedisServer, prefix: &str, account: &str) -> String {
    let tag = patd::domain::shard_tag(account);
    let token_id = format!("{tag}ForgedToken00");
    let signed = format!("pat_{token_id}{}", "S".repeat(32));
    let token = format!(
        "{signed}{:0>6}",
        base62::encode(crc32fast::hash(signed.as_bytes()))
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let expires = now + 600_000;
    let mut conn = redis.conn();
    let _: () = redis::cmd("HSET")
        .arg(format!("{prefix}:{{{tag}}}:t:{token_id}"))
        .arg(&[
            ("account", account.to_owned()),
            ("digest", sha256_hex(&token)),
            ("note", String::new()),
            ("scopes", "admin".to_owned()),
            ("created", now.to_string()),
            ("expires", expires.to_string()),
        ])
        .query(&mut conn)
        .expect("HSET");
    let _: () = redis::cmd("ZADD")
        .arg(format!("{prefix}:{{{tag}}}:a:{account}"))
        .arg(expires)
        .arg(&token_id)
        .query(&mut conn)
        .expect("ZADD");
    token
}

#[tokio::test]
async fn a_hand_written_sha256_record_is_refused_when_keys_are_set() {
    let redis = RedisServer::start();
    let prefix = random_name("t");
    let token = forge(&redis, &prefix, "victim");

    // Without keys the forgery works: that is what keys are for.
    let plain =
        Patd::spawn(PatdOptions::new(Backend::Redis { url: redis.url() }).key_prefix(&prefix))
            .await;
    assert!(
        is_active(&mut plain.client().await, &token).await,
        "the forged record is well-formed"
    );
    drop(plain);

    let keyed = keyed_patd(&redis, &prefix, &format!("k1:{}", hash_key(9))).await;
    let mut client = keyed.client().await;
    assert!(!is_active(&mut client, &token).await);
    let forward = get(
        keyed.http_addr,
        "/v1/forward-auth",
        &[("Authorization", &format!("Bearer {token}"))],
    )
    .await;
    assert_eq!(forward.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overload_gets_fast_refusals_and_patd_keeps_serving() {
    let redis = RedisServer::start();
    let patd = Patd::spawn(
        PatdOptions::new(Backend::Redis { url: redis.url() })
            .env("PATD_MAX_CONCURRENT_REQUESTS", "4")
            .env("PATD_REDIS_TIMEOUT", "5s"),
    )
    .await;
    let mut client = patd.client().await;
    let (token, _) = issue(&mut client, "acct", 600).await;

    // Stall Redis so that admitted requests stay in flight.
    redis.pause(2500);
    let mut tasks = Vec::new();
    for _ in 0..60 {
        let mut c = client.clone();
        let t = token.clone();
        tasks.push(tokio::spawn(async move {
            let started = std::time::Instant::now();
            let result = c.introspect(&t).await;
            (
                result.map(|r| r.active).map_err(|s| s.code()),
                started.elapsed(),
            )
        }));
    }
    // With every slot taken, the probes still answer.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut health = HealthClient::new(patd.channel().await);
    let probe = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health answers under overload");
    assert_eq!(probe.into_inner().status, 1, "SERVING");
    let mut refused = 0;
    let mut refused_fast = 0;
    let mut served = 0;
    for task in tasks {
        match task.await.expect("task") {
            (Err(Code::ResourceExhausted), took) => {
                refused += 1;
                // Refused before the stall ended, not after waiting on it.
                if took < Duration::from_millis(2000) {
                    refused_fast += 1;
                }
            }
            (Ok(true), _) => served += 1,
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    assert!((1..=4).contains(&served), "served {served}");
    assert_eq!(served + refused, 60);
    assert_eq!(refused_fast, refused, "refusals waited for the stall");

    // Afterwards everything is served again.
    assert!(
        eventually(Duration::from_secs(10), || {
            let mut c = client.clone();
            let t = token.clone();
            async move { is_active(&mut c, &t).await }
        })
        .await
    );
    let listed = client.list("acct").await;
    assert_eq!(code_of(listed).await, Code::Ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_overload_answers_503_at_once() {
    let redis = RedisServer::start();
    let patd = Patd::spawn(
        PatdOptions::new(Backend::Redis { url: redis.url() })
            .env("PATD_MAX_CONCURRENT_REQUESTS", "2")
            .env("PATD_REDIS_TIMEOUT", "5s"),
    )
    .await;
    let (token, _) = issue(&mut patd.client().await, "acct", 600).await;
    redis.pause(2000);
    let bearer = format!("Bearer {token}");
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let addr = patd.http_addr;
        let bearer = bearer.clone();
        tasks.push(tokio::spawn(async move {
            get(addr, "/v1/forward-auth", &[("Authorization", &bearer)]).await
        }));
    }
    let mut statuses = Vec::new();
    for task in tasks {
        let reply = task.await.expect("task");
        if reply.status == 503 {
            assert!(reply.body.starts_with("overloaded"), "{}", reply.body);
        }
        statuses.push(reply.status);
    }
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let shed = statuses.iter().filter(|s| **s == 503).count();
    assert!((1..=2).contains(&ok) && ok + shed == 20, "{statuses:?}");
    assert_eq!(
        get(
            patd.http_addr,
            "/v1/forward-auth",
            &[("Authorization", &bearer)]
        )
        .await
        .status,
        200
    );
}
