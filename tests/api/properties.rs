//! Property tests of the token format and forward-auth parsing: pure
//! functions, no server. Each property runs proptest's default 256 cases;
//! the whole module takes well under a second in a debug build.
//!
//! Why the tampering properties must hold, not just happen to: the checksum
//! is CRC32 of everything before it, and `parse` compares the 6 checksum
//! characters as a string.
//! - One changed character before the checksum flips bits inside one byte:
//!   an error burst of at most 8 bits, and CRC32 detects every burst of at
//!   most 32 bits. One changed checksum character changes the string that
//!   must equal `checksum(signed)`, which did not change.
//! - Two swapped adjacent characters `ab -> ba` before the checksum flip the
//!   same bits `a ^ b` in two neighbouring bytes: a burst of at most 16 bits,
//!   always detected. A swap inside the checksum leaves `signed` alone and
//!   changes the checksum string, so it is refused too.
//! - The one swap that changes both sides is the last signed character with
//!   the first checksum character; see
//!   [`a_swap_across_the_checksum_boundary_can_never_be_valid`] for why that
//!   cannot produce a valid value either.

use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use patd::bearer::from_authorization;
use patd::domain::AccountId;
use patd::domain::shard_tag;
use patd::forward_auth::parse_forward_auth;
use patd::token::{CHECKSUM_LEN, ParseError, SECRET_LEN, TOKEN_ID_LEN, TokenDigest, TokenFormat};
use proptest::prelude::*;
use proptest::sample::Index;

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const BODY_LEN: usize = TOKEN_ID_LEN + SECRET_LEN + CHECKSUM_LEN;

/// Valid account ids: 1..=128 bytes of any characters but control ones.
fn account_id() -> impl Strategy<Value = String> {
    // Control characters (U+0000..=U+001F, U+007F..=U+009F) are moved up by
    // 0x100 rather than filtered out, so that many cases never run out of
    // proptest's local rejects.
    let char = any::<char>().prop_map(|c| {
        if c.is_control() {
            char::from_u32(u32::from(c) + 0x100).unwrap()
        } else {
            c
        }
    });
    prop::collection::vec(char, 1..=128)
        .prop_map(|chars| {
            let mut id = String::new();
            for c in chars {
                if id.len() + c.len_utf8() > 128 {
                    break;
                }
                id.push(c);
            }
            id
        })
        // Whitespace at the ends, invisible characters or an NFC form past
        // 128 bytes are refused; the rest of the space is what this covers.
        .prop_filter("a valid account id", |id| {
            AccountId::parse(id.clone()).is_ok()
        })
}

fn prefix() -> impl Strategy<Value = String> {
    "[a-z0-9]{1,16}"
}

/// The checksum as a forger with the public format computes it.
fn with_valid_checksum(signed: &str) -> String {
    let crc = crc32fast::hash(signed.as_bytes());
    format!("{signed}{:0>6}", base62::encode(crc))
}

/// A valid token of `prefix`, built from proptest's bytes (not the OS
/// RNG), so a failure shrinks and replays.
fn token() -> impl Strategy<Value = (String, String)> {
    let id_and_secret =
        proptest::string::string_regex(&format!("[0-9A-Za-z]{{{}}}", TOKEN_ID_LEN + SECRET_LEN))
            .unwrap();
    (prefix(), id_and_secret).prop_map(|(prefix, body)| {
        let token = with_valid_checksum(&format!("{prefix}_{body}"));
        (prefix, token)
    })
}

fn base62_char() -> impl Strategy<Value = char> {
    prop::sample::select(ALPHABET.map(char::from).to_vec())
}

/// Strings near the token shape: the `pat_` prefix (or a near miss), then
/// mostly 54 base62 characters; sometimes a length off by up to 2, or a few
/// characters from anywhere in Unicode.
fn near_token() -> impl Strategy<Value = String> {
    let prefix = prop_oneof![
        8 => Just("pat_".to_owned()),
        1 => "[a-zA-Z0-9_-]{3}[_-]",
        1 => "[a-z]{0,5}_?",
    ];
    let exact = format!("[0-9A-Za-z]{{{BODY_LEN}}}");
    let off_by_two = format!("[0-9A-Za-z]{{{},{}}}", BODY_LEN - 2, BODY_LEN + 2);
    let mixed_char = prop_oneof![20 => base62_char(), 1 => any::<char>()];
    let body = prop_oneof![
        6 => proptest::string::string_regex(&exact).unwrap().boxed(),
        1 => proptest::string::string_regex(&off_by_two).unwrap().boxed(),
        2 => prop::collection::vec(mixed_char, BODY_LEN)
            .prop_map(String::from_iter)
            .boxed(),
    ];
    (prefix, body).prop_map(|(prefix, body)| format!("{prefix}{body}"))
}

