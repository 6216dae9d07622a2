"""TCP sensors on the real kernel: real sockets, real processes, real loss.

connect: established, refused, timed out and aborted connects, IPv4 and
IPv6, from this process and from a child; in-kernel pid/port filters; the
cgroup fallback.  accept: a child server (its own comm) accepts through
accept4() and accept().  retransmit: a TCP transfer between two network
namespaces joined by a veth pair (IPv6 ULA addresses, nothing leaves the
namespaces), with loss made by the kernel itself: a classic BPF socket
filter on the receiving socket drops about one segment in four at random
(netem is not built into this kernel and no nft/iptables is installed; a
socket filter drop is a real kernel drop the sender can only recover from
by retransmitting).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass

import orjson
import pytest

from helpers import pump_until, start_agent, start_vigil, stop_vigil, tcg_slow_cli, vigil
from vigil import _libbpf as bpf
from vigil import records
from vigil.loader import Session, usable
from vigil.net import finish_sockaddrs
from vigil.sensors import get as get_sensor
from vigil.sensors.tcp import connect_rodata

pytestmark = pytest.mark.kernel

VIGIL = [os.path.join(os.path.dirname(sys.executable), "vigil")]
LOOPBACK = {4: "127.0.0.1", 6: "::1"}
FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}
SO_ATTACH_FILTER = 26
# Classic BPF: A = a random u32 (ancillary load SKF_AD_RANDOM); keep the
# packet if any bit of `mask` is set in A, else drop it.
_SKF_AD_RANDOM = 0xFFFFF000 + 56


def _cbpf(insns: list[tuple[int, int, int, int]]) -> tuple[bytes, ctypes.Array]:
    buf = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in insns))
    return struct.pack("HL", len(insns), ctypes.addressof(buf)), buf


def attach_drop_all(sock: socket.socket) -> None:
    """Every segment to this socket is dropped: a silent peer (no RST)."""
    prog, buf = _cbpf([(0x06, 0, 0, 0)])  # ret 0
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, prog)
    del buf  # the kernel copied the program


# Same program for child scripts (they cannot import this module).
LOSSY_SERVER = textwrap.dedent(
    """
    import ctypes, socket, struct, sys
    host = sys.argv[1]
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    srv = socket.socket(fam)
    srv.bind((host, 0))
    srv.listen()
    print(srv.getsockname()[1], flush=True)
    conn, _ = srv.accept()
    # drop ~1 segment in 4 at random (A & 3 == 0): the client must retransmit
    insns = [(0x20, 0, 0, 0xFFFFF000 + 56), (0x45, 1, 0, 3), (0x06, 0, 0, 0), (0x06, 0, 0, 0xFFFFFFFF)]
    buf = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in insns))
    conn.setsockopt(socket.SOL_SOCKET, 26, struct.pack("HL", len(insns), ctypes.addressof(buf)))
    n = 0
    while chunk := conn.recv(65536):
        n += len(chunk)
    print(n, flush=True)
    """
)

CLIENT = textwrap.dedent(
    """
    import socket, sys, time
    host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    s = socket.create_connection((host, port), timeout=60)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    print(s.getsockname()[1], flush=True)
    for _ in range(count):
        s.sendall(b"x" * 1000)
        time.sleep(0.005)
    s.close()
    """
)

ACCEPTOR = textwrap.dedent(
    """
    import ctypes, socket, sys
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(15, b"vigil-acceptor", 0, 0, 0)  # PR_SET_NAME: our own comm
    host, how = sys.argv[1], sys.argv[2]
    srv = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    srv.bind((host, 0))
    srv.listen()
    print(srv.getsockname()[1], flush=True)
    if how == "accept":  # glibc's accept() is the accept syscall on x86-64
        fd = libc.accept(srv.fileno(), None, None)
    else:  # Python's accept() is accept4(SOCK_CLOEXEC)
        fd = srv.accept()[0].detach()
    print(fd, flush=True)
    sys.stdin.read()  # keep the connection until the test is done
    """
)


def python(script: str, *args: str, netns: str | None = None, **kw) -> subprocess.Popen:
    cmd = [sys.executable, "-c", script, *args]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, **kw)


def own_comm() -> bytes:
    with open(f"/proc/self/task/{threading.get_native_id()}/comm", "rb") as f:
        return f.read().rstrip(b"\n")


def closed_port(ip: int) -> tuple[socket.socket, int]:
    """A port nothing listens on (held by a bound, non-listening socket)."""
    s = socket.socket(FAMILY[ip])
    s.bind((LOOPBACK[ip], 0))
    return s, s.getsockname()[1]


def listener(ip: int, host: str | None = None) -> tuple[socket.socket, int]:
    s = socket.socket(FAMILY[ip])
    s.bind((host or LOOPBACK[ip], 0))
    s.listen(16)
    return s, s.getsockname()[1]


def connects_to(events, port: int, pid: int | None = None) -> list[dict]:
    return [
        e
        for e in events
        if e["kind"] == "connect" and e["rport"] == port and (pid is None or e["pid"] == pid)
    ]


@pytest.fixture
def connect_agent():
    agent, sink = start_agent(["connect"], enrich=False)
    yield agent, sink
    agent.session.close()


# -- connect ------------------------------------------------------------------------
@pytest.mark.parametrize("ip", [4, 6])
def test_connect_established(connect_agent, ip):
    agent, sink = connect_agent
    srv, port = listener(ip)
    before = time.time_ns()
    with srv, socket.create_connection((LOOPBACK[ip], port)) as c:
        laddr, lport = c.getsockname()[:2]
        events = pump_until(agent, sink, lambda evs: connects_to(evs, port))
    (ev,) = connects_to(events, port)
    assert ev["result"] == "established" and ev["error"] == 0
    assert ev["pid"] == os.getpid() and ev["tid"] == threading.get_native_id()
    assert ev["ppid"] == os.getppid() and ev["uid"] == os.getuid()
    assert ev["comm"] == own_comm()
    assert ev["ip"] == ip and ev["proto"] == "tcp"
    assert (ev["laddr"], ev["lport"]) == (laddr, lport)
    assert (ev["raddr"], ev["rport"]) == (LOOPBACK[ip], port)
    assert 0 < ev["latency_ns"] < 1e9
    assert before <= ev["ts_ns"] <= time.time_ns()  # the connect time
    assert ev["flags"] == []


@pytest.mark.parametrize("ip", [4, 6])
def test_connect_refused(connect_agent, ip):
    agent, sink = connect_agent
    held, port = closed_port(ip)
    with held, socket.socket(FAMILY[ip]) as c, pytest.raises(ConnectionRefusedError):
        c.connect((LOOPBACK[ip], port))
    (ev,) = connects_to(pump_until(agent, sink, lambda evs: connects_to(evs, port)), port)
    assert ev["result"] == "refused" and ev["error"] == 111
    assert ev["pid"] == os.getpid() and ev["comm"] == own_comm()
    assert ev["raddr"] == LOOPBACK[ip] and ev["ip"] == ip


@pytest.mark.parametrize("ip", [4, 6])
def test_connect_timed_out_keeps_the_callers_context(connect_agent, ip):
    """No answer: the kernel gives up in a timer, ~1 s later, in no process
    of ours; the event still names the connecting process and its time."""
    agent, sink = connect_agent
    blackhole, port = listener(ip)
    attach_drop_all(blackhole)
    with blackhole, socket.socket(FAMILY[ip]) as c:
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 500)  # give up fast
        started = time.time_ns()
        with pytest.raises(TimeoutError):
            c.connect((LOOPBACK[ip], port))
    (ev,) = connects_to(pump_until(agent, sink, lambda evs: connects_to(evs, port)), port)
    assert ev["result"] == "timed_out" and ev["error"] == 110
    assert ev["pid"] == os.getpid() and ev["comm"] == own_comm()
    assert abs(ev["ts_ns"] - started) < 0.2e9
    assert 0.4e9 < ev["latency_ns"] < 5e9


def test_connect_closed_before_an_answer_is_aborted(connect_agent):
    agent, sink = connect_agent
    blackhole, port = listener(4)
    attach_drop_all(blackhole)
    with blackhole:
        c = socket.socket()
        c.setblocking(False)
        with pytest.raises(BlockingIOError):
            c.connect((LOOPBACK[4], port))
        c.close()
        (ev,) = connects_to(pump_until(agent, sink, lambda evs: connects_to(evs, port)), port)
    assert ev["result"] == "aborted" and ev["error"] == 0
    assert ev["pid"] == os.getpid()


def test_connect_from_a_child_names_the_child(connect_agent):
    agent, sink = connect_agent
    srv, port = listener(6)
    with srv:
        script = f"import socket; socket.create_connection(('::1', {port})).close()"
        child = subprocess.run([sys.executable, "-c", script], check=True)
        del child
        events = pump_until(agent, sink, lambda evs: connects_to(evs, port))
    (ev,) = connects_to(events, port)
    assert ev["pid"] != os.getpid() and ev["ppid"] == os.getpid()
    assert ev["result"] == "established" and ev["raddr"] == "::1"


def test_connect_filters_in_kernel():
    """-p and -P: filtered connects are never recorded (nor kept in the map)."""
    srv_a, port_a = listener(4)
    srv_b, port_b = listener(4)
    srv_c, port_c = listener(4)
    rodata = connect_rodata(pid=os.getpid(), ports=[port_a, port_c])
    agent, sink = start_agent(["connect"], enrich=False, rodata=rodata)
    try:
        with srv_a, srv_b, srv_c:
            for port in (port_b, port_a):
                socket.create_connection((LOOPBACK[4], port)).close()
            # port_c is wanted, but from another process: filtered by pid
            script = f"import socket; socket.create_connection(('127.0.0.1', {port_c})).close()"
            subprocess.run([sys.executable, "-c", script], check=True)
            socket.create_connection((LOOPBACK[4], port_c)).close()
            events = pump_until(
                agent, sink, lambda evs: connects_to(evs, port_a) and connects_to(evs, port_c)
            )
            time.sleep(0.2)
            agent.step(0.1)
        assert not connects_to(events, port_b)
        (ev_c,) = connects_to(events, port_c)
        assert ev_c["pid"] == os.getpid()
        assert all(e["pid"] == os.getpid() for e in events)
    finally:
        agent.session.close()


def test_connect_cgroup_fallback_reports_the_same_connect():
    alt = next(a for a in get_sensor("connect").hooks[0].alternatives if a.feature == "cgroup")
    if not usable(alt):
        pytest.skip("cgroup socket hooks not available here")
    agent, sink = start_agent(["connect"], enrich=False, choices={"connect": "cgroup"})
    try:
        assert [c.programs for c in agent.session.choices] == [alt.programs]
        for ip in (4, 6):
            srv, port = listener(ip)
            held, closed = closed_port(ip)
            with srv, held:
                socket.create_connection((LOOPBACK[ip], port)).close()
                with pytest.raises(ConnectionRefusedError):
                    socket.create_connection((LOOPBACK[ip], closed))
                udp = socket.socket(FAMILY[ip], socket.SOCK_DGRAM)
                udp.connect((LOOPBACK[ip], port))  # not TCP: not reported
                udp.close()
                events = pump_until(
                    agent,
                    sink,
                    lambda evs, a=port, b=closed: connects_to(evs, a) and connects_to(evs, b),
                )
            (ok,) = connects_to(events, port)
            (refused,) = connects_to(events, closed)
            for ev in (ok, refused):
                assert ev["result"] == "unknown" and ev["latency_ns"] == 0
                assert ev["pid"] == os.getpid() and ev["comm"] == own_comm()
                assert ev["raddr"] == LOOPBACK[ip] and ev["ip"] == ip and ev["proto"] == "tcp"
    finally:
        agent.session.close()


def connect_trigger():
    """For test_attach_modes: one connect from this process to a listener."""
    srv, port = listener(4)
    with srv:
        socket.create_connection((LOOPBACK[4], port)).close()
    return lambda ev: (
        ev["kind"] == "connect"
        and ev["pid"] == os.getpid()
        and (ev["raddr"], ev["rport"]) == (LOOPBACK[4], port)
        and ev["result"] in ("established", "unknown")  # unknown: the cgroup mode
    )


# -- accept -------------------------------------------------------------------------
@contextlib.contextmanager
def acceptor(ip: int, how: str = "accept4"):
    """A child that listens, accepts one connection and reports its fd."""
    child = python(ACCEPTOR, LOOPBACK[ip], how, stdin=subprocess.PIPE)
    try:
        port = int(child.stdout.readline())
        yield child, port
    finally:
        child.kill()
        child.wait()


def accepts(events, port: int) -> list[dict]:
    return [e for e in events if e["kind"] == "accept" and e["lport"] == port]


@pytest.mark.parametrize("ip, how", [(4, "accept4"), (6, "accept4"), (4, "accept"), (6, "accept")])
def test_accept_names_the_accepting_process(ip, how):
    agent, sink = start_agent(["accept"], enrich=False)
    try:
        with acceptor(ip, how) as (child, port):
            c = socket.create_connection((LOOPBACK[ip], port))
            caddr, cport = c.getsockname()[:2]
            fd = int(child.stdout.readline())
            events = pump_until(agent, sink, lambda evs: accepts(evs, port))
            c.close()
        (ev,) = accepts(events, port)
        assert ev["pid"] == child.pid and ev["ppid"] == os.getpid()
        assert ev["comm"] == b"vigil-acceptor"
        assert (ev["raddr"], ev["rport"]) == (caddr, cport)  # the client
        assert (ev["laddr"], ev["lport"]) == (LOOPBACK[ip], port)  # the server
        assert ev["ip"] == ip and ev["proto"] == "tcp" and ev["fd"] == fd
    finally:
        agent.session.close()


def test_accept_pid_filter_and_non_tcp_ignored(tmp_path):
    with acceptor(4) as (child, port):
        agent, sink = start_agent(["accept"], enrich=False, rodata={"targ_pid": child.pid})
        try:
            # an accept in this process: filtered out in the kernel
            srv, own_port = listener(4)
            with srv, socket.create_connection((LOOPBACK[4], own_port)):
                srv.accept()[0].close()
            # a unix-socket accept: not TCP
            path = str(tmp_path / "s")
            with socket.socket(socket.AF_UNIX) as us:
                us.bind(path)
                us.listen()
                with socket.socket(socket.AF_UNIX) as uc:
                    uc.connect(path)
                    us.accept()[0].close()
            with socket.create_connection((LOOPBACK[4], port)):
                child.stdout.readline()
                events = pump_until(agent, sink, lambda evs: accepts(evs, port))
        finally:
            agent.session.close()
    assert [e["pid"] for e in events if e["kind"] == "accept"] == [child.pid]


@pytest.mark.parametrize("ip", [4, 6])
def test_accept_of_a_connection_the_client_reset_names_the_server_port(ip):
    """A client connects, then resets (SO_LINGER 0 + close) before the server
    calls accept(): the kernel still hands the dead connection out, and its
    record must name the port the client connected to, not 0."""
    agent, sink = start_agent(["accept"], enrich=False, rodata={"targ_pid": os.getpid()})
    try:
        srv, port = listener(ip)
        with srv:
            clients = []
            for _ in range(10):
                c = socket.create_connection((LOOPBACK[ip], port))
                clients.append(c.getsockname()[1])
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                c.close()  # RST: the queued connection is closed under the listener
            time.sleep(0.05)  # the RSTs are processed before the accepts
            for _ in clients:
                conn, _ = srv.accept()
                with conn:  # it was dead before accept() returned it
                    assert conn.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == errno.ECONNRESET
            events = pump_until(
                agent,
                sink,
                lambda evs: len([e for e in evs if e["kind"] == "accept"]) >= len(clients),
            )
    finally:
        agent.session.close()
    got = [e for e in events if e["kind"] == "accept"]
    assert sorted(e["rport"] for e in got) == sorted(clients)
    for ev in got:
        assert (ev["laddr"], ev["lport"]) == (LOOPBACK[ip], port)
        assert ev["raddr"] == LOOPBACK[ip] and ev["flags"] == []


# -- retransmit ---------------------------------------------------------------------
@dataclass
class NetPair:
    """Two network namespaces joined by a veth pair, IPv6 ULA addresses."""

    client_ns: str
    server_ns: str
    client_addr: str
    server_addr: str


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def netpair():
    tag = f"{os.getpid() % 100000}"
    a, b = f"vigil-tcp-{tag}-a", f"vigil-tcp-{tag}-b"
    va, vb = f"vgt{tag}a", f"vgt{tag}b"
    made = []
    try:
        for ns in (a, b):
            _ip("netns", "add", ns)
            made.append(ns)
        _ip("link", "add", va, "type", "veth", "peer", "name", vb)
        _ip("link", "set", va, "netns", a)
        _ip("link", "set", vb, "netns", b)
        for ns, dev, addr in ((a, va, "fd00:7667::1"), (b, vb, "fd00:7667::2")):
            _ip("-n", ns, "addr", "add", f"{addr}/64", "dev", dev, "nodad")
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield NetPair(a, b, "fd00:7667::1", "fd00:7667::2")
    finally:
        for ns in made:  # deleting a namespace deletes its end of the veth, and the pair
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@dataclass
class Flow:
    client_addr: str
    client_port: int
    server_addr: str
    server_port: int
    received: int


def lossy_transfer(client_ns: str, server_ns: str, client_host: str, server_host: str) -> Flow:
    """Client in one namespace sends 100 KB to a server in another (or the
    same) that drops ~1/4 of what arrives; returns the flow once done."""
    server = python(LOSSY_SERVER, server_host, netns=server_ns)
    try:
        port = int(server.stdout.readline())
        client = python(CLIENT, server_host, str(port), "100", netns=client_ns)
        cport = int(client.stdout.readline())
        assert client.wait(60) == 0
        received = int(server.stdout.readline())
        assert server.wait(10) == 0
    finally:
        for p in (server, locals().get("client")):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    return Flow(client_host, cport, server_host, port, received)


def flow_events(events, flow: Flow) -> list[dict]:
    return [
        e
        for e in events
        if e["kind"] == "retransmit"
        and (e["laddr"], e["lport"], e["raddr"], e["rport"])
        == (flow.client_addr, flow.client_port, flow.server_addr, flow.server_port)
    ]


def test_retransmits_name_the_flow_ipv6_over_veth(netpair):
    agent, sink = start_agent(["retransmit"], enrich=False)
    try:
        flow = lossy_transfer(
            netpair.client_ns, netpair.server_ns, netpair.client_addr, netpair.server_addr
        )
        assert flow.received == 100 * 1000  # every byte arrived, through the loss
        events = pump_until(agent, sink, lambda evs: flow_events(evs, flow))
        time.sleep(0.2)
        agent.step(0.1)
    finally:
        agent.session.close()
    mine = flow_events(sink.events, flow)
    assert all(e["ip"] == 6 and e["proto"] == "tcp" for e in mine)
    assert all(e["err"] == 0 for e in mine)  # the segments went out; the peer dropped them
    assert "ESTABLISHED" in {e["state"] for e in mine}
    del events


def test_retransmits_ipv4_in_a_namespace(netpair):
    """IPv4 through the client namespace's own loopback."""
    agent, sink = start_agent(["retransmit"], enrich=False)
    try:
        ns = netpair.client_ns
        flow = lossy_transfer(ns, ns, "127.0.0.1", "127.0.0.1")
        events = pump_until(agent, sink, lambda evs: flow_events(evs, flow))
    finally:
        agent.session.close()
    assert all(e["ip"] == 4 for e in flow_events(events, flow))


