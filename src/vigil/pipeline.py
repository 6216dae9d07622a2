"""One pipeline: a source, ordered stages, sinks that only write, timers.

`assemble(settings, run)` builds it from the typed Settings (vigil.settings:
the config file, flags on top) and the run's own choices (`Run`: what the
command line says that no config file does).

`vigil monitor` is two processes (measured, see bench/accept_overhead):
  capture   (this process): loads the sensors (rodata, watch lists) and
            copies committed ring bytes to the event log (vigil.eventlog),
            no per-event work.  Starts the analysis, restarts it if it
            dies, passes SIGHUP on to it, and on a stop ends capture at once
            (what was in the ring at the stop, as `vigil record` does) and
            tells the analysis.
  analysis  (a child at SCHED_BATCH and nice `log.analysis_nice`, so that
            on a busy host the workload and the capture run first): follows
            the log, decodes, runs the stages (process table, detection,
            display filter), writes the sinks (store, alerts, console),
            commits its log position once the store holds the batch.  It
            may lag behind a storm; the lag is in the status line, `vigil
            status` and the store (meta "lag").  On a stop it finishes the
            backlog within `log.analysis_grace` s and leaves the rest in the
            log for the next start, saying how much.  SIGHUP reloads the
            config file (live settings), the rules and the baselines here.
A thread would not do: the GIL makes analysis compete with the capture
loop, and a thread cannot be given a lower CPU priority than its process.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import select
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import orjson

from . import config, eventlog, gc_policy, recorder
from . import settings as st
from .encoding import unescape
from .errors import VigilError
from .eventlog import Follower, Lag, LogWriter
from .identity import Keys
from .outputs.sinks import StatusLine, StoreSink, format_status, lost_summary
from .outputs.store import Store
from .process import Proc, ProcessTable
from .settings import Settings
from .signals import ServiceSignals, StopDrain, add_unread
from .stages import Batch, Enrich, Filter, Stage

log = logging.getLogger("vigil")

# A batch under GATHER_BELOW events is followed by a GATHER s pause: at a
# trickle of events, 5 batches a second instead of one per capture drain
GATHER_BELOW, GATHER = 1000, 0.2
# s between two commits of the log position (a restart re-reads at most
# this much, and drops what the store already holds: AlreadyStored)
COMMIT_EVERY = 0.5
# s between two reports of an unchanged status (the capture's word, the
# agent's record): often enough for `vigil status` (stale past 15 s)
QUIET_REPORT = 5.0


@dataclass
class Run:
    """One run's own choices (the command line's, never the config file's)
    and what the analysis child needs besides the Settings."""

    alert_window: float  # detection's correlation window, s (--alert-window)
    baseline_learn: str = "1h"  # monitor: --baseline-learn
    no_rules: bool = False
    strict: bool = False
    no_baseline: bool = False
    quiet: bool = False
    json: bool = False
    duration: float | None = None
    summaries: dict[str, str] = field(default_factory=dict)  # the counters kept at start
    sensors: list[str] = field(default_factory=list)  # what the capture loaded
    config_path: str | None = None  # re-read on SIGHUP
    explicit: dict = field(default_factory=dict)  # flags given: pinned across reloads
    recording: str | None = None  # `vigil report`: the recording to replay
    kinds: list[str] = field(default_factory=list)  # the display filter (empty: all)


def log_dir(settings: Settings) -> str:
    """The event log's directory: `log.dir`, or next to the store."""
    return settings.log.dir or f"{settings.store.path}.log"


def _to_child(settings: Settings, run: Run) -> str:
    return json.dumps({"settings": st.leaves(settings), "run": asdict(run)})


def _from_parent(text: str) -> tuple[Settings, Run]:
    given = json.loads(text)
    return config.overlay(Settings(), given["settings"]), Run(**given["run"])


# -- the event loop -------------------------------------------------------------------------
class EventLoop:
    """Owns the waiting: file descriptors any component registers, timers,
    and the service signals (vigil.signals) through their wake-up fd."""

    def __init__(self):
        self.epoll = select.epoll()
        self.handlers: dict[int, Callable[[], None]] = {}
        self.timers: list[list] = []  # [next due, interval, fn]

    def add_fd(self, fd: int, on_ready: Callable[[], None] = lambda: None) -> None:
        self.epoll.register(fd, select.EPOLLIN)
        self.handlers[fd] = on_ready

    def add_timer(self, interval: float, fn: Callable[[], None]) -> None:
        self.timers.append([time.monotonic() + interval, interval, fn])

    def turn(self, timeout: float) -> None:
        """Wait for a fd or a timer (at most `timeout` s), run what is due."""
        now = time.monotonic()
        if self.timers:
            timeout = max(0.0, min(timeout, min(t[0] for t in self.timers) - now))
        with contextlib.suppress(InterruptedError):
            for fd, _ev in self.epoll.poll(timeout):
                handler = self.handlers.get(fd)
                if handler is not None:
                    handler()
        now = time.monotonic()
        for timer in self.timers:
            if now >= timer[0]:
                timer[0] = now + timer[1]
                timer[2]()

    def close(self) -> None:
        self.epoll.close()


