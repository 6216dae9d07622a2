"""`vigil opensnoop`: bcc's opensnoop for the watched paths (or every open)."""

from __future__ import annotations

import os
import time

import click

from .. import watchlist
from ..table import Column
from .live import live_options, run_live, time_columns


def _fd(ev: dict) -> int:
    return ev["ret"] if ev["ret"] >= 0 else -1


def _err(ev: dict) -> int:
    return -ev["ret"] if ev["ret"] < 0 else 0


def _path(ev: dict) -> str:
    path = os.fsdecode(ev["path"])
    # no struct file: what the caller passed, made absolute
    return path if ev["path_source"] == "kernel" else f"{path} (as passed)"


@click.command()
@click.option("-T", "--timestamp", is_flag=True, help="Include a TIME column.")
@click.option("-x", "--failed", is_flag=True, help="Only failed opens.")
@click.option(
    "-p", "--pid", type=click.IntRange(1, 2**32 - 1), help="Only this process (in kernel)."
)
@click.option("-n", "--name", help="Only process names containing this.")
@click.option(
    "--all",
    "all_opens",
    is_flag=True,
    help="Every open on the host, not just the watch list (streams a lot).",
)
@watchlist.watch_options
@live_options
def opensnoop(
    timestamp, failed, pid, name, all_opens, watch, watch_file, as_json, duration, ring_mb, latency
):
    """Trace opens of watched paths, like bcc's opensnoop (PATH: resolved by
    the kernel from the opened file; a failed open shows the caller's
    string, made absolute, "(as passed)")."""
    rodata = {}
    if pid is not None:
        rodata["targ_tgid"] = pid
    if all_opens:
        rodata["match_all"] = 1
    needle = os.fsencode(name) if name else None

    def keep(ev: dict) -> bool:
        if failed and ev["ret"] >= 0:
            return False
        return needle is None or needle in ev["comm"]

    columns = time_columns(timestamp, False, time.time_ns()) + [
        Column("PID", 7, lambda ev: ev["pid"]),
        Column("COMM", 16, lambda ev: ev["comm"]),
        Column("FD", 3, _fd),
        Column("ERR", 3, _err),
        Column("PATH", 0, _path),
    ]
    run_live(
        ["open"],
        columns=columns,
        keep=keep if failed or needle else None,
        as_json=as_json,
        duration=duration,
        ring_mb=ring_mb,
        latency=latency,
        what="tracing every open" if all_opens else "tracing opens of watched paths",
        rodata=rodata,
        sensor_options=watchlist.sensor_options(watch, watch_file),
    )


COMMAND = opensnoop
