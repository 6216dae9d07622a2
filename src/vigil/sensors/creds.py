"""setuid, setgid and capset: identity changes, before and after (bpf/creds.bpf.c)."""

from __future__ import annotations

from .. import caps
from . import Sensor, hook, register, result_text, tracepoint

_IDS = ("", "e", "s", "fs")


def _id_change(ev: dict, kind: str) -> str:
    """`uid 0->65534 euid 0->65534 ...` for the ids that changed, else `unchanged`."""
    parts = []
    for prefix in _IDS:
        old, new = ev[f"old_{prefix}{kind}"], ev[f"new_{prefix}{kind}"]
        if old != new:
            parts.append(f"{prefix}{kind} {old}->{new}")
    return " ".join(parts) or f"{kind}s unchanged"


def _args(ev: dict, n: int) -> str:
    return ", ".join(str(ev[f"arg{i}"]) for i in range(n))


_NARGS = {"setuid": 1, "setreuid": 2, "setresuid": 3, "setfsuid": 1}
_NARGS.update({k.replace("uid", "gid"): v for k, v in _NARGS.items()})


def _result(ev: dict) -> str:
    # setfsuid/setfsgid return the previous fs id, never an error
    if ev["syscall"] in ("setfsuid", "setfsgid"):
        return ""
    return " " + result_text(ev["ret"])


def _describe_setuid(ev: dict) -> str:
    call = ev["syscall"]
    return f"{call}({_args(ev, _NARGS.get(call, 3))}) {_id_change(ev, 'uid')}{_result(ev)}"


def _describe_setgid(ev: dict) -> str:
    call = ev["syscall"]
    return f"{call}({_args(ev, _NARGS.get(call, 3))}) {_id_change(ev, 'gid')}{_result(ev)}"


_SETS = ("effective", "permitted", "inheritable")


def _finish_capset(ev: dict) -> None:
    # capability names gained and lost per set, for people and rules
    for name in _SETS:
        old, new = ev[f"old_{name}"], ev[f"new_{name}"]
        ev[f"{name}_added"] = caps.names_of(new & ~old)
        ev[f"{name}_dropped"] = caps.names_of(old & ~new)


def _describe_capset(ev: dict) -> str:
    parts = []
    for name in _SETS:
        for sign, key in (("+", "added"), ("-", "dropped")):
            names = ev[f"{name}_{key}"]
            if names:
                parts.append(f"{name} {sign}{','.join(n.removeprefix('CAP_') for n in names)}")
    return f"capset {' '.join(parts) or 'unchanged'} {result_text(ev['ret'])}"


def _hooks(*calls: str) -> tuple:
    """One hook: every call's enter and exit programs (all stable tracepoints)."""
    programs = tuple(f"{call}_{side}" for call in calls for side in ("enter", "exit"))
    return (hook(calls[0], tracepoint(f"syscalls/sys_enter_{calls[0]}", *programs)),)


# A call that changed nothing comes once per process image, call, arguments
# and result (setuid(0) loops, daemons dropping privileges per request).
_UNIQUE = {"unique": 1}

SETUID = register(
    Sensor(
        name="setuid",
        object="creds",
        kinds=("setuid",),
        summary="setuid, setreuid, setresuid, setfsuid: user ids before and after",
        hooks=_hooks("setuid", "setreuid", "setresuid", "setfsuid"),
        describe=_describe_setuid,
        monitor_rodata=_UNIQUE,
    )
)

SETGID = register(
    Sensor(
        name="setgid",
        object="creds",
        kinds=("setgid",),
        summary="setgid, setregid, setresgid, setfsgid: group ids before and after",
        hooks=_hooks("setgid", "setregid", "setresgid", "setfsgid"),
        describe=_describe_setgid,
        monitor_rodata=_UNIQUE,
    )
)

CAPSET = register(
    Sensor(
        name="capset",
        object="creds",
        kinds=("capset",),
        summary="capset: capability sets before and after",
        hooks=_hooks("capset"),
        finish=_finish_capset,
        describe=_describe_capset,
        monitor_rodata=_UNIQUE,
    )
)
