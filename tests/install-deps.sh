#!/usr/bin/env bash
# Installs what the end-to-end tests need, idempotently (only what is missing):
#   - Debian packages for the test peers and clients: CNCF distribution (docker-registry), skopeo, podman,
#     containerd + ctr, Docker Engine (docker.io), nginx, htpasswd (apache2-utils), busybox-static, openssl, curl,
#     go 1.19 and golang.org/x/mod (golang-go golang-golang-x-mod-dev: the Go module tests and their checksum database),
#     postgresql (the shared metadata store of several nodes: tests/postgres.sh starts throw-away clusters)
#   - the Python venv .venv with tests/requirements.txt
#   - s3s-fs (crates.io, an S3 server on a directory that checks SigV4 and presigned URLs), the S3
#     endpoint of the storage tests: built once into $BINARYREPO_E2E_CACHE/s3s-fs (the tests' one cache, default
#     /tmp/binaryrepo-e2e-cache, beside the test images, helm and the Go modules)
# Run as root (the tests start dockerd, containerd and nginx themselves; no daemon is enabled here).
set -euo pipefail
cd "$(dirname "$0")/.."
log() { echo "tests/install-deps.sh: $*" >&2; }
missing() { local p; for p in "$@"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || echo "$p"; done; }
APT=(apt-get -o DPkg::Lock::Timeout=900 -o Dir::Cache::archives=/var/cache/binaryrepo-apt)
install() {  # own archive dir: Debian images' docker-clean hook can delete the shared one mid-install
  mkdir -p /var/cache/binaryrepo-apt/partial
  [ -n "${UPDATED:-}" ] || { "${APT[@]}" update -qq; UPDATED=1; }
  DEBIAN_FRONTEND=noninteractive "${APT[@]}" install -y -qq "$@" >/dev/null
}
pkgs=$(missing docker-registry skopeo podman containerd nginx apache2-utils busybox-static openssl curl golang-go golang-golang-x-mod-dev postgresql)
python3 -c 'import ensurepip' 2>/dev/null || pkgs="$pkgs python3-venv"
if [ -n "${pkgs// /}" ]; then log "apt-get install" $pkgs; install $pkgs; fi
engine=$(missing docker.io)
if [ -n "$engine" ]; then log "apt-get install --no-install-recommends docker.io"; install --no-install-recommends docker.io; fi
[ -x .venv/bin/python ] || { log "python3 -m venv .venv"; python3 -m venv .venv; }
.venv/bin/python -c 'import pytest, xdist, cryptography, prometheus_client, yaml, schemathesis' 2>/dev/null || .venv/bin/pip install -q -r tests/requirements.txt
# The web page's test: Debian's Chromium driven by playwright-core (no browser download) from Node.
# Node.js and npm count when their commands exist (a Node.js not from Debian ships its own npm).
web=$(missing chromium)
command -v node >/dev/null && command -v npm >/dev/null || web="$web nodejs npm"
if [ -n "${web// /}" ]; then log "apt-get install" $web; install $web; fi
if [ ! -f tests/e2e/web/node_modules/playwright-core/package.json ]; then
  log "npm ci in tests/e2e/web"; (cd tests/e2e/web && npm ci --no-audit --no-fund --silent)
fi
S3S_FS_ROOT="${BINARYREPO_E2E_CACHE:-/tmp/binaryrepo-e2e-cache}/s3s-fs"
if [ ! -x "$S3S_FS_ROOT/bin/s3s-fs" ]; then
  # a test server: opt-level 1 without LTO builds in a third of the time (~4.5 min of CPU instead of
  # ~9 min of wall); the tests need a correct server more than a fast one
  log "cargo install s3s-fs@0.14.1 into $S3S_FS_ROOT (once, ~3 min)"
  CARGO_PROFILE_RELEASE_OPT_LEVEL=1 CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 CARGO_PROFILE_RELEASE_LTO=false \
    CARGO_PROFILE_RELEASE_DEBUG=false \
    cargo install --quiet --locked s3s-fs@0.14.1 --features binary --root "$S3S_FS_ROOT" --target-dir "$S3S_FS_ROOT-build"
  rm -rf "$S3S_FS_ROOT-build"
fi
