#!/usr/bin/env bash
# Installs what the broker's tests and local run need and Rust does not
# bring: redis-server and redis-cli (Debian/Ubuntu packages). Idempotent.
set -euo pipefail
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "error: missing ${need[*]}; install Redis 7 (redis-server, redis-cli) with your package manager" >&2
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
# The Debian package starts a system redis on 6379; the broker never uses it.
