"""Alerts: what fired, on which event, and repeats folded into one alert.

Repeats of an alert (same rule, same key: the process by default, or the
fields a rule names in `vigil_dedup:`) within `window` seconds of event
time become one alert whose `count`, `first_seen_ns` and `last_seen_ns`
grow: nothing is dropped and nothing is rate-limited away.  Event time,
not wall time, so a replay folds exactly as the live agent did.

Schema: docs/alerts.md.
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from dataclasses import dataclass

from ..encoding import iso_time, textual

DEFAULT_WINDOW = 60.0
_ids = itertools.count(1)


def _alert_id() -> str:
    # unique across agent restarts: start time, pid and a counter
    return f"{_START:x}-{os.getpid():x}-{next(_ids):x}"


_START = time.time_ns()


def _jsonable(v):
    if type(v) is bytes:
        return textual({"v": v})["v"]
    return v


@dataclass
class Alert:
    data: dict  # the documented JSON object
    key: tuple
    new: bool = True  # not yet written anywhere
    changed: bool = True  # count or last_seen moved since the last write

    @property
    def id(self) -> str:
        return self.data["id"]


def event_json(ev: dict) -> dict:
    """The event as `--json` prints it (docs/events.md), ancestry included."""
    out = textual(ev)
    out.setdefault("time", iso_time(ev["ts_ns"]))
    return out


def process_key(ev: dict) -> tuple:
    return ("process", ev.get("pid"), _jsonable(ev.get("exe")))


class AlertBook:
    """Open alerts by key; `raise_()` either opens one or counts a repeat."""

    def __init__(self, window: float = DEFAULT_WINDOW, host: str | None = None):
        self.window_ns = int(window * 1e9)
        self.host = host or socket.gethostname()
        self.open: dict[tuple, Alert] = {}
        self.raised = 0  # alerts opened
        self.repeats = 0  # events folded into an open alert

    def raise_(
        self,
        *,
        source: str,
        name: str,
        key: tuple,
        ev: dict,
        header: dict,
        matched: dict,
        losing: list[str],
    ) -> Alert:
        ts = ev["ts_ns"]
        full_key = (source, name, *key)
        alert = self.open.get(full_key)
        if alert is not None and ts - alert.data["first_seen_ns"] <= self.window_ns:
            d = alert.data
            d["count"] += 1
            d["last_seen_ns"] = max(d["last_seen_ns"], ts)
            d["last_seen"] = iso_time(d["last_seen_ns"])
            if losing:
                d["sensor_losing"] = sorted(set(d["sensor_losing"]) | set(losing))
            alert.changed = True
            self.repeats += 1
            return alert
        now = time.time_ns()
        data = {
            "kind": "alert",
            "id": _alert_id(),
            "source": source,
            **header,
            "key": [_jsonable(k) for k in key],
            "matched": {
                sel: {f: _jsonable(v) for f, v in vals.items()} for sel, vals in matched.items()
            },
            "host": self.host,
            "event_time": iso_time(ts),
            "event_ts_ns": ts,
            "detected_ns": now,
            "detected_time": iso_time(now),
            "count": 1,
            "first_seen_ns": ts,
            "last_seen_ns": ts,
            "first_seen": iso_time(ts),
            "last_seen": iso_time(ts),
            "sensor_losing": sorted(losing),
            "event_incomplete": [f for f in ev.get("flags", ()) if f in ("partial", "truncated")],
            "event": event_json(ev),
        }
        alert = self.open[full_key] = Alert(data, full_key)
        self.raised += 1
        self._expire(ts)
        return alert

    def _expire(self, ts: int) -> None:
        """Forget closed alerts (bounded memory); they are already written."""
        if len(self.open) < 4096:
            return
        limit = ts - self.window_ns
        for k in [k for k, a in self.open.items() if a.data["first_seen_ns"] < limit]:
            del self.open[k]


# How long a sensor's loss marks alerts: a lost event may have been the one
# that mattered (a filter's exec, the parent's argv, a learned key).
LOSS_MEMORY_NS = 30_000_000_000


class LossWatch:
    """Which sensors lost events lately, from the agent's status snapshots."""

    def __init__(self):
        self._lost: dict[str, int] = {}
        self._until: dict[str, int] = {}

    def note_stats(self, stats: dict[str, dict]) -> None:
        now = time.time_ns()
        for kind, row in stats.items():
            lost = row.get("lost", 0) + row.get("dropped", 0)
            if lost > self._lost.get(kind, 0):
                self._until[kind] = now + LOSS_MEMORY_NS
            self._lost[kind] = lost

    def losing(self, kind: str, ts_ns: int) -> list[str]:
        out = [k for k in (kind, "undecodable") if self._until.get(k, 0) >= ts_ns]
        return out
