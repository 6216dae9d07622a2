"""In-kernel counters that `vigil monitor` keeps beside its event stream.

Each summary is an argdist spec (vigil.argdist): counting happens in a BPF
map, and once per interval the monitor reads and clears it and stores one
row (the interval's counts).  A week of "which command used which
capability, connected to which port, spawned what" then costs kilobytes,
where storing every event would cost gigabytes.
"""

from __future__ import annotations

import logging
import os
import re
import time

from .encoding import as_text
from .errors import ConfigError, VigilError
from .outputs.store import Store

log = logging.getLogger("vigil.summaries")

# name -> argdist counting spec (-C).  Keys chosen for baselining: who does
# what, not every occurrence.
DEFAULT_SUMMARIES: dict[str, str] = {
    "capabilities": "t:capability:cap_capable():int:comm,cap",
    "connects": "t:sock:inet_sock_set_state():u16:comm,dport:newstate==2",
    "execs": "t:sched:sched_process_exec():int:pcomm,comm",
    # TCP_LISTEN: the baseline's `listen` kind learns from it too (detect/baseline.py)
    "listens": "t:sock:inet_sock_set_state():u16:comm,sport:newstate==10&&protocol==6",
}
# The sensor each default counter goes with: it runs only when that sensor
# does.  `connects` and `listens` sit on a tracepoint every TCP state change
# fires: a monitor of accepts alone paid ~10% of an accept storm for them.
DEFAULT_SENSOR: dict[str, str] = {
    "capabilities": "capable",
    "connects": "connect",
    "execs": "exec",
    "listens": "listen",
}


# A summary's name is a key in the store and a heading in `vigil summaries`.
_NAME = re.compile(r"[\w.-]{1,64}")


def parse_option(
    values: tuple[str, ...], defaults: bool = True, base: dict[str, str] | None = None
) -> dict[str, str]:
    """`--summary NAME=SPEC` values on top of the defaults, or of `base` (the
    config file's summaries); SPEC "" drops NAME.

    Each SPEC given is parsed here, before anything is opened or loaded: a
    bad one is an error now, not a crash at the first flush."""
    out = dict(base) if base is not None else dict(DEFAULT_SUMMARIES) if defaults else {}
    for value in values:
        name, sep, spec = value.partition("=")
        name, spec = name.strip(), spec.strip()
        if not sep or not name:
            raise ConfigError(f"--summary '{as_text(value)}': use NAME=SPEC (an argdist -C spec)")
        try:
            check_name(name)
        except ConfigError as err:
            raise ConfigError(f"--summary '{as_text(name)}': {err}") from None
        if spec:
            try:
                check_spec(spec)
            except ConfigError as err:
                raise ConfigError(f"--summary {name}: {err}") from None
            out[name] = spec
        else:
            out.pop(name, None)
    return out


def check_name(name: str) -> None:
    """A summary name (the --summary option and the config file share it)."""
    if not _NAME.fullmatch(name):
        raise ConfigError("a name is 1 to 64 letters, digits, '_', '.', '-'")


def check_spec(spec: str) -> None:
    """Parse an argdist -C spec as the monitor will; ConfigError if bad."""
    from .argdist import parse

    parse(spec)


def _without_self(text: str, parse) -> str:
    """The spec with the agent's own pid left out, in the kernel: its map
    reads alone make thousands of CAP_BPF checks a minute."""
    own = f"pid!={os.getpid()}"
    return f"{text}&&{own}" if parse(text).filters else f"{text}:{own}"


# A summary's own row in the per-kind stats (status line, store, exit line).
LOSS_PREFIX = "summary:"


LOSSES_EVERY = 5.0  # s between reads of the counters' own loss counts


