//! Redis key names: the one place that knows the layout
//! `<prefix>:{TAG}:t:<token_id>` (record), `<prefix>:{TAG}:a:<account_id>`
//! (index of live tokens), `<prefix>:{TAG}:x:<token_id>` (tombstone),
//! `<prefix>:{TAG}:h:<account_id>` (index of tombstones) and
//! `<prefix>:{TAG}:e:<account_id>` (the account's audit stream), and the
//! introspection cache's invalidation channel `<prefix>:invalidate`.
//! The `{TAG}` hash tag puts an account's index and all its token records in
//! one Redis Cluster slot, so every multi-key change is a single script.

use crate::domain::{AccountId, TokenId};

/// Key names under a configurable prefix (tests use a random one each).
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The hash of one token.
    pub fn token(&self, token_id: &TokenId) -> String {
        // Built by hand, not `format!`: every uncached Introspect makes one.
        let (tag, id) = (token_id.shard_tag(), token_id.as_str());
        let mut key = String::with_capacity(self.prefix.len() + tag.len() + id.len() + 6);
        key.push_str(&self.prefix);
        key.push_str(":{");
        key.push_str(tag);
        key.push_str("}:t:");
        key.push_str(id);
        key
    }

    /// The stream of an account's audit events (one entry per change,
    /// appended by the same script as the change).
    pub fn audit(&self, account: &AccountId) -> String {
        format!(
            "{}:{{{}}}:e:{}",
            self.prefix,
            account.shard_tag(),
            account.as_str()
        )
    }

    /// The tombstone of one token: what is kept of it after it ended.
    pub fn tombstone(&self, token_id: &TokenId) -> String {
        format!(
            "{}:{{{}}}:x:{}",
            self.prefix,
            token_id.shard_tag(),
            token_id.as_str()
        )
    }

    /// The sorted set of the ids of an account's tombstones, scored by when
    /// each tombstone goes (Unix ms).
    pub fn history(&self, account: &AccountId) -> String {
        format!(
            "{}:{{{}}}:h:{}",
            self.prefix,
            account.shard_tag(),
            account.as_str()
        )
    }

    /// The Pub/Sub channel on which the scripts that end or change a token
    /// publish its id, for every instance's cache. The scripts derive the
    /// same name from their first key (everything before `:{`).
    pub fn invalidations(&self) -> String {
        format!("{}:invalidate", self.prefix)
    }

    /// A key under the prefix that patd never writes: readiness reads it to
    /// prove an ACL's key pattern lets patd read its keys.
    pub fn probe(&self) -> String {
        format!("{}:{{probe}}:readiness", self.prefix)
    }

    /// A `SCAN MATCH` pattern for every token hash with the account's shard
    /// tag (other accounts' too: the caller checks each record's
    /// `account`). Glob characters of the prefix are escaped.
    pub fn token_pattern(&self, account: &AccountId) -> String {
        let mut prefix = String::with_capacity(self.prefix.len());
        for c in self.prefix.chars() {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                prefix.push('\\');
            }
            prefix.push(c);
        }
        format!("{prefix}:{{{}}}:t:*", account.shard_tag())
    }

    /// The sorted set of an account's token ids, scored by expiry.
    pub fn account(&self, account: &AccountId) -> String {
        format!(
            "{}:{{{}}}:a:{}",
            self.prefix,
            account.shard_tag(),
            account.as_str()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::TokenFormat;

    #[test]
    fn an_accounts_index_and_its_tokens_share_one_hash_tag() {
        let keys = Keys::new("patd");
        let account = AccountId::parse("acct-7".into()).unwrap();
        let (_, parsed) = TokenFormat::new("pat").unwrap().generate(&account);
        let tag = account.shard_tag();
        assert_eq!(keys.account(&account), format!("patd:{{{tag}}}:a:acct-7"));
        assert_eq!(keys.audit(&account), format!("patd:{{{tag}}}:e:acct-7"));
        assert_eq!(keys.history(&account), format!("patd:{{{tag}}}:h:acct-7"));
        assert_eq!(
            keys.tombstone(&parsed.token_id),
            format!("patd:{{{tag}}}:x:{}", parsed.token_id.as_str())
        );
        assert_eq!(
            keys.token(&parsed.token_id),
            format!("patd:{{{tag}}}:t:{}", parsed.token_id.as_str())
        );
    }

    #[test]
    fn the_prefix_is_configurable() {
        let id = TokenId::parse("abc0123456789xyz".into()).unwrap();
        assert_eq!(Keys::new("t-1").token(&id), "t-1:{abc}:t:abc0123456789xyz");
    }
}
