//! Token digests at rest: plain SHA-256, or HMAC-SHA256 under one of the
//! `PATD_TOKEN_HASH_KEYS` (a key id stored with each record). Only a digest
//! of a token value is ever stored; comparisons are constant-time.
//!
//! With keys, each record is also sealed: a [`RecordMac`] (HMAC-SHA256
//! under the record's digest key) over every field a decision uses
//! ([`RecordFields`]), so someone who can write the store but holds no key
//! cannot change whose token it is, what it may do or how long it lives.

use std::fmt;

use crate::domain::{AccountId, Scopes, TokenId, UnixMillis};

use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;
use thiserror::Error;

/// SHA-256 of a token value: what the store keeps instead of the token.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenDigest([u8; 32]);

impl TokenDigest {
    /// Digest of a token value.
    pub fn of(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }

    /// Lowercase hex, the form kept in the store.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Reads the stored hex form; `None` for anything else.
    pub fn from_hex(hex_digest: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_digest, &mut out).ok()?;
        Some(Self(out))
    }

    /// Constant-time comparison, so timing never tells how much matched.
    pub fn matches(&self, other: &TokenDigest) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenDigest(..)")
    }
}

/// Domain separation for record MACs: a token digest is an HMAC over a
/// token value, which never contains a NUL byte (the format is
/// `[a-z0-9]+_[0-9A-Za-z]+`), so no value hashes to the same input as a
/// record.
const RECORD_MAC_DOMAIN: &[u8] = b"patd-record-v1\0";

/// The fields of a token record that decide anything: whose it is
/// (token id, account), what it may do (scopes), which key verifies it
/// (key id) and its digest, and how long it lives (created, expires,
/// Unix ms on the store's clock). Not the note (shown, never decided on),
/// not the last use, not the rotation mark (which only ever shortens a
/// token's life).
#[derive(Debug, Clone, Copy)]
pub struct RecordFields<'a> {
    pub token_id: &'a TokenId,
    pub account_id: &'a AccountId,
    pub scopes: &'a Scopes,
    /// The record's key id; `""` for none.
    pub key_id: &'a str,
    pub created_at: UnixMillis,
    pub expires_at: UnixMillis,
    pub digest: &'a TokenDigest,
}

impl RecordFields<'_> {
    /// The MAC's input: the domain prefix, then every field as a 4-byte
    /// big-endian length and its bytes (scopes in their canonical joined
    /// form, times as 8-byte big-endian Unix ms, the digest as its 32
    /// bytes), so no two different records encode alike whatever their
    /// fields contain.
    fn encode(&self) -> Vec<u8> {
        let scopes = self.scopes.joined();
        let fields: [&[u8]; 7] = [
            self.token_id.as_str().as_bytes(),
            self.account_id.as_str().as_bytes(),
            scopes.as_bytes(),
            self.key_id.as_bytes(),
            &self.created_at.0.to_be_bytes(),
            &self.expires_at.0.to_be_bytes(),
            &self.digest.0,
        ];
        let mut out = Vec::with_capacity(RECORD_MAC_DOMAIN.len() + 256);
        out.extend_from_slice(RECORD_MAC_DOMAIN);
        for field in fields {
            let len = u32::try_from(field.len()).unwrap_or(u32::MAX);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(field);
        }
        out
    }
}

/// A record's seal: HMAC-SHA256 of its [`RecordFields`] under its digest
/// key, stored beside it (hex, field `mac`). Compared in constant time;
/// `Debug` shows nothing.
#[derive(Clone, PartialEq, Eq)]
pub struct RecordMac(Vec<u8>);

impl RecordMac {
    /// Lowercase hex, the form kept in the store.
    pub fn to_hex(&self) -> String {
        hex::encode(&self.0)
    }

    /// The stored form as found: anything that is not 32 bytes of hex is
    /// kept as a MAC that never verifies (a damaged seal is a wrong one,
    /// not a missing one).
    pub fn from_stored(stored: &str) -> Self {
        let mut out = [0u8; 32];
        match hex::decode_to_slice(stored, &mut out) {
            Ok(()) => Self(out.to_vec()),
            Err(_) => Self(Vec::new()),
        }
    }
}

