#!/bin/bash
# usage: benches/accept_vs_bun.sh REPS SCENARIOS BINS...  (BIN "bun" = the Bun peer)
# Churn per server-CPU-second and latency at 100k deliveries/s (1000 receivers,
# 100 msgs/s), loopchat binaries against Bun, interleaved per repetition.
#   benches/accept_vs_bun.sh 3 "churn latency" /tmp/base/loopchat target/release/loopchat bun
LAST=$(mktemp); trap 'rm -f "$LAST"' EXIT
REPS=$1; SCEN=$2; shift 2
BUN=${BUN:-$(cd "$(dirname "$0")" && pwd)/peers/bun/node_modules/@oven/bun-linux-x64/bin/bun}
BUNJS=$(cd "$(dirname "$0")" && pwd)/peers/bun/server.js
GEN=${GEN:-$(cd "$(dirname "$0")/.." && pwd)/target/release/loopchat}
P=19800
for rep in $(seq $REPS); do for sc in $SCEN; do for b in "$@"; do
  P=$((P+1))
  if [ "$b" = bun ]; then
    taskset -c 0 $BUN $BUNJS $P >/dev/null 2>&1 & SP=$!; url=ws://127.0.0.1:$P/; proto=plain
  else
    taskset -c 0 $b --listen 127.0.0.1:$P --rate-limit 0 --log-level warn --shutdown-timeout 1s >/dev/null 2>&1 & SP=$!; url=ws://127.0.0.1:$P/ws; proto=loopchat
  fi
  for i in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$P) 2>/dev/null && break; sleep 0.05; done; sleep 0.2
  case $sc in
    latency) flags="--mode latency -c 1000 --rate 100";;
    churn) flags="--mode churn -n 64 --sources 8";;
  esac
  taskset -c 1 $GEN load $flags --protocol $proto --url $url --warmup 1s --duration 5s --server-pid $SP --json --quiet --timeout 15s 2>/dev/null > "$LAST"
  kill -KILL $SP; wait $SP 2>/dev/null
  python3 - "$rep" "$sc" "$(basename $b)" "$LAST" <<'PY'
import json,sys
rep,sc,b=sys.argv[1:4]
try: d=json.load(open(sys.argv[4]))
except Exception as e: print(rep,sc,b,"no result"); sys.exit()
s=d.get("server") or {}
if sc=="latency":
    l=d["latency_us"]; print("%s %-8s %-22s p50 %6d p99 %6d max %6d deliv/s %.0f srvcpu %.0f%%" % (rep,sc,b,l["p50"],l["p99"],l["max"],d["deliveries_per_sec"],s.get("cpu_pct",0)))
else:
    print("%s %-8s %-22s cycles/s %6.0f per-srv-cpu-s %6.0f srvcpu %.0f%% gencpu %.0f%%" % (rep,sc,b,d["cycles_per_sec"],s.get("deliveries_per_cpu_sec",0),s.get("cpu_pct",0),d.get("gen_cpu_pct",0)))
PY
done; done; done
