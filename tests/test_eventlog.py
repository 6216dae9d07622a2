"""`vigil monitor`'s event log: capture ahead, analysis behind (real storms).

The storm is bench/accept_overhead's loopback accept workload (~90k
accepts/s here, faster than the analysis stores), so the analysis lags and
must catch up; every accept the kernel emitted must end stored, or counted
as lost per kind (ring full, budget discard), never silent, never twice.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import threading
import time

import orjson
import pytest

from helpers import ROOT, start_vigil, unique_marker, vigil
from vigil import eventlog
from vigil.outputs.store import Store

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def accept_storm(tmp_path_factory):
    exe = tmp_path_factory.mktemp("storm") / "accept_storm"
    src = os.path.join(ROOT, "bench", "accept_overhead.c")
    subprocess.run([os.environ.get("CC", "cc"), "-O2", "-o", str(exe), src], check=True)
    return str(exe)


def _storm(exe: str, seconds: float, pids: list | None = None) -> None:
    load = subprocess.Popen(
        [exe, "--seconds", str(seconds), "--clients", "2"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    if pids is not None:
        pids.append(load.pid)
    try:
        assert load.stdout.readline().startswith(b"ready")
        load.stdin.write(b"go\n")
        load.stdin.flush()
        load.communicate(timeout=seconds + 30)
    finally:
        if load.poll() is None:
            load.kill()
            load.wait()


def _monitor(db, *extra):
    proc = start_vigil(
        "monitor", "--db", str(db), "--sensor", "accept", "-q", "--no-summaries",
        "--no-rules", "--no-baseline", "--status-interval", "1", *extra,
    )  # fmt: skip
    return proc


def _analysis_pid(proc) -> int:
    for _ in range(100):
        with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
            kids = [int(p) for p in f.read().split()]
        if kids:
            return kids[0]
        time.sleep(0.05)
    raise AssertionError("no analysis process")


def _load(path: str) -> dict:
    with open(path, "rb") as f:
        return orjson.loads(f.read())


def _status(db) -> dict:
    return orjson.loads(vigil("status", "--db", str(db), "--json", check=True).stdout)


def _accept_row(status: dict) -> dict:
    rows = [r for r in status["sensors"] if r["kind"] == "accept"]
    return rows[0] if rows else {"emitted": 0, "lost": 0, "stored": 0}


def _wait_caught_up(db, timeout=120.0) -> list[dict]:
    """Status samples until the analysis reports no lag (it caught up)."""
    seen = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        st = _status(db)
        lag = st["agent"].get("lag") or {}
        seen.append(lag)
        if not lag.get("bytes") and len(seen) > 1:
            return seen
        time.sleep(0.5)
    raise AssertionError(f"analysis never caught up: {seen[-3:]}")


def _rows(db) -> tuple[int, int]:
    """(accept rows, distinct accept rows): an event stored twice shows."""
    con = sqlite3.connect(str(db))
    try:
        n, distinct = con.execute(
            "SELECT COUNT(*), COUNT(DISTINCT coalesce(rec, data)) FROM events WHERE kind='accept'"
        ).fetchone()
    finally:
        con.close()
    return n, distinct


def _stop(proc, sig=signal.SIGTERM, timeout=120) -> bytes:
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=timeout)
    assert b"Traceback" not in err, err
    return err


def _lag_seen_during(db, seconds: float) -> list[dict]:
    out = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        out.append(_status(db)["agent"].get("lag") or {})
        time.sleep(0.5)
    return out


def _lags(err: bytes) -> list[tuple[int, float]]:
    """(events, seconds) of every status line's lag."""
    import re

    out = []
    for m in re.finditer(rb"\| lag (?:0|(\d+) events \(\d+ KiB\), ([\d.]+)s behind capture)", err):
        out.append((int(m.group(1) or 0), float(m.group(2) or 0)))
    return out


