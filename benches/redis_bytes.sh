#!/bin/bash
# Bytes and Redis CPU per room message on one cluster node (needs redis-server, websocat).
# usage: benches/redis_bytes.sh BIN [N]   (run it for two builds to compare)
BIN=$1; N=${2:-5000}; PORT=6397
redis-server --port $PORT --bind 127.0.0.1 --save '' --appendonly no --daemonize yes >/dev/null; sleep 0.3
$BIN --listen 127.0.0.1:9399 --redis redis://127.0.0.1:$PORT --rate-limit 0 >/dev/null 2>&1 & P=$!
sleep 1
in0=$(redis-cli -p $PORT INFO stats | grep total_net_input_bytes | tr -d '\r' | cut -d: -f2)
cpu0=$(redis-cli -p $PORT INFO cpu | grep -E "^used_cpu_(user|sys):" | tr -d '\r' | cut -d: -f2 | paste -sd+ | bc)
seq 1 $N | sed 's/^/message number /' | timeout 20 websocat -n "ws://127.0.0.1:9399/ws?nick=x&room=r" >/dev/null 2>&1 &
W=$!
# wait until the counter reaches N
for i in $(seq 1 200); do s=$(redis-cli -p $PORT HGET lc:seq:r s); [ "$s" = "$N" ] && break; sleep 0.1; done
in1=$(redis-cli -p $PORT INFO stats | grep total_net_input_bytes | tr -d '\r' | cut -d: -f2)
cpu1=$(redis-cli -p $PORT INFO cpu | grep -E "^used_cpu_(user|sys):" | tr -d '\r' | cut -d: -f2 | paste -sd+ | bc)
echo "$(basename $BIN): counter=$s bytes/msg into Redis: $(( (in1-in0)/N )) redis cpu us/msg: $(echo "($cpu1-$cpu0)*1000000/$N" | bc)"
kill $P $W 2>/dev/null; redis-cli -p $PORT shutdown nosave >/dev/null 2>&1; wait 2>/dev/null
