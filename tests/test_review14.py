"""Adversarial review (review14) of the learnt stack word of the capable
sensor's accounting check, the syscall32 sensor (module.bpf.c's
every-syscall program) and open_by_handle_at in the open sensor.

Real BPF, real processes: hostile 64-bit programs that switch to the
32-bit code segment, flood the de-duplication with numbers no table has,
exec through int $0x80; a watched file opened by handle once its dentry
left the cache; another tracer on the cap_capable tracepoint while the
sensor learns its stack word.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from helpers import IA32, ROOT, needs_ia32, pump_until, start_agent
from test_capable import Child, _settle
from vigil import watchlist

pytestmark = pytest.mark.kernel

BIN = os.path.join(ROOT, "build", "bin")
FARJUMP32 = os.path.join(BIN, "farjump32")
PROG32 = os.path.join(BIN, "prog32")
RULE = os.path.join(ROOT, "rules", "vigil_syscall32_from_64bit.yml")
I386_GETPID, I386_EXECVE, I386_INIT_MODULE = 20, 11, 128
x86_only = pytest.mark.skipif(platform.machine() != "x86_64", reason="ia32: x86_64 only")

# int $0x80 from a 64-bit Python: the number in edi (the first C argument)
INT80 = """
import ctypes, mmap
_buf = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
_buf.write(bytes([0x89, 0xF8, 0xCD, 0x80, 0xC3]))  # mov %edi,%eax; int $0x80; ret
int80 = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int)(
    ctypes.addressof(ctypes.c_char.from_buffer(_buf)))
