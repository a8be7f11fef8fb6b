//! Real nginx and Caddy, running the configs from deploy/gateways/, in front
//! of an echo upstream: patd decides, the gateway obeys, and the upstream
//! only ever sees identities patd vouched for. Every patd here requires
//! caller authentication (the configuration the README recommends), so the
//! recipes run with their caller key, as deployed.

use std::os::unix::fs::MetadataExt as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use patd::auth::{Role, new_caller_key};

use crate::helpers::{Backend, Client, Patd, PatdOptions, RedisServer, issue, random_name};
use crate::helpers::{
    eventually, issue_revoked, issue_scoped, kill_redis_until_unavailable, wait_inactive,
};
use crate::http_helpers::{
    Gateway, GatewayKind, Upstream, deploy_file, deploy_file_with_ports, free_addr, get, raw_get,
};

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// The token id is the 16 characters after `pat_`.
fn token_id(token: &str) -> String {
    token[4..20].to_owned()
}

/// What a refused gateway makes patd log.
const CALLER_REFUSED: &str = "the gateway is not an authorized patd caller";

/// A callers file admitting the test itself (manage and introspect) and the
/// gateway (introspect only), removed on drop.
struct Callers {
    path: PathBuf,
    test_key: String,
    gateway_key: String,
}

impl Callers {
    fn new() -> Self {
        let (test_key, test) = new_caller_key("tests", &[Role::Manage, Role::Introspect]);
        let (gateway_key, gateway) = new_caller_key("gw", &[Role::Introspect]);
        let path = std::env::temp_dir().join(random_name("patd-gateway-callers-"));
        std::fs::write(&path, format!("{test}\n{gateway}")).expect("write callers file");
        Self {
            path,
            test_key,
            gateway_key,
        }
    }

    fn options(&self, backend: Backend) -> PatdOptions {
        let path = self.path.to_str().expect("utf-8 temp path");
        PatdOptions::new(backend).env("PATD_CALLERS_FILE", path)
    }
}

impl Drop for Callers {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// patd (callers on), an echo upstream and a real gateway between them.
struct Stack {
    patd: Patd,
    upstream: Upstream,
    gateway: Gateway,
    client: Client,
    account: String,
    _callers: Callers,
}

impl Stack {
    /// The gateway with its own, valid caller key.
    async fn start(kind: GatewayKind, backend: Backend) -> Self {
        Self::start_keyed(kind, backend, None).await
    }

    /// `gateway_key` replaces the gateway's valid key when given.
    async fn start_keyed(kind: GatewayKind, backend: Backend, gateway_key: Option<&str>) -> Self {
        let callers = Callers::new();
        let patd = Patd::spawn(callers.options(backend)).await;
        let upstream = Upstream::start().await;
        let key = gateway_key.unwrap_or(&callers.gateway_key);
        let gateway = Gateway::start(kind, patd.http_addr, upstream.addr, key).await;
        let client = patd.client().await.as_caller(&callers.test_key);
        Self {
            patd,
            upstream,
            gateway,
            client,
            account: random_name("acct-"),
            _callers: callers,
        }
    }

