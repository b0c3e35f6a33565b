#!/usr/bin/env bash
# Before/after: two loopchat binaries through the same scenarios as
# benches/compare.sh (idle density, fan-out, latency), driven by the same
# generator, interleaved (A B, A B, ...) on freshly started servers, medians of
# REPS runs and the ratio B/A. For checking that a change to the server costs
# nothing beyond noise.
#
# Usage:
#   benches/ab.sh OLD_BINARY [NEW_BINARY]   # NEW defaults to target/release/loopchat
# Environment: REPS [3]  WARMUP [1s]  DURATION [5s]  IDLE_N [10000]  RECEIVERS [1000]
#   FANOUT_WINDOW [32]  LAT_RATE [100]  SOURCES [8]  SCENARIOS ["idle fanout1 latency"]
#   PORT [19480]  OUT [target/ab]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
A=${1:?usage: benches/ab.sh OLD_BINARY [NEW_BINARY]}
B=${2:-$ROOT/target/release/loopchat}
GEN=$B
REPS=${REPS:-3}
WARMUP=${WARMUP:-1s}
DURATION=${DURATION:-5s}
IDLE_N=${IDLE_N:-10000}
RECEIVERS=${RECEIVERS:-1000}
FANOUT_WINDOW=${FANOUT_WINDOW:-32}
LAT_RATE=${LAT_RATE:-100}
SOURCES=${SOURCES:-8}
SCENARIOS=${SCENARIOS:-"idle fanout1 latency"}
PORT=${PORT:-19480}
OUT=${OUT:-target/ab}
mkdir -p "$OUT"
: >"$OUT/runs.jsonl"
ulimit -n "$(ulimit -Hn)"
log() { printf '[ab] %s\n' "$*" >&2; }

PID=
start() { # binary
    taskset -c 0 "$1" --listen "127.0.0.1:$PORT" --rate-limit 0 --log-level warn \
        --shutdown-timeout 1s >"$OUT/server.log" 2>&1 &
    PID=$!
    for _ in $(seq 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
            sleep 0.2
            return 0
        fi
        sleep 0.05
    done
    log "server did not start"
    return 1
}
stop() {
    [ -n "$PID" ] || return 0
    kill -KILL "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
    PID=
}
trap stop EXIT

flags() { # scenario
    local common="--protocol loopchat --url ws://127.0.0.1:$PORT/ws --warmup $WARMUP --duration $DURATION"
    case $1 in
    idle) echo "$common --mode idle -n $IDLE_N --sources $SOURCES --concurrency 512" ;;
    fanout1) echo "$common --mode broadcast -c $RECEIVERS -s 1 --window $FANOUT_WINDOW" ;;
    latency) echo "$common --mode latency -c $RECEIVERS --rate $LAT_RATE" ;;
    esac
}

log "A=$A B=$B; scenarios: $SCENARIOS; reps $REPS; load average $(cut -d' ' -f1-3 /proc/loadavg)"
for sc in $SCENARIOS; do
    for rep in $(seq "$REPS"); do
        for side in A B; do
            bin=$A
            [ "$side" = B ] && bin=$B
            start "$bin"
            # shellcheck disable=SC2046
            json=$(taskset -c 1 "$GEN" load $(flags "$sc") --server-pid "$PID" --json --quiet \
                --timeout 15s 2>>"$OUT/load.log") || true
            stop
            [ -n "$json" ] && printf '{"scenario":"%s","side":"%s","result":%s}\n' \
                "$sc" "$side" "$json" >>"$OUT/runs.jsonl"
            log "$sc/$side/$rep done"
        done
    done
done

python3 - "$OUT/runs.jsonl" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
rows = [
    ("idle", "idle 10k: server RSS per connection (B)", "server.rss_per_conn"),
    ("idle", "idle 10k: connections/s while connecting", "connect_rate"),
    ("fanout1", "fan-out 1 sender: deliveries/s", "deliveries_per_sec"),
    ("fanout1", "fan-out 1 sender: deliveries per server CPU s", "server.deliveries_per_cpu_sec"),
    ("fanout1", "fan-out 1 sender: p99 latency (µs)", "latency_us.p99"),
    ("latency", "latency 100k deliveries/s: p50 (µs)", "latency_us.p50"),
    ("latency", "latency 100k deliveries/s: p99 (µs)", "latency_us.p99"),
]
def get(r, path):
    for k in path.split("."):
        if not isinstance(r, dict) or r.get(k) is None:
            return None
        r = r[k]
    return r
def med(sc, side, path):
    v = [get(r["result"], path) for r in runs if r["scenario"] == sc and r["side"] == side]
    v = [x for x in v if x is not None]
    return statistics.median(v) if v else None
print("| scenario | A (before) | B (after) | B/A |")
print("|---|---|---|---|")
for sc, label, path in rows:
    a, b = med(sc, "A", path), med(sc, "B", path)
    if a is None and b is None:
        continue
    ratio = f"{b/a:.2f}" if a and b is not None else "–"
    f = lambda x: "–" if x is None else (f"{x/1e6:.2f}M" if x >= 1e6 else f"{x:.0f}")
    print(f"| {label} | {f(a)} | {f(b)} | {ratio} |")
PY
