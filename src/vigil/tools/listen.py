"""`vigil listen`: which process bound which port, and what starts listening.

Sockets already bound or listening when it starts come first (from the
start-up snapshot, TIME "-"), then every bind and listen as it happens.
BACKLOG is "-" for binds; ADDR is the local address as text, without
brackets (the port has its own column).
"""

from __future__ import annotations

import time

import click

from .. import listeners
from .. import options as opt
from ..table import Column
from .live import live_options, run_live, time_columns

KINDS = ("bind", "listen")


def _unless_snapshot(col: Column) -> Column:
    """A time column shows "-" for snapshot rows: when they were bound is unknown."""
    value = col.value
    return Column(
        col.header, col.width, lambda ev: "-" if ev["origin"] == "snapshot" else value(ev)
    )


def columns(clock: bool, timestamp: bool, start_ns: int) -> list[Column]:
    times = time_columns(clock or not timestamp, timestamp, start_ns)
    return [_unless_snapshot(c) for c in times] + [
        Column("PID", 7, lambda ev: ev["pid"]),
        Column("COMM", 16, lambda ev: ev["comm"] or "-"),
        Column("PROTO", 5, lambda ev: ev["proto"]),
        Column("ADDR", 24, lambda ev: ev["laddr"]),
        Column("PORT", 5, lambda ev: ev["lport"]),
        Column("BACKLOG", 7, lambda ev: ev["backlog"] if ev["kind"] == "listen" else "-"),
        Column("EXE", 0, lambda ev: ev["exe"] or "-"),
    ]


@click.command()
@click.option("-t", "--timestamp", is_flag=True, help="TIME(s) column: seconds since start.")
@click.option("-T", "--time", "clock", is_flag=True, help="TIME column, wall clock (default).")
@click.option("-p", "--pid", type=opt.PID, help="Only this process (in kernel).")
@click.option("--no-snapshot", is_flag=True, help="Do not list sockets already bound or listening.")
@live_options
def listen(timestamp, clock, pid, no_snapshot, as_json, duration, ring_mb, latency):
    """Trace binds and listens: which process opened which port (TCP, UDP)."""
    start_ns = time.time_ns()

    def snapshot(table) -> list[dict]:
        # taken after attach: a socket opened meanwhile shows twice, never zero times
        return listeners.snapshot_events(KINDS, pid=pid, processes=table)

    run_live(
        list(KINDS),
        columns=columns(clock, timestamp, start_ns),
        first=None if no_snapshot else snapshot,
        as_json=as_json,
        duration=duration,
        ring_mb=ring_mb,
        latency=latency,
        what="tracing binds and listens",
        rodata={"targ_pid": pid} if pid is not None else None,
    )


COMMAND = listen
