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
event store (table `baseline`), so they survive restarts.

Per event, learning and armed alike, the work is one set membership on the
event's raw values (no decoding): a key seen before, learned or accepted, is
in that set.  Only a key not seen yet takes the slow path (decode, look up
the stored state, store, alert).

The in-kernel counters (summaries.py: `listens`, `connects`,
`capabilities`, keyed by comm) are merged at each flush (`merge_counts`):
they count every occurrence in the kernel, also those whose events never
reached this stage (a full ring, a shed flood).  A counter key is stored
as `<kind>/comm`: learned while the kind learns; after arming, one the
events did not show while the sensor was losing events raises a late
alert (the flush interval late, naming only the comm: the counter knows no
more).  An event whose executable key is new but whose comm key the
counters learned is learned, not alerted, when the executable's name
starts with that comm (docs/detection.md, "Baselines and the counters").
Alerts themselves stay per event: a counter is late and anonymous.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import time
from collections.abc import Callable
from operator import itemgetter

import orjson

from .. import caps
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
# a counter key first counted after arming, whose events were seen one by one
COUNTED_SEEN = "seen"


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


# The same keys from the event's raw values, undecoded: the per-event check
# (itemgetter builds the tuple in C: no Python frame per event).
_listen_raw = itemgetter("exe", "proto", "lport")  # routed "listen" events only
_connect_raw = itemgetter("exe", "rport")
_capability_raw = itemgetter("exe", "cap")


def _exec_raw(ev):
    if ev.get("ret") != 0:
        return None
    anc = ev.get("ancestors")
    return (anc[0]["exe"] if anc else "", ev["exe"])


# kind -> (event kinds, key of an event or None, what the key's parts are,
#          the raw key of an event or None)
KINDS: dict[str, tuple[tuple[str, ...], Callable, tuple[str, ...], Callable]] = {
    "listen": (("listen",), _listen, ("exe", "proto", "port"), _listen_raw),
    "connect": (("connect",), _connect, ("exe", "port"), _connect_raw),
    "capability": (("capable",), _capability, ("exe", "capability"), _capability_raw),
    "exec": (("exec",), _exec, ("parent_exe", "exe"), _exec_raw),
}


def _cap_name(cap) -> str:
    return caps.name(int(cap)) or str(cap)


# In-kernel counters (summaries.DEFAULT_SUMMARIES) a kind learns from:
# counter name -> (kind, the comm key of a counter key, of an event, parts)
COUNTED = "/comm"
COUNTERS: dict[str, tuple[str, Callable, Callable, tuple[str, ...]]] = {
    "listens": (
        "listen",
        lambda k: (k["comm"], "tcp", k["sport"]),
        lambda ev: (_t(ev["comm"]), ev["proto"], ev["lport"]),
        ("comm", "proto", "port"),
    ),
    "connects": (
        "connect",
        lambda k: (k["comm"], k["dport"]),
        lambda ev: (_t(ev["comm"]), ev["rport"]),
        ("comm", "port"),
    ),
    "capabilities": (
        "capability",
        lambda k: (k["comm"], _cap_name(k["cap"])),
        lambda ev: (_t(ev["comm"]), ev.get("cap_name") or _cap_name(ev["cap"])),
        ("comm", "capability"),
    ),
}
# what a stored `<kind>/comm` key's parts are
COUNTED_PARTS = {kind + COUNTED: parts for kind, _k, _e, parts in COUNTERS.values()}
# the sensor event kind whose losses a counter covers
_SENSOR_KIND = {"listen": "listen", "connect": "connect", "capability": "capable"}


def ensure(store: Store) -> None:
    try:
        store.db.executescript(SCHEMA)
    except sqlite3.Error as err:
        raise StoreError(f"{store.path}: cannot create the baseline tables ({err})") from err


