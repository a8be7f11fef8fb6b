//! The audit trail's vocabulary: who acted (`Actor`: the caller's name and
//! the request id), what they did (`AuditAction`), the events the stores
//! append in the same atomic step as each change (`AuditEvent`), how long
//! and how many are kept (`AuditPolicy`), paging through them
//! (`AuditPageRequest`, `EventId` cursors) and the `audit` log line.
//!
//! An event never holds a token value or digest: only public token ids.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::domain::{AccountId, FieldError, TokenId, UnixMillis};

/// Events kept per account unless `PATD_AUDIT_MAX_EVENTS` says otherwise.
pub const DEFAULT_MAX_EVENTS: u32 = 1000;
/// How long events are kept unless `PATD_AUDIT_RETENTION` says otherwise.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(90 * 86_400);

/// How much of the trail each account keeps: at most `max_events` (the
/// oldest go first) and none older than `retention` on the store's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditPolicy {
    pub max_events: u32,
    pub retention: Duration,
}

impl Default for AuditPolicy {
    fn default() -> Self {
        Self {
            max_events: DEFAULT_MAX_EVENTS,
            retention: DEFAULT_RETENTION,
        }
    }
}

impl AuditPolicy {
    /// The retention in whole milliseconds (the stores' unit).
    pub fn retention_ms(&self) -> u64 {
        u64::try_from(self.retention.as_millis()).unwrap_or(u64::MAX)
    }
}

/// A management change that is audited. The text form (the RPC's name) is
/// what the stores write and `ListAuditEvents` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditAction {
    Issue,
    Revoke,
    RevokeAll,
}

impl AuditAction {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::Issue => "Issue",
            AuditAction::Revoke => "Revoke",
            AuditAction::RevokeAll => "RevokeAll",
        }
    }
}

/// The id of one request, made by patd when a management RPC arrives: 32
/// lowercase hex characters (128 random bits). It is in the RPC's log line
/// and in every audit event the request wrote, so the two can be joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(Arc<str>);

impl RequestId {
    /// A fresh id from the OS CSPRNG (or, should that ever fail, from the
    /// clock and a process-wide counter: still unique within the process).
    pub fn new() -> Self {
        static FALLBACK: AtomicU64 = AtomicU64::new(0);
        let mut bytes = [0u8; 16];
        let text = match getrandom::fill(&mut bytes) {
            Ok(()) => hex::encode(bytes),
            Err(_) => format!(
                "{:016x}{:016x}",
                UnixMillis::now().0,
                FALLBACK.fetch_add(1, Ordering::Relaxed)
            ),
        };
        Self(text.into())
    }

    /// Rebuilds an id read back from the store.
    pub fn from_stored(text: &str) -> Self {
        Self(text.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for RequestId {
    fn default() -> Self {
        Self::new()
    }
}

/// Who made a change: the caller's name (from caller authentication, or
/// `anonymous`) and the request's id. Never a key.
#[derive(Debug, Clone)]
pub struct Actor {
    pub caller: Arc<str>,
    pub request_id: RequestId,
}

/// An event's place in its account's trail: the store's time of the
/// change in Unix ms and a sequence number among events of that
/// millisecond (a Redis stream entry id, `<ms>-<seq>`). Later events have
/// greater ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId {
    pub ms: u64,
    pub seq: u64,
}

impl EventId {
    /// Reads `<ms>-<seq>`.
    pub fn parse(text: &str) -> Option<Self> {
        let (ms, seq) = text.split_once('-')?;
        Some(Self {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }

    /// The opaque `page_token` that continues after this event:
    /// base64url of `audit1:<ms>-<seq>` (a List page token is refused
    /// here, and this one by List).
    pub fn encode_cursor(&self) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("audit1:{self}"))
    }

    /// # Errors
    /// Anything [`EventId::encode_cursor`] did not make, naming
    /// `page_token`.
    pub fn decode_cursor(page_token: &str) -> Result<Self, FieldError> {
        use base64::Engine as _;
        let bad = || FieldError::new("page_token", "is not a page token from this listing");
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(page_token)
            .map_err(|_| bad())?;
        let raw = String::from_utf8(raw).map_err(|_| bad())?;
        raw.strip_prefix("audit1:")
            .and_then(Self::parse)
            .ok_or_else(bad)
    }
}

impl std::fmt::Display for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// One audited change as the store kept it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// Its place in the trail; `id.ms` is the time of the change on the
    /// store's clock.
    pub id: EventId,
    /// The RPC's name (`Issue`, `Revoke`, `RevokeAll`, ...). Kept as text:
    /// a newer patd may have written an action this one does not know.
    pub action: String,
    pub account_id: AccountId,
    /// The tokens the change made or removed (public ids only).
    pub token_ids: Vec<TokenId>,
    pub caller: String,
    pub request_id: String,
}

impl AuditEvent {
    /// When the change happened, on the store's clock.
    pub fn time(&self) -> UnixMillis {
        UnixMillis(self.id.ms)
    }
}

/// One page of a trail: how many events, and after which one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditPageRequest {
    pub size: usize,
    pub after: Option<EventId>,
}

