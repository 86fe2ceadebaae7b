# binaryrepo — build, run, test, bench. `make run` and `make test` work on a fresh machine:
# they install what they need first (idempotently).
SHELL := /bin/bash
RELEASE := target/release
PLUGIN_OUT := $(RELEASE)/plugins
# test-only plugins (plugins/testdata/: misbehaving on purpose), never in PLUGIN_OUT
TEST_PLUGIN_OUT := $(RELEASE)/test-plugins
PYTEST_ARGS ?=
# E2E_WORKERS=N runs the e2e tests on N pytest-xdist workers (each test starts its own servers on free
# loopback ports); unset, they run in one process, which is what CI does: the timing-sensitive tests
# (timeouts, memory) are measured on a machine that is not also running other tests.
E2E_WORKERS ?=
BENCH_ARGS ?=

.PHONY: all build host plugins test-plugins run test test-unit test-fuzz test-e2e fmt fmt-check deps deps-test clean bench fuzz-build fuzz

all: build

build: plugins host

host:
	cargo build --release -p binaryrepo

plugins:
	plugins/build.sh build $(PLUGIN_OUT)

test-plugins:
	plugins/build.sh build-test $(TEST_PLUGIN_OUT)

deps:
	plugins/build.sh install

deps-test: deps
	tests/install-deps.sh

# Runs binaryrepo on the embedded default: port 8081, data in ./data, docker-remote (Docker Hub,
# also the default for root /v2/ requests) and docker-local.
run: deps build
	$(RELEASE)/binaryrepo serve

test: deps-test build test-unit test-fuzz test-e2e

test-unit: fmt-check
	tests/postgres.sh run cargo test --release -p binaryrepo
	# the criterion benches and the bench tools' servers are not run here, but `make bench` and
	# tests/bench/go_floor.py run them: they must keep compiling
	cargo build --release --quiet -p binaryrepo-benches --benches --examples
	plugins/build.sh test
	cargo test --quiet --manifest-path examples/generic-file/Cargo.toml --target-dir target/examples

# rustfmt over the host (host/rustfmt.toml: 140 columns), every plugin crate and the example plugin
# (rustfmt's defaults).
RUST_CRATES := . $(patsubst %/Cargo.toml,%,$(wildcard plugins/*/Cargo.toml plugins/testdata/*/Cargo.toml)) examples/generic-file
fmt:
	for d in $(RUST_CRATES); do (cd $$d && cargo fmt --all) || exit 1; done

# Part of the tests where rustfmt is installed (rustup's default profile has it).
fmt-check:
	@if cargo fmt --version >/dev/null 2>&1; then \
		for d in $(RUST_CRATES); do (cd $$d && cargo fmt --all --check) || { echo "not formatted: run make fmt" >&2; exit 1; }; done; \
	else echo "rustfmt not installed: formatting not checked" >&2; fi

# The tests' scratch files go to a directory of this run's own (--basetemp), not to pytest's shared
# /tmp/pytest-of-USER, which keeps the last three runs whole and which other pytest runs on the machine
# clean up: a run that passes removes its directory; one that fails keeps it and says where. Free space
# is printed before and after, since a full /tmp fails every later test at set-up. Its name has digits
# only: podman reads an `oci:` path as an image name, which must be lower case.
test-e2e: test-plugins
	@tmp=/tmp/br-e2e.$$(date +%s)-$$$$ && mkdir -m 700 $$tmp && echo "e2e scratch: $$tmp; free: $$(df -h --output=avail /tmp | tail -1)" && \
	BINARYREPO_BIN=$(CURDIR)/$(RELEASE)/binaryrepo BINARYREPO_PLUGINS=$(CURDIR)/$(PLUGIN_OUT) \
		BINARYREPO_TEST_PLUGINS=$(CURDIR)/$(TEST_PLUGIN_OUT) \
		.venv/bin/python -m pytest tests/e2e -q --basetemp=$$tmp \
		$(if $(E2E_WORKERS),-n $(E2E_WORKERS) --dist worksteal) $(PYTEST_ARGS); \
	rc=$$?; echo "e2e scratch used: $$(du -sh $$tmp 2>/dev/null | cut -f1); free: $$(df -h --output=avail /tmp | tail -1)"; \
	if [ $$rc = 0 ]; then rm -rf $$tmp; else echo "e2e scratch kept: $$tmp"; fi; exit $$rc

# Benchmarks against the peers (distribution, distribution proxy, nginx proxy_cache, Docker Engine), all on
# 127.0.0.1; not part of the test suite. Writes tests/bench/results/latest.md.
#   make bench BENCH_ARGS="--only warm,cold --runs 3"
bench: deps-test build
	tests/bench/install-deps.sh
	BINARYREPO_BIN=$(CURDIR)/$(RELEASE)/binaryrepo BINARYREPO_PLUGINS=$(CURDIR)/$(PLUGIN_OUT) \
		.venv/bin/python tests/bench/bench.py $(BENCH_ARGS)

# Every fuzz target for FUZZ_TEST_SECONDS on its committed corpus, one per core at a time (docs/fuzzing.md);
# skipped, saying so, without a nightly toolchain.
FUZZ_TEST_SECONDS ?= 10
test-fuzz:
	tests/fuzz-smoke.sh $(FUZZ_TEST_SECONDS)

# Longer fuzzing by hand: `make fuzz FUZZ_SECONDS=600` (each target in turn; cargo-fuzz on the PATH).
FUZZ_SECONDS ?= 60
fuzz-build:
	cd fuzz && cargo +nightly fuzz build -s none

fuzz: fuzz-build
	cd fuzz && for t in $$(cargo +nightly fuzz list); do \
		cargo +nightly fuzz run -s none $$t corpus/$$t -- -max_total_time=$(FUZZ_SECONDS) -max_len=8192 || exit 1; done

clean:
	cargo clean
	rm -rf plugins/target plugins/*/target plugins/testdata/*/target
