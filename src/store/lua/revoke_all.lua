#!lua flags=allow-oom
-- Revoke every token of an account, atomically. Token keys must be passed in
-- KEYS (Redis Cluster), so the caller reads the index first and this script
-- refuses if the index changed in between; the caller then reads again.
--
-- KEYS[1]      the account's index
-- KEYS[2..]    the hashes of those members that are token ids
-- ARGV[1]      n, how many key ids follow
-- ARGV[2..n+1] the key ids whose records can verify ('' = plain SHA-256)
-- ARGV[n+2..]  the index members as returned by ZRANGE 0 -1
--              then the audit fragment's key and arguments (audit.lua)
-- Returns      the ids of the live tokens revoked, or -1 when the index no
--              longer matches ARGV (nothing was changed, no event). Every
--              token is removed; one whose key id is not among the live
--              ones was not live and is not named. A RevokeAll event naming
--              the live ones is appended whenever something may have
--              changed (also for none).
--
-- allow-oom: freeing memory must keep working when Redis is full.

-- An index that is not a sorted set (written by hand, corrupt) names no
-- token: the caller has revoked the account's tokens one by one after
-- scanning for them, and this removes the index.
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'zset' and kind ~= 'none' then
  redis.call('DEL', KEYS[1])
  audit('RevokeAll', {})
  return {}
end
local n = tonumber(ARGV[1])
local live_keys = {}
for i = 2, n + 1 do
  live_keys[ARGV[i]] = true
end
local members = redis.call('ZRANGE', KEYS[1], 0, -1)
if #members ~= #ARGV - n - 1 then
  return -1
end
for i = 1, #members do
  if members[i] ~= ARGV[n + 1 + i] then
    return -1
  end
end
local revoked = {}
for i = 2, #KEYS do
  local kid = redis.call('HGET', KEYS[i], 'kid') or ''
  if redis.call('DEL', KEYS[i]) == 1 and live_keys[kid] then
    -- The token id is the key's last part (ids never hold ':').
    revoked[#revoked + 1] = string.match(KEYS[i], '([^:]+)$')
  end
end
redis.call('DEL', KEYS[1])
audit('RevokeAll', revoked)
return revoked
