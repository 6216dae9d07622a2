"""Adversarial review of module_load's every-syscall hook (tp_btf sys_exit,
bpf/module.bpf.c module_btf_exit): does every way into init_module,
finit_module and delete_module still leave a record, with its error, on
this kernel without module support (ENOSYS)?  And can an unrelated call
forge one?  Real BPF, real syscalls (tests/progs/ia32_syscall.c makes the
32-bit ones: `int $0x80` from a 64-bit process, IA32_EMULATION)."""

from __future__ import annotations

import errno
import os
import platform
import pwd
import subprocess

import pytest

from helpers import needs_ia32, pump_until, run_ia32, start_agent
from test_capable import Child, _settle

pytestmark = pytest.mark.kernel

NOBODY = pwd.getpwnam("nobody")
HAS_MODULES = os.path.exists("/proc/modules")

# i386 numbers (arch/x86/entry/syscalls/syscall_32.tbl)
I386_INIT_MODULE, I386_DELETE_MODULE, I386_FINIT_MODULE = 128, 129, 350
# i386 calls whose numbers are x86_64's init_module (175), delete_module
# (176) and finit_module (313)
I386_RT_SIGPROCMASK, I386_RT_SIGPENDING, I386_SPLICE = 175, 176, 313

x86_only = pytest.mark.skipif(
    platform.machine() != "x86_64", reason="int $0x80 from a 64-bit process: x86_64 only"
)


@pytest.fixture(
    params=[None, "raw_tp:sys_exit", "tracepoint:raw_syscalls/sys_exit"],
    ids=["default", "raw_tp", "raw_syscalls"],
)
def agent(request):
    """The default attach point (tp_btf here) and each fallback forced."""
    choices = {} if request.param is None else {"module_syscalls": request.param}
    if request.param and HAS_MODULES:
        pytest.skip("the per-call tracepoints are the choice with module support")
    agent, sink = start_agent(["module_load"], enrich=False, choices=choices)
    yield agent, sink
    agent.session.close()


def _mine(events, pid):
    return [e for e in events if e["kind"] == "module_load" and e["pid"] == pid]


def test_every_syscall_hook_is_tp_btf_here():
    if HAS_MODULES:
        pytest.skip("module support: the per-call tracepoints are chosen")
    agent, _ = start_agent(["module_load"], enrich=False)
    try:
        (choice,) = [c for c in agent.session.choices if c.hook == "module_syscalls"]
        assert choice.feature == "tp_btf", choice
    finally:
        agent.session.close()


THREADED_AS_NOBODY = f"""
import ctypes, threading
libc = ctypes.CDLL(None, use_errno=True)
NR = {{"x86_64": (175, 313, 176), "aarch64": (105, 273, 106)}}[os.uname().machine]
os.setgroups([]); os.setgid({NOBODY.pw_gid}); os.setuid({NOBODY.pw_uid})
out = []
def attempt():
    ctypes.set_errno(0)
    libc.syscall(NR[2], b"vigil_from_thread", 0)
    out.append(ctypes.get_errno())
t = threading.Thread(target=attempt)
t.start(); t.join()
print(out[0], flush=True)
"""


def test_attempt_by_a_non_root_thread_is_reported_with_its_error(agent):
    """delete_module from a second thread of a process that dropped root:
    EPERM or ENOSYS, whichever the kernel says, is in the record, with the
    thread's tid and the caller's uid."""
    agent, sink = agent
    proc = subprocess.run(
        Child.argv("vmod-thread", THREADED_AS_NOBODY), capture_output=True, check=True
    )
    err = int(proc.stdout.split()[-1])
    if not HAS_MODULES:
        assert err == errno.ENOSYS
    pid = int(proc.stderr.split()[-1])
    events = pump_until(agent, sink, lambda evs: _mine(evs, pid))
    (ev,) = _mine(events, pid)
    assert (ev["op"], ev["ret"], ev["uid"]) == ("delete_module", -err, NOBODY.pw_uid)
    assert ev["tid"] != pid
    assert ev["name"] == b"vigil_from_thread"


@x86_only
@pytest.mark.parametrize(
    ("nr", "op"),
    [
        (I386_INIT_MODULE, "init_module"),
        (I386_DELETE_MODULE, "delete_module"),
        (I386_FINIT_MODULE, "finit_module"),
    ],
)
def test_32bit_module_calls_are_seen(agent, nr, op):
    """BUG (FAILED before the fix in bpf/module.bpf.c; raw_tp had it too):
    the hook compared orig_ax
    with the x86_64 numbers only.  A 64-bit process that makes the call
    through `int $0x80` (the ia32 table: init_module 128, delete_module 129,
    finit_module 350) left no record, so a loader written that way hid its
    module load.  On kernels with module support the per-call syscalls:*
    tracepoints are chosen, and they skip compat calls too: there the
    syscall32 sensor's every-syscall program makes the 32-bit ones (the
    monitor loads both).
    Reproduce: build/bin/ia32-syscall 128 s:x 1 s:opt  under vigil -> nothing."""
    agent, sink = agent
    needs_ia32()
    (choice,) = [c for c in agent.session.choices if c.hook == "module_syscalls"]
    both = None
    if choice.target.startswith("syscalls/"):
        # kernels with module support: with syscall32, as `vigil monitor` runs
        both = agent, sink = start_agent(["module_load", "syscall32"], enrich=False)
    try:
        pid, ret = run_ia32(str(nr), "s:vigil_ia32", str(len("vigil_ia32")), "s:p=1")
        if not HAS_MODULES:
            assert ret == -errno.ENOSYS
        try:
            events = pump_until(agent, sink, lambda evs: _mine(evs, pid), timeout=3)
        except AssertionError:
            pytest.fail(f"32-bit {op} (int $0x80, nr {nr}) left no record: {ret}")
        (ev,) = _mine(events, pid)
        assert (ev["op"], ev["ret"]) == (op, ret)
        # the arguments come from the ia32 registers (bx, cx, dx)
        if op == "init_module":
            assert (ev["len"], ev["params"]) == (len("vigil_ia32"), b"p=1"), ev
        elif op == "delete_module":
            assert ev["name"] == b"vigil_ia32", ev
    finally:
        if both is not None:
            both[0].session.close()


@x86_only
@pytest.mark.parametrize("nr", [I386_RT_SIGPROCMASK, I386_RT_SIGPENDING, I386_SPLICE])
def test_unrelated_32bit_calls_forge_no_module_record(agent, nr):
    """BUG (FAILED before the fix in bpf/module.bpf.c; raw_tp had it too):
    any user can make i386
    rt_sigprocmask (175), rt_sigpending (176) or splice (313) through
    `int $0x80`; those numbers are x86_64's init_module, delete_module and
    finit_module, and the hook reported a module call that never happened
    (an alert any user can raise, with arguments it chooses).
    Reproduce: build/bin/ia32-syscall 175 -> a module_load init_module record."""
    agent, sink = agent
    needs_ia32()
    pid, ret = run_ia32(str(nr))
    assert ret != -errno.ENOSYS  # a real call, which the kernel ran
    _settle(agent, 0.5)
    forged = _mine(sink.events, pid)
    assert forged == [], forged
