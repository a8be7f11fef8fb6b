//! Token values: the public wire format ([`format`]) and the digests kept
//! at rest instead of the values ([`digest`]).

mod digest;
mod format;

pub use self::digest::{
    HashKeyError, KeyId, LiveKeys, RecordFields, RecordMac, TokenDigest, TokenHasher,
};
pub(crate) use self::format::push_random_base62;
pub use self::format::{
    CHECKSUM_LEN, MAX_PREFIX_LEN, ParseError, ParsedToken, PlainToken, PrefixError, SECRET_LEN,
    TokenFormat,
};
/// Re-exported: the token id's length is part of the token format.
pub use crate::domain::TOKEN_ID_LEN;