def test_storm_lags_then_catches_up_with_every_event_stored(tmp_path, accept_storm):
    db = tmp_path / "events.db"
    proc = _monitor(db)
    try:
        _storm(accept_storm, 6)
        t0 = time.monotonic()
        _wait_caught_up(db)
        caught = time.monotonic() - t0
        agent = _status(db)["agent"]
    finally:
        err = _stop(proc)
    assert proc.returncode == 0, err
    lags = _lags(err)
    print(f"max lag {max(lags)}; caught up {caught:.1f}s after the storm")
    assert any(ev > 0 and sec > 0 for ev, sec in lags), err[-2000:]  # it lagged
    assert lags[-1] == (0, 0.0)  # and caught up
    assert agent["lag"]["bytes"] == 0  # `vigil status` and the store say so too
    row = _accept_row(_status(db))
    n, distinct = _rows(db)
    assert row["emitted"] > 10_000  # a real storm
    assert n == distinct  # nothing twice
    assert n == row["emitted"] - row["lost"], (n, row)  # every event stored or counted
    assert row["stored"] == n


def test_the_analysis_waits_out_a_storm_then_stores_every_event(tmp_path, accept_storm):
    """Above --storm-rate the analysis leaves the CPUs to the workload (the
    events wait in the log, lag shown), for --storm-hold at most; then it
    catches up, every event stored once."""
    db = tmp_path / "events.db"
    proc = _monitor(db, "--storm-rate", "1000", "--storm-hold", "3")
    try:
        _storm(accept_storm, 6)  # longer than the hold: it ends while the storm runs
        _wait_caught_up(db)
    finally:
        err = _stop(proc)
    assert proc.returncode == 0, err
    lines = err.decode(errors="replace").splitlines()
    waiting = [i for i, line in enumerate(lines) if "waiting out a storm" in line]
    assert waiting, err[-2000:]  # it waited, and said so
    # ...then caught up: the last status lines are not waiting
    assert "waiting out a storm" not in lines[-3] + lines[-2], lines[-6:]
    row = _accept_row(_status(db))
    n, distinct = _rows(db)
    assert row["emitted"] > 10_000 and n == distinct
    assert n == row["emitted"] - row["lost"], (n, row)


def test_the_analysis_hears_a_storm_at_once(tmp_path, accept_storm):
    """The capture's wake-up says "storm" within a tenth of a second, so the
    analysis stores next to nothing while a storm runs (when the capture's
    report each second alone decided, the storm's first second was analysed,
    on the workload's CPUs)."""
    db = tmp_path / "events.db"
    proc = _monitor(db, "--storm-rate", "500")
    try:
        _storm(accept_storm, 4)
        during, _ = _rows(db)
        _wait_caught_up(db)
    finally:
        err = _stop(proc)
    assert proc.returncode == 0, err
    assert b"waiting out a storm" in err
    n, distinct = _rows(db)
    assert n > 5000 and n == distinct
    assert during < n * 0.1, (during, n)


def _waiting_runs(err: bytes) -> int:
    """How many separate holds the status lines show."""
    runs, before = 0, False
    for line in err.decode(errors="replace").splitlines():
        now = "waiting out a storm" in line
        runs += now and not before
        before = now
    return runs


def test_storms_one_after_another_cannot_chain_holds(tmp_path, accept_storm):
    """An attacker's storms, one after another, each longer than the hold:
    only the first is waited out; the second finds the first's backlog unread
    and is analysed as it comes (alerts are late by one hold and its catching
    up, not by one hold per storm)."""
    db = tmp_path / "events.db"
    proc = _monitor(db, "--storm-rate", "500", "--storm-hold", "2")
    try:
        _storm(accept_storm, 6)  # its hold ends while it runs: a backlog of seconds
        # the analysis is held back from the first storm's end until the
        # second is under way, so however fast this host it cannot have read
        # the backlog when the second begins (resumed 1 s before, a quiet
        # host's analysis sometimes had, and then a second hold is right)
        analysis = _analysis_pid(proc)
        os.kill(analysis, signal.SIGSTOP)
        try:
            second = threading.Thread(target=_storm, args=(accept_storm, 4))
            time.sleep(1.0)
            second.start()
            time.sleep(1.5)
        finally:
            os.kill(analysis, signal.SIGCONT)
        second.join(timeout=60)
        _wait_caught_up(db)
    finally:
        err = _stop(proc)
    assert proc.returncode == 0, err
    assert _waiting_runs(err) == 1, err[-3000:]
    n, distinct = _rows(db)
    row = _accept_row(_status(db))
    assert n == distinct and n == row["emitted"] - row["lost"], (n, row)


