"""Adversarial review of the memory-accounting CAP_SYS_ADMIN filter
(bpf/capable.bpf.c accounting_check, monitor skip_accounting, and
rules/vigil_cap_sys_admin.yml's filter_accounting).

The attacker's question: can a process make a *real* CAP_SYS_ADMIN use
disappear now that the accounting check is dropped by its caller and the
rule filters `audit: unknown` checks by syscall?  Real BPF, real children.
"""

from __future__ import annotations

import os
import pwd

import pytest

from helpers import ROOT, ListSink, pump_until
from test_capable import CAP_SYS_ADMIN, Child, _checks, _settle
from vigil import kernel
from vigil.detect.stage import Detector
from vigil.loader import Session
from vigil.ring_pipeline import assemble_live

pytestmark = pytest.mark.kernel

RULE = os.path.join(ROOT, "rules", "vigil_cap_sys_admin.yml")
NOBODY = pwd.getpwnam("nobody")
AS_NOBODY = f"os.setgroups([]); os.setgid({NOBODY.pw_gid}); os.setuid({NOBODY.pw_uid})\n"

# clone(2) / clone3(2) into a new mount namespace, fork-like (no new stack):
# the same CAP_SYS_ADMIN check unshare(CLONE_NEWNS) makes, through another syscall
CLONE_NEWNS = """
import ctypes, struct
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def reap(pid, what):
    if pid == 0:
        os._exit(0)
    assert pid > 0, (what, ctypes.get_errno())
    os.waitpid(pid, 0)
how = sys.argv[1]
if how == 'clone':
    reap(libc.syscall(56, 0x00020000 | 17, 0, 0, 0, 0), 'clone')
elif how == 'clone3':
    # struct clone_args {flags, pidfd, child_tid, parent_tid, exit_signal, ...}: 64 bytes
    args = ctypes.create_string_buffer(struct.pack('<8Q', 0x00020000, 0, 0, 0, 17, 0, 0, 0), 64)
    reap(libc.syscall(435, args, ctypes.c_size_t(64)), 'clone3')
elif how == 'unshare':
    assert libc.unshare(0x00020000) == 0, ctypes.get_errno()
"""


def _monitor_pipeline(detect: bool):
    """`vigil monitor`'s capable settings (unique, skip_accounting) on the
    live pipeline, with the shipped CAP_SYS_ADMIN rule as its stage."""
    session = Session(["capable"], monitor=True)
    sink = ListSink()
    stages = [Detector([RULE])] if detect else []
    return assemble_live(session, [sink], stages=stages, poll_interval=0.05), sink


class AlertSink(ListSink):
    def __init__(self) -> None:
        super().__init__()
        self.alerts: list = []

    def write(self, batch) -> None:
        super().write(batch)
        self.alerts.extend(batch.alerts)


def _alert_pids(alerts) -> set[int]:
    return {a.data["event"]["pid"] for a in alerts}


@pytest.mark.parametrize("how", ["unshare", "clone", "clone3"])
def test_rule_fires_for_a_new_mount_namespace_whatever_the_syscall(how):
    """Was a bug (for clone and clone3; fixed in the rule): the rule's
    filter_accounting dropped every `audit: unknown` CAP_SYS_ADMIN check made
    in clone/clone3/fork/vfork.  Through the tracepoint every check but the
    accounting one is `unknown`, and the monitor no longer records the
    accounting one at all, so that filter now only hides real uses: a root
    process that makes its namespaces with clone(CLONE_NEWNS) instead of
    unshare(CLONE_NEWNS) is never alerted on.
    Reproduce: under `vigil monitor`, python3 -c "import ctypes;
    ctypes.CDLL(None).syscall(56, 0x20011, 0, 0, 0, 0)" -> no alert."""
    session = Session(["capable"], monitor=True)
    sink = AlertSink()
    pipe = assemble_live(session, [sink], stages=[Detector([RULE])], poll_interval=0.05)
    try:
        (cap,) = [c for c in session.choices if c.hook == "cap_capable"]
        child = Child(f"vrev-{how}", CLONE_NEWNS, how)
        want = "unshare" if how == "unshare" else how
        pump_until(
            pipe,
            sink,
            lambda evs: any(e["syscall"] == want for e in _checks(evs, child.pid, CAP_SYS_ADMIN)),
        )
        _settle(pipe)
        admin = _checks(sink.events, child.pid, CAP_SYS_ADMIN)
        # the check is recorded (the accounting filter did not take it) ...
        real = [e for e in admin if e["syscall"] == want]
        assert real and real[0]["verdict"] == "allowed", admin
        if cap.feature == "tracepoint":
            assert real[0]["audit"] == "unknown"
        # ... and the rule that exists for it fires
        assert child.pid in _alert_pids(sink.alerts), (how, real, sink.alerts)
    finally:
        session.close()


