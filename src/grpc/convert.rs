//! Protobuf <-> domain conversions for the TokenService messages. Parsing
//! here is the edge: what leaves this module is validated.

use pbjson_types::{Duration, Timestamp};

use crate::audit::AuditEvent;
use crate::domain::{
    AccountId, ExpiryRequest, FieldError, ListedToken, Note, Scopes, TokenId, TokenInfo,
    TokenState, UnixMillis,
};
use crate::pb;
use crate::service::{
    AuditPage, Inactive, Introspection, IssueCommand, Page, RotateCommand, Rotated,
};

const NANOS_PER_SEC: i32 = 1_000_000_000;

/// # Errors
/// The first field that fails validation.
pub fn issue_command(req: pb::IssueRequest) -> Result<IssueCommand, FieldError> {
    let pb::IssueRequest {
        account_id,
        note,
        ttl,
        expires_at,
        scopes,
    } = req;
    Ok(IssueCommand {
        account: AccountId::parse(account_id)?,
        note: Note::parse(note)?,
        scopes: Scopes::parse(scopes)?,
        expiry: expiry(ttl, expires_at)?,
    })
}

/// # Errors
/// The first field that fails validation (the grace window's bound is the
/// service's rule).
pub fn rotate_command(req: pb::RotateRequest) -> Result<RotateCommand, FieldError> {
    let pb::RotateRequest {
        account_id,
        token_id,
        grace,
        ttl,
        expires_at,
    } = req;
    Ok(RotateCommand {
        account: AccountId::parse(account_id)?,
        token_id: TokenId::parse(token_id)?,
        grace: grace.map_or((0, 0), |d| (d.seconds, d.nanos)),
        expiry: expiry(ttl, expires_at)?,
    })
}

/// The proto's `InactiveReason`.
pub fn inactive_reason(why: Inactive) -> pb::InactiveReason {
    match why {
        Inactive::Malformed => pb::InactiveReason::Malformed,
        Inactive::Unknown => pb::InactiveReason::Unknown,
        Inactive::Expired => pb::InactiveReason::Expired,
        Inactive::Revoked => pb::InactiveReason::Revoked,
        Inactive::Rotated => pb::InactiveReason::Rotated,
    }
}

/// A listed token: its facts with `state` and `ended_at` set.
pub fn listed_token(listed: ListedToken) -> pb::TokenInfo {
    use pb::token_info::State;
    let state = match listed.state {
        TokenState::Active => State::Active,
        TokenState::Rotating => State::Rotating,
        TokenState::Expired => State::Expired,
        TokenState::Revoked => State::Revoked,
        TokenState::Rotated => State::Rotated,
    };
    pb::TokenInfo {
        state: state as i32,
        ended_at: listed.ended_at.map(timestamp),
        ..token_info(listed.info)
    }
}

fn expiry(ttl: Option<Duration>, at: Option<Timestamp>) -> Result<ExpiryRequest, FieldError> {
    match (ttl, at) {
        (Some(_), Some(_)) => Err(FieldError::new("ttl", "give ttl or expires_at, not both")),
        (Some(d), None) => {
            if d.nanos.abs() >= NANOS_PER_SEC {
                return Err(FieldError::new("ttl", "nanos out of range"));
            }
            Ok(ExpiryRequest::Ttl {
                seconds: d.seconds,
                nanos: d.nanos,
            })
        }
        (None, Some(t)) => Ok(ExpiryRequest::At(timestamp_to_millis(&t)?)),
        (None, None) => Ok(ExpiryRequest::Default),
    }
}

fn timestamp_to_millis(t: &Timestamp) -> Result<UnixMillis, FieldError> {
    if !(0..NANOS_PER_SEC).contains(&t.nanos) {
        return Err(FieldError::new("expires_at", "nanos out of range"));
    }
    // Before the epoch is in the past; the lifetime policy says so.
    let Ok(seconds) = u64::try_from(t.seconds) else {
        return Ok(UnixMillis(0));
    };
    let nanos_ms = u64::try_from(t.nanos / 1_000_000).unwrap_or(0);
    Ok(UnixMillis(
        seconds.saturating_mul(1000).saturating_add(nanos_ms),
    ))
}

pub fn timestamp(ms: UnixMillis) -> Timestamp {
    Timestamp {
        seconds: i64::try_from(ms.0 / 1000).unwrap_or(i64::MAX),
        // < 1e9 by construction.
        nanos: i32::try_from((ms.0 % 1000) * 1_000_000).unwrap_or(0),
    }
}

