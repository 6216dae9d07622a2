"""The mount sensor on the real kernel: real mounts in a private mount namespace."""

from __future__ import annotations

import subprocess

import pytest

from helpers import pump_until, start_agent
from test_capable import Child
from vigil import sensors

pytestmark = pytest.mark.kernel

# Private mount namespace first: nothing the test mounts is seen outside.
PRIVATE_NS = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
def ok(rc):
    assert rc >= 0, os.strerror(ctypes.get_errno())
    return rc
ok(libc.unshare(0x20000))  # CLONE_NEWNS
ok(libc.mount(None, b"/", None, (1 << 14) | (1 << 18), None))  # MS_REC | MS_PRIVATE
target = sys.argv[1].encode()
"""
CLASSIC = """
ok(libc.mount(b"vigil-src", target, b"tmpfs", 2 | 8, b"size=1m"))  # MS_NOSUID | MS_NOEXEC
ok(libc.umount2(target, 2))  # MNT_DETACH
ctypes.set_errno(0)
assert libc.mount(b"x", ctypes.c_void_p(1), b"tmpfs", 0, None) == -1  # a bad target pointer
"""
NEW_API = """
NR = {"x86_64": (430, 431, 432, 429), "aarch64": (430, 431, 432, 429)}[os.uname().machine]
fs = ok(libc.syscall(NR[0], b"tmpfs", 0))  # fsopen
ok(libc.syscall(NR[1], fs, 1, b"source", b"vigil-new", 0))  # fsconfig SET_STRING
ok(libc.syscall(NR[1], fs, 6, None, None, 0))  # FSCONFIG_CMD_CREATE
mnt = ok(libc.syscall(NR[2], fs, 0, 0x2))  # fsmount, MOUNT_ATTR_NOSUID
ok(libc.syscall(NR[3], mnt, b"", -100, target, 4))  # move_mount F_EMPTY_PATH
os.close(mnt)  # an open fd on the mount keeps it busy
ok(libc.umount2(target, 0))
"""


@pytest.fixture
def agent():
    agent, sink = start_agent(["mount"], enrich=False)
    yield agent, sink
    agent.session.close()


def _mine(events, pid):
    return [e for e in events if e["kind"] == "mount" and e["pid"] == pid]


def _run(code: str, target) -> int:
    proc = subprocess.run(
        [*Child.argv("vmount", PRIVATE_NS + code), str(target)], capture_output=True
    )
    assert proc.returncode == 0, proc.stderr
    return int(proc.stderr.split()[-1])


def _strings_of(agent) -> str:
    """Where the mount hook's strings come from, by the attach point chosen."""
    lsm = any(c.sensor == "mount" and c.feature == "lsm" for c in agent.session.choices)
    return "kernel" if lsm else "caller"


def test_tmpfs_mount_and_umount(agent, tmp_path):
    agent, sink = agent
    pid = _run(CLASSIC, tmp_path)
    events = pump_until(agent, sink, lambda evs: len(_mine(evs, pid)) == 4)
    private, mount, umount, bad = _mine(events, pid)
    assert (private["op"], private["target"], private["mount_flags"]) == ("mount", b"/", 0x44000)
    assert private["source"] == b"" and private["fstype"] == b""  # NULL: not given
    assert mount["op"] == "mount" and mount["ret"] == 0
    assert (mount["source"], mount["target"], mount["fstype"]) == (
        b"vigil-src",
        str(tmp_path).encode(),
        b"tmpfs",
    )
    # the LSM hook (sb_mount, where BPF-LSM loads: 6.1, 6.12) gives the
    # kernel's copies; the syscall tracepoints what the caller passed
    assert mount["mount_flags"] == 10 and mount["strings"] == _strings_of(agent)
    assert mount["comm"] == b"vmount" and mount["flags"] == []
    assert (umount["op"], umount["ret"], umount["mount_flags"]) == ("umount", 0, 2)
    assert umount["target"] == str(tmp_path).encode()
    # a target the kernel could not read either: EFAULT, and flagged
    assert bad["ret"] == -14 and bad["target"] == b"" and bad["flags"] == ["partial"]
    describe = sensors.get("mount").describe
    assert describe(mount) == f"mount -t tmpfs vigil-src {tmp_path} flags=0xa ok"
    assert describe(umount) == f"umount {tmp_path} flags=0x2 ok"


def test_new_mount_api(agent, tmp_path):
    agent, sink = agent
    pid = _run(NEW_API, tmp_path)
    events = pump_until(agent, sink, lambda evs: len(_mine(evs, pid)) == 4)
    _, fsmount, move, umount = _mine(events, pid)
    # type and source from the kernel's fs context, not the caller
    assert (fsmount["op"], fsmount["strings"]) == ("fsmount", "kernel")
    assert (fsmount["fstype"], fsmount["source"]) == (b"tmpfs", b"vigil-new")
    assert fsmount["ret"] >= 3 and fsmount["attr_flags"] == 2 and fsmount["from_fd"] >= 3
    assert move["op"] == "move_mount" and move["ret"] == 0
    assert (move["from_fd"], move["to_fd"], move["mount_flags"]) == (fsmount["ret"], -100, 4)
    # from_pathname "" (MOVE_MOUNT_F_EMPTY_PATH) as passed; the LSM hook
    # names the detached mount's root, "/"
    assert move["source"] == (b"/" if _strings_of(agent) == "kernel" else b"")
    assert move["target"] == str(tmp_path).encode()
    assert (umount["op"], umount["ret"]) == ("umount", 0)


def mount_trigger():
    """For test_attach_modes: one failed umount2 of a path nothing is mounted on."""
    path = b"/nonexistent/vigil-mode-%d" % subprocess.os.getpid()
    import ctypes

    ctypes.CDLL(None, use_errno=True).umount2(path, 0)
    return lambda ev: ev["kind"] == "mount" and ev["target"] == path