class Baseline:
    """A pipeline stage: learns keys, alerts on new ones once armed."""

    @property
    def reads(self) -> frozenset[str]:
        """The event kinds it learns from (stages.Stage.reads)."""
        return frozenset(self.routes)

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
        self.pending: list = []  # late alerts from a counter flush, out with the next batch
        self.load()
        self.routes: dict[str, list[tuple[str, Callable, Callable]]] = {}
        for kind in kinds:
            evkinds, keyfn, _parts, rawfn = KINDS[kind]
            for ek in evkinds:
                self.routes.setdefault(ek, []).append((kind, rawfn, keyfn))

    def note_stats(self, stats: dict[str, dict]) -> None:
        self.loss.note_stats(stats)

    def request_reload(self, *_args) -> None:
        """Signal-safe: re-read the store (accepted or reset keys) at the next batch."""
        self._reload = True

    def load(self) -> None:
        self._reload = False
        self.known: dict[str, dict[tuple, str]] = {k: {} for k in self.kinds}
        # raw keys of events whose key is learned or accepted: the per-event check
        self.quiet: dict[str, set] = {k: set() for k in self.kinds}
        # comm keys the in-kernel counters gave (`<kind>/comm`), with their state
        self.counted: dict[str, dict[tuple, str]] = {k: {} for k in self.kinds}
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
            for table, stored in ((self.known, kind), (self.counted, kind + COUNTED)):
                for key, state in db.execute(
                    "SELECT key, state FROM baseline WHERE host=? AND kind=?", (self.host, stored)
                ):
                    table[kind][tuple(orjson.loads(key))] = state

    def process(self, batch) -> None:
        if self._reload:
            self.load()
        new_rows, touched = [], {}
        if self.pending:
            touched.update((a.id, a) for a in self.pending)
            self.pending = []
        routes, quiet = self.routes, self.quiet
        for ev in batch.events:
            route = routes.get(ev["kind"])
            if route is None:
                continue
            for kind, rawfn, keyfn in route:
                raw = rawfn(ev)
                if raw is None or raw in quiet[kind]:
                    continue  # seen before, learned or accepted: the common case
                self._first(kind, raw, keyfn, ev, new_rows, touched)
        self._store(new_rows)
        if touched:
            batch.alerts.extend(touched.values())

    def _first(self, kind, raw, keyfn, ev, new_rows, touched) -> None:
        """An event whose raw key is not (yet) known to be quiet."""
        if ev["pid"] == self.own_pid:
            return
        key = keyfn(ev)
        known = self.known[kind]
        state = known.get(key)
        if state is None:
            ts = ev["ts_ns"]
            armed = ts >= self.armed_at[kind]
            example = _example(ev)
            if armed and self._counter_learned(kind, ev):
                armed, example = False, example + " (learned by the in-kernel counter)"
            state = known[key] = NEW if armed else LEARNED
            new_rows.append((self.host, kind, orjson.dumps(key).decode(), state, ts, example))
        if state != NEW:
            self.quiet[kind].add(raw)
            return
        alert = self._alert(kind, key, ev)
        touched[alert.id] = alert

    def _counter_learned(self, kind: str, ev: dict) -> bool:
        """The counters learned this event's comm key while the kind learned,
        and the executable's name starts with that comm (the kernel's comm
        is the first 15 bytes of it, unless the process renamed itself)."""
        for _kind, _from_key, from_event, _parts in _counters_of(kind):
            ck = from_event(ev)
            if self.counted[kind].get(ck) in (LEARNED, ACCEPTED):
                base = _t(ev["exe"]).rpartition("/")[2]
                return bool(ck[0]) and base.startswith(ck[0])
        return False

    def _store(self, new_rows: list) -> None:
        if not new_rows:
            return
        try:
            self.store.db.executemany(
                "INSERT OR IGNORE INTO baseline VALUES (?,?,?,?,?,?)", new_rows
            )
        except sqlite3.Error as err:  # the keys stay known in memory
            import logging

            logging.getLogger("vigil.detect").error("baseline not stored: %s", err)

    # -- the in-kernel counters ----------------------------------------------------
    def merge_counts(self, name: str, rows: list[tuple[dict, int]], ts_ns: int) -> None:
        """One flush of in-kernel counter `name` (summaries.SummarySink).

        While the kind learns, its keys are learned: also those whose events
        were never processed here.  Once armed, a key that is new to the
        counters too while the sensor was losing events raises a late alert
        (its events may be among the lost; the counter names only the comm);
        without loss the events were seen, and judged, one by one."""
        spec = COUNTERS.get(name)
        if spec is None or spec[0] not in self.kinds:
            return
        kind, from_key, _from_event, parts = spec
        counted = self.counted[kind]
        armed = ts_ns >= self.armed_at[kind]
        losing = self.loss.losing(_SENSOR_KIND[kind], ts_ns) if armed else []
        new_rows = []
        for ckey, n in rows:
            try:
                ck = from_key(ckey)
            except (KeyError, TypeError, ValueError):
                continue  # a counter whose spec was changed by hand
            if ck in counted:
                continue
            state = counted[ck] = NEW if losing else LEARNED if not armed else COUNTED_SEEN
            new_rows.append(
                (
                    self.host,
                    kind + COUNTED,
                    orjson.dumps(ck).decode(),
                    state,
                    ts_ns,
                    f"{n} counted by {name}",
                )
            )
            if state == NEW:
                self.pending.append(self._counter_alert(kind, name, ck, n, ts_ns, parts, losing))
        self._store(new_rows)

    def _counter_alert(self, kind, name, ck, n, ts_ns, parts, losing):
        new = dict(zip(parts, ck))
        what = ", ".join(f"{k} {v}" for k, v in new.items())
        ev = {
            "kind": "summary",
            "ts_ns": ts_ns,
            "pid": 0,
            "comm": ck[0],
            "counter": name,
            "count": n,
        }
        return self.book.raise_(
            source="baseline",
            name=kind + COUNTED,
            key=ck,
            ev=ev,
            header={
                "baseline": {"kind": kind + COUNTED, "new": new, "counted": n},
                "level": "medium",
                "summary": (
                    f"new {kind} for this host, counted in the kernel while its events "
                    f"were lost: {what}"
                ),
            },
            matched={},
            losing=losing,
        )

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


