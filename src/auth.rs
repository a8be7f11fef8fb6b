//! Caller authentication: who may call which RPC. Callers come from a TOML
//! file holding only SHA-256 digests of their keys (or a client-certificate
//! SAN); each has roles: `introspect` (Introspect, ext_authz Check, HTTP
//! forward-auth) and `manage` (Issue, List, Revoke, RevokeAll,
//! ListAuditEvents). Health and
//! reflection stay open (which gRPC method needs which role is decided in
//! `grpc::guard`). Without a callers file everything is open, which patd
//! only allows on loopback (see `settings`).

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;

use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;
use thiserror::Error;

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Check tokens: Introspect, ext_authz Check, HTTP forward-auth.
    Introspect,
    /// Manage tokens: Issue, List, Revoke, RevokeAll, ListAuditEvents.
    Manage,
}

impl Role {
    /// Every role, in the order `--help` lists them.
    pub const ALL: [Role; 2] = [Role::Introspect, Role::Manage];

    /// The role's name in callers files and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Introspect => "introspect",
            Role::Manage => "manage",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    /// # Errors
    /// Not a role name; the message lists the valid ones.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| "expected one of: introspect, manage".to_owned())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CallersFile {
    #[serde(default)]
    caller: Vec<CallerEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CallerEntry {
    name: String,
    roles: Vec<Role>,
    key_sha256: Option<String>,
    cert_san: Option<String>,
}

/// The name of the caller a request came from, as a request extension
/// (set by the caller gate; absent without caller authentication). Logs
/// name it; never a key.
#[derive(Debug, Clone)]
pub struct CallerName(pub Arc<str>);

/// The callers in force, replaced whole on a reload (SIGHUP) without a
/// lock on the request path: a request sees the old set or the new one,
/// never a mix.
pub type LiveCallers = Arc<ArcSwap<Callers>>;

/// How the log names a request made without caller authentication (patd
/// on loopback, or `PATD_ALLOW_UNAUTHENTICATED`).
pub const ANONYMOUS: &str = "anonymous";

/// A subject alternative name of a client certificate, with its type
/// (RFC 5280 §4.2.1.6). A caller's `cert_san` matches a DNS name only
/// against DNS SANs, case-insensitively (RFC 6125 §6.4.1), and a URI only
/// against URI SANs, exactly: a certificate whose DNS SAN reads
/// `spiffe://…` is not the caller with that URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum San {
    Dns(String),
    Uri(String),
}

impl San {
    /// The type of a `cert_san` entry from its shape: with a scheme
    /// (`spiffe://…`, `urn:…`) a URI, else a DNS name (which holds no `:`).
    pub fn from_entry(text: &str) -> Self {
        let text = text.trim();
        if text.contains(':') {
            San::Uri(text.to_owned())
        } else {
            San::Dns(text.to_owned())
        }
    }

    /// Whether a presented SAN is this one.
    fn matches(&self, presented: &San) -> bool {
        match (self, presented) {
            (San::Dns(want), San::Dns(have)) => want.eq_ignore_ascii_case(have),
            (San::Uri(want), San::Uri(have)) => want == have,
            _ => false,
        }
    }
}

/// One configured caller.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Shown in logs; shared, so naming a request's caller costs no copy.
    pub name: Arc<str>,
    roles: Vec<Role>,
    key_digest: Option<[u8; 32]>,
    cert_san: Option<San>,
}

