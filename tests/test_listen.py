"""The bind and listen sensors on the real kernel: real sockets, real ports.

Sockets are made by this process (pid, comm and exe are then known
exactly) or by small Python children; io_uring submissions are made with
raw syscalls, to show which attach modes see binds and listens that never
go through bind(2)/listen(2).
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import random
import socket
import struct
import subprocess
import sys
import time

import orjson
import psutil
import pytest

from helpers import pump_until, start_agent, start_vigil, stop_vigil, tcg_slow_cli, vigil
from vigil import listeners, sensors
from vigil.loader import usable

pytestmark = pytest.mark.kernel

VIGIL = [os.path.join(os.path.dirname(sys.executable), "vigil")]
ME = os.getpid()
MY_EXE = os.readlink("/proc/self/exe").encode()
with open("/proc/self/comm", "rb") as _f:
    MY_COMM = _f.read().rstrip(b"\n")
ANY = {socket.AF_INET: "0.0.0.0", socket.AF_INET6: "::"}
LOOPBACK = {socket.AF_INET: "127.0.0.1", socket.AF_INET6: "::1"}
PROTO = {socket.SOCK_STREAM: "tcp", socket.SOCK_DGRAM: "udp"}


def somaxconn() -> int:
    with open("/proc/sys/net/core/somaxconn") as f:
        return int(f.read())


def free_port() -> int:
    """A port nothing uses, below the ephemeral range (the kernel will not pick it).

    Found without binding: a probe bind would itself be reported, with that port.
    """
    used = {c.laddr.port for c in psutil.net_connections(kind="inet")}
    return random.choice([p for p in range(20000, 32000) if p not in used])


def of(events, kind, port, pid=ME):
    return [e for e in events if e["kind"] == kind and e["pid"] == pid and e["lport"] == port]


def wait_for(agent, sink, kind, port, pid=ME, n=1):
    return of(
        pump_until(agent, sink, lambda evs: len(of(evs, kind, port, pid)) >= n), kind, port, pid
    )


def settle(agent, seconds=0.3):
    """Read what is left in the ring (to show that nothing more comes)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        agent.step(0.05)


def assert_mine(ev, family, kind, addr, port):
    assert ev["pid"] == ME and ev["tid"] == ME and ev["ppid"] == os.getppid()
    assert ev["comm"] == MY_COMM
    assert ev["exe"] == MY_EXE  # resolved in the kernel, not from /proc
    assert ev["proto"] == PROTO[kind]
    assert ev["ip"] == (4 if family == socket.AF_INET else 6)
    assert ev["laddr"] == addr and ev["lport"] == port
    assert ev["uid"] == os.getuid()
    assert ev["flags"] == []


@pytest.fixture(scope="module")
def live():
    agent, sink = start_agent(["bind", "listen"])
    yield agent, sink
    agent.session.close()


# -- triggers shared with test_attach_modes: one event each, in every mode ------------
def bind_trigger():
    """A TCP bind on a fixed port (the cgroup mode reports the port asked for)."""
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
    return lambda ev: (
        ev["kind"] == "bind"
        and ev["pid"] == ME
        and ev["proto"] == "tcp"
        and (ev["laddr"], ev["lport"]) == ("127.0.0.1", port)
    )


def listen_trigger():
    """A listen without bind: the kernel picks the port during listen()."""
    with socket.socket() as s:
        s.listen(23)
        port = s.getsockname()[1]
    return lambda ev: (
        ev["kind"] == "listen"
        and ev["pid"] == ME
        and (ev["laddr"], ev["lport"], ev["backlog"]) == ("0.0.0.0", port, 23)
        and ev["origin"] == "syscall"
        and ev["flags"] == []
    )


# -- bind ----------------------------------------------------------------------------
@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("kind", [socket.SOCK_STREAM, socket.SOCK_DGRAM], ids=["tcp", "udp"])
@pytest.mark.parametrize("fixed", [False, True], ids=["ephemeral", "fixed"])
def test_bind_reports_the_bound_port(live, family, kind, fixed):
    agent, sink = live
    port = free_port() if fixed else 0
    with socket.socket(family, kind) as s:
        s.bind((LOOPBACK[family], port))
        port = s.getsockname()[1]  # the kernel's choice for port 0
        (ev,) = wait_for(agent, sink, "bind", port)
    assert_mine(ev, family, kind, LOOPBACK[family], port)
    assert ev["origin"] == "syscall"
    assert "backlog" not in ev


