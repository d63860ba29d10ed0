#!/usr/bin/env bash
# Installs what the broker's tests and local run need and Rust does not
# bring (Debian/Ubuntu packages), idempotently:
# - redis-server and redis-cli: the real Redis every integration test starts;
# - prometheus (promtool and prometheus): the Prometheus client the
#   query-api test uses, and the Prometheus that remote-writes into the
#   gateway in the remote-write test;
# - prometheus-node-exporter: what that Prometheus scrapes;
# - prometheus-alertmanager: the real Alertmanager host-manager's alerts
#   test delivers to;
# - chromium, then Playwright for Python (PyPI, tests/requirements.txt):
#   the dashboard test in headless Chromium;
# - kubernetes-validate (PyPI, tests/requirements.txt): the manifests' check;
# - the OpenTelemetry SDK and its OTLP exporters (PyPI, tests/requirements.txt):
#   the OTLP test's client.
# - iproute2 (ip) and curl: the network test builds its own namespaces and
#   reads each node's status from inside them (it needs root).
# Docker Engine and docker-compose must be there already (the compose test).
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v prometheus-alertmanager >/dev/null 2>&1 || need+=(prometheus-alertmanager)
command -v prometheus-node-exporter >/dev/null 2>&1 || need+=(prometheus-node-exporter)
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v curl >/dev/null 2>&1 || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: missing ${need[*]}; install Redis 7 (redis-server, redis-cli), promtool (prometheus) and chromium with your package manager" >&2
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
  # The Debian packages start a system redis on 6379, a prometheus on 9090,
  # a node_exporter on 9100 and an alertmanager on 9093 (where they may);
  # the broker's tests never use them.
fi
for tool in docker docker-compose; do
  command -v "$tool" >/dev/null 2>&1 ||
    echo "warning: $tool not found: the container tests need Docker Engine and docker-compose" >&2
done
# Playwright drives the system chromium; it downloads no browser.
if ! python3 -c 'import playwright.sync_api, kubernetes_validate, opentelemetry.exporter.otlp.proto.grpc.metric_exporter, opentelemetry.exporter.otlp.proto.http.metric_exporter' >/dev/null 2>&1; then
  echo "installing tests/requirements.txt with pip" >&2
  python3 -m pip install --quiet -r tests/requirements.txt
fi