def test_denied_check_by_a_non_root_process_is_kept_by_the_monitor():
    """A process that dropped root and tries clone(CLONE_NEWNS) and
    unshare(CLONE_NEWNS): both denied checks are recorded by the monitor
    (a denial is never hidden); its own mmap/brk accounting checks, denied
    too for a non-root process, are not recorded."""
    pipe, sink = _monitor_pipeline(detect=False)
    code = (
        "import ctypes, mmap\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        + AS_NOBODY
        + "assert libc.syscall(56, 0x00020000 | 17, 0, 0, 0, 0) == -1\n"
        + "assert libc.unshare(0x00020000) == -1\n"
        + "m = mmap.mmap(-1, 1 << 22)\nm[0:1] = b'x'\n"
    )
    try:
        child = Child("vrev-denied", code)
        pump_until(
            pipe,
            sink,
            lambda evs: (
                {e["syscall"] for e in _checks(evs, child.pid, CAP_SYS_ADMIN)}
                >= {"clone", "unshare"}
            ),
        )
        _settle(pipe)
        admin = _checks(sink.events, child.pid, CAP_SYS_ADMIN)
        denied = [e for e in admin if e["verdict"] == "denied"]
        assert {e["syscall"] for e in denied} >= {"clone", "unshare"}, admin
        assert all(e["uid"] == NOBODY.pw_uid for e in denied)
        # no accounting check (mmap, brk) of the non-root process either
        assert not [e for e in admin if e["syscall"] in ("mmap", "brk", "execve")], admin
    finally:
        pipe.session.close()


def test_user_namespace_mount_is_recorded_and_its_accounting_is_not():
    """In a new user namespace (as root there): a tmpfs mount's
    CAP_SYS_ADMIN check against the new namespace is recorded with
    init_ns false; the process's accounting checks (always against the
    host's namespace) are not, even from inside the namespace."""
    pipe, sink = _monitor_pipeline(detect=False)
    code = (
        "import ctypes, tempfile, mmap\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        + AS_NOBODY
        + "assert libc.unshare(0x10000000 | 0x00020000) == 0, ctypes.get_errno()\n"
        + "d = tempfile.mkdtemp()\n"
        + "assert libc.mount(b'none', d.encode(), b'tmpfs', 0, None) == 0, ctypes.get_errno()\n"
        + "m = mmap.mmap(-1, 1 << 22)\nm[0:1] = b'x'\n"
        + "pid = os.fork()\nif pid == 0:\n    os._exit(0)\nos.waitpid(pid, 0)\n"
    )
    try:
        child = Child("vrev-userns", code)
        pump_until(
            pipe,
            sink,
            lambda evs: any(
                e["syscall"] == "mount" for e in _checks(evs, child.pid, CAP_SYS_ADMIN)
            ),
        )
        _settle(pipe)
        admin = _checks(sink.events, child.pid, CAP_SYS_ADMIN)
        (mount,) = [e for e in admin if e["syscall"] == "mount"]
        assert mount["verdict"] == "allowed" and not mount["init_ns"], mount
        assert not [e for e in admin if e["syscall"] in ("mmap", "brk", "clone")], admin
    finally:
        pipe.session.close()


