"""Agent sinks: the SQLite store and the console."""

from __future__ import annotations

import os
import sys
import time
from typing import BinaryIO, TextIO

from ..stages import Batch
from ..table import TablePrinter
from .liveness import AgentRecord
from .store import Store


class StoreSink:
    """Appends every event to the store; commits at most every `flush_interval` s,
    spending at most `flush_budget` s per turn on a backlog (the ring must be
    read meanwhile).  Keeps the agent's record (liveness.py) in the store."""

    def __init__(
        self,
        store: Store,
        flush_interval: float = 0.5,
        flush_rows: int = 20_000,
        flush_budget: float = 0.25,
        retention_budget: float = 0.05,
    ):
        self.store = store
        self.agent = AgentRecord(store)  # says if the previous run ended uncleanly
        self.flush_interval = flush_interval
        self.flush_rows = flush_rows
        self.flush_budget = flush_budget
        self.retention_budget = retention_budget
        self._next_flush = time.monotonic() + flush_interval
        self._stats: dict[str, dict] = {}

    def write(self, batch: Batch) -> None:
        # not batch.lines: the store makes its own, smaller JSON (no ancestry),
        # and asking for the lines would make every event's full JSON too
        self.store.add(batch.events)
        now = time.monotonic()
        if now >= self._next_flush or self.store.pending >= self.flush_rows:
            self.store.flush(self.flush_budget)
            self._next_flush = now + self.flush_interval

    def _count(self, stats: dict[str, dict]) -> None:
        for kind, row in stats.items():
            row["stored"] = self.store.stored.get(kind, 0)
            row["dropped"] = self.store.dropped.get(kind, 0)
            row["waiting"] = self.store.waiting.get(kind, 0)

    def status(self, stats: dict[str, dict]) -> None:
        # the status first: on a disk nearly full, the few pages it needs
        # must not go to a backlog that takes whatever room there is
        self._count(stats)
        self._stats = stats
        self.agent.update(stats, format_status(stats, self.store))
        self.store.flush(self.flush_budget)
        # a small slice per tick: retention never holds ingestion up for long
        self.store.enforce_retention(self.retention_budget)
        self._count(stats)

    def close(self) -> None:
        self.store.flush(force=True)
        self._count(self._stats)
        self.agent.stopped(self._stats, format_status(self._stats, self.store))
        self.store.close()


class OutputBlocked(Exception):
    """A second stop signal came while a write to the output was blocked:
    its reader stopped reading (`| sleep 1000`, a stuck pager)."""


_writing = False  # a write_all is in progress


def write_all(fd: int, data: bytes) -> None:
    """Every byte to `fd`.  Python's buffered stdout can drop the rest of a
    write that a signal (Ctrl-C) interrupts while a pipe is full; os.write
    is retried on EINTR (PEP 475), and we loop over partial writes.  Only
    abort_blocked_write, from a signal handler, ends it early."""
    global _writing
    view = memoryview(data)
    _writing = True
    try:
        while view:
            view = view[os.write(fd, view) :]
    finally:
        _writing = False


def abort_blocked_write() -> None:
    """From a signal handler (the second stop signal): raise OutputBlocked
    out of a write_all in progress, which PEP 475 would otherwise retry for
    ever on a reader that never reads; outside a write, nothing."""
    if _writing:
        raise OutputBlocked("the output's reader stopped reading")


class JsonSink:
    """One JSON object per line, every field (docs/events.md)."""

    def __init__(self, out: BinaryIO | None = None):
        self.out = out or sys.stdout.buffer
        self.out.flush()
        self.fd = self.out.fileno()

    def write(self, batch: Batch) -> None:
        if batch.events:  # a batch may carry only alerts
            write_all(self.fd, b"\n".join(batch.lines) + b"\n")

    def status(self, stats: dict[str, dict]) -> None:
        pass

    def close(self) -> None:
        pass


class TableSink:
    """A live table, one line per event."""

    def __init__(self, printer: TablePrinter, header: bool = True):
        self.printer = printer
        if header:
            printer.header()

    def write(self, batch: Batch) -> None:
        if not batch.events:  # a batch may carry only alerts
            return
        self.printer.out.flush()
        write_all(self.printer.out.fileno(), self.printer.format_rows(batch.events).encode())

    def status(self, stats: dict[str, dict]) -> None:
        pass

    def close(self) -> None:
        pass


class StatusLine:
    """Every `interval` s, one line on stderr: rate, stored, lost per kind."""

    def __init__(
        self, interval: float = 10.0, out: TextIO | None = None, store: Store | None = None
    ):
        self.interval = interval
        self.out = out or sys.stderr
        self.store = store
        self._next = time.monotonic() + interval

    def set_interval(self, interval: float) -> None:
        """A reload: the next line comes within the new interval."""
        self.interval = interval
        self._next = min(self._next, time.monotonic() + interval)

    def write(self, batch: Batch) -> None:
        pass

    def status(self, stats: dict[str, dict]) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.interval
        self.out.write(format_status(stats, self.store) + "\n")
        self.out.flush()

    def close(self) -> None:
        pass


def format_status(stats: dict[str, dict], store: Store | None = None) -> str:
    parts = []
    for kind, s in sorted(stats.items()):
        part = f"{kind} {s.get('rate', 0):.0f}/s"
        if "stored" in s:
            part += f" stored {s['stored']}"
        part += f" lost {s.get('lost', 0)}"
        if s.get("dropped"):
            part += f" dropped {s['dropped']}"
        if s.get("waiting"):
            part += f" waiting {s['waiting']}"
        parts.append(part)
    if store is not None and store.error is not None:
        since = (time.time_ns() - store.failing_since_ns) / 1e9
        parts.append(
            f"store FAILING for {since:.0f}s: {store.error}; {store.pending} events waiting "
            f"({store.pending_bytes >> 20} of {store.max_pending_bytes >> 20} MiB), "
            f"{sum(store.dropped.values())} dropped"
        )
    return "vigil: " + " | ".join(parts)


def lost_summary(stats: dict[str, dict]) -> str | None:
    """The exit line about lost events, or None when nothing was lost."""
    lost = {
        k: s.get("lost", 0) + s.get("dropped", 0) + s.get("waiting", 0) for k, s in stats.items()
    }
    partial = {k: s.get("partial", 0) for k, s in stats.items()}
    total = sum(lost.values())
    if not total and not sum(partial.values()):
        return None
    detail = ", ".join(f"{k} {n}" for k, n in sorted(lost.items()) if n)
    msg = f"{total} events lost" + (f" ({detail})" if detail else "")
    unread = sum(s.get("unread", 0) for s in stats.values())
    if unread:
        # counted in "lost" too: in the ring at a stop, past its grace period
        msg += f"; {unread} of them left unread in the ring when the stop's grace period ended"
    if sum(partial.values()):
        msg += f"; {sum(partial.values())} sent without some fields"
    return msg
