"""A flood of one kind must not blind the others (the ring's shares).

All sensors write into one ring.  A loopback connect/accept storm (any user
can start one: bench/accept_overhead.c, built as build/bin/accept-storm) or
a storm of failing execve() calls (tests/progs/failexec_storm.c) runs beside
marker processes, each a real fork + exec + exit, and marker listen()
calls, while the consumer is deliberately slow and the ring small, so the
ring really fills.  Every marker's fork, exec and exit must arrive, in that
order, with no fork/exit counted lost; the storm's kinds must be counted
lost, and what they emitted plus what they lost must account for the storm.
Real kernel, real agent, real SQLite store: nothing is mocked.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import subprocess
import threading
import time

import orjson
import pytest

from helpers import ROOT, TRUE, start_agent, start_vigil, stop_vigil, unique_marker, vigil

pytestmark = pytest.mark.kernel

BIN = os.path.join(ROOT, "build", "bin")
RING = 1 << 20  # small: the storm fills half of it between two drains
MARKERS = 150
LISTENS = 30


def _fields(line: str) -> dict[str, str]:
    return dict(kv.split("=", 1) for kv in line.split())


@contextlib.contextmanager
def accept_storm(seconds: float):
    """The anchor benchmark's loopback load, unpinned: yields its pid, port
    and, once it is over, its result line (accepts=N ...)."""
    proc = subprocess.Popen(
        [os.path.join(BIN, "accept-storm"), "--seconds", str(seconds), "--inflight", "64"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        info = _fields(proc.stdout.readline().removeprefix("ready"))
        proc.stdin.write("go\n")
        proc.stdin.flush()
        yield proc, info
        info.update(_fields(proc.stdout.read()))
        assert proc.wait() == 0
    finally:
        proc.kill()
        proc.wait()


class Markers(threading.Thread):
    """Processes that fork, exec TRUE with a unique argument and exit, one
    every few ms, then listening sockets: low-volume kinds the storm must
    not crowd out."""

    def __init__(self, count: int = MARKERS, listens: int = LISTENS):
        super().__init__()
        self.marker = unique_marker()
        self.count, self.listens = count, listens
        self.pids: list[int] = []
        self.ports: list[int] = []

    def run(self) -> None:
        time.sleep(0.3)  # the storm is under way
        for i in range(self.count):
            p = subprocess.Popen([TRUE, self.marker, str(i)])
            p.wait()
            self.pids.append(p.pid)
            time.sleep(0.005)
        for _ in range(self.listens):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                s.listen()
                self.ports.append(s.getsockname()[1])


def consume_slowly(agent, busy, pause: float) -> None:
    """A consumer that falls behind: it drains, then sleeps `pause` s, while
    `busy()`; then it empties the ring."""
    while busy():
        agent.step(0.05)
        time.sleep(pause)
    while agent.session.reader.pending_bytes():
        agent.step(0)


def assert_lifecycle_complete(events: list[dict], markers: Markers) -> None:
    """Each marker's fork, exec (with its argv) and exit arrived, in order."""
    where: dict[tuple[str, int], int] = {}
    for i, ev in enumerate(events):
        if ev["kind"] == "fork":
            where.setdefault(("fork", ev["child_pid"]), i)
        elif ev["kind"] == "exec" and markers.marker in ev["args"]:
            where.setdefault(("exec", ev["pid"]), i)
        elif ev["kind"] == "exit":
            where.setdefault(("exit", ev["pid"]), i)
    missing = [
        (kind, pid)
        for pid in markers.pids
        for kind in ("fork", "exec", "exit")
        if (kind, pid) not in where
    ]
    assert not missing, f"{len(missing)} lifecycle events missing, e.g. {missing[:5]}"
    for pid in markers.pids:
        assert where[("fork", pid)] < where[("exec", pid)] < where[("exit", pid)]


def assert_listens_complete(events: list[dict], markers: Markers) -> None:
    listened = {e["lport"] for e in events if e["kind"] == "listen" and e["pid"] == os.getpid()}
    assert set(markers.ports) <= listened


