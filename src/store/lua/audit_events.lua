#!lua flags=no-writes
-- One page of an account's audit trail, newest first, on Redis's clock:
-- events older than the retention are not returned even before an append
-- trims them.
--
-- KEYS[1]  the account's audit stream
-- ARGV[1]  retention, ms
-- ARGV[2]  where to start: '+' (the newest), or '(<ms>-<seq>' (after that
--          event, exclusive)
-- ARGV[3]  most events to return
-- Returns  XREVRANGE's reply: {{id, {field, value, ...}}, ...}
--
-- no-writes: a read, so a write pause or a full Redis never stops it.

-- A key of another type (written by hand) holds no events; the next
-- change replaces it.
if redis.call('TYPE', KEYS[1])['ok'] ~= 'stream' then
  return {}
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local oldest = now - tonumber(ARGV[1])
local min = '-'
if oldest > 0 then
  min = string.format('%.0f', oldest)
end
return redis.call('XREVRANGE', KEYS[1], ARGV[2], min, 'COUNT', ARGV[3])
