//! Validated domain types. Transport code parses raw input into these at the
//! edge; past that point a bare `String` never stands for a domain value.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest as _, Sha256};
use thiserror::Error;

/// Characters of the shard tag: 62^3 tags spread accounts over all slots.
pub const TAG_LEN: usize = 3;
/// Characters of a token id: the tag plus 13 random characters (77 bits).
pub const TOKEN_ID_LEN: usize = 16;

/// Most bytes in an account id.
pub const MAX_ACCOUNT_ID_BYTES: usize = 128;
/// Most characters in a note.
pub const MAX_NOTE_CHARS: usize = 256;
/// Most scopes on one token.
pub const MAX_SCOPES: usize = 32;
/// Most bytes in one scope.
pub const MAX_SCOPE_BYTES: usize = 64;

/// A request field that failed validation. `field` is the public field name,
/// so the caller knows exactly what to fix.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("{field}: {reason}")]
pub struct FieldError {
    pub field: &'static str,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}

/// The owner of tokens: 1..=128 bytes of UTF-8 in Unicode Normalization
/// Form C (UAX #15; other forms are normalized, so `jos\u{e9}` and
/// `jose\u{301}` are one account), without control, invisible or
/// bidirectional-control characters and without leading or trailing
/// whitespace: two ids that look alike on a screen are the same id, or one
/// of them is refused.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountId(String);

/// Characters that render as nothing or reorder text (zero-width spaces and
/// joiners, bidirectional embeddings, overrides and isolates, the word
/// joiner and invisible operators, the byte-order mark, the soft hyphen):
/// in an identifier they only serve to make two ids look alike.
fn is_invisible_or_bidi(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{061C}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{2069}'
            | '\u{FEFF}'
    )
}

impl AccountId {
    /// # Errors
    /// Empty, longer than 128 bytes (after NFC), holding a control,
    /// invisible or bidirectional-control character, or starting or ending
    /// with whitespace.
    pub fn parse(raw: String) -> Result<Self, FieldError> {
        use unicode_normalization::UnicodeNormalization as _;
        use unicode_normalization::is_nfc;
        const FIELD: &str = "account_id";
        let raw = if is_nfc(&raw) {
            raw
        } else {
            raw.nfc().collect()
        };
        if raw.is_empty() {
            return Err(FieldError::new(FIELD, "must not be empty"));
        }
        if raw.len() > MAX_ACCOUNT_ID_BYTES {
            return Err(FieldError::new(
                FIELD,
                format!("must be at most {MAX_ACCOUNT_ID_BYTES} bytes"),
            ));
        }
        if raw.chars().any(char::is_control) {
            return Err(FieldError::new(
                FIELD,
                "must not contain control characters",
            ));
        }
        if raw.chars().any(is_invisible_or_bidi) {
            return Err(FieldError::new(
                FIELD,
                "must not contain invisible or bidirectional-control characters",
            ));
        }
        // A proxy or a console that trims would show " acct-admin " as
        // someone else's account.
        if raw.trim() != raw {
            return Err(FieldError::new(
                FIELD,
                "must not start or end with whitespace",
            ));
        }
        Ok(Self(raw))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The shard tag shared by this account's keys and token ids.
    pub fn shard_tag(&self) -> String {
        shard_tag(&self.0)
    }
}

/// The shard tag of an account: both of its Redis keys and every token id it
/// owns start with it, so they share one Redis Cluster slot. `TAG_LEN`
/// base62 characters from the account id's SHA-256.
pub fn shard_tag(account: &str) -> String {
    let hash = Sha256::digest(account.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash[..8]);
    let n = u64::from_be_bytes(first) % 62u64.pow(TAG_LEN as u32);
    format!("{:0>width$}", base62::encode(n), width = TAG_LEN)
}

/// The public id of a token: 16 base62 characters, the first three being
/// the owning account's shard tag.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenId(String);

impl TokenId {
    /// # Errors
    /// Anything but 16 base62 characters.
    pub fn parse(raw: String) -> Result<Self, FieldError> {
        if raw.len() != TOKEN_ID_LEN || !raw.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(FieldError::new(
                "token_id",
                format!("must be {TOKEN_ID_LEN} base62 characters"),
            ));
        }
        Ok(Self(raw))
    }