proptest! {
    #[test]
    fn generated_tokens_parse_back_to_their_id(account in account_id(), prefix in prefix()) {
        let account = AccountId::parse(account).unwrap();
        let format = TokenFormat::new(&prefix).unwrap();
        let (plain, issued) = format.generate(&account);
        let value = plain.expose();
        prop_assert_eq!(value.len(), format.token_len());
        let parsed = format.parse(value).unwrap();
        prop_assert_eq!(&parsed.token_id, &issued.token_id);
        prop_assert!(parsed.digest.matches(&issued.digest));
        prop_assert!(parsed.digest.matches(&TokenDigest::of(value)));
        let id = issued.token_id.as_str();
        prop_assert!(id.starts_with(&shard_tag(account.as_str())));
        prop_assert_eq!(issued.token_id.shard_tag(), account.shard_tag());
        prop_assert_eq!(&value[prefix.len() + 1..][..TOKEN_ID_LEN], id);
    }

    #[test]
    fn any_string_is_parsed_or_rejected_without_panicking(value in any::<String>()) {
        let format = TokenFormat::new("pat").unwrap();
        match format.parse(&value) {
            Ok(parsed) => prop_assert!(value.contains(parsed.token_id.as_str())),
            Err(ParseError::Length) => prop_assert_ne!(value.len(), format.token_len()),
            Err(_) => {}
        }
    }

    #[test]
    fn strings_of_nearly_token_shape_are_parsed_or_rejected_without_panicking(
        value in near_token(),
    ) {
        let format = TokenFormat::new("pat").unwrap();
        let well_formed = value.len() == format.token_len()
            && value.starts_with("pat_")
            && value[4..].bytes().all(|b| b.is_ascii_alphanumeric());
        match format.parse(&value) {
            // Almost never: a random string with a matching CRC.
            Ok(parsed) => {
                prop_assert!(well_formed);
                prop_assert_eq!(parsed.token_id.as_str(), &value[4..4 + TOKEN_ID_LEN]);
            }
            // A 5 MB string must cost one comparison: length comes first.
            Err(ParseError::Length) => prop_assert_ne!(value.len(), format.token_len()),
            // Right length, prefix and alphabet: only the checksum refuses.
            Err(e) => prop_assert!(!well_formed || e == ParseError::Checksum, "{e:?}"),
        }
        // The same string with its checksum made valid parses exactly when
        // it is well formed.
        if let Some(signed) = value.get(..value.len().saturating_sub(CHECKSUM_LEN)) {
            let repaired = with_valid_checksum(signed);
            let well_formed = repaired.len() == format.token_len()
                && repaired.starts_with("pat_")
                && repaired[4..].bytes().all(|b| b.is_ascii_alphanumeric());
            prop_assert_eq!(format.parse(&repaired).is_ok(), well_formed);
        }
    }

    #[test]
    fn a_single_changed_character_is_always_rejected(
        (prefix, value) in token(),
        at in any::<Index>(),
    ) {
        let format = TokenFormat::new(&prefix).unwrap();
        prop_assert!(format.parse(&value).is_ok());
        // Any position after `<prefix>_`, checksum included, each of the 61
        // other base62 characters.
        let pos = prefix.len() + 1 + at.index(BODY_LEN);
        for &c in ALPHABET.iter().filter(|&&c| c != value.as_bytes()[pos]) {
            let mut bytes = value.clone().into_bytes();
            bytes[pos] = c;
            let tampered = String::from_utf8(bytes).unwrap();
            prop_assert_eq!(
                format.parse(&tampered).unwrap_err(),
                ParseError::Checksum,
                "{} at {}", char::from(c), pos
            );
        }
    }

    #[test]
    fn a_swapped_adjacent_pair_is_always_rejected((prefix, value) in token()) {
        let format = TokenFormat::new(&prefix).unwrap();
        prop_assert!(format.parse(&value).is_ok());
        // Every adjacent pair after `<prefix>_`, across the boundary between
        // the signed part and the checksum too.
        for pos in prefix.len() + 1..value.len() - 1 {
            let mut bytes = value.clone().into_bytes();
            if bytes[pos] == bytes[pos + 1] {
                continue;
            }
            bytes.swap(pos, pos + 1);
            let swapped = String::from_utf8(bytes).unwrap();
            prop_assert_eq!(
                format.parse(&swapped).unwrap_err(),
                ParseError::Checksum,
                "swap at {}", pos
            );
        }
    }

    #[test]
    fn the_bearer_scheme_in_any_case_gives_the_token(
        upper in any::<[bool; 6]>(),
        token in prop_oneof!["[!-~]{1,64}", "\\S{1,32}"],
        spaces in 1..4usize,
    ) {
        let scheme: String = "bearer"
            .chars()
            .zip(upper)
            .map(|(c, up)| if up { c.to_ascii_uppercase() } else { c })
            .collect();
        let value = format!("{scheme} {token}");
        prop_assert_eq!(from_authorization(&value), Some(token.as_str()));
        let padded = format!(" {scheme}{}{token}\t", " ".repeat(spaces));
        prop_assert_eq!(from_authorization(&padded), Some(token.as_str()));
    }

    #[test]
    fn any_other_scheme_gives_no_token(
        scheme in prop_oneof!["[bBeEaArRsS]{0,8}", "\\S{0,12}"]
            .prop_filter("not bearer", |s| !s.eq_ignore_ascii_case("bearer")),
        token in prop_oneof!["[!-~]{1,64}", "\\S{1,32}"],
    ) {
        let value = format!("{scheme} {token}");
        prop_assert_eq!(from_authorization(&value), None);
    }

    #[test]
    fn forward_auth_parsing_never_panics(
        pairs in prop::collection::vec((header_name(), header_value()), 0..6),
        query in prop::option::of(query()),
        extra in prop::option::of(prop_oneof![Just("x-api-key".to_owned()), "[a-z-]{1,12}"]),
    ) {
        let extra = extra.map(|name| HeaderName::from_bytes(name.as_bytes()).unwrap());
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            let name = match name {
                None => extra.clone().unwrap_or(AUTHORIZATION),
                Some(name) => match HeaderName::from_bytes(&name) {
                    Ok(name) => name,
                    Err(_) => continue,
                },
            };
            if let Ok(value) = HeaderValue::from_bytes(&value) {
                headers.append(name, value);
            }
        }
        let result = parse_forward_auth(&headers, query.as_deref(), extra.as_ref());
        if query.is_none() {
            prop_assert!(result.is_ok());
        }
        let Ok((token, _)) = result else {
            return Ok(());
        };
        let authorization = headers.get_all(AUTHORIZATION).iter().count();
        let extra_present = extra.as_ref().is_some_and(|name| headers.contains_key(name));
        if authorization == 0 && !extra_present {
            prop_assert_eq!(token, None);
        }
        if authorization > 1 {
            prop_assert_eq!(token, Some(""));
        }
        if let Some(token) = token
            && !token.is_empty()
        {
            prop_assert_eq!(token, token.trim());
            let sources: Vec<&HeaderValue> = headers
                .get_all(AUTHORIZATION)
                .iter()
                .chain(extra.iter().flat_map(|name| headers.get_all(name).iter()))
                .collect();
            prop_assert!(
                sources.iter().any(|v| v.to_str().is_ok_and(|v| v.contains(token))),
                "{token:?} not in {headers:?}"
            );
        }
    }
}

