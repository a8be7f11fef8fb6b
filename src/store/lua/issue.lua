#!lua
-- Issue one token, atomically: prune the account's expired ids, refuse at
-- the limit, write the record with its expiry, add it to the index.
--
-- KEYS[1]  the account's index (sorted set of token ids, scored by expiry)
-- KEYS[2]  the new token's hash
-- ARGV[1]  now, Unix ms            ARGV[2]  limit of live tokens
-- ARGV[3]  token id                ARGV[4]  expiry, Unix ms
-- ARGV[5]  account id              ARGV[6]  digest (hex)
-- ARGV[7]  note                    ARGV[8]  scopes, space-separated
-- ARGV[9]  created, Unix ms        ARGV[10] digest key id ('' = plain SHA-256)
-- Returns  1 issued, 0 limit reached, -1 token id already taken
--
-- Declared a writer without allow-oom: over maxmemory Redis refuses the
-- whole script up front (OOM) rather than after its first write.

redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  return -1
end
redis.call('HSET', KEYS[2],
  'account', ARGV[5], 'digest', ARGV[6], 'note', ARGV[7],
  'scopes', ARGV[8], 'created', ARGV[9], 'expires', ARGV[4])
if ARGV[10] ~= '' then
  redis.call('HSET', KEYS[2], 'kid', ARGV[10])
end
redis.call('PEXPIREAT', KEYS[2], ARGV[4])
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[3])
-- The index lives as long as its longest-lived token.
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], last[2])
return 1
