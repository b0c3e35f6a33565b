#!/bin/bash
# usage: benches/accept_vs_bun.sh REPS SCENARIOS BINS...  (BIN "bun" = the Bun peer)
# Churn per server-CPU-second and latency at 100k deliveries/s (1000 receivers,
# 100 msgs/s), loopchat binaries against Bun, interleaved per repetition.
#   benches/accept_vs_bun.sh 3 "churn churn-quiet echo-churn latency" /tmp/base/loopchat target/release/loopchat bun
# Scenarios (64 slots each cycling connect, upgrade, one message, close):
#   churn        loopchat /ws in one room (nick, WELCOME, JOINED/LEFT to the
#                other slots, the message to all 64) vs Bun publishing to all
#   churn-quiet  the same with --presence-limit 0: no JOINED/LEFT to the others,
#                so loopchat's extra work over Bun is the nick and WELCOME lines
#   echo-churn   loopchat /echo vs Bun echoing to the sender only (server.js
#                echo): the upgrade itself, like for like
#   upgrade      one connection at a time (benches/upgrade_driver.py: connect,
#                upgrade, close, UPGRADES of them, default 10000): loopchat /echo
#                vs Bun's echo mode; server CPU from /proc before and after, so
#                no batching of several connections per loop turn helps either
#   upgrade-chat the same against loopchat /ws (a nick, a room, WELCOME) and
#                Bun subscribing to its topic
#   latency      1000 receivers, one sender at 100 msgs/s (LAT_DURATION, 5s)
# Each line ends with the 1-minute load average when the run ended.
LAST=$(mktemp); trap 'rm -f "$LAST"' EXIT
REPS=$1; SCEN=$2; shift 2
BUN=${BUN:-$(cd "$(dirname "$0")" && pwd)/peers/bun/node_modules/@oven/bun-linux-x64/bin/bun}
BUNJS=$(cd "$(dirname "$0")" && pwd)/peers/bun/server.js
GEN=${GEN:-$(cd "$(dirname "$0")/.." && pwd)/target/release/loopchat}
LAT_DURATION=${LAT_DURATION:-5s}
P=${BASE_PORT:-19800}
for rep in $(seq $REPS); do for sc in $SCEN; do for b in "$@"; do
  P=$((P+1))
  extra=; path=/ws; bunmode=
  case $sc in
    churn-quiet) extra="--presence-limit 0";;
    echo-churn | upgrade) path=/echo; bunmode=echo;;
  esac
  if [ "$b" = bun ]; then
    taskset -c 0 $BUN $BUNJS $P $bunmode >/dev/null 2>&1 & SP=$!; url=ws://127.0.0.1:$P/; proto=plain
  else
    taskset -c 0 $b --listen 127.0.0.1:$P --rate-limit 0 --log-level warn --shutdown-timeout 1s $extra >/dev/null 2>&1 & SP=$!; url=ws://127.0.0.1:$P$path
    proto=loopchat; [ "$path" = /echo ] && proto=plain
  fi
  for i in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$P) 2>/dev/null && break; sleep 0.05; done; sleep 0.2
  if [ "${sc%%-*}" = upgrade ]; then
    [ "$b" = bun ] && path=/
    cpu() { awk '{print $14+$15}' /proc/$SP/stat; }
    c0=$(cpu); t0=$(date +%s.%N)
    out=$(taskset -c 1 python3 "$(dirname "$0")/upgrade_driver.py" 127.0.0.1 $P "$path" "${UPGRADES:-10000}")
    c1=$(cpu); t1=$(date +%s.%N)
    kill -KILL $SP; wait $SP 2>/dev/null
    n=$(echo "$out" | awk '{print $2}')
    python3 -c "import sys,os; n,c0,c1,t0,t1=map(float,sys.argv[1:6]); hz=os.sysconf('SC_CLK_TCK'); cs=(c1-c0)/hz; print('%s %-11s %-22s upgrades %5d per-srv-cpu-s %6.0f srvcpu %.0f%% load %s' % (sys.argv[6],sys.argv[7],sys.argv[8],n,n/cs if cs else 0,100*cs/(t1-t0),sys.argv[9]))" $n $c0 $c1 $t0 $t1 $rep $sc "$(basename $b)" "$(cut -d' ' -f1 /proc/loadavg)"
    continue
  fi
  case $sc in
    latency) flags="--mode latency -c 1000 --rate 100"; dur=$LAT_DURATION;;
    *) flags="--mode churn -n 64 --sources 8"; dur=5s;;
  esac
  taskset -c 1 $GEN load $flags --protocol $proto --url $url --warmup 1s --duration $dur --server-pid $SP --json --quiet --timeout 15s 2>/dev/null > "$LAST"
  kill -KILL $SP; wait $SP 2>/dev/null
  python3 - "$rep" "$sc" "$(basename $b)" "$LAST" "$(cut -d' ' -f1 /proc/loadavg)" <<'PY'
import json,sys
rep,sc,b,_,load=sys.argv[1:6]
try: d=json.load(open(sys.argv[4]))
except Exception as e: print(rep,sc,b,"no result"); sys.exit()
s=d.get("server") or {}
if sc=="latency":
    l=d["latency_us"]; print("%s %-11s %-22s p50 %6d p99 %6d p999 %6d max %6d deliv/s %.0f srvcpu %.0f%% load %s" % (rep,sc,b,l["p50"],l["p99"],l["p999"],l["max"],d["deliveries_per_sec"],s.get("cpu_pct",0),load))
else:
    print("%s %-11s %-22s cycles/s %6.0f per-srv-cpu-s %6.0f srvcpu %.0f%% gencpu %.0f%% load %s" % (rep,sc,b,d["cycles_per_sec"],s.get("deliveries_per_cpu_sec",0),s.get("cpu_pct",0),d.get("gen_cpu_pct",0),load))
PY
done; done; done