def test_analysis_killed_mid_storm_resumes_without_loss_or_duplicates(tmp_path, accept_storm):
    db = tmp_path / "events.db"
    proc = _monitor(db)
    try:
        storm = threading.Thread(target=_storm, args=(accept_storm, 8))
        storm.start()
        time.sleep(3)
        first = _analysis_pid(proc)
        os.kill(first, signal.SIGKILL)
        time.sleep(2.5)
        second = _analysis_pid(proc)
        assert second != first  # the capture restarted it
        storm.join()
        _wait_caught_up(db)
    finally:
        err = _stop(proc)
    assert proc.returncode == 0, err
    assert b"analysis process" in err and b"restarting" in err
    con = sqlite3.connect(str(db))
    try:
        n, distinct = con.execute(
            "SELECT COUNT(*), COUNT(DISTINCT coalesce(rec, data)) FROM events WHERE kind='accept'"
        ).fetchone()
    finally:
        con.close()
    # the kernel's (cpu, seq) of every stored event (accepts are stored as records)
    reader = Store(str(db), readonly=True)
    seqs = reader.identities_after(0, kind="accept")
    reader.close()
    # every accept the kernel emitted: its final counters are in the log's last segment
    cap = _load(f"{db}.log/capture.json")
    emitted = cap["kernel"]["accept"]["emitted"]
    lost = cap["kernel"]["accept"]["lost"]
    assert emitted > 10_000
    assert n == distinct, f"{n - distinct} stored twice"
    assert n == emitted - lost, (n, emitted, lost)
    # the kernel's numbers prove it: no (cpu, seq) twice, and per CPU the
    # only gaps are the records the ring refused (each burned its number)
    assert len(set(seqs)) == len(seqs), "an event stored twice across the restart"
    by_cpu: dict[int, list[int]] = {}
    for cpu, seq in seqs:
        by_cpu.setdefault(cpu, []).append(seq)
    gaps = sum(max(s) - min(s) + 1 - len(s) for s in by_cpu.values())
    unread = cap["kernel"]["accept"].get("unread", 0)
    assert gaps == lost - unread, (gaps, lost, unread)


def test_log_budget_exhausted_counts_the_discarded_per_kind(tmp_path, accept_storm):
    db = tmp_path / "events.db"
    proc = _monitor(db, "--log-budget-mb", "8", "--log-segment-mb", "1")
    try:
        child = _analysis_pid(proc)
        time.sleep(1.5)  # the analysis holds the store
        os.kill(child, signal.SIGSTOP)  # the analysis stalls: the log fills
        try:
            _storm(accept_storm, 5)
            time.sleep(1.5)  # the capture's last rotation
        finally:
            os.kill(child, signal.SIGCONT)
        _wait_caught_up(db)
        st = _status(db)
    finally:
        err = _stop(proc)
    discarded = st["agent"].get("discarded") or {}
    assert discarded.get("accept", 0) > 0, st["agent"]
    assert b"events lost (accept" in err, err
    cap = _load(f"{db}.log/capture.json")
    emitted, lost = cap["kernel"]["accept"]["emitted"], cap["kernel"]["accept"]["lost"]
    n, distinct = _rows(db)
    assert n == distinct
    # every accept stored or counted: ring losses plus discarded segments (less
    # what the analysis had stored of a segment before the capture discarded it)
    final = eventlog.discarded_counts(f"{db}.log")
    assert n + final["accept"] + lost == emitted, (n, final, lost, emitted)
    out = vigil("status", "--db", str(db), check=True).stdout
    assert b"event log full: discarded unanalysed (lost): accept" in out


