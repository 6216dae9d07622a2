"""bind and listen: which process bound which port, which sockets listen (bpf/listen.bpf.c)."""

from ..encoding import display
from ..net import finish_sockaddrs
from . import Attach, Sensor, hook, register


def _finish(ev: dict) -> None:
    finish_sockaddrs(ev)
    # the record ends after exe's NUL: what arrives is the string and its NUL
    ev["exe"] = ev["exe"].partition(b"\0")[0]


def endpoint(ev: dict) -> str:
    """`addr:port`, IPv6 in brackets, as URLs and `ss` write it."""
    addr = ev["laddr"] if ev["ip"] != 6 else f"[{ev['laddr']}]"
    return f"{addr}:{ev['lport']}"


def _origin(ev: dict) -> str:
    return "" if ev["origin"] == "syscall" else f" ({ev['origin']})"


def _describe_bind(ev: dict) -> str:
    return f"{ev['proto']} {endpoint(ev)}{_origin(ev)}  {display(ev['exe'])}"


def _describe_listen(ev: dict) -> str:
    return (
        f"{ev['proto']} {endpoint(ev)} backlog {ev['backlog']}{_origin(ev)}  {display(ev['exe'])}"
    )


BIND = register(
    Sensor(
        name="bind",
        object="listen",
        kinds=("bind",),
        summary="sockets bound to a local address and port, with the binding process",
        hooks=(
            hook(
                "bind",
                # after the call: the port the socket really got
                Attach("tracepoint", "syscalls/sys_exit_bind", ("bind_enter", "bind_exit")),
                # before the call: the port asked for; sees io_uring binds too
                Attach("cgroup", "bind4+bind6", ("bind4", "bind6")),
            ),
        ),
        finish=_finish,
        describe=_describe_bind,
    )
)

LISTEN = register(
    Sensor(
        name="listen",
        object="listen",
        kinds=("listen",),
        summary="sockets that start listening, with port, backlog and process",
        hooks=(
            hook(
                "listen",
                # listen(2) at its return, plus listens outside it (io_uring, kernel)
                Attach(
                    "tp_btf",
                    "inet_sock_set_state",
                    ("listen_state_btf", "listen_enter", "listen_exit"),
                ),
                Attach(
                    "raw_tp",
                    "inet_sock_set_state",
                    ("listen_state_raw", "listen_enter", "listen_exit"),
                ),
                # listen(2) only
                Attach("tracepoint", "syscalls/sys_exit_listen", ("listen_enter", "listen_exit")),
            ),
        ),
        finish=_finish,
        describe=_describe_listen,
    )
)