def read_counts(session: Session) -> dict[tuple, int]:
    m = session.map("retrans_counts")
    decode, size = records.struct_decoder(session.btf_of("retrans_counts"), "retransmit_flow")
    assert size == m.key_size
    out = {}
    for key in bpf.map_keys(m.fd, size):
        (n,) = struct.unpack("<Q", bpf.map_lookup(m.fd, key, m.value_size))
        flow = decode(key)
        finish_sockaddrs(flow)
        out[(flow["laddr"], flow["lport"], flow["raddr"], flow["rport"])] = n
    return out


def test_count_only_counts_in_kernel_without_records(netpair):
    agent, sink = start_agent(["retransmit"], enrich=False, rodata={"count_only": 1})
    try:
        flow = lossy_transfer(
            netpair.client_ns, netpair.server_ns, netpair.client_addr, netpair.server_addr
        )
        key = (flow.client_addr, flow.client_port, flow.server_addr, flow.server_port)
        deadline = time.monotonic() + 10
        while key not in read_counts(agent.session) and time.monotonic() < deadline:
            time.sleep(0.1)
        counts = read_counts(agent.session)
        agent.step(0.1)
        stats = agent.session.kernel_stats()["retransmit"]
    finally:
        agent.session.close()
    assert counts[key] >= 1
    assert not [e for e in sink.events if e["kind"] == "retransmit"]  # nothing in the ring
    assert stats["emitted"] == 0 and stats["lost"] == 0


