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
