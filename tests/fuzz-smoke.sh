#!/usr/bin/env bash
# Every cargo-fuzz target (fuzz/, docs/fuzzing.md) for a few seconds on its committed corpus, as part of
# `make test`: the corpus is replayed, then the target explores; a panic or a broken invariant fails the step.
#   tests/fuzz-smoke.sh [SECONDS per target, default 10]
# Needs a nightly toolchain (rustup); without one it says so and skips. cargo-fuzz is installed once into
# $BINARYREPO_E2E_CACHE/cargo-fuzz (the tests' cache, default /tmp/binaryrepo-e2e-cache) and reused.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
log() { echo "tests/fuzz-smoke.sh: $*" >&2; }
if ! cargo +nightly --version >/dev/null 2>&1; then
  log "SKIPPED: no nightly toolchain (rustup toolchain install nightly); the fuzz targets did not run"
  exit 0
fi
cache=${BINARYREPO_E2E_CACHE:-/tmp/binaryrepo-e2e-cache}/cargo-fuzz
if [ ! -x "$cache/bin/cargo-fuzz" ]; then
  log "cargo install cargo-fuzz into $cache (once)"
  cargo install --locked --quiet cargo-fuzz --root "$cache"
fi
export PATH="$cache/bin:$PATH"
cd fuzz
cargo +nightly fuzz build -s none
# What a run finds goes to a scratch directory: the committed corpus changes only by hand.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failed=()
for t in $(cargo +nightly fuzz list); do
  mkdir -p "$scratch/$t"
  if cargo +nightly fuzz run -s none "$t" "$scratch/$t" "corpus/$t" -- \
      -max_total_time="$seconds" -max_len=8192 >"$scratch/$t.log" 2>&1; then
    log "$t: $(grep -E '^Done [0-9]+ runs' "$scratch/$t.log" | tail -1)"
  else
    tail -n 30 "$scratch/$t.log" >&2
    failed+=("$t")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  log "FAILED: ${failed[*]} (the input is in fuzz/artifacts/<target>/; replay it as docs/fuzzing.md says)"
  exit 1
fi
