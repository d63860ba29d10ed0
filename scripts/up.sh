#!/usr/bin/env bash
# Runs the whole broker locally: every service in one process plus a
# redis-server child on a free loopback port. Extra arguments go to
# `broker up` (e.g. --config broker.yaml, --redis-url redis://127.0.0.1:6379).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
exec cargo run --release --bin broker -- up "$@"
