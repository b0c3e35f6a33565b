#!/usr/bin/env bash
# Side-by-side benchmark: loopchat against the broadcast servers a user would
# write with gorilla/websocket (Go), tokio-tungstenite (Rust, current-thread;
# `tokio-batched`: its writer feeds every queued message and flushes once),
# ws (Node.js) and Bun (`server.publish`, uWebSockets' pub/sub), all driven by
# `loopchat load`. The compressed rows (scenarios `idlez`, `fanout10z`, with
# `loopchat load --compression`) set loopchat against `node-deflate` (ws with
# perMessageDeflate) and `bun-deflate` (Bun's perMessageDeflate).
#
# Every server is pinned to CPU 0 and the generator to CPU 1 (taskset). Each
# scenario runs against every server in turn (A B C D, A B C D, ...), REPS
# times, each run on a freshly started server; the table holds the medians and
# the ratio loopchat/peer. Raw JSON lines go to $OUT/runs.jsonl.
#
# Usage:
#   benches/compare.sh            # full run: 75 runs of ~8 s, ~10 minutes (+ building the peers once)
#   QUICK=1 benches/compare.sh    # ~2 minutes: one repetition, shorter runs, no 19k case
# Environment (defaults in brackets, QUICK values after the slash):
#   REPS [3/1]  WARMUP [1s/500ms]  DURATION [5s/2s]  IDLE_N [10000]  IDLE_BIG [19000/0: skip]
#   RECEIVERS [1000]  FANOUT_WINDOW [32]  LAT_RATE [100]  CHURN_SLOTS [64]  SOURCES [8]
#   SERVERS ["loopchat gorilla tokio tokio-batched node bun node-deflate bun-deflate"]
#   SCENARIOS [all]  Z_SIZE [100: payload bytes of the compressed fan-out]  BASE_PORT [19400]
#   OUT [target/compare]  SKIP_INSTALL [0]
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)

QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
    REPS=${REPS:-1}; WARMUP=${WARMUP:-500ms}; DURATION=${DURATION:-2s}; IDLE_BIG=${IDLE_BIG:-0}
else
    REPS=${REPS:-3}; WARMUP=${WARMUP:-1s}; DURATION=${DURATION:-5s}; IDLE_BIG=${IDLE_BIG:-19000}
fi
IDLE_N=${IDLE_N:-10000}
RECEIVERS=${RECEIVERS:-1000}
FANOUT_WINDOW=${FANOUT_WINDOW:-32}
LAT_RATE=${LAT_RATE:-100}
CHURN_SLOTS=${CHURN_SLOTS:-64}
SOURCES=${SOURCES:-8}
SERVERS=${SERVERS:-"loopchat gorilla tokio tokio-batched node bun node-deflate bun-deflate"}
SCENARIOS=${SCENARIOS:-"idle idle_big fanout1 fanout10 latency churn echo idlez fanout10z"}
Z_SIZE=${Z_SIZE:-100}
BASE_PORT=${BASE_PORT:-19400}
OUT=${OUT:-target/compare}
SKIP_INSTALL=${SKIP_INSTALL:-0}

LOOPCHAT=$ROOT/target/release/loopchat
GORILLA=$ROOT/benches/peers/gorilla/peer-gorilla
TOKIO=$ROOT/benches/peers/tokio/target/release/peer-tokio
NODE_DIR=$ROOT/benches/peers/node
BUN_DIR=$ROOT/benches/peers/bun
BUN=$BUN_DIR/node_modules/@oven/bun-linux-x64/bin/bun

log() { printf '[compare] %s\n' "$*" >&2; }

