"""The pipeline: drain -> decode -> stages (enrich -> detect -> filter) -> sinks.

One loop, one thread.  Each turn drains everything pending in the ring
(the kernel only wakes us past a fill threshold, and the poll timeout
bounds latency when quiet), so work is done in batches: one decode pass,
one enrichment pass, one JSON pass, one database transaction.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterable
from functools import cached_property
from typing import Protocol

from . import gc_policy
from .encoding import iso_time, to_json
from .loader import Session
from .process import ProcessTable
from .signals import STOP_GRACE_S, ServiceSignals, StopDrain, add_unread


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
        # SIGHUP calls each of these (a component re-reading its config)
        self.reload_hooks: list[Callable[[], None]] = []
        self.signals: ServiceSignals | None = None  # while run() runs
        # per kind: records in the ring at a stop that the grace period left unread
        self.unread: dict[str, int] = {}

    def stop(self, *_args) -> None:
        self._stop = True

    def on_reload(self, hook: Callable[[], None]) -> None:
        """Call `hook` on SIGHUP, between two drains (never in a handler)."""
        self.reload_hooks.append(hook)

    def step(
        self, timeout: float | None = None, until: int | None = None, limit: int = 1 << 20
    ) -> int:
        """Wait for events once and handle them; returns how many were read."""
        self.session.wait(self.poll_interval if timeout is None else timeout)
        events = self.session.read(until, limit)
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
            for sink in list(self.sinks):
                try:
                    sink.write(batch)
                except BrokenPipeError:
                    self._output_closed(sink)
        return len(batch.events)

    def _output_closed(self, sink: Sink) -> None:
        """The console's reader went away (`| head`): stop as on SIGPIPE, and
        still drain what came before into the other sinks (the store)."""
        self.sinks.remove(sink)
        # console sinks write to stdout: point it at /dev/null so neither
        # they nor Python's exit-time flush raise again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)
        if self.signals is not None:
            self.signals.request_stop(signal.SIGPIPE)
        self._stop = True

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
        self,
        duration: float | None = None,
        on_ready: Callable[[], None] | None = None,
        stop_grace: float = STOP_GRACE_S,
    ) -> dict[str, dict]:
        """Run until a stop signal or `duration` seconds; final stats.

        Signals as vigil.signals describes: SIGHUP runs `reload_hooks` and
        goes on; any other service signal stops.  A stop reads what was in
        the ring when it came and no more, for at most `stop_grace` s; what
        is left is counted per kind as "unread" in the final stats.
        `on_ready` is called once the signals are handled: a "ready" line
        printed earlier would invite a Ctrl-C that kills us uncleanly.
        """
        gc_policy.for_streaming()  # set up: collect for a stream of events (gc_policy.py)
        reader = self.session.reader
        stop_at: list[tuple[int, float]] = []  # the ring's producer position and time at the stop
        signals = ServiceSignals(
            on_stop=lambda _sig: stop_at.append((reader.producer_position(), time.monotonic())),
            reload_hooks=self.reload_hooks,
        )
        try:
            with signals:
                self.signals = signals
                if signals.fileno() >= 0:
                    self.session.wake_on(signals.fileno())
                if on_ready is not None:
                    on_ready()
                deadline = None if duration is None else time.monotonic() + duration
                next_status = time.monotonic() + self.status_interval
                while not signals.service():
                    if self._stop:
                        signals.request_stop()
                        break
                    now = time.monotonic()
                    due = min(next_status, deadline or next_status) - now
                    self.step(self.session.poll_wait(self.poll_interval, idle=min(1.0, due)))
                    now = time.monotonic()
                    if now >= next_status:
                        self._report_status()
                        next_status = now + self.status_interval
                    if deadline is not None and now >= deadline:
                        signals.request_stop()
                signals.stop_notice()
                self._drain_to(*stop_at[0], stop_grace)
                return self._report_status()
        finally:
            self.signals = None
            for sink in self.sinks:
                sink.close()

    def _drain_to(self, target: int, since: float, grace: float) -> None:
        """What was in the ring at the stop still counts: read up to `target`
        (a drain whose events the filter hid must not end this early)."""
        reader = self.session.reader
        drain = StopDrain(reader, target, grace, since)
        while drain.more(self.signals):
            before = reader.consumer_position()
            # small turns: the grace period is checked between them
            self.step(timeout=0, until=target, limit=128 << 10)
            if self.signals is not None:
                self.signals.service()
            if reader.consumer_position() == before:
                time.sleep(0.001)  # a record reserved before the stop, not yet committed
        self.unread = drain.unread(self.session.decoder.kind_of)

    def _report_status(self) -> dict[str, dict]:
        stats = self.stats()
        add_unread(stats, self.unread)
        for sink in self.sinks:
            sink.status(stats)
        return stats
