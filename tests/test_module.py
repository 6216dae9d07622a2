"""The module_load sensor on the real kernel: real init/finit/delete_module calls.

This kernel has no module support: every call fails with ENOSYS, and the
attempt itself must be seen (through raw_syscalls, filtered by number in
the kernel).  On the kernel matrix's Debian kernels a real load and
unload runs too (skipped here).
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import socket
import subprocess

import pytest

from helpers import pump_until, start_agent
from test_capable import Child
from vigil import sensors

pytestmark = pytest.mark.kernel

HAS_MODULES = os.path.exists("/proc/modules")
needs_modules = pytest.mark.skipif(not HAS_MODULES, reason="kernel built without module support")

# The calls a rootkit installer makes, by number (no libc wrappers);
# each prints the errno it got, for an exact comparison.
ATTEMPTS = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
def call(nr, *args):
    ctypes.set_errno(0)
    libc.syscall(nr, *args)
    print(ctypes.get_errno(), flush=True)
NR = {"x86_64": (175, 313, 176), "aarch64": (105, 273, 106)}[os.uname().machine]
fd = os.open(sys.argv[1], os.O_RDONLY)
call(NR[1], fd, b"evil=1", 0)
call(NR[0], b"\\x7fELF-not-a-module", ctypes.c_ulong(19), b"opt=2")
call(NR[2], b"vigil_rootkit", 0o4000)
call(NR[0], b"\\x7fELF", ctypes.c_ulong(4), ctypes.c_void_p(1))  # params: a bad pointer
"""


@pytest.fixture
def agent():
    agent, sink = start_agent(["module_load"], enrich=False)
    yield agent, sink
    agent.session.close()


def _chosen(agent, hook: str) -> str | None:
    """The attach point chosen for `hook`, None when the kernel has none."""
    picks = [c.feature for c in agent.session.choices if c.hook == hook]
    return picks[0] if picks else None


def _mine(events, pid):
    return [e for e in events if e["kind"] == "module_load" and e["pid"] == pid]


def test_attempts_are_reported_with_their_result(agent, tmp_path):
    agent, sink = agent
    fake = tmp_path / "rootkit.ko"
    fake.write_bytes(b"\x7fELF" + bytes(60))
    proc = subprocess.run(
        [*Child.argv("vmod-attempt", ATTEMPTS), str(fake)], capture_output=True, check=True
    )
    errnos = [int(x) for x in proc.stdout.split()]
    if not HAS_MODULES:
        assert errnos == [errno.ENOSYS] * 4
    pid = int(proc.stderr.split()[-1])
    events = pump_until(agent, sink, lambda evs: len(_mine(evs, pid)) == 4)
    finit, init, delete, bad = _mine(events, pid)

    assert (finit["op"], finit["ret"]) == ("finit_module", -errnos[0])
    assert finit["path"] == str(fake).encode()  # the file behind the fd, from the kernel
    assert finit["fd"] >= 3 and finit["call_flags"] == 0
    assert finit["params"] == b"evil=1" and finit["params_read"] is True
    # with the kernel_read_file LSM hook: the file the kernel really read
    assert finit["path_source"] == ("read" if _chosen(agent, "module_file") else "fd")
    assert finit["comm"] == b"vmod-attempt" and finit["flags"] == []

    assert (init["op"], init["ret"], init["len"]) == ("init_module", -errnos[1], 19)
    assert init["params"] == b"opt=2" and init["fd"] == -1 and init["path"] == b""

    assert (delete["op"], delete["ret"]) == ("delete_module", -errnos[2])
    assert delete["name"] == b"vigil_rootkit" and delete["name_source"] == "caller"
    assert delete["call_flags"] == 0o4000  # O_NONBLOCK
    assert delete["params_read"] is False

    # what could not be read is flagged, never an empty field that looks whole
    assert bad["params"] == b"" and bad["params_read"] is False
    assert bad["flags"] == ["partial"]
    if not HAS_MODULES:
        assert init["name"] == b"" and init["name_source"] == "none"
        text = sensors.get("module_load").describe(finit)
        assert text == f"finit_module {fake} params=evil=1 ENOSYS"

    stats = agent.session.kernel_stats()["module_load"]
    assert stats["partial"] >= 1 and stats["lost"] == 0


