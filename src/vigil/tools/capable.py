"""`vigil capable`: bcc's capable, with each check's verdict."""

from __future__ import annotations

import os
import time

import click

from .. import options as opt
from ..table import Column
from .live import live_options, run_live, time_columns

# AUDIT as bcc prints it (1 audited, 0 CAP_OPT_NOAUDIT); "-" where the
# attach point cannot tell (the tracepoint has no `opts`).
_AUDIT = {"yes": "1", "no": "0"}


@click.command()
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    help="Include non-audit checks (CAP_OPT_NOAUDIT).  Through the tracepoint "
    "only the memory-accounting check is known as one; other checks show either way.",
)
@click.option(
    "--unique",
    is_flag=True,
    help="Show a check once per process image, capability, verdict and namespace kind (in kernel).",
)
@click.option("-p", "--pid", type=opt.PID, help="Only this process (in kernel).")
@click.option("-t", "--timestamp", is_flag=True, help="TIME(s), seconds since start, for TIME.")
@click.option("-T", "--time", "clock", is_flag=True, help="TIME, wall clock (the default).")
@live_options
def capable(verbose, unique, pid, timestamp, clock, as_json, duration, ring_mb, latency):
    """Trace capability checks, like bcc's capable, with VERDICT (allowed/denied)."""
    columns = time_columns(clock or not timestamp, timestamp, time.time_ns()) + [
        Column("UID", 6, lambda ev: ev["uid"]),
        Column("PID", 7, lambda ev: ev["pid"]),
        Column("COMM", 16, lambda ev: ev["comm"]),
        Column("CAP", 4, lambda ev: ev["cap"]),
        Column("NAME", 22, lambda ev: ev["cap_name"] or "?"),
        Column("AUDIT", 5, lambda ev: _AUDIT.get(ev["audit"], "-")),
        Column("VERDICT", 0, lambda ev: ev["verdict"]),
    ]
    rodata = {
        "skip_noaudit": 0 if verbose else 1,
        "unique": 1 if unique else 0,
        # our own checks (reading /proc for the process table) are noise,
        # as bcc's capable also skips itself; -p for our pid still works
        "ignore_pid": 0 if pid == os.getpid() else os.getpid(),
    }
    if pid is not None:
        rodata["targ_pid"] = pid
    run_live(
        ["capable"],
        columns=columns,
        as_json=as_json,
        duration=duration,
        ring_mb=ring_mb,
        latency=latency,
        what="tracing capability checks",
        rodata=rodata,
    )


COMMAND = capable
