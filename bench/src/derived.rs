//! Values derived from real tokens that must come back inactive: malformed
//! ones (refused offline, no store access) and forged ones (a real token id
//! with a wrong secret and a valid checksum: a store lookup, then a failed
//! digest comparison).

use patd::token::{CHECKSUM_LEN, SECRET_LEN, TOKEN_ID_LEN};

/// A value derived from a real token that can never pass the offline
/// checks (bad checksum, wrong length, wrong prefix, bad alphabet, empty).
pub fn malformed(token: &str, variant: usize) -> String {
    match variant % 5 {
        0 => {
            let mut bytes = token.as_bytes().to_vec();
            if let Some(last) = bytes.last_mut() {
                *last = if *last == b'0' { b'1' } else { b'0' };
            }
            String::from_utf8(bytes).unwrap_or_default()
        }
        1 => token
            .get(..token.len().saturating_sub(1))
            .unwrap_or_default()
            .to_owned(),
        2 => format!("zz{}", token.get(2..).unwrap_or_default()),
        3 => {
            let middle = token.len() / 2;
            let mut value = token.to_owned();
            if token.is_char_boundary(middle) && token.is_char_boundary(middle + 1) {
                value.replace_range(middle..=middle, "-");
            }
            value
        }
        _ => String::new(),
    }
}

/// A well-formed value with a real token id and a wrong secret: passes
/// the offline checks and the lookup, fails the digest comparison.
/// `None` when the token is not `<prefix>_<16 id><32 secret><6 checksum>`.
pub fn forge(token: &str) -> Option<String> {
    let body_at = token.find('_')? + 1;
    if token.len() != body_at + TOKEN_ID_LEN + SECRET_LEN + CHECKSUM_LEN {
        return None;
    }
    let secret_at = body_at + TOKEN_ID_LEN;
    let mut value = token[..token.len() - CHECKSUM_LEN].to_owned();
    let flipped = if value.as_bytes()[secret_at] == b'a' {
        "b"
    } else {
        "a"
    };
    value.replace_range(secret_at..=secret_at, flipped);
    let crc = crc32fast::hash(value.as_bytes());
    value.push_str(&format!("{:0>CHECKSUM_LEN$}", base62::encode(crc)));
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_values_keep_the_token_id_or_break_the_format() {
        let token = "pat_BASbaselinetoken0123456789abcdefghijABCDEFGHIJ01000000";
        let forged = forge(token).unwrap();
        assert_eq!(forged.len(), token.len());
        assert_eq!(&forged[..20], &token[..20]);
        assert_ne!(forged, token);
        for v in 0..5 {
            assert_ne!(malformed(token, v), token);
        }
    }
}