def test_stop_with_a_backlog_leaves_it_for_the_next_start(tmp_path, accept_storm):
    db = tmp_path / "events.db"
    proc = _monitor(db, "--analysis-grace", "1")
    child = _analysis_pid(proc)
    time.sleep(1.5)
    os.kill(child, signal.SIGSTOP)
    pids: list[int] = []
    try:
        _storm(accept_storm, 3, pids)
    finally:
        os.kill(child, signal.SIGCONT)
    err = _stop(proc)
    assert proc.returncode == 0, err
    assert b"analysis stopped" in err and b"for the next start" in err, err
    cap = _load(f"{db}.log/capture.json")
    emitted, lost = cap["kernel"]["accept"]["emitted"], cap["kernel"]["accept"]["lost"]
    n1, _ = _rows(db)
    assert n1 < emitted - lost  # some left behind
    pid = pids[0]  # the storm's server: the next run adds other hosts' accepts only
    # the next start analyses what was left
    proc = _monitor(db)
    try:
        _wait_caught_up(db)
    finally:
        _stop(proc)
    n, distinct = _rows(db)
    assert n == distinct
    con = sqlite3.connect(str(db))
    ours = con.execute("SELECT COUNT(*) FROM events WHERE kind='accept' AND pid=?", (pid,))
    mine = ours.fetchone()[0]
    con.close()
    assert mine > 10_000
    assert n >= emitted - lost, (n1, n, emitted, lost)


def test_analysed_events_keep_their_identities_and_the_config_names_the_log(tmp_path):
    """Events that went through the log carry the kernel's seq and the
    capture's host, boot_id and process keys (schema 2), as the live ones do;
    the log goes where the config file's [log] dir says."""
    import socket

    db = tmp_path / "events.db"
    log_dir = tmp_path / "elsewhere"
    conf = tmp_path / "vigil.toml"
    conf.write_text(f'[log]\ndir = "{log_dir}"\nsegment_mb = 2\nanalysis_grace = 5\n')
    proc = start_vigil(
        "monitor", "--config", str(conf), "--db", str(db), "--sensor", "exec", "--sensor",
        "fork", "--sensor", "exit", "-q", "--no-summaries", "--no-rules", "--no-baseline",
    )  # fmt: skip
    try:
        marker = unique_marker()
        child = subprocess.run(["/bin/echo", marker], capture_output=True, check=True)
        assert marker in child.stdout
        time.sleep(1.5)
    finally:
        err = _stop(proc, signal.SIGINT)
    assert proc.returncode == 0, err
    assert any(n.endswith(".seg") for n in os.listdir(log_dir))
    assert not os.path.exists(f"{db}.log")
    rows = vigil("events", "--db", str(db), "--kind", "exec", "--json", "-n", "1000", check=True)
    evs = [orjson.loads(x) for x in rows.stdout.splitlines()]
    ours = [ev for ev in evs if marker.decode() in ev["args"]]
    assert len(ours) == 1, evs[:3]
    ev = ours[0]
    with open("/proc/sys/kernel/random/boot_id") as f:
        boot = f.read().strip()
    assert ev["host"] == socket.gethostname() and ev["boot_id"] == boot
    assert ev["seq"] > 0 and isinstance(ev["cpu"], int)
    assert ev["process_key"] == f"{boot}:{ev['start_time']}:{ev['pid']}"
    assert ev["parent_key"] == f"{boot}:{ev['parent_start_time']}:{ev['ppid']}"
    assert ev["ppid"] == os.getpid()  # its parent is this test: lineage from the log
    assert ev["ancestors"][0]["pid"] == os.getpid()


