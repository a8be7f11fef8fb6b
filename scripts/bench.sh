#!/usr/bin/env bash
# Benchmarks patd against a do-nothing tonic server measured in the same run
# (absolute numbers on shared machines drift; ratios to a baseline taken
# minutes apart on the same cores do not drift as much).
#
# Builds the release binaries, starts its own redis-server (no persistence)
# and, for each round, one after another: the baseline server
# (`patd-bench baseline-server`), the baseline server doing one Redis GET per
# Introspect (`baseline-redis`: the limit for any answer that reads the
# store), patd on the memory store, patd on Redis with its introspection
# cache (`redis`, the default) and without it (`redis-nocache`,
# PATD_CACHE_MAX_ENTRIES=0).
# Against each it runs the scenarios below with `patd-bench run ... --json`,
# then stops it (recording patd's peak RSS, VmHWM). Prints, per scenario and
# target, the median over rounds of requests/s, p50 and p99, the median of
# the per-round ratios to the baseline, the goals, and the server's CPU time
# per operation (utime+stime from /proc over the run, warm-up included,
# divided by its operations; for Redis also redis-server's share): a
# measure that drifts less than requests/s on a shared machine.
#
#   introspect    Introspect, 8 conns x 32 in flight, valid=90,revoked=5,malformed=5
#   serial        Introspect, 1 conn x 1 in flight (latency)
#   issue         Issue + Revoke on a fresh account (one op = the pair), 8 x 32
#   mixed         98% Introspect, 2% management (Issue+Revoke or List), 8 x 32
#   forward-auth  GET /v1/forward-auth, 8 x 32 keep-alive HTTP/1.1 connections
#                 (patd only: the baseline server has no HTTP)
#   (baseline-redis runs introspect and serial only.)
#
# Then, once: `patd-bench propagation` between two patd instances on the
# Redis store (BENCH_PROPAGATION_TRIALS revocations, 1000 by default): how
# long a Revoke acknowledged by A takes to make the token inactive on B; and
# the same with the invalidation channel killed (`CLIENT KILL TYPE pubsub`)
# just before each Revoke. And, when h2load is installed (Debian's
# nghttp2-client), an independent load generator: h2load posts one framed
# IntrospectRequest (8 connections x 32 streams) to each target, reported
# next to patd-bench's figures.
#
# patd sets TCP_NODELAY on accepted sockets, and so does the baseline by
# default (BENCH_BASELINE_NODELAY=0 turns it off there), so both stacks match.
#
# BENCH_STORE=cluster adds a target, patd on a local Redis Cluster of 3
# primaries (no replicas, no persistence, like the standalone Redis),
# `cluster`; the summary then gives each scenario's ratio to
# `redis-nocache` (one Redis, no introspection cache, which is off on a
# Cluster), and the cpu column sums the three nodes.
#
# Environment: BENCH_STORE (redis; or cluster), BENCH_DURATION (10s), BENCH_WARMUP (2s), BENCH_ROUNDS (3),
# BENCH_CONNECTIONS (8), BENCH_IN_FLIGHT (32), BENCH_BASELINE_NODELAY (1),
# BENCH_PATD_LOG (RUST_LOG for patd; default `info`, patd's own default:
# one log line per management RPC, token checks counted by metrics, as in
# production), BENCH_KEEP=1 keeps the results
# directory.
# Quick run: BENCH_DURATION=2s BENCH_ROUNDS=1 scripts/bench.sh
#
# Exit code 1 when any run saw an unexpected answer or error; a missed
# performance goal is reported, not fatal.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${BENCH_DURATION:-10s}"
WARMUP="${BENCH_WARMUP:-2s}"
ROUNDS="${BENCH_ROUNDS:-3}"
CONNS="${BENCH_CONNECTIONS:-8}"
INFLIGHT="${BENCH_IN_FLIGHT:-32}"
PATD_LOG="${BENCH_PATD_LOG:-info}"
STORE="${BENCH_STORE:-redis}"
TARGETS=(baseline baseline-redis memory redis redis-nocache)
case "$STORE" in
  redis) ;;
  cluster) TARGETS+=(cluster) ;;
  *) echo "bench.sh: BENCH_STORE must be redis or cluster" >&2; exit 2 ;;
