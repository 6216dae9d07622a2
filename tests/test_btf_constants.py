"""Constants the kernel side declares are read from BTF, not mirrored:
the stat slots (enum vigil_stat) and connect's port filter length."""

from __future__ import annotations

import socket
import subprocess

import pytest

from helpers import TRUE, execs_of, pump_until, start_agent, vigil
from vigil import _libbpf as bpf
from vigil import loader, paths
from vigil.sensors.tcp import connect_rodata, ports_max


def test_stat_slots_come_from_enum_vigil_stat():
    btf = bpf.Btf.from_file(paths.bpf_object("exec"))
    try:
        width, stats = loader.stat_slots(btf)
    finally:
        btf.close()
    # the names the status line, the store and the exit line use
    assert {"emitted", "lost", "partial"} <= set(stats)
    assert width > max(stats.values())


@pytest.mark.kernel
def test_kernel_stats_read_the_slots_the_kernel_writes():
    """Counters read at the BTF-derived slots match what was received."""
    agent, sink = start_agent(("exec",))
    with agent.session:
        for _ in range(5):
            subprocess.run([TRUE], check=True)
        pump_until(agent, sink, lambda evs: len(execs_of(evs, TRUE.encode())) >= 5)
        before = agent.session.kernel_stats()["exec"]

        # what the kernel counted is in the ring: drained, it is all received
        # (other processes of a shared host may exec meanwhile: read again)
        def execs(evs):
            return sum(1 for ev in evs if ev["kind"] == "exec")

        pump_until(agent, sink, lambda evs: execs(evs) >= before["emitted"])
        received = execs(sink.events)
        after = agent.session.kernel_stats()["exec"]
    assert before["emitted"] <= received <= after["emitted"]
    assert before["emitted"] >= 5 and after["lost"] == 0


def test_port_filter_length_is_the_kernel_arrays():
    n = ports_max()
    assert n >= 1
    connect_rodata(ports=list(range(1, n + 1)))  # exactly the array: fine
    with pytest.raises(Exception, match=f"at most {n} ports"):
        connect_rodata(ports=list(range(1, n + 2)))
    res = vigil("tcpconnect", "-P", ",".join(str(p) for p in range(1, n + 2)), "--duration", "0")
    assert res.returncode == 2 and f"at most {n} ports".encode() in res.stderr


@pytest.mark.kernel
def test_a_full_port_filter_loads_and_filters():
    """All CONNECT_PORTS_MAX slots used: the object takes them (the array
    the loader encodes is as long as BTF says) and only those ports pass."""
    n = ports_max()
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        wanted = [port, *range(1, n)]
        agent, sink = start_agent(("connect",), enrich=False, rodata=connect_rodata(ports=wanted))
        with agent.session:
            # the unwanted port first: were it let through, it would come before
            for p in (port + 1 if port < 65535 else port - 1, port):
                with socket.socket() as c:
                    c.settimeout(1)
                    try:
                        c.connect(("127.0.0.1", p))
                    except OSError:
                        pass
            evs = pump_until(agent, sink, lambda evs: any(e["rport"] == port for e in evs))
    assert {e["rport"] for e in evs if e["kind"] == "connect"} == {port}
