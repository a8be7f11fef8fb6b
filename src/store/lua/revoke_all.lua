#!lua flags=allow-oom
-- Revoke every token of an account, atomically. Token keys must be passed in
-- KEYS (Redis Cluster), so the caller reads the index first and this script
-- refuses if the index changed in between; the caller then reads again.
--
-- KEYS[1]      the account's index
-- KEYS[2]      the account's tombstone index
-- KEYS[3..]    for each member that is a token id, its hash then its
--              tombstone hash
-- ARGV[1]      how long a tombstone outlives the revocation, ms
-- ARGV[2]      n, how many key ids follow
-- ARGV[3..n+2] the key ids whose records can verify ('' = plain SHA-256)
-- ARGV[n+3..]  the index members as returned by ZRANGE 0 -1
--              then the audit fragment's key and arguments (audit.lua)
-- Returns      the ids of the live tokens revoked, or -1 when the index no
--              longer matches ARGV (nothing was changed, no event). Every
--              token is removed; one whose key id is not among the live
--              ones was not live and is not named. Each removed token's
--              tombstone is marked revoked at Redis's TIME and kept ARGV[1]
--              ms from then. A RevokeAll event naming the live ones is
--              appended whenever something may have changed (also for
--              none).
--
-- allow-oom: freeing memory must keep working when Redis is full.
--
-- The removed tokens' ids are published, space-separated, on
-- `<prefix>:invalidate` (the prefix is KEYS[1]'s part before `:{`), in the
-- same atomic step, so every patd instance drops them from its cache.

-- An index that is not a sorted set (written by hand, corrupt) names no
-- token: the caller has revoked the account's tokens one by one after
-- scanning for them, and this removes the index.
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'zset' and kind ~= 'none' then
  redis.call('DEL', KEYS[1])
  audit('RevokeAll', {})
  return {}
end
local n = tonumber(ARGV[2])
local live_keys = {}
for i = 3, n + 2 do
  live_keys[ARGV[i]] = true
end
local members = redis.call('ZRANGE', KEYS[1], 0, -1)
if #members ~= #ARGV - n - 2 then
  return -1
end
for i = 1, #members do
  if members[i] ~= ARGV[n + 2 + i] then
    return -1
  end
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local now_ms = string.format('%.0f', now)
local gone = string.format('%.0f', now + tonumber(ARGV[1]))
local revoked = {}
local removed = {}
local ended = 0
for i = 3, #KEYS, 2 do
  local kid = redis.call('HGET', KEYS[i], 'kid') or ''
  if redis.call('DEL', KEYS[i]) == 1 then
    removed[#removed + 1] = string.match(KEYS[i], '([^:]+)$')
    if live_keys[kid] then
      -- The token id is the key's last part (ids never hold ':').
      revoked[#revoked + 1] = string.match(KEYS[i], '([^:]+)$')
    end
    if redis.call('EXISTS', KEYS[i + 1]) == 1 then
      redis.call('HSET', KEYS[i + 1], 'end', 'revoked', 'ended', now_ms)
      redis.call('PEXPIREAT', KEYS[i + 1], gone)
      redis.call('ZADD', KEYS[2], gone, string.match(KEYS[i + 1], '([^:]+)$'))
      ended = ended + 1
    end
  end
end
if ended > 0 then
  local kept = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
  redis.call('PEXPIREAT', KEYS[2], kept[2])
end
redis.call('DEL', KEYS[1])
if #removed > 0 then
  redis.call('PUBLISH', string.match(KEYS[1], '^(.-):{') .. ':invalidate',
    table.concat(removed, ' '))
end
audit('RevokeAll', revoked)
return revoked
