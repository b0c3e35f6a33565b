#!/bin/bash
# Cost of accept + upgrade, measured without wall clocks (the machine may be noisy).
#   benches/accept.sh BIN [N]
# 1. callgrind: user-space instructions per sequential connect + /ws upgrade + close
#    (benches/upgrade_driver.py, N connections after 20 warm-up ones).
# 2. strace -c: syscalls per connection on the server during a churn run.
set -euo pipefail
BIN=${1:?usage: benches/accept.sh BIN [N]}; N=${2:-2000}
cd "$(dirname "$0")/.."
GEN=target/release/loopchat
P=${PORT:-19950}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.2; done; return 1; }

valgrind --tool=callgrind --callgrind-out-file="$OUT/cg" "$BIN" --listen "127.0.0.1:$P" \
    --log-level warn --rate-limit 0 >/dev/null 2>&1 &
SP=$!; wait_port "$P"; sleep 0.5
python3 benches/upgrade_driver.py 127.0.0.1 "$P" "/ws?nick=x" 20 >/dev/null
callgrind_control -z "$SP" >/dev/null
python3 benches/upgrade_driver.py 127.0.0.1 "$P" "/ws?nick=x" "$N"
callgrind_control -d "$SP" >/dev/null
kill -TERM "$SP"; wait "$SP" 2>/dev/null || true
f=$(ls "$OUT"/cg.* | sort | tail -1)
ir=$(callgrind_annotate "$f" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1}')
echo "user-space instructions per upgrade: $((ir / N))"

P=$((P + 1))
"$BIN" --listen "127.0.0.1:$P" --rate-limit 0 --log-level warn >/dev/null 2>&1 &
SP=$!; wait_port "$P"; sleep 0.3
strace -c -f -p "$SP" -o "$OUT/strace" & ST=$!; sleep 0.3
"$GEN" load --mode churn -n 16 --sources 4 --url "ws://127.0.0.1:$P/ws" --warmup 0s \
    --duration 3s --json --quiet --timeout 10s >/dev/null
kill -INT "$ST"; wait "$ST" || true
kill "$SP"; wait "$SP" 2>/dev/null || true
python3 - "$OUT/strace" <<'PY'
import sys
rows = {}
for l in open(sys.argv[1]):
    f = l.split()
    if len(f) >= 5 and f[0][0].isdigit() and f[-1] != "total":
        rows[f[-1]] = (int(f[3]), int(f[4]) if len(f) == 6 else 0)
n = rows["close"][0]
print("connections %d, syscalls per connection %.2f" % (n, sum(c for c, _ in rows.values()) / n))
for k, (c, e) in sorted(rows.items(), key=lambda x: -x[1][0]):
    print("  %-12s %.2f (failed %.2f)" % (k, c / n, e / n))
PY
