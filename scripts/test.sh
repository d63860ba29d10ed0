#!/usr/bin/env bash
# Runs the whole test suite: formatting, module cycles, lints, unit, property and
# integration tests (real redis-server processes on loopback ports), the
# container image and the docker-compose cluster test, the Kubernetes
# manifests' schema check, and a short fuzzing run.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
echo "== cargo fmt --check" >&2
cargo fmt --all -- --check
echo "== module cycles" >&2
python3 scripts/module-cycles.py
echo "== dependency boundaries" >&2
# The gateway and the operator CLI reach the router and the writers through
# internal-clients: neither links a Redis client, redb, raft or a service
# crate it does not run.
for crate in ingest-gateway brokerctl; do
  linked=$(cargo tree -p "$crate" -e normal --prefix none --locked |
    grep -E '^(fred|redb|raft|storage-writer|shard-router|cluster-ctl) ' | sort -u || true)
  if [ -n "$linked" ]; then
    echo "error: $crate links what it must not:" >&2
    echo "$linked" >&2
    exit 1
  fi
done
echo "ingest-gateway and brokerctl link no Redis client, redb or raft" >&2
echo "== cargo clippy" >&2
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== container image (scripts/images.sh)" >&2
# The compose test (crates/broker/tests/compose.rs) runs this image.
scripts/images.sh
echo "== cargo test" >&2
# The connection-flood test holds 10,000 connections (and the broker in
# the same process their other ends): as many open files as allowed.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
echo "open files: $(ulimit -n)" >&2
# Includes tests/tests/query.rs: Prometheus's promtool against query-api and
# the dashboard in headless Chromium (Python Playwright + Debian chromium, set up by
# deps.sh); its screenshots are left in test-artifacts/.
mkdir -p test-artifacts
cargo test --workspace --locked
ls test-artifacts/*.png >&2 2>/dev/null || true
echo "== fuzz smoke (FUZZ_SECONDS=${FUZZ_SECONDS:-20} per target)" >&2
scripts/fuzz.sh
