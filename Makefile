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
	$(BIN)/exec-tricks $(BIN)/cmdline-dump $(BIN)/uring-open $(BIN)/ia32-syscall \
	$(BIN)/farjump32 $(BIN)/prog32 build/bpf/test_rejected.bpf.o

.DELETE_ON_ERROR:
.PHONY: setup monitor test test-kernels bench lint format helpers clean distclean

setup:
	@bash scripts/setup.sh

monitor: setup
	$(VENV)/bin/vigil monitor $(ARGS)

# pytest exit 5 = "no tests collected": a failure here, never a silent green.
test: setup
	@rc=0; $(PY) -m pytest $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (exit 5): failing" >&2; fi; \
	exit $$rc

# The kernel-marked tests on Debian 12's 6.1, Debian's 6.12 (backports) and
# the running kernel, each guest booted under QEMU (scripts/kernel_matrix.py);
# prints sensor x kernel x attach point.  MATRIX_ARGS: --kernel 6.1, -k EXPR...
MATRIX_ARGS ?=
test-kernels: setup
	@bash scripts/setup.sh vm
	$(PY) scripts/kernel_matrix.py $(MATRIX_ARGS)

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

$(BIN)/uring-open: tests/progs/uring_open.c | $(BIN)
	$(CC) $(HELPER_CFLAGS) -o $@ $<

$(BIN)/ia32-syscall: tests/progs/ia32_syscall.c | $(BIN)
	$(CC) $(HELPER_CFLAGS) -o $@ $<

# 32-bit mode from a 64-bit program (-no-pie: its 32-bit code and stack
# below 4 GiB), and a real i386 program (no libc: no multilib needed)
$(BIN)/farjump32: tests/progs/farjump32.c | $(BIN)
	$(CC) $(HELPER_CFLAGS) -no-pie -o $@ $<

PROG32_CFLAGS := $(if $(filter x86_64,$(shell uname -m)),-m32 -O2 -Wall -nostdlib -static \
	-no-pie -fno-pie -ffreestanding -fno-stack-protector,$(HELPER_CFLAGS))
$(BIN)/prog32: tests/progs/prog32.c | $(BIN)
	$(CC) $(PROG32_CFLAGS) -o $@ $<

# A sensor object the verifier refuses (tests/test_skip_unloadable.py); it
# includes the sensors' headers and vmlinux.h from the BPF build.
build/bpf/test_rejected.bpf.o: tests/progs/rejected.bpf.c bpf/common.bpf.h bpf/vigil.h
	$(MAKE) -C bpf
	clang -g -O2 -Wall -target bpf -D__TARGET_ARCH_x86 -Ibuild/bpf -Ibpf -c $< -o $@

clean:
	$(MAKE) -C bpf clean
	rm -rf build .pytest_cache .ruff_cache src/*.egg-info
	find . -name __pycache__ -type d -not -path './$(VENV)/*' -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
