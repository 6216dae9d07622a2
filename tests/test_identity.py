"""Identities: host, boot_id and seq on every event, process keys, pid reuse.

Real kernel, real events: the sequence numbers are the kernel's, the losses
the kernel's own counters, the recycled pid a real one (the kernel told to
hand it out again through /proc/sys/kernel/ns_last_pid).
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
from collections import defaultdict

import pytest

from helpers import TRUE, pump_until, start_agent, unique_marker
from vigil.identity import boot_id

pytestmark = pytest.mark.kernel

BOOT = boot_id()
NCPU = os.cpu_count() or 1


def _by_cpu(events: list[dict]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = defaultdict(list)
    for ev in events:
        out[ev["cpu"]].append(ev["seq"])
    return out


def _one_exec_per_cpu(marker: bytes) -> None:
    """A short exec on every CPU: each CPU's last record comes after any
    loss, so a loss at the end of the storm is a gap too."""
    for cpu in range(NCPU):
        subprocess.run(["taskset", "-c", str(cpu), TRUE, marker], check=True)


def test_every_event_has_host_boot_and_a_seq_without_gaps():
    agent, sink = start_agent()
    marker = unique_marker()
    with agent.session:
        for _ in range(30):
            subprocess.run([TRUE, marker], check=True)
        _one_exec_per_cpu(marker + b"-end")
        events = pump_until(
            agent,
            sink,
            lambda evs: sum(marker + b"-end" in e.get("args", ()) for e in evs) >= NCPU,
        )
        stats = agent.stats()
    assert events
    for ev in events:
        assert ev["host"] == socket.gethostname()
        assert ev["boot_id"] == BOOT
        assert type(ev["seq"]) is int and ev["seq"] > 0
        pid_key = ev["process_key"].split(":")
        assert pid_key[0] == BOOT and int(pid_key[2]) == ev["pid"]
        assert int(pid_key[1]) == ev["start_time"] > 0
    lost = sum(s["lost"] for s in stats.values())
    gaps = 0
    for cpu, seqs in _by_cpu(events).items():
        assert 0 <= cpu < NCPU
        # per CPU, in ring order: strictly increasing
        assert all(a < b for a, b in zip(seqs, seqs[1:])), cpu
        gaps += sum(b - a - 1 for a, b in zip(seqs, seqs[1:]))
    assert gaps == lost  # nothing lost here, so no gap either
    # the kernel's start time is the process's: /proc agrees to the tick
    mine = next(e for e in events if e["kind"] == "exec" and marker in e["args"])
    assert mine["parent_start_time"] // 10_000_000 == _proc_start_ticks(os.getpid())
    assert mine["parent_key"].endswith(f":{os.getpid()}")


def _proc_start_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    return int(stat[stat.rfind(b")") + 2 :].split()[19]) * (100 // os.sysconf("SC_CLK_TCK"))


def test_gaps_are_exactly_the_records_the_ring_lost():
    # a small ring and a consumer that is not reading: forks and execs fill it
    agent, sink = start_agent(ring_bytes=64 << 10)
    marker = unique_marker()
    with agent.session:
        # a first record on every CPU, received: a loss after it is a gap
        _one_exec_per_cpu(marker + b"-start")
        pump_until(
            agent,
            sink,
            lambda evs: sum(marker + b"-start" in e.get("args", ()) for e in evs) >= NCPU,
        )
        earlier = sum(s["lost"] for s in agent.stats().values())  # not between records
        procs = [subprocess.Popen([TRUE, marker]) for _ in range(400)]
        for p in procs:
            p.wait()
        agent.step(0)  # drain what the ring kept
        before = sum(s["lost"] for s in agent.stats().values())
        _one_exec_per_cpu(marker + b"-end")
        pump_until(
            agent,
            sink,
            lambda evs: sum(marker + b"-end" in e.get("args", ()) for e in evs) >= NCPU,
        )
        after = sum(s["lost"] for s in agent.stats().values())
    before -= earlier
    assert before > 0, "the ring never filled: the test proves nothing"
    gaps = 0
    for seqs in _by_cpu(sink.events).values():
        assert all(a < b for a, b in zip(seqs, seqs[1:]))
        gaps += sum(b - a - 1 for a, b in zip(seqs, seqs[1:]))
    # every loss counted before the last records is a gap; a shared host's other
    # processes may lose more after them (counted, no later record to show it)
    assert before <= gaps <= after - earlier, (before, gaps, after, earlier)


def test_seq_is_not_reused_by_a_later_run():
    seen = []
    for _ in range(2):
        agent, sink = start_agent()
        marker = unique_marker()
        with agent.session:
            subprocess.run([TRUE, marker], check=True)
            pump_until(agent, sink, lambda evs, m=marker: any(m in e.get("args", ()) for e in evs))
        seen.append(_by_cpu(sink.events))
    for cpu, first in seen[0].items():
        later = seen[1].get(cpu, [])
        assert not later or max(first) < min(later), cpu


# -- pid reuse -------------------------------------------------------------------------
def _free_pid() -> int:
    """A pid no process holds now, well inside pid_max."""
    with open("/proc/sys/kernel/pid_max") as f:
        top = int(f.read())
    while True:
        pid = random.randrange(300, top - 1)
        if not os.path.exists(f"/proc/{pid}"):
            return pid


def _spawn_at(pid: int, argv: list[str]) -> subprocess.Popen | None:
    """Start `argv` as process `pid` (the kernel gives out ns_last_pid + 1
    next; another process on the host may take it first: None then)."""
    with open("/proc/sys/kernel/ns_last_pid", "w") as f:
        f.write(str(pid - 1))
    proc = subprocess.Popen(argv)
    if proc.pid != pid:
        proc.wait()
        return None
    return proc


def test_a_recycled_pid_starts_a_new_lineage():
    agent, sink = start_agent()
    marker = unique_marker()
    with agent.session:
        pid = 0
        for _ in range(50):
            pid = pid or _free_pid()
            first = _spawn_at(pid, ["/bin/sh", "-c", f"{TRUE} {marker.decode()}-a"])
            if first is None:
                pid = 0
                continue
            first.wait()
            second = _spawn_at(pid, ["/bin/bash", "-c", f"{TRUE} {marker.decode()}-b; :"])
            if second is not None:
                second.wait()
                break
            pid = 0
        else:
            pytest.fail("could not get a pid handed out twice")
        pump_until(
            agent,
            sink,
            lambda evs: any(marker + b"-b" in e.get("args", ()) for e in evs),
        )
        table = agent.processes
        events = sink.events
    shells = [e for e in events if e["kind"] == "exec" and e["pid"] == pid and e["ret"] == 0]
    assert len(shells) == 2, shells
    a_shell, b_shell = shells
    assert a_shell["process_key"] != b_shell["process_key"]
    child_a = next(e for e in events if e["kind"] == "exec" and marker + b"-a" in e["args"])
    child_b = next(e for e in events if e["kind"] == "exec" and marker + b"-b" in e["args"])
    assert child_a["ppid"] == child_b["ppid"] == pid
    assert child_a["parent_key"] == a_shell["process_key"]
    assert child_b["parent_key"] == b_shell["process_key"]
    assert child_a["ancestors"][0]["exe"] == a_shell["exe"].decode()
    assert child_b["ancestors"][0]["exe"] == b_shell["exe"].decode()
    assert a_shell["exe"] != b_shell["exe"]
    # after the pid changed hands, the first holder is still found by its
    # key, not replaced by the second: a late event of its lineage reads right
    later = table.ancestors(pid, child_a["parent_start_time"])
    assert later[0]["exe"] == a_shell["exe"].decode()
    assert table.ancestors(pid, child_b["parent_start_time"])[0]["exe"] == (b_shell["exe"].decode())
    exits = [e for e in events if e["kind"] == "exit" and e["pid"] == pid]
    assert [e["process_key"] for e in exits] == [a_shell["process_key"], b_shell["process_key"]]
