"""`vigil tcpretrans`: bcc's tcpretrans; -c counts per flow in the kernel."""

from __future__ import annotations

import math
import sys
import time

import click
import orjson

from .. import loader, records
from .. import options as opt
from ..counters import CounterMap
from ..encoding import iso_time
from ..errors import LayoutError
from ..net import finish_sockaddrs
from ..sensors.tcp import endpoint
from ..table import Column, TablePrinter, clock_time
from .live import every, finish, live_options, ready, run_live

COUNTS_MAP = "retrans_counts"  # bpf/retransmit.bpf.c
FLOW_STRUCT = "retransmit_flow"  # bpf/retransmit.h
COUNT_COLUMNS = [
    Column("LADDR:LPORT", 28, lambda f: endpoint(f["laddr"], f["lport"])),
    Column("<->", 3, lambda f: "<->"),
    Column("RADDR:RPORT", 28, lambda f: endpoint(f["raddr"], f["rport"])),
    Column("RETRANSMITS", 0, lambda f: f["retransmits"]),
]


class FlowCounts:
    """Reads and clears the kernel's per-flow counts; keys decoded from BTF."""

    def __init__(self, session: loader.Session):
        self.map = session.map(COUNTS_MAP)
        self.decode, self.key_size = records.struct_decoder(session.btf_of(COUNTS_MAP), FLOW_STRUCT)
        if self.key_size != self.map.key_size:
            raise LayoutError(
                f"{FLOW_STRUCT} is {self.key_size} bytes, map key {self.map.key_size}"
            )
        self.counts = CounterMap(self.map, self.key_size)
        self.totals: dict[bytes, dict] = {}

    def take(self) -> list[dict]:
        """Counts since the last call, largest first (none lost to races)."""
        out = []
        for key, n in self.counts.read():
            flow = self.decode(key)
            finish_sockaddrs(flow)
            flow["retransmits"] = n
            out.append(flow)
            total = self.totals.setdefault(key, dict(flow, retransmits=0))
            total["retransmits"] += n
        return sorted(out, key=lambda f: -f["retransmits"])

    def total(self) -> list[dict]:
        return sorted(self.totals.values(), key=lambda f: -f["retransmits"])


def _print_block(title: str, flows: list[dict], as_json: bool, scope: str) -> None:
    if as_json:
        now = iso_time(time.time_ns())
        for f in flows:
            sys.stdout.buffer.write(orjson.dumps({"time": now, "scope": scope, **f}) + b"\n")
        sys.stdout.flush()
        return
    print(title)
    printer = TablePrinter(COUNT_COLUMNS)
    printer.header()
    if flows:
        printer.rows(flows)
    print(flush=True)


def count_flows(interval: float, as_json: bool, duration: float | None) -> None:
    # Nothing goes through the ring in this mode: the smallest one will do.
    with loader.Session(["retransmit"], ring_bytes=4096, rodata={"count_only": 1}) as session:
        counts = FlowCounts(session)

        def tick() -> None:
            flows = counts.take()
            if flows:
                _print_block(time.strftime("%H:%M:%S"), flows, as_json, "interval")

        ticks = None if duration is None else max(1, math.ceil(duration / interval))
        every(
            interval,
            ticks,
            tick,
            on_ready=lambda: ready(f"counting TCP retransmits per flow every {interval:g}s"),
        )
        tick()  # what came in since the last interval
        _print_block("Total since start:", counts.total(), as_json, "total")
        stats = session.kernel_stats()
    finish(stats)


@click.command()
@click.option("-c", "--count", is_flag=True, help="Count per flow in the kernel; print summaries.")
@click.option(
    "-i",
    "--interval",
    default=1.0,
    show_default=True,
    type=opt.INTERVAL,
    help="With -c: seconds between summaries (a total is printed at exit too).",
)
@live_options
def tcpretrans(count, interval, as_json, duration, ring_mb, latency):
    """Trace TCP retransmits, like bcc's tcpretrans (-c: counts per flow)."""
    if count:
        count_flows(interval, as_json, duration)
        return
    columns = [
        Column("TIME", 8, clock_time),
        Column("PID", 7, lambda ev: ev["pid"]),
        Column("IP", 2, lambda ev: ev["ip"]),
        Column("LADDR:LPORT", 28, lambda ev: endpoint(ev["laddr"], ev["lport"])),
        Column("T>", 2, lambda ev: "R>"),
        Column("RADDR:RPORT", 28, lambda ev: endpoint(ev["raddr"], ev["rport"])),
        Column("STATE", 0, lambda ev: ev["state"]),
    ]
    run_live(
        ["retransmit"],
        columns=columns,
        keep=lambda ev: ev["kind"] == "retransmit",
        as_json=as_json,
        duration=duration,
        ring_mb=ring_mb,
        latency=latency,
        what="tracing TCP retransmits",
    )


COMMAND = tcpretrans