impl Caller {
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

/// Why the callers file is unusable. Names the entry, never a key.
#[derive(Debug, Error)]
pub enum CallersError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: caller {index}: {reason}")]
    Entry {
        path: String,
        index: usize,
        reason: &'static str,
    },
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum Refusal {
    /// No credential, or one that matches no caller. Says nothing more.
    #[error("caller authentication required")]
    Unauthenticated,
    /// A known caller without the role.
    #[error("caller lacks the {} role", .0.as_str())]
    PermissionDenied(Role),
}

/// The configured callers; empty means "no caller authentication".
#[derive(Debug, Clone, Default)]
pub struct Callers {
    callers: Vec<Caller>,
}

impl Callers {
    /// Loads and checks a callers file.
    ///
    /// # Errors
    /// Unreadable, not TOML, or an entry without a name, a role, or exactly
    /// one of `key_sha256` / `cert_san`.
    pub fn load(path: &Path) -> Result<Self, CallersError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| CallersError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text, &shown)
    }

    /// # Errors
    /// As [`Callers::load`].
    pub fn parse(text: &str, path: &str) -> Result<Self, CallersError> {
        let file: CallersFile = toml::from_str(text).map_err(|e| CallersError::Parse {
            path: path.to_owned(),
            message: e.message().to_owned(),
        })?;
        let mut callers = Vec::with_capacity(file.caller.len());
        for (i, entry) in file.caller.into_iter().enumerate() {
            let bad = |reason| CallersError::Entry {
                path: path.to_owned(),
                index: i + 1,
                reason,
            };
            if entry.name.trim().is_empty() {
                return Err(bad("name must not be empty"));
            }
            if entry.roles.is_empty() {
                return Err(bad("roles must list introspect and/or manage"));
            }
            let key_digest = match &entry.key_sha256 {
                Some(hex_digest) => {
                    let mut d = [0u8; 32];
                    hex::decode_to_slice(hex_digest.trim(), &mut d)
                        .map_err(|_| bad("key_sha256 must be 64 hex characters"))?;
                    Some(d)
                }
                None => None,
            };
            let cert_san = entry
                .cert_san
                .filter(|s| !s.trim().is_empty())
                .map(|s| San::from_entry(&s));
            if key_digest.is_some() == cert_san.is_some() {
                return Err(bad("give exactly one of key_sha256 or cert_san"));
            }
            // Two entries for one credential (or one name) would make the
            // first silently win: an operator meant something else.
            let clash = callers.iter().any(|c: &Caller| {
                &*c.name == entry.name.as_str()
                    || (key_digest.is_some() && c.key_digest == key_digest)
                    || (cert_san.is_some() && c.cert_san == cert_san)
            });
            if clash {
                return Err(bad(
                    "repeats the name, key_sha256 or cert_san of an earlier caller",
                ));
            }
            callers.push(Caller {
                name: entry.name.into(),
                roles: entry.roles,
                key_digest,
                cert_san,
            });
        }
        if callers.is_empty() {
            return Err(CallersError::Entry {
                path: path.to_owned(),
                index: 0,
                reason: "no [[caller]] entries",
            });
        }
        Ok(Self { callers })
    }

    pub fn is_enabled(&self) -> bool {
        !self.callers.is_empty()
    }

    /// The callers' names, for the log (never keys).
    pub fn names(&self) -> Vec<&str> {
        self.callers.iter().map(|c| &*c.name).collect()
    }

    /// Whether some caller is identified by a client certificate.
    pub fn uses_certificates(&self) -> bool {
        self.callers.iter().any(|c| c.cert_san.is_some())
    }

    /// Decides whether a request presenting `key` (and/or a client
    /// certificate with `sans`) may act in `role`. Every key digest is
    /// compared, in constant time, so timing tells nothing about which
    /// caller (if any) almost matched.
    ///
    /// # Errors
    /// The [`Refusal`] to send.
    pub fn authorize(
        &self,
        key: Option<&str>,
        sans: &[San],
        role: Role,
    ) -> Result<&Caller, Refusal> {
        if !self.is_enabled() {
            return Err(Refusal::Unauthenticated);
        }
        let mut found: Option<&Caller> = None;
        if let Some(key) = key {
            let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
            for caller in &self.callers {
                let matched = caller
                    .key_digest
                    .as_ref()
                    .is_some_and(|known| bool::from(known.ct_eq(&digest)));
                if matched && found.is_none() {
                    found = Some(caller);
                }
            }
        }
        if found.is_none() {
            found = self.callers.iter().find(|c| {
                c.cert_san
                    .as_ref()
                    .is_some_and(|want| sans.iter().any(|have| want.matches(have)))
            });
        }
        let caller = found.ok_or(Refusal::Unauthenticated)?;
        if caller.has(role) {
            Ok(caller)
        } else {
            Err(Refusal::PermissionDenied(role))
        }
    }
}

