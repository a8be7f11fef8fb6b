//! Configuration that cannot silently go wrong, errors that say what to do,
//! and the log lines an operator relies on: unknown variables, a defaulted
//! memory store beyond loopback, clap's whole message, boolean spellings,
//! `RUST_LOG`, secrets in `--help` and errors, readiness causes, management
//! lines that name the caller, and the JSON log format.

use std::process::{Output, Stdio};
use std::time::Duration;

use crate::helpers::{
    Backend, Patd, PatdOptions, RedisServer, eventually, issue, issue_request, patd_command,
    random_name,
};

/// Runs patd with exactly `env` (plus PATH) and `args`; for settings that
/// stop it before it serves.
fn run(env: &[(&str, &str)], args: &[&str]) -> Output {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    patd_command(&env)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run patd")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

const LOOPBACK: [(&str, &str); 2] = [
    ("PATD_GRPC_ADDR", "127.0.0.1:0"),
    ("PATD_HTTP_ADDR", "127.0.0.1:0"),
];

#[test]
fn a_misspelled_variable_stops_patd_naming_the_right_one() {
    let mut env = LOOPBACK.to_vec();
    env.push(("PATD_STROE", "redis://127.0.0.1:1/0"));
    let out = run(&env, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let text = stderr(&out);
    assert!(text.contains("unknown variable PATD_STROE"), "{text}");
    assert!(text.contains("did you mean PATD_STORE?"), "{text}");
}

#[test]
fn a_defaulted_memory_store_is_refused_beyond_loopback_unless_meant() {
    let dir = std::env::temp_dir().join(random_name("patd-callers-"));
    std::fs::create_dir_all(&dir).expect("dir");
    let callers = dir.join("callers.toml");
    let (_, entry) = patd::auth::new_caller_key("gw", &[patd::auth::Role::Introspect]);
    std::fs::write(&callers, entry).expect("write callers");
    let callers = callers.to_string_lossy().into_owned();
    let public = [
        ("PATD_GRPC_ADDR", "0.0.0.0:0"),
        ("PATD_HTTP_ADDR", "127.0.0.1:0"),
        ("PATD_CALLERS_FILE", callers.as_str()),
    ];
    let out = run(&public, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("embedded memory store"),
        "{}",
        stderr(&out)
    );
    // Asked for explicitly, it starts and keeps serving.
    let mut meant: Vec<(String, String)> = public
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    meant.push(("PATD_STORE".into(), "memory".into()));
    let mut child = patd_command(&meant)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    std::thread::sleep(Duration::from_millis(700));
    let still_running = child.try_wait().expect("wait").is_none();
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        still_running,
        "PATD_STORE=memory beyond loopback is allowed"
    );
}

#[test]
fn command_line_errors_are_printed_whole_and_say_what_to_do() {
    // A missing companion flag: clap names it.
    let out = run(&LOOPBACK, &["--tls-cert", "x.pem"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--tls-key"), "{}", stderr(&out));
    // An unknown role lists the valid ones.
    let out = run(&[], &["caller-key", "--name", "x", "--roles", "admin"]);
    assert_eq!(out.status.code(), Some(2));
    let text = stderr(&out);
    assert!(
        text.contains("introspect") && text.contains("manage"),
        "{text}"
    );
    // A boolean says which spellings work.
    let mut env = LOOPBACK.to_vec();
    env.push(("PATD_ALLOW_UNAUTHENTICATED", "maybe"));
    let out = run(&env, &[]);
    assert_eq!(out.status.code(), Some(2));
    let text = stderr(&out);
    assert!(text.contains("true") && text.contains("false"), "{text}");
    // An invalid RUST_LOG is refused rather than silencing the log.
    let mut env = LOOPBACK.to_vec();
    env.push(("RUST_LOG", "verbose"));
    let out = run(&env, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("RUST_LOG"), "{}", stderr(&out));
}

#[tokio::test]
async fn the_usual_boolean_spellings_are_accepted() {
    for yes in ["1", "yes", "on", "TRUE"] {
        let patd =
            Patd::spawn(PatdOptions::new(Backend::Memory).env("PATD_ALLOW_UNAUTHENTICATED", yes))
                .await;
        drop(patd);
    }
}

#[test]
fn a_password_in_the_store_url_is_never_printed() {
    let secret = "hunter2-do-not-print";
    // Unknown scheme: refused without echoing the value.
    let mut env = LOOPBACK.to_vec();
    let bad = format!("postgres://patd:{secret}@db/0");
    env.push(("PATD_STORE", &bad));
    let out = run(&env, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("PATD_STORE"), "{}", stderr(&out));
    assert!(!stderr(&out).contains(secret), "{}", stderr(&out));
    // --help shows no value of a secret-holding variable.
    let good = format!("redis://:{secret}@127.0.0.1:6379/0");
    let keys = "k1:MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MDE=";
    let out = run(
        &[("PATD_STORE", &good), ("PATD_TOKEN_HASH_KEYS", keys)],
        &["--help"],
    );
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("PATD_STORE"), "{help}");
    assert!(!help.contains(secret), "{help}");
    assert!(!help.contains("MDEyMzQ1"), "{help}");
}

#[tokio::test]
async fn not_ready_says_why_without_a_request() {
    let redis = RedisServer::start();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("the-right-one")
        .query(&mut redis.conn())
        .expect("set a password");
    let wrong = redis.url().replace("redis://", "redis://:the-wrong-one@");
    let patd = Patd::spawn(PatdOptions::new(Backend::Redis { url: wrong })).await;
    let told = eventually(Duration::from_secs(10), || async {
        let logs = patd.logs();
        logs.contains("store not ready") && logs.to_lowercase().contains("authentication failed")
    })
    .await;
    assert!(told, "logs: {}", patd.logs());
    assert!(
        !patd.logs().contains("the-wrong-one"),
        "the password stays out"
    );
}

#[tokio::test]
async fn management_lines_name_the_caller_the_count_and_refusals() {
    let dir = std::env::temp_dir().join(random_name("patd-callers-"));
    std::fs::create_dir_all(&dir).expect("dir");
    let callers = dir.join("callers.toml");
    let (key, entry) = patd::auth::new_caller_key("console", &[patd::auth::Role::Manage]);
    std::fs::write(&callers, entry).expect("write callers");
    let patd = Patd::spawn(
        PatdOptions::new(Backend::Memory)
            .env("PATD_CALLERS_FILE", &callers.to_string_lossy())
            .env("PATD_LOG_FORMAT", "json"),
    )
    .await;
    let mut client = patd.client().await.as_caller(&key);
    issue(&mut client, "acct-log", 600).await;
    issue(&mut client, "acct-log", 600).await;
    assert_eq!(
        client
            .revoke_all("acct-log")
            .await
            .expect("revoke all")
            .revoked,
        2
    );
    let refused = client.issue(issue_request(" ", 600)).await;
    assert!(refused.is_err());
    let lines = || -> Vec<serde_json::Value> {
        patd.logs()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    };
    let seen = eventually(Duration::from_secs(5), || async {
        lines().iter().any(|l| l["rpc"] == "RevokeAll")
            && lines().iter().any(|l| l["outcome"] == "invalid_argument")
    })
    .await;
    assert!(seen, "logs: {}", patd.logs());
    let lines = lines();
    let revoke_all = lines
        .iter()
        .find(|l| l["rpc"] == "RevokeAll")
        .expect("line");
    assert_eq!(revoke_all["caller"], "console");
    assert_eq!(revoke_all["revoked"], 2);
    assert_eq!(revoke_all["account_id"], "acct-log");
    let issued = lines
        .iter()
        .filter(|l| l["rpc"] == "Issue" && l["outcome"] == "ok")
        .count();
    assert_eq!(issued, 2);
    let refusal = lines
        .iter()
        .find(|l| l["outcome"] == "invalid_argument")
        .expect("refusal line");
    assert_eq!(refusal["rpc"], "Issue");
    assert_eq!(refusal["caller"], "console");
    assert_eq!(refusal["field"], "account_id");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn limits_in_errors_print_as_configured() {
    let patd = Patd::memory().await;
    let mut client = patd.client().await;
    let too_long = client
        .issue(issue_request("acct", 400 * 86_400))
        .await
        .expect_err("beyond the maximum lifetime");
    assert!(
        too_long.message().contains("365d"),
        "{}",
        too_long.message()
    );
}
