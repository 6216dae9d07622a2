"""The store's partitions: inserts into an unindexed live partition, sealed
(indexed) every SEAL_ROWS rows; queries across partitions answer exactly
what one table would; retention drops old partitions whole; a schema 2
store is upgraded in place and its rows still read."""

from __future__ import annotations

import random
import sqlite3
import time

import orjson
import pytest

from helpers import vigil
from vigil.outputs import store as store_module
from vigil.outputs.store import Store

SEAL = 1000


@pytest.fixture(autouse=True)
def small_partitions(monkeypatch):
    monkeypatch.setattr(store_module, "SEAL_ROWS", SEAL)


def _event(i: int, ts_ns: int, kind: str | None = None) -> dict:
    return {
        "kind": kind or ("exec", "fork", "exit", "accept")[i % 4],
        "ts_ns": ts_ns,
        "pid": 1000 + i % 7,
        "ppid": 1,
        "comm": b"comm%d" % (i % 5),
        "n": i,
        "process_key": f"boot:{i % 7}:{1000 + i % 7}",
        "exe": b"/bin/x%d" % (i % 7),
        "ancestors": [{"pid": 1, "comm": "init", "exe": "/sbin/init"}],
    }


def _partitions(db: str) -> list[tuple]:
    raw = sqlite3.connect(db)
    try:
        return raw.execute("SELECT n, sealed, rows FROM partitions ORDER BY n").fetchall()
    finally:
        raw.close()


