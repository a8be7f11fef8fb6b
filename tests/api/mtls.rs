//! Mutual TLS with certificates made at test time: a client certificate from
//! the configured CA whose SAN names a caller gets in, on gRPC and HTTP; no
//! certificate, another SAN, or another CA does not.

use std::net::SocketAddr;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::helpers::{Backend, Client, Patd, PatdOptions, issue_request, random_name};
use crate::http_helpers::{Reply, get_over};

const SAN: &str = "spiffe://patd.test/gateway";

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

fn ca() -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate().expect("key");
    let pem = params.self_signed(&key).expect("self-sign").pem();
    Ca {
        issuer: Issuer::new(params, key),
        pem,
    }
}

/// (certificate PEM, key PEM) signed by `ca`.
fn leaf(ca: &Ca, dns: &[&str], uri: Option<&str>) -> (String, String) {
    let mut params = CertificateParams::new(dns.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .expect("params");
    if let Some(uri) = uri {
        params
            .subject_alt_names
            .push(SanType::URI(uri.try_into().expect("ia5")));
    }
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &ca.issuer).expect("sign");
    (cert.pem(), key.serialize_pem())
}

struct Setup {
    patd: Patd,
    dir: std::path::PathBuf,
    ca_pem: String,
}

async fn setup(ca: &Ca) -> Setup {
    setup_with(ca, &[]).await
}

async fn setup_with(ca: &Ca, env: &[(&str, &str)]) -> Setup {
    let dir = std::env::temp_dir().join(random_name("patd-tls-"));
    std::fs::create_dir_all(&dir).expect("dir");
    let (cert, key) = leaf(ca, &["localhost"], None);
    std::fs::write(dir.join("server.pem"), cert).unwrap();
    std::fs::write(dir.join("server.key"), key).unwrap();
    std::fs::write(dir.join("ca.pem"), &ca.pem).unwrap();
    std::fs::write(
        dir.join("callers.toml"),
        format!("[[caller]]\nname = \"mesh-gateway\"\nroles = [\"manage\", \"introspect\"]\ncert_san = \"{SAN}\"\n"),
    )
    .unwrap();
    let path = |f: &str| dir.join(f).to_string_lossy().into_owned();
    let options = env
        .iter()
        .fold(PatdOptions::new(Backend::Memory), |o, (k, v)| o.env(k, v));
    let patd = Patd::spawn(
        options
            .env("PATD_TLS_CERT", &path("server.pem"))
            .env("PATD_TLS_KEY", &path("server.key"))
            .env("PATD_TLS_CLIENT_CA", &path("ca.pem"))
            .env("PATD_CALLERS_FILE", &path("callers.toml")),
    )
    .await;
    Setup {
        patd,
        dir,
        ca_pem: ca.pem.clone(),
    }
}

async fn grpc(
    setup: &Setup,
    client_cert: Option<&(String, String)>,
) -> Result<Client, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&setup.ca_pem))
        .domain_name("localhost");
    if let Some((cert, key)) = client_cert {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let channel =
        Channel::from_shared(format!("https://localhost:{}", setup.patd.grpc_addr.port()))
            .expect("uri")
            .tls_config(tls)?
            .connect()
            .await?;
    Ok(Client::new(channel))
}

async fn https_status(
    setup: &Setup,
    addr: SocketAddr,
    client_cert: Option<&(String, String)>,
    token: &str,
) -> Option<u16> {
    let bearer = format!("Bearer {token}");
    let headers = [("Authorization", bearer.as_str())];
    let reply = https_get(setup, addr, client_cert, "/v1/forward-auth", &headers).await?;
    (reply.status != 0).then_some(reply.status)
}

