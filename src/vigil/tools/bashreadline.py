"""`vigil bashreadline`: bcc's bashreadline, with the typing user's UID."""

from __future__ import annotations

import time

import click

from .. import options as opt
from ..sensors.bashreadline import BASH, require_readline
from ..table import Column
from .live import live_options, run_live, time_columns


def columns(clock: bool, timestamp: bool, start_ns: int) -> list[Column]:
    return time_columns(clock or not timestamp, timestamp, start_ns) + [
        Column("PID", 7, lambda ev: ev["pid"]),
        Column("UID", 6, lambda ev: ev["uid"]),
        # bytes as typed (Ctrl-V ESC... included): the printer escapes them for the terminal
        Column("COMMAND", 0, lambda ev: ev["line"]),
    ]


@click.command()
@click.option("-p", "--pid", type=opt.PID, help="Only this bash process (in kernel).")
@click.option("-t", "--timestamp", is_flag=True, help="TIME(s), seconds since start, for TIME.")
@click.option("-T", "--time", "clock", is_flag=True, help="TIME, wall clock (the default).")
@live_options
def bashreadline(pid, timestamp, clock, as_json, duration, ring_mb, latency):
    """Print command lines typed into interactive bash shells, like bcc's bashreadline."""
    bash = require_readline(BASH)  # a clear error before anything loads
    run_live(
        ["bashreadline"],
        columns=columns(clock, timestamp, time.time_ns()),
        as_json=as_json,
        duration=duration,
        ring_mb=ring_mb,
        latency=latency,
        what=f"tracing readline in {bash}",
        rodata={"targ_pid": pid} if pid is not None else None,
    )


COMMAND = bashreadline