pub fn token_info(info: TokenInfo) -> pb::TokenInfo {
    pb::TokenInfo {
        token_id: info.token_id.as_str().to_owned(),
        account_id: info.account_id.as_str().to_owned(),
        note: info.note.as_str().to_owned(),
        scopes: info.scopes.as_slice().to_vec(),
        created_at: Some(timestamp(info.created_at)),
        expires_at: Some(timestamp(info.expires_at)),
        last_used_at: info.last_used_at.map(timestamp),
        state: 0,
        ended_at: None,
    }
}

/// Introspect's answer: `info` when active, `reason` when not.
pub fn introspect_response(answer: Introspection) -> pb::IntrospectResponse {
    match answer {
        Introspection::Active(live) => pb::IntrospectResponse {
            active: true,
            info: Some(token_info(live.info)),
            reason: 0,
        },
        Introspection::Inactive(why) => pb::IntrospectResponse {
            reason: inactive_reason(why) as i32,
            ..Default::default()
        },
    }
}

/// List's answer: each token with its state.
pub fn list_response(page: Page) -> pb::ListResponse {
    pb::ListResponse {
        tokens: page.tokens.into_iter().map(listed_token).collect(),
        next_page_token: page.next.map(|c| c.encode()).unwrap_or_default(),
    }
}

/// Rotate's answer: the successor (`ACTIVE`) and when the old token ends.
pub fn rotate_response(rotated: Rotated) -> pb::RotateResponse {
    pb::RotateResponse {
        token: rotated.token.into_exposed(),
        info: Some(pb::TokenInfo {
            state: pb::token_info::State::Active as i32,
            ..token_info(rotated.info)
        }),
        previous_expires_at: Some(timestamp(rotated.previous_expires_at)),
    }
}

/// ListAuditEvents' answer: newest first.
pub fn audit_events_response(page: AuditPage) -> pb::ListAuditEventsResponse {
    pb::ListAuditEventsResponse {
        events: page.events.into_iter().map(audit_event).collect(),
        next_page_token: page.next.map(|id| id.encode_cursor()).unwrap_or_default(),
    }
}

pub fn audit_event(event: AuditEvent) -> pb::AuditEvent {
    pb::AuditEvent {
        event_id: event.id.to_string(),
        time: Some(timestamp(event.time())),
        action: event.action,
        account_id: event.account_id.as_str().to_owned(),
        token_ids: event
            .token_ids
            .iter()
            .map(|id| id.as_str().to_owned())
            .collect(),
        caller: event.caller,
        request_id: event.request_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> pb::IssueRequest {
        pb::IssueRequest {
            account_id: "acct".into(),
            ..Default::default()
        }
    }

    #[test]
    fn both_ttl_and_expires_at_is_refused() {
        let r = pb::IssueRequest {
            ttl: Some(Duration {
                seconds: 60,
                nanos: 0,
            }),
            expires_at: Some(Timestamp {
                seconds: 4_000_000_000,
                nanos: 0,
            }),
            ..req()
        };
        assert_eq!(issue_command(r).unwrap_err().field, "ttl");
    }

    #[test]
    fn neither_ttl_nor_expires_at_means_the_default() {
        assert_eq!(issue_command(req()).unwrap().expiry, ExpiryRequest::Default);
    }

    #[test]
    fn timestamps_round_trip_at_millisecond_precision() {
        let ms = UnixMillis(1_700_000_000_123);
        assert_eq!(timestamp_to_millis(&timestamp(ms)).unwrap(), ms);
        assert_eq!(
            timestamp_to_millis(&Timestamp {
                seconds: -1,
                nanos: 0
            })
            .unwrap(),
            UnixMillis(0)
        );
        assert!(
            timestamp_to_millis(&Timestamp {
                seconds: 1,
                nanos: -1
            })
            .is_err()
        );
    }

    #[test]
    fn the_first_bad_field_is_named() {
        let r = pb::IssueRequest {
            account_id: String::new(),
            note: "x".repeat(300),
            ..Default::default()
        };
        assert_eq!(issue_command(r).unwrap_err().field, "account_id");
        let r = pb::IssueRequest {
            scopes: vec!["BAD".into()],
            ..req()
        };
        assert_eq!(issue_command(r).unwrap_err().field, "scopes");
    }
}
