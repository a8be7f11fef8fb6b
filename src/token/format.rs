//! The token wire format: `<prefix>_<token_id><secret><checksum>`,
//! everything after `_` in base62. The token id (shard tag + random) is
//! public, the secret is 32 characters (190.5 bits) from the OS CSPRNG, and
//! the checksum is the CRC32 of all that precedes it in 6 characters, so a
//! mistyped or truncated token is refused without asking the store.

use std::fmt;

use thiserror::Error;

use super::digest::TokenDigest;
use crate::domain::{AccountId, TAG_LEN, TOKEN_ID_LEN, TokenId, shard_tag};

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
}
