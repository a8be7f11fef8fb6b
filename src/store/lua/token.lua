-- The token fragment: not a script of its own. store::redis puts it right
-- after the audit fragment in the scripts that write a new token
-- (issue.lua, and rotate.lua for the successor), so both resolve its
-- expiry and write it the same way. Times are Unix ms on Redis's clock.

-- The expiry asked for: `kind` 'ttl' (`value` ms from `now`) or 'at'
-- (`value`, Unix ms). Returns the expiry, or nil and the outcome that
-- refuses it: -2 not in the future, -3 beyond `longest` ms from `now`
-- (the same rule as domain::Expiry::resolve).
local function token_expiry(kind, value, longest, now)
  local expires
  if kind == 'ttl' then
    expires = now + tonumber(value)
  else
    expires = tonumber(value)
  end
  if expires <= now then
    return nil, -2
  end
  if expires > now + tonumber(longest) then
    return nil, -3
  end
  return expires
end

-- Writes token `t` (`id`, `account`, `digest`, `note`, `scopes`, `kid`)
-- issued at `now` and expiring at `expires`: its record at `keys.record`,
-- its place in the account's index `keys.index` (which lives as long as
-- its longest-lived token), and its tombstone at `keys.tomb`, listed in
-- `keys.tombs` and kept `tombstone_ttl` ms after the token's end (expired
-- tombstones leave that list here).
local function write_token(keys, t, now, expires, tombstone_ttl)
  local created_ms = string.format('%.0f', now)
  local expires_ms = string.format('%.0f', expires)
  redis.call('HSET', keys.record,
    'account', t.account, 'digest', t.digest, 'note', t.note,
    'scopes', t.scopes, 'created', created_ms, 'expires', expires_ms)
  if t.kid ~= '' then
    redis.call('HSET', keys.record, 'kid', t.kid)
  end
  redis.call('PEXPIREAT', keys.record, expires_ms)
  redis.call('ZADD', keys.index, expires_ms, t.id)
  local last = redis.call('ZRANGE', keys.index, -1, -1, 'WITHSCORES')
  redis.call('PEXPIREAT', keys.index, last[2])
  local gone = string.format('%.0f', expires + tombstone_ttl)
  redis.call('HSET', keys.tomb,
    'account', t.account, 'digest', t.digest, 'kid', t.kid,
    'created', created_ms, 'expires', expires_ms)
  redis.call('PEXPIREAT', keys.tomb, gone)
  redis.call('ZREMRANGEBYSCORE', keys.tombs, '-inf', now)
  redis.call('ZADD', keys.tombs, gone, t.id)
  local kept = redis.call('ZRANGE', keys.tombs, -1, -1, 'WITHSCORES')
  redis.call('PEXPIREAT', keys.tombs, kept[2])
end
