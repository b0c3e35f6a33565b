#!/usr/bin/env bash
# CI for what users touch: the web page in headless Chromium, the tsung smoke
# run, the /metrics parser check and the deploy/ files (nginx -t,
# systemd-analyze, promtool, kubernetes-validate). Installs what a fresh Debian
# machine lacks (chromium, tsung, nginx, prometheus, prometheus_client,
# kubernetes-validate), builds the release binary, then runs each check. Runs on its own:  bash .ci/browser-and-tools.sh
#
# Needs: Debian/Ubuntu with apt-get (as root), Rust, Node >= 18 with npm, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"
start=$SECONDS

section() {
  echo
  echo "======== $* ($((SECONDS - start)) s)"
}

section "tools"
need_apt=()
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
command -v tsung >/dev/null 2>&1 || need_apt+=(tsung)
command -v nginx >/dev/null 2>&1 || need_apt+=(nginx)
# promtool: `check rules` for deploy/prometheus, and the /metrics parser.
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
if [ "${#need_apt[@]}" -gt 0 ]; then
  echo "apt-get install ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
have_parser() {
  command -v promtool >/dev/null 2>&1 || python3 -c 'import prometheus_client.parser' 2>/dev/null
}
if ! have_parser; then
  echo "pip install prometheus_client"
  python3 -m pip install --quiet prometheus_client 2>/dev/null ||
    python3 -m pip install --quiet --break-system-packages prometheus_client 2>/dev/null ||
    true
fi
if ! command -v kubernetes-validate >/dev/null 2>&1; then
  echo "pip install kubernetes-validate"
  python3 -m pip install --quiet kubernetes-validate 2>/dev/null ||
    python3 -m pip install --quiet --break-system-packages kubernetes-validate
fi
if ! have_parser; then
  echo "apt-get install prometheus (for promtool)"
  [ "${#need_apt[@]}" -gt 0 ] || apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
/usr/bin/chromium --version
tsung -v
node --version
if command -v promtool >/dev/null 2>&1; then promtool --version | head -n 1; fi
python3 -c 'import prometheus_client; print("prometheus_client", prometheus_client.__version__)' 2>/dev/null || true

section "build (release)"
cargo build --release
export LOOPCHAT_BIN="$root/target/release/loopchat"

# .ci/run's `cargo test` runs this test too: it may set SKIP_METRICS_TEST=1
# here and export LOOPCHAT_REQUIRE_TOOLS=1 for its own run instead.
if [ "${SKIP_METRICS_TEST:-0}" != 1 ]; then
  section "metrics test (a real Prometheus parser is required)"
  LOOPCHAT_REQUIRE_TOOLS=1 cargo test --test metrics -- --nocapture
fi

section "deploy/ (deploy/check.sh)"
LOOPCHAT_REQUIRE_TOOLS=1 bash deploy/check.sh

section "browser test (tests/browser)"
(
  cd tests/browser
  npm ci --no-audit --no-fund
  npm test
)

section "tsung smoke (benches/tsung/run-smoke.sh)"
bash benches/tsung/run-smoke.sh

section "browser and tools: all passed"