impl fmt::Debug for RecordMac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RecordMac(..)")
    }
}

/// Id of a digest key, stored beside each keyed digest so verification
/// knows which key made it.
pub type KeyId = String;

/// The digests that can still verify, named by key id: a record whose key
/// id is not among them can never verify again, so it is not a live token
/// (it is not listed, does not count toward the account's limit and is not
/// counted by RevokeAll). Without keys only records without a key id are
/// live; with keys only records carrying one of the configured ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveKeys(Vec<String>);

impl LiveKeys {
    /// Whether a record made with `key_id` (`None`: plain SHA-256) can
    /// verify.
    pub fn admits(&self, key_id: Option<&str>) -> bool {
        let kid = key_id.unwrap_or_default();
        self.0.iter().any(|live| live == kid)
    }

    /// As the Redis scripts take them: key ids, `""` standing for plain
    /// SHA-256 (a key id is never empty).
    pub fn as_args(&self) -> &[String] {
        &self.0
    }
}

/// Why `PATD_TOKEN_HASH_KEYS` is unusable. Never shows key material.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum HashKeyError {
    #[error("entry {0}: expected id:base64key")]
    Shape(usize),
    #[error("entry {0}: key id must be 1..=32 of [A-Za-z0-9_-]")]
    Id(usize),
    #[error("entry {0}: key is not valid base64")]
    Base64(usize),
    #[error("entry {0}: key must be at least 32 bytes")]
    Short(usize),
    #[error("key id {0:?} appears twice")]
    Duplicate(String),
}

/// How token values are turned into the digests kept at rest.
///
/// Without keys: plain SHA-256. With keys: HMAC-SHA256 under the current
/// (first) key, its id stored in the record; verification uses the record's
/// key id, so older keys keep verifying until they are removed, and a record
/// whose key is gone (or that carries no key id) is never accepted. Someone
/// who can write Redis but does not hold a key cannot mint a token.
#[derive(Clone)]
pub enum TokenHasher {
    Plain,
    Keyed(Vec<(KeyId, Vec<u8>)>),
}

impl fmt::Debug for TokenHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenHasher::Plain => f.write_str("TokenHasher::Plain"),
            TokenHasher::Keyed(keys) => {
                let ids: Vec<&str> = keys.iter().map(|(id, _)| id.as_str()).collect();
                write!(f, "TokenHasher::Keyed({ids:?})")
            }
        }
    }
}

impl TokenHasher {
    /// Parses `id:base64key,id:base64key` (first = current); an empty
    /// setting means plain SHA-256.
    ///
    /// # Errors
    /// A malformed entry, a short key or a repeated id.
    pub fn from_setting(setting: &str) -> Result<Self, HashKeyError> {
        use base64::Engine as _;
        let mut keys: Vec<(KeyId, Vec<u8>)> = Vec::new();
        for (i, entry) in setting
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .enumerate()
        {
            let (id, encoded) = entry.split_once(':').ok_or(HashKeyError::Shape(i + 1))?;
            let id_ok = !id.is_empty()
                && id.len() <= 32
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !id_ok {
                return Err(HashKeyError::Id(i + 1));
            }
            let key = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .map_err(|_| HashKeyError::Base64(i + 1))?;
            if key.len() < 32 {
                return Err(HashKeyError::Short(i + 1));
            }
            if keys.iter().any(|(known, _)| known == id) {
                return Err(HashKeyError::Duplicate(id.to_owned()));
            }
            keys.push((id.to_owned(), key));
        }
        Ok(if keys.is_empty() {
            TokenHasher::Plain
        } else {
            TokenHasher::Keyed(keys)
        })
    }

    pub fn is_keyed(&self) -> bool {
        matches!(self, TokenHasher::Keyed(_))
    }

    /// The key ids whose records can verify ([`LiveKeys`]); `verify`
    /// refuses every record this does not admit.
    pub fn live_keys(&self) -> LiveKeys {
        match self {
            TokenHasher::Plain => LiveKeys(vec![String::new()]),
            TokenHasher::Keyed(keys) => LiveKeys(keys.iter().map(|(id, _)| id.clone()).collect()),
        }
    }

