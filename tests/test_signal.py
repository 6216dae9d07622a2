"""The kill and ptrace sensors on the real kernel: real signals, real tracers."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time

import orjson
import pytest

from helpers import pump_until, start_agent, start_vigil, stop_vigil, vigil
from test_capable import Child
from vigil import sensors

pytestmark = pytest.mark.kernel

SLEEP = os.path.realpath("/bin/sleep")
PROCESS = ["exec", "fork", "exit"]  # the process table: the target's exe


def _sleeper() -> subprocess.Popen:
    """A child that has exec'd sleep (its exe known to the table) before we act."""
    proc = subprocess.Popen([SLEEP, "60"])
    for _ in range(200):
        try:
            if os.readlink(f"/proc/{proc.pid}/exe") == SLEEP:
                return proc
        except OSError:
            pass
        time.sleep(0.01)
    raise AssertionError("sleep did not start")


def _kills(events, pid, **want):
    return [
        e
        for e in events
        if e["kind"] == "kill" and e["pid"] == pid and all(e[k] == v for k, v in want.items())
    ]


def test_sigterm_names_the_target():
    agent, sink = start_agent(["kill", *PROCESS])
    try:
        target = _sleeper()
        sender = Child("vkill-term", f"os.kill({target.pid}, 15)\n")
        assert target.wait(10) == -signal.SIGTERM
        done = lambda evs: _kills(evs, sender.pid, sig=15)  # noqa: E731
        (ev,) = _kills(pump_until(agent, sink, done), sender.pid, sig=15)
        assert (ev["syscall"], ev["ret"], ev["sig_name"]) == ("kill", 0, "SIGTERM")
        assert (ev["target_arg"], ev["target_pid"]) == (target.pid, target.pid)
        # the task_kill LSM hook (where BPF-LSM loads: 6.1, 6.12) names the
        # target from the kernel's task; the tracepoint from the argument
        lsm = any(c.sensor == "kill" and c.feature == "lsm" for c in agent.session.choices)
        if lsm:
            assert ev["target_source"] == "kernel"
        else:
            assert ev["target_source"] == "argument" and ev["target_tid"] == 0
        # who was signalled: the target's exe and comm, from the process table
        assert ev["target_exe"] == SLEEP.encode() and ev["target_comm"] == b"sleep"
        assert ev["comm"] == b"vkill-term" and ev["ancestors"][0]["pid"] == os.getpid()
        text = sensors.get("kill").describe(ev)
        assert text == f"kill SIGTERM -> {target.pid} (sleep) {SLEEP} ok"
    finally:
        agent.session.close()


SENDERS = """
import signal, ctypes
target = int(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
signal.pthread_kill  # tgkill through the libc wrapper below
assert libc.syscall({tgkill}, target, target, 0) == 0
assert libc.syscall({tkill}, target, 0) == 0
fd = os.pidfd_open(target)
signal.pidfd_send_signal(fd, 0)
try:
    os.kill(2**22 + 12345, 9)  # beyond pid_max: ESRCH
except ProcessLookupError:
    pass
info = (ctypes.c_int * 32)(0, 0, -1)  # si_signo, si_errno, si_code = SI_QUEUE
assert libc.syscall({sigqueue}, target, 0, info) == 0  # rt_sigqueueinfo
"""


def test_tkill_tgkill_pidfd_and_failures():
    nr = {"x86_64": (234, 200, 129), "aarch64": (131, 130, 138)}[os.uname().machine]
    agent, sink = start_agent(["kill"], enrich=False)
    target = _sleeper()
    try:
        code = SENDERS.format(tgkill=nr[0], tkill=nr[1], sigqueue=nr[2])
        sender = Child("vkill-kinds", code, str(target.pid))
        done = lambda evs: len(_kills(evs, sender.pid)) == 5  # noqa: E731
        tgkill, tkill, pidfd, esrch, queued = _kills(pump_until(agent, sink, done), sender.pid)
        assert (tgkill["syscall"], tgkill["target_pid"], tgkill["target_tid"]) == (
            "tgkill",
            target.pid,
            target.pid,
        )
        assert (tkill["syscall"], tkill["target_tid"], tkill["sig"]) == ("tkill", target.pid, 0)
        # a pidfd is resolved to its process in the kernel
        assert (pidfd["syscall"], pidfd["target_source"]) == ("pidfd_send_signal", "kernel")
        assert pidfd["target_pid"] == target.pid and pidfd["target_arg"] >= 3
        # a signal with a forged siginfo is a signal too
        assert (queued["syscall"], queued["ret"], queued["target_pid"]) == (
            "rt_sigqueueinfo",
            0,
            target.pid,
        )
        assert (esrch["ret"], esrch["sig_name"], esrch["target_pid"]) == (
            -3,
            "SIGKILL",
            2**22 + 12345,
        )
    finally:
        target.kill()
        target.wait()
        agent.session.close()


PROBES = "for _ in range(200):\n    os.kill(int(sys.argv[1]), 0)\nos.kill(int(sys.argv[1]), 0)\n"


