#!lua flags=allow-oom
-- Revoke one token of one account, atomically.
--
-- KEYS[1]  the account's index
-- KEYS[2]  the token's hash
-- KEYS[3]  the account's tombstone index
-- KEYS[4]  the token's tombstone hash
-- ARGV[1]  token id
-- ARGV[2]  account id
-- ARGV[3]  how long the tombstone outlives the revocation, ms
-- ARGV[4]  the audit event's action: 'Revoke' (by id) or 'RevokeToken'
--          (by value); the RPC that asked, named as audit::AuditAction does
-- ARGV[5..] the key ids whose records can verify ('' = plain SHA-256)
-- then the audit fragment's key and arguments (audit.lua)
-- Returns  1 when a live token of this account was revoked, else 0 (a
--          token whose key id is not in ARGV[5..] is removed all the same,
--          but it was not live). A removed token's tombstone is marked
--          revoked at Redis's TIME and kept ARGV[3] ms from then. An event
--          (action ARGV[4]) is appended only for 1.
--
-- allow-oom: freeing memory must keep working when Redis is full.
--
-- A removed token's id is published on `<prefix>:invalidate` (the prefix is
-- KEYS[1]'s part before `:{`), in the same atomic step, so every patd
-- instance drops it from its introspection cache.

-- A revocation must never be blocked by bad data next to it: when the
-- index is not a sorted set (or is gone), the record's own `account` field
-- says whose token it is.
local index = redis.call('TYPE', KEYS[1])['ok']
if index == 'zset' then
  if redis.call('ZREM', KEYS[1], ARGV[1]) == 0
    and redis.call('HGET', KEYS[2], 'account') ~= ARGV[2] then
    -- Not this account's token: leave any record of that id alone.
    return 0
  end
elseif redis.call('HGET', KEYS[2], 'account') ~= ARGV[2] then
  return 0
end
local kid = redis.call('HGET', KEYS[2], 'kid') or ''
if redis.call('DEL', KEYS[2]) == 0 then
  return 0
end
redis.call('PUBLISH', string.match(KEYS[1], '^(.-):{') .. ':invalidate', ARGV[1])
if redis.call('EXISTS', KEYS[4]) == 1 then
  local time = redis.call('TIME')
  local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
  local gone = string.format('%.0f', now + tonumber(ARGV[3]))
  redis.call('HSET', KEYS[4], 'end', 'revoked', 'ended', string.format('%.0f', now))
  redis.call('PEXPIREAT', KEYS[4], gone)
  redis.call('ZADD', KEYS[3], gone, ARGV[1])
  local kept = redis.call('ZRANGE', KEYS[3], -1, -1, 'WITHSCORES')
  redis.call('PEXPIREAT', KEYS[3], kept[2])
end
for i = 5, #ARGV do
  if ARGV[i] == kid then
    audit(ARGV[4], {ARGV[1]})
    return 1
  end
end
return 0