# -- command line -------------------------------------------------------------------


def _stop(proc: subprocess.Popen, stderr: list | None = None) -> list[str]:
    time.sleep(0.5)  # let the tool read what is pending
    out, err = stop_vigil(proc)
    if stderr is not None:
        stderr.append(err.decode())
    return out.decode().splitlines()


def _columns(line: str, left: int, right: int) -> list[str]:
    """Split a table line whose COMM (between `left` and `right` fixed
    columns) may itself hold spaces: a process chooses its name."""
    words = line.split()
    return [*words[:left], " ".join(words[left:-right]), *words[-right:]]


@tcg_slow_cli
def test_tcpconnect_table():
    proc = start_vigil("tcpconnect", "-t")
    try:
        srv, port = listener(4)
        held, closed = closed_port(6)
        with srv, held:
            socket.create_connection((LOOPBACK[4], port)).close()
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection((LOOPBACK[6], closed))
    finally:
        lines = _stop(proc)
    assert lines[0].split() == ["TIME(s)", "PID", "COMM", "IP", "SADDR", "DADDR", "DPORT", "RESULT"]
    rows = {int(cols[6]): cols for cols in (_columns(line, 2, 5) for line in lines[1:])}
    ok, refused = rows[port], rows[closed]
    float(ok[0])
    assert ok[1:4] == [str(os.getpid()), own_comm().decode(), "4"]
    assert ok[4:6] == ["127.0.0.1", "127.0.0.1"] and ok[7] == "established"
    assert refused[3:6] == ["6", "::1", "::1"] and refused[7] == "refused"


