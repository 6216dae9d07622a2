"""The embedded event store: SQLite in WAL mode.

Each event is one row: a few indexed columns for the queries `vigil events`
runs (time, kind, pid, comm) and the event itself as the same JSON that
`--json` prints (docs/events.md), so the store, live tools and queries share
one schema.  Rows are inserted in batched transactions.

If a write fails (disk full, database locked by someone else), the batch is
kept and retried at the next flush; only past `max_pending` rows are the
oldest dropped, and those are counted and reported, never silent.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections import deque
from collections.abc import Iterable

import orjson

from ..encoding import escape_cached
from ..errors import StoreError
from . import rows as checked

log = logging.getLogger("vigil.store")

SCHEMA_VERSION = "1"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    ts_ns INTEGER NOT NULL,
    kind TEXT NOT NULL,
    pid INTEGER NOT NULL,
    ppid INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    comm TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts_ns);
CREATE INDEX IF NOT EXISTS events_kind_ts ON events (kind, ts_ns);
CREATE INDEX IF NOT EXISTS events_pid_ts ON events (pid, ts_ns);
CREATE INDEX IF NOT EXISTS events_comm_ts ON events (comm, ts_ns);
CREATE TABLE IF NOT EXISTS summaries (
    id INTEGER PRIMARY KEY,
    ts_ns INTEGER NOT NULL,
    interval_ns INTEGER NOT NULL,
    name TEXT NOT NULL,
    spec TEXT NOT NULL,
    counts TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS summaries_name_ts ON summaries (name, ts_ns);
CREATE TABLE IF NOT EXISTS sensor_status (
    kind TEXT PRIMARY KEY,
    updated_ns INTEGER NOT NULL,
    emitted INTEGER NOT NULL,
    lost INTEGER NOT NULL,
    partial INTEGER NOT NULL,
    stored INTEGER NOT NULL,
    dropped INTEGER NOT NULL,
    rate REAL NOT NULL
);
"""
_INSERT = "INSERT INTO events (ts_ns, kind, pid, ppid, uid, comm, data) VALUES (?,?,?,?,?,?,?)"


def _where(since_ns: int | None, **columns) -> tuple[str, list]:
    """ " WHERE ..." and its arguments: ts_ns >= since, column = value, or
    column IN (...) for a list value (an empty list matches everything)."""
    where, args = [], []
    if since_ns is not None:
        where.append("ts_ns >= ?")
        args.append(since_ns)
    for column, value in columns.items():
        if isinstance(value, list):
            if value:
                where.append(f"{column} IN ({','.join('?' * len(value))})")
                args.extend(value)
        else:
            where.append(f"{column} = ?")
            args.append(value)
    return (" WHERE " + " AND ".join(where) if where else ""), args


def _connect(path: str, readonly: bool) -> sqlite3.Connection:
    if readonly:
        if not os.path.exists(path):
            raise StoreError(f"{path}: no such database (has `vigil monitor` run?)")
        uri = f"file:{path}?mode=ro"
        return sqlite3.connect(uri, uri=True, timeout=5.0, isolation_level=None)
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as err:
        raise StoreError(f"cannot create {parent}: {err.strerror}") from err
    if not os.access(parent, os.W_OK):
        raise StoreError(f"cannot write to {parent}: permission denied")
    return sqlite3.connect(path, timeout=5.0, isolation_level=None)


def _text_or_bytes(raw: bytes) -> str | bytes:
    """A TEXT value as read: SQLite does not check that text is UTF-8, and
    one such row must not fail a whole query.  Left as bytes, the row is
    skipped by the checks in outputs/rows.py."""
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw


