"""Learned host baselines: what is normal here, and alerts on what is new.

Four kinds, each a set of keys learned from events:

  listen      executable -> (protocol, port) it listens on
  connect     executable -> destination port it connects to
  capability  executable -> capability it uses
  exec        parent executable -> child executable

Each kind learns for a period (`--baseline-learn`, from the first time this
host's store saw the kind) and is then *armed*: a key first seen after that
raises an alert naming what is new and which process did it, and is stored
as `new` until `vigil baseline accept` makes it normal.  Keys live in the
event store (table `baseline`), so they survive restarts.  The per-event
work is one dict lookup; the store is written only when a key is new.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import time
from collections.abc import Callable

import orjson

from ..encoding import escape_cached
from ..errors import StoreError
from ..outputs.store import Store
from .alerts import DEFAULT_WINDOW, AlertBook, LossWatch

SCHEMA = """
CREATE TABLE IF NOT EXISTS baseline (
    host TEXT NOT NULL,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    state TEXT NOT NULL,
    first_seen_ns INTEGER NOT NULL,
    example TEXT NOT NULL,
    PRIMARY KEY (host, kind, key)
);
CREATE TABLE IF NOT EXISTS baseline_kinds (
    host TEXT NOT NULL,
    kind TEXT NOT NULL,
    learn_from_ns INTEGER NOT NULL,
    PRIMARY KEY (host, kind)
);
"""
LEARNED, ACCEPTED, NEW = "learned", "accepted", "new"


def _t(v) -> str:
    return escape_cached(v) if type(v) is bytes else (v or "")


def _listen(ev):
    return (_t(ev["exe"]), ev["proto"], ev["lport"]) if ev["kind"] == "listen" else None


def _connect(ev):
    return (_t(ev["exe"]), ev["rport"])


def _capability(ev):
    return (_t(ev["exe"]), ev.get("cap_name") or str(ev["cap"]))


def _exec(ev):
    if ev.get("ret") != 0:
        return None
    anc = ev.get("ancestors")
    return (anc[0]["exe"] if anc else "", _t(ev["exe"]))


# kind -> (event kinds, key of an event or None, what the key's parts are)
KINDS: dict[str, tuple[tuple[str, ...], Callable, tuple[str, ...]]] = {
    "listen": (("listen",), _listen, ("exe", "proto", "port")),
    "connect": (("connect",), _connect, ("exe", "port")),
    "capability": (("capable",), _capability, ("exe", "capability")),
    "exec": (("exec",), _exec, ("parent_exe", "exe")),
}


def ensure(store: Store) -> None:
    try:
        store.db.executescript(SCHEMA)
    except sqlite3.Error as err:
        raise StoreError(f"{store.path}: cannot create the baseline tables ({err})") from err


class Baseline:
    """A pipeline stage: learns keys, alerts on new ones once armed."""

    def __init__(
        self,
        store: Store,
        learn_seconds: float,
        *,
        window: float = DEFAULT_WINDOW,
        host: str | None = None,
        kinds: tuple[str, ...] = tuple(KINDS),
    ):
        ensure(store)
        self.store = store
        self.host = host or socket.gethostname()
        self.learn_ns = int(learn_seconds * 1e9)
        self.book = AlertBook(window, self.host)
        self.own_pid = os.getpid()
        self.loss = LossWatch()
        self.kinds = kinds
        self._reload = False
        self.load()
        self.routes: dict[str, list[tuple[str, Callable]]] = {}
        for kind in kinds:
            evkinds, keyfn, _parts = KINDS[kind]
            for ek in evkinds:
                self.routes.setdefault(ek, []).append((kind, keyfn))

    def note_stats(self, stats: dict[str, dict]) -> None:
        self.loss.note_stats(stats)

    def request_reload(self, *_args) -> None:
        """Signal-safe: re-read the store (accepted or reset keys) at the next batch."""
        self._reload = True

    def load(self) -> None:
        self._reload = False
        self.known: dict[str, dict[tuple, str]] = {k: {} for k in self.kinds}
        self.armed_at: dict[str, int] = {}
        now = time.time_ns()
        db = self.store.db
        for kind in self.kinds:
            row = db.execute(
                "SELECT learn_from_ns FROM baseline_kinds WHERE host=? AND kind=?",
                (self.host, kind),
            ).fetchone()
            start = row[0] if row else now
            if row is None:
                db.execute("INSERT INTO baseline_kinds VALUES (?,?,?)", (self.host, kind, start))
            self.armed_at[kind] = start + self.learn_ns
            for key, state in db.execute(
                "SELECT key, state FROM baseline WHERE host=? AND kind=?", (self.host, kind)
            ):
                self.known[kind][tuple(orjson.loads(key))] = state

    def process(self, batch) -> None:
        if self._reload:
            self.load()
        new_rows, touched = [], {}
        routes, me = self.routes, self.own_pid
        for ev in batch.events:
            route = routes.get(ev["kind"])
            if route is None or ev["pid"] == me:
                continue
            for kind, keyfn in route:
                key = keyfn(ev)
                if key is None:
                    continue
                known = self.known[kind]
                state = known.get(key)
                if state is not None and state != NEW:
                    continue
                ts = ev["ts_ns"]
                if state is None:
                    armed = ts >= self.armed_at[kind]
                    state = known[key] = NEW if armed else LEARNED
                    new_rows.append(
                        (self.host, kind, orjson.dumps(key).decode(), state, ts, _example(ev))
                    )
                    if not armed:
                        continue
                alert = self._alert(kind, key, ev)
                touched[alert.id] = alert
        if new_rows:
            try:
                self.store.db.executemany(
                    "INSERT OR IGNORE INTO baseline VALUES (?,?,?,?,?,?)", new_rows
                )
            except sqlite3.Error as err:  # the keys stay known in memory
                import logging

                logging.getLogger("vigil.detect").error("baseline not stored: %s", err)
        if touched:
            batch.alerts.extend(touched.values())

    def _alert(self, kind: str, key: tuple, ev: dict):
        parts = dict(zip(KINDS[kind][2], key))
        what = ", ".join(f"{k} {v}" for k, v in parts.items())
        return self.book.raise_(
            source="baseline",
            name=kind,
            key=key,
            ev=ev,
            header={
                "baseline": {"kind": kind, "new": parts},
                "level": "medium",
                "summary": f"new {kind} for this host: {what}",
            },
            matched={},
            losing=self.loss.losing(ev["kind"], ev["ts_ns"]),
        )


def _example(ev: dict) -> str:
    return f"pid {ev['pid']} {_t(ev.get('comm'))}"


# -- review (vigil baseline show|accept|reset) ------------------------------------
def rows(store: Store, kind: str | None = None, host: str | None = None) -> list[dict]:
    host = host or socket.gethostname()
    sql = "SELECT kind, key, state, first_seen_ns, example FROM baseline WHERE host=?"
    args: list = [host]
    if kind:
        sql += " AND kind=?"
        args.append(kind)
    try:
        cur = store.db.execute(sql + " ORDER BY kind, first_seen_ns", args)
        return [
            {
                "kind": k,
                **dict(zip(KINDS[k][2], orjson.loads(key))),
                "state": s,
                "first_seen_ns": t,
                "example": e,
            }
            for k, key, s, t, e in cur
            if k in KINDS
        ]
    except sqlite3.OperationalError as err:
        if "no such table" in str(err):
            return []
        raise StoreError(f"{store.path}: baseline query failed ({err})") from err


def armed(store: Store, learn_seconds: float | None = None, host: str | None = None) -> dict:
    host = host or socket.gethostname()
    try:
        return dict(
            store.db.execute(
                "SELECT kind, learn_from_ns FROM baseline_kinds WHERE host=?", (host,)
            ).fetchall()
        )
    except sqlite3.OperationalError:
        return {}


def accept(store: Store, kind: str | None, host: str | None = None) -> int:
    """Every `new` key (of `kind`, or all kinds) becomes normal."""
    host = host or socket.gethostname()
    ensure(store)
    sql = "UPDATE baseline SET state=? WHERE host=? AND state=?"
    args: list = [ACCEPTED, host, NEW]
    if kind:
        sql += " AND kind=?"
        args.append(kind)
    return store.db.execute(sql, args).rowcount


def reset(store: Store, kind: str | None, host: str | None = None) -> int:
    """Forget what was learned: learning starts again at the next monitor."""
    host = host or socket.gethostname()
    ensure(store)
    where, args = "host=?", [host]
    if kind:
        where += " AND kind=?"
        args.append(kind)
    n = store.db.execute(f"DELETE FROM baseline WHERE {where}", args).rowcount
    store.db.execute(f"DELETE FROM baseline_kinds WHERE {where}", args)
    return n
