#!/usr/bin/env bash
# Makes a minimal Debian bookworm image from Debian's packages, for a
# machine whose Docker cannot pull one: debootstrap --variant=minbase into a
# temporary directory, trimmed as the official slim image is, then
# `docker import` as the given tag (default debian:bookworm-slim).
# With a registry you never need this: Docker pulls the official image.
#
# Needs root (debootstrap) and Debian's package mirror (MIRROR).
set -euo pipefail
TAG="${1:-debian:bookworm-slim}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
if ! command -v debootstrap >/dev/null 2>&1; then
  command -v apt-get >/dev/null 2>&1 || { echo "error: debootstrap missing and no apt-get to install it" >&2; exit 1; }
  echo "installing debootstrap with apt-get" >&2
  $SUDO apt-get install -y --no-install-recommends debootstrap >/dev/null 2>&1 || {
    $SUDO apt-get update >/dev/null
    $SUDO apt-get install -y --no-install-recommends debootstrap >/dev/null
  }
fi
root=$(mktemp -d /tmp/broker-rootfs.XXXXXX)
trap '$SUDO rm -rf "$root"' EXIT
echo "debootstrap bookworm (minbase) from $MIRROR" >&2
$SUDO debootstrap --variant=minbase bookworm "$root" "$MIRROR" >/dev/null
# What the official image has: deb822 sources with updates and security,
# no documentation from later installs, no package caches.
$SUDO rm -f "$root/etc/apt/sources.list"
$SUDO tee "$root/etc/apt/sources.list.d/debian.sources" >/dev/null <<EOF
Types: deb
URIs: $MIRROR
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${MIRROR%/debian}/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
$SUDO tee "$root/etc/dpkg/dpkg.cfg.d/docker-slim" >/dev/null <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
EOF
$SUDO tee "$root/etc/apt/apt.conf.d/docker-clean" >/dev/null <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
$SUDO find "$root/usr/share/doc" -mindepth 2 -not -name copyright -delete 2>/dev/null || true
$SUDO rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/* \
  "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/var/log/*.log \
  "$root"/tmp/* "$root"/root/.bash_history
$SUDO tar -C "$root" --numeric-owner -c . |
  docker import --change 'CMD ["bash"]' \
    --message "debootstrap --variant=minbase bookworm (scripts/base-image.sh)" - "$TAG" >/dev/null
echo "made $TAG: $(($(docker image inspect -f '{{.Size}}' "$TAG") / 1024 / 1024)) MiB" >&2
