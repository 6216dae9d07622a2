"""The live tools' pipeline: the kernel ring as the source, no event log.

The same Pipeline as `vigil monitor`'s analysis and `vigil report`
(vigil.pipeline: source, ordered stages, sinks that only write, the event
loop's fds and timers, one status snapshot per tick); only the source
differs.  A live tool shows what happens while it runs, as bcc's do, so
it reads the ring itself: what it has not read when it stops is counted
per kind as unread, and nothing is kept for a next start.

`assemble_live` builds it; `RingPipeline.run` serves it until a stop
signal or a duration; `step` and `inject` drive it one batch at a time
(tests, start-up snapshots).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterable

from . import gc_policy
from .loader import Session
from .outputs.sinks import OutputBlocked, abort_blocked_write
from .pipeline import EventLoop, Pipeline
from .process import ProcessTable
from .signals import STOP_GRACE_S, ServiceSignals, StopDrain, add_unread
from .stages import Batch, Enrich, Filter, Sink, Stage


class RingSource:
    """Events straight from the session's ring, decoded in bulk."""

    def __init__(self, session: Session):
        self.session = session
        self.received: dict[str, int] = dict.fromkeys(
            (k for s in session.sensors for k in s.kinds), 0
        )
        self.until: int | None = None  # a stop's producer position: read no further
        self.limit = 1 << 20  # bytes per read: a backlog waits in the ring, not here
        self.unread: dict[str, int] = {}  # what a stop left in the ring, per kind
        self._rate_base = dict(self.received)
        self._rate_time = time.monotonic()

    def read(self) -> list[dict]:
        events = self.session.read(self.until, self.limit)
        received = self.received
        for ev in events:
            received[ev["kind"]] = received.get(ev["kind"], 0) + 1
        return events

    def stats(self) -> dict[str, dict]:
        """Per kind: the kernel's counters, events received, the recent rate,
        and what a stop left unread."""
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
        add_unread(out, self.unread)
        return out

    def commit(self, force: bool = False) -> None:
        pass  # nothing to resume: the ring is read once

    def close(self) -> None:
        pass  # the session is its opener's (a `with` block)


class RingPipeline(Pipeline):
    """A Pipeline on a RingSource, with the live tools' run loop."""

    source: RingSource
    poll_interval: float = 0.1
    status_interval: float = 1.0
    closed_before_run = False  # a console sink's reader left during inject()

    @property
    def session(self) -> Session:
        return self.source.session

    @property
    def processes(self) -> ProcessTable | None:
        return next((s.processes for s in self.stages if isinstance(s, Enrich)), None)

    def stats(self) -> dict[str, dict]:
        return self.source.stats()

    def on_reload(self, hook: Callable[[], None]) -> None:
        """Call `hook` on SIGHUP, between two reads (never in a handler)."""
        self._reload_hooks.append(hook)

    def step(self, timeout: float | None = None) -> int:
        """Wait for events once (at most `timeout` s) and run them through;
        how many were read."""
        self.session.wait(self.poll_interval if timeout is None else timeout)
        return self.turn()

    def inject(self, events: list[dict]) -> int:
        """Events made in user space (a start-up snapshot) through the
        stages and sinks, as if read; how many the stages kept."""
        batch = Batch(events)
        for stage in self.stages:
            stage.process(batch)
        if batch.events or batch.alerts:
            for sink in list(self.sinks):
                try:
                    sink.write(batch)
                except BrokenPipeError:
                    self._output_closed(sink)
                    # before run(): nothing to stop yet; run() stops at once
                    self.closed_before_run |= self.on_output_closed is None
        return len(batch.events)

    def run(
        self,
        duration: float | None = None,
        on_ready: Callable[[], None] | None = None,
        stop_grace: float = STOP_GRACE_S,
    ) -> dict[str, dict]:
        """Serve until a stop signal or `duration` seconds; the final stats.

        The loop waits on the ring's fd and the signals' wake-up fd, with
        the status tick and the duration as timers.  Signals as
        vigil.signals describes: SIGHUP runs the reload hooks and goes on;
        any other service signal stops.  A stop reads what was in the ring
        when it came and no more, for at most `stop_grace` s; what is left
        is counted per kind as "unread".  `on_ready` is called once the
        signals are handled: a "ready" line printed earlier would invite a
        Ctrl-C that kills us uncleanly.
        """
        gc_policy.for_streaming()  # collect for a stream of events (gc_policy.py)
        reader = self.session.reader
        stop_at: list[tuple[int, float]] = []  # the producer's position and time at the stop
        signals = ServiceSignals(
            on_stop=lambda _sig: stop_at.append((reader.producer_position(), time.monotonic())),
            on_hurry=abort_blocked_write,
            reload_hooks=self._reload_hooks,
        )
        loop = self.loop
        try:
            with signals:
                self.on_output_closed = lambda: signals.request_stop(signal.SIGPIPE)
                if self.closed_before_run:  # the reader left during the snapshot
                    signals.request_stop(signal.SIGPIPE)
                loop.add_fd(self.session.ring_fd)
                if signals.fileno() >= 0:
                    loop.add_fd(signals.fileno())
                loop.add_timer(self.status_interval, self.tick)
                if duration is not None:
                    loop.add_timer(duration, signals.request_stop)
                if on_ready is not None:
                    on_ready()
                try:
                    while not signals.service():
                        idle = self.session.poll_wait(self.poll_interval)
                        loop.turn(0.0 if reader.pending_bytes() else idle)
                        self.turn()
                    signals.stop_notice()
                    self._drain_to(*stop_at[0], stop_grace, signals)
                except OutputBlocked:
                    # the batch being written, and what the ring still held,
                    # are not shown: said on stderr, the stop goes on
                    signals.say("vigil: output blocked (its reader stopped reading): stopping")
                return self.tick(final=True).kinds
        finally:
            self.close()

    def _drain_to(self, target: int, since: float, grace: float, signals) -> None:
        """What was in the ring at the stop still counts: read up to `target`
        (a read whose events the filter hid must not end this early)."""
        reader = self.session.reader
        drain = StopDrain(reader, target, grace, since)
        self.source.until, self.source.limit = target, 128 << 10  # grace checked between
        while drain.more(signals):
            before = reader.consumer_position()
            self.turn()
            signals.service()
            if reader.consumer_position() == before:
                time.sleep(0.001)  # a record reserved before the stop, not yet committed
        self.source.unread = drain.unread(self.session.decoder.kind_of)


def assemble_live(
    session: Session,
    sinks: Iterable[Sink],
    *,
    processes: ProcessTable | None = None,
    stages: Iterable[Stage] = (),
    keep: Callable[[dict], bool] | None = None,
    poll_interval: float = 0.1,
    status_interval: float = 1.0,
) -> RingPipeline:
    """A live tool's pipeline: the ring; the process table, the given
    stages (detection), the display filter, in this order; the sinks."""
    ordered: list[Stage] = [
        *([Enrich(processes)] if processes is not None else []),
        *stages,
        *([Filter(keep)] if keep is not None else []),
    ]
    pipe = RingPipeline(EventLoop(), RingSource(session), ordered, list(sinks), None, None, None)
    pipe.poll_interval = poll_interval
    pipe.status_interval = status_interval
    pipe._reload_hooks = []
    return pipe