class Store:
    def __init__(self, path: str, *, readonly: bool = False, max_pending: int = 1_000_000):
        self.path = path
        self.readonly = readonly
        self._pending: deque[tuple] = deque()
        self.max_pending = max_pending
        self.stored: dict[str, int] = {}
        self.dropped: dict[str, int] = {}
        self._failing = False
        self.skipped = 0  # rows read back in a shape the agent never writes
        try:
            self.db = _connect(path, readonly)
            if not readonly:
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=NORMAL")
                self.db.executescript(_SCHEMA)
                self._check_version()
            else:
                self.db.text_factory = _text_or_bytes
                self.db.execute("SELECT count(*) FROM meta").fetchone()
        except sqlite3.DatabaseError as err:
            raise StoreError(
                f"{path}: not a usable Vigil database ({err}); move it aside to start afresh"
            ) from err

    def _check_version(self) -> None:
        row = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            self.db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
        elif row[0] != SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: schema version {row[0]}, this Vigil reads {SCHEMA_VERSION}"
            )

    def close(self) -> None:
        if not self.readonly:
            self.flush()
        self.db.close()

    def set_meta(self, key: str, value: str) -> None:
        try:
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))
        except sqlite3.Error as err:
            log.debug("store %s: meta %s not written: %s", self.path, key, err)

    def get_meta(self, key: str) -> str | None:
        try:
            row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        except sqlite3.DatabaseError as err:
            raise StoreError(f"{self.path}: cannot read meta ({err})") from err
        return row[0] if row else None

    # -- writing --------------------------------------------------------------------
    def add(self, events: list[dict], lines: list[bytes]) -> None:
        """Queue events (with their JSON lines) for the next flush."""
        self._pending.extend(
            (
                ev["ts_ns"],
                ev["kind"],
                ev["pid"],
                ev["ppid"],
                ev["uid"],
                escape_cached(ev["comm"]),
                line.decode(),
            )
            for ev, line in zip(events, lines)
        )
        over = len(self._pending) - self.max_pending
        for _ in range(max(0, over)):
            row = self._pending.popleft()
            self.dropped[row[1]] = self.dropped.get(row[1], 0) + 1

    def flush(self) -> int:
        """Write every queued row in one transaction; returns rows written."""
        if not self._pending:
            return 0
        rows = list(self._pending)
        try:
            self.db.execute("BEGIN")
            self.db.executemany(_INSERT, rows)
            self.db.execute("COMMIT")
        except sqlite3.Error as err:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            if not self._failing:
                log.error(
                    "store %s: write failed, keeping %d events to retry: %s",
                    self.path,
                    len(rows),
                    err,
                )
            self._failing = True
            return 0
        if self._failing:
            log.warning("store %s: writing again", self.path)
            self._failing = False
        self._pending.clear()
        for row in rows:
            self.stored[row[1]] = self.stored.get(row[1], 0) + 1
        return len(rows)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def record_status(self, stats: dict[str, dict[str, float]]) -> None:
        now = time.time_ns()
        rows = [
            (
                kind,
                now,
                s.get("emitted", 0),
                s.get("lost", 0),
                s.get("partial", 0),
                self.stored.get(kind, 0),
                self.dropped.get(kind, 0),
                s.get("rate", 0.0),
            )
            for kind, s in stats.items()
        ]
        try:
            self.db.executemany(
                "INSERT OR REPLACE INTO sensor_status VALUES (?,?,?,?,?,?,?,?)", rows
            )
        except sqlite3.Error as err:
            log.debug("store %s: status not written: %s", self.path, err)

    def add_summary(
        self, ts_ns: int, interval_ns: int, name: str, spec: str, rows: list[tuple[dict, int]]
    ) -> None:
        """One interval of an in-kernel counter: a single row, its counts as
        compact JSON ([[key, count], ...]), so a week costs kilobytes."""
        counts = orjson.dumps([[key, n] for key, n in rows]).decode()
        try:
            self.db.execute(
                "INSERT INTO summaries (ts_ns, interval_ns, name, spec, counts) VALUES (?,?,?,?,?)",
                (ts_ns, interval_ns, name, spec, counts),
            )
        except sqlite3.Error as err:
            log.error("store %s: summary %s not written: %s", self.path, name, err)

    def summaries(
        self, *, since_ns: int | None = None, names: Iterable[str] = ()
    ) -> list[tuple[int, int, str, str, list]]:
        """(ts_ns, interval_ns, name, spec, [[key, count], ...]) rows, oldest first
        (malformed rows skipped and counted in `skipped`)."""
        where, args = _where(since_ns, name=list(names))
        sql = f"SELECT ts_ns, interval_ns, name, spec, counts FROM summaries{where}"
        sql += " ORDER BY ts_ns, id"
        try:
            return self._checked(checked.summary(row) for row in self.db.execute(sql, args))
        except sqlite3.DatabaseError as err:
            raise StoreError(f"{self.path}: query failed ({err})") from err

    def _checked(self, rows: Iterable) -> list:
        """The rows a check (outputs/rows.py) passed; the others counted."""
        out = []
        for row in rows:
            if row is None:
                self.skipped += 1
            else:
                out.append(row)
        return out

    # -- reading --------------------------------------------------------------------
    def query(
        self,
        *,
        since_ns: int | None = None,
        kinds: Iterable[str] = (),
        pid: int | None = None,
        comm: str | None = None,
        limit: int = 100,
    ) -> list[str]:
        """Events as their JSON text, newest first (malformed rows skipped and
        counted in `skipped`)."""
        eq = {"pid": pid, "comm": comm}
        where, args = _where(
            since_ns, kind=list(kinds), **{k: v for k, v in eq.items() if v is not None}
        )
        sql = f"SELECT data FROM events{where}"
        sql += " ORDER BY ts_ns DESC, id DESC LIMIT ?"
        args.append(limit)
        try:
            return self._checked(
                row[0] if checked.event(row[0]) is not None else None
                for row in self.db.execute(sql, args)
            )
        except sqlite3.DatabaseError as err:
            raise StoreError(f"{self.path}: query failed ({err})") from err

    def status(self) -> list[dict]:
        try:
            cur = self.db.execute("SELECT * FROM sensor_status ORDER BY kind")
            names = [d[0] for d in cur.description]
            return self._checked(checked.status(dict(zip(names, row))) for row in cur)
        except sqlite3.DatabaseError as err:
            raise StoreError(f"{self.path}: cannot read status ({err})") from err

    def count(self) -> int:
        try:
            return self.db.execute("SELECT count(*) FROM events").fetchone()[0]
        except sqlite3.DatabaseError as err:
            raise StoreError(f"{self.path}: cannot count events ({err})") from err
