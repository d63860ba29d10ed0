#!/usr/bin/env bash
# Installs what the broker's tests and local run need and Rust does not
# bring (Debian/Ubuntu packages), idempotently:
# - redis-server and redis-cli: the real Redis every integration test starts;
# - prometheus (for promtool): the Prometheus client the query-api test uses;
# - chromium and nodejs/npm, then playwright-core (tests/browser, `npm ci`):
#   the dashboard test in headless Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
if [ ${#need[@]} -gt 0 ]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: missing ${need[*]}; install Redis 7 (redis-server, redis-cli), promtool (prometheus), chromium and nodejs/npm with your package manager" >&2
    exit 1
  fi
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  echo "installing ${need[*]} with apt-get" >&2
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y --no-install-recommends "${need[@]}" >/dev/null 2>&1 || {
    $SUDO apt-get update >/dev/null
    $SUDO apt-get install -y --no-install-recommends "${need[@]}" >/dev/null
  }
  # The Debian packages start a system redis on 6379 and a prometheus on
  # 9090; the broker and its tests never use them.
fi
# playwright-core drives the system chromium; it downloads no browser.
if [ ! -f tests/browser/node_modules/playwright-core/package.json ] ||
  [ tests/browser/package-lock.json -nt tests/browser/node_modules/.package-lock.json ]; then
  echo "installing tests/browser node modules (npm ci)" >&2
  (cd tests/browser && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund >/dev/null)
fi