@tcg_slow_cli
def test_tcpconnect_port_filter_and_bad_ports():
    srv_a, port_a = listener(4)
    srv_b, port_b = listener(4)
    with srv_a, srv_b:
        proc = start_vigil("tcpconnect", "-P", f"{port_a},1", "-P", "2")
        try:
            for port in (port_b, port_a):
                socket.create_connection((LOOPBACK[4], port)).close()
        finally:
            lines = _stop(proc)
    ports = [int(_columns(line, 1, 5)[5]) for line in lines[1:]]
    assert port_a in ports and port_b not in ports
    for bad in ("70000", "http", ",".join(str(p) for p in range(1, 10))):
        res = vigil("tcpconnect", "-P", bad)
        err = res.stderr.decode().strip()
        assert res.returncode == 2 and len(err.splitlines()) == 1 and "-P" in err, err


@tcg_slow_cli
def test_tcpaccept_table():
    proc = start_vigil("tcpaccept")
    try:
        with acceptor(6) as (child, port), socket.create_connection((LOOPBACK[6], port)) as c:
            cport = c.getsockname()[1]
            child.stdout.readline()
    finally:
        lines = _stop(proc)
    assert lines[0].split() == ["PID", "COMM", "IP", "RADDR", "RPORT", "LADDR", "LPORT"]
    (row,) = [cols for cols in (_columns(line, 1, 5) for line in lines[1:]) if cols[6] == str(port)]
    assert row == [str(child.pid), "vigil-acceptor", "6", "::1", str(cport), "::1", str(port)]


