#!/usr/bin/env bash
# Every fuzz target (fuzz/, docs/fuzzing.md) for a few seconds on its committed corpus, as part of
# `make test`: the corpus is replayed, then the target explores; a panic or a broken invariant fails the step.
#   tests/fuzz-smoke.sh [SECONDS per target, default 10]
# Needs a nightly toolchain (rustup); without one it says so and skips. The targets are built the way
# `cargo fuzz build -s none` builds them (the same compiler flags), so the smoke run needs no cargo-fuzz
# install; they run as plain libFuzzer binaries, as many at once as there are cores (FUZZ_JOBS).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
jobs=${FUZZ_JOBS:-$(nproc)}
log() { echo "tests/fuzz-smoke.sh: $*" >&2; }
if ! cargo +nightly --version >/dev/null 2>&1; then
  log "SKIPPED: no nightly toolchain (rustup toolchain install nightly); the fuzz targets did not run"
  exit 0
fi
cd fuzz
triple=$(rustc +nightly -vV | sed -n 's/^host: //p')
# cargo-fuzz 0.12's flags for `-s none` (no sanitizer): libFuzzer's coverage instrumentation and cfg(fuzzing)
RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cllvm-args=-simplifycfg-branch-fold-threshold=0 \
-Cllvm-args=-sanitizer-coverage-stack-depth -Cdebug-assertions -Ccodegen-units=1" \
  cargo +nightly build --quiet --release --target "$triple" --bins --config 'profile.release.debug="line-tables-only"'
bin=target/$triple/release
targets=$(sed -n '/^\[\[bin\]\]/{n;s/^name = "\(.*\)"$/\1/p}' Cargo.toml)
[ -n "$targets" ] || { log "no [[bin]] targets found in fuzz/Cargo.toml"; exit 1; }
# What a run finds goes to a scratch directory: the committed corpus changes only by hand.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
run() {
  local t=$1
  mkdir -p "$scratch/$t" "artifacts/$t"
  if "$bin/$t" -max_total_time="$seconds" -max_len=8192 -artifact_prefix="artifacts/$t/" \
      "$scratch/$t" "corpus/$t" >"$scratch/$t.log" 2>&1; then
    log "$t: $(grep -E '^Done [0-9]+ runs' "$scratch/$t.log" | tail -1)"
  else
    tail -n 30 "$scratch/$t.log" >&2
    touch "$scratch/$t.failed"
  fi
}
running=0
for t in $targets; do
  run "$t" &
  running=$((running + 1))
  if [ "$running" -ge "$jobs" ]; then wait -n || true; running=$((running - 1)); fi
done
wait
failed=""
for t in $targets; do
  if [ -e "$scratch/$t.failed" ]; then failed="$failed$t "; fi
done
if [ -n "$failed" ]; then
  log "FAILED: $failed(the input is in fuzz/artifacts/<target>/; replay it as docs/fuzzing.md says)"
  exit 1
fi
