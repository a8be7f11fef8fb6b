//! TLS for both listeners: the server identity, an optional client CA for
//! mutual TLS, and the client-certificate SANs that caller authentication
//! matches against `cert_san` entries. Client certificates are optional at
//! the TLS layer (key-based callers keep working); a certificate that is
//! presented must chain to the client CA.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use arc_swap::ArcSwap;

use thiserror::Error;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use x509_parser::extensions::GeneralName;

use crate::auth::San;

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

/// The rustls configurations both listeners serve with, and facts about
/// the certificate for the log.
struct Loaded {
    grpc: Arc<ServerConfig>,
    http: Arc<ServerConfig>,
    not_after: i64,
}

/// What the served certificate is, for the log (no key material).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertificateFacts {
    /// The leaf certificate's notAfter, in Unix seconds.
    pub not_after: i64,
}

/// TLS for both listeners, reloadable: [`TlsConfig::reload`] reads the
/// files again and new handshakes use the new certificate, key and client
/// CA; connections already open keep theirs. A new set that does not load
/// (unreadable, not PEM, a key that does not match) leaves the old one in
/// place.
pub struct TlsConfig {
    files: TlsFiles,
    grpc: ArcSwap<ServerConfig>,
    http: ArcSwap<ServerConfig>,
    not_after: AtomicI64,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Paths only: the configurations hold a private key.
        f.debug_struct("TlsConfig")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl TlsConfig {
    /// Reads and checks the files.
    ///
    /// # Errors
    /// A file cannot be read, holds no usable PEM, or rustls refuses the
    /// pair.
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let loaded = build(&files)?;
        Ok(Self {
            files,
            grpc: ArcSwap::new(loaded.grpc),
            http: ArcSwap::new(loaded.http),
            not_after: AtomicI64::new(loaded.not_after),
        })
    }

    /// Reads the files again; on success new handshakes use them.
    ///
    /// # Errors
    /// As [`TlsConfig::load`]; the configuration in use is kept.
    pub fn reload(&self) -> Result<CertificateFacts, TlsError> {
        let loaded = build(&self.files)?;
        self.grpc.store(loaded.grpc);
        self.http.store(loaded.http);
        self.not_after.store(loaded.not_after, Ordering::Relaxed);
        Ok(self.facts())
    }

    /// Facts about the certificate in use.
    pub fn facts(&self) -> CertificateFacts {
        CertificateFacts {
            not_after: self.not_after.load(Ordering::Relaxed),
        }
    }

    /// The files this configuration is read from.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// An acceptor for the gRPC listener (ALPN `h2`), current at the call.
    pub fn grpc_acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.grpc.load_full())
    }

    /// An acceptor for the HTTP listener (ALPN `h2`, `http/1.1`), current
    /// at the call.
    pub fn http_acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.http.load_full())
    }
}

/// Both listeners' configurations from the files.
fn build(files: &TlsFiles) -> Result<Loaded, TlsError> {
    let pem = |path: &Path, what| TlsError::Pem {
        path: path.display().to_string(),
        what,
    };
    let cert_pem = read(&files.cert)?;
    let key_pem = read(&files.key)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|_| pem(&files.cert, "certificate"))?;
    let Some(leaf) = certs.first() else {
        return Err(pem(&files.cert, "certificate"));
    };
    let not_after = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|_| pem(&files.cert, "certificate"))?
        .1
        .validity()
        .not_after
        .timestamp();
    let key =
        PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| pem(&files.key, "private key"))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let builder = match &files.client_ca {
        Some(ca_path) => {
            let ca_pem = read(ca_path)?;
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&ca_pem) {
                let cert = cert.map_err(|_| pem(ca_path, "CA certificate"))?;
                roots
                    .add(cert)
                    .map_err(|e| TlsError::Rustls(e.to_string()))?;
            }
            // Client certificates are optional at the TLS layer: key-based
            // callers keep working; a presented certificate must chain to
            // the CA.
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError::Rustls(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut grpc = builder
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let mut http = grpc.clone();
    grpc.alpn_protocols = vec![b"h2".to_vec()];
    http.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Loaded {
        grpc: Arc::new(grpc),
        http: Arc::new(http),
        not_after,
    })
}

/// Client-certificate SANs of the connection a request came on.
#[derive(Debug, Clone, Default)]
pub struct PeerSans(pub Vec<San>);

/// DNS and URI subject alternative names, typed, of a verified client
/// certificate chain's leaf.
pub fn client_sans(chain: &[CertificateDer<'_>]) -> Vec<San> {
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
            GeneralName::DNSName(dns) => Some(San::Dns((*dns).to_owned())),
            GeneralName::URI(uri) => Some(San::Uri((*uri).to_owned())),
            _ => None,
        })
        .collect()
}