@tcg_slow_cli
def test_tcpretrans_table(netpair):
    proc = start_vigil("tcpretrans")
    try:
        flow = lossy_transfer(
            netpair.client_ns, netpair.server_ns, netpair.client_addr, netpair.server_addr
        )
    finally:
        lines = _stop(proc)
    assert lines[0].split() == ["TIME", "PID", "IP", "LADDR:LPORT", "T>", "RADDR:RPORT", "STATE"]
    local = f"[{flow.client_addr}]:{flow.client_port}"
    remote = f"[{flow.server_addr}]:{flow.server_port}"
    mine = [c for c in (line.split() for line in lines[1:]) if c[3] == local and c[5] == remote]
    assert mine and all(c[2] == "6" and c[4] == "R>" for c in mine)
    assert "ESTABLISHED" in {c[6] for c in mine}
    time.strptime(mine[0][0], "%H:%M:%S")


def _count_blocks(lines: list[str]) -> list[tuple[str, dict[tuple[str, str], int]]]:
    """tcpretrans -c output -> [(title, {(local, remote): count})]."""
    blocks, title, rows = [], None, {}
    for line in [*lines, ""]:
        if not line:
            if title is not None:
                blocks.append((title, rows))
            title, rows = None, {}
        elif title is None:
            title = line
        elif line.split() == ["LADDR:LPORT", "<->", "RADDR:RPORT", "RETRANSMITS"]:
            continue
        else:
            local, arrow, remote, n = line.split()
            assert arrow == "<->"
            rows[(local, remote)] = int(n)
    return blocks


