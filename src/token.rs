//! The token format: generating, parsing and digesting token values.
//!
//! `<prefix>_<token_id><secret><checksum>`, everything after `_` in base62:
//! the token id (shard tag + random) is public, the secret is 32 characters
//! (190.5 bits) from the OS CSPRNG, and the checksum is the CRC32 of all that
//! precedes it in 6 characters, so a mistyped or truncated token is refused
//! without asking the store. Only a SHA-256 digest of the whole value is ever
//! stored.

use std::fmt;

use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;
use thiserror::Error;

use crate::domain::{AccountId, TokenId};

/// Characters of the shard tag: 62^3 tags spread accounts over all slots.
pub const TAG_LEN: usize = 3;
/// Characters of a token id: the tag plus 13 random characters (77 bits).
pub const TOKEN_ID_LEN: usize = 16;
/// Characters of the secret: 32 * log2(62) = 190.5 bits.
pub const SECRET_LEN: usize = 32;
/// Characters of the CRC32 checksum (62^6 > 2^32).
pub const CHECKSUM_LEN: usize = 6;
const BODY_LEN: usize = TOKEN_ID_LEN + SECRET_LEN + CHECKSUM_LEN;
/// Longest token prefix accepted in configuration.
pub const MAX_PREFIX_LEN: usize = 16;

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Why a token value was refused before any store access.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("wrong length")]
    Length,
    #[error("wrong prefix")]
    Prefix,
    #[error("character outside base62")]
    Alphabet,
    #[error("checksum mismatch")]
    Checksum,
}

/// Why a configured token prefix is unusable.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("token prefix must be 1..={MAX_PREFIX_LEN} characters of [a-z0-9], got {0:?}")]
pub struct PrefixError(String);

/// A token value in clear. It exists only between generation and the Issue
/// response; it has no `Display` and its `Debug` is redacted so it cannot
/// slip into a log line or an error.
#[derive(Clone, PartialEq, Eq)]
pub struct PlainToken(String);

impl PlainToken {
    /// The value, for the one place it is handed to the caller.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Consumes the token into its value, for the Issue response.
    pub fn into_exposed(self) -> String {
        self.0
    }
}

impl fmt::Debug for PlainToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PlainToken(<redacted>)")
    }
}

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

/// Id of a digest key, stored beside each keyed digest so verification
/// knows which key made it.
pub type KeyId = String;

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
    use hmac::{Hmac, Mac as _};
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(value.as_bytes());
            TokenDigest(mac.finalize().into_bytes().into())
        }
        Err(_) => TokenDigest([0; 32]),
    }
}

/// A token value that passed the offline checks: prefix, length, alphabet
/// and checksum. It is not yet known to the store.
#[derive(Debug)]
pub struct ParsedToken {
    pub token_id: TokenId,
    pub digest: TokenDigest,
}

/// The configured token format (its prefix).
#[derive(Debug, Clone)]
pub struct TokenFormat {
    prefix: String,
}

impl TokenFormat {
    /// # Errors
    /// The prefix is empty, too long or not lowercase alphanumeric (the
    /// `_` separator must stay unambiguous and double-click selectable).
    pub fn new(prefix: &str) -> Result<Self, PrefixError> {
        let ok = !prefix.is_empty()
            && prefix.len() <= MAX_PREFIX_LEN
            && prefix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if ok {
            Ok(Self {
                prefix: prefix.to_owned(),
            })
        } else {
            Err(PrefixError(prefix.to_owned()))
        }
    }

    /// Length of every token in this format.
    pub fn token_len(&self) -> usize {
        self.prefix.len() + 1 + BODY_LEN
    }

    /// A fresh token for `account`, with its id and digest.
    pub fn generate(&self, account: &AccountId) -> (PlainToken, ParsedToken) {
        let mut value = String::with_capacity(self.token_len());
        value.push_str(&self.prefix);
        value.push('_');
        value.push_str(&shard_tag(account.as_str()));
        push_random_base62(&mut value, TOKEN_ID_LEN - TAG_LEN + SECRET_LEN);
        let checksum = checksum(&value);
        value.push_str(&checksum);
        let id_start = self.prefix.len() + 1;
        let token_id = TokenId::from_trusted(&value[id_start..id_start + TOKEN_ID_LEN]);
        let parsed = ParsedToken {
            token_id,
            digest: TokenDigest::of(&value),
        };
        (PlainToken(value), parsed)
    }

    /// Offline checks of a presented value.
    ///
    /// # Errors
    /// Any [`ParseError`]: such a value cannot be a token of ours.
    pub fn parse(&self, value: &str) -> Result<ParsedToken, ParseError> {
        // Length first: a 5 MB string costs one comparison, not a hash.
        if value.len() != self.token_len() {
            return Err(ParseError::Length);
        }
        let body = value
            .strip_prefix(self.prefix.as_str())
            .and_then(|rest| rest.strip_prefix('_'))
            .ok_or(ParseError::Prefix)?;
        if !body.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(ParseError::Alphabet);
        }
        let (signed, sum) = value.split_at(value.len() - CHECKSUM_LEN);
        if checksum(signed) != sum {
            return Err(ParseError::Checksum);
        }
        Ok(ParsedToken {
            token_id: TokenId::from_trusted(&body[..TOKEN_ID_LEN]),
            digest: TokenDigest::of(value),
        })
    }
}

