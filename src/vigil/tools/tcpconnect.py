"""`vigil tcpconnect`: bcc's tcpconnect, with each connect's outcome."""

from __future__ import annotations

import time

import click

from .. import options as opt
from ..sensors.tcp import connect_rodata, ports_max, result_text
from ..table import Column
from .live import live_options, run_live, time_columns


def parse_ports(values: tuple[str, ...]) -> list[int]:
    """-P 80 -P 443,8080 -> [80, 443, 8080]; at most ports_max() (kernel filter)."""
    ports: list[int] = []
    for value in values:
        for part in value.split(","):
            part = part.strip()
            if not part:
                continue
            # ASCII digits only ("²".isdigit() is true and int() refuses it),
            # and few of them (int() refuses more than 4300)
            digits = part.isascii() and part.isdigit() and len(part) <= 5
            if not digits or not 0 < int(part) < 65536:
                raise click.BadParameter(f"{part!r} is not a port (1-65535)", param_hint="-P")
            ports.append(int(part))
    ports = list(dict.fromkeys(ports))
    if len(ports) > ports_max():
        raise click.BadParameter(f"at most {ports_max()} ports", param_hint="-P")
    return ports


@click.command()
@click.option("-t", "--timestamp", is_flag=True, help="Add a TIME(s) column, seconds since start.")
@click.option("-T", "--time", "clock", is_flag=True, help="Add a TIME column, wall clock.")
@click.option("-p", "--pid", type=opt.PID, help="Only this process (in kernel).")
@click.option(
    "-P",
    "--port",
    "ports",
    multiple=True,
    help="Only these destination ports (in kernel): repeat or comma list, as many as"
    " bpf/connect.h's CONNECT_PORTS_MAX.",
)
@live_options
def tcpconnect(timestamp, clock, pid, ports, as_json, duration, ring_mb, latency):
    """Trace active TCP connects (IPv4, IPv6) and how they ended, like bcc's tcpconnect."""
    ports = parse_ports(ports)
    columns = time_columns(clock, timestamp, time.time_ns()) + [
        Column("PID", 7, lambda ev: ev["pid"]),
        Column("COMM", 16, lambda ev: ev["comm"]),
        Column("IP", 2, lambda ev: ev["ip"]),
        Column("SADDR", 16, lambda ev: ev["laddr"]),
        Column("DADDR", 16, lambda ev: ev["raddr"]),
        Column("DPORT", 5, lambda ev: ev["rport"]),
        Column("RESULT", 0, result_text),
    ]
    run_live(
        ["connect"],
        columns=columns,
        keep=lambda ev: ev["kind"] == "connect",
        as_json=as_json,
        duration=duration,
        ring_mb=ring_mb,
        latency=latency,
        what="tracing TCP connects",
        rodata=connect_rodata(pid, ports) or None,
    )


COMMAND = tcpconnect
