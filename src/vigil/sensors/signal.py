"""kill and ptrace: signals sent and processes taken over (bpf/signal.bpf.c)."""

from __future__ import annotations

import signal

from ..encoding import display
from . import Attach, Sensor, hook, register, result_text

_KILL_PROGRAMS = tuple(
    f"kill_{side}_{call}"
    for call in ("kill", "tkill", "tgkill", "pidfd", "rt_sigqueueinfo", "rt_tgsigqueueinfo")
    for side in ("enter", "exit")
)
_PTRACE_PROGRAMS = ("ptrace_enter", "ptrace_exit")


def signal_name(sig: int) -> str | None:
    """SIGTERM, SIGRTMIN+3...; None for 0 (a probe) or a number Linux does not use."""
    if sig == 0:
        return None
    try:
        return signal.Signals(sig).name
    except ValueError:
        pass
    if signal.SIGRTMIN < sig <= signal.SIGRTMAX:
        return f"SIGRTMIN+{sig - signal.SIGRTMIN}"
    return None


def _finish_kill(ev: dict) -> None:
    ev["sig_name"] = signal_name(ev["sig"])


def _target(ev: dict) -> str:
    if not ev["target_pid"]:
        return (
            f"pid {ev['target_arg']}"
            if ev.get("syscall") != "pidfd_send_signal"
            else f"pidfd {ev['target_arg']}"
        )
    who = ev.get("target_comm") or b"?"
    exe = ev.get("target_exe")
    text = f"{ev['target_pid']} ({display(who)})"
    return f"{text} {display(exe)}" if exe else text


def _describe_kill(ev: dict) -> str:
    sig = ev["sig_name"] or ("0 (probe)" if ev["sig"] == 0 else str(ev["sig"]))
    return f"{ev['syscall']} {sig} -> {_target(ev)} {result_text(ev['ret'])}"


def _describe_ptrace(ev: dict) -> str:
    text = f"ptrace {ev['request']} -> {_target(ev)}"
    if ev["request"] in ("poketext", "pokedata", "pokeuser"):
        text += f" at {ev['addr']:#x}"
    return f"{text} {result_text(ev['ret'])}"


KILL = register(
    Sensor(
        name="kill",
        object="signal",
        kinds=("kill",),
        summary="signals sent (kill, tkill, tgkill, pidfd_send_signal), with the target and result",
        hooks=(
            hook(
                "kill",
                # the task the kernel signalled, in any pid namespace
                Attach("lsm", "task_kill", ("kill_lsm_task_kill", *_KILL_PROGRAMS)),
                Attach("tracepoint", "syscalls/sys_enter_kill", _KILL_PROGRAMS),
            ),
        ),
        finish=_finish_kill,
        describe=_describe_kill,
        related_pids=("target_pid",),
        # kill(pid, 0) liveness probes: once per process image, target and result
        monitor_rodata={"unique": 1},
    )
)

PTRACE = register(
    Sensor(
        name="ptrace",
        object="signal",
        kinds=("ptrace",),
        summary="ptrace attach, seize, traceme and writes (poke, setregs) into another process",
        hooks=(
            hook(
                "ptrace",
                Attach(
                    "lsm", "ptrace_access_check", ("ptrace_lsm_access_check", *_PTRACE_PROGRAMS)
                ),
                Attach("tracepoint", "syscalls/sys_enter_ptrace", _PTRACE_PROGRAMS),
            ),
        ),
        describe=_describe_ptrace,
        related_pids=("target_pid",),
        monitor_rodata={"unique": 1},
    )
)
