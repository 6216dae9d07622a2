"""Shared test helpers: capture the agent's real output, wait for events."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from vigil.loader import Session
from vigil.process import ProcessTable
from vigil.ring_pipeline import RingPipeline, assemble_live
from vigil.stages import Batch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Waits for the kernel are multiplied by this: `make test-kernels` sets it in
# its emulated guests (TCG runs code 10-50x slower), where a wait sized for
# real hardware would fail a test for time alone.  Never below 1.
TIME_SCALE = max(1.0, float(os.environ.get("VIGIL_TEST_TIME_SCALE", "1")))

# For tests that start the `vigil` command (Python start-up, /proc scan,
# feature probes) several times: 1-4 minutes each under TCG, measured on 6.1
# and 6.12, against seconds here.  The sensors they drive are loaded,
# attached and triggered by in-process tests that do run in the matrix.
tcg_slow_cli = pytest.mark.tcg_slow(
    reason="starts the vigil command several times: minutes under TCG; its sensors' "
    "in-process tests run in the matrix"
)
TRUE = os.path.realpath(shutil.which("true"))

# The same rule for every test, marked or not: in the matrix's emulated
# guests (VIGIL_MATRIX_GUEST) a test skips where it starts the vigil command,
# `vigil doctor` excepted (a real load of every sensor, run there on purpose).
IN_MATRIX_GUEST = bool(os.environ.get("VIGIL_MATRIX_GUEST"))


def _command_here(args) -> None:
    if IN_MATRIX_GUEST and (not args or args[0] != "doctor"):
        pytest.skip(
            "tcg_slow: starts the vigil command (minutes under TCG); its sensors' "
            "in-process tests run in the matrix"
        )


class ListSink:
    """Keeps every event the agent emits (after decode and enrichment)."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        self.stats: dict = {}

    def write(self, batch: Batch) -> None:
        self.events.extend(batch.events)

    def status(self, stats: dict) -> None:
        self.stats = stats

    def close(self) -> None:
        pass


def start_agent(sensors=("exec", "fork", "exit"), *, enrich=True, sinks=(), **session_kw):
    """A real agent: BPF loaded and attached, process table seeded."""
    session = Session(list(sensors), **session_kw)
    table = None
    if enrich:
        table = ProcessTable()
        table.seed()
    sink = ListSink()
    agent = assemble_live(session, [sink, *sinks], processes=table, poll_interval=0.05)
    return agent, sink


def pump_until(
    agent: RingPipeline, sink: ListSink, done: Callable[[list[dict]], bool], timeout=10.0
):
    """Drive the agent until `done(events)` holds; returns the events."""
    timeout *= TIME_SCALE
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        agent.step(0.05)
        if done(sink.events):
            return sink.events
    raise AssertionError(f"condition not met in {timeout}s; {len(sink.events)} events seen")


def execs_of(events: list[dict], filename: bytes | None = None, marker: bytes | None = None):
    out = []
    for ev in events:
        if ev["kind"] != "exec":
            continue
        if filename is not None and ev["filename"] != filename:
            continue
        if marker is not None and marker not in ev["args"]:
            continue
        out.append(ev)
    return out


def unique_marker() -> bytes:
    return f"vigil-test-{os.getpid()}-{time.monotonic_ns()}".encode()


def vigil(
    *args: str, timeout: float = 60, check: bool = False, **kw
) -> subprocess.CompletedProcess:
    """Run the real `vigil` command line (the package's entry point)."""
    _command_here(args)
    exe = os.path.join(os.path.dirname(sys.executable), "vigil")
    cmd = [exe] if os.path.exists(exe) else [sys.executable, "-m", "vigil.cli"]
    return subprocess.run(
        [*cmd, *args], capture_output=True, timeout=timeout * TIME_SCALE, check=check, **kw
    )


VIGIL = os.path.join(os.path.dirname(sys.executable), "vigil")


def vigil_argv(*args: str) -> list[str]:
    """The command line of a vigil command a test starts itself."""
    _command_here(args)
    return [VIGIL, *args]


def start_vigil(*args: str, env=None) -> subprocess.Popen:
    """Start a vigil command; return once it says it is tracing (lines it
    prints before that, such as skipped sensors, are allowed)."""
    _command_here(args)
    proc = subprocess.Popen([VIGIL, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    seen = b""
    while b"Ctrl-C to end" not in seen:
        line = proc.stderr.readline()
        if not line:
            raise AssertionError(seen + proc.stderr.read())
        seen += line
    proc.seen = seen  # what it printed up to the ready line
    return proc


def stop_vigil(proc: subprocess.Popen, timeout: float = 60) -> tuple[bytes, bytes]:
    """Ctrl-C it, as a user would; it must exit cleanly."""
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=timeout * TIME_SCALE)
    assert proc.returncode == 0, err
    return out, err


# -- 32-bit syscalls (tests/progs/ia32_syscall.c) -----------------------------------
IA32 = os.path.join(ROOT, "build", "bin", "ia32-syscall")
I386_GETPID = 20


def run_ia32(*args: str) -> tuple[int, int]:
    """Run build/bin/ia32-syscall (an int $0x80 call from a 64-bit
    process); (its pid, the raw return of its last call)."""
    proc = subprocess.Popen([IA32, *args], stdout=subprocess.PIPE)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    return proc.pid, int(out)


def needs_ia32() -> None:
    """Skip where the kernel takes no 32-bit calls (IA32_EMULATION off)."""
    pid, ret = run_ia32(str(I386_GETPID))
    if ret != pid:
        pytest.skip("no 32-bit syscalls here (IA32_EMULATION off or disabled)")
