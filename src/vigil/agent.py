"""The pipeline: drain -> decode -> stages (enrich -> detect -> filter) -> sinks.

One loop, one thread.  Each turn drains everything pending in the ring
(the kernel only wakes us past a fill threshold, and the poll timeout
bounds latency when quiet), so work is done in batches: one decode pass,
one enrichment pass, one JSON pass, one database transaction.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterable
from functools import cached_property
from typing import Protocol

from .encoding import iso_time, to_json
from .loader import Session
from .process import ProcessTable


class Batch:
    """Events of one drain; their JSON lines are made once, if a sink asks.

    `alerts` holds what the detection stage raised or updated in this batch
    (vigil.detect.alerts.Alert): alerts survive the filter stage, events may not.
    """

    def __init__(self, events: list[dict]):
        self.events = events
        self.alerts: list = []

    @cached_property
    def lines(self) -> list[bytes]:
        out = []
        for ev in self.events:
            ev["time"] = iso_time(ev["ts_ns"])
            out.append(to_json(ev))
        return out


class Stage(Protocol):
    """One step between decode and the sinks; may edit batch.events/alerts."""

    def process(self, batch: Batch) -> None: ...


class Enrich:
    """The process table: `exe` and `ancestors` on every event."""

    def __init__(self, processes: ProcessTable):
        self.processes = processes

    def process(self, batch: Batch) -> None:
        self.processes.enrich(batch.events)


class Filter:
    """Keeps the events `keep` accepts (after detection saw them all)."""

    def __init__(self, keep: Callable[[dict], bool]):
        self.keep = keep

    def process(self, batch: Batch) -> None:
        batch.events = [ev for ev in batch.events if self.keep(ev)]


class Sink(Protocol):
    def write(self, batch: Batch) -> None: ...
    def status(self, stats: dict[str, dict]) -> None: ...
    def close(self) -> None: ...


class Agent:
    def __init__(
        self,
        session: Session,
        sinks: Iterable[Sink],
        *,
        processes: ProcessTable | None = None,
        keep: Callable[[dict], bool] | None = None,
        stages: Iterable[Stage] = (),
        poll_interval: float = 0.1,
        status_interval: float = 1.0,
    ):
        self.session = session
        self.sinks = list(sinks)
        self.processes = processes
        self.keep = keep
        # enrich -> the given stages (detect) -> filter, in this order
        self.stages: list[Stage] = [
            *([Enrich(processes)] if processes is not None else []),
            *stages,
            *([Filter(keep)] if keep is not None else []),
        ]
        self.poll_interval = poll_interval
        self.status_interval = status_interval
        self.received: dict[str, int] = dict.fromkeys(
            (k for s in session.sensors for k in s.kinds), 0
        )
        self._rate_base: dict[str, int] = dict(self.received)
        self._rate_time = time.monotonic()
        self._stop = False

    def stop(self, *_args) -> None:
        self._stop = True

    def step(self, timeout: float | None = None) -> int:
        """Wait for events once and handle them; returns how many were read."""
        self.session.wait(self.poll_interval if timeout is None else timeout)
        events = self.session.read()
        if not events:
            return 0
        received = self.received
        for ev in events:
            received[ev["kind"]] = received.get(ev["kind"], 0) + 1
        return self.inject(events)

    def inject(self, events: list[dict]) -> int:
        """Run the stages over events and emit them; also for events made in
        user space (a start-up snapshot).  Returns how many were emitted."""
        batch = Batch(events)
        for stage in self.stages:
            stage.process(batch)
        if batch.events or batch.alerts:
            for sink in self.sinks:
                sink.write(batch)
        return len(batch.events)

    def stats(self) -> dict[str, dict]:
        """Per kind: kernel counters, events received, and the recent rate."""
        self.session.refresh_clock()
        now = time.monotonic()
        span = max(now - self._rate_time, 1e-6)
        out = self.session.kernel_stats()
        bad = self.session.decoder.undecodable
        if bad:  # records no loaded layout decodes: lost too, and said so
            out["undecodable"] = {"emitted": bad, "lost": bad, "partial": 0, "received": 0}
        for kind, n in self.received.items():
            row = out.setdefault(kind, {"emitted": 0, "lost": 0, "partial": 0})
            row["received"] = n
            row["rate"] = (n - self._rate_base.get(kind, 0)) / span
        self._rate_base = dict(self.received)
        self._rate_time = now
        return out

    def run(
        self, duration: float | None = None, on_ready: Callable[[], None] | None = None
    ) -> dict[str, dict]:
        """Run until stopped (SIGINT/SIGTERM) or `duration` seconds; final stats.

        `on_ready` is called once the stop signals are handled: a "ready"
        line printed earlier would invite a Ctrl-C that kills us uncleanly.
        """
        old = {s: signal.signal(s, self.stop) for s in (signal.SIGINT, signal.SIGTERM)}
        if on_ready is not None:
            on_ready()
        deadline = None if duration is None else time.monotonic() + duration
        next_status = time.monotonic() + self.status_interval
        try:
            while not self._stop:
                self.step()
                now = time.monotonic()
                if now >= next_status:
                    stats = self.stats()
                    for sink in self.sinks:
                        sink.status(stats)
                    next_status = now + self.status_interval
                if deadline is not None and now >= deadline:
                    break
            # what arrived before the stop still counts: empty the ring (a
            # drain whose events the filter hid must not end this early)
            while self.session.reader.pending_bytes():
                self.step(timeout=0)
            stats = self.stats()
            for sink in self.sinks:
                sink.status(stats)
            return stats
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)
            for sink in self.sinks:
                sink.close()
