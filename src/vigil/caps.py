"""Capability numbers and their names (CAP_CHOWN .. CAP_CHECKPOINT_RESTORE).

From include/uapi/linux/capability.h, a user-space ABI: a number is never
renumbered or reused, new capabilities only append (CAP_LAST_CAP was 40,
CAP_CHECKPOINT_RESTORE, from 5.9 to at least 6.18).  The kernel's BTF
cannot give these names (they are #defines, not an enum), so this table
is the one place they live; a number past its end (a newer kernel) shows
as None / "?" rather than a guess.
"""

from __future__ import annotations

__all__ = ["NAMES", "name", "names_of"]

NAMES: tuple[str, ...] = (
    "CAP_CHOWN",  # 0
    "CAP_DAC_OVERRIDE",  # 1
    "CAP_DAC_READ_SEARCH",  # 2
    "CAP_FOWNER",  # 3
    "CAP_FSETID",  # 4
    "CAP_KILL",  # 5
    "CAP_SETGID",  # 6
    "CAP_SETUID",  # 7
    "CAP_SETPCAP",  # 8
    "CAP_LINUX_IMMUTABLE",  # 9
    "CAP_NET_BIND_SERVICE",  # 10
    "CAP_NET_BROADCAST",  # 11
    "CAP_NET_ADMIN",  # 12
    "CAP_NET_RAW",  # 13
    "CAP_IPC_LOCK",  # 14
    "CAP_IPC_OWNER",  # 15
    "CAP_SYS_MODULE",  # 16
    "CAP_SYS_RAWIO",  # 17
    "CAP_SYS_CHROOT",  # 18
    "CAP_SYS_PTRACE",  # 19
    "CAP_SYS_PACCT",  # 20
    "CAP_SYS_ADMIN",  # 21
    "CAP_SYS_BOOT",  # 22
    "CAP_SYS_NICE",  # 23
    "CAP_SYS_RESOURCE",  # 24
    "CAP_SYS_TIME",  # 25
    "CAP_SYS_TTY_CONFIG",  # 26
    "CAP_MKNOD",  # 27
    "CAP_LEASE",  # 28
    "CAP_AUDIT_WRITE",  # 29
    "CAP_AUDIT_CONTROL",  # 30
    "CAP_SETFCAP",  # 31
    "CAP_MAC_OVERRIDE",  # 32
    "CAP_MAC_ADMIN",  # 33
    "CAP_SYSLOG",  # 34
    "CAP_WAKE_ALARM",  # 35
    "CAP_BLOCK_SUSPEND",  # 36
    "CAP_AUDIT_READ",  # 37
    "CAP_PERFMON",  # 38
    "CAP_BPF",  # 39
    "CAP_CHECKPOINT_RESTORE",  # 40
)


def name(cap: int) -> str | None:
    """CAP_* name of a capability number; None when this table is too old."""
    return NAMES[cap] if 0 <= cap < len(NAMES) else None


def names_of(mask: int) -> list[str]:
    """The capabilities set in a mask (bit N is capability N), lowest first;
    a bit newer than the table shows as its number."""
    return [name(bit) or str(bit) for bit in range(64) if mask >> bit & 1]
