//! `TokenFormat::parse` (and `TokenFormat::new`) on arbitrary input.
//!
//! The input bytes, read as (lossy) UTF-8, are the presented value. They are
//! parsed with the `pat` format and with a format whose prefix is taken from
//! the input itself (everything before its first `_`), both as given and
//! with the last 6 characters replaced by a correct CRC32 checksum, so the
//! accepting path is reached without the fuzzer having to guess a CRC.
//!
//! Besides "never panics", every result is checked against a small reference
//! model of the format: a value parses exactly when it has the right length,
//! the prefix and `_`, only base62 after that, and a matching checksum; and
//! then its token id is the 16 characters after the `_`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use patd::token::{
    CHECKSUM_LEN, MAX_PREFIX_LEN, SECRET_LEN, TOKEN_ID_LEN, TokenDigest, TokenFormat,
};

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Reference encoding of the checksum, written independently of patd's:
/// CRC32 (IEEE) in base62, left-padded with `0` to 6 characters.
fn reference_checksum(signed: &str) -> String {
    let mut n = crc32fast::hash(signed.as_bytes());
    let mut digits = [b'0'; CHECKSUM_LEN];
    for d in digits.iter_mut().rev() {
        *d = ALPHABET[(n % 62) as usize];
        n /= 62;
    }
    assert_eq!(n, 0, "a CRC32 always fits 6 base62 digits");
    String::from_utf8(digits.to_vec()).unwrap()
}

fn reference_prefix_ok(prefix: &str) -> bool {
    (1..=MAX_PREFIX_LEN).contains(&prefix.len())
        && prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// Whether `value` is a token of `prefix`, by the documented format.
fn reference_accepts(prefix: &str, value: &str) -> bool {
    let body_len = TOKEN_ID_LEN + SECRET_LEN + CHECKSUM_LEN;
    let Some(body) = value
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('_'))
    else {
        return false;
    };
    body.len() == body_len
        && body.bytes().all(|b| b.is_ascii_alphanumeric())
        && reference_checksum(&value[..value.len() - CHECKSUM_LEN])
            == value[value.len() - CHECKSUM_LEN..]
}

/// Parses `value` and checks the outcome against the reference model.
fn check(format: &TokenFormat, prefix: &str, value: &str) {
    let result = format.parse(value);
    assert_eq!(
        result.is_ok(),
        reference_accepts(prefix, value),
        "parse disagrees with the format for prefix {prefix:?}, value {value:?}: {result:?}"
    );
    if let Ok(parsed) = result {
        let id = parsed.token_id.as_str();
        assert_eq!(id.len(), TOKEN_ID_LEN, "{value:?}");
        assert!(id.bytes().all(|b| b.is_ascii_alphanumeric()), "{value:?}");
        assert!(value.contains(id), "{value:?}");
        let start = prefix.len() + 1;
        assert_eq!(&value[start..start + TOKEN_ID_LEN], id, "{value:?}");
        assert_eq!(value.len(), format.token_len());
        assert!(parsed.digest.matches(&TokenDigest::of(value)));
    }
}

/// `value` with its last 6 characters replaced by the correct checksum of
/// what precedes them (`None` if it is too short or the cut splits a char).
fn with_valid_checksum(value: &str) -> Option<String> {
    let cut = value.len().checked_sub(CHECKSUM_LEN)?;
    let signed = value.get(..cut)?;
    Some(format!("{signed}{}", reference_checksum(signed)))
}

fuzz_target!(|data: &[u8]| {
    let value = String::from_utf8_lossy(data);
    let pat = TokenFormat::new("pat").unwrap();
    check(&pat, "pat", &value);

    // A fuzzed prefix: whatever precedes the first `_` (or all of it).
    let prefix = value.split('_').next().unwrap_or_default();
    let custom = TokenFormat::new(prefix);
    assert_eq!(custom.is_ok(), reference_prefix_ok(prefix), "{prefix:?}");
    if let Ok(custom) = &custom {
        assert_eq!(
            custom.token_len(),
            prefix.len() + 1 + TOKEN_ID_LEN + SECRET_LEN + CHECKSUM_LEN
        );
        check(custom, prefix, &value);
    }

    if let Some(repaired) = with_valid_checksum(&value) {
        check(&pat, "pat", &repaired);
        if let Ok(custom) = &custom {
            check(custom, prefix, &repaired);
        }
    }
});
