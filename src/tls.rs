//! TLS for both listeners: the server identity, an optional client CA for
//! mutual TLS, and the client-certificate SANs that caller authentication
//! matches against `cert_san` entries. Client certificates are optional at
//! the TLS layer (key-based callers keep working); a certificate that is
//! presented must chain to the client CA.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use x509_parser::extensions::GeneralName;

/// Paths from `PATD_TLS_CERT`, `PATD_TLS_KEY`, `PATD_TLS_CLIENT_CA`.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

/// Why TLS could not be set up. Names the file, never key material.
#[derive(Debug, Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: no usable PEM {what}")]
    Pem { path: String, what: &'static str },
    #[error("TLS configuration: {0}")]
    Rustls(String),
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// The PEM texts, read once at start.
#[derive(Clone)]
pub struct TlsMaterial {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    pub client_ca_pem: Option<Vec<u8>>,
}

impl TlsMaterial {
    /// # Errors
    /// A file cannot be read.
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        Ok(Self {
            cert_pem: read(&files.cert)?,
            key_pem: read(&files.key)?,
            client_ca_pem: files.client_ca.as_deref().map(read).transpose()?,
        })
    }

    /// The tonic configuration for the gRPC listener; a client must finish
    /// its handshake within `handshake_timeout`.
    pub fn grpc(&self, handshake_timeout: Duration) -> tonic::transport::ServerTlsConfig {
        let identity = tonic::transport::Identity::from_pem(&self.cert_pem, &self.key_pem);
        // A client that never finishes its handshake must not hold a
        // connection forever.
        let config = tonic::transport::ServerTlsConfig::new()
            .identity(identity)
            .timeout(handshake_timeout);
        match &self.client_ca_pem {
            Some(ca) => config
                .client_ca_root(tonic::transport::Certificate::from_pem(ca))
                .client_auth_optional(true),
            None => config,
        }
    }

    /// The acceptor for the HTTP listener (HTTP/2 and HTTP/1.1 by ALPN).
    ///
    /// # Errors
    /// Unparseable certificates or key, or a configuration rustls refuses.
    pub fn http_acceptor(&self, files: &TlsFiles) -> Result<TlsAcceptor, TlsError> {
        let pem = |path: &Path, what| TlsError::Pem {
            path: path.display().to_string(),
            what,
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&self.cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|_| pem(&files.cert, "certificate"))?;
        if certs.is_empty() {
            return Err(pem(&files.cert, "certificate"));
        }
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem)
            .map_err(|_| pem(&files.key, "private key"))?;
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Rustls(e.to_string()))?;
        let builder = match (&self.client_ca_pem, &files.client_ca) {
            (Some(ca_pem), Some(ca_path)) => {
                let mut roots = RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(ca_pem) {
                    let cert = cert.map_err(|_| pem(ca_path, "CA certificate"))?;
                    roots
                        .add(cert)
                        .map_err(|e| TlsError::Rustls(e.to_string()))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .allow_unauthenticated()
                        .build()
                        .map_err(|e| TlsError::Rustls(e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
            _ => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(certs, key)
            .map_err(|e| TlsError::Rustls(e.to_string()))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

/// Client-certificate SANs of the connection a request came on.
#[derive(Debug, Clone, Default)]
pub struct PeerSans(pub Vec<String>);

/// DNS and URI subject alternative names of a verified client certificate
/// chain's leaf.
pub fn client_sans(chain: &[CertificateDer<'_>]) -> Vec<String> {
    let Some(leaf) = chain.first() else {
        return Vec::new();
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf.as_ref()) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some((*dns).to_owned()),
            GeneralName::URI(uri) => Some((*uri).to_owned()),
            _ => None,
        })
        .collect()
}
