//! Tampered, forged and oversized tokens are inactive (or refused by the
//! size limit), never an error that could be mistaken for "try again".

use patd::pb::IntrospectRequest;
use tonic::Code;

use crate::helpers::{Client, Patd, RedisServer, is_active, issue, random_name};

/// Recomputes the 6-character CRC32 checksum, as a forger with the public
/// format would.
fn with_valid_checksum(signed: &str) -> String {
    let crc = crc32fast::hash(signed.as_bytes());
    format!("{signed}{:0>6}", base62::encode(crc))
}

async fn tampered_tokens_are_inactive(client: &mut Client) {
    let account = random_name("acct-");
    let (token, _) = issue(client, &account, 600).await;
    assert!(is_active(client, &token).await);

    let mut one_char = token.clone().into_bytes();
    one_char[10] = if one_char[10] == b'x' { b'y' } else { b'x' };
    let one_char = String::from_utf8(one_char).unwrap();
    let body_end = token.len() - 6;
    let bad_checksum = format!("{}000000", &token[..body_end]);
    let wrong_prefix = format!("ghp{}", &token[3..]);
    // Same token id, another secret, a valid checksum: only the digest
    // comparison can catch it.
    let other_secret =
        with_valid_checksum(&format!("{}{}", &token[..20], "A".repeat(body_end - 20)));
    // A well-formed token nobody issued.
    let unknown = with_valid_checksum(&format!("pat_{}", "B".repeat(body_end - 4)));
    let near_limit = "p".repeat(60 * 1024);

    for (what, candidate) in [
        ("one changed char", one_char.as_str()),
        ("bad checksum", &bad_checksum),
        ("wrong prefix", &wrong_prefix),
        ("other secret, valid checksum", &other_secret),
        ("unknown id", &unknown),
        ("empty", ""),
        ("60 KiB string", &near_limit),
        ("with whitespace", &format!(" {token}")),
    ] {
        assert!(!is_active(client, candidate).await, "{what} was accepted");
    }
    // The genuine token is unaffected by the attempts.
    assert!(is_active(client, &token).await);

    // Past the request size limit the transport refuses before parsing.
    let huge = "a".repeat(5 * 1024 * 1024);
    let err = client
        .raw()
        .introspect(IntrospectRequest { token: huge })
        .await
        .expect_err("5 MB request");
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert!(is_active(client, &token).await, "patd still serves");
}

#[tokio::test]
async fn tampered_tokens_are_inactive_on_redis() {
    let redis = RedisServer::start();
    let patd = Patd::redis(&redis).await;
    tampered_tokens_are_inactive(&mut patd.client().await).await;
}

#[tokio::test]
async fn tampered_tokens_are_inactive_in_memory() {
    let patd = Patd::memory().await;
    tampered_tokens_are_inactive(&mut patd.client().await).await;
}

#[tokio::test]
async fn a_custom_token_prefix_is_issued_and_the_default_one_refused() {
    let patd = Patd::spawn(
        crate::helpers::PatdOptions::new(crate::helpers::Backend::Memory)
            .env("PATD_TOKEN_PREFIX", "acme"),
    )
    .await;
    let mut client = patd.client().await;
    let (token, _) = issue(&mut client, "acct", 60).await;
    assert!(token.starts_with("acme_"));
    assert!(is_active(&mut client, &token).await);
    let as_pat = with_valid_checksum(&format!("pat_{}", &token[5..token.len() - 6]));
    assert!(!is_active(&mut client, &as_pat).await);
}
