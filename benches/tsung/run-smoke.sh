#!/usr/bin/env bash
# tsung smoke check: start the release server on a free port, run
# benches/tsung/smoke.xml against it, and check tsung's report (tsung.log) and
# the server's /metrics: every user connected, upgraded, sent everything and
# finished; no error_* counter. Exits non-zero on any failure.
#
#   bash benches/tsung/run-smoke.sh            # builds the release binary if missing
#   LOOPCHAT_BIN=path/to/loopchat bash benches/tsung/run-smoke.sh
#
# Installs tsung with apt-get when it is missing. Logs go under /tmp.
set -euo pipefail
cd "$(dirname "$0")/../.."

# What smoke.xml does; keep in step with it.
USERS=50
REQUESTS_PER_USER=9 # connect, /join, 5 lines, /ping, close
LINES_PER_USER=7    # what the server counts as messages in: /join, 5 lines, /ping

BIN="${LOOPCHAT_BIN:-target/release/loopchat}"
if [ ! -x "$BIN" ]; then
  cargo build --release
fi
if ! command -v tsung >/dev/null 2>&1; then
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y tsung
fi

work="$(mktemp -d /tmp/loopchat-tsung.XXXXXX)"
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  exec 3<&- 2>/dev/null || true
}
trap cleanup EXIT

# The server's first stdout line is `listening on ADDR`; read it through a FIFO
# (kept open, so later output never meets a closed pipe).
mkfifo "$work/server.out"
"$BIN" --listen 127.0.0.1:0 --log-level warn >"$work/server.out" 2>"$work/server.err" &
server_pid=$!
exec 3<"$work/server.out"
if ! read -r -t 10 -u 3 first; then
  echo "FAIL: the server did not report its address within 10 s"
  cat "$work/server.err"
  exit 1
fi
addr="${first#listening on }"
port="${addr##*:}"
echo "server $addr (pid $server_pid)"

sed "s/LOOPCHAT_PORT/$port/" benches/tsung/smoke.xml >"$work/smoke.xml"
mkdir -p "$work/log"
echo "tsung -f $work/smoke.xml -l $work/log start"
timeout 180 tsung -f "$work/smoke.xml" -l "$work/log" start >"$work/tsung.out" 2>&1 || {
  echo "FAIL: tsung exited with $?"
  cat "$work/tsung.out"
  exit 1
}
logdir="$(find "$work/log" -mindepth 1 -maxdepth 1 -type d | head -n 1)"
report="$logdir/tsung.log"
if [ ! -s "$report" ]; then
  echo "FAIL: no tsung.log under $work/log"
  cat "$work/tsung.out"
  exit 1
fi
echo "tsung log dir: $logdir"

metrics="$(python3 -c 'import sys, urllib.request; print(urllib.request.urlopen("http://" + sys.argv[1] + "/metrics", timeout=10).read().decode())' "$addr")"

# tsung.log holds one block of `stats:` lines per dump interval; the last line
# for a name is the one to read. Counters: `stats: NAME PERIOD TOTAL` (TOTAL
# includes PERIOD); samples: `stats: NAME COUNT MEAN STDDEV MAX MIN MEAN_BEFORE
# COUNT_BEFORE`, where the BEFORE fields cover the earlier intervals only.
python3 - "$report" "$USERS" "$REQUESTS_PER_USER" "$LINES_PER_USER" "$metrics" <<'EOF'
import sys

report, users, per_user, lines_per_user, metrics = sys.argv[1:6]
users, per_user, lines_per_user = int(users), int(per_user), int(lines_per_user)
last = {}
for line in open(report):
    if line.startswith("stats: "):
        f = line.split()
        last[f[1]] = f[2:]

def total(name):
    v = last.get(name)
    if v is None:
        return None
    if len(v) == 7:  # a sample: this interval's count + the earlier ones
        return float(v[0]) + float(v[6])
    return float(v[-1])

def mean(name):
    v = [float(x) for x in last[name]]
    n = v[0] + v[6]
    return (v[0] * v[1] + v[6] * v[5]) / n if n else 0.0

problems = []
errors = {k: total(k) for k in last if k.startswith("error_") or k.endswith("_fail")}
for k, v in sorted(errors.items()):
    if v:
        problems.append(f"{k} = {v:g}")

def expect(name, want):
    got = total(name)
    print(f"  {name:20} {'-' if got is None else f'{got:g}':>8}   (want {want})")
    if got != want:
        problems.append(f"{name} = {got} (want {want})")

print("tsung report:")
expect("users_count", users)
expect("finish_users_count", users)
expect("connect", users)
expect("websocket_succ", users)
expect("request", users * per_user)
if "session" in last:
    print(f"  session mean {mean('session') / 1000:.2f} s, max {float(last['session'][3]) / 1000:.2f} s")
if "request" in last:
    print(f"  request mean {mean('request'):.2f} ms, max {float(last['request'][3]):.2f} ms")
if "connect" in last:
    print(f"  connect mean {mean('connect'):.2f} ms, max {float(last['connect'][3]):.2f} ms")
print(f"  error_* / *_fail counters: {', '.join(f'{k}={v:g}' for k, v in errors.items()) or 'none'}")

m = {}
for line in metrics.splitlines():
    if line and not line.startswith("#"):
        name, _, value = line.rpartition(" ")
        m[name] = float(value)

def server(name, want):
    got = m.get(name)
    print(f"  {name:50} {'-' if got is None else f'{got:g}':>6}   (want {want})")
    if got != want:
        problems.append(f"server {name} = {got} (want {want})")

print("server /metrics:")
server("loopchat_websocket_upgrades_total", users)
server("loopchat_messages_in_total", users * lines_per_user)
server('loopchat_close_codes_received_total{code="1000"}', users)
for name in m:
    if name.startswith("loopchat_handshake_failures_total") or name.startswith("loopchat_slow_consumer"):
        if m[name]:
            problems.append(f"server {name} = {m[name]:g}")

if problems:
    print("FAIL: " + "; ".join(problems))
    sys.exit(1)
print("tsung smoke: OK")
EOF
