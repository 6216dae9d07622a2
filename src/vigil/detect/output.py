"""Where alerts go: the `alerts` table of the event store, and the console.

The table lives in the same SQLite file as the events (outputs/store.py);
this module owns its schema and queries, so the store itself only grew a
table.  One row per alert, replaced as its count and last_seen move.
"""

from __future__ import annotations

import sqlite3
import sys
from typing import TextIO

import orjson

from ..encoding import display
from ..errors import StoreError
from ..outputs.sinks import write_all
from ..outputs.store import Store, _where

SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    rule_id TEXT NOT NULL,
    level TEXT NOT NULL,
    first_seen_ns INTEGER NOT NULL,
    last_seen_ns INTEGER NOT NULL,
    count INTEGER NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_last ON alerts (last_seen_ns);
CREATE INDEX IF NOT EXISTS alerts_rule ON alerts (rule_id, last_seen_ns);
"""
_UPSERT = "INSERT OR REPLACE INTO alerts VALUES (?,?,?,?,?,?,?,?)"
LEVELS = ("informational", "low", "medium", "high", "critical")


def _row(d: dict) -> tuple:
    rule = d.get("rule") or {}
    name = rule.get("id") or d.get("baseline", {}).get("kind", "")
    return (
        d["id"],
        d["source"],
        name,
        rule.get("level", d.get("level", "")),
        d["first_seen_ns"],
        d["last_seen_ns"],
        d["count"],
        orjson.dumps(d).decode(),
    )


def ensure(store: Store) -> None:
    try:
        store.db.executescript(SCHEMA)
    except sqlite3.Error as err:
        raise StoreError(f"{store.path}: cannot create the alerts table ({err})") from err


def write(store: Store, alerts: list) -> None:
    """Upsert alerts in one transaction (an alert seen again replaces its row)."""
    rows = [_row(a.data) for a in alerts]
    try:
        store.db.execute("BEGIN")
        store.db.executemany(_UPSERT, rows)
        store.db.execute("COMMIT")
    except sqlite3.Error as err:
        if store.db.in_transaction:
            store.db.execute("ROLLBACK")
        raise StoreError(f"{store.path}: alerts not written ({err})") from err


def query(
    store: Store,
    *,
    since_ns: int | None = None,
    levels: list[str] = (),
    rules: list[str] = (),
    limit: int = 100,
) -> list[dict]:
    """Alerts newest first (by last_seen)."""
    where, args = _where(None, level=list(levels), rule_id=list(rules))
    if since_ns is not None:
        where += (" AND " if where else " WHERE ") + "last_seen_ns >= ?"
        args.append(since_ns)
    sql = f"SELECT data FROM alerts{where} ORDER BY last_seen_ns DESC, id DESC LIMIT ?"
    args.append(limit)
    try:
        return [orjson.loads(r[0]) for r in store.db.execute(sql, args)]
    except sqlite3.OperationalError as err:
        if "no such table" in str(err):
            return []
        raise StoreError(f"{store.path}: query failed ({err})") from err


class AlertStoreSink:
    """A pipeline sink: every new or updated alert to the store; feeds the
    detector the status snapshots it needs to flag alerts under loss."""

    reads = frozenset()  # alerts, no event (stages.Stage.reads)

    def __init__(self, store: Store, stages=()):
        ensure(store)
        self.store = store
        self.stages = list(stages)  # told each status snapshot (loss flags)
        self.failed = 0

    def write(self, batch) -> None:
        if batch.alerts:
            try:
                write(self.store, batch.alerts)
            except StoreError as err:
                self.failed += len(batch.alerts)
                import logging

                logging.getLogger("vigil.detect").error("%s", err)

    def status(self, stats: dict[str, dict]) -> None:
        for stage in self.stages:
            stage.note_stats(stats)

    def close(self) -> None:
        pass


def headline(d: dict) -> str:
    """One line per alert, for people (terminal-safe)."""
    ev = d["event"]
    what = d["rule"]["title"] if d["source"] == "rule" else d.get("summary", "")
    level = d["rule"]["level"] if d["source"] == "rule" else d.get("level", "")
    count = f" x{d['count']}" if d["count"] > 1 else ""
    loss = f" [sensor losing events: {','.join(d['sensor_losing'])}]" if d["sensor_losing"] else ""
    matched = "; ".join(
        f"{f}={v}" for vals in d.get("matched", {}).values() for f, v in vals.items()
    )
    return display(
        f"ALERT {level.upper()} {what}{count}: pid {ev.get('pid')} {ev.get('comm', '')} "
        f"({ev.get('exe', '')}) {matched}{loss}"
    )


class AlertPrinter:
    """Alerts as they are raised: a line each (or JSON), repeats at 10, 100, ..."""

    reads = frozenset()  # alerts, no event (stages.Stage.reads)

    def __init__(self, as_json: bool = False, out: TextIO | None = None):
        self.as_json = as_json
        self.out = out or sys.stdout

    def _due(self, d: dict) -> bool:
        n = d["count"]
        return n == 1 or (n >= 10 and str(n).rstrip("0") == "1")

    def write(self, batch) -> None:
        lines = []
        for alert in batch.alerts:
            d = alert.data
            if not self._due(d):
                continue
            lines.append(orjson.dumps(d).decode() if self.as_json else headline(d))
        if lines:
            self.out.flush()
            write_all(self.out.fileno(), ("\n".join(lines) + "\n").encode())

    def status(self, stats: dict[str, dict]) -> None:
        pass

    def close(self) -> None:
        pass
