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
use crate::http_helpers::get_over;

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
    let patd = Patd::spawn(
        PatdOptions::new(Backend::Memory)
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
    let bearer = format!("Bearer {token}");
    let reply = get_over(
        stream,
        "localhost",
        "/v1/forward-auth",
        &[("Authorization", &bearer)],
    )
    .await;
    (reply.status != 0).then_some(reply.status)
}

#[tokio::test]
async fn a_client_certificate_with_a_known_san_is_a_caller() {
    let ca = ca();
    let setup = setup(&ca).await;
    let good = leaf(&ca, &[], Some(SAN));
    let other_san = leaf(&ca, &[], Some("spiffe://patd.test/intruder"));
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
