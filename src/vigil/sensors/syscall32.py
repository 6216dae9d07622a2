"""syscall32: 32-bit syscalls, which the syscall tracepoints never see
(bpf/syscall32.h; the program is module.bpf.c's every-syscall one)."""

import platform

from . import Sensor, hook, register, result_text
from .module import every_syscall_exit


def _finish(ev: dict) -> None:
    ia32, x32 = ev.pop("ia32_syscall"), ev.pop("x32_syscall")
    name = ia32 if ev["abi"] == "ia32" else x32
    # a number the build's headers did not name stays an int: shown as such
    ev["syscall"] = name if isinstance(name, str) else None
    ev["mode32"] = bool(ev["mode32"])


def _describe(ev: dict) -> str:
    call = ev["syscall"] or f"#{ev['nr']}"
    who = "32-bit program" if ev["mode32"] else "64-bit program"
    return f"{ev['abi']} {call} from a {who} {result_text(ev['ret'])}"


# x86_64 only: int $0x80 and x32 are x86's (arm64's aarch32 tasks are left
# out: a 64-bit arm64 process cannot make a 32-bit call).
if platform.machine() == "x86_64":
    SENSOR = register(
        Sensor(
            name="syscall32",
            object="module",
            kinds=("syscall32",),
            summary="32-bit syscalls (int $0x80, x32): invisible to the syscall tracepoints",
            hooks=(hook("syscall32", *every_syscall_exit(("exit_syscall32", 1))),),
            finish=_finish,
            describe=_describe,
        )
    )