"""


def _mine(events, pid, kind="syscall32"):
    return [e for e in events if e["kind"] == kind and e["pid"] == pid]


def _rule_alerts(events) -> list:
    from vigil.detect.stage import Detector

    return Detector([RULE]).run(events)


@pytest.fixture
def s32():
    agent, sink = start_agent(["syscall32"], enrich=False)
    yield agent, sink
    agent.session.close()


@x86_only
def test_far_jump_to_the_32bit_segment_is_still_a_64bit_program(s32):
    """BUG (fixed): `mode32` was the user code segment at the call (0x23).
    A 64-bit program (a 64-bit ELF: injected code in a 64-bit server) can
    far-jump to the 32-bit segment itself and make its int $0x80 calls
    from there: mode32 was true, exactly as for a real 32-bit program, and
    rules/vigil_syscall32_from_64bit.yml (Program32Bit: false) stayed quiet.
    Reproduce: build/bin/farjump32 20 (lretq to 0x23:..., int $0x80 getpid,
    lretl back to 0x33).  Consequence: the rule's evasion detection is
    evaded by one far jump."""
    agent, sink = s32
    needs_ia32()
    proc = subprocess.run([FARJUMP32, str(I386_GETPID)], capture_output=True)
    if proc.returncode < 0:
        # killed (SIGKILL) at the far jump in the kernel matrix's QEMU TCG
        # guests, 6.1 and 6.12 alike, where int $0x80 itself works; the host
        # runs it: not understood, so skipped there rather than failed
        pytest.skip(f"farjump32 cannot switch to 32-bit mode here (signal {-proc.returncode})")
    assert proc.returncode == 0, proc.stderr
    pid = int(proc.stdout)  # getpid's answer: the call worked, in 32-bit mode
    pump_until(agent, sink, lambda evs: _mine(evs, pid))
    _settle(agent)
    (ev,) = _mine(sink.events, pid)
    assert (ev["abi"], ev["syscall"], ev["ret"]) == ("ia32", "getpid", pid)
    assert ev["mode32"] is False, ev
    assert [a.data["event"]["pid"] for a in _rule_alerts([ev])] == [pid]


@x86_only
def test_a_real_32bit_program_is_mode32_and_the_rule_leaves_it_out(s32):
    """Holds: an i386 ELF (build/bin/prog32: getpid, exit_group) is a 32-bit
    program: its execve's return and its getpid are recorded with mode32
    true, and the rule raises nothing for them."""
    agent, sink = s32
    needs_ia32()
    proc = subprocess.Popen([PROG32])
    assert proc.wait(timeout=30) == 0
    pump_until(agent, sink, lambda evs: len(_mine(evs, proc.pid)) >= 2)
    _settle(agent)
    evs = _mine(sink.events, proc.pid)
    assert [(e["syscall"], e["mode32"]) for e in evs] == [("execve", True), ("getpid", True)]
    assert _rule_alerts(evs) == []


@x86_only
def test_numbers_no_table_has_do_not_bypass_the_once_per_number_rule(s32):
    """BUG (fixed): the de-duplication key is (process image, table,
    number), and any 32-bit number can be passed: int $0x80 with 2000
    numbers past the ia32 table (each answered -ENOSYS, nothing done) made
    2000 records from one process image in a fraction of a second.
    Reproduce: a loop of int $0x80 with eax = 100000, 100001, ...
    Consequence: one unprivileged process floods the ring at will (the
    records of every sensor sharing it are lost), where the sensor promises
    at most one record per number the kernel knows."""
    agent, sink = s32
    needs_ia32()
    code = INT80 + "for nr in range(100000, 102000):\n    assert int80(nr) == -38\n"
    child = Child("r14-s32flood", code)
    pump_until(agent, sink, lambda evs: _mine(evs, child.pid))
    _settle(agent, 1.0)
    evs = _mine(sink.events, child.pid)
    # the first: its real number and result; the others fold into it
    assert [(e["nr"], e["ret"], e["syscall"]) for e in evs] == [(100000, -38, None)], len(evs)


@x86_only
def test_a_flood_of_keys_by_others_costs_repeats_not_a_first_call(s32):
    """Holds: 700 processes making 13 harmless ia32 calls each fill the
    8192-key LRU (9100 keys); a later process's first ia32 call is still
    recorded (an evicted key can only cause a repeat record)."""
    agent, sink = s32
    needs_ia32()
    code = (
        INT80
        + "nrs = (20, 64, 24, 47, 49, 50, 199, 200, 201, 202, 65, 158, 224)\n"
        + "for _ in range(700):\n"
        + "    pid = os.fork()\n"
        + "    if pid == 0:\n"
        + "        for nr in nrs:\n            int80(nr)\n"
        + "        os._exit(0)\n"
        + "    os.waitpid(pid, 0)\n"
    )
    Child("r14-s32keys", code)
    proc = subprocess.run([IA32, str(I386_GETPID)], capture_output=True, check=True)
    pid = int(proc.stdout)
    pump_until(agent, sink, lambda evs: _mine(evs, pid), timeout=20)
    assert [e["syscall"] for e in _mine(sink.events, pid)] == ["getpid"]


@x86_only
@pytest.mark.xfail(
    reason="known gap: an ia32 execve of a 64-bit program returns as a 64-bit "
    "execve (set_personality_64bit clears TS_COMPAT and sets orig_ax to 59)",
    strict=False,
)
def test_ia32_execve_of_a_64bit_program_is_recorded(s32):
    """Known gap (xfail): a 64-bit program's int $0x80 execve of a 64-bit
    program.  At the syscall's return the kernel has made it look like a
    64-bit execve (set_personality_64bit: orig_ax = __NR_execve, TS_COMPAT
    cleared), so the every-syscall program sees no 32-bit call.
    Reproduce: build/bin/ia32-syscall 11 s:/bin/true 0 0.
    Consequence: this one ia32 call leaves no syscall32 record (the exec
    sensor still records the exec itself, by sched_process_exec)."""
    agent, sink = s32
    needs_ia32()
    proc = subprocess.Popen([IA32, str(I386_EXECVE), "s:/bin/true", "0", "0"])
    assert proc.wait(timeout=30) == 0  # /bin/true's status: the exec worked
    _settle(agent, 1.0)
    assert [e["syscall"] for e in _mine(sink.events, proc.pid)] == ["execve"]


@x86_only
def test_syscall32_alone_makes_no_module_record_for_an_ia32_module_call(s32):
    """Holds: with syscall32 alone (module_load not loaded), an ia32
    init_module attempt makes its syscall32 record and no module_load
    record (the module half of the shared program stays off)."""
    agent, sink = s32
    needs_ia32()
    proc = subprocess.Popen(
        [IA32, str(I386_INIT_MODULE), "s:r14", "3", "s:"], stdout=subprocess.PIPE
    )
    proc.communicate(timeout=30)
    pump_until(agent, sink, lambda evs: _mine(evs, proc.pid))
    _settle(agent)
    assert [e["syscall"] for e in _mine(sink.events, proc.pid)] == ["init_module"]
    assert [e for e in sink.events if e["kind"] == "module_load"] == []


# A file handle of `secret`, the caches dropped (its dentry and inode with
# them), then open_by_handle_at and a read: the kernel's dentry for the
# file is then a disconnected one, named "/" (/proc/self/fd shows it).
BY_HANDLE_COLD = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
buf = ctypes.create_string_buffer(8 + 128)
ctypes.c_uint.from_buffer(buf, 0).value = 128
mid = ctypes.c_int()
if libc.name_to_handle_at(-100, sys.argv[1].encode(), buf, ctypes.byref(mid), 0) != 0:
    print("nohandle", file=sys.stderr); sys.exit(0)
mfd = os.open(sys.argv[2], os.O_RDONLY)
open("/proc/sys/vm/drop_caches", "w").write("2")  # dentries and inodes
fd = libc.open_by_handle_at(mfd, buf, os.O_RDONLY)
assert fd >= 0, ctypes.get_errno()
print(os.readlink(f"/proc/self/fd/{fd}"), file=sys.stderr)
assert os.read(fd, 1) == b"s"
"""


