"""What flows through the pipeline (vigil.pipeline): a batch of events,
the stages that edit it (process table, detection, display filter) and
the sinks that only write it."""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from typing import Protocol

from .encoding import iso_time, to_json
from .process import ProcessTable


class Batch:
    """Events of one read; their JSON lines are made once, if a sink asks.

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