@tcg_slow_cli
def test_tcpretrans_count_mode(netpair):
    proc = start_vigil("tcpretrans", "-c", "-i", "0.3")
    try:
        flow = lossy_transfer(
            netpair.client_ns, netpair.server_ns, netpair.client_addr, netpair.server_addr
        )
        time.sleep(0.5)
    finally:
        lines = _stop(proc)
    key = (f"[{flow.client_addr}]:{flow.client_port}", f"[{flow.server_addr}]:{flow.server_port}")
    blocks = _count_blocks(lines)
    assert blocks[-1][0] == "Total since start:"
    total = blocks[-1][1][key]
    intervals = [rows.get(key, 0) for title, rows in blocks[:-1]]
    assert all(time.strptime(title, "%H:%M:%S") for title, _ in blocks[:-1])
    # counts are cleared each interval: the intervals add up to the total
    assert total >= 1 and sum(intervals) == total


@tcg_slow_cli
def test_tcpretrans_count_json(netpair):
    proc = start_vigil("tcpretrans", "-c", "-i", "0.3", "--json")
    try:
        flow = lossy_transfer(
            netpair.client_ns, netpair.server_ns, netpair.client_addr, netpair.server_addr
        )
        time.sleep(0.5)
    finally:
        lines = _stop(proc)
    rows = [orjson.loads(line) for line in lines]
    mine = [
        r
        for r in rows
        if (r["laddr"], r["lport"], r["raddr"], r["rport"])
        == (flow.client_addr, flow.client_port, flow.server_addr, flow.server_port)
    ]
    (total,) = [r for r in mine if r["scope"] == "total"]
    assert total["ip"] == 6 and total["proto"] == "tcp"
    assert total["retransmits"] == sum(r["retransmits"] for r in mine if r["scope"] == "interval")


