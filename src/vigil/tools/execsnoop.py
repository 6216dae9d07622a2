"""`vigil execsnoop`: bcc's execsnoop, failed execs included with -x."""

from __future__ import annotations

import time

import click

from ..encoding import display_args
from ..table import Column
from .live import live_options, regex, run_live, time_columns


@click.command()
@click.option("-x", "--fails", is_flag=True, help="Include failed execs (RET < 0).")
@click.option("-t", "--timestamp", is_flag=True, help="Add a TIME(s) column, seconds since start.")
@click.option("-T", "--time", "clock", is_flag=True, help="Add a TIME column, wall clock.")
@click.option("-u", "--uid", type=click.IntRange(0, 2**32 - 2), help="Only this uid (in kernel).")
@click.option("-n", "--name", help="Only commands whose name matches this regex.")
@click.option("-l", "--line", help="Only commands whose argument line matches this regex.")
@live_options
def execsnoop(fails, timestamp, clock, uid, name, line, as_json, duration, ring_mb, latency):
    """Trace process executions, like bcc's execsnoop (-x: failed ones too)."""
    name_re, line_re = regex(name, "name"), regex(line, "line")

    def keep(ev: dict) -> bool:
        if ev["kind"] != "exec" or (ev["ret"] != 0 and not fails):
            return False
        if name_re and not name_re.search(ev["comm"]):
            return False
        return not (line_re and not line_re.search(b" ".join(ev["args"])))

    columns = time_columns(clock, timestamp, time.time_ns()) + [
        Column("PCOMM", 16, lambda ev: ev["comm"]),
        Column("PID", 7, lambda ev: ev["pid"]),
        Column("PPID", 7, lambda ev: ev["ppid"]),
        Column("RET", 3, lambda ev: ev["ret"], right=True),
        Column("ARGS", 0, lambda ev: display_args(ev["args"]) or ev["filename"]),
    ]
    run_live(
        ["exec"],
        columns=columns,
        keep=keep,
        as_json=as_json,
        duration=duration,
        ring_mb=ring_mb,
        latency=latency,
        what="tracing execs",
        rodata={"targ_uid": uid} if uid is not None else None,
    )


COMMAND = execsnoop
