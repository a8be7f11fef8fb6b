#!lua
-- Record the last use of a token, only if it still exists: a plain HSET on a
-- revoked or expired token would recreate its key without an expiry.
--
-- Several instances (or concurrent requests) may race to record the same
-- use: only the first within ARGV[2] ms writes.
--
-- KEYS[1]  the token's hash
-- ARGV[1]  time of use, Unix ms
-- ARGV[2]  minimum interval between writes, ms
-- Returns  1 when recorded, 0 when the token is gone or was just recorded
--
-- Declared a writer without allow-oom: a full Redis refuses it up front.

if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local used = tonumber(redis.call('HGET', KEYS[1], 'used') or '0') or 0
if tonumber(ARGV[1]) - used < tonumber(ARGV[2]) then
  return 0
end
redis.call('HSET', KEYS[1], 'used', ARGV[1])
return 1