def _counters_of(kind: str) -> list:
    return [c for c in COUNTERS.values() if c[0] == kind]


def _example(ev: dict) -> str:
    return f"pid {ev['pid']} {_t(ev.get('comm'))}"


# -- review (vigil baseline show|accept|reset) ------------------------------------
def rows(store: Store, kind: str | None = None, host: str | None = None) -> list[dict]:
    host = host or socket.gethostname()
    sql = "SELECT kind, key, state, first_seen_ns, example FROM baseline WHERE host=?"
    args: list = [host]
    if kind:
        sql += " AND kind IN (?,?)"
        args += [kind, kind + COUNTED]
    try:
        cur = store.db.execute(sql + " ORDER BY kind, first_seen_ns", args)
        return [
            {
                "kind": k,
                **dict(zip(_parts(k), orjson.loads(key))),
                "state": s,
                "first_seen_ns": t,
                "example": e,
            }
            for k, key, s, t, e in cur
            if _parts(k)
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
        sql += " AND kind IN (?,?)"
        args += [kind, kind + COUNTED]
    return store.db.execute(sql, args).rowcount


def reset(store: Store, kind: str | None, host: str | None = None) -> int:
    """Forget what was learned: learning starts again at the next monitor."""
    host = host or socket.gethostname()
    ensure(store)
    where, args = "host=?", [host]
    if kind:
        n = store.db.execute(
            "DELETE FROM baseline WHERE host=? AND kind IN (?,?)", (host, kind, kind + COUNTED)
        ).rowcount
        store.db.execute("DELETE FROM baseline_kinds WHERE host=? AND kind=?", (host, kind))
        return n
    n = store.db.execute(f"DELETE FROM baseline WHERE {where}", args).rowcount
    store.db.execute(f"DELETE FROM baseline_kinds WHERE {where}", args)
    return n


def _parts(stored_kind: str) -> tuple[str, ...]:
    """What a stored key's parts are: an event kind's, or a counter's (`<kind>/comm`)."""
    spec = KINDS.get(stored_kind)
    return spec[2] if spec is not None else COUNTED_PARTS.get(stored_kind, ())
