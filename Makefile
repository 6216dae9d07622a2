# Vigil: top-level entry points.  `make test` and `make monitor` set everything
# up first (scripts/setup.sh: apt packages, .venv, BPF objects, helper
# binaries, tracefs/bpffs mounts); the set-up is idempotent and quick when done.
SHELL := /bin/bash
.DEFAULT_GOAL := setup

VENV   := .venv
PY     := $(VENV)/bin/python
BIN    := build/bin
HELPER_CFLAGS := -O2 -g -Wall -Wextra

ARGS        ?=
PYTEST_ARGS ?=

HELPERS := $(BIN)/usdt-probe $(BIN)/uprobe-target $(BIN)/accept-storm $(BIN)/failexec-storm \
	$(BIN)/exec-tricks $(BIN)/cmdline-dump

.DELETE_ON_ERROR:
.PHONY: setup monitor test bench lint format helpers clean distclean

setup:
	@bash scripts/setup.sh

monitor: setup
	$(VENV)/bin/vigil monitor $(ARGS)

# pytest exit 5 = "no tests collected": a failure here, never a silent green.
test: setup
	@rc=0; $(PY) -m pytest $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (exit 5): failing" >&2; fi; \
	exit $$rc

# Runs every executable in bench/ (and bench/*/run), with the venv first on PATH.
bench: setup
	@export PATH="$(CURDIR)/$(VENV)/bin:$$PATH"; found=0; \
	for b in bench/* bench/*/run; do \
		[ -f "$$b" ] && [ -x "$$b" ] || continue; found=1; \
		echo "== $$b"; "./$$b" || exit $$?; \
	done; \
	[ $$found -eq 1 ] || echo "bench: no benchmarks in bench/ yet"

lint:
	@bash scripts/setup.sh venv
	$(VENV)/bin/ruff check
	$(VENV)/bin/ruff format --check

format:
	@bash scripts/setup.sh venv
	$(VENV)/bin/ruff check --fix
	$(VENV)/bin/ruff format

# Helper binaries used by tests and `vigil doctor` (built by the set-up).
helpers: $(HELPERS)

$(BIN):
	mkdir -p $@

$(BIN)/usdt-probe: tests/progs/usdt_probe.c | $(BIN)
	$(CC) $(HELPER_CFLAGS) -o $@ $<

$(BIN)/uprobe-target: tests/progs/uprobe_target.c | $(BIN)
	$(CC) $(HELPER_CFLAGS) -o $@ $<

# The anchor benchmark's loopback connect/accept load, reused by the flood tests.
$(BIN)/accept-storm: bench/accept_overhead.c | $(BIN)
	$(CC) $(HELPER_CFLAGS) -o $@ $<

$(BIN)/failexec-storm: tests/progs/failexec_storm.c | $(BIN)
	$(CC) $(HELPER_CFLAGS) -o $@ $<

$(BIN)/exec-tricks: tests/progs/exec_tricks.c | $(BIN)
	$(CC) $(HELPER_CFLAGS) -pthread -o $@ $<

$(BIN)/cmdline-dump: tests/progs/cmdline_dump.c | $(BIN)
	$(CC) $(HELPER_CFLAGS) -o $@ $<

clean:
	$(MAKE) -C bpf clean
	rm -rf build .pytest_cache .ruff_cache src/*.egg-info
	find . -name __pycache__ -type d -not -path './$(VENV)/*' -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