# ---------------------------------------------------------------- build
apt_install() {
    [ "$SKIP_INSTALL" = 1 ] && { log "missing $*, SKIP_INSTALL=1"; return 1; }
    if [ -z "${APT_UPDATED:-}" ]; then apt-get update -qq; APT_UPDATED=1; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

build() {
    command -v taskset >/dev/null || apt_install util-linux
    command -v python3 >/dev/null || apt_install python3
    log "building loopchat (release)"
    cargo build --release --quiet
    for s in $SERVERS; do
        case $s in
        gorilla)
            command -v go >/dev/null || apt_install golang-go
            [ -d /usr/share/gocode/src/github.com/gorilla/websocket ] ||
                apt_install golang-github-gorilla-websocket-dev
            log "building the gorilla peer (GOPATH mode)"
            (cd benches/peers/gorilla &&
                GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE=${GOCACHE:-$ROOT/target/gocache} \
                    go build -o peer-gorilla main.go)
            ;;
        tokio | tokio-batched)
            log "building the tokio-tungstenite peer (release)"
            cargo build --release --quiet --manifest-path benches/peers/tokio/Cargo.toml
            ;;
        bun | bun-deflate)
            command -v npm >/dev/null || apt_install npm
            if [ ! -x "$BUN" ]; then
                log "installing Bun (npm ci: @oven/bun-linux-x64 ships the binary)"
                (cd "$BUN_DIR" && npm ci --no-audit --no-fund --silent)
            fi
            ;;
        node | node-deflate)
            command -v node >/dev/null || apt_install nodejs
            command -v npm >/dev/null || apt_install npm
            if [ ! -d "$NODE_DIR/node_modules/ws" ]; then
                log "installing ws (npm ci)"
                (cd "$NODE_DIR" && npm ci --no-audit --no-fund --silent)
            fi
            ;;
        loopchat) ;;
        *) log "unknown server $s"; exit 2 ;;
        esac
    done
}

# ---------------------------------------------------------------- servers
port_of() {
    case $1 in
    loopchat) echo "$BASE_PORT" ;; gorilla) echo $((BASE_PORT + 1)) ;;
    tokio) echo $((BASE_PORT + 2)) ;; node) echo $((BASE_PORT + 3)) ;;
    tokio-batched) echo $((BASE_PORT + 4)) ;; bun) echo $((BASE_PORT + 5)) ;;
    node-deflate) echo $((BASE_PORT + 6)) ;; bun-deflate) echo $((BASE_PORT + 7)) ;;
    esac
}

SERVER_PID=
start_server() { # name -> sets SERVER_PID
    local name=$1 port
    port=$(port_of "$name")
    case $name in
    loopchat)
        # --rate-limit 0: the default of 50 commands/s per connection would throttle
        # the senders. Pings every 30 s as usual; the generator answers them.
        taskset -c 0 "$LOOPCHAT" --listen "127.0.0.1:$port" --rate-limit 0 \
            --log-level warn --shutdown-timeout 1s >"$OUT/server-$name.log" 2>&1 &
        ;;
    gorilla) taskset -c 0 "$GORILLA" "$port" >"$OUT/server-$name.log" 2>&1 & ;;
    tokio) taskset -c 0 "$TOKIO" "$port" >"$OUT/server-$name.log" 2>&1 & ;;
    node) taskset -c 0 node "$NODE_DIR/server.js" "$port" >"$OUT/server-$name.log" 2>&1 & ;;
    tokio-batched) taskset -c 0 "$TOKIO" "$port" batched >"$OUT/server-$name.log" 2>&1 & ;;
    bun) taskset -c 0 "$BUN" "$BUN_DIR/server.js" "$port" >"$OUT/server-$name.log" 2>&1 & ;;
    node-deflate)
        taskset -c 0 node "$NODE_DIR/server.js" "$port" deflate >"$OUT/server-$name.log" 2>&1 &
        ;;
    bun-deflate)
        taskset -c 0 "$BUN" "$BUN_DIR/server.js" "$port" deflate >"$OUT/server-$name.log" 2>&1 &
        ;;
    esac
    SERVER_PID=$!
    local i
    for i in $(seq 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            sleep 0.2 # let the probe connection go before the RSS baseline
            return 0
        fi
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.05
    done
    log "$name did not start on port $port:"
    cat "$OUT/server-$name.log" >&2
    return 1
}

stop_server() {
    [ -n "$SERVER_PID" ] || return 0
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
}
trap stop_server EXIT

