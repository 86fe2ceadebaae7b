#!/usr/bin/env bash
# What `make bench` needs beyond `make deps-test` (tests/install-deps.sh: distribution, skopeo, nginx,
# docker.io, curl, the .venv): wrk for the manifest workload. Idempotent; run as root.
set -euo pipefail
missing() { local p; for p in "$@"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || echo "$p"; done; }
pkgs=$(missing wrk)
if [ -n "${pkgs// /}" ]; then
  echo "tests/bench/install-deps.sh: apt-get install $pkgs" >&2
  APT=(apt-get -o DPkg::Lock::Timeout=900 -o Dir::Cache::archives=/var/cache/binaryrepo-apt)
  mkdir -p /var/cache/binaryrepo-apt/partial
  "${APT[@]}" update -qq
  DEBIAN_FRONTEND=noninteractive "${APT[@]}" install -y -qq $pkgs >/dev/null
fi
