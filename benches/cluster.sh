#!/usr/bin/env bash
# One room spread over 1, 2 and 4 loopchat processes sharing one port
# (--reuse-port) and joined through a local redis-server, against one process
# without Redis, in the same run. Rounds are interleaved so drift hits every
# configuration alike.
#
#   LOADGEN=/path/to/loopchat-with-load benches/cluster.sh
#
# LOADGEN is a loopchat binary that has the `load` subcommand (the load
# generator); it defaults to target/release/loopchat. Knobs: ROUNDS (2),
# DURATION (5s), RECEIVERS (100), SENDERS (4), SIZE (32), RATE (2000: messages
# per second of the open-loop latency run that follows each broadcast run).
# Prints one line per run and a median summary; CPU seconds are read from
# /proc for every loopchat process and for redis-server.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=target/release/loopchat
LOADGEN="${LOADGEN:-$BIN}"
ROUNDS="${ROUNDS:-2}"
DURATION="${DURATION:-5s}"
RECEIVERS="${RECEIVERS:-100}"
SENDERS="${SENDERS:-4}"
SIZE="${SIZE:-32}"
RATE="${RATE:-2000}"

cargo build --release --quiet
command -v redis-server >/dev/null || { echo "redis-server not installed" >&2; exit 1; }
"$LOADGEN" load --help >/dev/null 2>&1 || { echo "$LOADGEN has no 'load' subcommand; set LOADGEN" >&2; exit 1; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu_ticks() { # utime+stime of the given pids, in clock ticks
  local t=0
  for p in "$@"; do
    t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$t"
}
HZ=$(getconf CLK_TCK)

RPORT=$(free_port)
redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no >/dev/null 2>&1 &
RPID=$!
trap 'kill $RPID 2>/dev/null || true; for p in ${PIDS:-}; do kill $p 2>/dev/null || true; done' EXIT
for _ in $(seq 1 100); do
  [ "$(redis-cli -p "$RPORT" ping 2>/dev/null)" = PONG ] && break
  sleep 0.05
done

results=$(mktemp)
run() { # $1 = label, $2 = processes, $3 = "redis" or "none"
  local label=$1 n=$2 mode=$3 port
  port=$(free_port)
  PIDS=""
  local extra=()
  [ "$mode" = redis ] && extra=(--redis "redis://127.0.0.1:$RPORT")
  for _ in $(seq 1 "$n"); do
    "$BIN" --listen "127.0.0.1:$port" --reuse-port --rate-limit 0 --log-level warn \
      --max-chat-message 65536 "${extra[@]}" >/dev/null 2>&1 &
    PIDS="$PIDS $!"
  done
  for _ in $(seq 1 100); do
    curl -fs "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
    sleep 0.05
  done
  if [ "$mode" = redis ]; then
    # Every process up and subscribed to its two own channels.
    for _ in $(seq 1 200); do
      up=0
      for _ in $(seq 1 $((n * 4))); do
        curl -fs "http://127.0.0.1:$port/metrics" | grep -q '^loopchat_redis_up 1' && up=$((up + 1))
      done
      [ "$up" -ge $((n * 4)) ] && break
      sleep 0.05
    done
  fi
  local c0 r0 c1 r1 json
  c0=$(cpu_ticks $PIDS)
  r0=$(cpu_ticks $RPID)
  # `load` exits 1 for a run that lost deliveries; its JSON says so, and the
  # table shows it: keep going (set -e would end the script without a word).
  json=$("$LOADGEN" load --mode broadcast --url "ws://127.0.0.1:$port/ws" -c "$RECEIVERS" -s "$SENDERS" \
    --size "$SIZE" --duration "$DURATION" --json -q 2>/dev/null) || true
  c1=$(cpu_ticks $PIDS)
  r1=$(cpu_ticks $RPID)
  # Open loop at a fixed rate: latency without queueing behind a saturated loop.
  local lat c2 r2
  lat=$("$LOADGEN" load --mode latency --url "ws://127.0.0.1:$port/ws" -c "$RECEIVERS" \
    --rate "$RATE" --size "$SIZE" --duration "$DURATION" --json -q 2>/dev/null) || true
  c2=$(cpu_ticks $PIDS)
  r2=$(cpu_ticks $RPID)
  for p in $PIDS; do kill "$p" 2>/dev/null || true; done
  for p in $PIDS; do wait "$p" 2>/dev/null || true; done
  PIDS=""
  python3 - "$label" "$json" "$((c1 - c0))" "$((r1 - r0))" "$HZ" "$lat" "$((c2 - c1))" "$((r2 - r1))" "$RATE" >>"$results" <<'EOF'
import json, sys
label, j, srv, red, hz = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
lat = json.loads(sys.argv[6])
lsrv, lred = int(sys.argv[7]), int(sys.argv[8])
lsent = lat["sent"] or 1
secs = j["measure_secs"] or 1
# CPU over the whole load run (connect + warmup + measure), per message sent.
sent = j["sent"] or 1
print(json.dumps({"label": label, "rate": int(sys.argv[9]), "dps": j["deliveries_per_sec"], "mps": j["msgs_per_sec"],
  "p50": j["latency_us"]["p50"], "p99": j["latency_us"]["p99"], "lost": j["lost"],
  "srv_us_per_msg": srv / hz * 1e6 / sent, "redis_us_per_msg": red / hz * 1e6 / sent,
  "lat_p50": lat["latency_us"]["p50"], "lat_p99": lat["latency_us"]["p99"], "lat_lost": lat["lost"],
  "lat_dps": lat["deliveries_per_sec"],
  "lat_srv_us": lsrv / hz * 1e6 / lsent, "lat_redis_us": lred / hz * 1e6 / lsent}))
EOF
  tail -n1 "$results"
}

for r in $(seq 1 "$ROUNDS"); do
  echo "== round $r" >&2
  run "1 process, no Redis" 1 none
  run "1 process + Redis" 1 redis
  run "2 processes + Redis" 2 redis
  run "4 processes + Redis" 4 redis
done

echo
python3 - "$results" <<'EOF'
import json, sys, statistics as st
rows = [json.loads(l) for l in open(sys.argv[1])]
labels = []
for r in rows:
    if r["label"] not in labels:
        labels.append(r["label"])
base = st.median(r["dps"] for r in rows if r["label"] == labels[0])
print("| setup | deliveries/s | vs 1 process | msgs/s | p50 µs | p99 µs | lost | loopchat CPU µs/msg | redis CPU µs/msg ")
print("|---|---|---|---|---|---|---|---|---|")
for l in labels:
    rs = [r for r in rows if r["label"] == l]
    m = lambda k: st.median(r[k] for r in rs)
    print(f"| {l} | {m('dps'):,.0f} | {m('dps')/base:.2f}x | {m('mps'):,.0f} | {m('p50'):,.0f} | {m('p99'):,.0f} | {sum(r['lost'] for r in rs)} | {m('srv_us_per_msg'):.1f} | {m('redis_us_per_msg'):.1f} |")
print()
print(f"Open loop, one sender at {rows[0].get('rate', 'RATE')} msgs/s:")
print()
print("| setup | deliveries/s | p50 µs | p99 µs | lost | loopchat CPU µs/msg | redis CPU µs/msg |")
print("|---|---|---|---|---|---|---|")
for l in labels:
    rs = [r for r in rows if r["label"] == l]
    m = lambda k: st.median(r[k] for r in rs)
    print(f"| {l} | {m('lat_dps'):,.0f} | {m('lat_p50'):,.0f} | {m('lat_p99'):,.0f} | {sum(r['lat_lost'] for r in rs)} | {m('lat_srv_us'):.1f} | {m('lat_redis_us'):.1f} |")
EOF