    /// For ids cut out of a token value that already passed its checks.
    pub(crate) fn from_trusted(raw: &str) -> Self {
        Self(raw.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The shard tag the id carries.
    pub fn shard_tag(&self) -> &str {
        &self.0[..TAG_LEN]
    }
}

/// A free-text label: at most 256 characters, no control characters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Note(String);

impl Note {
    /// # Errors
    /// Longer than 256 characters, or holding a control character.
    pub fn parse(raw: String) -> Result<Self, FieldError> {
        if raw.chars().count() > MAX_NOTE_CHARS {
            return Err(FieldError::new(
                "note",
                format!("must be at most {MAX_NOTE_CHARS} characters"),
            ));
        }
        if raw.chars().any(char::is_control) {
            return Err(FieldError::new(
                "note",
                "must not contain control characters",
            ));
        }
        Ok(Self(raw))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The scopes of a token: at most 32, each `[a-z0-9:._-]{1,64}`, kept sorted
/// and without duplicates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scopes(Vec<String>);

impl Scopes {
    /// # Errors
    /// Too many scopes, or one that is empty, too long or outside the
    /// alphabet.
    pub fn parse(raw: Vec<String>) -> Result<Self, FieldError> {
        if raw.len() > MAX_SCOPES {
            return Err(FieldError::new(
                "scopes",
                format!("at most {MAX_SCOPES} scopes"),
            ));
        }
        for (i, scope) in raw.iter().enumerate() {
            let ok = !scope.is_empty()
                && scope.len() <= MAX_SCOPE_BYTES
                && scope
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b":._-".contains(&b));
            if !ok {
                return Err(FieldError::new(
                    "scopes",
                    format!("scopes[{i}] must match [a-z0-9:._-]{{1,{MAX_SCOPE_BYTES}}}"),
                ));
            }
        }
        let mut scopes = raw;
        scopes.sort();
        scopes.dedup();
        Ok(Self(scopes))
    }

    /// Reads the space-separated stored form, which only ever held valid
    /// scopes.
    pub(crate) fn from_stored(joined: &str) -> Self {
        Self(joined.split_whitespace().map(str::to_owned).collect())
    }

    /// Space-separated, as stored and as sent to gateways.
    pub fn joined(&self) -> String {
        self.0.join(" ")
    }

    pub fn as_slice(&self) -> &[String] {
        &self.0
    }

    /// Whether every one of `required` is held.
    pub fn contains_all(&self, required: &Scopes) -> bool {
        required.0.iter().all(|r| self.0.binary_search(r).is_ok())
    }
}

/// Milliseconds since the Unix epoch: the one time unit of the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnixMillis(pub u64);

impl UnixMillis {
    pub fn now() -> Self {
        Self::from_system_time(SystemTime::now())
    }

    pub fn from_system_time(t: SystemTime) -> Self {
        let ms = t
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        Self(u64::try_from(ms).unwrap_or(u64::MAX))
    }

    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0)
    }

    pub fn saturating_add(self, d: Duration) -> Self {
        let add = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Self(self.0.saturating_add(add))
    }
}

/// What the caller asked for as an expiry, before the lifetime policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpiryRequest {
    /// Neither `ttl` nor `expires_at`: the server default applies.
    Default,
    /// A lifetime from now; may be zero or negative as sent.
    Ttl { seconds: i64, nanos: i32 },
    /// An absolute expiry.
    At(UnixMillis),
}

/// A requested lifetime that passed every check needing no clock. The
/// store turns it into an absolute expiry on its own clock
/// ([`Expiry::resolve`]), so every instance decides expiry the same way
/// whatever its own clock says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Whole milliseconds from the store's now: at least 1, at most the
    /// maximum lifetime.
    AfterMillis(u64),
    /// An absolute instant, from the client's clock: the store checks that
    /// it lies in the future and within the maximum lifetime.
    At(UnixMillis),
}