def test_other_syscalls_leave_in_the_kernel(agent):
    """raw_syscalls fires for every syscall: only module calls reach the ring."""
    agent, sink = agent
    subprocess.run(["/bin/ls", "-la", "/proc/self/"], capture_output=True, check=True)
    for _ in range(5):
        agent.step(0.05)
    emitted = agent.session.kernel_stats()["module_load"]["emitted"]
    assert emitted == len(sink.events)
    assert all(e["op"] in ("init_module", "finit_module", "delete_module") for e in sink.events)


@needs_modules
def test_real_load_and_unload_names_the_module():
    """Kernel matrix: modprobe a small module, then remove it."""
    modprobe = shutil.which("modprobe")
    name = "dummy"
    if modprobe is None:
        pytest.skip("no modprobe")
    with open("/proc/modules") as f:
        if any(line.split()[0] == name for line in f):
            pytest.skip(f"{name} already loaded")
    agent, sink = start_agent(["module_load"], enrich=False)
    try:
        if subprocess.run([modprobe, name], capture_output=True).returncode != 0:
            pytest.skip(f"cannot load {name} here")
        subprocess.run([modprobe, "-r", name], check=True, capture_output=True)

        def loaded(evs):
            return [e for e in evs if e["name"] == name.encode()]

        events = pump_until(agent, sink, lambda evs: len(loaded(evs)) >= 2)
        load = next(e for e in loaded(events) if e["op"] in ("finit_module", "init_module"))
        unload = next(e for e in loaded(events) if e["op"] == "delete_module")
        assert load["ret"] == 0 and load["name_source"] == "kernel"
        if load["op"] == "finit_module":
            assert b"/" + name.encode() in load["path"] and b".ko" in load["path"]
            assert load["path_source"] == ("read" if _chosen(agent, "module_file") else "fd")
        assert unload["ret"] == 0 and unload["name_source"] == "caller"
    finally:
        agent.session.close()


REQUEST_FAMILY = 23  # AF_IRDA: its number is kept, the family is gone from the kernel


def request_trigger():
    """A socket of a family the kernel lacks: it asks modprobe for
    net-pf-23 on this task's behalf (any user can); the matcher."""
    try:
        socket.socket(REQUEST_FAMILY, socket.SOCK_DGRAM).close()
    except OSError:
        pass  # EAFNOSUPPORT: the request was made all the same
    pid = os.getpid()
    return lambda ev: (
        ev["kind"] == "module_load"
        and ev["op"] == "module_request"
        and ev["pid"] == pid
        and ev["name"] == f"net-pf-{REQUEST_FAMILY}".encode()
    )


@needs_modules
def test_module_request_names_the_module_the_kernel_asks_for():
    agent, sink = start_agent(["module_load"], enrich=False)
    try:
        if _chosen(agent, "module_request") is None:
            pytest.skip("neither module:module_request nor the LSM hook here")
        match = request_trigger()
        events = pump_until(agent, sink, lambda evs: any(match(e) for e in evs))
        (e,) = [e for e in events if match(e)]
        assert (e["ret"], e["name_source"], e["path"], e["fd"]) == (0, "kernel", b"", -1)
        text = sensors.get("module_load").describe(e)
        assert text == f"module_request net-pf-{REQUEST_FAMILY}"
    finally:
        agent.session.close()


def attempt_trigger():
    """For test_attach_modes: one delete_module attempt; its matcher."""
    libc = ctypes.CDLL(None, use_errno=True)
    nr = {"x86_64": 176, "aarch64": 106}[os.uname().machine]
    name = f"vigil_mode_{os.getpid()}".encode()
    libc.syscall(nr, name, 0)
    return lambda ev: ev["kind"] == "module_load" and ev["name"] == name
