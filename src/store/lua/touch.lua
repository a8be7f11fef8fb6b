#!lua
-- Record the last use of a token at Redis's TIME, only if it still exists:
-- a plain HSET on a revoked or expired token would recreate its key without
-- an expiry.
--
-- Several instances (or concurrent requests) may race to record the same
-- use: only the first within ARGV[1] ms writes.
--
-- KEYS[1]  the token's hash
-- ARGV[1]  minimum interval between writes, ms
-- Returns  1 when recorded, 0 when the token is gone or was just recorded
--
-- Declared a writer without allow-oom: a full Redis refuses it up front.

if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local used = tonumber(redis.call('HGET', KEYS[1], 'used') or '0') or 0
if now - used < tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 'used', string.format('%.0f', now))
return 1
