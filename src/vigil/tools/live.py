"""What every live tool shares: options, the run loop, the exit line."""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Callable

import click

from .. import config, loader
from .. import options as opt
from .. import sensors as sensor_table
from ..errors import ConfigError
from ..outputs.sinks import JsonSink, TableSink, lost_summary
from ..process import ProcessTable
from ..ring_pipeline import assemble_live
from ..signals import ServiceSignals
from ..table import Column, TablePrinter, clock_time, relative_time

# What keeps the process table current (see process.ProcessTable).
PROCESS_SENSORS = ("exec", "fork", "exit")


def ring_options(f):
    """--ring-mb and --latency: every command that reads the event ring
    (defaults and bounds from vigil.settings, as the config file's)."""
    f = config.option("ring.latency", "--latency")(f)
    return config.option("ring.size_mb", "--ring-mb")(f)


def live_options(f):
    """--json, --duration, --ring-mb, --latency: on every live tool."""
    f = ring_options(f)
    f = click.option("--duration", type=opt.DURATION, help="Stop after this many seconds.")(f)
    return click.option(
        "--json", "as_json", is_flag=True, help="One JSON object per event, every field."
    )(f)


def time_columns(clock: bool = False, timestamp: bool = False, start_ns: int = 0) -> list[Column]:
    """bcc's -T (wall clock, TIME) and -t (seconds since start, TIME(s))."""
    cols = []
    if clock:
        cols.append(Column("TIME", 8, clock_time))
    if timestamp:
        cols.append(Column("TIME(s)", 8, relative_time(start_ns)))
    return cols


def regex(pattern: str | None, what: str) -> re.Pattern[bytes] | None:
    if pattern is None:
        return None
    try:
        return re.compile(os.fsencode(pattern))
    except re.error as err:
        raise ConfigError(f"bad {what} regex {pattern!r}: {err}") from None


def ready(what: str) -> None:
    click.echo(f"vigil: {what}; Ctrl-C to end", err=True)


def finish(stats: dict) -> None:
    msg = lost_summary(stats)
    if msg:
        click.echo(f"vigil: {msg}", err=True)


def run_live(
    sensors: list[str],
    *,
    columns: list[Column] | Callable[[loader.Session], list[Column]],
    as_json: bool,
    duration: float | None,
    ring_mb: int,
    latency: float,
    what: str,
    keep: Callable[[dict], bool] | None = None,
    rodata: dict[str, int] | None = None,
    choices: dict[str, str] | None = None,
    sinks: list | None = None,
    track_processes: bool = True,
    first: Callable[[ProcessTable], list[dict]] | None = None,
    sensor_options: dict | None = None,
) -> dict:
    """Load `sensors`, print their events until Ctrl-C or `duration`.

    With `track_processes`, the lifecycle sensors (exec, fork, exit) run too,
    unseen, so that short-lived processes still get `exe` and ancestry.
    `first` makes events shown before the kernel's (a start-up snapshot);
    it runs once the sensors are attached, so nothing falls in between.
    """
    shown = {k for name in sensors for k in sensor_table.get(name).kinds}
    if track_processes:
        sensors = list(dict.fromkeys([*sensors, *PROCESS_SENSORS]))
        user_keep = keep
        keep = lambda ev: ev["kind"] in shown and (user_keep is None or user_keep(ev))  # noqa: E731
    ring = ring_mb << 20
    # Interactive tools wake early (64 KiB pending) so lines appear promptly.
    session = loader.Session(
        sensors,
        ring_bytes=ring,
        rodata=rodata,
        choices=choices,
        wakeup_bytes=min(64 << 10, ring // 4),
        latency=latency,
        sensor_options=sensor_options,
    )
    # A stop signal after run() returns (a second Ctrl-C or SIGTERM during
    # the teardown, which detaches every program: ~0.4 s) must not kill us
    # before the exit line: these handlers, entered just before run() and
    # left after finish(), only note it (run() installs its own inside);
    # after them the stop signals stay ignored until the process is gone.
    teardown = contextlib.ExitStack()
    with teardown, session:
        if callable(columns):
            columns = columns(session)
        out = JsonSink() if as_json else TableSink(TablePrinter(columns))
        table = ProcessTable()
        table.seed()
        pipe = assemble_live(
            session, [out, *(sinks or [])], processes=table, keep=keep, poll_interval=latency
        )
        if first is not None:
            pipe.inject(first(table))
        teardown.enter_context(ServiceSignals(ignore_after=True))
        stats = pipe.run(duration, on_ready=lambda: ready(what))
        teardown.callback(finish, stats)
    return stats


def every(
    interval: float | None,
    count: int | None,
    tick: Callable[[], None],
    on_ready: Callable[[], None] | None = None,
) -> bool:
    """Call `tick` every `interval` seconds, `count` times or until a stop
    signal (Ctrl-C, SIGTERM and the others of vigil.signals; SIGHUP only
    reloads); with no interval, wait for the signal only.  `on_ready` runs
    once the signals are caught (a "ready" line must not come before).
    True when a signal ended it (bcc's tools print a last summary then).
    """
    with ServiceSignals() as signals:
        if on_ready is not None:
            on_ready()
        done = 0
        due = time.monotonic() + (interval or 0)
        while not signals.service() and (count is None or done < count):
            wait = 3600.0 if interval is None else due - time.monotonic()
            if wait > 0:
                signals.sleep(wait)  # returns early when a signal comes
                continue
            tick()
            done += 1
            due += interval
        signals.stop_notice()
        return signals.stopping
