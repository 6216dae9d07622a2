"""syscall32: the 32-bit calls the syscalls:* tracepoints never fire for.

On x86_64 any 64-bit process can make an ia32 call (`int $0x80`), and the
kernel skips every syscall tracepoint for it: the open, file, kill, setuid,
mount... sensors built on those tracepoints do not see it where no LSM hook
backs them.  The syscall32 sensor records the evasion itself, from the
one every-syscall program module_load uses on kernels without per-call
module tracepoints (bpf/module.bpf.c).
"""

from __future__ import annotations

import errno
import platform
import subprocess

import pytest

from helpers import needs_ia32, pump_until, run_ia32, start_agent
from test_capable import Child, _settle

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(platform.machine() != "x86_64", reason="ia32 and x32: x86_64 only"),
]

I386_OPEN, I386_GETPID, I386_INIT_MODULE = 5, 20, 128
X32_SYSCALL_BIT, X86_64_GETPID = 0x40000000, 39


def ia32_trigger():
    """For test_attach_modes: one ia32 getpid; its matcher."""
    pid, _ = run_ia32(str(I386_GETPID))
    return lambda ev: ev["kind"] == "syscall32" and ev["pid"] == pid


def _mine(events, pid, kind="syscall32"):
    return [e for e in events if e["kind"] == kind and e["pid"] == pid]


@pytest.fixture
def agent():
    agent, sink = start_agent(["syscall32"], enrich=False)
    yield agent, sink
    agent.session.close()


def test_ia32_open_is_recorded_once_per_number(agent, tmp_path):
    """Three opens of a file through int $0x80 by one 64-bit process: one
    record (the first), naming the call by the ia32 table, its result and
    its arguments from the ia32 registers; getpid, another number, is its
    own record."""
    agent, sink = agent
    needs_ia32()
    target = tmp_path / "secret"
    target.write_bytes(b"s")
    pid, fd = run_ia32("-r", "3", str(I386_OPEN), f"s:{target}", "0")
    assert fd >= 0
    pump_until(agent, sink, lambda evs: _mine(evs, pid))
    _settle(agent, 0.5)
    (ev,) = _mine(sink.events, pid)
    # the first of the three: fds 3, 4, 5 (the last printed)
    assert (ev["abi"], ev["syscall"], ev["nr"], ev["ret"]) == ("ia32", "open", I386_OPEN, fd - 2)
    assert ev["mode32"] is False  # a 64-bit program reaching for the 32-bit table
    assert ev["arg0"] != 0 and ev["arg0"] < 1 << 32 and (ev["arg1"], ev["arg2"]) == (0, 0)
    pid2, ret = run_ia32(str(I386_GETPID))
    pump_until(agent, sink, lambda evs: _mine(evs, pid2))
    (ev2,) = _mine(sink.events, pid2)
    assert (ev2["syscall"], ev2["ret"]) == ("getpid", ret) and ret == pid2


def test_x32_call_is_recorded(agent):
    """The x32 ABI (the 64-bit entry with __X32_SYSCALL_BIT) is skipped by
    the tracepoints too; where x32 is off the kernel answers ENOSYS, and
    the attempt is still recorded."""
    agent, sink = agent
    code = (
        "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        f"r = libc.syscall({X32_SYSCALL_BIT | X86_64_GETPID})\n"
        "print(r if r >= 0 else -ctypes.get_errno(), file=sys.stderr)\n"
    )
    proc = subprocess.run(Child.argv("vs32-x32", code), capture_output=True, check=True)
    ret, pid = (int(x) for x in proc.stderr.split()[-2:])
    events = pump_until(agent, sink, lambda evs: _mine(evs, pid))
    (ev,) = _mine(events, pid)
    assert (ev["abi"], ev["syscall"], ev["nr"], ev["ret"]) == ("x32", "getpid", 39, ret)
    assert ret in (pid, -errno.ENOSYS)


def test_64bit_calls_and_syscall_minus_one_make_no_record(agent):
    """The usual 64-bit calls leave nothing; nor does syscall(-1) (orig_ax
    -1 has the x32 bit set, as a number, but is no x32 call)."""
    agent, sink = agent
    code = (
        "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "for _ in range(100):\n    os.getpid(); os.stat('/')\n"
        "assert libc.syscall(-1) == -1 and ctypes.get_errno() == 38\n"
    )
    child = Child("vs32-none", code)
    _settle(agent, 1.0)
    assert _mine(sink.events, child.pid) == []


def test_shares_the_module_program_and_each_keeps_its_job():
    """With module_load (here: no module support, the every-syscall hook)
    both sensors use one program, attached once: an ia32 init_module
    attempt makes one module_load record and one syscall32 record, not two
    of either; syscall32 alone emits no module record."""
    agent, sink = start_agent(["module_load", "syscall32"], enrich=False)
    try:
        needs_ia32()
        chosen = {
            c.sensor: c for c in agent.session.choices if c.hook in ("module_syscalls", "syscall32")
        }
        every = chosen["syscall32"]
        if chosen["module_load"].target.startswith("syscalls/"):
            # module support: the module calls have their tracepoints
            assert every.rodata == (("exit_syscall32", 1),)
        else:
            assert chosen["module_load"].programs == every.programs
        pid, ret = run_ia32(str(I386_INIT_MODULE), "s:vigil_s32", "9", "s:")
        pump_until(agent, sink, lambda evs: _mine(evs, pid) and _mine(evs, pid, "module_load"))
        _settle(agent, 0.5)
        assert len(_mine(sink.events, pid)) == 1
        assert [e["op"] for e in _mine(sink.events, pid, "module_load")] == ["init_module"]
    finally:
        agent.session.close()
    agent, sink = start_agent(["syscall32"], enrich=False)
    try:
        # delete_module (x86_64: 176): the module half of the program is off
        code = "import ctypes\nctypes.CDLL(None).syscall(176, b'vigil_s32', 0)\n"
        child = Child("vs32-mod", code)
        _settle(agent, 0.5)
        assert [e for e in sink.events if e["kind"] == "module_load"] == []
        assert _mine(sink.events, child.pid) == []
    finally:
        agent.session.close()


def test_new_program_image_is_reported_again(agent):
    """The de-duplication is per process image: after execve the same pid
    runs another program, whose 32-bit calls are news again."""
    agent, sink = agent
    needs_ia32()
    pid, ret = run_ia32("-x", str(I386_GETPID))  # getpid, exec itself, getpid
    assert ret == pid
    pump_until(agent, sink, lambda evs: len(_mine(evs, pid)) >= 2)
    _settle(agent, 0.5)
    first, second = _mine(sink.events, pid)
    assert first["syscall"] == second["syscall"] == "getpid"
    assert first["ts_ns"] < second["ts_ns"]