esac
BASELINE_FLAGS=()
if [ "${BENCH_BASELINE_NODELAY:-1}" = 1 ]; then BASELINE_FLAGS+=(--tcp-nodelay); fi

for tool in redis-server redis-cli python3 cargo; do
  command -v "$tool" >/dev/null 2>&1 || {
    echo "bench.sh: $tool not found (scripts/test.sh installs redis-server)" >&2
    exit 2
  }
done

echo "bench.sh: cargo build --release --bins -p patd -p patd-bench" >&2
cargo build --release --bins -p patd -p patd-bench
BIN="${CARGO_TARGET_DIR:-target}/release"

WORK="$(mktemp -d -t patd-bench.XXXXXX)"
RESULTS="$WORK/results"
mkdir -p "$RESULTS"
REDIS_PID=""
SERVER_PID=""
CLUSTER_PIDS=()
cleanup() {
  for pid in "$SERVER_PID" "$REDIS_PID" ${CLUSTER_PIDS[@]+"${CLUSTER_PIDS[@]}"}; do
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
    fi
  done
  if [ "${BENCH_KEEP:-0}" = 1 ]; then
    echo "bench.sh: results kept in $WORK" >&2
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_for <pid> <file> <pattern>: until the file holds the pattern (10 s).
wait_for() {
  local pid="$1" file="$2" pattern="$3"
  for _ in $(seq 100); do
    if grep -q "$pattern" "$file" 2>/dev/null; then return 0; fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "bench.sh: process $pid exited before \"$pattern\":" >&2
      cat "$file" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "bench.sh: no \"$pattern\" from process $pid after 10 s:" >&2
  cat "$file" >&2
  return 1
}

# wait_for_file <pid> <file> <log>: until the file exists (10 s); on
# failure, shows the process's log.
wait_for_file() {
  local pid="$1" file="$2" log="$3"
  for _ in $(seq 100); do
    if [ -s "$file" ]; then return 0; fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "bench.sh: process $pid exited before writing $file:" >&2
      cat "$log" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "bench.sh: no $file from process $pid after 10 s:" >&2
  cat "$log" >&2
  return 1
}

REDIS_PORT="$(free_port)"
REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
  --dir "$WORK" --logfile "$WORK/redis.log" &
REDIS_PID=$!
for _ in $(seq 100); do
  if [ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]; then break; fi
  sleep 0.1
done
[ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ] || {
  echo "bench.sh: redis-server did not start" >&2
  cat "$WORK/redis.log" >&2
  exit 2
}

CLUSTER_URL=""
if [ "$STORE" = cluster ]; then
  nodes=()
  for i in 1 2 3; do
    port="$(free_port)"
    mkdir -p "$WORK/cluster$i"
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
      --cluster-enabled yes --cluster-config-file nodes.conf --cluster-port "$(free_port)" \
      --dir "$WORK/cluster$i" --logfile "$WORK/cluster$i/redis.log" &
    CLUSTER_PIDS+=($!)
    for _ in $(seq 100); do
      if [ "$(redis-cli -p "$port" ping 2>/dev/null)" = PONG ]; then break; fi
      sleep 0.1
    done
    nodes+=("127.0.0.1:$port")
  done
  redis-cli --cluster create "${nodes[@]}" --cluster-yes >"$WORK/cluster-create.log" 2>&1 || {
    echo "bench.sh: redis-cli --cluster create failed" >&2
    cat "$WORK/cluster-create.log" >&2
    exit 2
  }
  for _ in $(seq 100); do
    if redis-cli -p "${nodes[0]#*:}" cluster info | grep -q cluster_state:ok; then break; fi
    sleep 0.1
  done
  CLUSTER_URL="redis-cluster://$(IFS=,; echo "${nodes[*]}")"
fi

GRPC=""
HTTP=""
# start_target <target> <round>: sets SERVER_PID, GRPC, HTTP.
start_target() {
  local target="$1" round="$2" log="$WORK/server.$1.$2.log"
  if [ "$target" = baseline ]; then
    "$BIN/patd-bench" baseline-server --addr 127.0.0.1:0 ${BASELINE_FLAGS[@]+"${BASELINE_FLAGS[@]}"} >"$log" 2>&1 &
    SERVER_PID=$!
    wait_for "$SERVER_PID" "$log" '^listening '
    GRPC="$(sed -n 's/^listening //p' "$log" | head -n1)"
    HTTP=""
    return
  fi
  if [ "$target" = baseline-redis ]; then
    "$BIN/patd-bench" baseline-server --addr 127.0.0.1:0 --redis-url "$REDIS_URL" ${BASELINE_FLAGS[@]+"${BASELINE_FLAGS[@]}"} >"$log" 2>&1 &
    SERVER_PID=$!
    wait_for "$SERVER_PID" "$log" '^listening '
    GRPC="$(sed -n 's/^listening //p' "$log" | head -n1)"
    HTTP=""
    return
  fi
  local store=memory ready="$WORK/ready.$1.$2.json" addrs cache=100000
  if [ "$target" = redis ] || [ "$target" = redis-nocache ]; then store="$REDIS_URL"; fi
  if [ "$target" = redis-nocache ]; then cache=0; fi
  if [ "$target" = cluster ]; then store="$CLUSTER_URL"; fi
  # patd writes its bound addresses to the ready file, as JSON, once both
  # listeners are up.
  PATD_GRPC_ADDR=127.0.0.1:0 PATD_HTTP_ADDR=127.0.0.1:0 PATD_STORE="$store" \
    PATD_KEY_PREFIX="bench$round" PATD_READY_FILE="$ready" RUST_LOG="$PATD_LOG" \
    PATD_CACHE_MAX_ENTRIES="$cache" "$BIN/patd" 2>"$log" &
  SERVER_PID=$!
  wait_for_file "$SERVER_PID" "$ready" "$log"
  addrs="$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["grpc_addr"], r["http_addr"])' "$ready")"
  GRPC="${addrs% *}"
  HTTP="${addrs#* }"
}

stop_target() {
  local target="$1" round="$2"
  if [ "${target#baseline}" = "$target" ]; then
    awk '/^VmHWM:/ {print $2}' "/proc/$SERVER_PID/status" >"$RESULTS/rss.$target.$round"
  fi
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
}

# CPU seconds (user + system) processes have used so far, summed.
cpu_seconds() {
  local pid total=0
  for pid in "$@"; do
    total="$(awk -v hz="$(getconf CLK_TCK)" -v t="$total" '{printf "%.3f\n", t + ($14 + $15) / hz}' "/proc/$pid/stat")"
  done
  echo "$total"
}

# The Redis processes behind a target.
store_pids() {
  if [ "$1" = cluster ]; then echo "${CLUSTER_PIDS[*]}"; else echo "$REDIS_PID"; fi
}

FAILED=0
# bench <name> <target> <round> <patd-bench run arguments...>
bench() {
  local name="$1" target="$2" round="$3"
  shift 3
  local out="$RESULTS/$name.$target.$round.json" log="$RESULTS/$name.$target.$round.log"
  local extra=()
  if [ "${target#baseline}" != "$target" ]; then extra+=(--expect-baseline); fi
  local server0 redis0
  server0="$(cpu_seconds "$SERVER_PID")"
  # shellcheck disable=SC2046
  redis0="$(cpu_seconds $(store_pids "$target"))"
  if "$BIN/patd-bench" run "$@" --grpc-addr "$GRPC" ${HTTP:+--http-addr "$HTTP"} \
    --duration "$DURATION" --warmup "$WARMUP" --seed "$round" --label "$target" \
    ${extra[@]+"${extra[@]}"} --json >"$out" 2>"$log"; then
    # shellcheck disable=SC2046
    echo "$(cpu_seconds "$SERVER_PID") $server0 $(cpu_seconds $(store_pids "$target")) $redis0" \
      >"$RESULTS/$name.$target.$round.cpu"
    python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("    %-13s %10.0f rps  p50 %6d us  p99 %6d us" % (sys.argv[2], r["rps"], r["latency_us"]["p50"], r["latency_us"]["p99"]))' "$out" "$name" >&2
  else
    echo "bench.sh: $name against $target (round $round) FAILED:" >&2
    cat "$log" >&2
    rm -f "$out"
    FAILED=1
  fi
}

H2LOAD=""
if command -v h2load >/dev/null 2>&1; then H2LOAD=h2load; fi
# h2load_run <target> <round>: h2load posts one framed IntrospectRequest
# (a live token's, written by `patd-bench h2load-body`) for BENCH_DURATION.
h2load_run() {
  local target="$1" round="$2" body="$WORK/body.$1.$2" out
  [ -n "$H2LOAD" ] || return 0
  "$BIN/patd-bench" h2load-body --grpc-addr "$GRPC" --out "$body" 2>>"$RESULTS/h2load.$target.$round.log" || {
    echo "bench.sh: h2load-body against $target FAILED" >&2
    FAILED=1
    return 0
  }
  out="$("$H2LOAD" -D "$DURATION" --warm-up-time "$WARMUP" -c "$CONNS" -m "$INFLIGHT" -t 1 \
    -d "$body" -H 'content-type: application/grpc' -H 'te: trailers' \
    "http://$GRPC/patd.v1.TokenService/Introspect" 2>&1)" || true
  echo "$out" >"$RESULTS/h2load.$target.$round.log"
  python3 - "$out" "$RESULTS/h2load.$target.$round.rps" <<'PY'
import re, sys
out, path = sys.argv[1], sys.argv[2]
m = re.search(r"finished in [^,]+, ([0-9.]+) req/s", out)
ok = re.search(r"status codes: (\d+) 2xx", out)
if m:
    open(path, "w").write(m.group(1))
    print("    %-13s %10.0f rps  (h2load, %s 2xx)" % ("h2load", float(m.group(1)), ok.group(1) if ok else "?"), file=sys.stderr)
PY
}

for round in $(seq "$ROUNDS"); do
  for target in "${TARGETS[@]}"; do
    if [ "$target" = redis ]; then
      "$BIN/patd-bench" redis-rtt --url "$REDIS_URL" --json >"$RESULTS/rtt.$round.json"
    fi
    start_target "$target" "$round"
    echo "bench.sh: round $round/$ROUNDS, $target (grpc $GRPC${HTTP:+, http $HTTP})" >&2
    bench introspect "$target" "$round" introspect --connections "$CONNS" --in-flight "$INFLIGHT"
    bench serial "$target" "$round" introspect --connections 1 --in-flight 1
    if [ "$target" != baseline-redis ]; then
      bench issue "$target" "$round" issue --connections "$CONNS" --in-flight "$INFLIGHT"
      bench mixed "$target" "$round" mixed --connections "$CONNS" --in-flight "$INFLIGHT"
    fi
    if [ "${target#baseline}" = "$target" ]; then
      bench forward-auth "$target" "$round" forward-auth --connections "$CONNS" --in-flight "$INFLIGHT"
    fi
    h2load_run "$target" "$round"
    stop_target "$target" "$round"
  done
done

# Propagation: two patd instances on one Redis, one key prefix.
PROP_TRIALS="${BENCH_PROPAGATION_TRIALS:-1000}"
PROP_PIDS=()
PROP_ADDRS=()
for n in a b; do
  ready="$WORK/ready.prop.$n.json"
  PATD_GRPC_ADDR=127.0.0.1:0 PATD_HTTP_ADDR=127.0.0.1:0 PATD_STORE="$REDIS_URL" \
    PATD_KEY_PREFIX=benchprop PATD_READY_FILE="$ready" RUST_LOG="$PATD_LOG" \
    "$BIN/patd" 2>"$WORK/server.prop.$n.log" &
  PROP_PIDS+=($!)
  wait_for_file "$!" "$ready" "$WORK/server.prop.$n.log"
  PROP_ADDRS+=("$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["grpc_addr"])' "$ready")")
done
echo "bench.sh: propagation, $PROP_TRIALS revocations on A seen on B" >&2
"$BIN/patd-bench" propagation --a "${PROP_ADDRS[0]}" --b "${PROP_ADDRS[1]}" \
  --trials "$PROP_TRIALS" --json >"$RESULTS/propagation.json" || FAILED=1
"$BIN/patd-bench" propagation --a "${PROP_ADDRS[0]}" --b "${PROP_ADDRS[1]}" \
  --trials "$PROP_TRIALS" --kill-channel-on "$REDIS_URL" --json >"$RESULTS/propagation-killed.json" || FAILED=1
for pid in "${PROP_PIDS[@]}"; do
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
done

python3 - "$RESULTS" "$CONNS" "$INFLIGHT" <<'PY'
import glob, json, os, statistics, sys

results, conns, inflight = sys.argv[1], sys.argv[2], sys.argv[3]
runs = {}
for path in glob.glob(os.path.join(results, "*.json")):
    base = os.path.basename(path)
    if base.startswith("rtt.") or base.startswith("propagation"):
        continue
    name, target, rnd = base[: -len(".json")].rsplit(".", 2)
    with open(path) as f:
        run = json.load(f)
    cpu_path = path[: -len(".json")] + ".cpu"
    if os.path.exists(cpu_path):
        with open(cpu_path) as f:
            s1, s0, r1, r0 = (float(x) for x in f.read().split())
        ops = run["requests"] + run.get("warmup_requests", 0)
        if ops > 0:
            run["cpu_us"] = (s1 - s0) * 1e6 / ops
            run["redis_cpu_us"] = (r1 - r0) * 1e6 / ops
    runs[(name, target, int(rnd))] = run

def rounds(name, target):
    return sorted(r for (n, t, r) in runs if n == name and t == target)

def med(values):
    return statistics.median(values) if values else None

rtts = []
for path in glob.glob(os.path.join(results, "rtt.*.json")):
    with open(path) as f:
        rtts.append(json.load(f)["p50_us"])
rtt = med(rtts)

goals = {
    ("introspect", "memory"): 0.90,
    ("introspect", "redis"): 0.90,
    ("introspect", "redis-nocache"): 0.70,
    ("issue", "redis"): 0.30,
}
labels = {
    "introspect": "introspect %sx%s" % (conns, inflight),
    "serial": "introspect 1x1",
    "issue": "issue+revoke %sx%s" % (conns, inflight),
    "mixed": "mixed %sx%s" % (conns, inflight),
    "forward-auth": "forward-auth %sx%s" % (conns, inflight),
}
print()
print("%-22s %-9s %6s %11s %8s %8s %7s %12s  %s" % (
    "scenario", "target", "rounds", "rps (med)", "p50 us", "p99 us", "x base", "cpu us/op", "goal"))
for name in ["introspect", "serial", "issue", "mixed", "forward-auth"]:
    for target in ["baseline", "baseline-redis", "memory", "redis", "redis-nocache", "cluster"]:
        rs = rounds(name, target)
        if not rs:
            continue
        rps = med([runs[(name, target, r)]["rps"] for r in rs])
        p50 = med([runs[(name, target, r)]["latency_us"]["p50"] for r in rs])
        p99 = med([runs[(name, target, r)]["latency_us"]["p99"] for r in rs])
        # Paired per round: each round's baseline ran minutes before it.
        ratios = [runs[(name, target, r)]["rps"] / runs[(name, "baseline", r)]["rps"]
                  for r in rs if (name, "baseline", r) in runs and runs[(name, "baseline", r)]["rps"] > 0]
        ratio = med(ratios)
        cpu = med([runs[(name, target, r)]["cpu_us"] for r in rs if "cpu_us" in runs[(name, target, r)]])
        redis_cpu = med([runs[(name, target, r)]["redis_cpu_us"] for r in rs if "redis_cpu_us" in runs[(name, target, r)]])
        cpu_text = "" if cpu is None else "%.1f" % cpu
        if target in ("redis", "cluster") and redis_cpu is not None:
            cpu_text += "+%.1f" % redis_cpu
        goal = ""
        if (name, target) in goals and ratio is not None:
            want = goals[(name, target)]
            goal = "rps >= %.2f x base: %s" % (want, "PASS" if ratio >= want else "MISS")
        if name == "serial" and target == "redis" and rtt is not None and rounds(name, "baseline"):
            base_p50 = med([runs[(name, "baseline", r)]["latency_us"]["p50"] for r in rounds(name, "baseline")])
            limit = 1.5 * base_p50 + rtt
            goal = "p50 <= 1.5 x %g + rtt %g = %.0f us: %s" % (base_p50, rtt, limit, "PASS" if p50 <= limit else "MISS")
        print("%-22s %-9s %6d %11.0f %8.0f %8.0f %7s %12s  %s" % (
            labels[name], target, len(rs), rps, p50, p99,
            "" if ratio is None or target == "baseline" else "%.2f" % ratio, cpu_text, goal))
print("(cpu us/op: the server's CPU time per operation, median over rounds; redis: patd+redis-server;")
print(" cluster: patd+the 3 primaries)")
cluster_lines = []
for name in ["introspect", "serial", "issue", "mixed", "forward-auth"]:
    # Against one Redis without the introspection cache, which is off on a
    # Cluster.
    ratios = [runs[(name, "cluster", r)]["rps"] / runs[(name, "redis-nocache", r)]["rps"]
              for r in rounds(name, "cluster")
              if (name, "redis-nocache", r) in runs and runs[(name, "redis-nocache", r)]["rps"] > 0]
    if ratios:
        cluster_lines.append("  %-22s %.2f" % (labels[name], med(ratios)))
if cluster_lines:
    print("\ncluster / redis-nocache rps (median of per-round ratios):")
    print("\n".join(cluster_lines))
h2 = {}
for path in glob.glob(os.path.join(results, "h2load.*.rps")):
    _, target, rnd, _ = os.path.basename(path).split(".")
    with open(path) as f:
        h2.setdefault(target, {})[int(rnd)] = float(f.read())
if h2:
    print("\nh2load, Introspect %sx%s (median rps over rounds, median per-round ratio to baseline):" % (conns, inflight))
    for target in ["baseline", "baseline-redis", "memory", "redis", "redis-nocache"]:
        if target not in h2:
            continue
        ratios = [v / h2["baseline"][r] for r, v in h2[target].items() if h2.get("baseline", {}).get(r)]
        print("  %-15s %10.0f rps  %s" % (target, med(list(h2[target].values())),
              "" if target == "baseline" or not ratios else "%.2fx baseline" % med(ratios)))
for name, label in [("propagation.json", "revocation on A -> inactive on B"),
                    ("propagation-killed.json", "the same, invalidation channel killed before each Revoke")]:
    path = os.path.join(results, name)
    if os.path.exists(path):
        with open(path) as f:
            p = json.load(f)
        print("\n%s, %d trials: p50 %.1f ms, p99 %.1f ms, max %.1f ms; over 100 ms: %d, over 1 s: %d (goal p99 <= 100 ms, none over 1 s: %s)" % (
            label, p["trials"], p["p50_us"] / 1000, p["p99_us"] / 1000, p["max_us"] / 1000,
            p["over_100ms"], p["over_1s"], "PASS" if p["p99_us"] <= 100000 and p["over_1s"] == 0 else "MISS"))
if rtt is not None:
    print("\nredis round trip (PING p50, median over rounds): %g us" % rtt)
for target in ["memory", "redis", "redis-nocache", "cluster"]:
    kb = []
    for path in glob.glob(os.path.join(results, "rss.%s.*" % target)):
        with open(path) as f:
            text = f.read().strip()
            if text:
                kb.append(int(text))
    if kb:
        print("patd peak RSS (VmHWM), %s store: %.1f MiB (max over %d rounds)" % (target, max(kb) / 1024, len(kb)))
PY

if [ "$FAILED" -ne 0 ]; then
  echo "bench.sh: some runs FAILED (unexpected answers or errors above)" >&2
  exit 1
fi