    async fn token(&mut self, scopes: &[&str]) -> String {
        issue_scoped(&mut self.client, &self.account, scopes).await
    }
}

async fn gateway_obeys_patd(kind: GatewayKind) {
    let mut redis = RedisServer::start();
    let backend = Backend::Redis { url: redis.url() };
    let mut stack = Stack::start(kind, backend).await;
    let (gateway, upstream) = (&stack.gateway, &stack.upstream);
    let account = stack.account.clone();

    let (expiring, _) = issue(&mut stack.client, &account, 1).await;
    let valid = issue_scoped(&mut stack.client, &account, &["repo:read", "repo:write"]).await;
    let admin = issue_scoped(&mut stack.client, &account, &["admin"]).await;
    let revoked = issue_revoked(&mut stack.client, &account).await;

    // An active token reaches the upstream with patd's identity, and a
    // client-forged identity header is replaced, not passed along.
    let reply = get(
        gateway.addr,
        "/api/things",
        &[
            ("Authorization", &bearer(&valid)),
            ("X-Account-Id", "mallory"),
            ("X-Token-Scopes", "admin"),
        ],
    )
    .await;
    assert_eq!(reply.status, 200, "{kind:?}: {reply:?}");
    assert_eq!(reply.body, "upstream reached\n");
    assert_eq!(upstream.calls(), 1);
    assert_eq!(upstream.last_values("x-account-id"), vec![account.as_str()]);
    assert_eq!(upstream.last_values("x-token-id"), [token_id(&valid)]);
    assert_eq!(
        upstream.last_values("x-token-scopes"),
        ["repo:read repo:write"]
    );

    // Every denial stops at the gateway.
    wait_inactive(&stack.client, &expiring).await;
    let garbage = "pat_garbage";
    for (what, headers, challenge) in [
        ("no token", vec![], r#"Bearer realm="patd""#),
        (
            "forged identity only",
            vec![("X-Account-Id", account.clone())],
            r#"Bearer realm="patd""#,
        ),
        (
            "garbage",
            vec![("Authorization", bearer(garbage))],
            "invalid_token",
        ),
        (
            "revoked",
            vec![("Authorization", bearer(&revoked))],
            "invalid_token",
        ),
        (
            "expired",
            vec![("Authorization", bearer(&expiring))],
            "invalid_token",
        ),
    ] {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let reply = get(gateway.addr, "/api/things", &headers).await;
        assert_eq!(reply.status, 401, "{kind:?} {what}: {reply:?}");
        let shown = reply.header("www-authenticate").unwrap_or_default();
        assert!(
            shown.contains(challenge),
            "{kind:?} {what}: WWW-Authenticate {shown:?}"
        );
    }
    assert_eq!(
        upstream.calls(),
        1,
        "{kind:?}: a denied request reached the upstream"
    );

    // A route that requires a scope the token lacks.
    let reply = get(
        gateway.addr,
        "/api/admin/users",
        &[("Authorization", &bearer(&valid))],
    )
    .await;
    assert_eq!(reply.status, 403, "{kind:?}: {reply:?}");
    assert_eq!(upstream.calls(), 1);
    let reply = get(
        gateway.addr,
        "/api/admin/users",
        &[("Authorization", &bearer(&admin))],
    )
    .await;
    assert_eq!(reply.status, 200, "{kind:?}: {reply:?}");
    assert_eq!(upstream.calls(), 2);
    assert_eq!(upstream.last_values("x-token-scopes"), ["admin"]);

    // patd cannot reach its store: the gateway denies with a 5xx.
    kill_redis_until_unavailable(&mut redis, &stack.client, &valid).await;
    let reply = get(
        gateway.addr,
        "/api/things",
        &[("Authorization", &bearer(&valid))],
    )
    .await;
    assert!(
        (500..600).contains(&reply.status),
        "{kind:?} with redis down: {reply:?}"
    );
    assert_eq!(
        upstream.calls(),
        2,
        "{kind:?}: forwarded while patd could not decide"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_auth_request_obeys_patd() {
    gateway_obeys_patd(GatewayKind::Nginx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caddy_forward_auth_obeys_patd() {
    gateway_obeys_patd(GatewayKind::Caddy).await;
}

/// A gateway whose own caller key patd refuses (a wrong key, or none at
/// all) is misconfigured: the end user gets a server error, never a 401
/// that would blame their token, and patd's log names the caller problem.
async fn refused_gateway_key_is_a_server_error(kind: GatewayKind) {
    for (what, key) in [
        (
            "wrong key",
            "patdck_NotTheKeyPatdKnowsForThisGateway0000000",
        ),
        ("no key", ""),
    ] {
        let mut stack = Stack::start_keyed(kind, Backend::Memory, Some(key)).await;
        let valid = stack.token(&[]).await;
        for (token, headers) in [
            ("valid token", vec![("Authorization", bearer(&valid))]),
            ("bad token", vec![("Authorization", bearer("pat_garbage"))]),
            ("no token", vec![]),
        ] {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let reply = get(stack.gateway.addr, "/api/things", &headers).await;
            assert!(
                (500..600).contains(&reply.status),
                "{kind:?} {what}, {token}: {reply:?}"
            );
            assert_eq!(
                reply.header("www-authenticate"),
                None,
                "{kind:?} {what}, {token}: {reply:?}"
            );
        }
        assert_eq!(stack.upstream.calls(), 0, "{kind:?} {what}");
        // patd's log lines are read from its stderr as they come.
        let patd = &stack.patd;
        let named = eventually(Duration::from_secs(5), || async {
            patd.logs().contains(CALLER_REFUSED)
        })
        .await;
        assert!(named, "{kind:?} {what}: {}", patd.logs());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_with_a_refused_caller_key_answers_5xx_not_401() {
    refused_gateway_key_is_a_server_error(GatewayKind::Nginx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caddy_with_a_refused_caller_key_answers_5xx_not_401() {
    refused_gateway_key_is_a_server_error(GatewayKind::Caddy).await;
}

/// The upstream gets patd's identity headers, never the end user's token.
async fn upstream_never_sees_the_token(kind: GatewayKind) {
    let mut stack = Stack::start(kind, Backend::Memory).await;
    let plain = stack.token(&["repo:read"]).await;
    let admin = stack.token(&["admin"]).await;
    for (path, token) in [("/api/things", &plain), ("/api/admin/users", &admin)] {
        let reply = get(
            stack.gateway.addr,
            path,
            &[("Authorization", &bearer(token))],
        )
        .await;
        assert_eq!(reply.status, 200, "{kind:?} {path}: {reply:?}");
        let authorization = stack.upstream.last_values("authorization");
        assert!(
            authorization.is_empty(),
            "{kind:?} {path}: {authorization:?}"
        );
        assert_eq!(
            stack.upstream.last_values("x-token-id"),
            [token_id(token)],
            "{kind:?} {path}"
        );
    }
    assert_eq!(stack.upstream.calls(), 2);
    for token in [&plain, &admin] {
        let seen = stack.upstream.headers_containing(&token[20..]);
        assert!(
            seen.is_empty(),
            "{kind:?}: the upstream saw the token: {seen:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_keeps_the_token_from_the_upstream() {
    upstream_never_sees_the_token(GatewayKind::Nginx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caddy_keeps_the_token_from_the_upstream() {
    upstream_never_sees_the_token(GatewayKind::Caddy).await;
}

/// Every spelling of an identity header a WSGI/CGI upstream would read as
/// patd's (any case, `-` or `_`) is dropped from the client request; the
/// upstream sees exactly patd's one value.
async fn forged_identity_spellings_never_reach_the_upstream(kind: GatewayKind) {
    let mut stack = Stack::start(kind, Backend::Memory).await;
    let valid = stack.token(&["repo:read"]).await;
    let mut headers = vec![("Authorization".to_owned(), bearer(&valid))];
    for name in ["X-Account-Id", "X-Token-Id", "X-Token-Scopes"] {
        let lower = name.to_ascii_lowercase();
        let upper = name.to_ascii_uppercase();
        let underscored = name.replace('-', "_");
        // One separator of each kind: X-Account_Id, X_Account-Id.
        let first_dash = name.replacen('-', "_", 2).replacen('_', "-", 1);
        let last_dash = {
            let cut = name.rfind('-').expect("a dash");
            format!("{}-{}", name[..cut].replace('-', "_"), &name[cut + 1..])
        };
        for spelling in [
            name.to_owned(),
            lower.clone(),
            upper,
            underscored.clone(),
            underscored.to_ascii_lowercase(),
            underscored.to_ascii_uppercase(),
            first_dash,
            last_dash,
        ] {
            headers.push((spelling, "victim".to_owned()));
        }
    }
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let status = raw_get(stack.gateway.addr, "/api/things", &headers).await;
    assert_eq!(status, 200, "{kind:?}");
    assert_eq!(stack.upstream.calls(), 1);
    for (name, want) in [
        ("X-Account-Id", stack.account.clone()),
        ("X-Token-Id", token_id(&valid)),
        ("X-Token-Scopes", "repo:read".to_owned()),
    ] {
        assert_eq!(
            stack.upstream.last_cgi_values(name),
            [(name.to_ascii_lowercase(), want)],
            "{kind:?}: what the upstream would read as {name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_drops_every_spelling_of_forged_identity_headers() {
    forged_identity_spellings_never_reach_the_upstream(GatewayKind::Nginx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caddy_drops_every_spelling_of_forged_identity_headers() {
    forged_identity_spellings_never_reach_the_upstream(GatewayKind::Caddy).await;
}

/// 16 KiB of cookies (four 4 KiB lines, within nginx's default header
/// buffers) are twice patd's 8 KiB head limit: the gateway must not copy
/// them into the check, and the upstream still gets every one.
async fn big_cookies_stay_out_of_the_check(kind: GatewayKind) {
    let mut stack = Stack::start(kind, Backend::Memory).await;
    let valid = stack.token(&[]).await;
    let lines: Vec<String> = (0..4)
        .map(|line| {
            (0..32)
                .map(|n| format!("c{line}x{n:02}={}", "v".repeat(125)))
                .collect::<Vec<_>>()
                .join("; ")
        })
        .collect();
    let sent: usize = lines.iter().map(String::len).sum();
    assert!(sent >= 16 * 1024, "{sent} bytes of cookies");
    let auth = bearer(&valid);
    let mut headers: Vec<(&str, &str)> = lines.iter().map(|c| ("Cookie", c.as_str())).collect();
    headers.push(("Authorization", &auth));

    let reply = get(stack.gateway.addr, "/api/things", &headers).await;
    assert_eq!(reply.status, 200, "{kind:?}: {reply:?}");
    let crumbs = |values: Vec<String>| {
        let mut all: Vec<String> = values
            .iter()
            .flat_map(|v| v.split(';'))
            .map(|c| c.trim().to_owned())
            .collect();
        all.sort();
        all
    };
    assert_eq!(
        crumbs(stack.upstream.last_values("cookie")),
        crumbs(lines.clone()),
        "{kind:?}: the upstream lost cookies"
    );

    // A bad token with the same cookies is still the user's 401.
    headers.pop();
    let garbage = bearer("pat_garbage");
    headers.push(("Authorization", &garbage));
    let reply = get(stack.gateway.addr, "/api/things", &headers).await;
    assert_eq!(reply.status, 401, "{kind:?}: {reply:?}");
    assert_eq!(stack.upstream.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_sends_patd_no_cookies() {
    big_cookies_stay_out_of_the_check(GatewayKind::Nginx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caddy_sends_patd_no_cookies() {
    big_cookies_stay_out_of_the_check(GatewayKind::Caddy).await;
}

/// Only the route's configuration says what patd requires: a client's own
/// query string (`scope=`, unknown parameters) never reaches patd, and
/// still reaches the upstream untouched.
async fn client_query_never_reaches_patd(kind: GatewayKind) {
    let mut stack = Stack::start(kind, Backend::Memory).await;
    let plain = stack.token(&["repo:read"]).await;
    let admin = stack.token(&["admin"]).await;
    let addr = stack.gateway.addr;
    let expect = [
        // A route requiring nothing, whatever the client's query says.
        ("/api/x?scope=admin&x=1", &plain, 200),
        ("/api/x?scope=", &plain, 200),
        ("/api/x?x=1", &plain, 200),
        ("/api/x?scope=BAD%20SCOPE", &plain, 200),
        // A route requiring admin: the client can neither add nor remove
        // a requirement, nor break the check.
        ("/api/admin/users?scope=repo:read", &plain, 403),
        ("/api/admin/users?x=1", &plain, 403),
        ("/api/admin/users?scope=", &plain, 403),
        ("/api/admin/users?scope=repo:write&x=1", &admin, 200),
    ];
    for (path, token, status) in expect {
        let reply = get(addr, path, &[("Authorization", &bearer(token))]).await;
        assert_eq!(reply.status, status, "{kind:?} {path}: {reply:?}");
        if status == 200 {
            assert_eq!(stack.upstream.last_uri(), path, "{kind:?}");
        }
    }
    let logs = stack.patd.logs();
    assert!(
        !logs.contains("misconfigured"),
        "{kind:?}: a client query reached patd: {logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_keeps_the_client_query_from_patd() {
    client_query_never_reaches_patd(GatewayKind::Nginx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caddy_keeps_the_client_query_from_patd() {
    client_query_never_reaches_patd(GatewayKind::Caddy).await;
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}

/// nginx.conf's "Run" lines, run as they are written (only the prefix
/// directory, the config's path and its ports replaced) by a user that is
/// not root: `nobody` when the tests run as root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_run_lines_work_as_a_non_root_user() {
    let callers = Callers::new();
    let patd = Patd::spawn(callers.options(Backend::Memory)).await;
    let upstream = Upstream::start().await;
    let listen = free_addr();

    // The config as `cp` finds it, readable by anyone.
    let source = std::env::temp_dir().join(random_name("patd-nginx-source-"));
    std::fs::create_dir_all(&source).expect("source dir");
    let conf = source.join("nginx.conf");
    let config = deploy_file_with_ports("nginx.conf", listen, patd.http_addr, upstream.addr);
    std::fs::write(&conf, config).expect("write nginx.conf");
    let prefix = std::env::temp_dir().join(random_name("patd-nginx-run-"));
    let (conf_path, prefix_path) = (conf.display().to_string(), prefix.display().to_string());
    let commands: Vec<String> = deploy_file("nginx.conf")
        .lines()
        .filter_map(|line| line.strip_prefix("#   $ "))
        .map(|line| {
            line.replace("/tmp/patd-nginx", &prefix_path)
                .replace("deploy/gateways/nginx.conf", &conf_path)
        })
        .collect();
    assert!(commands.len() >= 2, "no Run lines in nginx.conf");
    let script = commands.join("\n");

    let key = format!("PATD_CALLER_KEY={}", callers.gateway_key);
    let mut command = Command::new(if is_root() { "runuser" } else { "env" });
    if is_root() {
        command.args(["-u", "nobody", "--", "env"]);
    }
    let out = command
        .args([key.as_str(), "sh", "-ec", &script])
        .current_dir("/")
        .output()
        .expect("run the Run lines");

    let pid_file = prefix.join("nginx.pid");
    let started = out.status.success();
    // The prefix the Run lines made belongs to whoever ran them.
    let owner = std::fs::metadata(&prefix).map(|m| m.uid()).ok();
    let mut reply = None;
    if started {
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(listen).await.is_err() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut client = patd.client().await.as_caller(&callers.test_key);
        let account = random_name("acct-");
        let token = issue_scoped(&mut client, &account, &[]).await;
        let got = get(listen, "/api/things", &[("Authorization", &bearer(&token))]).await;
        reply = Some((got, account));
    }
    // Stop the daemon the Run lines started, then clean up.
    if let Ok(pid) = std::fs::read_to_string(&pid_file) {
        let _ = Command::new("kill").args(["-TERM", pid.trim()]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while pid_file.exists() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let _ = std::fs::remove_dir_all(&prefix);
    let _ = std::fs::remove_dir_all(&source);

    assert!(
        started,
        "the Run lines failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ne!(owner, Some(0), "the Run lines ran as root");
    let (reply, account) = reply.expect("a reply");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(upstream.last_values("x-account-id"), [account]);
}
