"""`vigil argdist`: bcc's argdist without a compiler: counts (-C) and log2
histograms (-H) of probe values, built in the kernel by a precompiled
program configured per spec (see vigil.argdist)."""

from __future__ import annotations

import time
from contextlib import ExitStack

import click

from .. import options as opt
from ..argdist import Aggregation, parse, printers
from ..argdist.runner import DEFAULT_MAX_ENTRIES
from .live import every, ready

EPILOG = """\b
Specs: TYPE:TARGET:FUNC(SIGNATURE)[:TYPES:EXPRS[:FILTER]][#LABEL]
  t:CATEGORY:EVENT()            tracepoint (names: its fields, see tracefs format)
  p:BINARY:FUNC(SIGNATURE)      uprobe (arg1..arg6, signature names)
  r:BINARY:FUNC()               uretprobe ($retval)
  u:BINARY:PROVIDER:PROBE()     USDT probe (arg1..arg12)
Every probe also has comm, pcomm, pid, tid, uid, gid, ppid, cgroup, cpu.
FILTER: NAME OP CONSTANT joined by &&, OP in == != < <= > >=, in the kernel.

\b
Examples:
  vigil argdist -C 't:capability:cap_capable():int:comm,cap'
  vigil argdist -C 't:syscalls:sys_exit_openat():long:ret:ret<0' -T 5
  vigil argdist -H 't:block:block_rq_issue():u32:bytes'
  vigil argdist -H 't:syscalls:sys_enter_write():size_t:count,comm'
  vigil argdist -C 'p:/bin/bash:readline()'
  vigil argdist -C 'r:c:getpid():int:$retval'
"""


@click.command(epilog=EPILOG)
@click.option(
    "-C", "--count", "count_specs", multiple=True, help="Count by these keys (repeatable)."
)
@click.option("-H", "--histogram", "hist_specs", multiple=True, help="Log2 histogram (repeatable).")
@click.option(
    "-i",
    "--interval",
    default=1.0,
    show_default=True,
    type=opt.INTERVAL,
    help="Seconds between summaries.",
)
@click.option("-n", "--number", "number", type=opt.COUNT, help="Stop after this many.")
@click.option("-T", "--top", type=opt.COUNT0, help="Only the TOP largest counts.")
@click.option("-p", "--pid", type=opt.PID, help="Only this process (filtered in the kernel).")
@click.option("-c", "--cumulative", is_flag=True, help="Do not clear counts between summaries.")
@click.option(
    "--max-entries",
    default=DEFAULT_MAX_ENTRIES,
    show_default=True,
    type=click.IntRange(1, 2**32 - 1),  # a map's max_entries is a u32
    help="Distinct keys kept per spec (events past it are counted as lost).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per spec per interval.")
def argdist(count_specs, hist_specs, interval, number, top, pid, cumulative, max_entries, as_json):
    """Count or histogram probe values in the kernel, like bcc's argdist."""
    if not count_specs and not hist_specs:
        raise click.UsageError("give at least one -C or -H spec")
    # parse all first: a bad spec fails before anything is loaded
    specs = [parse(s, True, pid=pid) for s in hist_specs]
    specs += [parse(s, False, pid=pid) for s in count_specs]
    with ExitStack() as stack:
        aggs = [stack.enter_context(Aggregation(s, max_entries=max_entries)) for s in specs]

        def tick() -> None:
            if not as_json:
                printers.emit([time.strftime("[%H:%M:%S]")])
            for agg in aggs:
                show(agg, top, as_json, not cumulative)

        what = f"{len(aggs)} spec{'s' if len(aggs) > 1 else ''} attached"
        if every(interval, number, tick, on_ready=lambda: ready(what)):
            tick()  # Ctrl-C: the interval under way counts too, as in bcc
        for agg in aggs:
            _report_losses(agg)


def show(agg: Aggregation, top: int | None, as_json: bool, clear: bool = True) -> None:
    spec = agg.spec
    if spec.histogram:
        hists = agg.read_hist(clear)
        label = spec.label or spec.value.text
        if as_json:
            printers.emit(printers.json_hist(spec.text, label, hists, agg.lost, agg.errors))
        else:
            printers.emit(printers.hist_lines(spec.title, hists, label))
        return
    rows = agg.read(clear)
    if as_json:
        if top is not None:
            rows = rows[:top]
        printers.emit(printers.json_counts(spec.text, rows, agg.lost, agg.errors))
    else:
        printers.emit(printers.count_lines(spec.title, rows, top))


def _report_losses(agg: Aggregation) -> None:
    lost, errors = agg.lost, agg.errors
    if lost:
        click.echo(
            f"vigil: {agg.spec.text}: {lost} events not counted: map full (raise --max-entries)",
            err=True,
        )
    if errors:
        click.echo(
            f"vigil: {agg.spec.text}: {errors} events not counted: a value could not be read",
            err=True,
        )


COMMAND = argdist
