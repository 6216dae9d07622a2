"""The bpf and memfd sensors on the real kernel: a helper loads a BPF program
(through Vigil's own _libbpf), a child creates memfds."""

from __future__ import annotations

import errno
import os
import subprocess

import pytest

from helpers import ROOT, pump_until, start_agent
from test_capable import Child
from vigil import sensors

pytestmark = pytest.mark.kernel

# A process other than the agent loads a tracepoint program and attaches it:
# what a rootkit loading BPF looks like to the sensor.  The feature probe's
# syscalls:sys_enter_getppid program loads on every kernel of the matrix
# (capable's capability:cap_capable tracepoint only exists from 6.14).
LOADER = f"""
sys.path.insert(0, {os.path.join(ROOT, "src")!r})
from vigil import _libbpf as bpf, paths
with bpf.Object(paths.bpf_object("probe")) as obj:
    for prog in obj.programs():
        prog.autoload = prog.name == "probe_tracepoint"
    obj.load()
    obj.program("probe_tracepoint").attach().destroy()
"""
# the kernel keeps BPF_OBJ_NAME_LEN - 1 bytes of a program's name
LOADED_NAME = b"probe_tracepoint"[:15]


def _mine(events, pid, kind):
    return [e for e in events if e["kind"] == kind and e["pid"] == pid]


def test_program_load_and_attach_by_another_process():
    agent, sink = start_agent(["bpf"], enrich=False)
    try:
        child = Child("vbpf-loader", LOADER)

        def named(evs):
            return [e for e in _mine(evs, child.pid, "bpf") if e["prog_name"] == LOADED_NAME]

        events = pump_until(agent, sink, lambda evs: len(named(evs)) == 2)
        load, link = named(events)
        assert (load["cmd"], load["ret"], load["source"]) == ("prog_load", load["ret"], "kernel")
        assert load["ret"] >= 3 and load["prog_type"] == "tracepoint" and load["prog_id"] > 0
        assert load["by_vigil"] is False and load["comm"] == b"vbpf-loader"
        # the attach names the same program, by the kernel's id
        assert (link["cmd"], link["prog_id"], link["attach_type"]) == (
            "link_create",
            load["prog_id"],
            "perf_event",
        )
        assert link["ret"] >= 3
        # libbpf's feature probes (unnamed loads) are reported too: nothing is hidden
        assert len(_mine(events, child.pid, "bpf")) > 2
        text = sensors.get("bpf").describe(load)
        name = LOADED_NAME.decode()
        assert text == f"prog_load tracepoint {name} id {load['prog_id']} {load['ret']}"
    finally:
        agent.session.close()


def test_own_loads_are_marked_and_failures_read_the_callers_attr():
    agent, sink = start_agent(["bpf", "capable"], enrich=False)
    try:
        # capable was loaded after bpf's programs were attached: its load is ours
        pump_until(agent, sink, lambda evs: _mine(evs, os.getpid(), "bpf"))
        ours = _mine(sink.events, os.getpid(), "bpf")
        assert ours and all(e["by_vigil"] for e in ours)
        # capable's program is the one this kernel's attach choice loaded
        # (the cap_capable tracepoint from 6.14, fexit or kprobes before)
        (cap,) = [c for c in agent.session.choices if c.hook == "cap_capable"]
        names = {p.encode()[:15] for p in cap.programs}
        assert any(e["prog_name"] in names for e in ours)
        assert any(e["cmd"] == "link_create" for e in ours)
        # a load the kernel refuses: what the caller asked for, as passed
        code = "import ctypes, struct\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        code += (
            "attr = bytearray(160)\nstruct.pack_into('<I', attr, 0, 2)  # BPF_PROG_TYPE_KPROBE\n"
        )
        code += "attr[48:56] = b'vigil_bad'\nbuf = (ctypes.c_char * 160).from_buffer(attr)\n"
        # BPF_PROG_LOAD without insns nor license: the errno the caller got is printed
        code += "assert libc.syscall(321, 5, buf, 160) == -1\nprint(ctypes.get_errno())\n"
        if os.uname().machine != "x86_64":
            pytest.skip("the refused-load helper uses x86_64's bpf syscall number")
        proc = subprocess.run(Child.argv("vbpf-bad", code), capture_output=True, check=True)
        pid, err = int(proc.stderr.split()[-1]), int(proc.stdout)
        # E2BIG (no insns); 6.1 copies the license first: EFAULT for its NULL pointer
        assert err in (errno.E2BIG, errno.EFAULT)
        done = lambda evs: _mine(evs, pid, "bpf")  # noqa: E731
        (bad,) = _mine(pump_until(agent, sink, done), pid, "bpf")
        # with the LSM hook (6.1, 6.12) the kernel had copied the attr before
        # refusing it; with the tracepoints only the caller's memory is there
        (hook,) = [c for c in agent.session.choices if c.hook == "bpf"]
        source = "kernel" if hook.feature == "lsm" else "caller"
        assert (bad["cmd"], bad["ret"], bad["source"]) == ("prog_load", -err, source)
        assert (bad["prog_type"], bad["prog_name"], bad["prog_id"]) == ("kprobe", b"vigil_bad", 0)
    finally:
        agent.session.close()


MEMFD = """
fd = os.memfd_create("vigil-payload", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
try:
    os.memfd_create("x" * 300)  # longer than MFD_NAME_MAX_LEN: EINVAL
    sys.exit("a 300-byte memfd name was accepted")
except OSError:
    pass
"""


def test_memfd_create():
    agent, sink = start_agent(["memfd"], enrich=False)
    try:
        child = Child("vmemfd", MEMFD)
        done = lambda evs: len(_mine(evs, child.pid, "memfd")) == 2  # noqa: E731
        good, bad = _mine(pump_until(agent, sink, done), child.pid, "memfd")
        assert good["name"] == b"vigil-payload" and good["name_source"] == "kernel"
        assert good["ret"] >= 3 and good["mfd_flags"] == 3
        assert good["mfd_flag_names"] == ["MFD_CLOEXEC", "MFD_ALLOW_SEALING"]
        # refused: the name as passed, cut at the record's bound and flagged
        assert bad["ret"] == -22 and bad["name_source"] == "caller"
        assert bad["name"] == b"x" * 255 and bad["flags"] == ["truncated"]
        text = sensors.get("memfd").describe(good)
        assert text == f"memfd_create vigil-payload MFD_CLOEXEC|MFD_ALLOW_SEALING {good['ret']}"
    finally:
        agent.session.close()


def bpf_trigger():
    """For test_attach_modes: a helper process loads one program."""
    proc = subprocess.run([*Child.argv("vbpf-mode", LOADER)], capture_output=True, check=True)
    pid = int(proc.stderr.split()[-1])
    return lambda ev: (
        ev["kind"] == "bpf"
        and ev["pid"] == pid
        and ev["cmd"] == "prog_load"
        and ev["prog_name"] == LOADED_NAME
    )
