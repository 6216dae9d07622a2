"""mount: mount, umount2, fsmount and move_mount calls (bpf/mount.bpf.c)."""

from ..encoding import display
from . import Attach, Sensor, hook, register, result_text

_SYSCALL_PROGRAMS = tuple(
    f"mount_{side}_{call}"
    for call in ("mount", "umount", "fsmount", "move_mount")
    for side in ("enter", "exit")
)


def _describe(ev: dict) -> str:
    op, flags = ev["op"], f" flags={ev['mount_flags']:#x}" if ev["mount_flags"] else ""
    if op == "mount":
        text = f"mount -t {display(ev['fstype']) or '?'} {display(ev['source']) or '-'} {display(ev['target'])}"
    elif op == "umount":
        text = f"umount {display(ev['target'])}"
    elif op == "fsmount":
        text = (
            f"fsmount {display(ev['fstype'])} {display(ev['source']) or '-'} (fd {ev['from_fd']})"
        )
    else:
        text = f"move_mount {display(ev['source']) or ev['from_fd']} -> {display(ev['target']) or ev['to_fd']}"
    return f"{text}{flags} {result_text(ev['ret'])}"


SENSOR = register(
    Sensor(
        name="mount",
        object="mount",
        kinds=("mount",),
        summary="mounts and unmounts (mount, umount2, fsmount, move_mount) with their result",
        hooks=(
            hook(
                "mount",
                # the kernel's copies of the strings and the resolved mount point
                Attach(
                    "lsm",
                    "sb_mount",
                    (
                        "mount_lsm_sb_mount",
                        "mount_lsm_sb_umount",
                        "mount_lsm_move_mount",
                        *_SYSCALL_PROGRAMS,
                    ),
                ),
                # the caller's strings, read at syscall exit
                Attach("tracepoint", "syscalls/sys_enter_mount", _SYSCALL_PROGRAMS),
            ),
        ),
        describe=_describe,
    )
)