def test_open_by_handle_at_of_a_watched_file_out_of_the_dentry_cache():
    """BUG (fixed): open_by_handle_at of a watched file whose dentry is no
    longer cached (memory pressure on a busy host, or drop_caches) gets a
    disconnected dentry from the kernel: its own parent, named "/".  The
    open sensor matches an opened file by (its parent directory, its
    name), so the read of the watched file left no record.
    Reproduce (root: CAP_DAC_READ_SEARCH): name_to_handle_at(secret) (no
    open, no record), echo 2 > /proc/sys/vm/drop_caches, then
    open_by_handle_at(mount fd, handle, O_RDONLY) and read.  Consequence:
    a watched secret is read unseen by anyone holding its handle.  Now an
    open by handle of a file the kernel cannot name is reported, named by
    device and inode, its path partial."""
    base = tempfile.mkdtemp(dir="/var/tmp")  # a disk file system: tmpfs never drops dentries
    try:
        secret = os.path.join(base, "w", "secret")
        os.makedirs(os.path.dirname(secret))
        with open(secret, "w") as f:
            f.write("s")
        st = os.stat(secret)
        agent, sink = start_agent(["open"], enrich=False, sensor_options={"watch": [secret]})
        try:
            proc = subprocess.run(
                Child.argv("r14-byhandle", BY_HANDLE_COLD) + [secret, base],
                capture_output=True,
                check=True,
            )
            if b"nohandle" in proc.stderr:
                pytest.skip("no file handles on this file system")
            shown, pid = proc.stderr.split()[-2:]
            pid = int(pid)
            if shown != b"/":
                pytest.skip(f"the dentry stayed cached ({shown!r}): not the case under test")
            _settle(agent, 1.0)
            got = [
                (e["syscall"], e["access"], e["ino"], e["dev"], "partial" in e["flags"])
                for e in _mine(sink.events, pid, "open")
            ]
            dev = watchlist.kernel_dev(st.st_dev)
            assert got == [("open_by_handle_at", "read", st.st_ino, dev, True)], got
        finally:
            agent.session.close()
    finally:
        shutil.rmtree(base)


CAP_SYS_ADMIN = 21
TRACING = "/sys/kernel/tracing"


class CapCapableTracer:
    """Another tracer on capability:cap_capable: the event enabled in a
    private tracefs instance (the host's own trace buffer untouched).  With
    two probes on the tracepoint, cap_capable() calls them through
    __traceiter_cap_capable(): one more frame under the perf probe."""

    def __init__(self):
        self.dir = os.path.join(TRACING, "instances", f"vigil-r14-{os.getpid()}")
        self.enable = os.path.join(self.dir, "events", "capability", "cap_capable", "enable")

    def __enter__(self):
        try:
            os.mkdir(self.dir)
        except OSError as err:
            pytest.skip(f"no tracefs instance: {err}")
        if not os.path.exists(self.enable):
            os.rmdir(self.dir)
            pytest.skip("no capability:cap_capable tracepoint")
        self.set(True)
        return self

    def set(self, on: bool) -> None:
        with open(self.enable, "w") as f:
            f.write("1" if on else "0")

    def __exit__(self, *exc):
        self.set(False)
        os.rmdir(self.dir)