def test_queries_across_partitions_are_what_one_table_answers(tmp_path):
    """Timestamps out of order within and across partitions (the ring is in
    queue order per CPU, not time order): each query's answer is the brute
    force one, ordered by time then id."""
    db = str(tmp_path / "p.db")
    store = Store(db, retention_age_s=None, retention_bytes=None)
    rnd = random.Random(7)
    base = 1_700_000_000_000_000_000
    events = []
    for i in range(3 * SEAL + 400):
        # mostly rising, with jitter that crosses partition bounds, and ties
        events.append(_event(i, base + i * 1000 + rnd.randint(-5000, 5000) // 1000 * 1000))
    for start in range(0, len(events), 300):
        store.add(events[start : start + 300])
        store.flush()
    store.close()
    parts = _partitions(db)
    assert [sealed for _, sealed, _ in parts] == [1, 1, 1, 0]
    assert all(rows >= SEAL for _, sealed, rows in parts if sealed)

    reader = Store(db, readonly=True)
    # ids rise across partitions: the view lists every row once
    ids = [r[0] for r in reader.db.execute("SELECT id FROM events ORDER BY id")]
    assert len(set(ids)) == len(events) == reader.count()
    by_id = dict(zip(ids, events, strict=True))

    def expected(kinds=(), pid=None, comm=None, since=None, limit=100):
        rows = [
            (ev["ts_ns"], i)
            for i, ev in by_id.items()
            if (not kinds or ev["kind"] in kinds)
            and (pid is None or ev["pid"] == pid)
            and (comm is None or ev["comm"].decode() == comm)
            and (since is None or ev["ts_ns"] >= since)
        ]
        rows.sort(reverse=True)
        return [by_id[i]["n"] for _, i in rows[:limit]]

    cases = [
        {},
        {"limit": 5},
        {"kinds": ["exec"], "limit": 50},
        {"kinds": ["exec", "exit"], "limit": 30},
        {"pid": 1003, "limit": 40},
        {"comm": "comm2", "limit": 2000},
        {"since": base + 2 * SEAL * 1000 - 3000, "limit": 1500},
        {"kinds": ["fork"], "since": base + 500_000, "limit": 10},
    ]
    for case in cases:
        args = {("since_ns" if k == "since" else k): v for k, v in case.items()}
        got = [orjson.loads(line)["n"] for line in reader.query(**args)]
        assert got == expected(**case), case
    # the sealed partitions are walked by index, never sorted
    for plan in reader.query_plan(kinds=["exec"], limit=20):
        assert "USING INDEX" in plan and "TEMP B-TREE" not in plan, plan
    reader.close()


def test_a_restarted_writer_goes_on_in_its_live_partition(tmp_path):
    db = str(tmp_path / "r.db")
    base = 1_700_000_000_000_000_000
    for run in range(3):
        store = Store(db, retention_age_s=None, retention_bytes=None)
        store.add([_event(i, base + run * 10**9 + i) for i in range(700)])
        store.close()
    parts = _partitions(db)
    assert [(n, sealed) for n, sealed, _ in parts] == [(1, 1), (2, 0)]
    store = Store(db, readonly=True)
    assert store.count() == 2100 and store.last_id() == 2100
    store.close()


def test_sql_by_hand_reads_and_inserts_through_the_view(tmp_path):
    db = str(tmp_path / "v.db")
    store = Store(db, retention_age_s=None, retention_bytes=None)
    store.add([_event(i, 10**18 + i) for i in range(SEAL + 10)])
    store.close()
    raw = sqlite3.connect(db)
    raw.execute(
        "INSERT INTO events (ts_ns, kind, pid, comm, proc, data) VALUES (?,?,?,?,?,?)",
        (10**18 + 99_999, "exit", 5, "hand", 1, orjson.dumps(_stored_exit()).decode()),
    )
    raw.commit()
    assert raw.execute("SELECT count(*) FROM events").fetchone()[0] == SEAL + 11
    raw.close()
    res = vigil("events", "--db", db, "--json", "-n", "1", check=True)
    assert orjson.loads(res.stdout)["comm"] == "hand"


def _stored_exit() -> dict:
    return {"kind": "exit", "ts_ns": 10**18 + 99_999, "pid": 5, "ppid": 1, "comm": "hand"}


def test_age_retention_drops_whole_partitions(tmp_path):
    db = str(tmp_path / "a.db")
    store = Store(db, retention_age_s=3600, retention_bytes=None)
    now = time.time_ns()
    old = now - 7200 * 10**9
    # 2 partitions of old rows, one of both, one of new ones, the live one
    events = [_event(i, old + i) for i in range(int(2.5 * SEAL))]
    events += [_event(i, now + i) for i in range(int(1.5 * SEAL))]
    for start in range(0, len(events), 250):
        store.add(events[start : start + 250])
        store.flush()
    assert [sealed for _, sealed, _ in _partitions(db)] == [1, 1, 1, 1, 0]
    t = time.monotonic()
    while store.enforce_retention(budget_s=0.5):
        assert time.monotonic() - t < 30
    assert store.count() == int(1.5 * SEAL)
    assert store.deleted == int(2.5 * SEAL)
    left = store.db.execute("SELECT min(ts_ns) FROM events").fetchone()[0]
    assert left >= now
    # the two partitions wholly past the bound are gone, not emptied row by row
    assert [n for n, _, _ in _partitions(db)][:1] == [3]
    store.close()


def _schema_2_store(db: str) -> None:
    raw = sqlite3.connect(db)
    raw.executescript(
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema_version', '2');
        CREATE TABLE events (id INTEGER PRIMARY KEY, ts_ns INTEGER NOT NULL,
            kind TEXT NOT NULL, pid INTEGER NOT NULL, comm TEXT NOT NULL,
            proc INTEGER NOT NULL, data TEXT NOT NULL);
        CREATE TABLE processes (id INTEGER PRIMARY KEY, process_key TEXT NOT NULL,
            parent_key TEXT NOT NULL, host TEXT NOT NULL, boot_id TEXT NOT NULL,
            exe TEXT NOT NULL, ancestors TEXT NOT NULL, last_ts_ns INTEGER NOT NULL);
        CREATE INDEX events_ts ON events (ts_ns);
        CREATE INDEX events_kind_ts ON events (kind, ts_ns);
        CREATE INDEX events_pid_ts ON events (pid, ts_ns);
        CREATE INDEX events_comm_ts ON events (comm, ts_ns);
        INSERT INTO processes VALUES (1, 'b:1:7', '', 'h', 'b', '/old', '[]', 5);
        """
    )
    old = {"kind": "exit", "ts_ns": 5, "pid": 7, "ppid": 1, "comm": "old", "exit_code": 3}
    raw.execute(
        "INSERT INTO events VALUES (1, 5, 'exit', 7, 'old', 1, ?)", (orjson.dumps(old).decode(),)
    )
    raw.commit()
    raw.close()


def test_schema_2_store_is_upgraded_in_place(tmp_path):
    db = str(tmp_path / "v2.db")
    _schema_2_store(db)
    # a reader reads it as it is
    res = vigil("events", "--db", db, "--json", check=True)
    assert orjson.loads(res.stdout)["exe"] == "/old"
    store = Store(db)  # the writer upgrades it
    assert store.version == store_module.SCHEMA_VERSION
    store.add([_event(9, 10)])
    store.close()
    res = vigil("events", "--db", db, "--json", check=True)
    got = [orjson.loads(line) for line in res.stdout.splitlines()]
    assert [(e["comm"], e["exe"]) for e in got] == [("comm4", "/bin/x2"), ("old", "/old")]
    assert got[1]["exit_code"] == 3
    assert [(n, sealed) for n, sealed, _ in _partitions(db)] == [(0, 1), (1, 0)]
    store = Store(db, readonly=True)
    assert store.last_id() == 2  # ids go on from the old table's
    store.close()


def test_rows_put_in_by_hand_take_ids_after_the_sealed_ones(tmp_path):
    db = str(tmp_path / "h.db")
    store = Store(db, retention_age_s=None, retention_bytes=None)
    store.add([_event(i, 10**18 + i) for i in range(SEAL)])
    store.seal()  # the live partition is new, and empty
    store.db.execute(
        "INSERT INTO events (ts_ns, kind, pid, comm, proc, data) VALUES (?,?,?,?,?,?)",
        (10**18 + SEAL, "exit", 5, "hand", 1, orjson.dumps(_stored_exit()).decode()),
    )
    store.add([_event(SEAL + 1, 10**18 + SEAL + 1)])
    store.close()
    raw = sqlite3.connect(db)
    ids = [r[0] for r in raw.execute("SELECT id FROM events ORDER BY id")]
    raw.close()
    assert ids == list(range(1, SEAL + 3))


def test_ids_are_not_given_again_after_retention_empties_the_live_partition(tmp_path):
    """The restart de-duplication keeps a mark (the last row id): an id
    given again after deletes would hide new rows behind it."""
    db = str(tmp_path / "i.db")
    store = Store(db, retention_age_s=3600, retention_bytes=None)
    old = time.time_ns() - 7200 * 10**9
    store.add([_event(i, old + i) for i in range(100)])
    store.flush()
    assert store.last_id() == 100
    while store.enforce_retention(budget_s=0.5):
        pass
    assert store.count() == 0
    store.add([_event(i, time.time_ns() + i) for i in range(5)])
    store.flush()
    raw = sqlite3.connect(db)
    ids = [r[0] for r in raw.execute("SELECT id FROM events ORDER BY id")]
    raw.close()
    assert ids == list(range(101, 106))
    store.close()


def test_a_planted_view_cannot_call_functions_with_side_effects(tmp_path):
    """Whoever can edit the file may redefine the view `events`; with the
    schema distrusted, a function such as load_extension or writefile is
    refused, not run (SQLite's trusted_schema)."""
    db = str(tmp_path / "t.db")
    Store(db).close()
    raw = sqlite3.connect(db)
    raw.execute("DROP VIEW events")
    raw.execute(
        "CREATE VIEW events AS SELECT *, load_extension('/nonexistent/x') AS x FROM events_p1"
    )
    raw.commit()
    raw.close()
    res = vigil("status", "--db", db)
    assert b"Traceback" not in res.stderr
    assert res.returncode == 1 and b"unsafe use of load_extension" in res.stderr, res


def test_an_agent_killed_right_after_the_upgrade_leaves_a_readable_store(tmp_path, monkeypatch):
    db = str(tmp_path / "v2.db")
    _schema_2_store(db)

    def killed(self):
        raise KeyboardInterrupt  # after the upgrade's commit, before the live partition

    monkeypatch.setattr(Store, "_open_partitions", killed)
    with pytest.raises(KeyboardInterrupt):
        Store(db)
    monkeypatch.undo()
    res = vigil("events", "--db", db, "--json", check=True)
    assert [orjson.loads(line)["comm"] for line in res.stdout.splitlines()] == ["old"]
    assert vigil("status", "--db", db).returncode == 0
    Store(db).close()  # the next start goes on from there
    assert [(n, sealed) for n, sealed, _ in _partitions(db)] == [(0, 1), (1, 0)]
