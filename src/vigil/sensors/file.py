"""open and file: access to watched paths (bpf/file.bpf.c, watch list in
vigil.watchlist): opens for read and for write, and renames, unlinks,
chmod, chown and truncation."""

from __future__ import annotations

import platform

from .. import watchlist
from ..encoding import display
from . import Attach, Sensor, hook, register, result_text, tracepoint

# include/uapi/asm-generic/fcntl.h (x86_64 and arm64 alike)
O_FLAGS = {
    0o100: "O_CREAT",
    0o200: "O_EXCL",
    0o400: "O_NOCTTY",
    0o1000: "O_TRUNC",
    0o2000: "O_APPEND",
    0o4000: "O_NONBLOCK",
    0o10000: "O_DSYNC",
    0o40000: "O_DIRECT",
    0o200000: "O_DIRECTORY",
    0o400000: "O_NOFOLLOW",
    0o1000000: "O_NOATIME",
    0o2000000: "O_CLOEXEC",
    0o10000000: "O_PATH",
    0o20000000: "O_TMPFILE",  # with O_DIRECTORY
}
ACCMODE = ("O_RDONLY", "O_WRONLY", "O_RDWR", "O_ACCMODE")


def open_flag_names(flags: int) -> list[str]:
    names = [ACCMODE[flags & 3]]
    names += [name for bit, name in O_FLAGS.items() if flags & bit]
    unknown = flags & ~(sum(O_FLAGS) | 3 | 0o100000)  # O_LARGEFILE: set by the kernel
    if unknown:
        names.append(f"{unknown:#o}")
    return names


def _load_watch(obj, options: dict) -> None:
    patterns = options.get("watch")
    watchlist.load_maps(
        obj, watchlist.parse(watchlist.DEFAULT_WATCH if patterns is None else patterns)
    )


def _finish_open(ev: dict) -> None:
    ev["flag_names"] = open_flag_names(ev["open_flags"])
    ev["access"] = "write" if ev["access"] & watchlist.WRITE else "read"


def _source(ev: dict) -> str:
    return "" if ev["path_source"] == "kernel" else " (as passed)"


def _describe_open(ev: dict) -> str:
    flags = "|".join(ev["flag_names"])
    # the LSM hook sees an open the kernel allowed, before it has an fd
    result = "allowed" if ev.get("hook") == "lsm" else result_text(ev["ret"])
    return f"{ev['access']} {display(ev['path'])}{_source(ev)} {flags} {result}"


def _describe_file(ev: dict) -> str:
    op, path = ev["op"], display(ev["path"])
    if op == "rename":
        what = f"{path} -> {display(ev['path2'])}"
    elif op == "chmod":
        what = f"{path} {ev['mode']:#o}"
    elif op == "chown":
        uid, gid = (-1 if v == 0xFFFFFFFF else v for v in (ev["owner_uid"], ev["owner_gid"]))
        what = f"{path} {uid}:{gid}"
    elif op == "truncate":
        what = f"{path} {ev['length']}"
    else:
        what = path
    return f"{op} {what}{_source(ev)} {result_text(ev['ret'])}"


def _exits(*calls: str, optional: bool = False):
    """One hook per syscall: its exit tracepoint (arguments from the saved registers)."""
    return tuple(
        hook(
            call,
            tracepoint(f"syscalls/sys_exit_{call}", f"file_{call}_exit"),
            optional=optional,
        )
        for call in calls
    )


# open and creat exist on x86_64 only (arm64 has openat and openat2)
# the syscall entry points' names (fexit targets)
_SYSCALL_FN = "__x64_sys_" if platform.machine() == "x86_64" else "__arm64_sys_"
# open_by_handle_at opens a file by its handle, no path: a success is
# matched by the file's inode like any open (a failure has nothing to match)
_OPEN_CALLS = ("openat", "openat2", "open_by_handle_at") + (
    ("open", "creat") if platform.machine() == "x86_64" else ()
)

OPEN = register(
    Sensor(
        name="open",
        object="file",
        kinds=("open",),
        summary="opens of watched paths (credentials, persistence, kernel memory): in-kernel match",
        hooks=(
            hook(
                "open",
                # the kernel's file_open check, inside every open (io_uring
                # and open_by_handle_at included); failures at the calls'
                # returns, which it does not see
                Attach(
                    "lsm",
                    "file_open",
                    ("file_open_lsm", *(f"file_{c}_fexit_failed" for c in _OPEN_CALLS)),
                ),
                # a trampoline at each call's return (5.5+ kernels with fexit)
                Attach(
                    "fentry", _SYSCALL_FN + "openat", tuple(f"file_{c}_fexit" for c in _OPEN_CALLS)
                ),
                # else each call's exit tracepoint, arguments from the saved registers
                tracepoint("syscalls/sys_exit_openat", *(f"file_{c}_exit" for c in _OPEN_CALLS)),
            ),
        ),
        finish=_finish_open,
        describe=_describe_open,
        after_load=_load_watch,
    )
)

FILE = register(
    Sensor(
        name="file",
        object="file",
        kinds=("file",),
        summary="rename, unlink, chmod, chown, truncate of watched paths",
        hooks=_exits("renameat2", "unlinkat", "fchmodat", "fchmod", "fchownat", "fchown")
        + _exits("truncate", "ftruncate")
        + _exits("fchmodat2", optional=True)  # 6.6+
        + _exits("rename", "renameat", "unlink", "chmod", "chown", "lchown", optional=True)
        + (
            # the dentries the kernel looked up, matched by inode: neither
            # a path that is not normalised nor one rewritten around the
            # call escapes or forges (BPF-LSM with CONFIG_SECURITY_PATH)
            hook(
                "path_lsm",
                Attach(
                    "lsm",
                    "path_unlink",
                    tuple(
                        f"file_lsm_{op}"
                        for op in ("unlink", "rename", "chmod", "chown", "truncate")
                    ),
                ),
                optional=True,
            ),
        ),
        describe=_describe_file,
        after_load=_load_watch,
    )
)