# -- the typed snapshot -------------------------------------------------------------------
@dataclass
class Snapshot:
    """One status tick, assembled from each component's own counters."""

    kinds: dict[str, dict] = field(default_factory=dict)  # per kind: emitted, lost, received...
    lag: Lag = field(default_factory=Lag)
    discarded: dict[str, int] = field(default_factory=dict)  # deleted unanalysed (budget)
    bad_chunks: int = 0
    storm: bool = False  # the analysis is waiting for a storm to pass

    def line(self, store: Store | None) -> str:
        text = format_status(self.kinds, store)
        if self.lag.bytes:
            text += (
                f" | lag {self.lag.events} events ({self.lag.bytes >> 10} KiB), "
                f"{self.lag.seconds:.1f}s behind capture"
            )
        else:
            text += " | lag 0"
        if self.storm:
            text += " (analysis waiting out a storm)"
        if self.discarded:
            text += f" | log full: {sum(self.discarded.values())} discarded unanalysed"
        return text


# -- the log source -----------------------------------------------------------------------
class LogSource:
    """Events from the event log, from this consumer's committed position."""

    def __init__(self, follower: Follower, table: ProcessTable):
        self.follower = follower
        self.table = table
        self.damage = recorder.Damage()
        self.received: dict[str, int] = {}
        self._decoders: dict[str, tuple] = {}
        self._segment: tuple = (None, None)  # (segment number, its decoder)
        self._resumed = False
        self.finish = recorder.finish_hooks()
        # the kinds decoded (None: all); the others' records go to the store
        # undecoded (stages.Batch).  assemble() sets it from the stages and sinks.
        self.only: frozenset[str] | None = None
        # kinds stored as JSON when decoded (None: every kind); the others
        # come with their records, which the store writes (stages.Batch)
        self.as_json: frozenset[str] | None = None
        self.decoder = None  # the last read's (stages.Batch.decoder)

    def _identify(self, seg: eventlog.Segment) -> None:
        """Events are the capture's host's and boot's (a log analysed after a
        reboot keeps them): the segment's head says which (vigil.identity)."""
        host, boot = seg.meta.get("host"), seg.meta.get("boot_id")
        if isinstance(host, str):
            self.table.host = host
        if isinstance(boot, str) and boot != self.table.keys.boot:
            self.table.keys = Keys(boot)

    def _decoder(self, seg: eventlog.Segment):
        """The segment's decoder: looked up once per segment (every batch
        asks), shared by segments of the same objects and clock."""
        if self._segment[0] == seg.n:
            return self._segment[1]
        self._identify(seg)
        key = json.dumps([seg.meta["objects"], seg.meta["boot_offset_ns"]], sort_keys=True)
        if key not in self._decoders:
            self._decoders[key] = recorder.decoder_for(seg.path, seg.meta)
        self._segment = (seg.n, self._decoders[key])
        return self._segment[1]

    def _resume(self, seg: eventlog.Segment, offset: int) -> None:
        """Starting inside a segment: the process table as it was at our
        position (the segment's start table, then its events up to there)."""
        for pid, ppid, comm, exe in seg.meta.get("processes", []):
            self.table.procs[pid] = Proc(pid, ppid, unescape(comm), unescape(exe), [])
        pos = seg.data_start
        decoder = self._decoder(seg)
        while pos < offset:
            got = False
            for tag, payload, end in seg.chunks(pos, min(4 << 20, offset - pos)):
                if end > offset:
                    break
                got, pos = True, end
                if tag == recorder.TAG_RING:
                    evs = recorder.decode_chunk(decoder, self.finish, payload, recorder.Damage())
                    self.table.enrich(evs)
            if not got:
                break
        decoder.take_counts()  # read again to rebuild the table: not received now

    def read(self, limit: int = 2 << 20) -> list[dict]:
        fol = self.follower
        if not self._resumed:
            # before the read: it may finish (and close) the segment we start in
            first = fol.current()
            if first is None:
                return []
            self._resumed = True
            self.table.procs.clear()
            self._resume(first, fol.pos.offset)
        chunks, seg = fol.read(limit)
        if seg is None:
            return []
        decoder = self._decoder(seg)
        only = self.only
        keep: frozenset[str] = frozenset()
        if self.as_json is not None:
            keep = frozenset(layout.kind for layout in decoder.layouts.values()) - self.as_json
        raw_entries = only is not None or bool(keep)
        self.decoder = decoder if raw_entries else None
        events: list = []
        for raw in chunks:
            events.extend(recorder.decode_chunk(decoder, self.finish, raw, self.damage, only, keep))
        got = decoder.take_counts()  # counted as decoded: no other look at each record
        received = self.received
        for kind, n in got.items():
            received[kind] = received.get(kind, 0) + n
        if got:
            fol.note_read(seg.n, got)
        fol.records_read += len(events)
        if events:
            last = events[-1]
            if type(last) is tuple:
                last = last[0]
            elif type(last) is bytes:
                last = {"ts_ns": decoder.head.unpack_from(last)[1] + decoder.clock[0]}
            fol.last_ts_ns = last["ts_ns"]
        return events

    def commit(self, force: bool = False) -> None:
        self.follower.commit(self.mark, every=0.0 if force else COMMIT_EVERY)

    mark: Callable[[], int | None] | None = None  # the store's last row (assemble sets it)

    def close(self) -> None:
        self.follower.close()


