#!/usr/bin/env bash
# Builds every plugin crate under plugins/ as a wasm32-wasip2 component, or runs their native
# unit tests. Idempotently sets up the toolchain first:
#   - the standard route: `rustup target add wasm32-wasip2` (about 20 s on a new machine);
#   - where that download fails, Debian's rustc-web + rust-web-src (same version) with std
#     rebuilt by -Zbuild-std, linked by Debian's lld and wasi-libc.
#
#   plugins/build.sh install      set up the toolchain only
#   plugins/build.sh build OUTDIR build every plugin, copy the .wasm files to OUTDIR
#   plugins/build.sh build-test OUTDIR
#                                 build the test-only plugins under testdata/ (misbehaving on
#                                 purpose, for the end-to-end tests); never part of `build`
#   plugins/build.sh test         native unit tests of the SDK and every plugin
#
# plugins/sdk is the guest SDK: a library every plugin builds on, never a .wasm of its own.
set -euo pipefail
caller=$PWD
cd "$(dirname "$0")"
TARGET=wasm32-wasip2
WASI_LIBDIR=/usr/lib/wasm32-wasi
DEB_PKGS="rustc-web cargo-web rust-web-src rust-web-llvm wasi-libc"
log() { echo "plugins/build.sh: $*" >&2; }
# One target directory for every plugin crate: they are separate workspaces (each its own profile, apart
# from the host), but with the same profile their dependencies (wit-bindgen and its macro, serde, the SDK)
# are compiled once for all of them instead of once per plugin.
export CARGO_TARGET_DIR="${PLUGINS_TARGET_DIR:-$PWD/target}"

have_rustup_target() { command -v rustup >/dev/null && rustup target list --installed 2>/dev/null | grep -qx "$TARGET"; }
debian_ready() {
  [ -x /usr/bin/rustc ] && [ -x /usr/bin/cargo ] && [ -d /usr/lib/rustlib/src/rust/library/std ] &&
    [ -x /usr/bin/rust-lld ] && /usr/bin/rust-lld -flavor wasm --version >/dev/null 2>&1 && [ -f "$WASI_LIBDIR/libc.a" ]
}
apt_install() {
  local missing=() p
  for p in "$@"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "apt-get install ${missing[*]}"
  apt-get -o DPkg::Lock::Timeout=900 update -qq
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 install -y -qq "${missing[@]}" >/dev/null
}
install() {
  if ! have_rustup_target && command -v rustup >/dev/null; then
    log "rustup target add $TARGET"
    timeout 300 rustup target add "$TARGET" >&2 || log "rustup could not add $TARGET; using Debian's toolchain"
  fi
  if ! have_rustup_target && ! debian_ready; then
    apt_install $DEB_PKGS
    apt_install "$(readlink /usr/bin/rust-lld)"
  fi
  have_rustup_target || debian_ready || { log "no toolchain for $TARGET"; exit 1; }
}
guest_cargo() { # cargo for the guest, on whichever route is set up
  if have_rustup_target; then
    cargo "$1" --target "$TARGET" "${@:2}"
  else
    local tv; tv=$(echo "$TARGET" | tr 'a-z-' 'A-Z_')
    env RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc RUSTC_BOOTSTRAP=1 \
      "CARGO_TARGET_${tv}_RUSTFLAGS=-L native=$WASI_LIBDIR" \
      /usr/bin/cargo "$1" --target "$TARGET" -Zbuild-std=std,panic_abort "${@:2}"
  fi
}
# plugin crates directly under $1 (default: here); testdata/ holds no Cargo.toml itself, so the
# test-only plugins in it are never found by `build` and never shipped
crates() { for d in ${1:+$1/}*/; do [ -f "$d/Cargo.toml" ] && grep -q '^crate-type = \["cdylib"\]' "$d/Cargo.toml" && echo "${d%/}"; done; }
# the .wasm a crate builds: its package name with `_` for `-`
artifact() { sed -n '0,/^name = "\(.*\)"$/s//\1/p' "$1/Cargo.toml" | tr - _; }
build_into() { # OUTDIR CRATE...
  local out=$1 c w; shift
  for c in "$@"; do
    (cd "$c" && guest_cargo build --release --quiet)
    w=$CARGO_TARGET_DIR/$TARGET/release/$(artifact "$c").wasm
    [ -f "$w" ] || { log "$c: no $w after the build"; exit 1; }
    cp -f "$w" "$out/"; log "built $out/$(basename "$w") ($(stat -c %s "$w") bytes)"
  done
}

case "${1:-}" in
  install) install ;;
  build)
    out=$(cd "$caller" && realpath -m "${2:?usage: build OUTDIR}"); install; mkdir -p "$out"
    build_into "$out" $(crates) ;;
  build-test)
    out=$(cd "$caller" && realpath -m "${2:?usage: build-test OUTDIR}"); install; mkdir -p "$out"
    build_into "$out" $(crates testdata) ;;
  test)
    (cd sdk && cargo test --quiet --features fake-host)
    for c in $(crates); do (cd "$c" && cargo test --quiet); done ;;
  *) echo "usage: $0 install | build OUTDIR | build-test OUTDIR | test" >&2; exit 2 ;;
esac
