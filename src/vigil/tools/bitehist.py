"""`vigil bitehist`: bcc's bitehist, block I/O sizes as a log2 histogram of
KiB, counted in the kernel by the argdist program (no compiler)."""

from __future__ import annotations

import functools
import os
import time

import click

from .. import options as opt
from ..argdist import Aggregation, parse, printers
from .live import every, ready

# bcc's bitehist buckets req->__data_len / 1024; block_rq_issue's `bytes` is that length.
SPEC = "t:block:block_rq_issue():u32:bytes/1024"
DISK_KEY = "dev"
MINORBITS = 20  # the kernel's dev_t in trace records: major << 20 | minor


@functools.lru_cache(maxsize=256)
def disk_name(dev: int) -> str:
    """A kernel dev_t as its disk's name (/sys/dev/block/M:m/uevent), else M:m."""
    majmin = f"{dev >> MINORBITS}:{dev & ((1 << MINORBITS) - 1)}"
    try:
        with open(os.path.join("/sys/dev/block", majmin, "uevent")) as f:
            for line in f:
                if line.startswith("DEVNAME="):
                    return line.strip().partition("=")[2]
    except OSError:
        pass
    return majmin


@click.command()
@click.option(
    "-i",
    "--interval",
    type=opt.INTERVAL,
    help="Print every INTERVAL seconds (default: once, at Ctrl-C, like bcc).",
)
@click.option("-n", "--number", type=opt.COUNT, help="Stop after this many summaries.")
@click.option("-D", "--disks", is_flag=True, help="One histogram per disk.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per summary.")
def bitehist(interval, number, disks, as_json):
    """Block device I/O size histogram (KiB), like bcc's bitehist."""
    if number is not None and interval is None:
        interval = 1.0
    spec = parse(SPEC + (f",{DISK_KEY}" if disks else ""), histogram=True)
    with Aggregation(spec) as agg:

        def tick() -> None:
            hists = agg.read_hist()
            if disks:
                hists = [({"disk": disk_name(k[DISK_KEY])}, slots) for k, slots in hists]
            if as_json:
                printers.emit(printers.json_hist(spec.text, "kbytes", hists, agg.lost, agg.errors))
                return
            lines = [] if interval is None else [time.strftime("[%H:%M:%S]")]
            lines += printers.hist_lines(None, hists, "kbytes")
            if lines:
                printers.emit(lines + [""])

        interrupted = every(interval, number, tick, on_ready=lambda: ready("tracing block I/O"))
        if interval is None or interrupted:
            tick()  # bcc prints its histogram at Ctrl-C


COMMAND = bitehist