    /// The digest (and key id) to store for a new token.
    pub fn for_new(&self, value: &str, plain: &TokenDigest) -> (Option<KeyId>, TokenDigest) {
        match self {
            TokenHasher::Plain => (None, plain.clone()),
            TokenHasher::Keyed(keys) => match keys.first() {
                Some((id, key)) => (Some(id.clone()), hmac(key, value)),
                None => (None, plain.clone()),
            },
        }
    }

    /// The seal of a record made with `fields.key_id`: `None` without
    /// keys (plain SHA-256 has no secret to seal with) or when that key is
    /// not configured.
    pub fn seal(&self, fields: &RecordFields<'_>) -> Option<RecordMac> {
        let TokenHasher::Keyed(keys) = self else {
            return None;
        };
        let (_, key) = keys.iter().find(|(id, _)| id == fields.key_id)?;
        Some(RecordMac(hmac_bytes(key, &fields.encode()).to_vec()))
    }

    /// Whether `mac` seals `fields` under the key the record names
    /// (constant time in the comparison). Never true without keys.
    pub fn verify_seal(&self, fields: &RecordFields<'_>, mac: &RecordMac) -> bool {
        self.seal(fields)
            .is_some_and(|expected| bool::from(expected.0.ct_eq(&mac.0)))
    }

    /// Whether `value` matches a stored digest made with `stored_key`.
    /// Constant time in the digest comparison.
    pub fn verify(
        &self,
        value: &str,
        plain: &TokenDigest,
        stored_key: Option<&str>,
        stored: &TokenDigest,
    ) -> bool {
        match (self, stored_key) {
            (TokenHasher::Plain, None) => plain.matches(stored),
            (TokenHasher::Keyed(keys), Some(kid)) => keys
                .iter()
                .find(|(id, _)| id == kid)
                .is_some_and(|(_, key)| hmac(key, value).matches(stored)),
            // A keyed record without keys, or an unkeyed record once keys
            // are configured: never accepted.
            _ => false,
        }
    }
}

fn hmac(key: &[u8], value: &str) -> TokenDigest {
    TokenDigest(hmac_bytes(key, value.as_bytes()))
}

