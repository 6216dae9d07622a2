"""memfd: memfd_create calls, the first step of a fileless exec (bpf/memfd.bpf.c)."""

from ..encoding import display
from . import Sensor, hook, register, result_text, tracepoint

# include/uapi/linux/memfd.h
MFD_FLAGS = {
    0x1: "MFD_CLOEXEC",
    0x2: "MFD_ALLOW_SEALING",
    0x4: "MFD_HUGETLB",
    0x8: "MFD_NOEXEC_SEAL",
    0x10: "MFD_EXEC",
}


def _finish(ev: dict) -> None:
    flags = ev["mfd_flags"]
    names = [name for bit, name in MFD_FLAGS.items() if flags & bit]
    unknown = flags & ~sum(MFD_FLAGS)
    if unknown:  # refused by this kernel (EINVAL), or newer than the table
        names.append(f"{unknown:#x}")
    ev["mfd_flag_names"] = names


def _describe(ev: dict) -> str:
    flags = "|".join(ev["mfd_flag_names"]) or "0"
    source = "" if ev["name_source"] == "kernel" else " (as passed)"
    return f"memfd_create {display(ev['name'])}{source} {flags} {result_text(ev['ret'])}"


SENSOR = register(
    Sensor(
        name="memfd",
        object="memfd",
        kinds=("memfd",),
        summary="memfd_create: anonymous in-memory files (fileless execs start here)",
        hooks=(
            hook(
                "memfd_create",
                tracepoint("syscalls/sys_enter_memfd_create", "memfd_enter", "memfd_exit"),
            ),
        ),
        finish=_finish,
        describe=_describe,
    )
)
