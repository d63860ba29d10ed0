#!/usr/bin/env bash
# Builds the broker's container image (default tag broker:local, used by
# docker-compose.yml and deploy/kubernetes).
#
#   scripts/images.sh            binaries compiled here with cargo (release),
#                                image built with `--target runtime`
#   scripts/images.sh --source   everything compiled inside Docker (needs the
#                                rust image: a machine with a registry)
#
# The base image (BASE, default debian:bookworm-slim) is used as it is when
# present, pulled when a registry answers, and otherwise made here from
# Debian's packages by scripts/base-image.sh (debootstrap + docker import).
#
# Environment: IMAGE (tag, as docker-compose.yml reads it), BASE,
# CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE="${IMAGE:-broker:local}"
BASE="${BASE:-debian:bookworm-slim}"
BINS=(broker ingest-gateway shard-router storage-writer cluster-ctl query-api brokerctl broker-loadgen broker-agent)
mode=host
case "${1:-}" in
  "") ;;
  --source) mode=source ;;
  *) echo "usage: scripts/images.sh [--source]" >&2; exit 64 ;;
esac

command -v docker >/dev/null 2>&1 || { echo "error: docker not found (install Docker Engine)" >&2; exit 1; }
docker info >/dev/null 2>&1 || { echo "error: the Docker daemon does not answer (is it running? may this user use it?)" >&2; exit 1; }

start=$(date +%s)
if docker image inspect "$BASE" >/dev/null 2>&1; then
  echo "base image $BASE: present" >&2
elif timeout 120 docker pull "$BASE" >/dev/null 2>&1; then
  echo "base image $BASE: pulled" >&2
else
  echo "base image $BASE: absent and cannot be pulled; making it with debootstrap" >&2
  scripts/base-image.sh "$BASE"
fi

if [ "$mode" = source ]; then
  echo "building $IMAGE: compiling inside Docker (docker build .)" >&2
  docker build --build-arg BASE="$BASE" -t "$IMAGE" .
else
  echo "building the binaries (cargo build --release)" >&2
  args=()
  for b in "${BINS[@]}"; do args+=(--bin "$b"); done
  cargo build --release --locked "${args[@]}"
  target="${CARGO_TARGET_DIR:-target}"
  rm -rf .docker-bin && mkdir -p .docker-bin
  for b in "${BINS[@]}"; do
    strip --strip-debug -o ".docker-bin/$b" "$target/release/$b"
  done
  echo "building $IMAGE (--target runtime, binaries from .docker-bin/)" >&2
  docker build --build-arg BASE="$BASE" --target runtime -t "$IMAGE" . >/dev/null
fi
# The image this replaced, now untagged, goes (not the build cache).
docker image prune --force --filter label=org.opencontainers.image.title=monitoring-broker >/dev/null
size=$(docker image inspect -f '{{.Size}}' "$IMAGE")
echo "image $IMAGE: $((size / 1024 / 1024)) MiB, built in $(($(date +%s) - start)) s" >&2