/// `GET path` over TLS, with `client_cert` if any; `None` if the TLS
/// handshake fails.
async fn https_get(
    setup: &Setup,
    addr: SocketAddr,
    client_cert: Option<&(String, String)>,
    path: &str,
    headers: &[(&str, &str)],
) -> Option<Reply> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(setup.ca_pem.as_bytes()) {
        roots.add(cert.expect("ca pem")).expect("root");
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let config = match client_cert {
        Some((cert, key)) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(cert.as_bytes())
                    .map(|c| c.expect("pem"))
                    .collect();
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client auth")
        }
        None => builder.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    let name = ServerName::try_from("localhost").expect("name");
    let stream = connector.connect(name, tcp).await.ok()?;
    Some(get_over(stream, "localhost", path, headers).await)
}

#[tokio::test]
async fn a_client_certificate_with_a_known_san_is_a_json_api_caller() {
    let ca = ca();
    let setup = setup(&ca).await;
    let good = leaf(&ca, &[], Some(SAN));
    let other_san = leaf(&ca, &[], Some("spiffe://patd.test/intruder"));
    let http = setup.patd.http_addr;
    let path = "/v1/accounts/acct/tokens";
    let listed = https_get(&setup, http, Some(&good), path, &[])
        .await
        .expect("mTLS");
    assert_eq!(listed.status, 200, "{}", listed.body);
    for cert in [None, Some(&other_san)] {
        let refused = https_get(&setup, http, cert, path, &[]).await.expect("TLS");
        assert_eq!(refused.status, 401, "{}", refused.body);
        assert_eq!(
            refused.header("content-type"),
            Some("application/problem+json")
        );
    }
    let _ = std::fs::remove_dir_all(&setup.dir);
}

#[tokio::test]
async fn a_client_certificate_with_a_known_san_is_a_caller() {
    let ca = ca();
    let setup = setup(&ca).await;
    let good = leaf(&ca, &[], Some(SAN));
    let other_san = leaf(&ca, &[], Some("spiffe://patd.test/intruder"));
    // The caller's SAN is a URI; the same text as a DNS name is not it.
    let dns_lookalike = leaf(&ca, &[SAN], None);
    let stranger_ca = self::ca();
    let foreign = leaf(&stranger_ca, &[], Some(SAN));

    // gRPC
    let mut client = grpc(&setup, Some(&good)).await.expect("mTLS connects");
    let token = client
        .issue(issue_request("acct", 60))
        .await
        .expect("the known SAN may issue")
        .token;
    client.list("acct").await.expect("and list");
    let mut anonymous = grpc(&setup, None)
        .await
        .expect("TLS without a client cert connects");
    let refused = anonymous
        .issue(issue_request("acct", 60))
        .await
        .expect_err("no cert");
    assert_eq!(refused.code(), Code::Unauthenticated);
    let mut lookalike = grpc(&setup, Some(&dns_lookalike)).await.expect("connects");
    let refused = lookalike
        .issue(issue_request("acct", 60))
        .await
        .expect_err("a DNS SAN spelled like the caller's URI");
    assert_eq!(refused.code(), Code::Unauthenticated);
    let mut intruder = grpc(&setup, Some(&other_san)).await.expect("connects");
    let refused = intruder
        .issue(issue_request("acct", 60))
        .await
        .expect_err("other SAN");
    assert_eq!(refused.code(), Code::Unauthenticated);
    let foreign_result = match grpc(&setup, Some(&foreign)).await {
        Err(_) => None,
        Ok(mut c) => Some(c.issue(issue_request("acct", 60)).await.map(|_| ())),
    };
    assert!(
        !matches!(foreign_result, Some(Ok(()))),
        "a certificate from an unknown CA was accepted"
    );

    // HTTP forward-auth over TLS: the certificate identifies the gateway.
    let http = setup.patd.http_addr;
    assert_eq!(
        https_status(&setup, http, Some(&good), &token).await,
        Some(200)
    );
    // A gateway patd does not admit is the operator's problem: 500, not a
    // 401 that would tell the end user their token is bad.
    assert_eq!(https_status(&setup, http, None, &token).await, Some(500));
    assert_eq!(
        https_status(&setup, http, Some(&other_san), &token).await,
        Some(500)
    );
    assert_eq!(
        https_status(&setup, http, Some(&foreign), &token).await,
        None,
        "unknown CA must fail the handshake"
    );
    let _ = std::fs::remove_dir_all(&setup.dir);
}

