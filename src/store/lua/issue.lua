#!lua
-- Issue one token, atomically, on Redis's clock: resolve its expiry at
-- Redis's TIME, prune the account's expired ids, refuse at the limit of
-- live tokens, write the record with its expiry, add it to the index.
--
-- KEYS[1]  the account's index (sorted set of token ids, scored by expiry)
-- KEYS[2]  the new token's hash
-- KEYS[3]  the account's tombstone index (sorted set of token ids, scored
--          by when each tombstone goes)
-- KEYS[4]  the new token's tombstone hash
-- ARGV[1]  token id                ARGV[2]  account id
-- ARGV[3]  digest (hex)            ARGV[4]  note
-- ARGV[5]  scopes, space-separated ARGV[6]  digest key id ('' = plain SHA-256)
-- ARGV[7]  'ttl' or 'at'           ARGV[8]  ttl in ms, or expiry in Unix ms
-- ARGV[9]  longest lifetime, ms    ARGV[10] limit of live tokens
-- ARGV[11] how long a tombstone outlives its token's end, ms
-- ARGV[12..] the key ids whose records can verify ('' = plain SHA-256)
-- then the audit fragment's key and arguments (audit.lua); the token
-- fragment (token.lua) resolves the expiry and writes the token
-- Returns  {outcome, now, expiry}, times in Unix ms on Redis's clock;
--          outcome 1 issued, 0 limit reached, -1 token id already taken,
--          -2 expiry not in the future, -3 expiry beyond the longest lifetime
--          (the same rule as domain::Expiry::resolve); an Issue event is
--          appended only when issued
--
-- A live token has not expired and its record's key id is among ARGV[12..]:
-- a token whose key was removed can never verify, so it holds no slot. Its
-- record stays until it expires or is revoked (the key may come back). To
-- read those key ids the script opens the index's members' hashes; their
-- names share KEYS[2]'s hash tag, so they are in the declared keys' slot.
-- A rotated token (its `rotated` field set) is in its grace window at most:
-- it holds no slot either.
--
-- Declared a writer without allow-oom: over maxmemory Redis refuses the
-- whole script up front (OOM) rather than after its first write.

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local expires, refused = token_expiry(ARGV[7], ARGV[8], ARGV[9], now)
if not expires then
  return {refused, now, 0}
end
local limit = tonumber(ARGV[10])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= limit then
  -- At most ZCARD are live: count the ones that are.
  local live_keys = {}
  for i = 12, #ARGV do
    live_keys[ARGV[i]] = true
  end
  local stem = string.sub(KEYS[2], 1, #KEYS[2] - #ARGV[1])
  -- Only members with the account's shard tag (the first 3 characters of
  -- every id it owns) can be its tokens, and only their hashes share the
  -- declared keys' slot.
  local tag = string.sub(ARGV[1], 1, 3)
  local held = 0
  for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
    if string.sub(id, 1, 3) == tag then
      local record = redis.call('HMGET', stem .. id, 'expires', 'kid', 'rotated')
      if record[1] and tonumber(record[1]) and tonumber(record[1]) > now
          and live_keys[record[2] or ''] and not record[3] then
        held = held + 1
        if held >= limit then
          return {0, now, 0}
        end
      end
    end
  end
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  return {-1, now, 0}
end
write_token(
  {index = KEYS[1], record = KEYS[2], tombs = KEYS[3], tomb = KEYS[4]},
  {id = ARGV[1], account = ARGV[2], digest = ARGV[3], note = ARGV[4],
   scopes = ARGV[5], kid = ARGV[6]},
  now, expires, tonumber(ARGV[11]))
audit('Issue', {ARGV[1]})
return {1, now, expires}