@pytest.mark.parametrize("unique", [0, 1])
def test_kill_zero_probes_are_deduplicated_in_kernel(unique):
    agent, sink = start_agent(["kill"], enrich=False, rodata={"unique": unique})
    target = _sleeper()
    try:
        sender = Child("vkill-probe", PROBES + f"os.kill({target.pid}, 10)\n", str(target.pid))
        pump_until(agent, sink, lambda evs: _kills(evs, sender.pid, sig=10))
        probes = _kills(sink.events, sender.pid, sig=0)
        # 201 probes: all with unique off; one (same image, target, result) with it on
        assert len(probes) == (1 if unique else 201)
        assert agent.session.kernel_stats()["kill"]["emitted"] == len(sink.events)
    finally:
        target.kill()
        target.wait()
        agent.session.close()


PTRACE = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
target = int(sys.argv[1])
assert libc.ptrace(16, target, None, None) == 0  # PTRACE_ATTACH
os.waitpid(target, 0)
ctypes.set_errno(0)
assert libc.ptrace(5, target, 8, 0x41) == -1  # POKEDATA at an unmapped address
assert ctypes.get_errno() == 5  # EIO
assert libc.ptrace(17, target, None, None) == 0  # DETACH: not reported
assert libc.ptrace(16, 2**22 + 4321, None, None) == -1  # no such process: ESRCH
"""


def test_ptrace_attach_and_poke():
    agent, sink = start_agent(["ptrace", *PROCESS])
    target = _sleeper()
    try:
        tracer = Child("vptrace", PTRACE, str(target.pid))

        def mine(evs):
            return [e for e in evs if e["kind"] == "ptrace" and e["pid"] == tracer.pid]

        events = mine(pump_until(agent, sink, lambda evs: len(mine(evs)) == 3))
        attach, poke, missing = events
        assert (attach["request"], attach["ret"], attach["target_pid"]) == ("attach", 0, target.pid)
        assert attach["target_exe"] == SLEEP.encode() and attach["target_comm"] == b"sleep"
        assert (poke["request"], poke["ret"], poke["addr"], poke["data"]) == (
            "pokedata",
            -5,
            8,
            0x41,
        )
        assert (missing["request"], missing["ret"]) == ("attach", -3)
        assert missing["target_pid"] == 2**22 + 4321 and missing["target_exe"] == b""
        text = sensors.get("ptrace").describe(attach)
        assert text == f"ptrace attach -> {target.pid} (sleep) {SLEEP} ok"
    finally:
        target.kill()
        target.wait()
        agent.session.close()


def test_killsnoop_columns_and_signal_filter():
    proc = start_vigil("killsnoop", "-s", "TERM")
    target = _sleeper()
    Child("vkill-cli", f"os.kill({target.pid}, 0)\nos.kill({target.pid}, 15)\n")
    target.wait(10)
    time.sleep(0.5)
    lines = stop_vigil(proc)[0].decode().splitlines()
    assert lines[0].split() == ["TIME", "PID", "COMM", "SIG", "TPID", "RESULT"]
    rows = [line.split() for line in lines[1:] if "vkill-cli" in line]
    # -s TERM: the probe (signal 0) was left in the kernel
    assert [r[3:] for r in rows] == [["15", str(target.pid), "0"]]
    assert time.strptime(rows[0][0], "%H:%M:%S")


def test_monitor_stores_kill_with_target(tmp_path):
    db = str(tmp_path / "v.db")
    names = ["kill", *PROCESS]
    proc = start_vigil("monitor", "--db", db, "-q", *[a for n in names for a in ("--sensor", n)])
    target = _sleeper()
    sender = Child("vkill-mon", f"os.kill({target.pid}, 9)\n")
    target.wait(10)
    time.sleep(1.0)
    stop_vigil(proc)
    res = vigil("events", "--db", db, "--kind", "kill", "--pid", str(sender.pid), "--json")
    (ev,) = [orjson.loads(line) for line in res.stdout.splitlines()]
    assert ev["sig_name"] == "SIGKILL" and ev["target_pid"] == target.pid
    assert ev["target_exe"] == SLEEP and ev["target_comm"] == "sleep"
    assert ev["ancestors"][0]["exe"] == os.path.realpath(sys.executable)


def kill_trigger():
    """For test_attach_modes: one kill(pid, 0) of ourselves; its matcher."""
    marker = 2**22 + os.getpid() % 1000  # an unused pid: ESRCH
    try:
        os.kill(marker, 0)
    except ProcessLookupError:
        pass
    return lambda ev: (
        ev["kind"] == "kill" and ev["target_arg"] == marker and ev["pid"] == os.getpid()
    )


def ptrace_trigger():
    """For test_attach_modes: a failed PTRACE_ATTACH to a pid that does not exist."""
    libc = ctypes.CDLL(None, use_errno=True)
    marker = 2**22 + os.getpid() % 1000 + 1
    libc.ptrace(16, marker, None, None)
    return lambda ev: ev["kind"] == "ptrace" and ev["target_arg"] == marker