/// `None` stands for the extra token header (or Authorization without one).
fn header_name() -> impl Strategy<Value = Option<Vec<u8>>> {
    prop_oneof![
        Just(Some(b"authorization".to_vec())),
        Just(Some(b"Authorization".to_vec())),
        Just(None),
        "[a-z-]{1,12}".prop_map(|s| Some(s.into_bytes())),
        prop::collection::vec(any::<u8>(), 0..16).prop_map(Some),
    ]
}

fn header_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        "[bB]earer[ \t]{0,3}[ -~]{0,64}".prop_map(String::into_bytes),
        "[ -~]{0,64}".prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 0..64),
    ]
}

fn query() -> impl Strategy<Value = String> {
    prop_oneof![
        "(scope=[a-z0-9:._%+ -]{0,20}&?){0,4}",
        "[ -~]{0,64}",
        any::<String>(),
    ]
}

/// The one adjacent swap that changes both the signed part and the checksum
/// string: the last signed character `x` with the first checksum character
/// `c`. A CRC32 is below `5 * 62^5`, so `c` is in `0..=4`, and for the
/// swapped value to pass, `x` must be too. Write `C` and `C'` for the CRC32
/// of the signed part before and after: the other five checksum characters
/// stay put, so `C' - C = (x - c) * 62^5`, a multiple of `2^5`. But the
/// signed parts differ only in their last byte, by `d = x ^ c`, and CRC32 is
/// affine, so `C' = C ^ T(d)` with `T(d)` depending on `d` alone; and
/// `(C ^ T) - C` is a sum of `+-2^i` over the set bits of `T`, whose lowest
/// power of two is that of `T`'s lowest set bit. Below `2^5` for every `d`,
/// so no such swap can ever pass.
#[test]
fn a_swap_across_the_checksum_boundary_can_never_be_valid() {
    let digits = b"01234";
    for &x in digits {
        for &c in digits {
            if x == c {
                continue;
            }
            let d = x ^ c;
            // T(d) is the same whatever the message and its length.
            let t = |signed: &[u8]| {
                let mut flipped = signed.to_vec();
                *flipped.last_mut().unwrap() ^= d;
                crc32fast::hash(signed) ^ crc32fast::hash(&flipped)
            };
            let t_d = t(b"pat_0000000000000000000000000000000000000000000000000");
            assert_eq!(t_d, t(b"acme2_Zz9"));
            let k = i64::from(x) - i64::from(c);
            let needed = (k * 62i64.pow(5)).trailing_zeros();
            assert!(needed >= 5);
            assert!(
                t_d.trailing_zeros() < needed,
                "x={} c={}: T={t_d:#x}",
                char::from(x),
                char::from(c)
            );
        }
    }
}