class AlreadyStored:
    """After a restart: the events the killed analysis stored after its last
    committed position (the store commits a batch in slices, the position
    after all of them) are dropped after the process table saw them, so
    that nothing is stored, or alerted on, twice.  They are the store's rows
    past the mark kept with the position, named by (cpu, seq): the kernel's
    numbers, the same however often the log is read."""

    reads = frozenset()  # the header, decoded or not

    def __init__(self, keys: set[tuple[int, int]]):
        self.keys = keys

    def process(self, batch: Batch) -> None:
        if not self.keys:
            return
        keys = self.keys
        kept, dropped = [], set()
        for ev in batch.entries:
            # an undecoded record's (cpu, seq): process.UNDECODED
            key = (ev.get("cpu"), ev.get("seq")) if type(ev) is dict else (ev[4], ev[5])
            if key in keys:
                dropped.add(key)
            else:
                kept.append(ev)
        if dropped:
            keys -= dropped
            batch.entries = kept
            batch.events = [
                ev for ev in batch.events if (ev.get("cpu"), ev.get("seq")) not in dropped
            ]


def _stored_after(store: Store, mark: int | None) -> set[tuple[int, int]]:
    if mark is None:
        return set()
    try:
        rows = store.identities_after(mark)
    except VigilError as err:
        log.warning("store %s: rows stored after the log position unread (%s)", store.path, err)
        return set()
    return {(cpu, seq) for cpu, seq in rows if seq}


def _last_row(store: Store) -> int | None:
    try:
        return store.last_id()
    except (sqlite3.Error, VigilError):
        return None  # no mark: a restart then may store one batch again (as before marks)


class ReplaySource:
    """Events of a recording (`vigil report`): the first batch is read at
    once, so that a bad file fails before any output."""

    def __init__(self, path: str, table: ProcessTable):
        self.replay = recorder.replay(path, table)
        self._batches = iter(self.replay)
        self.received: dict[str, int] = {}
        self.done = False
        self._first: list[dict] | None = self._next()

    def _next(self) -> list[dict]:
        events = next(self._batches, None)
        if events is None:
            self.done = True
            return []
        for ev in events:
            self.received[ev["kind"]] = self.received.get(ev["kind"], 0) + 1
        return events

    def read(self) -> list[dict]:
        if self._first is not None:
            events, self._first = self._first, None
            return events
        return [] if self.done else self._next()

    def commit(self, force: bool = False) -> None:
        pass

    def close(self) -> None:
        pass


# -- the analysis ---------------------------------------------------------------------------
class LogStoreSink(StoreSink):
    """The store, written by the analysis: commits are driven by the loop
    (a batch is stored whole before the log position moves); the status
    carries the lag."""

    capture_died = False  # the monitor was killed: its record must not say "stopped"

    def close(self) -> None:
        if not self.capture_died:
            super().close()
            return
        self.store.flush(force=True)
        self._count(self._stats)
        self.agent.update(self._stats, format_status(self._stats, self.store))
        self.store.close()

    reads = frozenset()  # it stores records undecoded (stages.Batch)

    def write(self, batch: Batch) -> None:
        # not batch.lines: the store makes its own, smaller rows (StoreSink)
        self.store.add(batch.entries)

    def status(self, stats: dict[str, dict]) -> None:
        pass  # status_with: the record carries the lag too

    _said: bytes = b""
    _said_at = 0.0

    def status_with(self, snap: Snapshot) -> None:
        stats = snap.kinds
        self._count(stats)
        self._stats = stats
        lag = asdict(snap.lag)
        # A quiet host's status does not change: the record is rewritten (and
        # retention run) every few seconds only, for `vigil status`'s liveness
        said = orjson.dumps((stats, lag, snap.discarded, self.store.error))
        now = time.monotonic()
        if said == self._said and now - self._said_at < QUIET_REPORT:
            return
        self._said, self._said_at = said, now
        self.agent.update(stats, snap.line(self.store), lag=lag, discarded=snap.discarded)
        self.store.set_meta("lag", json.dumps(lag))
        self.store.enforce_retention(self.retention_budget)
        self._count(stats)