/// Why a store refused an [`Expiry`] at its own now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpiryRefusal {
    /// At or before the store's now.
    NotInFuture,
    /// Beyond the store's now plus the maximum lifetime.
    BeyondMax,
}

impl Expiry {
    /// The absolute expiry at the store's `now`. The Redis store's
    /// `issue.lua` applies this same rule to Redis's `TIME`.
    ///
    /// # Errors
    /// An instant not after `now`, or after `now + max_ttl`.
    pub fn resolve(self, now: UnixMillis, max_ttl: Duration) -> Result<UnixMillis, ExpiryRefusal> {
        let at = match self {
            Expiry::AfterMillis(ms) => UnixMillis(now.0.saturating_add(ms)),
            Expiry::At(at) => at,
        };
        if at <= now {
            return Err(ExpiryRefusal::NotInFuture);
        }
        if at > now.saturating_add(max_ttl) {
            return Err(ExpiryRefusal::BeyondMax);
        }
        Ok(at)
    }

    /// The request field it came from.
    pub fn field(self) -> &'static str {
        match self {
            Expiry::AfterMillis(_) => "ttl",
            Expiry::At(_) => "expires_at",
        }
    }
}

/// Server-wide lifetime rules.
#[derive(Debug, Clone, Copy)]
pub struct LifetimePolicy {
    pub default_ttl: Duration,
    pub max_ttl: Duration,
}

impl LifetimePolicy {
    /// Checks what needs no clock: a ttl must be positive, at least 1 ms
    /// and at most the maximum lifetime; an `expires_at` is left to the
    /// store's clock.
    ///
    /// # Errors
    /// A ttl that is not positive, under 1 ms or beyond the maximum.
    pub fn request(&self, req: ExpiryRequest) -> Result<Expiry, FieldError> {
        let d = match req {
            ExpiryRequest::Default => self.default_ttl,
            ExpiryRequest::Ttl { seconds, nanos } => {
                if seconds < 0 || nanos < 0 || (seconds == 0 && nanos == 0) {
                    return Err(FieldError::new("ttl", "must be positive"));
                }
                Duration::new(seconds.unsigned_abs(), nanos.unsigned_abs())
            }
            ExpiryRequest::At(at) => return Ok(Expiry::At(at)),
        };
        if d > self.max_ttl {
            return Err(FieldError::new(
                "ttl",
                format!("must be at most {}", format_duration(self.max_ttl)),
            ));
        }
        match u64::try_from(d.as_millis()) {
            Ok(0) => Err(FieldError::new("ttl", "must be at least 1ms from now")),
            Ok(ms) => Ok(Expiry::AfterMillis(ms)),
            Err(_) => Err(FieldError::new(
                "ttl",
                format!("must be at most {}", format_duration(self.max_ttl)),
            )),
        }
    }

    /// The answer to a store's refusal of `expiry`, naming its field.
    pub fn refused(&self, expiry: Expiry, why: ExpiryRefusal) -> FieldError {
        let reason = match why {
            ExpiryRefusal::NotInFuture => "must be in the future".to_owned(),
            ExpiryRefusal::BeyondMax => {
                format!("must be at most {} from now", format_duration(self.max_ttl))
            }
        };
        FieldError::new(expiry.field(), reason)
    }

    /// [`Self::request`] then [`Expiry::resolve`] at `now`: the whole rule,
    /// as a store applies it on its clock.
    ///
    /// # Errors
    /// As those two.
    pub fn resolve(&self, req: ExpiryRequest, now: UnixMillis) -> Result<UnixMillis, FieldError> {
        let expiry = self.request(req)?;
        expiry
            .resolve(now, self.max_ttl)
            .map_err(|why| self.refused(expiry, why))
    }
}

/// Tokens in a List page when the request names no size.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// Most tokens in one List page: at the longest notes and the most scopes
/// a page stays near 1.5 MiB, well under gRPC's customary 4 MiB limit.
pub const MAX_PAGE_SIZE: usize = 500;