def _monitor_capable():
    from test_capable import default_feature

    if default_feature() != "tracepoint":
        pytest.skip("fexit and kprobes know the accounting check by its `opts`")
    agent, sink = start_agent(["capable"], enrich=False, monitor=True)
    session = agent.session
    from vigil import _libbpf as bpf
    from vigil import records

    decode, size = records.struct_decoder(session.btf_of("acct_slot_state"), "acct_slot_state")
    fd = session.map("acct_slot_state").fd

    def state() -> dict:
        st = decode(bpf.map_lookup(fd, b"\0" * 4, size))
        st.pop("excluded")
        return st

    return agent, sink, state


def _accounting_leaks(agent, sink, n=30, others=False) -> list:
    """`n` children that only exec /bin/true: every CAP_SYS_ADMIN check they
    make is the memory accounting's, which `vigil monitor` drops.  `others`:
    a check of another caller before each (CAP_SETUID), for the learning."""
    pids = []
    for _ in range(n):
        if others:
            os.setuid(0)
        p = subprocess.Popen(["/bin/true"])
        p.wait(timeout=30)
        pids.append(p.pid)
    _settle(agent, 0.5)
    return [
        (e["pid"], e["syscall"])
        for e in sink.events
        if e["kind"] == "capable" and e["cap"] == CAP_SYS_ADMIN and e["pid"] in pids
    ]


def _learn(state) -> dict:
    deadline = time.monotonic() + 30
    while state()["slot"] == 0 and time.monotonic() < deadline:
        os.setuid(0)  # CAP_SETUID: a check of another caller
        subprocess.run(["/bin/true"], check=True)  # exec, mmap, brk: accounting checks
    return state()


def test_a_tracer_that_comes_after_learning_does_not_misplace_the_word():
    """BUG (fixed): the learnt word is a fixed distance above the perf
    probe's frame, true while cap_capable() calls the probe directly.  A
    second tracer on the tracepoint (an ftrace event, another agent's
    raw_tp) puts __traceiter_cap_capable() in between: the word read was
    then no return address, every accounting check of the host was
    reported by `vigil monitor` as a real CAP_SYS_ADMIN check until one
    re-walk in 64 noticed, and then the word was forgotten for good (the
    1 us unwinder on every mmap from then on).
    Reproduce: vigil monitor; once learnt, mkdir
    /sys/kernel/tracing/instances/x; echo 1 >
    .../instances/x/events/capability/cap_capable/enable; run /bin/true.
    Now the word is used only when the probe returns where it did while
    learning; else the unwinder decides, and the word is kept."""
    agent, sink, state = _monitor_capable()
    try:
        learnt = _learn(state)
        assert learnt["slot"] > 0, learnt
        with CapCapableTracer():
            assert _accounting_leaks(agent, sink) == []
        assert _accounting_leaks(agent, sink) == []  # the tracer gone: the word again
        # and re-walks go on checking it: one check in 64, drawn at random
        # (240 checks make none 2% of the time: more until one is drawn)
        deadline = time.monotonic() + 30
        while state()["n_verified"] <= learnt["n_verified"] and time.monotonic() < deadline:
            assert _accounting_leaks(agent, sink, n=10) == []
        after = state()
        assert (after["slot"], after["n_mismatch"]) == (learnt["slot"], 0), after
        assert after["n_verified"] > learnt["n_verified"], after
    finally:
        agent.session.close()


def test_a_tracer_present_while_learning_teaches_no_word():
    """BUG (fixed): learnt while another tracer is on the tracepoint, the
    agreeing word was the return into cap_capable() (the unwinder's second
    address there: __traceiter_cap_capable() is the first), which no
    accounting check is told by: all were reported as real checks until a
    re-walk noticed.  Reproduce: enable capability:cap_capable in a tracefs
    instance, then start vigil monitor and run /bin/true.  Now an
    accounting check teaches only where its caller is the unwinder's first
    or second address; here nothing is learnt, and the unwinder decides."""
    with CapCapableTracer():
        agent, sink, state = _monitor_capable()
        try:
            assert _accounting_leaks(agent, sink, 60, others=True) == []
            st = state()
            assert st["n_mismatch"] == 0 and st["slot"] <= 0, st
        finally:
            agent.session.close()