impl AuditPageRequest {
    /// The same rules as List's pages: `page_size` 0 means the default
    /// (100), above the maximum (500) the maximum.
    ///
    /// # Errors
    /// A negative `page_size`, or a `page_token` this listing did not make.
    pub fn parse(page_size: i32, page_token: &str) -> Result<Self, FieldError> {
        let size = crate::domain::PageRequest::parse(page_size, "")?.size;
        let after = match page_token {
            "" => None,
            token => Some(EventId::decode_cursor(token)?),
        };
        Ok(Self { size, after })
    }
}

/// Writes the `audit` log line of a change, with the same facts as its
/// event (the store's time and entry id are in the trail, not here).
pub fn log_event(action: AuditAction, account: &AccountId, token_ids: &[TokenId], actor: &Actor) {
    let token_ids = token_ids
        .iter()
        .map(TokenId::as_str)
        .collect::<Vec<_>>()
        .join(" ");
    tracing::info!(
        target: "audit",
        action = action.as_str(),
        account_id = account.as_str(),
        token_ids,
        caller = &*actor.caller,
        request_id = actor.request_id.as_str(),
        "audit"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_refuse_anything_else() {
        let id = EventId {
            ms: 1_700_000_000_123,
            seq: 4,
        };
        let page = AuditPageRequest::parse(7, &id.encode_cursor()).unwrap();
        assert_eq!(
            page,
            AuditPageRequest {
                size: 7,
                after: Some(id)
            }
        );
        assert_eq!(AuditPageRequest::parse(0, "").unwrap().size, 100);
        assert_eq!(AuditPageRequest::parse(1 << 30, "").unwrap().size, 500);
        assert_eq!(
            AuditPageRequest::parse(-1, "").unwrap_err().field,
            "page_size"
        );
        let list_token = crate::domain::ListCursor {
            created_at: UnixMillis(1),
            token_id: TokenId::parse("abc0123456789xyz".into()).unwrap(),
        }
        .encode();
        for bad in ["x", "!!!", list_token.as_str(), "YXVkaXQxOjEtYQ"] {
            assert_eq!(
                AuditPageRequest::parse(0, bad).unwrap_err().field,
                "page_token",
                "{bad}"
            );
        }
    }

    #[test]
    fn request_ids_are_32_hex_characters_and_differ() {
        let (a, b) = (RequestId::new(), RequestId::new());
        assert_eq!(a.as_str().len(), 32);
        assert!(a.as_str().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn event_ids_order_by_time_then_sequence() {
        let parse = |s| EventId::parse(s).unwrap();
        assert!(parse("5-1") > parse("5-0"));
        assert!(parse("6-0") > parse("5-9"));
        assert_eq!(parse("12-3").to_string(), "12-3");
        assert!(EventId::parse("12").is_none());
    }
}
