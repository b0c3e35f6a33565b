#!/usr/bin/env bash
# permessage-deflate end to end: idle RSS per connection, fan-out deliveries
# per server-CPU-second and bytes on the wire per delivered chat line, plain
# against compressed, each pair from fresh server processes in the same run.
#
#   cargo build --release && benches/deflate.sh        # RUNS=3 IDLE=10000 by default
#   RUNS=1 IDLE=19000 SIZES= benches/deflate.sh         # idle only, 19k connections
#
# Needs: target/release/loopchat, curl. Port: $PORT (default 19312).
set -euo pipefail
cd "$(dirname "$0")/.."
B=${B:-target/release/loopchat}
PORT=${PORT:-19312}
RUNS=${RUNS:-3}
IDLE=${IDLE:-10000}
# Open loop at a fixed rate, so both sides of a pair do the same work and
# deliveries per server-CPU-second compares the cost, not the throughput.
RATE=${RATE:-150}
SIZES=${SIZES-32 100 400}   # broadcast payload sizes; SIZES= skips the broadcast runs
URL="ws://127.0.0.1:$PORT/ws"

start() {
  "$B" --listen "127.0.0.1:$PORT" --rate-limit 0 --log-level warn "$@" >/dev/null 2>&1 &
  SP=$!
  for _ in $(seq 50); do curl -sf "127.0.0.1:$PORT/healthz" >/dev/null && return; sleep 0.1; done
  echo "server did not start" >&2; exit 1
}
stop() { kill "$SP"; wait "$SP" 2>/dev/null || true; }
metric() { curl -s "127.0.0.1:$PORT/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }

echo "# idle: $IDLE connections, server RSS per connection"
for i in $(seq "$RUNS"); do
  for z in plain compressed; do
    start
    flag=(); [ "$z" = compressed ] && flag=(--compression)
    line=$("$B" load --url "$URL" --mode idle -n "$IDLE" --sources 8 --duration 2s \
      --server-pid "$SP" -q "${flag[@]}" | grep '^server:')
    echo "idle $z run $i: ${line#server: } (deflate handshakes: $(metric loopchat_websocket_deflate_total))"
    stop
  done
done

echo "# broadcast: 1000 receivers, 10 senders, open loop at $RATE messages/s"
for size in $SIZES; do
  for i in $(seq "$RUNS"); do
    for z in plain compressed; do
      start
      flag=(); [ "$z" = compressed ] && flag=(--compression)
      out=$("$B" load --url "$URL" --mode broadcast -c 1000 -s 10 --rate "$RATE" --size "$size" \
        --warmup 1s --duration 5s --server-pid "$SP" -q "${flag[@]}")
      per_cpu=$(echo "$out" | sed -n 's/.* \([0-9]*\) deliveries per CPU s.*/\1/p')
      rate=$(echo "$out" | sed -n 's/^measured [^:]*: \([0-9]*\) msgs\/s.*/\1/p')
      bytes=$(metric loopchat_bytes_out_total)
      msgs=$(metric loopchat_messages_out_total)
      deflated=$(metric loopchat_deflated_messages_total)
      echo "broadcast size $size $z run $i: $rate msgs/s, $per_cpu deliveries per server-CPU-s," \
        "$(awk -v b="$bytes" -v m="$msgs" 'BEGIN { printf "%.1f", b / m }') wire bytes per delivery," \
        "$deflated broadcasts deflated"
      stop
    done
  done
done
