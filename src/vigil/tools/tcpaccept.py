"""`vigil tcpaccept`: bcc's tcpaccept, in the accepting process."""

from __future__ import annotations

import time

import click

from .. import options as opt
from ..table import Column
from .live import live_options, run_live, time_columns


@click.command()
@click.option("-t", "--timestamp", is_flag=True, help="Add a TIME(s) column, seconds since start.")
@click.option("-T", "--time", "clock", is_flag=True, help="Add a TIME column, wall clock.")
@click.option("-p", "--pid", type=opt.PID, help="Only this process (in kernel).")
@live_options
def tcpaccept(timestamp, clock, pid, as_json, duration, ring_mb, latency):
    """Trace accepted TCP connections (IPv4, IPv6), like bcc's tcpaccept."""
    columns = time_columns(clock, timestamp, time.time_ns()) + [
        Column("PID", 7, lambda ev: ev["pid"]),
        Column("COMM", 16, lambda ev: ev["comm"]),
        Column("IP", 2, lambda ev: ev["ip"]),
        Column("RADDR", 16, lambda ev: ev["raddr"]),
        Column("RPORT", 5, lambda ev: ev["rport"]),
        Column("LADDR", 16, lambda ev: ev["laddr"]),
        Column("LPORT", 0, lambda ev: ev["lport"]),
    ]
    run_live(
        ["accept"],
        columns=columns,
        keep=lambda ev: ev["kind"] == "accept",
        as_json=as_json,
        duration=duration,
        ring_mb=ring_mb,
        latency=latency,
        what="tracing TCP accepts",
        rodata={"targ_pid": pid} if pid is not None else None,
    )


COMMAND = tcpaccept