/// Where a List page starts: after the token created at `created_at` with
/// id `token_id`, in the listing's order (newest first, then by id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListCursor {
    pub created_at: UnixMillis,
    pub token_id: TokenId,
}

impl ListCursor {
    /// The cursor of the last token of a page.
    pub fn after(info: &TokenInfo) -> Self {
        Self {
            created_at: info.created_at,
            token_id: info.token_id.clone(),
        }
    }

    /// Whether `info` comes after this cursor in the listing's order.
    pub fn precedes(&self, info: &TokenInfo) -> bool {
        info.created_at < self.created_at
            || (info.created_at == self.created_at && info.token_id > self.token_id)
    }

    /// The opaque `page_token`: base64url of `v1:<created>:<token id>`.
    pub fn encode(&self) -> String {
        use base64::Engine as _;
        let raw = format!("v1:{}:{}", self.created_at.0, self.token_id.as_str());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    }

    /// # Errors
    /// Anything [`ListCursor::encode`] did not make.
    pub fn decode(page_token: &str) -> Result<Self, FieldError> {
        use base64::Engine as _;
        let bad = || FieldError::new("page_token", "is not a page token from this listing");
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(page_token)
            .map_err(|_| bad())?;
        let raw = String::from_utf8(raw).map_err(|_| bad())?;
        let mut parts = raw.splitn(3, ':');
        let (Some("v1"), Some(created), Some(id)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        Ok(Self {
            created_at: UnixMillis(created.parse().map_err(|_| bad())?),
            token_id: TokenId::parse(id.to_owned()).map_err(|_| bad())?,
        })
    }
}

/// One page of a List: how many, and after which token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    pub size: usize,
    pub after: Option<ListCursor>,
}

impl PageRequest {
    /// # Errors
    /// A negative `page_size`, or a `page_token` this listing did not make.
    pub fn parse(page_size: i32, page_token: &str) -> Result<Self, FieldError> {
        let size = match usize::try_from(page_size) {
            Err(_) => return Err(FieldError::new("page_size", "must not be negative")),
            Ok(0) => DEFAULT_PAGE_SIZE,
            Ok(n) => n.min(MAX_PAGE_SIZE),
        };
        let after = match page_token {
            "" => None,
            token => Some(ListCursor::decode(token)?),
        };
        Ok(Self { size, after })
    }
}

/// A duration the way operators write it (`365d`, `36h`, `90s`, `1d 12h`):
/// days, hours, minutes, seconds and milliseconds, largest first, zero
/// parts left out. humantime's own format counts months of 30.44 days and
/// prints 365 days as `11months 30days 3h 50m 24s`.
pub fn format_duration(d: Duration) -> String {
    const UNITS: [(u128, &str); 5] = [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1_000, "s"),
        (1, "ms"),
    ];
    let mut left = d.as_millis();
    if left == 0 {
        return "0s".to_owned();
    }
    let mut parts = Vec::new();
    for (size, unit) in UNITS {
        if left >= size {
            parts.push(format!("{}{unit}", left / size));
            left %= size;
        }
    }
    parts.join(" ")
}

/// The public, non-secret facts of one token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    pub token_id: TokenId,
    pub account_id: AccountId,
    pub note: Note,
    pub scopes: Scopes,
    pub created_at: UnixMillis,
    pub expires_at: UnixMillis,
    pub last_used_at: Option<UnixMillis>,
}

/// Where a token is in its life, on the store's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenState {
    /// Live.
    Active,
    /// Live, but rotated: it ends when its grace window closes.
    Rotating,
    /// Reached its expiry.
    Expired,
    /// Revoked (Revoke, RevokeAll, RevokeToken).
    Revoked,
    /// Replaced by Rotate, its grace window over.
    Rotated,
}

impl TokenState {
    /// Whether a token in this state is live (accepted, listed by default).
    pub fn is_live(self) -> bool {
        matches!(self, TokenState::Active | TokenState::Rotating)
    }
}