# ---------------------------------------------------------------- scenarios
# Prints the generator flags for a scenario on a server, or nothing to skip it.
scenario_flags() {
    local sc=$1 name=$2 port proto path
    port=$(port_of "$name")
    if [ "$name" = loopchat ]; then proto=loopchat; path=/ws; else proto=plain; path=/; fi
    local common="--protocol $proto --url ws://127.0.0.1:$port$path --warmup $WARMUP --duration $DURATION"
    # The deflate peers only in the compressed scenarios, which only they and
    # loopchat (compression is on by default) take part in.
    case $sc/$name in
    *z/loopchat | *z/*-deflate) ;;
    *z/* | */*-deflate) return 0 ;;
    esac
    case $sc in
    idle) echo "$common --mode idle -n $IDLE_N --sources $SOURCES --concurrency 512" ;;
    idle_big) [ "$IDLE_BIG" -gt 0 ] &&
        echo "$common --mode idle -n $IDLE_BIG --sources $SOURCES --concurrency 512" ;;
    fanout1) echo "$common --mode broadcast -c $RECEIVERS -s 1 --window $FANOUT_WINDOW" ;;
    fanout10) echo "$common --mode broadcast -c $RECEIVERS -s 10 --window $FANOUT_WINDOW" ;;
    latency) echo "$common --mode latency -c $RECEIVERS --rate $LAT_RATE" ;;
    churn) echo "$common --mode churn -n $CHURN_SLOTS --sources $SOURCES" ;;
    idlez) echo "$common --mode idle -n $IDLE_N --sources $SOURCES --concurrency 512 --compression" ;;
    fanout10z) echo "$common --mode broadcast -c $RECEIVERS -s 10 --window $FANOUT_WINDOW --size $Z_SIZE --compression" ;;
    echo) [ "$name" = loopchat ] &&
        echo "--url ws://127.0.0.1:$port/echo --warmup $WARMUP --duration $DURATION --mode echo -n 8 --window 4 --size 65536" ;;
    esac
    return 0
}

run_one() { # scenario server rep
    local sc=$1 name=$2 rep=$3 flags json
    flags=$(scenario_flags "$sc" "$name")
    [ -n "$flags" ] || return 0
    start_server "$name" || return 0
    # shellcheck disable=SC2086
    if json=$(taskset -c 1 "$LOOPCHAT" load $flags --server-pid "$SERVER_PID" --json --quiet \
        --timeout 15s 2>>"$OUT/load.log"); then :; fi
    stop_server
    if [ -z "$json" ]; then
        log "$sc/$name/$rep: no result (see $OUT/load.log)"
        return 0
    fi
    printf '{"scenario":"%s","server":"%s","rep":%s,"result":%s}\n' "$sc" "$name" "$rep" "$json" \
        >>"$OUT/runs.jsonl"
    log "$sc/$name/$rep done"
}

# ---------------------------------------------------------------- main
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)"
build
: >"$OUT/runs.jsonl"
: >"$OUT/load.log"
log "servers: $SERVERS; scenarios: $SCENARIOS; reps: $REPS; warmup $WARMUP, duration $DURATION"
log "host: $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"
for sc in $SCENARIOS; do
    for rep in $(seq "$REPS"); do
        for name in $SERVERS; do
            run_one "$sc" "$name" "$rep"
        done
    done
done

python3 - "$OUT/runs.jsonl" "$SERVERS" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
servers = sys.argv[2].split()
peers = [s for s in servers if s != "loopchat"]

def get(r, path):
    v = r
    for k in path.split("."):
        if not isinstance(v, dict) or v.get(k) is None:
            return None
        v = v[k]
    return v