/// A TLS client (no certificate) that trusts `ca_pem` and offers `alpn`.
fn tls_connector(ca_pem: &str, alpn: &[u8]) -> tokio_rustls::TlsConnector {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("ca pem")).expect("root");
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// The meter reads frames inside TLS: an answer nobody reads closes its
/// connection there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_nobody_reads_close_tls_connections_too() {
    let ca = ca();
    let setup = setup_with(&ca, &[("PATD_SEND_TIMEOUT", "4s")]).await;
    let addr = setup.patd.grpc_addr;
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    let tls = tls_connector(&setup.ca_pem, b"h2")
        .connect(name, tcp)
        .await
        .expect("handshake");
    let authority = format!("localhost:{}", addr.port());
    let (began, driver) =
        crate::stalls::zero_window_calls_over(tls, &authority, crate::stalls::health_check(), 10)
            .await;
    assert!(
        began.iter().all(|b| *b == crate::stalls::Began::Held),
        "{began:?}"
    );
    tokio::time::timeout(std::time::Duration::from_secs(20), driver)
        .await
        .expect("the stalled TLS connection was closed")
        .expect("driver");
    let _ = std::fs::remove_dir_all(&setup.dir);
}

/// The leaf certificate (DER) the server at `addr` presents, offering
/// `alpn`; `None` if the handshake fails.
async fn served_certificate(addr: SocketAddr, ca_pem: &str, alpn: &[u8]) -> Option<Vec<u8>> {
    let connector = tls_connector(ca_pem, alpn);
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let name = ServerName::try_from("localhost").expect("name");
    let stream = connector.connect(name, tcp).await.ok()?;
    let leaf = stream.get_ref().1.peer_certificates()?.first()?;
    Some(leaf.as_ref().to_vec())
}

fn der_of(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .expect("pem")
        .as_ref()
        .to_vec()
}

