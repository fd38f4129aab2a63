#!/usr/bin/env bash
# Install Prometheus (Debian/Ubuntu package) when it is missing; print the binary's path.
# Idempotent and quick when installed: CI and tests/integration/test_prometheus.py call it before the
# dashboard test. Needs root or passwordless sudo to install; the package's own service is not needed
# (the test runs a private prometheus with its own config, port and storage directory).
set -euo pipefail

find_prometheus() {
  command -v prometheus 2>/dev/null || { [ -x /usr/bin/prometheus ] && echo /usr/bin/prometheus; } || return 1
}

if bin=$(find_prometheus); then
  echo "$bin"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-prometheus: no apt-get here; install Prometheus (https://prometheus.io/download/) and put it on PATH" >&2
  exit 1
fi

if [ "$(id -u)" -eq 0 ]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO=(sudo -n)
else
  echo "install-prometheus: need root (or passwordless sudo) to run: apt-get install -y prometheus" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# Try the cached package lists first; refresh them only when the package is unknown or stale.
if ! "${SUDO[@]}" apt-get install -y --no-install-recommends prometheus >/dev/null 2>&1; then
  "${SUDO[@]}" apt-get update -qq
  "${SUDO[@]}" apt-get install -y --no-install-recommends prometheus >/dev/null
fi

bin=$(find_prometheus) || { echo "install-prometheus: installed, but no prometheus binary found" >&2; exit 1; }
echo "$bin"