def test_accounting_ranges_are_real_functions_and_do_not_cover_cap_capable():
    """function_range must give the function's own text: a range that ran
    into cap_capable() or security_capable() would mark every check of the
    host as accounting (and the monitor would drop them all)."""
    fn = kernel.function_range("cap_vm_enough_memory")
    hook = kernel.function_range("security_vm_enough_memory_mm")
    if fn == (0, 0) and hook == (0, 0):
        pytest.skip("kallsyms hides addresses here")
    for name in ("cap_capable", "security_capable", "ns_capable", "capable", "__vm_enough_memory"):
        start = kernel.function_range(name)[0]
        if not start:
            continue
        for lo, hi in (fn, hook):
            assert not (lo <= start < hi), (name, hex(start), hex(lo), hex(hi))
    for lo, hi in (fn, hook):
        if lo:
            assert 0 < hi - lo < 4096, (hex(lo), hex(hi))  # one small function, not a gap
    assert kernel.function_range("no_such_function_vigil") == (0, 0)


# Every path into the memory accounting a benign root program takes, beyond
# exec/mmap/brk/fork: a private mapping made writable (mprotect), grown
# (mremap), System V shared memory (shmget), a private file mapping written
# (mmap of a file with MAP_PRIVATE|PROT_WRITE), a thread (clone of a thread
# shares the mm: no accounting).
MEMORY_PATHS = """
import ctypes, mmap, threading
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mremap.restype = ctypes.c_void_p
PROT_READ, PROT_WRITE, MAP_PRIVATE, MAP_ANON = 1, 2, 2, 0x20
a = libc.mmap(None, 1 << 22, PROT_READ, MAP_PRIVATE | MAP_ANON, -1, 0)
assert libc.mprotect(ctypes.c_void_p(a), 1 << 22, PROT_READ | PROT_WRITE) == 0
b = libc.mremap(ctypes.c_void_p(a), 1 << 22, 1 << 24, 1)
assert b not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()
shm = libc.shmget(0, 1 << 22, 0o1600)
assert shm >= 0, ctypes.get_errno()
libc.shmctl(shm, 0, None)
with open(sys.argv[1], 'r+b') as f:
    m = mmap.mmap(f.fileno(), 4096, mmap.MAP_PRIVATE, mmap.PROT_READ | mmap.PROT_WRITE)
    m[0:1] = b'x'
t = threading.Thread(target=lambda: None); t.start(); t.join()
"""


def test_no_accounting_path_of_a_benign_root_program_is_recorded_or_alerted(tmp_path):
    """A root program that only manages memory makes no real CAP_SYS_ADMIN
    use: the monitor records none of its checks (each is told by its
    caller), and the rule raises nothing for it."""
    data = tmp_path / "data"
    data.write_bytes(bytes(8192))
    session = Session(["capable"], monitor=True)
    sink = AlertSink()
    pipe = assemble_live(session, [sink], stages=[Detector([RULE])], poll_interval=0.05)
    # beside it, `vigil capable -v`'s settings: the checks are really made
    every = Session(["capable"])
    seen = ListSink()
    every_pipe = assemble_live(every, [seen], poll_interval=0.05)
    try:
        (cap,) = [c for c in session.choices if c.hook == "cap_capable"]
        if cap.feature != "tracepoint":
            pytest.skip("fexit and kprobes never see the accounting check (inlined)")
        child = Child("vrev-memory", MEMORY_PATHS, str(data))
        _settle(pipe, 0.5)
        _settle(every_pipe, 0.5)
        made = _checks(seen.events, child.pid, CAP_SYS_ADMIN)
        assert {e["syscall"] for e in made} >= {"mprotect", "mremap", "shmget"}, made
        assert {e["audit"] for e in made} == {"no"}, made
        admin = _checks(sink.events, child.pid, CAP_SYS_ADMIN)
        assert admin == [], [(e["syscall"], e["audit"]) for e in admin]
        assert child.pid not in _alert_pids(sink.alerts)
    finally:
        every.close()
        session.close()
