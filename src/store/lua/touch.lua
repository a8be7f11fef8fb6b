-- Record the last use of a token, only if it still exists: a plain HSET on a
-- revoked or expired token would recreate its key without an expiry.
--
-- KEYS[1]  the token's hash
-- ARGV[1]  time of use, Unix ms
-- Returns  1 when recorded, 0 when the token is gone

if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], 'used', ARGV[1])
return 1