def test_real_admin_checks_are_kept_whatever_tracers_come_and_go():
    """Holds for the real checks: learnt, then with and without another
    tracer, a real CAP_SYS_ADMIN check (sethostname of the same name,
    unshare(CLONE_NEWNS) and a mount inside, setns) of each of 15 children
    is reported by `vigil monitor`; none is taken for the accounting's.
    (Before the fix above this failed too, the other way: the children's
    accounting checks in execve were reported beside them.)"""
    import socket

    agent, sink, state = _monitor_capable()
    host = socket.gethostname()
    code = (
        "import ctypes, socket\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        f"socket.sethostname({host!r})\n"
        "assert libc.unshare(0x00020000) == 0\n"
        "libc.mount(b'none', b'/', None, 0x40000 | 0x4000, None)\n"
        "assert libc.mount(b'tmpfs', b'/mnt', b'tmpfs', 0, None) == 0\n"
        "f = os.open('/proc/self/ns/uts', os.O_RDONLY)\nassert libc.setns(f, 0) == 0\n"
    )
    try:
        assert _learn(state)["slot"] > 0
        pids = []
        for tracer in (False, True, False):
            if tracer:
                with CapCapableTracer():
                    pids += [Child("r14-admin", code).pid for _ in range(5)]
            else:
                pids += [Child("r14-admin", code).pid for _ in range(5)]
        _settle(agent, 0.5)
        for pid in pids:
            got = sorted(
                e["syscall"]
                for e in sink.events
                if e["kind"] == "capable" and e["pid"] == pid and e["cap"] == CAP_SYS_ADMIN
            )
            assert got == ["mount", "sethostname", "setns", "unshare"], (pid, got)
    finally:
        agent.session.close()


# An unprivileged flood of checks of both kinds: denied setuid(0)
# (CAP_SETUID) and mmaps (the accounting's CAP_SYS_ADMIN, denied too).
NOBODY_FLOOD = """
import mmap, os, time
os.setgid(65534); os.setuid(65534)
end = time.monotonic() + 20
while time.monotonic() < end:
    for _ in range(50):
        try:
            os.setuid(0)
        except PermissionError:
            pass
        mmap.mmap(-1, 1 << 20).close()
"""


UNSHARE_NS = "import ctypes\nassert ctypes.CDLL(None).unshare(0x00020000) == 0\n"


def test_an_unprivileged_flood_while_learning_teaches_the_right_word():
    """Holds: an unprivileged process floods checks of both kinds (denied
    setuid(0), mmaps) while the sensor starts and learns.  The word learnt
    is the true one: afterwards the accounting checks of 30 children are
    dropped, real CAP_SYS_ADMIN checks of 5 more are kept, and no re-walk
    disagrees."""
    flood = subprocess.Popen([sys.executable, "-c", NOBODY_FLOOD])
    try:
        time.sleep(0.2)
        agent, sink, state = _monitor_capable()
        try:
            learnt = _learn(state)
            assert learnt["slot"] > 0, learnt
            assert _accounting_leaks(agent, sink) == []
            kids = [Child("r14-admin", UNSHARE_NS) for _ in range(5)]
            _settle(agent, 0.5)
            for c in kids:
                got = [
                    e["syscall"]
                    for e in sink.events
                    if e["kind"] == "capable" and e["pid"] == c.pid and e["cap"] == CAP_SYS_ADMIN
                ]
                assert got == ["unshare"], got
            # one check in 64 is walked again, drawn at random: more until one is
            deadline = time.monotonic() + 30
            while state()["n_verified"] == 0 and time.monotonic() < deadline:
                assert _accounting_leaks(agent, sink, n=10) == []
            after = state()
            assert after["slot"] == learnt["slot"] and after["n_mismatch"] == 0, after
            assert after["n_verified"] > 0, after
        finally:
            agent.session.close()
    finally:
        flood.kill()
        flood.wait()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