def test_bind_to_the_any_address(live):
    agent, sink = live
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        s.bind(("::", 0))
        port = s.getsockname()[1]
        (ev,) = wait_for(agent, sink, "bind", port)
    assert_mine(ev, socket.AF_INET6, socket.SOCK_DGRAM, "::", port)


def test_failed_bind_and_unix_sockets_are_not_reported(live):
    agent, sink = live
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        with socket.socket() as s, pytest.raises(OSError) as err:
            s.bind(("127.0.0.1", port))
        assert err.value.errno == errno.EADDRINUSE
        with socket.socket(socket.AF_UNIX) as u:
            u.bind(b"\0vigil-test-listen-%d" % ME)
        settle(agent)
    assert len(of(sink.events, "bind", port)) == 1  # the first bind only
    assert not [e for e in sink.events if e["pid"] == ME and e["kind"] == "bind" and e["ip"] == 0]


# -- listen --------------------------------------------------------------------------
@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("fixed", [False, True], ids=["ephemeral", "fixed"])
def test_bind_then_listen(live, family, fixed):
    agent, sink = live
    port = free_port() if fixed else 0
    with socket.socket(family) as s:
        s.bind((LOOPBACK[family], port))
        s.listen(37)
        port = s.getsockname()[1]
        (ev,) = wait_for(agent, sink, "listen", port)
    assert_mine(ev, family, socket.SOCK_STREAM, LOOPBACK[family], port)
    assert ev["backlog"] == 37
    assert ev["origin"] == "syscall"
    (bind,) = of(sink.events, "bind", port)
    assert bind["ts_ns"] <= ev["ts_ns"]


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["ipv4", "ipv6"])
def test_listen_without_bind_reports_the_port_listen_chose(live, family):
    agent, sink = live
    with socket.socket(family) as s:
        s.listen(5)
        port = s.getsockname()[1]
        (ev,) = wait_for(agent, sink, "listen", port)
        settle(agent, 0.1)
    assert port != 0
    assert_mine(ev, family, socket.SOCK_STREAM, ANY[family], port)
    assert ev["backlog"] == 5
    assert not of(sink.events, "bind", port)  # no bind(2) was made


def test_backlog_is_capped_at_somaxconn_and_relisten_is_not_a_new_port(live):
    agent, sink = live
    cap = somaxconn()
    with socket.socket() as s:
        s.listen(cap + 1000)
        port = s.getsockname()[1]
        s.listen(3)  # already listening: only the backlog changes
        (ev,) = wait_for(agent, sink, "listen", port)
        settle(agent)
    assert ev["backlog"] == cap
    assert len(of(sink.events, "listen", port)) == 1


def test_listen_refused_after_the_state_change_is_not_reported(live):
    """Two SO_REUSEADDR sockets on one port: the second listen() enters
    TCP_LISTEN, then the kernel's port check refuses it (EADDRINUSE)."""
    agent, sink = live
    with socket.socket() as a, socket.socket() as b:
        for s in (a, b):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        a.bind(("127.0.0.1", 0))
        port = a.getsockname()[1]
        b.bind(("127.0.0.1", port))
        a.listen(2)
        with pytest.raises(OSError) as err:
            b.listen(3)
        assert err.value.errno == errno.EADDRINUSE
        (ev,) = wait_for(agent, sink, "listen", port)
        settle(agent)
    assert ev["backlog"] == 2
    assert len(of(sink.events, "listen", port)) == 1
    assert len(of(sink.events, "bind", port)) == 2


def test_failed_listen_is_not_reported(live):
    agent, sink = live
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.bind(("127.0.0.1", 0))
        port = u.getsockname()[1]
        with pytest.raises(OSError) as err:
            u.listen(1)
        assert err.value.errno == errno.EOPNOTSUPP
        wait_for(agent, sink, "bind", port)
        settle(agent)
    assert not of(sink.events, "listen", port)


