#!lua
-- Rotate one token, atomically, on Redis's clock: the account's live,
-- not yet rotated token KEYS[2] gets a successor KEYS[3] (written as Issue
-- writes one) and ends when its grace window closes (never past its own
-- expiry). No limit is checked: the old token stops counting toward it as
-- the new one starts, so the account's count is unchanged.
--
-- KEYS[1]  the account's index
-- KEYS[2]  the old token's hash
-- KEYS[3]  the new token's hash
-- KEYS[4]  the account's tombstone index
-- KEYS[5]  the old token's tombstone hash
-- KEYS[6]  the new token's tombstone hash
-- ARGV[1]  old token id            ARGV[2]  new token id
-- ARGV[3]  account id              ARGV[4]  new digest (hex)
-- ARGV[5]  note (inherited)        ARGV[6]  scopes, space-separated
-- ARGV[7]  new digest key id ('' = plain SHA-256)
-- ARGV[8]  'ttl' or 'at'           ARGV[9]  ttl in ms, or expiry in Unix ms
-- ARGV[10] longest lifetime, ms    ARGV[11] grace window, ms
-- ARGV[12] how long a tombstone outlives its token's end, ms
-- ARGV[13..] the key ids whose records can verify ('' = plain SHA-256)
--          then the audit fragment's key and arguments (audit.lua); the
--          token fragment (token.lua) resolves the expiry and writes the
--          successor
-- Returns  {outcome, now, new expiry, old token's end}, times in Unix ms on
--          Redis's clock; outcome 1 rotated, 0 no such live token of this
--          account, -1 new token id already taken, -2 expiry not in the
--          future, -3 expiry beyond the longest lifetime, -4 already
--          rotated (only its successor can be). Nothing is written unless
--          1; then a Rotate event naming the old id and the new one, in
--          that order, is appended.
--
-- The old token's id is published on `<prefix>:invalidate` (the prefix is
-- KEYS[1]'s part before `:{`), so every patd instance drops its cached
-- record and reads the one that says when its grace window closes.
--
-- Two Rotates of one token: the first marks it `rotated` (or, without
-- grace, deletes it and marks its tombstone), so the second answers -4.
--
-- Declared a writer without allow-oom: over maxmemory Redis refuses the
-- whole script up front (OOM) rather than after its first write.

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local old = redis.call('HMGET', KEYS[2], 'account', 'expires', 'kid', 'rotated')
if old[1] ~= ARGV[3] then
  local tomb = redis.call('HMGET', KEYS[5], 'account', 'end')
  if tomb[1] == ARGV[3] and tomb[2] == 'rotated' then
    return {-4, now, 0, 0}
  end
  return {0, now, 0, 0}
end
if old[4] then
  return {-4, now, 0, 0}
end
local old_expires = tonumber(old[2])
local live = false
for i = 13, #ARGV do
  if ARGV[i] == (old[3] or '') then
    live = true
  end
end
if not old_expires or old_expires <= now or not live then
  return {0, now, 0, 0}
end
local expires, refused = token_expiry(ARGV[8], ARGV[9], ARGV[10], now)
if not expires then
  return {refused, now, 0, 0}
end
if redis.call('EXISTS', KEYS[3]) == 1 then
  return {-1, now, 0, 0}
end
local tombstone_ttl = tonumber(ARGV[12])
local ends = math.min(now + tonumber(ARGV[11]), old_expires)
local ends_ms = string.format('%.0f', ends)
local old_gone = string.format('%.0f', ends + tombstone_ttl)
if redis.call('EXISTS', KEYS[5]) == 1 then
  redis.call('HSET', KEYS[5], 'end', 'rotated', 'ended', ends_ms)
else
  -- A token issued before tombstones existed gets one now.
  redis.call('HSET', KEYS[5], 'account', ARGV[3],
    'digest', redis.call('HGET', KEYS[2], 'digest') or '', 'kid', old[3] or '',
    'created', redis.call('HGET', KEYS[2], 'created') or '0',
    'expires', old[2], 'end', 'rotated', 'ended', ends_ms)
end
redis.call('PEXPIREAT', KEYS[5], old_gone)
redis.call('ZADD', KEYS[4], old_gone, ARGV[1])
-- The old token: gone now, or kept (not counted) until its window closes.
if ends <= now then
  redis.call('DEL', KEYS[2])
  redis.call('ZREM', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[2], 'rotated', ends_ms)
  redis.call('PEXPIREAT', KEYS[2], ends_ms)
  redis.call('ZADD', KEYS[1], ends_ms, ARGV[1])
end
-- The successor, as Issue writes a token (token.lua).
write_token(
  {index = KEYS[1], record = KEYS[3], tombs = KEYS[4], tomb = KEYS[6]},
  {id = ARGV[2], account = ARGV[3], digest = ARGV[4], note = ARGV[5],
   scopes = ARGV[6], kid = ARGV[7]},
  now, expires, tombstone_ttl)
redis.call('PUBLISH', string.match(KEYS[1], '^(.-):{') .. ':invalidate', ARGV[1])
audit('Rotate', {ARGV[1], ARGV[2]})
return {1, now, expires, ends}
