"""The SQLite store: batched writes, queries at a million rows, failures."""

from __future__ import annotations

import sqlite3
import time

import orjson

from helpers import vigil
from vigil.encoding import to_json
from vigil.outputs.store import ROW_OVERHEAD, Store


def _event(i: int) -> dict:
    kind = ("exec", "fork", "exit")[i % 3]
    return {
        "kind": kind,
        "ts_ns": 1_700_000_000_000_000_000 + i * 1000,
        "pid": 1000 + i % 5000,
        "ppid": 1,
        "uid": 0,
        "comm": b"comm%d" % (i % 100),
        "n": i,
    }


def test_million_rows_query_fast(tmp_path):
    db = str(tmp_path / "big.db")
    store = Store(db)
    batch = 50_000
    for start in range(0, 1_000_000, batch):
        events = [_event(i) for i in range(start, start + batch)]
        store.add(events, [to_json(e) for e in events])
        store.flush()
    store.close()
    queries = [
        ["--kind", "exec", "-n", "20"],
        ["--pid", "1234", "-n", "20"],
        ["--comm", "comm42", "-n", "20"],
        ["--kind", "exit", "--since", "2023-11-14T22:13:20", "-n", "50"],
        ["-n", "100"],
    ]
    for q in queries:
        t = time.monotonic()
        res = vigil("events", "--db", db, "--json", *q, check=True)
        took = time.monotonic() - t
        rows = [orjson.loads(line) for line in res.stdout.splitlines()]
        assert rows, q
        assert [r["ts_ns"] for r in rows] == sorted((r["ts_ns"] for r in rows), reverse=True)
        assert took < 2.0, (q, took)  # process start included
    assert all(
        r["kind"] == "exec"
        for r in [
            orjson.loads(x)
            for x in vigil(
                "events", "--db", db, "--json", "--kind", "exec", "-n", "5"
            ).stdout.splitlines()
        ]
    )


def test_failed_write_is_kept_and_retried(tmp_path):
    db = str(tmp_path / "s.db")
    store = Store(db)
    blocker = sqlite3.connect(db, timeout=0)
    blocker.execute("BEGIN EXCLUSIVE")  # another writer holds the database
    store.db.execute("PRAGMA busy_timeout=0")
    events = [_event(i) for i in range(10)]
    store.add(events, [to_json(e) for e in events])
    assert store.flush() == 0 and store.pending == 10  # kept, not lost
    blocker.rollback()
    blocker.close()
    assert store.flush(force=True) == 10 and store.pending == 0  # retried now, not in 0.5 s
    assert store.count() == 10
    store.close()


def test_overflow_is_counted_as_dropped(tmp_path):
    events = [_event(i) for i in range(8)]
    lines = [to_json(e) for e in events]
    row = len(lines[0]) + ROW_OVERHEAD
    store = Store(str(tmp_path / "o.db"), max_pending_bytes=5 * row + row // 2)
    store.add(events, lines)
    assert store.pending == 5  # the newest five
    assert sum(store.dropped.values()) == 3
    assert store.dropped == {"exec": 1, "fork": 1, "exit": 1}  # events 0, 1, 2
    assert store.accepted == {"exec": 3, "fork": 3, "exit": 2}
    for kind, n in store.accepted.items():
        assert store.stored[kind] + store.dropped[kind] + store.waiting[kind] == n
    store.close()
    assert sum(store.stored.values()) == 5
