#!/usr/bin/env bash
# Check the files in deploy/ with the real tools:
#   nginx -t            deploy/nginx.conf, with a throwaway self-signed certificate
#                       in place of the `# EDIT` paths (as shipped it must fail:
#                       the certificates of chat.example.com do not exist)
#   systemd-analyze     deploy/loopchat@.service: `verify`, and `security` at most 3.0
#   promtool            deploy/prometheus/: `check rules`, `test rules` (each
#                       alert fires above its threshold), `check config`
#   kubernetes-validate deploy/k8s/*.yaml against the Kubernetes API schemas
# A missing tool is a loud SKIP, or a failure with LOOPCHAT_REQUIRE_TOOLS=1 (CI).
# Runs on its own:  bash deploy/check.sh
set -euo pipefail
cd "$(dirname "$0")"
deploy="$(pwd)"
require="${LOOPCHAT_REQUIRE_TOOLS:-0}"
work="$(mktemp -d /tmp/loopchat-deploy-check.XXXXXX)"
trap 'rm -rf "$work"' EXIT

skip() {
  if [ "$require" = 1 ]; then
    echo "FAIL: $1 is missing (LOOPCHAT_REQUIRE_TOOLS=1)" >&2
    exit 1
  fi
  echo "******** SKIPPED: $1 is missing ********"
}

echo "== nginx"
if command -v nginx >/dev/null 2>&1; then
  if nginx -t -q -c "$deploy/nginx.conf" -e "$work/shipped.log" >"$work/shipped.out" 2>&1; then
    echo "FAIL: nginx -t passed on the shipped file; the README says it fails until edited" >&2
    exit 1
  fi
  grep -q 'chat.example.com' "$work/shipped.out" || {
    cat "$work/shipped.out" >&2
    echo "FAIL: nginx -t failed on the shipped file for another reason than the certificates" >&2
    exit 1
  }
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$work/key.pem" -out "$work/cert.pem" \
    -days 1 -subj /CN=chat.example.com >/dev/null 2>&1
  sed -e "s#/etc/letsencrypt/live/chat.example.com/fullchain.pem#$work/cert.pem#" \
    -e "s#/etc/letsencrypt/live/chat.example.com/privkey.pem#$work/key.pem#" \
    -e "s#^pid .*#pid $work/nginx.pid;#" \
    -e "s#/var/log/nginx/error.log#$work/error.log#" \
    "$deploy/nginx.conf" >"$work/nginx.conf"
  # `user` needs root and an existing account: drop it when either is missing.
  if [ "$(id -u)" != 0 ] || ! id www-data >/dev/null 2>&1; then
    sed -i -e 's/^user .*//' "$work/nginx.conf"
  fi
  nginx -t -c "$work/nginx.conf" -e "$work/error.log"

  # And through it for real: the tested file on free loopback ports in front of
  # the loopchat binary (LOOPCHAT_BIN, else the newer of target/release and
  # target/debug).
  bin="${LOOPCHAT_BIN:-}"
  if [ -z "$bin" ]; then
    for b in ../target/release/loopchat ../target/debug/loopchat; do
      if [ -x "$b" ] && { [ -z "$bin" ] || [ "$b" -nt "$bin" ]; }; then bin="$b"; fi
    done
  fi
  if [ -z "$bin" ]; then
    skip "a loopchat binary (cargo build)"
  else
    port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
    app="$(port)"; tls="$(port)"; plain="$(port)"; metrics="$(port)"
    sed -e "s#listen 443 ssl;#listen 127.0.0.1:$tls ssl;#" -e 's#listen \[::\]:443 ssl;##' \
      -e "s#listen 80;#listen 127.0.0.1:$plain;#" -e 's#listen \[::\]:80;##' \
      -e "s#server 127.0.0.1:9000;#server 127.0.0.1:$app;#" -e 's/^user .*//' \
      -e 's/^worker_processes auto;/worker_processes 1;/' \
      -e 's/worker_rlimit_nofile 1048576;/worker_rlimit_nofile 4096;/' \
      -e 's/worker_connections 524288;/worker_connections 1024;/' \
      "$work/nginx.conf" >"$work/run.conf"
    "$bin" --listen "127.0.0.1:$app" --metrics-listen "127.0.1.1:$metrics" \
      --trust-proxy 127.0.0.1/8 --log-level warn >"$work/loopchat.out" 2>"$work/loopchat.err" &
    lc=$!
    nginx -c "$work/run.conf" -e "$work/error.log"
    cleanup_run() { nginx -c "$work/run.conf" -s stop 2>/dev/null || true; kill "$lc" 2>/dev/null || true; }
    trap 'cleanup_run; rm -rf "$work"' EXIT
    for _ in $(seq 100); do
      grep -q '^metrics on' "$work/loopchat.out" && break
      kill -0 "$lc" 2>/dev/null || break
      sleep 0.1
    done
    grep -q '^metrics on' "$work/loopchat.out" || {
      cat "$work/loopchat.err" >&2
      echo "FAIL: $bin did not start" >&2
      exit 1
    }
    upgrade() {
      curl -sk --http1.1 --max-time 5 -o /dev/null -w '%{http_code}' \
        -H 'Connection: Upgrade' -H 'Upgrade: websocket' -H 'Sec-WebSocket-Version: 13' \
        -H 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==' "https://127.0.0.1:$tls/ws?nick=check$1" || true
    }
    codes=""
    for i in 1 2 3 4 5 6 7 8; do codes="$codes $(upgrade "$i")"; done
    echo "upgrades through nginx:$codes"
    [ "$(echo "$codes" | tr ' ' '\n' | grep -c '^101$')" = 8 ] || {
      cat "$work/error.log" >&2
      echo "FAIL: WebSocket upgrades through deploy/nginx.conf:$codes" >&2
      exit 1
    }
    status="$(curl -sk -o /dev/null -w '%{http_code}' "https://127.0.0.1:$tls/metrics")"
    [ "$status" = 404 ] || { echo "FAIL: /metrics through nginx answered $status, not 404" >&2; exit 1; }
    curl -fs "http://127.0.1.1:$metrics/metrics" >"$work/metrics.txt" || true
    grep -q "^loopchat_websocket_upgrades_total 8\$" "$work/metrics.txt" || {
      grep -E "^loopchat_(websocket|handshake|connections)" "$work/metrics.txt" >&2 || true
      echo "FAIL: the metrics port did not count 8 upgrades" >&2
      exit 1
    }
    echo "nginx -> loopchat: 8 upgrades (101), /metrics 404 outside, served on the metrics port"
    cleanup_run
  fi
