#!lua flags=allow-oom
-- Revoke every token of an account, atomically. Token keys must be passed in
-- KEYS (Redis Cluster), so the caller reads the index first and this script
-- refuses if the index changed in between; the caller then reads again.
--
-- KEYS[1]      the account's index
-- KEYS[2..]    the hashes of those members that are token ids
-- ARGV[1..]    the index members as returned by ZRANGE 0 -1
-- Returns      the number of live tokens revoked, or -1 when the index no
--              longer matches ARGV (nothing was changed)
--
-- allow-oom: freeing memory must keep working when Redis is full.

local members = redis.call('ZRANGE', KEYS[1], 0, -1)
if #members ~= #ARGV then
  return -1
end
for i = 1, #members do
  if members[i] ~= ARGV[i] then
    return -1
  end
end
local revoked = 0
for i = 2, #KEYS do
  revoked = revoked + redis.call('DEL', KEYS[i])
end
redis.call('DEL', KEYS[1])
return revoked