@tcg_slow_cli
def test_monitor_stores_connect_and_accept_with_ancestry(tmp_path):
    db = str(tmp_path / "v.db")
    proc = start_vigil("monitor", "--db", db, "-q", "--status-interval", "0.2")
    try:
        with acceptor(4) as (child, port):
            script = f"import socket; socket.create_connection(('127.0.0.1', {port})).close()"
            client = subprocess.run([sys.executable, "-c", script], check=True)
            del client
            child.stdout.readline()
            time.sleep(1.0)
    finally:
        err = []
        _stop(proc, err)

    def stored(kind: str) -> list[dict]:
        res = vigil("events", "--db", db, "--kind", kind, "--json", "-n", "100000", check=True)
        return [orjson.loads(line) for line in res.stdout.splitlines()]

    conns = [e for e in stored("connect") if e["rport"] == port]
    assert len(conns) == 1, err  # the status lines say what was lost, if anything
    (conn,) = conns
    assert conn["ppid"] == os.getpid() and conn["ancestors"][0]["pid"] == os.getpid()
    assert conn["result"] == "established" and conn["raddr"] == "127.0.0.1"
    (acc,) = [e for e in stored("accept") if e["lport"] == port]
    assert acc["pid"] == child.pid and acc["comm"] == "vigil-acceptor"
    assert acc["ancestors"][0]["pid"] == os.getpid()
    assert acc["rport"] == conn["lport"]  # the two ends of one connection
    res = vigil("events", "--db", db, "--kind", "connect", "--pid", str(conn["pid"]), check=True)
    assert f"127.0.0.1:{port} established" in res.stdout.decode()  # monitor's DETAIL
