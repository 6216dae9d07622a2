"""What flows through the pipeline (vigil.pipeline): a batch of events,
the stages that edit it (process table, detection, display filter) and
the sinks that only write it."""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from typing import Protocol

from .encoding import iso_time, to_json
from .process import ProcessTable
from .sensors import related_pid_fields


class Batch:
    """Events of one read; their JSON lines are made once, if a sink asks.

    `alerts` holds what the detection stage raised or updated in this batch
    (vigil.detect.alerts.Alert): alerts survive the filter stage, events may not.

    A source that decodes only the kinds some stage or sink reads
    (`Pipeline.wanted`) leaves the other records as bytes, with `decoder`
    the one that read them.  The Enrich stage then turns each into a
    process.UNDECODED tuple in `entries` (every event, in ring order: what
    the store writes) and `events` keeps the decoded ones (what the other
    stages and sinks read).
    """

    def __init__(self, events: list, decoder=None):
        self.events = events
        self.entries = events
        self.decoder = decoder
        self.alerts: list = []

    @cached_property
    def lines(self) -> list[bytes]:
        out = []
        for ev in self.events:
            ev["time"] = iso_time(ev["ts_ns"])
            out.append(to_json(ev))
        return out


class Stage(Protocol):
    """One step between decode and the sinks; may edit batch.events/alerts.

    `reads`: the event kinds it reads (None: all of them): the source
    decodes those, and leaves the others' records for the store."""

    reads: frozenset[str] | None

    def process(self, batch: Batch) -> None: ...


class Enrich:
    """The process table: `exe` and `ancestors` on every event."""

    def __init__(self, processes: ProcessTable):
        self.processes = processes
        # what keeps the table current, and the events that name another process
        self.reads = frozenset(("fork", "exec", "exit", *related_pid_fields()))

    def process(self, batch: Batch) -> None:
        batch.events = self.processes.enrich(batch.entries, batch.decoder)


class Filter:
    """Keeps the events `keep` accepts (after detection saw them all)."""

    reads = None

    def __init__(self, keep: Callable[[dict], bool]):
        self.keep = keep

    def process(self, batch: Batch) -> None:
        batch.events = [ev for ev in batch.events if self.keep(ev)]


class Sink(Protocol):
    def write(self, batch: Batch) -> None: ...
    def status(self, stats: dict[str, dict]) -> None: ...
    def close(self) -> None: ...