@dataclass
class Pipeline:
    loop: EventLoop
    source: LogSource | ReplaySource  # or vigil.ring_pipeline.RingSource
    stages: list[Stage]
    sinks: list
    store: Store | None
    store_sink: LogStoreSink | None
    status: StatusLine | None
    summaries: object | None = None
    on_output_closed: Callable[[], None] | None = None
    storm: StormHold | None = None  # the analysis waits out storms (monitor only)

    def wanted(self) -> frozenset[str] | None:
        """The kinds some stage or sink reads decoded (None: every kind):
        a part without `reads` reads them all (stages.Stage.reads)."""
        out: set[str] = set()
        for part in (*self.stages, *self.sinks):
            kinds = getattr(part, "reads", None)
            if kinds is None:
                return None
            out |= kinds
        return frozenset(out)

    def turn(self) -> int:
        """One batch from the source through the stages to the sinks; the
        log position is committed once the store holds all of it."""
        if isinstance(self.source, LogSource):
            self.source.only = self.wanted()
            # stored as JSON, even when a record: what the process table reads
            # (its kinds carry what it adds: stages.Enrich); the others as records
            enriched = [s.reads for s in self.stages if isinstance(s, Enrich)]
            self.source.as_json = frozenset().union(*enriched) if enriched else None
        events = self.source.read()
        if events:
            batch = Batch(events, getattr(self.source, "decoder", None))
            for stage in self.stages:
                stage.process(batch)
            for sink in list(self.sinks):
                try:
                    sink.write(batch)
                except BrokenPipeError:
                    self._output_closed(sink)
        if self.store is not None:
            self.store.flush(force=True)
            if self.store.pending:
                return len(events)  # failing: the log keeps them, the position stays
        self.source.commit()
        return len(events)

    def _output_closed(self, sink) -> None:
        """The console's reader went away (`| head`): the whole monitor stops
        as on SIGPIPE; the store still gets everything captured until then."""
        self.sinks.remove(sink)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)
        if self.on_output_closed is not None:
            self.on_output_closed()

    def snapshot(self) -> Snapshot:
        if not isinstance(self.source, LogSource):
            return Snapshot(self.source.stats())  # the ring's (vigil.ring_pipeline)
        fol = self.source.follower
        cap = fol.capture()
        kinds: dict[str, dict] = {}
        for kind, row in (cap.get("kernel") or {}).items():
            if isinstance(row, dict):
                kinds[kind] = {k: v for k, v in row.items() if isinstance(v, (int, float))}
        for kind, n in self.source.received.items():
            kinds.setdefault(kind, {"emitted": 0, "lost": 0, "partial": 0})["received"] = n
        discarded = fol.discarded()
        for kind, n in discarded.items():
            row = kinds.setdefault(kind, {"emitted": 0, "lost": 0, "partial": 0})
            row["lost"] = row.get("lost", 0) + n
            row["discarded"] = n
        for kind, row in (cap.get("rates") or {}).items():
            if kind in kinds and isinstance(row, (int, float)):
                kinds[kind]["rate"] = row
        storm = self.storm is not None and self.storm.answer
        return Snapshot(kinds, fol.lag(), discarded, fol.bad_chunks, storm)

    _last: tuple | None = None  # (what the last full tick saw, when, its snapshot)

    def _seen(self) -> tuple | None:
        """What a status depends on, cheaply: the capture's word (replaced or
        not), the events read, the store's state.  None: it cannot tell (a
        live tool's ring), every tick is a full one."""
        if not isinstance(self.source, LogSource):
            return None
        fol = self.source.follower
        store = self.store
        return (
            fol.capture_version(),
            fol.pos,
            sum(self.source.received.values()),
            self.storm is not None and self.storm.answer,
            None if store is None else (store.error, store.pending),
        )

    def tick(self, final: bool = False) -> Snapshot:
        """The status: one snapshot, to every sink.  `final`: the last one,
        which must be exact (a sink may read some counters less often).
        While nothing it depends on changed, a tick within QUIET_REPORT s of
        the last full one only lets the counters flush (an idle host's
        analysis spent most of its CPU here)."""
        seen = self._seen()
        now = time.monotonic()
        last = self._last
        if (
            not final
            and last
            and seen is not None
            and seen == last[0]
            and now - last[1] < QUIET_REPORT
        ):
            if self.summaries is not None:
                self.summaries.status(dict(last[2].kinds))  # its flush interval
            if self.status is not None:
                self.status.status_line(last[2].line(self.store))
            return last[2]
        snap = self.snapshot()
        self._last = (seen, now, snap)
        for sink in self.sinks:
            if final and hasattr(sink, "expire"):
                sink.expire()
            sink.status(snap.kinds)
        if self.store_sink is not None:
            self.store_sink.status_with(snap)
        if self.status is not None:
            self.status.status_line(snap.line(self.store))
        return snap

    def close(self) -> None:
        if self.store is None or not self.store.pending:
            self.source.commit(force=True)  # what the last turns stored
        for sink in self.sinks:
            with contextlib.suppress(BrokenPipeError):
                sink.close()
        self.source.close()
        self.loop.close()


def assemble(settings: Settings, run: Run, console: bool = True) -> Pipeline:
    """The pipeline: `vigil monitor`'s analysis (source: the event log;
    sinks: the store, alerts, the console) or, with `run.recording` set,
    `vigil report` (source: the recording; sinks: the console)."""
    if run.recording:
        return _assemble_report(settings, run)
    from . import summaries
    from .cli import EVENT_COLUMNS  # the one event table
    from .detect import cli as detect_cli
    from .detect import output as detect_output
    from .outputs.sinks import JsonSink, TableSink
    from .table import TablePrinter

    table = ProcessTable(read_proc=False)
    detector = detect_cli.make_detector(
        tuple(settings.rules.paths), run.no_rules, run.strict, run.alert_window, table
    )
    retention = settings.store.retention
    store = Store(
        settings.store.path,
        max_pending_bytes=settings.store.backlog_mb << 20,
        retention_age_s=retention.max_age,
        retention_bytes=retention.max_size_mb << 20,
    )
    try:
        source = LogSource(Follower(log_dir(settings), "store"), table)
        source.mark = lambda: _last_row(store)
        already = _stored_after(store, eventlog.load_mark(log_dir(settings), "store"))
        detect: list[Stage] = [detector] if detector is not None else []
        if not run.no_baseline:
            detect.append(detect_cli.make_baseline(store, run.baseline_learn, run.alert_window))
        # counters flush into the store: they close before it (sinks close in order)
        summary = summaries.SummarySink(store, run.summaries, settings.summaries.interval)
        # baselines learn from the kernel's counts too (detect/baseline.py)
        summary.listeners.extend(s.merge_counts for s in detect if hasattr(s, "merge_counts"))
        sinks: list = [summary]
        if detect:
            sinks.append(detect_output.AlertStoreSink(store, detect))
        store_sink = LogStoreSink(store)
    except BaseException:
        store.close()
        raise
    sinks.append(store_sink)
    if console and not run.quiet:
        sinks.append(JsonSink() if run.json else TableSink(TablePrinter(EVENT_COLUMNS)))
    if console and detect:
        sinks.append(detect_output.AlertPrinter(run.json))
    # stages: the process table, (after a kill: what was stored already), then the
    # detection slot, then the display filter (none here)
    stages: list[Stage] = [Enrich(table), *([AlreadyStored(already)] if already else []), *detect]
    status = PeriodicLine(settings.status.interval) if console else None
    return Pipeline(EventLoop(), source, stages, sinks, store, store_sink, status, summary)