class _Lines:
    """A process's stderr lines, read by a thread: waiting for one can time
    out instead of hanging the test."""

    def __init__(self, proc):
        import queue

        self.proc, self.queue = proc, queue.Queue()
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        for line in iter(self.proc.stderr.readline, b""):
            self.queue.put(line)

    def line(self, timeout: float = 20.0) -> bytes:
        import queue

        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            return b""

    def stop(self) -> bytes:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=120)
        self.thread.join(timeout=10)
        rest = b"".join(iter(lambda: self.line(0.01), b""))
        assert b"Traceback" not in rest, rest
        return rest


def test_a_restarted_analysis_keeps_what_sighup_applied(tmp_path):
    """SIGHUP reaches the analysis through the capture; an analysis restarted
    later runs with the reloaded live settings, not the ones at start."""
    db = tmp_path / "events.db"
    conf = tmp_path / "vigil.toml"
    conf.write_text("[status]\ninterval = 3600\n")
    proc = start_vigil(
        "monitor", "--config", str(conf), "--db", str(db), "--sensor", "exec", "-q",
        "--no-summaries", "--no-rules", "--no-baseline",
    )  # fmt: skip
    lines = _Lines(proc)
    try:
        conf.write_text("[status]\ninterval = 0.5\n")
        proc.send_signal(signal.SIGHUP)
        line = lines.line()
        assert b"SIGHUP: configuration reloaded" in line and b"status.interval" in line, line
        assert b"| lag" in lines.line()  # within the new interval
        first = _analysis_pid(proc)
        os.kill(first, signal.SIGKILL)
        seen = b""
        end = time.monotonic() + 30
        while b"restarting" not in seen and time.monotonic() < end:
            seen += lines.line(1.0)
        assert b"restarting" in seen, seen
        # status lines every 0.5 s again, not every 3600 s: the reloaded interval
        after = [lines.line(10.0) for _ in range(3)]
        assert all(b"| lag" in x for x in after), after
        assert _analysis_pid(proc) != first
    finally:
        lines.stop()
    assert proc.returncode == 0


def test_a_batch_stored_before_its_position_was_committed_is_not_stored_again(
    tmp_path, accept_storm
):
    """A kill between the store's commit of a batch (in slices) and the log
    position's leaves the position behind what the store holds; the restart
    reads those events again and must drop them, by the kernel's (cpu, seq),
    after the mark kept with the position.  Made exact here: the position is
    set back to the oldest segment with a mark of 0 (every stored row is
    "after the mark"), as a kill at the worst moment would leave it."""
    db = tmp_path / "events.db"
    pids: list[int] = []
    proc = _monitor(db)
    try:
        _storm(accept_storm, 2, pids)
        _wait_caught_up(db)
    finally:
        _stop(proc)
    n1, distinct1 = _rows(db)
    assert n1 == distinct1 and n1 > 1000
    log_dir = f"{db}.log"
    first = min(int(n[:12]) for n in os.listdir(log_dir) if n.endswith(".seg"))
    with open(f"{log_dir}/pos-store.json", "w") as f:
        f.write(orjson.dumps({"segment": first, "offset": 0, "mark": 0}).decode())
    proc = _monitor(db)
    try:
        _wait_caught_up(db)
    finally:
        err = _stop(proc)
    assert proc.returncode == 0, err
    con = sqlite3.connect(str(db))
    try:
        (ours,) = con.execute(
            "SELECT COUNT(*) FROM events WHERE kind='accept' AND pid=?", (pids[0],)
        ).fetchone()
    finally:
        con.close()
    reader = Store(str(db), readonly=True)
    keys = reader.identities_after(0)
    reader.close()
    dup = len(keys) - len(set(keys))
    assert dup == 0, f"{dup} events stored twice"
    n2, distinct2 = _rows(db)
    assert n2 == distinct2 and ours <= n1 and ours > 1000