def test_other_process_with_ancestry_and_exe(live, tmp_path):
    """A child names itself; pid, ppid, comm, exe and ancestors are its own."""
    agent, sink = live
    code = (
        "import socket, sys\n"
        "open('/proc/self/comm', 'w').write('vigil-lsn-kid')\n"
        "s = socket.socket(socket.AF_INET6); s.bind(('::1', 0)); s.listen(9)\n"
        "print(s.getsockname()[1], flush=True); sys.stdin.readline()\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        port = int(child.stdout.readline())
        (ev,) = wait_for(agent, sink, "listen", port, pid=child.pid)
    finally:
        child.communicate(b"\n", timeout=10)
    assert ev["comm"] == b"vigil-lsn-kid"
    assert ev["ppid"] == ME
    assert ev["exe"] == os.path.realpath(sys.executable).encode()
    assert (ev["laddr"], ev["backlog"]) == ("::1", 9)
    assert ev["ancestors"][0]["pid"] == ME
    assert ev["ancestors"][0]["exe"] == MY_EXE.decode()  # ancestry is escaped text
    (bind,) = of(sink.events, "bind", port, pid=child.pid)
    assert bind["ancestors"][0]["pid"] == ME


def test_pid_filter_is_in_the_kernel():
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; sys.stdin.readline()\n"
            "import socket; s = socket.socket(); s.listen(1); print(s.getsockname()[1])",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    agent, sink = start_agent(["bind", "listen"], rodata={"targ_pid": child.pid})
    try:
        with socket.socket() as mine:
            mine.listen(1)
            my_port = mine.getsockname()[1]
            out, _ = child.communicate(b"\n", timeout=10)
            port = int(out)
            wait_for(agent, sink, "listen", port, pid=child.pid)
            settle(agent)
        assert {e["pid"] for e in sink.events} == {child.pid}
        assert not of(sink.events, "listen", my_port)
    finally:
        agent.session.close()


# -- snapshot --------------------------------------------------------------------------
@pytest.fixture
def old_server():
    """A server that listens (TCP) and binds (UDP) before any sensor is loaded."""
    code = (
        "import socket, sys\n"
        "open('/proc/self/comm', 'w').write('vigil-old-srv')\n"
        "t = socket.socket(); t.bind(('127.0.0.1', 0)); t.listen(77)\n"
        "u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); u.bind(('::1', 0))\n"
        "c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); c.connect(('127.0.0.1', 9))\n"
        "print(t.getsockname()[1], u.getsockname()[1], c.getsockname()[1], flush=True)\n"
        "sys.stdin.readline()\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    tcp, udp, connected = map(int, child.stdout.readline().split())
    yield child, tcp, udp, connected
    child.communicate(b"\n", timeout=10)


def test_snapshot_lists_sockets_opened_beforestart_vigil(live, old_server):
    child, tcp, udp, connected = old_server
    events = listeners.snapshot_events()
    (lst,) = of(events, "listen", tcp, pid=child.pid)
    (bnd,) = of(events, "bind", udp, pid=child.pid)
    assert not of(events, "bind", connected, pid=child.pid)  # connected UDP: not a server
    for ev in (lst, bnd):
        assert ev["origin"] == "snapshot"
        assert ev["comm"] == b"vigil-old-srv" and ev["ppid"] == ME
        assert ev["exe"] == os.path.realpath(sys.executable).encode()
        assert ev["uid"] == os.getuid() and ev["tid"] == child.pid
    assert (lst["proto"], lst["laddr"], lst["backlog"], lst["flags"]) == (
        "tcp",
        "127.0.0.1",
        77,
        [],
    )
    assert (bnd["proto"], bnd["laddr"], bnd["ip"]) == ("udp", "::1", 6)
    # the same schema as the kernel's events of the kind: same fields, same types
    agent, sink = live
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        s.bind(("::1", 0))
        (kbind,) = wait_for(agent, sink, "bind", s.getsockname()[1])
    with socket.socket() as s:
        s.listen(1)
        (klisten,) = wait_for(agent, sink, "listen", s.getsockname()[1])
    for snap, kern in ((bnd, kbind), (lst, klisten)):
        enriched = ("ancestors", "host", "boot_id", "process_key", "parent_key")
        kern = {k: v for k, v in kern.items() if k not in enriched}  # added by enrichment
        assert snap.keys() == kern.keys()
        assert {k: type(v) for k, v in snap.items()} == {k: type(v) for k, v in kern.items()}
    # its cgroup id is the kernel's for the same process
    assert lst["cgroup_id"] == kbind["cgroup_id"]  # the child is in our cgroup
    only = listeners.snapshot_events(["listen"], pid=child.pid)
    assert [(e["kind"], e["lport"]) for e in only] == [("listen", tcp)]


# -- io_uring: binds and listens that skip the syscalls ---------------------------------
class _Params(ctypes.Structure):
    _fields_ = [
        ("sq_entries", ctypes.c_uint32),
        ("cq_entries", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("sq_thread_cpu", ctypes.c_uint32),
        ("sq_thread_idle", ctypes.c_uint32),
        ("features", ctypes.c_uint32),
        ("wq_fd", ctypes.c_uint32),
        ("resv", ctypes.c_uint32 * 3),
        (
            "sq_off",
            ctypes.c_uint32 * 10,
        ),  # head tail mask entries flags dropped array resv1 user_addr
        (
            "cq_off",
            ctypes.c_uint32 * 10,
        ),  # head tail mask entries overflow cqes flags resv1 user_addr
    ]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
IORING_OP_BIND, IORING_OP_LISTEN = 56, 57


def io_uring_op(opcode: int, fd: int, *, addr: bytes = b"", length: int = 0) -> int:
    """Submit one socket op through a fresh io_uring and wait; its result."""
    p = _Params()
    ring = _libc.syscall(425, 4, ctypes.byref(p))  # io_uring_setup
    if ring < 0:
        pytest.skip(f"io_uring_setup: {os.strerror(ctypes.get_errno())}")
    sq_head, sq_tail, sq_mask, _, _, _, sq_array = p.sq_off[:7]
    cq_head, _, cq_mask, _, _, cqes = p.cq_off[:6]
    size = max(sq_array + 4 * p.sq_entries, cqes + 16 * p.cq_entries)
    try:
        rings = mmap.mmap(ring, size, offset=0)  # IORING_FEAT_SINGLE_MMAP (5.4+)
        sqes = mmap.mmap(ring, 64 * p.sq_entries, offset=0x10000000)
        buf = ctypes.create_string_buffer(addr)
        # struct io_uring_sqe: opcode flags ioprio fd | off/addr2 | addr | len ...
        sqes[0:64] = struct.pack(
            "<BBHiQQI", opcode, 0, 0, fd, len(addr), ctypes.addressof(buf) if addr else 0, length
        ).ljust(64, b"\0")
        tail = struct.unpack_from("<I", rings, sq_tail)[0]
        struct.pack_into(
            "<I", rings, sq_array + 4 * (tail & struct.unpack_from("<I", rings, sq_mask)[0]), 0
        )
        struct.pack_into("<I", rings, sq_tail, tail + 1)
        if _libc.syscall(426, ring, 1, 1, 1, None, 0) < 0:  # io_uring_enter, GETEVENTS
            raise OSError(ctypes.get_errno(), "io_uring_enter")
        head = struct.unpack_from("<I", rings, cq_head)[0]
        mask = struct.unpack_from("<I", rings, cq_mask)[0]
        res = struct.unpack_from("<i", rings, cqes + 16 * (head & mask) + 8)[0]
        struct.pack_into("<I", rings, cq_head, head + 1)
        rings.close()
        sqes.close()
        if res in (-errno.EINVAL, -errno.EOPNOTSUPP):
            pytest.skip(f"io_uring op {opcode} not in this kernel ({os.strerror(-res)})")
        return res
    finally:
        os.close(ring)


def sockaddr_in(port: int) -> bytes:
    return (
        struct.pack("<H", socket.AF_INET)
        + struct.pack(">H", port)
        + socket.inet_aton("127.0.0.1")
        + bytes(8)
    )


def test_io_uring_listen_is_seen_by_the_state_change_not_by_syscalls():
    modes = [a.feature for a in sensors.get("listen").hooks[0].alternatives]
    assert modes[-1] == "tracepoint"
    for mode in ("tp_btf", "tracepoint"):
        agent, sink = start_agent(["listen"], choices={"listen": mode})
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
                assert io_uring_op(IORING_OP_LISTEN, s.fileno(), length=12) == 0
                if mode == "tracepoint":
                    settle(agent)
                    assert not of(sink.events, "listen", port)  # the syscall hook's blind spot
                    continue
                (ev,) = wait_for(agent, sink, "listen", port)
            assert ev["origin"] == "state"
            assert (ev["laddr"], ev["backlog"], ev["exe"]) == ("127.0.0.1", 12, MY_EXE)
        finally:
            agent.session.close()


def test_io_uring_listen_of_an_unbound_socket_is_partial():
    agent, sink = start_agent(["listen"], choices={"listen": "tp_btf"})
    try:
        with socket.socket() as s:
            assert io_uring_op(IORING_OP_LISTEN, s.fileno(), length=4) == 0
            pump_until(
                agent,
                sink,
                lambda evs: [e for e in evs if e["pid"] == ME and e["origin"] == "state"],
            )
        (ev,) = [e for e in sink.events if e["pid"] == ME and e["origin"] == "state"]
        # seen at the state change, before the kernel picked the port
        assert ev["lport"] == 0 and ev["flags"] == ["partial"] and ev["backlog"] == 4
        assert agent.session.kernel_stats()["listen"]["partial"] >= 1
    finally:
        agent.session.close()


def test_io_uring_bind_is_seen_by_the_cgroup_hook_only():
    for mode in ("cgroup", "tracepoint"):
        agent, sink = start_agent(["bind"], choices={"bind": mode})
        try:
            port = free_port()
            with socket.socket() as s:
                assert io_uring_op(IORING_OP_BIND, s.fileno(), addr=sockaddr_in(port)) == 0
                assert s.getsockname()[1] == port
                if mode == "tracepoint":
                    settle(agent)
                    assert not of(sink.events, "bind", port)
                    continue
                (ev,) = wait_for(agent, sink, "bind", port)
            assert (ev["origin"], ev["laddr"], ev["exe"]) == ("cgroup", "127.0.0.1", MY_EXE)
        finally:
            agent.session.close()


# -- attach modes: the same sockets, reported alike ---------------------------------------
@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("kind", [socket.SOCK_STREAM, socket.SOCK_DGRAM], ids=["tcp", "udp"])
def test_bind_modes_agree_on_fixed_ports(family, kind):
    seen = {}
    for alt in sensors.get("bind").hooks[0].alternatives:
        if not usable(alt):
            continue
        agent, sink = start_agent(["bind"], enrich=False, choices={"bind": alt.feature})
        try:
            port = free_port()
            with socket.socket(family, kind) as s:
                s.bind((LOOPBACK[family], port))
                (ev,) = wait_for(agent, sink, "bind", port)
            seen[alt.feature] = ev
        finally:
            agent.session.close()
    assert set(seen) == {"tracepoint", "cgroup"}
    assert seen["tracepoint"]["origin"] == "syscall" and seen["cgroup"]["origin"] == "cgroup"
    same = ("pid", "tid", "comm", "proto", "ip", "laddr", "exe", "uid", "flags")
    assert {k: seen["tracepoint"][k] for k in same} == {k: seen["cgroup"][k] for k in same}


def test_cgroup_mode_reports_port_zero_as_asked():
    """Before the bind, an ephemeral port is not chosen yet: documented as 0."""
    agent, sink = start_agent(["bind"], enrich=False, choices={"bind": "cgroup"})
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            done = lambda evs: [e for e in evs if e["pid"] == ME and e["kind"] == "bind"]  # noqa: E731
            (ev,) = done(pump_until(agent, sink, done))
        assert (ev["lport"], ev["proto"], ev["origin"]) == (0, "udp", "cgroup")
    finally:
        agent.session.close()


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["ipv4", "ipv6"])
def test_listen_modes_agree(family):
    seen = {}
    for alt in sensors.get("listen").hooks[0].alternatives:
        if not usable(alt):
            continue
        agent, sink = start_agent(["listen"], enrich=False, choices={"listen": alt.feature})
        try:
            with socket.socket(family) as s:
                s.listen(21)
                port = s.getsockname()[1]
                (ev,) = wait_for(agent, sink, "listen", port)
                settle(agent, 0.1)
            assert len(of(sink.events, "listen", port)) == 1
            # a record's number and CPU differ from one run to the next
            skip = ("ts_ns", "lport", "seq", "cpu")
            seen[alt.feature] = {k: v for k, v in ev.items() if k not in skip}
        finally:
            agent.session.close()
    assert {"tp_btf", "raw_tp", "tracepoint"} <= set(seen)
    first = seen.pop("tracepoint")
    assert first["backlog"] == 21 and first["origin"] == "syscall"
    for other in seen.values():
        assert other == first


# -- the command line --------------------------------------------------------------------


@tcg_slow_cli
def test_cli_table(old_server):
    child, old_tcp, old_udp, _ = old_server
    proc = start_vigil("listen")
    with socket.socket() as s, socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as u:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        u.bind(("::1", 0))
        tcp, udp = s.getsockname()[1], u.getsockname()[1]
        time.sleep(0.5)
    out, _ = stop_vigil(proc)
    lines = out.decode().splitlines()
    header = ["TIME", "PID", "COMM", "PROTO", "ADDR", "PORT", "BACKLOG", "EXE"]
    assert lines[0].split() == header
    # only our processes' rows: another process's COMM or EXE may hold spaces
    ours = {str(ME), str(child.pid)}
    rows = [dict(zip(header, line.split())) for line in lines[1:] if line.split()[1] in ours]
    for row in rows:
        assert row["TIME"] == "-" or time.strptime(row["TIME"], "%H:%M:%S")
        int(row["PID"]), int(row["PORT"])
        assert row["BACKLOG"] == "-" or int(row["BACKLOG"]) >= 0
    mine = {(r["PROTO"], r["PORT"], r["BACKLOG"]): r for r in rows if r["PID"] == str(ME)}
    assert mine[("tcp", str(tcp), "-")]["ADDR"] == "127.0.0.1"  # the bind
    assert mine[("tcp", str(tcp), "64")]["EXE"] == MY_EXE.decode()  # the listen
    assert mine[("udp", str(udp), "-")]["ADDR"] == "::1"
    # the snapshot comes first, with no time: these sockets predate the tool
    old = [i for i, r in enumerate(rows) if r["PID"] == str(child.pid)]
    assert {(rows[i]["PROTO"], rows[i]["PORT"], rows[i]["BACKLOG"]) for i in old} == {
        ("tcp", str(old_tcp), "77"),
        ("udp", str(old_udp), "-"),
    }
    assert all(rows[i]["TIME"] == "-" and rows[i]["COMM"] == "vigil-old-srv" for i in old)
    first_live = min(i for i, r in enumerate(rows) if r["TIME"] != "-")
    assert max(old) < first_live


@tcg_slow_cli
def test_cli_json_pid_filter_and_no_snapshot(old_server):
    child, old_tcp, _, _ = old_server
    proc = start_vigil("listen", "--json", "-p", str(ME), "-t")
    with socket.socket() as s:
        s.listen(8)
        port = s.getsockname()[1]
        time.sleep(0.5)
    out, _ = stop_vigil(proc)
    events = [orjson.loads(line) for line in out.splitlines()]
    assert {e["pid"] for e in events} == {ME}  # the old server is filtered out too
    (ev,) = [e for e in events if e["kind"] == "listen" and e["lport"] == port]
    assert ev["backlog"] == 8 and ev["exe"] == MY_EXE.decode() and ev["origin"] == "syscall"
    assert ev["ancestors"] and "time" in ev

    proc = start_vigil("listen", "--no-snapshot", "-t")
    time.sleep(0.3)
    out, _ = stop_vigil(proc)
    lines = out.decode().splitlines()
    assert lines[0].split()[0] == "TIME(s)"
    assert not [line for line in lines[1:] if line.split()[1] == str(child.pid)]


@tcg_slow_cli
def test_monitor_stores_binds_and_listens_with_ancestry(tmp_path):
    db = str(tmp_path / "v.db")
    proc = start_vigil("monitor", "--db", db, "-q", "--sensor", "bind", "--sensor", "listen")
    code = (
        "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(6);"
        "print(s.getsockname()[1])"
    )
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True)
    port = int(child.stdout)
    time.sleep(1.0)
    _, err = stop_vigil(proc)
    assert b"events stored" in err
    res = vigil("events", "--db", db, "--json", "-n", "100000", check=True)
    events = [orjson.loads(line) for line in res.stdout.splitlines()]
    got = {e["kind"]: e for e in events if e.get("lport") == port and e["ppid"] == ME}
    assert set(got) == {"bind", "listen"}
    assert got["listen"]["backlog"] == 6
    for ev in got.values():
        assert ev["ancestors"][0]["pid"] == ME
        assert ev["exe"] == os.path.realpath(sys.executable)
    table = vigil("events", "--db", db, "--kind", "listen", check=True).stdout.decode()
    (line,) = [line for line in table.splitlines() if f"127.0.0.1:{port} " in line]
    assert "backlog 6" in line
