#!/bin/sh
# Local delivery latency, one process alone against one --redis node whose
# room messages are numbered by Redis before delivery (same run, same binary).
# Run from the repository root after `cargo build --release`; needs redis-server.
set -e
B=target/release/loopchat
redis-server --port 6391 --bind 127.0.0.1 --save '' --appendonly no --daemonize yes >/dev/null
sleep 0.5
$B --listen 127.0.0.1:9311 --rate-limit 0 >/dev/null 2>&1 & P1=$!
$B --listen 127.0.0.1:9312 --rate-limit 0 --redis redis://127.0.0.1:6391 >/dev/null 2>&1 & P2=$!
sleep 1
for round in 1 2 3; do
echo "== single process (round $round)"
$B load --mode latency -c 100 --rate 500 --duration 10s --url ws://127.0.0.1:9311/ws --json
echo "== --redis node (round $round)"
$B load --mode latency -c 100 --rate 500 --duration 10s --url ws://127.0.0.1:9312/ws --json
done
kill $P1 $P2
redis-cli -p 6391 shutdown nosave >/dev/null 2>&1 || true
