#!lua flags=allow-oom
-- Revoke one token of one account, atomically.
--
-- KEYS[1]  the account's index
-- KEYS[2]  the token's hash
-- ARGV[1]  token id
-- Returns  1 when a live token of this account was revoked, else 0
--
-- allow-oom: freeing memory must keep working when Redis is full.

if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then
  -- Not this account's token: leave any record of that id alone.
  return 0
end
return redis.call('DEL', KEYS[2])
