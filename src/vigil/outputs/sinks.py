"""Agent sinks: the SQLite store and the console."""

from __future__ import annotations

import os
import sys
import time
from typing import BinaryIO, TextIO

from ..agent import Batch
from ..table import TablePrinter
from .store import Store


class StoreSink:
    """Appends every event to the store; commits at most every `flush_interval` s."""

    def __init__(self, store: Store, flush_interval: float = 0.5, flush_rows: int = 20_000):
        self.store = store
        store.set_meta("agent", "running")  # `vigil status` tells a stopped agent apart
        self.flush_interval = flush_interval
        self.flush_rows = flush_rows
        self._next_flush = time.monotonic() + flush_interval

    def write(self, batch: Batch) -> None:
        self.store.add(batch.events, batch.lines)
        now = time.monotonic()
        if now >= self._next_flush or self.store.pending >= self.flush_rows:
            self.store.flush()
            self._next_flush = now + self.flush_interval

    def status(self, stats: dict[str, dict]) -> None:
        self.store.flush()
        for kind, row in stats.items():
            row["stored"] = self.store.stored.get(kind, 0)
            row["dropped"] = self.store.dropped.get(kind, 0)
        self.store.record_status(stats)

    def close(self) -> None:
        self.store.flush()
        self.store.set_meta("agent", "stopped")
        self.store.close()


def write_all(fd: int, data: bytes) -> None:
    """Every byte to `fd`.  Python's buffered stdout can drop the rest of a
    write that a signal (Ctrl-C) interrupts while a pipe is full; os.write
    is retried on EINTR (PEP 475), and we loop over partial writes."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


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

    def __init__(self, interval: float = 10.0, out: TextIO | None = None):
        self.interval = interval
        self.out = out or sys.stderr
        self._next = time.monotonic() + interval

    def write(self, batch: Batch) -> None:
        pass

    def status(self, stats: dict[str, dict]) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.interval
        self.out.write(format_status(stats) + "\n")
        self.out.flush()

    def close(self) -> None:
        pass


def format_status(stats: dict[str, dict]) -> str:
    parts = []
    for kind, s in sorted(stats.items()):
        part = f"{kind} {s.get('rate', 0):.0f}/s"
        if "stored" in s:
            part += f" stored {s['stored']}"
        part += f" lost {s.get('lost', 0)}"
        if s.get("dropped"):
            part += f" dropped {s['dropped']}"
        parts.append(part)
    return "vigil: " + " | ".join(parts)


def lost_summary(stats: dict[str, dict]) -> str | None:
    """The exit line about lost events, or None when nothing was lost."""
    lost = {k: s.get("lost", 0) + s.get("dropped", 0) for k, s in stats.items()}
    partial = {k: s.get("partial", 0) for k, s in stats.items()}
    total = sum(lost.values())
    if not total and not sum(partial.values()):
        return None
    detail = ", ".join(f"{k} {n}" for k, n in sorted(lost.items()) if n)
    msg = f"{total} events lost" + (f" ({detail})" if detail else "")
    if sum(partial.values()):
        msg += f"; {sum(partial.values())} sent without some fields"
    return msg