# (scenario, label, json path, higher is better)
rows = [
    ("idle", "idle 10k: server RSS per connection (B)", "server.rss_per_conn", False),
    ("idle", "idle 10k: connections/s while connecting", "connect_rate", True),
    ("idle_big", "idle 19k: server RSS per connection (B)", "server.rss_per_conn", False),
    ("idle_big", "idle 19k: connections up", "up_peak", True),
    ("fanout1", "fan-out 1 sender: deliveries/s", "deliveries_per_sec", True),
    ("fanout1", "fan-out 1 sender: deliveries per server CPU s", "server.deliveries_per_cpu_sec", True),
    ("fanout1", "fan-out 1 sender: server CPU %", "server.cpu_pct", None),
    ("fanout1", "fan-out 1 sender: generator CPU %", "gen_cpu_pct", None),
    ("fanout1", "fan-out 1 sender: p99 latency (µs)", "latency_us.p99", False),
    ("fanout10", "fan-out 10 senders: deliveries/s", "deliveries_per_sec", True),
    ("fanout10", "fan-out 10 senders: deliveries per server CPU s", "server.deliveries_per_cpu_sec", True),
    ("fanout10", "fan-out 10 senders: server CPU %", "server.cpu_pct", None),
    ("fanout10", "fan-out 10 senders: generator CPU %", "gen_cpu_pct", None),
    ("fanout10", "fan-out 10 senders: p99 latency (µs)", "latency_us.p99", False),
    ("latency", "latency 100k deliveries/s: p50 (µs)", "latency_us.p50", False),
    ("latency", "latency 100k deliveries/s: p99 (µs)", "latency_us.p99", False),
    ("latency", "latency 100k deliveries/s: max (µs)", "latency_us.max", False),
    ("churn", "churn: connect+message+close cycles/s", "cycles_per_sec", True),
    ("churn", "churn: cycles per server CPU s", "server.deliveries_per_cpu_sec", True),
    ("churn", "churn: server CPU %", "server.cpu_pct", None),
    ("churn", "churn: generator CPU %", "gen_cpu_pct", None),
    ("idlez", "idle 10k compressed: server RSS per connection (B)", "server.rss_per_conn", False),
    ("fanout10z", "fan-out 10 senders compressed: deliveries/s", "deliveries_per_sec", True),
    ("fanout10z", "fan-out 10 senders compressed: deliveries per server CPU s", "server.deliveries_per_cpu_sec", True),
    ("fanout10z", "fan-out 10 senders compressed: server CPU %", "server.cpu_pct", None),
    ("fanout10z", "fan-out 10 senders compressed: generator CPU %", "gen_cpu_pct", None),
    ("echo", "echo 64 KiB: MB/s", "mb_per_sec", True),
    ("echo", "echo 64 KiB: server CPU %", "server.cpu_pct", None),
    ("echo", "echo 64 KiB: generator CPU %", "gen_cpu_pct", None),
]

def median(sc, server, path):
    vals = [get(r["result"], path) for r in runs if r["scenario"] == sc and r["server"] == server]
    vals = [v for v in vals if v is not None]
    return (statistics.median(vals), len(vals)) if vals else (None, 0)

def fmt(v):
    if v is None:
        return "–"
    if abs(v) >= 1e6:
        return f"{v/1e6:.2f}M"
    if abs(v) >= 1e4:
        return f"{v/1e3:.0f}k"
    if abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.1f}"

head = ["scenario"] + servers + [f"loopchat/{p}" for p in peers]
print("| " + " | ".join(head) + " |")
print("|" + "---|" * len(head))
for sc, label, path, _better in rows:
    vals = {s: median(sc, s, path)[0] for s in servers}
    if all(v is None for v in vals.values()):
        continue
    ratios = []
    for p in peers:
        a, b = vals.get("loopchat"), vals.get(p)
        comparable = _better is not None and a is not None and b not in (None, 0)
        ratios.append(f"{a/b:.2f}" if comparable else "–")
    print("| " + " | ".join([label] + [fmt(vals[s]) for s in servers] + ratios) + " |")

print()
print("Anomalies (any repetition):")
seen = False
for r in runs:
    res = r["result"]
    notes = []
    if res.get("lost", 0) > 0:
        notes.append(f"lost {res['lost']} of {res['expected']} deliveries")
    if res.get("timed_out", 0) > 0:
        notes.append(f"{res['timed_out']} messages timed out")
    if res.get("closes"):
        notes.append("closed by server " + ", ".join(f"{k}×{v}" for k, v in res["closes"].items()))
    if res.get("handshake_failures", 0) or res.get("connect_errors", 0):
        notes.append(f"{res['connect_errors']} connect errors, {res['handshake_failures']} handshake failures")
    if res.get("server_errors", 0):
        notes.append(f"{res['server_errors']} ERR lines")
    if res.get("up_peak", 0) < res.get("target_connections", 0) and r["scenario"].startswith("idle"):
        notes.append(f"only {res['up_peak']} of {res['target_connections']} connections up")
    if notes:
        seen = True
        print(f"- {r['scenario']}/{r['server']}/rep {r['rep']}: " + "; ".join(notes))
if not seen:
    print("- none")
PY
