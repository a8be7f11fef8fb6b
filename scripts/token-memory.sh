#!/usr/bin/env bash
# Bytes per token in Redis, the basis of README's sizing table.
#   scripts/token-memory.sh [path/to/patd]   (default: the release build)
# Starts its own redis-server and patd (with a digest key, as production
# should), issues 4 accounts x 50 tokens through patd (grpcurl; note "CI
# deploy key N", two scopes, 30 days) and prints MEMORY USAGE of the records
# plus each token's share of its account's index; then writes 20000 more
# tokens the way patd does (same fields, PEXPIREAT, one index per 50) and
# prints how much used_memory grew per token: the marginal cost, including
# the key and expiry dictionary entries MEMORY USAGE leaves out.
set -euo pipefail
cd "$(dirname "$0")/.."
PATD="${1:-${CARGO_TARGET_DIR:-target}/release/patd}"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
dir=$(mktemp -d)
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" >/dev/null &
rpid=$!
ppid=""
trap 'kill $ppid $rpid 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"' EXIT
sleep 0.5
PATD_GRPC_ADDR=127.0.0.1:0 PATD_HTTP_ADDR=127.0.0.1:0 PATD_STORE="redis://127.0.0.1:$port/0" \
  PATD_READY_FILE="$dir/ready.json" PATD_TOKEN_HASH_KEYS="k1:$(head -c32 /dev/urandom | base64)" RUST_LOG=warn "$PATD" 2>"$dir/patd.log" &
ppid=$!
for _ in $(seq 100); do [ -s "$dir/ready.json" ] && break; sleep 0.1; done
[ -s "$dir/ready.json" ] || { cat "$dir/patd.log" >&2; exit 1; }
grpc=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["grpc_addr"])' "$dir/ready.json")
for a in 1 2 3 4; do
  for i in $(seq 50); do
    grpcurl -plaintext -d "{\"account_id\":\"user-$a-0001234\",\"note\":\"CI deploy key $i\",\"scopes\":[\"repo:read\",\"repo:write\"],\"ttl\":\"2592000s\"}" \
      "$grpc" patd.v1.TokenService/Issue >/dev/null
  done
done
redis-cli -p "$port" --raw eval '
local t, tn, a, an = 0, 0, 0, 0
for _, k in ipairs(redis.call("KEYS", "patd:*")) do
  local m = redis.call("MEMORY", "USAGE", k, "SAMPLES", 0)
  if string.find(k, ":t:") then t = t + m; tn = tn + 1 else a = a + m; an = an + 1 end
end
return {tn, t, an, a}' 0 | paste -sd' ' | awk '{printf "tokens %d: %.0f B/record; accounts %d: %.0f B/index (%.0f B/token); total %.0f B/token\n", $1, $2/$1, $3, $4/$3, $4/$1, ($2+$4)/$1}'
# Marginal cost at scale: 20000 more tokens (400 accounts x 50) written as
# patd writes them (same fields and sizes, PEXPIREAT, an index per account).
before=$(redis-cli -p "$port" info memory | sed -n 's/^used_memory:\([0-9]*\).*/\1/p')
rec=$(redis-cli -p "$port" --raw keys 'patd:*:t:*' | head -1)
redis-cli -p "$port" --raw hgetall "$rec" >"$dir/fields"
python3 - "$dir/fields" >"$dir/cmds" <<'PY'
import sys, random, string
lines = open(sys.argv[1]).read().split("\n")[:-1]
fields = list(zip(lines[0::2], lines[1::2]))
def resp(*args):
    out = "*%d\r\n" % len(args)
    for a in args:
        a = str(a)
        out += "$%d\r\n%s\r\n" % (len(a.encode()), a)
    return out
alphabet = string.ascii_letters + string.digits
w = sys.stdout.write
for acct in range(400):
    tag = "".join(random.choice(alphabet) for _ in range(3))
    index = "patd:{%s}:a:user-%06d-scale" % (tag, acct)
    for n in range(50):
        tid = tag + "".join(random.choice(alphabet) for _ in range(13))
        key = "patd:{%s}:t:%s" % (tag, tid)
        args = ["HSET", key]
        for f, v in fields:
            args += [f, v]
        w(resp(*args))
        w(resp("PEXPIREAT", key, 4102444800000 + n))
        w(resp("ZADD", index, 4102444800000 + n, tid))
PY
redis-cli -p "$port" --pipe <"$dir/cmds" >/dev/null
after=$(redis-cli -p "$port" info memory | sed -n 's/^used_memory:\([0-9]*\).*/\1/p')
echo "used_memory grew $((after - before)) B for 20000 tokens: $(( (after - before) / 20000 )) B/token (record, index share, key and expiry dict entries)"