/// A fresh caller key and the callers-file entry that admits it.
pub fn new_caller_key(name: &str, roles: &[Role]) -> (String, String) {
    let mut key = String::from("patdck_");
    crate::token::push_random_base62(&mut key, 43);
    let digest = hex::encode(Sha256::digest(key.as_bytes()));
    let roles: Vec<String> = roles
        .iter()
        .map(|r| format!("\"{}\"", r.as_str()))
        .collect();
    let entry = format!(
        "[[caller]]\nname = {name:?}\nroles = [{}]\nkey_sha256 = \"{digest}\"\n",
        roles.join(", ")
    );
    (key, entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn callers() -> (Callers, String, String) {
        let (console_key, console) = new_caller_key("console", &[Role::Manage]);
        let (gateway_key, gateway) = new_caller_key("gateway", &[Role::Introspect]);
        let mtls = "[[caller]]\nname = \"mesh\"\nroles = [\"introspect\", \"manage\"]\ncert_san = \"spiffe://acme/patd-client\"\n";
        let text = format!("{console}\n{gateway}\n{mtls}");
        (
            Callers::parse(&text, "callers.toml").unwrap(),
            console_key,
            gateway_key,
        )
    }

    #[test]
    fn each_role_reaches_exactly_its_rpcs() {
        let (c, console, gateway) = callers();
        assert_eq!(
            &*c.authorize(Some(&console), &[], Role::Manage).unwrap().name,
            "console"
        );
        assert_eq!(
            c.authorize(Some(&console), &[], Role::Introspect)
                .unwrap_err(),
            Refusal::PermissionDenied(Role::Introspect)
        );
        assert_eq!(
            &*c.authorize(Some(&gateway), &[], Role::Introspect)
                .unwrap()
                .name,
            "gateway"
        );
        assert_eq!(
            c.authorize(Some(&gateway), &[], Role::Manage).unwrap_err(),
            Refusal::PermissionDenied(Role::Manage)
        );
    }

    #[test]
    fn unknown_or_missing_credentials_are_unauthenticated() {
        let (c, console, _) = callers();
        assert_eq!(
            c.authorize(None, &[], Role::Manage).unwrap_err(),
            Refusal::Unauthenticated
        );
        let wrong = format!("{console}x");
        assert_eq!(
            c.authorize(Some(&wrong), &[], Role::Manage).unwrap_err(),
            Refusal::Unauthenticated
        );
        let other_san = [San::Uri("spiffe://acme/other".to_owned())];
        assert_eq!(
            c.authorize(None, &other_san, Role::Manage).unwrap_err(),
            Refusal::Unauthenticated
        );
    }

    #[test]
    fn a_client_certificate_san_identifies_a_caller() {
        let (c, _, _) = callers();
        let sans = [
            San::Dns("dns.example".to_owned()),
            San::Uri("spiffe://acme/patd-client".to_owned()),
        ];
        assert_eq!(
            &*c.authorize(None, &sans, Role::Manage).unwrap().name,
            "mesh"
        );
    }

    #[test]
    fn two_entries_for_one_name_or_credential_are_refused() {
        let (_, a) = new_caller_key("a", &[Role::Manage]);
        let (_, b) = new_caller_key("b", &[Role::Introspect]);
        assert!(Callers::parse(&format!("{a}\n{b}"), "f").is_ok());
        let same_key = a.replace("name = \"a\"", "name = \"a2\"");
        assert!(Callers::parse(&format!("{a}\n{same_key}"), "f").is_err());
        let same_name = b.replace("name = \"b\"", "name = \"a\"");
        assert!(Callers::parse(&format!("{a}\n{same_name}"), "f").is_err());
        let san = |name: &str| {
            format!(
                "[[caller]]\nname = \"{name}\"\nroles = [\"manage\"]\ncert_san = \"spiffe://x\"\n"
            )
        };
        assert!(Callers::parse(&format!("{}\n{}", san("m1"), san("m2")), "f").is_err());
    }

    #[test]
    fn a_san_matches_only_a_san_of_its_type() {
        let text = "[[caller]]\nname = \"uri\"\nroles = [\"manage\"]\ncert_san = \"spiffe://acme/gw\"\n\
                    [[caller]]\nname = \"dns\"\nroles = [\"manage\"]\ncert_san = \"gw.acme.test\"\n";
        let c = Callers::parse(text, "f").unwrap();
        let who = |san: San| {
            c.authorize(None, &[san], Role::Manage)
                .map(|c| c.name.to_string())
        };
        assert_eq!(who(San::Uri("spiffe://acme/gw".into())).unwrap(), "uri");
        assert!(who(San::Dns("spiffe://acme/gw".into())).is_err());
        assert!(who(San::Uri("spiffe://ACME/gw".into())).is_err());
        assert_eq!(who(San::Dns("GW.Acme.Test".into())).unwrap(), "dns");
        assert!(who(San::Uri("gw.acme.test".into())).is_err());
    }

    #[test]
    fn malformed_callers_files_are_refused_without_echoing_keys() {
        let bad = [
            "[[caller]]\nname = \"\"\nroles = [\"manage\"]\nkey_sha256 = \"00\"\n",
            "[[caller]]\nname = \"x\"\nroles = []\nkey_sha256 = \"00\"\n",
            "[[caller]]\nname = \"x\"\nroles = [\"admin\"]\nkey_sha256 = \"00\"\n",
            "[[caller]]\nname = \"x\"\nroles = [\"manage\"]\nkey_sha256 = \"abc\"\n",
            "[[caller]]\nname = \"x\"\nroles = [\"manage\"]\n",
            "",
            "not toml",
        ];
        for text in bad {
            assert!(Callers::parse(text, "f").is_err(), "{text:?}");
        }
    }

    #[test]
    fn caller_keys_are_long_random_and_only_their_digest_is_printed() {
        let (key, entry) = new_caller_key("console", &[Role::Manage, Role::Introspect]);
        assert!(key.starts_with("patdck_") && key.len() == 50);
        assert!(!entry.contains(&key));
        assert!(entry.contains(r#"roles = ["manage", "introspect"]"#));
        let c = Callers::parse(&entry, "f").unwrap();
        assert!(c.authorize(Some(&key), &[], Role::Introspect).is_ok());
    }
}
