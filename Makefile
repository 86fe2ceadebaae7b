# binaryrepo — build, run, test, bench. `make run` and `make test` work on a fresh machine:
# they install what they need first (idempotently).
SHELL := /bin/bash
RELEASE := target/release
PLUGIN_OUT := $(RELEASE)/plugins
PYTEST_ARGS ?=

.PHONY: all build host plugins run test test-unit test-e2e deps deps-test clean

all: build

build: plugins host

host:
	cargo build --release -p binaryrepo

plugins:
	plugins/build.sh build $(PLUGIN_OUT)

deps:
	plugins/build.sh install

deps-test: deps
	tests/install-deps.sh

# Runs binaryrepo on the embedded default: port 8081, data in ./data, docker-remote (Docker Hub,
# also the default for root /v2/ requests) and docker-local.
run: deps build
	$(RELEASE)/binaryrepo serve

test: deps-test build test-unit test-e2e

test-unit:
	cargo test --release -p binaryrepo
	plugins/build.sh test

test-e2e:
	BINARYREPO_BIN=$(CURDIR)/$(RELEASE)/binaryrepo BINARYREPO_PLUGINS=$(CURDIR)/$(PLUGIN_OUT) \
		.venv/bin/python -m pytest tests/e2e -q $(PYTEST_ARGS)

clean:
	cargo clean
	rm -rf plugins/*/target
