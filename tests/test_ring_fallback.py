"""Off x86 the bulk ring reader's plain loads are not enough: libbpf's
ring_buffer__consume reads the ring instead.  Forced here on x86
($VIGIL_RING_READER=libbpf), with real events from the kernel."""

from __future__ import annotations

import os
import subprocess

import pytest

from helpers import ROOT, TRUE, execs_of, pump_until, start_agent, unique_marker, vigil, vigil_argv
from vigil import _libbpf as bpf

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def exec_storm(tmp_path_factory):
    """bench/exec_storm.c: N vfork+exec as fast as one process can."""
    out = tmp_path_factory.mktemp("storm") / "exec_storm"
    src = os.path.join(ROOT, "bench", "exec_storm.c")
    subprocess.run(["cc", "-O2", "-o", str(out), src], check=True)
    return str(out)


@pytest.fixture
def forced(monkeypatch):
    monkeypatch.setenv("VIGIL_RING_READER", "libbpf")


def test_the_reader_is_chosen_by_machine():
    fd = bpf.map_create(27, "vigil_t", 0, 0, 1 << 16)  # BPF_MAP_TYPE_RINGBUF
    try:
        for machine, cls in [
            ("x86_64", bpf.RingReader),
            ("aarch64", bpf.LibbpfRingReader),
            ("riscv64", bpf.LibbpfRingReader),
            ("ppc64le", bpf.LibbpfRingReader),
        ]:
            reader = bpf.ring_reader(fd, 1 << 16, machine=machine)
            assert type(reader) is cls, machine
            reader.close()
    finally:
        os.close(fd)


def test_fallback_reads_every_event_as_the_bulk_reader_does(forced):
    agent, sink = start_agent(("exec", "fork", "exit"), ring_bytes=1 << 20)
    with agent.session:
        assert type(agent.session.reader) is bpf.LibbpfRingReader
        marker = unique_marker()
        for _ in range(50):
            subprocess.run([TRUE, marker], check=True)
        pump_until(agent, sink, lambda evs: len(execs_of(evs, marker=marker)) >= 50)
        stats = agent.session.kernel_stats()
    execs = execs_of(sink.events, marker=marker)
    assert len(execs) == 50  # each once: nothing lost, nothing read twice
    received = {k: sum(1 for e in sink.events if e["kind"] == k) for k in ("exec", "fork", "exit")}
    for kind, n in received.items():
        assert stats[kind]["emitted"] == n and stats[kind]["lost"] == 0, kind


def test_fallback_honours_the_limit_and_the_stop_position(forced, exec_storm):
    agent, _sink = start_agent(("exec",), enrich=False, ring_bytes=1 << 20)
    with agent.session:
        reader = agent.session.reader
        subprocess.run([exec_storm, "300"], check=True, capture_output=True)
        stop = reader.producer_position()
        subprocess.run([exec_storm, "100"], check=True, capture_output=True)
        first = reader.drain_raw(limit=4096)
        assert 4096 <= len(first) < 4096 + 8192  # stops at the record that crossed it
        rest = reader.drain_raw(until=stop)
        assert reader.consumer_position() == stop  # nothing past the stop read
        after = reader.drain_raw()
        recs = bpf.split_records(first) + bpf.split_records(rest)
        later = bpf.split_records(after)
        assert len(recs) >= 300 and len(later) >= 100
        kinds = {agent.session.decoder.kind_of(r) for r in recs + later}
        assert kinds == {"exec"}


def test_record_and_report_through_the_fallback(forced, tmp_path, exec_storm):
    out = tmp_path / "r.vrec"
    proc = subprocess.Popen(
        vigil_argv("record", "-o", str(out), "--sensor", "exec", "--duration", "3"),
        stderr=subprocess.PIPE,
    )
    assert b"Ctrl-C to end" in proc.stderr.readline()
    subprocess.run([exec_storm, "500"], check=True, capture_output=True)
    _o, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    res = vigil("report", str(out), "--json", check=True)
    storm = [
        x for x in res.stdout.splitlines() if b'"comm":"exec_storm"' in x or b"exec_storm" in x
    ]
    assert len(storm) >= 500