class SummarySink:
    """An agent sink that flushes in-kernel counters to the store each interval.

    It reads no event (stages.Stage.reads).

    Counts the kernel could not make (the map was full, or a value could
    not be read) are not silent: each summary with any is a row of the
    per-kind stats, `summary:NAME`, whose `lost` is that count, so the
    status line, the store's sensor_status and the exit line all show it.
    """

    def __init__(self, store: Store, specs: dict[str, str], interval: float):
        self.store = store
        self.interval = interval
        self.aggregations = {}
        self.specs: dict[str, str] = {}
        self._start(specs)
        self._last = time.time_ns()
        self._next = time.monotonic() + interval
        self._losses: dict[str, int] = {}
        self._losses_due = 0.0
        # called with (name, rows, flush time in ns) at each flush: the
        # baselines learn from the kernel's counts (detect/baseline.py)
        self.listeners: list = []

    def _start(self, specs: dict[str, str]) -> None:
        if not specs:
            return
        try:
            from .argdist import Aggregation, parse
        except ImportError as err:  # an install without the argdist machinery
            log.warning("in-kernel summaries unavailable: %s", err)
            return
        for name, text in specs.items():
            try:
                agg = Aggregation(parse(_without_self(text, parse)))
                agg.start()
            except VigilError as err:
                # one counter this kernel cannot keep must not stop the monitor
                log.warning("summary %s skipped: %s", name, err)
                continue
            self.aggregations[name] = agg
            self.specs[name] = text

    def reconfigure(self, specs: dict[str, str], interval: float) -> None:
        """A reload: counters whose spec changed or went are flushed and
        closed, new ones started; the others keep counting."""
        keep = {n for n, t in specs.items() if self.specs.get(n) == t}
        if set(self.specs) != keep:
            self.flush()
        for name in list(self.aggregations):
            if name not in keep:
                self.aggregations.pop(name).close()
                self.specs.pop(name, None)
        self._start({n: t for n, t in specs.items() if n not in keep})
        if interval != self.interval:
            self.interval = interval
            self._next = time.monotonic() + interval

    reads = frozenset()

    def write(self, batch) -> None:
        pass

    def flush(self) -> None:
        now = time.time_ns()
        for name, agg in self.aggregations.items():
            try:
                rows = agg.read(clear=True)
            except VigilError as err:
                log.error("summary %s: %s", name, err)
                continue
            spec = as_text(self.specs[name])  # stored as UTF-8 text
            self.store.add_summary(now, now - self._last, name, spec, rows)
            for listener in self.listeners:
                try:
                    listener(name, rows, now)
                except Exception as err:  # a listener's bug must not stop the flushes
                    log.error("summary %s: listener failed: %s", name, err)
        self._last = now

    def losses(self) -> dict[str, int]:
        """name -> counts the kernel could not make since the counter started."""
        out = {}
        for name, agg in self.aggregations.items():
            try:
                n = agg.lost + agg.errors
            except VigilError as err:
                log.error("summary %s: %s", name, err)
                continue
            if n:
                out[name] = n
        return out

    def status(self, stats: dict) -> None:
        now = time.monotonic()
        if now >= self._losses_due:  # two map reads per counter: not every tick
            self._losses, self._losses_due = self.losses(), now + LOSSES_EVERY
        for name, n in self._losses.items():
            stats[LOSS_PREFIX + name] = {"emitted": 0, "lost": n, "partial": 0, "rate": 0.0}
        if time.monotonic() >= self._next:
            self._next = time.monotonic() + self.interval
            self.flush()

    def expire(self) -> None:
        """The next status reads the loss counts again (the last one is exact)."""
        self._losses_due = 0.0

    def close_aggregations(self) -> None:
        for agg in self.aggregations.values():
            agg.close()
        self.aggregations = {}

    def close(self) -> None:
        self.flush()  # the partial last interval counts too
        self.close_aggregations()


def totals(rows: list[tuple[int, int, str, str, list]]) -> dict[str, list[tuple[dict, int]]]:
    """Counts summed over intervals: name -> [(key, count)], biggest first."""
    sums: dict[str, dict[str, list]] = {}
    for _ts, _interval, name, _spec, counts in rows:
        per = sums.setdefault(name, {})
        for key, n in counts:
            ident = repr(sorted(key.items())) if isinstance(key, dict) else repr(key)
            if ident in per:
                per[ident][1] += n
            else:
                per[ident] = [key, n]
    return {
        name: sorted(((k, n) for k, n in per.values()), key=lambda kn: -kn[1])
        for name, per in sums.items()
    }
