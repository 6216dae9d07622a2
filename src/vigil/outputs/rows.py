"""Rows read back from the store, checked before anything shows them.

The store is a file: whoever can write it can put anything in a row
(SQLite keeps any type in any column, NOT NULL aside).  The readers
(`vigil events`, `status`, `summaries`) take a row only in the shape the
agent writes it (docs/events.md); any other row is skipped and counted,
and the command says how many, once.  Each check returns the row as the
command uses it, or None.
"""

from __future__ import annotations

import math

import orjson

_INT64 = (-(1 << 63), (1 << 63) - 1)


def _int(value) -> bool:
    return type(value) is int and _INT64[0] <= value <= _INT64[1]


def _number(value) -> bool:
    return _int(value) or (type(value) is float and math.isfinite(value))


# The common header every stored event has (docs/events.md, "Common fields"),
# and its type: what `vigil events` prints for every row.
_EVENT_HEADER = {"kind": str, "ts_ns": int, "pid": int, "ppid": int, "comm": str}


def event(data) -> dict | None:
    """An `events.data` value -> the event, or None."""
    if type(data) is not str:
        return None
    try:
        ev = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if type(ev) is not dict:
        return None
    return ev if header(ev) else None


def header(ev: dict) -> bool:
    """Has the event the common header, of its types (what every row must)?"""
    for key, typ in _EVENT_HEADER.items():
        value = ev.get(key)
        if type(value) is not typ or (typ is int and not _int(value)):
            return False
    return True


def process(exe, ancestors, process_key, parent_key, host, boot_id) -> dict | bool:
    """A `processes` row -> the event fields it holds, or False when
    malformed (its events are skipped)."""
    texts = (exe, ancestors, process_key, parent_key, host, boot_id)
    if any(type(t) is not str for t in texts):
        return False
    try:
        chain = orjson.loads(ancestors)
    except orjson.JSONDecodeError:
        return False
    if type(chain) is not list:
        return False
    for entry in chain:
        if type(entry) is not dict or not _int(entry.get("pid")):
            return False
        if type(entry.get("comm")) is not str or type(entry.get("exe")) is not str:
            return False
    return {
        "exe": exe,
        "ancestors": chain,
        "process_key": process_key,
        "parent_key": parent_key,
        "host": host,
        "boot_id": boot_id,
    }


_STATUS_COUNTS = ("updated_ns", "emitted", "lost", "partial", "stored", "dropped")


def status(row: dict) -> dict | None:
    """A `sensor_status` row (column -> value) -> itself, or None."""
    if type(row.get("kind")) is not str or not _number(row.get("rate")):
        return None
    if not all(_int(row.get(name)) for name in _STATUS_COUNTS):
        return None
    return row


def _summary_key(key) -> bool:
    if type(key) is dict:
        return all(v is None or type(v) in (str, bool) or _number(v) for v in key.values())
    return type(key) is str or _int(key)


def summary(row: tuple) -> tuple | None:
    """A `summaries` row (ts_ns, interval_ns, name, spec, counts JSON) ->
    the same with counts parsed ([[key, count], ...]), or None."""
    ts, interval, name, spec, text = row
    if not (_int(ts) and _int(interval) and type(name) is str and type(spec) is str):
        return None
    if type(text) is not str:
        return None
    try:
        counts = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if type(counts) is not list:
        return None
    for pair in counts:
        if type(pair) is not list or len(pair) != 2:
            return None
        if not (_summary_key(pair[0]) and _int(pair[1])):
            return None
    return ts, interval, name, spec, counts
