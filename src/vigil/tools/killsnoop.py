"""`vigil killsnoop`: bcc's killsnoop, with the target's command and executable."""

from __future__ import annotations

import signal
import time

import click

from ..errors import ConfigError
from ..table import Column
from .live import live_options, run_live, time_columns


def parse_signal(text: str) -> int:
    """15, TERM, SIGTERM or sigterm -> 15."""
    if text.isdigit():
        number = int(text)
        if 0 <= number <= signal.SIGRTMAX:
            return number
    else:
        name = text.upper()
        name = name if name.startswith("SIG") else f"SIG{name}"
        try:
            return int(signal.Signals[name])
        except KeyError:
            pass
    raise ConfigError(
        f"-s {text!r}: not a signal (use a number 0-{int(signal.SIGRTMAX)} or a name)"
    )


@click.command()
@click.option("-x", "--failed", is_flag=True, help="Only failed signals (RESULT < 0).")
@click.option(
    "-p",
    "--pid",
    type=click.IntRange(1, 2**32 - 1),
    help="Only signals sent by this process (in kernel).",
)
@click.option("-s", "--signal", "sig", help="Only this signal, by number or name (in kernel).")
@click.option("-t", "--timestamp", is_flag=True, help="TIME(s), seconds since start, for TIME.")
@live_options
def killsnoop(failed, pid, sig, timestamp, as_json, duration, ring_mb, latency):
    """Trace signals sent, like bcc's killsnoop (TPID: the target; with
    --json also the target's exe and comm)."""
    rodata = {}
    if pid is not None:
        rodata["targ_pid"] = pid
    if sig is not None:
        rodata["targ_sig"] = parse_signal(sig)
    columns = time_columns(not timestamp, timestamp, time.time_ns()) + [
        Column("PID", 7, lambda ev: ev["pid"]),
        Column("COMM", 16, lambda ev: ev["comm"]),
        Column("SIG", 4, lambda ev: ev["sig"]),
        # as passed (pid, tid, or the pidfd's process): 0/-1/-PGID name groups
        Column("TPID", 7, lambda ev: ev["target_pid"] or ev["target_arg"]),
        Column("RESULT", 0, lambda ev: ev["ret"]),
    ]
    run_live(
        ["kill"],
        columns=columns,
        keep=(lambda ev: ev["ret"] < 0) if failed else None,
        as_json=as_json,
        duration=duration,
        ring_mb=ring_mb,
        latency=latency,
        what="tracing signals",
        rodata=rodata,
    )


COMMAND = killsnoop