else
  skip nginx
fi

echo "== systemd-analyze"
if command -v systemd-analyze >/dev/null 2>&1; then
  # An instance of the template, with a stand-in for the binary.
  mkdir -p "$work/unit"
  sed -e "s#/usr/local/bin/loopchat#/bin/true#" "$deploy/loopchat@.service" >"$work/unit/loopchat@.service"
  cp "$work/unit/loopchat@.service" "$work/unit/loopchat@1.service"
  systemd-analyze verify "$work/unit/loopchat@1.service"
  out="$(systemd-analyze security --offline=yes "$work/unit/loopchat@1.service" 2>&1)"
  level="$(printf '%s\n' "$out" | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')"
  echo "systemd-analyze security: $level"
  awk -v l="$level" 'BEGIN { exit !(l != "" && l <= 3.0) }' || {
    printf '%s\n' "$out" >&2
    echo "FAIL: exposure level $level is above 3.0" >&2
    exit 1
  }
else
  skip systemd-analyze
fi

echo "== promtool"
if command -v promtool >/dev/null 2>&1; then
  promtool check rules "$deploy/prometheus/alerts.yml"
  promtool test rules "$deploy/prometheus/alerts_test.yml"
  promtool check config "$deploy/prometheus/prometheus.yml"
else
  skip promtool
fi

echo "== kubernetes-validate"
if command -v kubernetes-validate >/dev/null 2>&1; then
  # --strict: an unknown or misspelt field fails, not only a wrong type.
  kubernetes-validate --strict --quiet "$deploy/k8s/loopchat.yaml" "$deploy/k8s/redis.yaml"
  echo "deploy/k8s: valid"
else
  skip kubernetes-validate
fi

echo "deploy/: ok"