def _assemble_report(settings: Settings, run: Run) -> Pipeline:
    from .cli import EVENT_COLUMNS
    from .detect import cli as detect_cli
    from .detect import output as detect_output
    from .outputs.sinks import JsonSink, TableSink
    from .table import TablePrinter

    table = recorder.report_table()
    detector = detect_cli.make_detector(
        tuple(settings.rules.paths), run.no_rules, run.strict, run.alert_window, table
    )
    source = ReplaySource(run.recording, table)  # a bad file fails here, before any output
    sinks: list = [JsonSink() if run.json else TableSink(TablePrinter(EVENT_COLUMNS))]
    if detector is not None:
        sinks.append(detect_output.AlertPrinter(run.json))
    wanted = set(run.kinds)
    # the process table, the detection slot, the display filter: as in monitor
    stages: list[Stage] = [
        Enrich(table),
        *([detector] if detector is not None else []),
        *([Filter(lambda ev: ev["kind"] in wanted)] if wanted else []),
    ]
    return Pipeline(EventLoop(), source, stages, sinks, None, None, None)


def replay_all(pipe: Pipeline) -> None:
    """`vigil report`: every batch of the recording through the pipeline."""
    while not pipe.source.done:
        pipe.turn()
    pipe.close()


class PeriodicLine(StatusLine):
    def status_line(self, text: str) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.interval
        self.out.write(text + "\n")
        self.out.flush()


def _snapshot(pipe: Pipeline, sensor_names: list[str]) -> None:
    """Sockets already bound or listening: the picture from the first second
    (made in user space, once per `vigil monitor`, not on a restart)."""
    from . import listeners, sensors

    kinds = {"bind", "listen"} & {k for n in sensor_names for k in sensors.get(n).kinds}
    if not kinds:
        return
    table = ProcessTable()
    table.seed()
    batch = Batch(listeners.snapshot_events(kinds, processes=table))
    table.enrich(batch.events)
    for stage in pipe.stages[1:]:
        stage.process(batch)
    for sink in pipe.sinks:
        sink.write(batch)


def _reloader(settings: Settings, run: Run, pipe: Pipeline):
    """SIGHUP: the config file again; the status interval and the summaries change live."""
    reloader = config.Reloader(run.config_path, settings, run.explicit)
    if pipe.status is not None:
        reloader.apply("status", lambda new: pipe.status.set_interval(new.status.interval))
    if pipe.summaries is not None:
        reloader.apply(
            "summaries",
            lambda new: pipe.summaries.reconfigure(
                config.summary_specs(new, run.sensors), new.summaries.interval
            ),
        )
    return reloader


def analyse(
    settings: Settings, run: Run, ready_fd: int = -1, snapshot: bool = False, wake_fd: int = -1
) -> int:
    """The analysis process: follow the log until told to stop, then finish
    the backlog within the grace period.  Exit status 1 when events were
    not stored.  `wake_fd`: the capture's end of it says "appended" (a
    byte) and "stopped or died" (EOF); without it the log is polled."""
    from .outputs import liveness

    liveness.AGENT_PID = os.getppid()  # the record names the capture (see liveness)
    _lock_log(log_dir(settings))  # held until we exit
    pipe = assemble(settings, run)
    if snapshot:
        _snapshot(pipe, run.sensors)
    if ready_fd >= 0:  # the store is ours and the agent record written
        os.write(ready_fd, b"r")
        os.close(ready_fd)
    stopped_at: list[float] = []
    # SIGHUP: the config file, then rules and baselines (at their next batch)
    reloads = [
        _reloader(settings, run, pipe),
        *(stage.request_reload for stage in pipe.stages if hasattr(stage, "request_reload")),
    ]
    if not snapshot:
        # a restart: the capture's copy of the settings predates any SIGHUP;
        # take the file's live settings as a reload would (a bad file: keep these)
        with contextlib.suppress(VigilError):
            reloads[0]()
    with ServiceSignals(
        on_stop=lambda _sig: stopped_at.append(time.monotonic()), reload_hooks=reloads
    ) as sig:
        if sig.fileno() >= 0:
            pipe.loop.add_fd(sig.fileno())
        pipe.loop.add_timer(1.0, pipe.tick)
        parent = os.getppid()
        pipe.on_output_closed = lambda: os.kill(parent, signal.SIGPIPE)

        def capture_gone() -> None:
            # the capture stopped (its last word) or died (we were re-parented)
            if os.getppid() != parent:
                pipe.store_sink.capture_died = True
                sig.request_stop()
            elif pipe.source.follower.capture().get("stopped"):
                sig.request_stop()

        latency = settings.ring.latency
        idle_wait = latency
        storm = pipe.storm = StormHold(settings, pipe.source.follower)
        if wake_fd >= 0:
            # woken by the capture's appends: no polling of the log while idle
            # (the timers still run: status each second, capture_gone)
            wake = socket.socket(fileno=wake_fd)
            wake.setblocking(False)
            idle_wait = 1.0

            def woken() -> None:
                try:
                    if said := wake.recv(4096):
                        if b"s" in said:
                            storm.signal()
                        return
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:
                    pass
                # EOF: the capture stopped (its last word is written) or died
                with contextlib.suppress(OSError, ValueError):
                    pipe.loop.epoll.unregister(wake_fd)
                capture_gone()

            pipe.loop.add_fd(wake_fd, woken)
        pipe.loop.add_timer(0.2 if wake_fd < 0 else 1.0, capture_gone)
        gc_policy.for_streaming()  # set up: collect for a stream of events (gc_policy.py)
        while not sig.service() and not sig.stopping:
            if storm.holding():
                # asleep, not woken by each of the capture's appends; the timers
                # (status, lag, a dead capture) and a stop are seen 4 times a second
                time.sleep(0.25)
                pipe.loop.turn(0)
                continue
            n = pipe.turn()
            if not n:
                if not storm.drained:  # nothing read: at the end, or between segments?
                    storm.drained = pipe.source.follower.lag().bytes == 0
                pipe.loop.turn(idle_wait)
            else:
                pipe.loop.turn(0)
                if n < GATHER_BELOW and wake_fd >= 0:
                    # a trickle: let the next batch gather (each costs a store
                    # commit); an event is still queryable well within a second
                    time.sleep(GATHER)
                    pipe.loop.turn(0)  # what the capture said meanwhile (a storm?)
        # the stop: finish what the capture wrote, within the grace period
        grace = settings.log.analysis_grace
        deadline = (stopped_at[0] if stopped_at else time.monotonic()) + grace
        while time.monotonic() < deadline and not sig.hurry:
            if pipe.turn():
                continue
            if _capture_done(pipe.source.follower) or os.getppid() != parent:
                break  # all it wrote is read (a dead capture writes no more)
            time.sleep(min(0.05, latency))
        if os.getppid() != parent:  # killed: the record must not say "stopped"
            pipe.store_sink.capture_died = True
    snap = pipe.tick(final=True)
    left = snap.lag
    fol = pipe.source.follower
    db = settings.store.path
    if left.bytes:
        print(
            f"vigil: analysis stopped {left.events} events ({left.bytes >> 10} KiB) behind "
            f"capture; they stay in {log_dir(settings)} for the next start",
            file=sys.stderr,
        )
    kinds = snap.kinds
    pipe.close()
    store = pipe.store
    stored = sum(store.stored.values())
    print(f"vigil: {stored} events stored in {db}", file=sys.stderr)
    msg = lost_summary(kinds)
    if msg:
        print(f"vigil: {msg}", file=sys.stderr)
    fol.close()
    from .cli import _store_accounts

    _store_accounts(store, db)  # one line per kind not stored, and exit 1
    return 0


