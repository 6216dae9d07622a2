"""TCP sensors: active connects, accepts and retransmits.

connect (bpf/connect.bpf.c): who connected where, and how it ended.  Best
attach: the sock:inet_sock_set_state tracepoint (connect time, outcome and
latency).  Fallback: cgroup/connect4 + connect6 (who and where only).

accept (bpf/accept.bpf.c): the process that accepted, and both ends.

retransmit (bpf/retransmit.bpf.c): retransmitted segments per flow; the
header is whatever task was on the CPU, rarely the socket's owner.
"""

from __future__ import annotations

import errno
import functools

from ..errors import ConfigError
from ..net import finish_sockaddrs, tcp_state
from . import Attach, Sensor, hook, register, tracepoint


@functools.cache
def ports_max() -> int:
    """How many ports connect's kernel filter holds: the length of its
    `targ_ports` array (CONNECT_PORTS_MAX in bpf/connect.h), from BTF."""
    from .. import _libbpf as bpf
    from .. import paths, records

    btf = bpf.Btf.from_file(paths.bpf_object("connect"))
    try:
        type_id, _off, _size = records.datasec(btf, ".rodata")["targ_ports"]
        _elem, count = records.strip_qualifiers(btf, type_id).array()
    finally:
        btf.close()
    return count


def endpoint(addr: str, port: int) -> str:
    """addr:port, with IPv6 addresses in brackets ([::1]:80)."""
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def connect_rodata(pid: int | None = None, ports: list[int] | tuple[int, ...] = ()) -> dict:
    """.rodata filters of the connect object: targ_pid, targ_ports, targ_nports.

    targ_ports is a `__u16[CONNECT_PORTS_MAX]` array, given as a list (unused slots are zero).
    """
    out: dict = {}
    if pid is not None:
        out["targ_pid"] = pid
    ports = list(dict.fromkeys(ports))
    if ports:
        if len(ports) > ports_max():
            raise ConfigError(f"at most {ports_max()} ports can be filtered in the kernel")
        out["targ_ports"] = ports  # a __u16 array: the loader encodes arrays from BTF
        out["targ_nports"] = len(ports)
    return out


def result_text(ev: dict) -> str:
    """The outcome as a word; other errors carry their errno name."""
    result = ev["result"]
    if result == "error" and ev["error"]:
        return f"error:{errno.errorcode.get(ev['error'], ev['error'])}"
    return str(result)


def _describe_connect(ev: dict) -> str:
    latency = f" in {ev['latency_ns'] / 1e6:.3f}ms" if ev["latency_ns"] else ""
    return f"{endpoint(ev['laddr'], ev['lport'])} -> {endpoint(ev['raddr'], ev['rport'])} {result_text(ev)}{latency}"


def _describe_accept(ev: dict) -> str:
    return f"{endpoint(ev['laddr'], ev['lport'])} <- {endpoint(ev['raddr'], ev['rport'])} fd {ev['fd']}"


def _finish_retransmit(ev: dict) -> None:
    finish_sockaddrs(ev)
    ev["state"] = tcp_state(ev["state"])


def _describe_retransmit(ev: dict) -> str:
    err = f" err={ev['err']}" if ev["err"] else ""
    return f"{endpoint(ev['laddr'], ev['lport'])} R> {endpoint(ev['raddr'], ev['rport'])} {ev['state']}{err}"


CONNECT = register(
    Sensor(
        name="connect",
        object="connect",
        kinds=("connect",),
        summary="active TCP connects, with their outcome and latency",
        hooks=(
            hook(
                "connect",
                tracepoint("sock/inet_sock_set_state", "handle_set_state"),
                Attach("cgroup", "connect", ("cgroup_connect4", "cgroup_connect6")),
            ),
        ),
        finish=finish_sockaddrs,
        describe=_describe_connect,
    )
)

ACCEPT = register(
    Sensor(
        name="accept",
        object="accept",
        kinds=("accept",),
        summary="accepted TCP connections, in the accepting process",
        hooks=(
            hook("accept4", tracepoint("syscalls/sys_exit_accept4", "handle_accept4_exit")),
            hook("accept", tracepoint("syscalls/sys_exit_accept", "handle_accept_exit")),
        ),
        finish=finish_sockaddrs,
        describe=_describe_accept,
    )
)

RETRANSMIT = register(
    Sensor(
        name="retransmit",
        object="retransmit",
        kinds=("retransmit",),
        summary="TCP retransmits (flow and state; the task is whoever was on the CPU)",
        hooks=(hook("retransmit", tracepoint("tcp/tcp_retransmit_skb", "handle_retransmit")),),
        finish=_finish_retransmit,
        describe=_describe_retransmit,
    )
)

__all__ = ["ACCEPT", "CONNECT", "RETRANSMIT", "connect_rodata", "endpoint", "result_text"]