/// The shard tag of an account: both of its Redis keys and every token id it
/// owns start with it, so they share one Redis Cluster slot.
pub fn shard_tag(account: &str) -> String {
    let hash = Sha256::digest(account.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash[..8]);
    let n = u64::from_be_bytes(first) % 62u64.pow(TAG_LEN as u32);
    format!("{:0>width$}", base62::encode(n), width = TAG_LEN)
}

fn checksum(signed: &str) -> String {
    let crc = crc32fast::hash(signed.as_bytes());
    format!("{:0>width$}", base62::encode(crc), width = CHECKSUM_LEN)
}

/// Appends `count` uniform base62 characters from the OS CSPRNG.
pub(crate) fn push_random_base62(out: &mut String, count: usize) {
    // Rejection sampling: bytes >= 248 (= 4 * 62) would bias the modulo.
    let mut pushed = 0;
    let mut buf = [0u8; 64];
    while pushed < count {
        // The OS generator failing means the machine cannot make secrets at
        // all; continuing with anything weaker would be worse than stopping.
        #[allow(clippy::expect_used)]
        getrandom::fill(&mut buf).expect("the OS random number generator failed");
        for &b in buf.iter().filter(|&&b| b < 248) {
            if pushed == count {
                break;
            }
            out.push(ALPHABET[usize::from(b % 62)] as char);
            pushed += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(s: &str) -> AccountId {
        AccountId::parse(s.to_owned()).unwrap()
    }

    fn format() -> TokenFormat {
        TokenFormat::new("pat").unwrap()
    }

    #[test]
    fn a_generated_token_parses_back_to_its_id_and_digest() {
        let (plain, parsed) = format().generate(&account("acct-1"));
        let again = format().parse(plain.expose()).unwrap();
        assert_eq!(again.token_id, parsed.token_id);
        assert!(again.digest.matches(&parsed.digest));
        assert_eq!(plain.expose().len(), format().token_len());
        assert!(plain.expose().starts_with("pat_"));
    }

    #[test]
    fn the_token_id_starts_with_the_accounts_shard_tag() {
        let (_, parsed) = format().generate(&account("acct-1"));
        assert!(parsed.token_id.as_str().starts_with(&shard_tag("acct-1")));
        assert_eq!(parsed.token_id.as_str().len(), TOKEN_ID_LEN);
    }

    #[test]
    fn two_tokens_never_share_a_secret() {
        let a = format().generate(&account("x")).0;
        let b = format().generate(&account("x")).0;
        assert_ne!(a.expose(), b.expose());
    }

    #[test]
    fn a_changed_character_fails_the_checksum() {
        let (plain, _) = format().generate(&account("acct"));
        let value = plain.expose();
        for i in 4..value.len() {
            let mut bytes = value.as_bytes().to_vec();
            bytes[i] = if bytes[i] == b'a' { b'b' } else { b'a' };
            let tampered = String::from_utf8(bytes).unwrap();
            assert!(format().parse(&tampered).is_err(), "position {i}");
        }
    }

    #[test]
    fn a_wrong_prefix_length_or_alphabet_is_refused() {
        let (plain, _) = format().generate(&account("acct"));
        let value = plain.expose();
        assert_eq!(
            TokenFormat::new("ghp").unwrap().parse(value).unwrap_err(),
            ParseError::Prefix
        );
        assert_eq!(format().parse(&value[1..]).unwrap_err(), ParseError::Length);
        assert_eq!(format().parse("").unwrap_err(), ParseError::Length);
        let with_dash = format!("pat_-{}", &value[5..]);
        assert_eq!(
            format().parse(&with_dash).unwrap_err(),
            ParseError::Alphabet
        );
        let huge = "a".repeat(5 * 1024 * 1024);
        assert_eq!(format().parse(&huge).unwrap_err(), ParseError::Length);
    }

    #[test]
    fn prefixes_must_be_short_lowercase_alphanumerics() {
        assert!(TokenFormat::new("pat").is_ok());
        assert!(TokenFormat::new("acme2").is_ok());
        for bad in ["", "PAT", "pa_t", "pat-x", "abcdefghijklmnopq"] {
            assert!(TokenFormat::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_debug_form_of_a_token_hides_its_value() {
        let (plain, parsed) = format().generate(&account("acct"));
        let shown = format!("{plain:?} {parsed:?}");
        assert!(!shown.contains(&plain.expose()[4..]));
    }

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

    #[test]
    fn shard_tags_are_fixed_width_base62() {
        for a in ["", "a", "account-with-a-long-name", "ü"] {
            let tag = shard_tag(a);
            assert_eq!(tag.len(), TAG_LEN);
            assert!(tag.bytes().all(|b| b.is_ascii_alphanumeric()));
        }
        assert_eq!(shard_tag("same"), shard_tag("same"));
    }
}
