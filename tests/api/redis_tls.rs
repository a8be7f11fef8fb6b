//! Redis over TLS with a private CA (the usual case for managed and
//! in-cluster Redis), with and without client certificates, and recovery
//! from a TLS failure without a restart.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

use crate::helpers::{Backend, Patd, PatdOptions, eventually, issue_request, random_name};
use crate::http_helpers::get;

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

fn ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Distinct names: OpenSSL finds an issuer by its name.
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let key = KeyPair::generate().expect("key");
    let pem = params.self_signed(&key).expect("self-sign").pem();
    Ca {
        issuer: Issuer::new(params, key),
        pem,
    }
}

/// Writes `<name>.pem` and `<name>.key`, a certificate for `localhost`
/// signed by `ca`; returns their paths.
fn leaf(dir: &Path, name: &str, ca: &Ca) -> (PathBuf, PathBuf) {
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &ca.issuer).expect("sign");
    let (cert_path, key_path) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&cert_path, cert.pem()).expect("write cert");
    std::fs::write(&key_path, key.serialize_pem()).expect("write key");
    (cert_path, key_path)
}

/// A TLS-only redis-server on `port` with the given certificate, trusting
/// `client_ca` for client certificates when `auth_clients`.
struct TlsRedis(Child);

impl TlsRedis {
    fn start(
        dir: &Path,
        port: u16,
        cert: &(PathBuf, PathBuf),
        client_ca: &Path,
        auth_clients: bool,
    ) -> Self {
        let child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--tls-port")
            .arg(port.to_string())
            .arg("--tls-cert-file")
            .arg(&cert.0)
            .arg("--tls-key-file")
            .arg(&cert.1)
            .arg("--tls-ca-cert-file")
            .arg(client_ca)
            .args([
                "--tls-auth-clients",
                if auth_clients { "yes" } else { "no" },
            ])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server");
        let up = (0..200).any(|_| {
            std::thread::sleep(Duration::from_millis(20));
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(up, "TLS redis did not come up");
        Self(child)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port()
}

async fn ready(patd: &Patd) -> bool {
    get(patd.http_addr, "/readyz", &[]).await.status == 200
}

#[tokio::test]
async fn rediss_with_a_private_ca_and_client_certificates() {
    let dir = std::env::temp_dir().join(random_name("patd-redis-tls-"));
    std::fs::create_dir_all(&dir).expect("dir");
    let (server_ca, client_ca) = (ca("server CA"), ca("client CA"));
    std::fs::write(dir.join("server-ca.pem"), &server_ca.pem).unwrap();
    std::fs::write(dir.join("client-ca.pem"), &client_ca.pem).unwrap();
    let server = leaf(&dir, "server", &server_ca);
    let client = leaf(&dir, "client", &client_ca);
    let path = |p: &Path| p.to_string_lossy().into_owned();
    let port = free_port();
    let url = format!("rediss://localhost:{port}/0");

    // Without client authentication: the private CA is enough.
    let redis = TlsRedis::start(&dir, port, &server, &dir.join("client-ca.pem"), false);
    let patd = Patd::spawn(
        PatdOptions::new(Backend::Redis { url: url.clone() })
            .env("PATD_REDIS_CA", &path(&dir.join("server-ca.pem"))),
    )
    .await;
    assert!(
        eventually(Duration::from_secs(10), || ready(&patd)).await,
        "{}",
        patd.logs()
    );
    let mut api = patd.client().await;
    let token = api
        .issue(issue_request("acct-tls", 600))
        .await
        .expect("issue")
        .token;
    assert!(api.introspect(&token).await.expect("introspect").active);
    drop(patd);
    drop(redis);

    // Client certificates required: with one, patd works; without, it is
    // not ready and says why.
    let redis = TlsRedis::start(&dir, port, &server, &dir.join("client-ca.pem"), true);
    let with_cert = Patd::spawn(
        PatdOptions::new(Backend::Redis { url: url.clone() })
            .env("PATD_REDIS_CA", &path(&dir.join("server-ca.pem")))
            .env("PATD_REDIS_CLIENT_CERT", &path(&client.0))
            .env("PATD_REDIS_CLIENT_KEY", &path(&client.1)),
    )
    .await;
    assert!(
        eventually(Duration::from_secs(10), || ready(&with_cert)).await,
        "{}",
        with_cert.logs()
    );
    let mut api = with_cert.client().await;
    api.issue(issue_request("acct-tls", 600))
        .await
        .expect("issue with a client cert");
    let without_cert = Patd::spawn(
        PatdOptions::new(Backend::Redis { url: url.clone() })
            .env("PATD_REDIS_CA", &path(&dir.join("server-ca.pem"))),
    )
    .await;
    let refused = eventually(Duration::from_secs(10), || async {
        !ready(&without_cert).await && without_cert.logs().contains("store not ready")
    })
    .await;
    assert!(refused, "{}", without_cert.logs());
    drop(redis);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_tls_failure_heals_once_redis_presents_the_right_certificate() {
    let dir = std::env::temp_dir().join(random_name("patd-redis-tls-"));
    std::fs::create_dir_all(&dir).expect("dir");
    let (trusted, stranger) = (ca("trusted CA"), ca("stranger CA"));
    std::fs::write(dir.join("ca.pem"), &trusted.pem).unwrap();
    let wrong = leaf(&dir, "wrong", &stranger);
    let right = leaf(&dir, "right", &trusted);
    let port = free_port();
    let redis = TlsRedis::start(&dir, port, &wrong, &dir.join("ca.pem"), false);
    let patd = Patd::spawn(
        PatdOptions::new(Backend::Redis {
            url: format!("rediss://localhost:{port}/0"),
        })
        .env("PATD_REDIS_CA", &dir.join("ca.pem").to_string_lossy()),
    )
    .await;
    let failing = eventually(Duration::from_secs(10), || async {
        patd.logs().contains("store not ready")
    })
    .await;
    assert!(failing, "{}", patd.logs());
    assert!(
        !ready(&patd).await,
        "a certificate from an unknown CA was accepted"
    );
    drop(redis);
    // The operator fixes Redis's certificate; patd needs no restart.
    let _redis = TlsRedis::start(&dir, port, &right, &dir.join("ca.pem"), false);
    let healed = eventually(Duration::from_secs(15), || ready(&patd)).await;
    assert!(healed, "{}", patd.logs());
    let mut api = patd.client().await;
    api.issue(issue_request("acct-heal", 600))
        .await
        .expect("issue after healing");
    let _ = std::fs::remove_dir_all(&dir);
}