fn hmac_bytes(key: &[u8], input: &[u8]) -> [u8; 32] {
    use hmac::{Hmac, Mac as _};
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(input);
            mac.finalize().into_bytes().into()
        }
        Err(_) => [0; 32],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::TokenFormat;

    #[test]
    fn digests_round_trip_through_hex_and_compare_by_value() {
        let d = TokenDigest::of("pat_x");
        let back = TokenDigest::from_hex(&d.to_hex()).unwrap();
        assert!(back.matches(&d));
        assert!(!TokenDigest::of("pat_y").matches(&d));
        assert!(TokenDigest::from_hex("zz").is_none());
    }

    fn key(byte: u8) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode([byte; 32])
    }

    #[test]
    fn keyed_digests_differ_from_sha256_and_survive_rotation() {
        let value = "pat_example";
        let plain = TokenDigest::of(value);
        let old = TokenHasher::from_setting(&format!("k1:{}", key(1))).unwrap();
        let (kid, stored) = old.for_new(value, &plain);
        assert_eq!(kid.as_deref(), Some("k1"));
        assert!(!stored.matches(&plain));
        assert!(old.verify(value, &plain, Some("k1"), &stored));
        assert!(!old.verify(
            "pat_other",
            &TokenDigest::of("pat_other"),
            Some("k1"),
            &stored
        ));
        // Rotation: k2 is current, k1 still verifies.
        let rotated = TokenHasher::from_setting(&format!("k2:{},k1:{}", key(2), key(1))).unwrap();
        assert!(rotated.verify(value, &plain, Some("k1"), &stored));
        assert_eq!(rotated.for_new(value, &plain).0.as_deref(), Some("k2"));
        // k1 removed: its records are dead (emergency mass revocation).
        let dropped = TokenHasher::from_setting(&format!("k2:{}", key(2))).unwrap();
        assert!(!dropped.verify(value, &plain, Some("k1"), &stored));
    }

    #[test]
    fn unkeyed_records_are_refused_once_keys_exist_and_vice_versa() {
        let value = "pat_example";
        let plain = TokenDigest::of(value);
        let keyed = TokenHasher::from_setting(&format!("k1:{}", key(1))).unwrap();
        assert!(!keyed.verify(value, &plain, None, &plain));
        assert!(TokenHasher::Plain.verify(value, &plain, None, &plain));
        assert!(!TokenHasher::Plain.verify(value, &plain, Some("k1"), &plain));
    }

    #[test]
    fn live_keys_admit_exactly_the_records_that_can_verify() {
        let value = "pat_example";
        let plain = TokenDigest::of(value);
        let k1 = TokenHasher::from_setting(&format!("k1:{}", key(1))).unwrap();
        let (_, by_k1) = k1.for_new(value, &plain);
        let rotated = TokenHasher::from_setting(&format!("k2:{},k1:{}", key(2), key(1))).unwrap();
        let only_k2 = TokenHasher::from_setting(&format!("k2:{}", key(2))).unwrap();
        let records = [(None, &plain), (Some("k1"), &by_k1)];
        for hasher in [TokenHasher::Plain, k1, rotated, only_k2] {
            let live = hasher.live_keys();
            for (kid, digest) in records {
                assert_eq!(
                    live.admits(kid),
                    hasher.verify(value, &plain, kid, digest),
                    "{hasher:?} {kid:?}"
                );
            }
            assert!(!live.admits(Some("k9")));
        }
        assert_eq!(TokenHasher::Plain.live_keys().as_args(), [""]);
    }

    struct Record {
        token_id: TokenId,
        account: AccountId,
        scopes: Scopes,
        key_id: String,
        created: u64,
        expires: u64,
        digest: TokenDigest,
    }

    impl Record {
        fn sample() -> Self {
            Self {
                token_id: TokenId::parse("abc0123456789xyz".into()).unwrap(),
                account: AccountId::parse("acct-mallory".into()).unwrap(),
                scopes: Scopes::parse(vec!["read".into()]).unwrap(),
                key_id: "k1".into(),
                created: 1_700_000_000_000,
                expires: 1_700_000_600_000,
                digest: TokenDigest::of("pat_example"),
            }
        }

        fn fields(&self) -> RecordFields<'_> {
            RecordFields {
                token_id: &self.token_id,
                account_id: &self.account,
                scopes: &self.scopes,
                key_id: &self.key_id,
                created_at: UnixMillis(self.created),
                expires_at: UnixMillis(self.expires),
                digest: &self.digest,
            }
        }
    }

    #[test]
    fn the_record_encoding_prefixes_every_field_with_its_length() {
        let r = Record::sample();
        let encoded = r.fields().encode();
        let mut expected = b"patd-record-v1\0".to_vec();
        for field in [
            &b"abc0123456789xyz"[..],
            b"acct-mallory",
            b"read",
            b"k1",
            &1_700_000_000_000u64.to_be_bytes(),
            &1_700_000_600_000u64.to_be_bytes(),
            &r.digest.0,
        ] {
            expected.extend_from_slice(&(field.len() as u32).to_be_bytes());
            expected.extend_from_slice(field);
        }
        assert_eq!(encoded, expected);
        // Moving bytes across a field boundary changes the encoding: the
        // same concatenation with other boundaries is another record.
        let mut shifted = Record::sample();
        shifted.scopes = Scopes::parse(vec!["readk".into()]).unwrap();
        shifted.key_id = "1".into();
        assert_ne!(shifted.fields().encode(), encoded);
        let mut empty = Record::sample();
        empty.scopes = Scopes::default();
        empty.key_id = "readk1".into();
        assert_ne!(empty.fields().encode(), encoded);
    }

    #[test]
    fn a_seal_covers_every_field_a_decision_uses() {
        let keys = TokenHasher::from_setting(&format!("k1:{},k2:{}", key(1), key(2))).unwrap();
        let r = Record::sample();
        let mac = keys.seal(&r.fields()).unwrap();
        assert!(keys.verify_seal(&r.fields(), &mac));
        assert!(!format!("{mac:?}").contains(&mac.to_hex()));
        let round_trip = RecordMac::from_stored(&mac.to_hex());
        assert!(keys.verify_seal(&r.fields(), &round_trip));
        type Change = (&'static str, fn(&mut Record));
        let changes: [Change; 7] = [
            ("token id", |r| {
                r.token_id = TokenId::parse("abc0123456789xyZ".into()).unwrap()
            }),
            ("account", |r| {
                r.account = AccountId::parse("acct-alice".into()).unwrap()
            }),
            ("scopes", |r| {
                r.scopes = Scopes::parse(vec!["admin".into()]).unwrap()
            }),
            ("key id", |r| r.key_id = "k2".into()),
            ("created", |r| r.created -= 1),
            ("expires", |r| r.expires += 315_360_000_000),
            ("digest", |r| r.digest = TokenDigest::of("pat_other")),
        ];
        for (what, change) in changes {
            let mut changed = Record::sample();
            change(&mut changed);
            assert!(!keys.verify_seal(&changed.fields(), &mac), "{what} changed");
            assert_ne!(keys.seal(&changed.fields()), Some(mac.clone()), "{what}");
        }
        // Another key's seal, a damaged one, and none without keys.
        let other = TokenHasher::from_setting(&format!("k1:{}", key(9))).unwrap();
        assert!(!other.verify_seal(&r.fields(), &mac));
        assert!(!keys.verify_seal(&r.fields(), &RecordMac::from_stored("zz")));
        assert!(!keys.verify_seal(&r.fields(), &RecordMac::from_stored("")));
        assert!(TokenHasher::Plain.seal(&r.fields()).is_none());
        assert!(!TokenHasher::Plain.verify_seal(&r.fields(), &mac));
        // A key id that is not configured cannot seal.
        let mut unknown = Record::sample();
        unknown.key_id = "k9".into();
        assert!(keys.seal(&unknown.fields()).is_none());
    }

    #[test]
    fn a_seal_is_never_a_token_digest() {
        // The domain prefix holds a NUL, which no token value can: a
        // record's MAC input never equals a token value's.
        let keys = TokenHasher::from_setting(&format!("k1:{}", key(1))).unwrap();
        let r = Record::sample();
        let encoded = String::from_utf8_lossy(&r.fields().encode()).into_owned();
        assert!(TokenFormat::new("pat").unwrap().parse(&encoded).is_err());
        assert!(encoded.contains('\0'));
        let mac = keys.seal(&r.fields()).unwrap();
        let (_, as_value) = keys.for_new(&encoded, &TokenDigest::of(&encoded));
        assert_ne!(as_value.0.to_vec(), mac.0);
    }

    #[test]
    fn bad_key_settings_are_refused_without_echoing_keys() {
        assert!(matches!(
            TokenHasher::from_setting(""),
            Ok(TokenHasher::Plain)
        ));
        assert_eq!(
            TokenHasher::from_setting("nokey").unwrap_err(),
            HashKeyError::Shape(1)
        );
        assert_eq!(
            TokenHasher::from_setting("k:!!").unwrap_err(),
            HashKeyError::Base64(1)
        );
        assert_eq!(
            TokenHasher::from_setting("k:c2hvcnQ=").unwrap_err(),
            HashKeyError::Short(1)
        );
        assert_eq!(
            TokenHasher::from_setting(&format!("a b:{}", key(1))).unwrap_err(),
            HashKeyError::Id(1)
        );
        let twice = format!("k:{},k:{}", key(1), key(2));
        assert_eq!(
            TokenHasher::from_setting(&twice).unwrap_err(),
            HashKeyError::Duplicate("k".into())
        );
        let keyed = TokenHasher::from_setting(&format!("k1:{}", key(7))).unwrap();
        assert!(!format!("{keyed:?}").contains(&key(7)));
    }
}