@pytest.mark.tcg_slow(
    reason="under TCG the storm cannot outrun the consumer, so nothing is shed and the "
    "test's premise (a ring filled past the bulk share) does not hold; the shares are "
    "kernel-independent BPF, run on the host"
)
def test_accept_storm_does_not_blind_lifecycle_or_listen():
    agent, sink = start_agent(
        ["exec", "fork", "exit", "listen", "connect", "accept"], enrich=False, ring_bytes=RING
    )
    try:
        markers = Markers()
        with accept_storm(3) as (storm, info):
            markers.start()
            # in 0.3 s even a slow storm (10k connections/s on a busy machine,
            # ~2 MB/s of records) fills the half of the ring it may use, and
            # the markers (~100 processes, ~130 KiB) fit in the other half
            consume_slowly(agent, lambda: markers.is_alive() or storm.poll() is None, 0.3)
        markers.join()
        stats = agent.stats()
    finally:
        agent.session.close()
    events = sink.events
    assert_lifecycle_complete(events, markers)
    assert_listens_complete(events, markers)
    # the process lifecycle lost nothing, system-wide (a successful exec is
    # never shed either; the exec counter also holds failed execs of other
    # processes, which are shed at 3/4, so it is not asserted here)
    assert stats["fork"]["lost"] == 0 and stats["exit"]["lost"] == 0
    # the storm was shed, and counted: what it did = what arrived + lost
    pid, port, accepts = int(info["pid"]), int(info["port"]), int(info["accepts"])
    got = [e for e in events if e["kind"] == "accept" and e["pid"] == pid]
    assert stats["accept"]["lost"] > 0 and stats["connect"]["lost"] > 0
    assert len(got) <= accepts <= len(got) + stats["accept"]["lost"]
    assert stats["accept"]["emitted"] + stats["accept"]["lost"] >= accepts
    assert stats["accept"]["received"] == stats["accept"]["emitted"]
    # every accept names the server's port, none says 0
    assert {(e["laddr"], e["lport"]) for e in got} == {("127.0.0.1", port)}


@pytest.mark.tcg_slow(
    reason="under TCG the storm cannot outrun the consumer, so nothing is shed and the "
    "test's premise (a ring filled past the bulk share) does not hold; the shares are "
    "kernel-independent BPF, run on the host"
)
def test_failing_exec_storm_does_not_blind_lifecycle():
    """execve() of a missing file: no process is made, but each attempt is
    an exec record of ~1 KiB, 600k/s from one unprivileged process.  Failed
    execs go in the bulk share, so they cannot take the room of the
    successful execs, forks and exits, nor of listen."""
    agent, sink = start_agent(["exec", "fork", "exit", "listen"], enrich=False, ring_bytes=RING)
    try:
        markers = Markers()
        storm = subprocess.Popen(
            [os.path.join(BIN, "failexec-storm"), "3"], stdout=subprocess.PIPE, text=True
        )
        markers.start()
        consume_slowly(agent, lambda: markers.is_alive() or storm.poll() is None, 0.3)
        markers.join()
        failed = int(_fields(storm.stdout.read())["failed_execs"])
        assert storm.wait() == 0
        stats = agent.stats()
    finally:
        agent.session.close()
    events = sink.events
    assert_lifecycle_complete(events, markers)
    assert_listens_complete(events, markers)
    assert stats["fork"]["lost"] == 0 and stats["exit"]["lost"] == 0
    # the storm's attempts (its own successful exec aside): -ENOENT each
    got = [e for e in events if e["kind"] == "exec" and e["pid"] == storm.pid and e["ret"]]
    assert {e["ret"] for e in got} == {-2}
    assert stats["exec"]["lost"] > 0
    assert len(got) <= failed <= len(got) + stats["exec"]["lost"]


def test_monitor_stores_every_lifecycle_event_beside_an_accept_storm(tmp_path):
    """The whole agent, `vigil monitor` into SQLite with a 1 MiB ring."""
    db = str(tmp_path / "v.db")
    sensors = ("exec", "fork", "exit", "listen", "connect", "accept")
    proc = start_vigil(
        "monitor", "--db", db, "-q", "--ring-mb", "1", "--status-interval", "0.2",
        *(a for s in sensors for a in ("--sensor", s)),
    )  # fmt: skip
    try:
        markers = Markers()
        with accept_storm(3) as (storm, info):
            markers.start()
            markers.join()
            storm.wait()
    finally:
        _, err = stop_vigil(proc)
    with contextlib.closing(sqlite3.connect(db)) as con:
        rows = con.execute("SELECT kind, data FROM events ORDER BY id").fetchall()
    events = []
    for kind, data in rows:
        if kind in ("fork", "exec", "exit"):
            ev = orjson.loads(data)
            ev["kind"] = kind
            if kind == "exec":  # stored as text
                ev["args"] = [a.encode() for a in ev["args"]]
            events.append(ev)
    assert_lifecycle_complete(events, markers)
    status = {
        r["kind"]: r
        for r in orjson.loads(vigil("status", "--db", db, "--json", check=True).stdout)["sensors"]
    }
    for kind in ("fork", "exit"):
        assert status[kind]["lost"] == 0 and status[kind]["dropped"] == 0, err
    accepts = int(info["accepts"])
    # The ring may fill (then the shares keep the lifecycle whole: the in-process
    # flood tests prove that with a slow consumer) or, the analysis waiting out
    # the storm, the capture keep up with it: either way nothing is unaccounted.
    assert status["accept"]["emitted"] + status["accept"]["lost"] >= accepts, err
    assert status["accept"]["stored"] == status["accept"]["emitted"], err