def _lock_log(path: str) -> None:
    """One analysis per log (and store) at a time: the analysis of a monitor
    whose capture was killed may still be storing what the log held; a new
    monitor's analysis waits for it (it is done within its grace period)."""
    fd = os.open(
        os.path.join(path, "analysis.lock"),
        os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
        0o600,
    )
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"vigil: waiting for the previous analysis to finish with {path}", file=sys.stderr)
        fcntl.flock(fd, fcntl.LOCK_EX)


def _capture_done(fol: Follower) -> bool:
    """The capture stopped and we read its last segment's end mark."""
    cap = fol.capture()
    return bool(cap.get("stopped")) and fol.seg is None and fol.pos.segment > cap.get("segment", 0)


def analysis_main() -> None:
    """Entry of the analysis child: settings and run as JSON in argv[1]."""
    from .cli import _setup_logging

    _setup_logging(0)
    settings, run = _from_parent(sys.argv[1])
    try:
        code = analyse(
            settings,
            run,
            int(sys.argv[2]),
            snapshot=sys.argv[4:] == ["first"],
            wake_fd=int(sys.argv[3]),
        )
    except Exception as err:  # noqa: BLE001 - one line, as every vigil error
        if not isinstance(err, VigilError):
            raise
        print(f"vigil: error: {err}", file=sys.stderr)
        code = 1
    sys.exit(code)


# -- the capture ----------------------------------------------------------------------------
def _lower_priority(nice: int) -> Callable[[], None]:
    def pre() -> None:
        # a stop signal before the analysis handles them must not kill it
        # (it would leave what it read unstored): ignored until then, and
        # the capture's "stopped" word in capture.json stops it too
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        if nice > 0:  # 0: the capture's own priority (a dedicated host)
            with contextlib.suppress(OSError, AttributeError):
                os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
            with contextlib.suppress(OSError):
                os.nice(nice)
        # the analysis ends with its capture (a kill -9 of the capture included)
        with contextlib.suppress(OSError, AttributeError):
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    return pre


