#!lua flags=allow-oom
-- Revoke one token of one account, atomically.
--
-- KEYS[1]  the account's index
-- KEYS[2]  the token's hash
-- ARGV[1]  token id
-- ARGV[2]  account id
-- ARGV[3..] the key ids whose records can verify ('' = plain SHA-256)
-- then the audit fragment's key and arguments (audit.lua)
-- Returns  1 when a live token of this account was revoked, else 0 (a
--          token whose key id is not in ARGV[3..] is removed all the same,
--          but it was not live); a Revoke event is appended only for 1
--
-- allow-oom: freeing memory must keep working when Redis is full.

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
for i = 3, #ARGV do
  if ARGV[i] == kid then
    audit('Revoke', {ARGV[1]})
    return 1
  end
end
return 0
