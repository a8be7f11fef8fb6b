-- The audit fragment: not a script of its own. store::redis puts it right
-- after the `#!lua` line of every script that changes an account, so the
-- change and its event are one atomic step. Wiring a new script takes one
-- line here (`audit('Action', {ids})` where the change has happened) and
-- one call on the Rust side (`audited`), which passes, AFTER the script's
-- own keys and arguments:
--
-- KEYS[#KEYS]    the account's audit stream (same hash tag as the account)
-- ARGV[#ARGV-4]  most events kept per account (XADD MAXLEN =)
-- ARGV[#ARGV-3]  retention in ms (XTRIM MINID, and the stream's expiry)
-- ARGV[#ARGV-2]  account id
-- ARGV[#ARGV-1]  caller name
-- ARGV[#ARGV]    request id
--
-- Below this fragment KEYS and ARGV are local copies without those
-- entries, so the script reads its own KEYS and ARGV as documented in its
-- header. The event's time is its entry id, `<ms>-<seq>` from Redis's own
-- clock (XADD '*'). The stream expires `retention` after its last event,
-- so the trail of an idle account vanishes by itself. Never a token value
-- or digest: only public token ids.

local audit_stream = KEYS[#KEYS]
local audit_max = ARGV[#ARGV - 4]
local audit_retention = tonumber(ARGV[#ARGV - 3])
local audit_account = ARGV[#ARGV - 2]
local audit_caller = ARGV[#ARGV - 1]
local audit_request = ARGV[#ARGV]
local audit_keys, audit_argv = {}, {}
for i = 1, #KEYS - 1 do
  audit_keys[i] = KEYS[i]
end
for i = 1, #ARGV - 5 do
  audit_argv[i] = ARGV[i]
end
local KEYS, ARGV = audit_keys, audit_argv

-- Appends one event: `action` (the RPC's name) and `token_ids` (a table
-- of public ids), then applies the count and age caps.
local function audit(action, token_ids)
  -- Bad data (a key of another type, written by hand) must never block a
  -- change, nor fail it halfway: it goes, as a corrupt index does.
  local kind = redis.call('TYPE', audit_stream)['ok']
  if kind ~= 'stream' and kind ~= 'none' then
    redis.call('DEL', audit_stream)
  end
  local id = redis.call('XADD', audit_stream, 'MAXLEN', '=', audit_max, '*',
    'action', action, 'account', audit_account,
    'tokens', table.concat(token_ids, ' '),
    'caller', audit_caller, 'request', audit_request)
  local ms = tonumber(string.match(id, '^(%d+)'))
  if ms > audit_retention then
    redis.call('XTRIM', audit_stream, 'MINID',
      string.format('%.0f', ms - audit_retention))
  end
  redis.call('PEXPIRE', audit_stream, string.format('%.0f', audit_retention))
end
