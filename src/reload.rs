//! Reloading what can change while patd runs: the callers file and the TLS
//! certificate, key and client CA. On SIGHUP (see `main`) and whenever the
//! files' contents change (checked every few seconds, so a Kubernetes
//! Secret or ConfigMap update applies by itself), each is read again and
//! swapped in whole; a new file that does not load leaves the old set in
//! force and says why. The log names callers, never keys, and gives the new
//! certificate's expiry; a certificate close to expiry is warned about.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use tokio_util::sync::CancellationToken;

use crate::auth::{Callers, LiveCallers};
use crate::domain::{UnixMillis, format_duration};
use crate::telemetry::error_chain;
use crate::tls::TlsConfig;

/// How often the files' contents are compared with what is in force.
const CHECK_EVERY: Duration = Duration::from_secs(5);
/// A certificate expiring within this is warned about.
const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 86_400);
/// How often the expiry warning is repeated.
const EXPIRY_WARNING_EVERY: Duration = Duration::from_secs(3600);

/// What can be reloaded, and where it comes from. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Reloader {
    callers_file: Option<PathBuf>,
    callers: LiveCallers,
    tls: Option<Arc<TlsConfig>>,
}

impl Reloader {
    pub fn new(
        callers_file: Option<PathBuf>,
        callers: LiveCallers,
        tls: Option<Arc<TlsConfig>>,
    ) -> Self {
        Self {
            callers_file,
            callers,
            tls,
        }
    }

    /// Reads everything again and swaps in what loads (SIGHUP).
    pub fn reload(&self) {
        tracing::info!("reloading the callers file and TLS files");
        self.reload_callers();
        self.reload_tls();
    }

    fn reload_callers(&self) {
        let Some(path) = &self.callers_file else {
            return;
        };
        let new = match Callers::load(path) {
            Ok(new) => new,
            Err(e) => {
                tracing::error!(
                    error = %error_chain(&e),
                    "callers file not reloaded; the previous callers stay in force"
                );
                return;
            }
        };
        let has_client_ca = self
            .tls
            .as_ref()
            .is_some_and(|tls| tls.files().client_ca.is_some());
        if new.uses_certificates() && !has_client_ca {
            tracing::error!(
                "callers file not reloaded: it names cert_san callers, but PATD_TLS_CLIENT_CA \
                 is not set; the previous callers stay in force"
            );
            return;
        }
        let old = self.callers.load();
        let (old_names, new_names) = (old.names(), new.names());
        let added: Vec<&str> = new_names
            .iter()
            .filter(|n| !old_names.contains(n))
            .copied()
            .collect();
        let removed: Vec<&str> = old_names
            .iter()
            .filter(|n| !new_names.contains(n))
            .copied()
            .collect();
        tracing::info!(
            callers = ?new_names,
            added = ?added,
            removed = ?removed,
            "callers reloaded"
        );
        self.callers.store(Arc::new(new));
    }

    fn reload_tls(&self) {
        let Some(tls) = &self.tls else {
            return;
        };
        match tls.reload() {
            Ok(facts) => {
                tracing::info!(
                    not_after = facts.not_after,
                    expires_in = %expires_in(facts.not_after),
                    "TLS certificate reloaded"
                );
                warn_if_expiring(tls);
            }
            Err(e) => tracing::error!(
                error = %error_chain(&e),
                "TLS files not reloaded; the previous certificate stays in use"
            ),
        }
    }

    /// Until `stop`: reloads what changed on disk, and warns ahead of the
    /// certificate's expiry.
    pub async fn watch(self, stop: CancellationToken) {
        if let Some(tls) = &self.tls {
            warn_if_expiring(tls);
        }
        let mut callers_seen = self.callers_file.as_deref().map(fingerprint);
        let mut tls_seen = self.tls.as_ref().map(|t| tls_fingerprint(t));
        let mut tick = tokio::time::interval(CHECK_EVERY);
        let mut last_warning = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let callers_now = self.callers_file.as_deref().map(fingerprint);
            if callers_now != callers_seen {
                tracing::info!("callers file changed on disk");
                self.reload_callers();
                callers_seen = callers_now;
            }
            let tls_now = self.tls.as_ref().map(|t| tls_fingerprint(t));
            if tls_now != tls_seen {
                tracing::info!("TLS files changed on disk");
                self.reload_tls();
                tls_seen = tls_now;
            }
            if last_warning.elapsed() >= EXPIRY_WARNING_EVERY {
                if let Some(tls) = &self.tls {
                    warn_if_expiring(tls);
                }
                last_warning = tokio::time::Instant::now();
            }
        }
    }
}

/// A digest of a file's contents (`None` if unreadable): compared, never
/// logged.
fn fingerprint(path: &Path) -> Option<[u8; 32]> {
    std::fs::read(path)
        .ok()
        .map(|bytes| Sha256::digest(bytes).into())
}

fn tls_fingerprint(tls: &TlsConfig) -> Vec<Option<[u8; 32]>> {
    let files = tls.files();
    [
        Some(&files.cert),
        Some(&files.key),
        files.client_ca.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|p| fingerprint(p))
    .collect()
}

/// How long until `not_after` (Unix seconds), as operators write it.
fn expires_in(not_after: i64) -> String {
    let now = i64::try_from(UnixMillis::now().0 / 1000).unwrap_or(i64::MAX);
    match u64::try_from(not_after.saturating_sub(now)) {
        Ok(left) if left > 0 => format_duration(Duration::from_secs(left)),
        _ => "expired".to_owned(),
    }
}

fn warn_if_expiring(tls: &TlsConfig) {
    let not_after = tls.facts().not_after;
    let now = i64::try_from(UnixMillis::now().0 / 1000).unwrap_or(i64::MAX);
    let left = not_after.saturating_sub(now);
    if left <= 0 {
        tracing::error!(not_after, "the TLS certificate has EXPIRED: renew it");
    } else if u64::try_from(left).is_ok_and(|l| l < EXPIRY_WARNING.as_secs()) {
        tracing::warn!(
            not_after,
            expires_in = %expires_in(not_after),
            "the TLS certificate expires soon: renew it (patd reloads it by itself)"
        );
    }
}
