#!lua
-- Seal a token just issued or rotated in: store its record MAC (computed
-- by patd under the digest key, over the times this record got from
-- Redis's clock), only if the record still exists with those times. It
-- never recreates a record that was revoked or expired in between (a
-- plain HSET would, without an expiry), and never seals another record
-- written under the same id.
--
-- KEYS[1]  the token's hash
-- ARGV[1]  token id                ARGV[2]  created, Unix ms
-- ARGV[3]  expires, Unix ms        ARGV[4]  the MAC (hex)
-- Returns  1 when sealed, 0 when the record is gone or not the one issued
--
-- The token id is published on `<prefix>:invalidate` (the prefix is
-- KEYS[1]'s part before `:{`), so no instance's cache keeps a copy of the
-- record read before its seal. No audit event: the Issue's or Rotate's
-- stands for it.
--
-- Declared a writer without allow-oom: a full Redis refuses it up front,
-- and patd undoes the Issue.

local record = redis.call('HMGET', KEYS[1], 'created', 'expires')
if record[1] ~= ARGV[2] or record[2] ~= ARGV[3] then
  return 0
end
redis.call('HSET', KEYS[1], 'mac', ARGV[4])
redis.call('PUBLISH', string.match(KEYS[1], '^(.-):{') .. ':invalidate', ARGV[1])
return 1