fn sighup(patd: &Patd) {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &patd.pid().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

/// Waits until both listeners present `expected`.
async fn both_listeners_serve(setup: &Setup, expected: &[u8]) -> bool {
    crate::helpers::eventually(std::time::Duration::from_secs(10), || async {
        let grpc = served_certificate(setup.patd.grpc_addr, &setup.ca_pem, b"h2").await;
        let http = served_certificate(setup.patd.http_addr, &setup.ca_pem, b"http/1.1").await;
        grpc.as_deref() == Some(expected) && http.as_deref() == Some(expected)
    })
    .await
}

#[tokio::test]
async fn sighup_reloads_certificates_and_callers_and_keeps_the_old_ones_if_the_new_are_bad() {
    let ca = ca();
    let mut setup = setup(&ca).await;
    let original = std::fs::read_to_string(setup.dir.join("server.pem")).unwrap();
    assert!(both_listeners_serve(&setup, &der_of(&original)).await);

    // A renewed certificate: served on both listeners, no restart.
    let (renewed, renewed_key) = leaf(&ca, &["localhost"], None);
    std::fs::write(setup.dir.join("server.key"), &renewed_key).unwrap();
    std::fs::write(setup.dir.join("server.pem"), &renewed).unwrap();
    sighup(&setup.patd);
    assert!(
        both_listeners_serve(&setup, &der_of(&renewed)).await,
        "the renewed certificate is served; logs:\n{}",
        setup.patd.logs()
    );

    // A broken one: the renewed certificate stays.
    std::fs::write(setup.dir.join("server.pem"), "not a certificate").unwrap();
    sighup(&setup.patd);
    let kept = crate::helpers::eventually(std::time::Duration::from_secs(10), || async {
        setup.patd.logs().contains("TLS files not reloaded")
    })
    .await;
    assert!(kept, "logs:\n{}", setup.patd.logs());
    assert!(both_listeners_serve(&setup, &der_of(&renewed)).await);

    // Callers: the certificate caller is replaced by a key caller.
    let good = leaf(&ca, &[], Some(SAN));
    let (key, entry) = patd::auth::new_caller_key("console", &[patd::auth::Role::Manage]);
    std::fs::write(setup.dir.join("callers.toml"), &entry).unwrap();
    sighup(&setup.patd);
    let reloaded = crate::helpers::eventually(std::time::Duration::from_secs(10), || async {
        setup.patd.logs().contains("callers reloaded")
    })
    .await;
    assert!(reloaded, "logs:\n{}", setup.patd.logs());
    let mut by_certificate = grpc(&setup, Some(&good)).await.expect("connects");
    let refused = by_certificate
        .issue(issue_request("acct", 60))
        .await
        .expect_err("the certificate caller is gone");
    assert_eq!(refused.code(), Code::Unauthenticated);
    let mut by_key = grpc(&setup, None).await.expect("connects").as_caller(&key);
    by_key
        .issue(issue_request("acct", 60))
        .await
        .expect("the new key caller may issue");

    // A broken callers file: the console stays.
    std::fs::write(setup.dir.join("callers.toml"), "[[caller]]\nname = \"\"\n").unwrap();
    sighup(&setup.patd);
    let kept = crate::helpers::eventually(std::time::Duration::from_secs(10), || async {
        setup.patd.logs().contains("callers file not reloaded")
    })
    .await;
    assert!(kept, "logs:\n{}", setup.patd.logs());
    by_key
        .issue(issue_request("acct", 60))
        .await
        .expect("the console still may issue");

    assert!(setup.patd.is_running(), "SIGHUP must not end patd");
    let logs = setup.patd.logs();
    assert!(logs.contains("console") && logs.contains("mesh-gateway"));
    assert!(!logs.contains(&key), "a caller key reached the log");
    assert!(
        !logs.contains(renewed_key.trim()),
        "key material in the log"
    );
    let _ = std::fs::remove_dir_all(&setup.dir);
}

/// The civil date (year, month, day) `days` from today, UTC.
fn date_in_days(days: i64) -> (i32, u8, u8) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64;
    // Days since 1970-01-01 to a civil date (proleptic Gregorian).
    let z = now / 86_400 + days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as i32;
    (year, month, day)
}

/// Starts patd with a server certificate valid until `days` from today;
/// returns its log after start.
async fn logs_with_certificate_expiring_in(days: i64) -> String {
    let ca = ca();
    let dir = std::env::temp_dir().join(random_name("patd-expiry-"));
    std::fs::create_dir_all(&dir).expect("dir");
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    let (y, m, d) = date_in_days(days);
    params.not_after = rcgen::date_time_ymd(y, m, d);
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &ca.issuer).expect("sign");
    std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
    let path = |f: &str| dir.join(f).to_string_lossy().into_owned();
    let patd = Patd::spawn(
        PatdOptions::new(Backend::Memory)
            .env("PATD_TLS_CERT", &path("server.pem"))
            .env("PATD_TLS_KEY", &path("server.key")),
    )
    .await;
    crate::helpers::eventually(std::time::Duration::from_secs(3), || async {
        patd.logs().contains("certificate")
    })
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    patd.logs()
}

#[tokio::test]
async fn a_certificate_close_to_expiry_is_warned_about() {
    let soon = logs_with_certificate_expiring_in(3).await;
    assert!(soon.contains("the TLS certificate expires soon"), "{soon}");
    let expired = logs_with_certificate_expiring_in(-2).await;
    assert!(expired.contains("has EXPIRED"), "{expired}");
    let later = logs_with_certificate_expiring_in(90).await;
    assert!(
        !later.contains("expires soon") && !later.contains("EXPIRED"),
        "{later}"
    );
}