/// A token as List shows it: its facts, its state and when it ended (or,
/// rotating, will end). A token listed from its tombstone has no note,
/// scopes or last use: the tombstone keeps none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedToken {
    pub info: TokenInfo,
    pub state: TokenState,
    pub ended_at: Option<UnixMillis>,
}

/// Why a token was revoked by its value (`RevokeToken.reason`): free text
/// held to the note's rules (at most 256 characters, no control
/// characters). It goes to the log line only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevocationReason(String);

impl RevocationReason {
    /// # Errors
    /// Longer than 256 characters, or holding a control character; the
    /// error names the field `reason`.
    pub fn parse(raw: String) -> Result<Self, FieldError> {
        Note::parse(raw)
            .map(|note| Self(note.0))
            .map_err(|e| FieldError::new("reason", e.reason))
    }

    /// The text with every occurrence of `value` replaced by `<token>`: a
    /// responder pasting the leaked value into the reason must not put it
    /// in the log.
    pub fn redacting(self, value: &str) -> Self {
        if value.is_empty() {
            return self;
        }
        Self(self.0.replace(value, "<token>"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The longest rotation grace window accepted when none is configured.
pub const DEFAULT_MAX_ROTATION_GRACE: Duration = Duration::from_secs(7 * 86_400);

/// A validated rotation grace window: how long a rotated token stays
/// active, at most `PATD_MAX_ROTATION_GRACE`.
///
/// # Errors
/// A negative duration, nanos out of range, or above `max`; the error
/// names the field `grace`.
pub fn rotation_grace(seconds: i64, nanos: i32, max: Duration) -> Result<Duration, FieldError> {
    const FIELD: &str = "grace";
    if seconds < 0 || nanos < 0 {
        return Err(FieldError::new(FIELD, "must not be negative"));
    }
    if nanos >= 1_000_000_000 {
        return Err(FieldError::new(FIELD, "nanos out of range"));
    }
    let d = Duration::new(seconds.unsigned_abs(), nanos.unsigned_abs());
    if d > max {
        return Err(FieldError::new(
            FIELD,
            format!("must be at most {}", format_duration(max)),
        ));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotation_grace_is_bounded_and_never_negative() {
        let max = Duration::from_secs(7 * 86_400);
        assert_eq!(rotation_grace(0, 0, max).unwrap(), Duration::ZERO);
        assert_eq!(rotation_grace(60, 0, max).unwrap(), Duration::from_secs(60));
        assert_eq!(rotation_grace(7 * 86_400, 0, max).unwrap(), max);
        let e = rotation_grace(7 * 86_400, 1, max).unwrap_err();
        assert_eq!(e.field, "grace");
        assert!(e.reason.contains("7d"), "{e}");
        assert_eq!(rotation_grace(-1, 0, max).unwrap_err().field, "grace");
    }

    #[test]
    fn a_revocation_reason_is_bounded_and_never_holds_the_value() {
        assert_eq!(
            RevocationReason::parse("x".repeat(257)).unwrap_err().field,
            "reason"
        );
        assert!(RevocationReason::parse("a\nb".into()).is_err());
        let r = RevocationReason::parse("found pat_abc in a log, pat_abc".into()).unwrap();
        assert_eq!(
            r.redacting("pat_abc").as_str(),
            "found <token> in a log, <token>"
        );
    }

    #[test]
    fn account_ids_are_bounded_and_free_of_control_characters() {
        assert!(AccountId::parse("acct_42".into()).is_ok());
        assert!(AccountId::parse("ü".repeat(64)).is_ok());
        assert_eq!(
            AccountId::parse(String::new()).unwrap_err().field,
            "account_id"
        );
        assert!(AccountId::parse("a".repeat(129)).is_err());
        assert!(AccountId::parse("a\nb".into()).is_err());
        assert!(AccountId::parse("a\u{7f}".into()).is_err());
    }

    #[test]
    fn account_ids_that_look_alike_are_one_id_or_refused() {
        let nfc = AccountId::parse("jos\u{e9}".into()).unwrap();
        let nfd = AccountId::parse("jose\u{301}".into()).unwrap();
        assert_eq!(nfc, nfd);
        assert_eq!(nfc.shard_tag(), nfd.shard_tag());
        for bad in [
            " acct-admin ",
            "acct-admin ",
            "\u{3000}acct",
            "acct\u{a0}",
            "acct-\u{202e}nimda",
            "acct\u{200b}admin",
            "\u{feff}acct",
            "acct\u{2066}x\u{2069}",
        ] {
            let e = AccountId::parse(bad.into()).unwrap_err();
            assert_eq!(e.field, "account_id", "{bad:?}");
        }
        assert!(AccountId::parse("acct admin".into()).is_ok());
    }

    #[test]
    fn notes_are_bounded_in_characters_not_bytes() {
        assert!(Note::parse("é".repeat(256)).is_ok());
        assert_eq!(Note::parse("é".repeat(257)).unwrap_err().field, "note");
        assert!(Note::parse("tab\there".into()).is_err());
        assert!(Note::parse(String::new()).is_ok());
    }

    #[test]
    fn scopes_are_sorted_deduplicated_and_checked() {
        let s = Scopes::parse(vec!["b:write".into(), "a.read".into(), "b:write".into()]).unwrap();
        assert_eq!(s.as_slice(), ["a.read", "b:write"]);
        assert_eq!(s.joined(), "a.read b:write");
        assert_eq!(Scopes::from_stored(&s.joined()), s);
        assert!(Scopes::parse(vec!["Upper".into()]).is_err());
        assert!(Scopes::parse(vec![String::new()]).is_err());
        assert!(Scopes::parse(vec!["a b".into()]).is_err());
        assert!(Scopes::parse(vec!["x".repeat(65)]).is_err());
        let many: Vec<String> = (0..33).map(|i| format!("s{i}")).collect();
        assert_eq!(Scopes::parse(many).unwrap_err().field, "scopes");
    }

    #[test]
    fn holding_scopes_means_holding_every_required_one() {
        let held = Scopes::parse(vec!["a".into(), "b".into()]).unwrap();
        assert!(held.contains_all(&Scopes::parse(vec!["b".into()]).unwrap()));
        assert!(held.contains_all(&Scopes::default()));
        assert!(!held.contains_all(&Scopes::parse(vec!["a".into(), "c".into()]).unwrap()));
    }

    #[test]
    fn token_ids_are_sixteen_base62_characters() {
        assert!(TokenId::parse("abcDEF0123456789".into()).is_ok());
        assert_eq!(
            TokenId::parse("short".into()).unwrap_err().field,
            "token_id"
        );
        assert!(TokenId::parse("abcDEF012345678-".into()).is_err());
    }

    fn policy() -> LifetimePolicy {
        LifetimePolicy {
            default_ttl: Duration::from_secs(30 * 86_400),
            max_ttl: Duration::from_secs(365 * 86_400),
        }
    }

    #[test]
    fn expiry_defaults_and_limits_follow_the_policy() {
        let now = UnixMillis(1_000_000);
        let p = policy();
        assert_eq!(
            p.resolve(ExpiryRequest::Default, now).unwrap(),
            now.saturating_add(p.default_ttl)
        );
        assert_eq!(
            p.resolve(
                ExpiryRequest::Ttl {
                    seconds: 60,
                    nanos: 0
                },
                now
            )
            .unwrap(),
            UnixMillis(1_060_000)
        );
        assert_eq!(
            p.resolve(ExpiryRequest::At(UnixMillis(2_000_000)), now)
                .unwrap(),
            UnixMillis(2_000_000)
        );
    }

    #[test]
    fn non_positive_past_or_too_long_expiries_are_refused() {
        let now = UnixMillis(1_000_000);
        let p = policy();
        let err = |r| p.resolve(r, now).unwrap_err().field;
        assert_eq!(
            err(ExpiryRequest::Ttl {
                seconds: 0,
                nanos: 0
            }),
            "ttl"
        );
        assert_eq!(
            err(ExpiryRequest::Ttl {
                seconds: -5,
                nanos: 0
            }),
            "ttl"
        );
        assert_eq!(
            err(ExpiryRequest::Ttl {
                seconds: 0,
                nanos: 1
            }),
            "ttl"
        );
        assert_eq!(
            err(ExpiryRequest::Ttl {
                seconds: 366 * 86_400,
                nanos: 0
            }),
            "ttl"
        );
        assert_eq!(
            err(ExpiryRequest::Ttl {
                seconds: i64::MAX,
                nanos: 0
            }),
            "ttl"
        );
        assert_eq!(err(ExpiryRequest::At(now)), "expires_at");
        assert_eq!(err(ExpiryRequest::At(UnixMillis(10))), "expires_at");
        let too_far = now.saturating_add(Duration::from_secs(366 * 86_400));
        assert_eq!(err(ExpiryRequest::At(too_far)), "expires_at");
    }

    #[test]
    fn only_the_stores_clock_places_an_expiry() {
        let p = policy();
        // No clock needed to accept a request: an instant goes to the store.
        assert_eq!(
            p.request(ExpiryRequest::At(UnixMillis(10))).unwrap(),
            Expiry::At(UnixMillis(10))
        );
        assert_eq!(
            p.request(ExpiryRequest::Ttl {
                seconds: 1,
                nanos: 500_000
            })
            .unwrap(),
            Expiry::AfterMillis(1000)
        );
        assert_eq!(
            p.request(ExpiryRequest::Ttl {
                seconds: 0,
                nanos: 999_999
            })
            .unwrap_err()
            .field,
            "ttl"
        );
        // The store's now decides.
        let max = p.max_ttl;
        let at = Expiry::At(UnixMillis(5_000));
        assert_eq!(at.resolve(UnixMillis(4_999), max), Ok(UnixMillis(5_000)));
        assert_eq!(
            at.resolve(UnixMillis(5_000), max),
            Err(ExpiryRefusal::NotInFuture)
        );
        let far = Expiry::At(UnixMillis(5_000).saturating_add(max));
        assert_eq!(
            far.resolve(UnixMillis(4_999), max),
            Err(ExpiryRefusal::BeyondMax)
        );
        assert_eq!(
            Expiry::AfterMillis(60_000).resolve(UnixMillis(7), max),
            Ok(UnixMillis(60_007))
        );
        let refused = p.refused(at, ExpiryRefusal::NotInFuture);
        assert_eq!(refused.field, "expires_at");
        assert_eq!(refused.reason, "must be in the future");
    }

    #[test]
    fn page_tokens_round_trip_and_refuse_anything_else() {
        let cursor = ListCursor {
            created_at: UnixMillis(1_700_000_000_000),
            token_id: TokenId::parse("abcDEF0123456789".into()).unwrap(),
        };
        let page = PageRequest::parse(7, &cursor.encode()).unwrap();
        assert_eq!(page.size, 7);
        assert_eq!(page.after, Some(cursor));
        assert_eq!(PageRequest::parse(0, "").unwrap().size, DEFAULT_PAGE_SIZE);
        assert_eq!(PageRequest::parse(1 << 30, "").unwrap().size, MAX_PAGE_SIZE);
        assert_eq!(PageRequest::parse(-1, "").unwrap_err().field, "page_size");
        for bad in ["x", "djE6MTp4", "!!", "djI6MTphYmNERUYwMTIzNDU2Nzg5"] {
            assert_eq!(PageRequest::parse(0, bad).unwrap_err().field, "page_token");
        }
    }

    #[test]
    fn durations_print_as_operators_write_them() {
        let day = 86_400;
        assert_eq!(format_duration(Duration::from_secs(365 * day)), "365d");
        assert_eq!(format_duration(Duration::from_secs(30 * day)), "30d");
        assert_eq!(format_duration(Duration::from_secs(36 * 3600)), "1d 12h");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1s 500ms");
        assert_eq!(format_duration(Duration::ZERO), "0s");
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