class Analysis:
    """The analysis child process, restarted if it dies."""

    def __init__(self, settings: Settings, run: Run):
        self.settings = settings
        self.run = run
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self.ready_fd = -1
        self.wake: socket.socket | None = None  # "appended" to the analysis; closed: stopped
        self.ready = False
        self.failed = 0

    def start(self) -> None:
        """Start it; `ready_fd` becomes readable once it holds the store."""
        if self.ready_fd >= 0:
            os.close(self.ready_fd)
        self.ready_fd, wfd = os.pipe2(os.O_CLOEXEC)
        if self.wake is not None:
            self.wake.close()
        # a socket, not a pipe: a send to a dead analysis fails with EPIPE
        # (MSG_NOSIGNAL) instead of raising SIGPIPE, which stops the capture
        self.wake, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.wake.setblocking(False)
        try:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    "from vigil.pipeline import analysis_main; analysis_main()",
                    _to_child(self.settings, self.run),
                    str(wfd),
                    str(theirs.fileno()),
                    *([] if self.restarts else ["first"]),
                ],
                pass_fds=(wfd, theirs.fileno()),
                preexec_fn=_lower_priority(self.settings.log.analysis_nice),  # noqa: PLW1509
                start_new_session=True,  # a terminal's Ctrl-C reaches the capture, which decides
            )
        finally:
            os.close(wfd)
            theirs.close()

    def appended(self, storm: bool = False) -> None:
        """New bytes in the log: wake the analysis (one byte, "s" while the
        capture sees a storm; a full buffer already says so, a dead analysis
        is the restart's business)."""
        if self.wake is not None:
            with contextlib.suppress(OSError):
                self.wake.send(b"s" if storm else b"a", socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)

    def stopped(self) -> None:
        """The capture's last word is written: EOF tells the analysis at once."""
        if self.wake is not None:
            self.wake.close()
            self.wake = None

    def check(self) -> None:
        """Restart an analysis that died (killed, OOM): it resumes at its position."""
        if self.proc is not None and self.proc.poll() is not None:
            if not self.ready:  # it failed to start (its error is on stderr): no loop of retries
                self.failed = self.proc.returncode or 1
                return
            log.warning(
                "analysis process %d ended (status %s): restarting it; it resumes at its "
                "committed log position",
                self.proc.pid,
                self.proc.returncode,
            )
            self.restarts += 1
            self.start()

    def reload(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGHUP)

    def stop(self, grace: float, terms: int = 0) -> int:
        """Wait for the analysis to finish its backlog: it stops on the
        capture's last word in capture.json.  `terms` SIGTERMs besides: 0
        after a clean stop (one the analysis got after its own stop, when
        its console's pipe closed, would cut its backlog short), 1 when the
        capture failed (no last word), 2 when the operator hurried it."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a stopped (SIGSTOP) one too
            for i in range(terms):
                if i:
                    time.sleep(0.05)  # two signals, not one pending
                self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(grace + 15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def check_monitor(settings: Settings) -> None:
    """Before any sensor is loaded: the store opens, no other live monitor
    writes it (and follows its log), the log directory is ours."""
    _refuse_second_agent(settings.store.path)
    eventlog.open_dir(log_dir(settings))


def run_monitor(
    session, settings: Settings, run: Run, on_ready: Callable[[], None] | None = None
) -> int:
    """`vigil monitor`: capture `session`'s ring to the log here, analyse in
    a child.  Returns the exit status."""
    lg = settings.log
    with session:
        objects = recorder.recording_meta(session)["objects"]
        writer = LogWriter(
            log_dir(settings),
            meta=lambda: recorder.recording_meta(session, objects),
            kind_of=session.decoder.kind_of,
            segment_bytes=lg.segment_mb << 20,
            budget_bytes=lg.budget_mb << 20,
        )
        writer.rotate()  # a fresh segment for this run (a previous one may have been cut)
        reader = session.reader
        rates = _Rates()
        stop_at: list[tuple[int, float]] = []
        loop = EventLoop()

        said = [-1, 0.0, True]  # producer position, time, whether anything was moving
        meter = StormMeter(lg.storm_rate)

        def report(**extra) -> None:
            # A quiet ring changes no counter (a loss needs a full ring): the
            # capture's word stands, rewritten every few seconds for `vigil
            # status`.  Writing it anyway was half of an idle monitor's CPU.
            prod, now = reader.producer_position(), time.monotonic()
            if not extra and prod == said[0] and not said[2] and now - said[1] < QUIET_REPORT:
                return
            kernel = session.kernel_stats()
            now_rates = rates.of(kernel)
            meter.learn(kernel)
            writer.report_with(kernel, now_rates, **extra)
            said[:] = prod, now, prod != said[0] or any(now_rates.values())

        report()  # before the analysis starts: the last run's "stopped" is gone
        analysis = Analysis(settings, run)
        analysis.start()

        terms = 1  # unless the capture ends cleanly: the analysis is told by a signal
        try:
            with ServiceSignals(
                on_stop=lambda _s: stop_at.append((reader.producer_position(), time.monotonic())),
                reload_hooks=[analysis.reload],  # the config, rules and baselines: the analysis's
                announce_reloads=False,  # the analysis says what it reloaded
            ) as sig:
                if sig.fileno() >= 0:
                    loop.add_fd(sig.fileno())
                loop.add_fd(session.ring_fd)  # the kernel wakes us past its fill threshold
                loop.add_timer(1.0, report)
                loop.add_timer(0.5, analysis.check)
                ready = [on_ready]

                def analysis_ready() -> None:
                    analysis.ready = True
                    # the first start only: a restart's readiness is no news
                    if ready and ready[0] is not None:
                        ready.pop()()
                    with contextlib.suppress(OSError, ValueError):
                        loop.epoll.unregister(analysis.ready_fd)

                loop.add_fd(analysis.ready_fd, analysis_ready)
                deadline = None if run.duration is None else time.monotonic() + run.duration
                latency = settings.ring.latency
                while not sig.service():
                    loop.turn(session.poll_wait(latency))  # the timers bound it too
                    appended = 0
                    while not sig.stopping and (raw := reader.drain_raw()):
                        writer.append(raw)
                        appended += len(raw)
                    if appended:  # one wake-up per drain, not per chunk
                        analysis.appended(meter.storm(appended))
                    if deadline is not None and time.monotonic() >= deadline:
                        sig.request_stop()
                    if analysis.failed:
                        sig.request_stop()
                if not analysis.failed:
                    sig.stop_notice()
                target, since = stop_at[0]
                drain = StopDrain(reader, target, lg.stop_grace, since)
                while drain.more(sig):
                    raw = reader.drain_raw(until=drain.target)
                    if raw:
                        writer.append(raw)
                        analysis.appended()
                    else:
                        time.sleep(0.001)
                    sig.service()
                unread = drain.unread(session.decoder.kind_of)
                kernel = session.kernel_stats()
                add_unread(kernel, unread)
                writer.close({"stopped_ns": time.time_ns(), "kernel": kernel, "unread": unread})
                writer.report_with(kernel, {}, stopped=True)
                analysis.stopped()
                terms = 2 if sig.hurry else 0
        finally:
            loop.close()
            code = analysis.stop(lg.stop_grace + lg.analysis_grace, terms)
    return analysis.failed or code


def _refuse_second_agent(db: str) -> None:
    """Another live monitor writing this store (and following its log): refuse
    here, before an analysis is started (it would be refused and restarted)."""
    from .errors import StoreError
    from .outputs import liveness

    store = Store(db)
    try:
        rec = liveness.read_record(store)
    finally:
        store.close()
    if rec and rec.get("state") == "running" and liveness.alive(rec) and rec["pid"] != os.getpid():
        raise StoreError(f"{db}: another vigil monitor (pid {rec['pid']}) is writing this store")


class StormMeter:
    """The capture's view of a storm, at once: its append rate over the last
    tenth of a second against `storm_rate` events/s (in bytes, by the mean
    record size the kernel's counters give at each report).  The analysis
    hears it with the wake-up, before it decodes a batch of the storm."""

    WINDOW = 0.1  # s

    def __init__(self, rate: int):
        self.rate = rate
        self.record_bytes = 160.0  # until the counters say (an accept record is ~150)
        self.total = 0  # ring bytes drained
        self._seen = (0, 0)  # events emitted, bytes drained at the last report
        self._since, self._bytes, self._storm = time.monotonic(), 0, False

    def learn(self, kernel: dict) -> None:
        """The kernel's counters at a report: the mean record size since the last."""
        events = sum(row.get("emitted", 0) for row in kernel.values())
        d_events, d_bytes = events - self._seen[0], self.total - self._seen[1]
        if d_events >= 1000 and d_bytes > 0:
            self.record_bytes = d_bytes / d_events
        self._seen = (events, self.total)

    def storm(self, appended: int) -> bool:
        """`appended` ring bytes were drained just now: is it a storm?"""
        self.total += appended
        if not self.rate:
            return False
        now = time.monotonic()
        self._bytes += appended
        span = now - self._since
        if span >= self.WINDOW:
            self._storm = self._bytes / span > self.rate * self.record_bytes
            self._since, self._bytes = now, 0
        return self._storm


class StormHold:
    """Whether the analysis waits out a storm: while the capture reports more
    than `storm_rate` events/s, for at most `storm_hold` seconds per storm and
    while the backlog holds less than half the log budget.  The events wait
    in the log (nothing is lost; lag grows and is shown), and the workload's
    CPUs are left to the workload; the analysis catches up once the rate
    falls.  An attacker's storm delays alerts by `storm_hold` at most, and
    storms one after another cannot chain holds: a new one waits until the
    analysis has read the whole log since the last (`drained`)."""

    def __init__(self, settings: Settings, follower: Follower):
        lg = settings.log
        self.rate, self.longest = lg.storm_rate, lg.storm_hold
        self.budget = (lg.budget_mb << 20) // 2
        self.follower = follower
        self.since: float | None = None  # this storm's start
        self.checked = 0.0
        self.answer = False
        self.heard = -1.0  # when the capture last said "storm" with a wake-up
        self.drained = True  # the analysis read to the log's end since the last hold

    def signal(self) -> None:
        """The capture sees a storm now (its wake-up said so)."""
        self.heard = time.monotonic()
        self.checked = 0.0

    def holding(self) -> bool:
        if not self.rate or not self.longest:
            return False
        now = time.monotonic()
        if now - self.checked < 0.25:  # the capture reports once a second
            return self.answer
        self.checked = now
        rates = self.follower.capture().get("rates") or {}
        total = sum(v for v in rates.values() if isinstance(v, (int, float)))
        # its word with each drain, or its report each second (which lags a
        # storm's start by up to a second, and outlives its end by as much)
        if total < self.rate and now - self.heard > 0.5:
            self.since, self.answer = None, False
            return False
        if self.since is None:
            if not self.drained:  # the last hold's backlog first
                self.answer = False
                return False
            self.since, self.drained = now, False
        self.answer = now - self.since < self.longest and self.follower.lag().bytes < self.budget
        return self.answer


class _Rates:
    """Per kind events/s from the kernel's emitted counters between ticks."""

    def __init__(self):
        self.last: dict[str, int] = {}
        self.when = time.monotonic()

    def of(self, kernel: dict) -> dict[str, float]:
        now = time.monotonic()
        span = max(now - self.when, 1e-6)
        out = {k: (row.get("emitted", 0) - self.last.get(k, 0)) / span for k, row in kernel.items()}
        self.last = {k: row.get("emitted", 0) for k, row in kernel.items()}
        self.when = now
        return out


__all__ = [
    "EventLoop",
    "LogSource",
    "Pipeline",
    "Run",
    "Snapshot",
    "analyse",
    "assemble",
    "check_monitor",
    "log_dir",
    "run_monitor",
]
