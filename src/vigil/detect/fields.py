"""Sigma logsources and fields -> Vigil events: the one mapping table.

Each logsource names the event kinds it is evaluated on, a guard that
picks the events of those kinds it covers (a failed exec creates no
process), and its fields, one entry each: a Sigma field name -> a function
of the event (and the process table) giving the value, or None when the
field is absent from that event.  A field a logsource does not list is one
Vigil cannot know: rules that need it are *degraded* or *never fire*
(compile.py), never silently evaluated against something else.

docs/detection.md prints this table; a later sensor adds its own category
with `register()` (one `LogSource`, fields as data).
"""

from __future__ import annotations

import pwd
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

from ..encoding import escape, escape_cached

# ev -> value; `ctx` gives what an event does not carry (the parent's argv)
Getter = Callable[[dict, "Context"], object]


class Context:
    """What field getters may consult besides the event: the process table."""

    def __init__(self, processes=None):
        self.processes = processes

    def parent_args(self, ev: dict) -> list | None:
        if self.processes is None:
            return None
        proc = self.processes.procs.get(ev["ppid"])
        return proc.args if proc is not None and proc.args else None


@dataclass(frozen=True)
class Field:
    getter: Getter
    doc: str  # what it is, for docs/detection.md


@dataclass(frozen=True)
class LogSource:
    """A Sigma logsource Vigil evaluates rules on."""

    category: str | None
    product: str | None
    kinds: tuple[str, ...]
    fields: dict[str, Field]
    doc: str
    service: str | None = None
    # which events of `kinds` belong here (None: all of them)
    accepts: Callable[[dict], bool] | None = None
    # vigil's own categories: the raw event fields are also available by name
    raw_fields: bool = False
    # what this source cannot see, whatever the rule: its rules are degraded, saying so
    limit: str | None = None
    extra: dict = field(default_factory=dict)


def text(value) -> str:
    """Bytes from the kernel -> escaped text (docs/events.md, Strings); text as is."""
    return escape_cached(value) if type(value) is bytes else value


def _joined(args) -> str | None:
    if not args:
        return None
    try:  # one escape of the joined bytes: the same text (a space ends any UTF-8 sequence)
        return escape(b" ".join(args))
    except TypeError:  # text arguments (events replayed from JSON)
        return " ".join(escape_cached(a) if type(a) is bytes else a for a in args)


@lru_cache(maxsize=4096)
def user_name(uid: int) -> str:
    """The account name of `uid` on this host, or the number as text."""
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        return str(uid)


_DELETED = " (deleted)"


def image(path) -> str | None:
    """An executable's path for matching: the file it was, even when it was
    unlinked before it ran (fexecve of a deleted file: `/tmp/nc (deleted)`
    must still end with `/nc`).  The event keeps the suffix."""
    if path is None:
        return None
    s = text(path)
    return s[: -len(_DELETED)] if s.endswith(_DELETED) else s


def _parent(ev: dict) -> dict | None:
    anc = ev.get("ancestors")
    return anc[0] if anc else None


def _parent_image(ev, ctx):
    p = _parent(ev)
    return image(p["exe"]) or None if p is not None else None


def _parent_exe(ev):
    anc = ev.get("ancestors")
    return anc[0]["exe"] if anc else None


_parent_image.rawkey = _parent_exe  # type: ignore[attr-defined]  # see _pure


def _parent_cmdline(ev, ctx):
    args = ctx.parent_args(ev)
    if args is None:
        args = ev.get("parent_args")  # events replayed from a store may carry it
    return _joined(args)


def _f(getter: Getter, doc: str) -> Field:
    return Field(getter, doc)


def _get(name: str, convert=None) -> Getter:
    if convert is None:
        fn = lambda ev, ctx: ev.get(name)  # noqa: E731
    else:
        fn = lambda ev, ctx: None if (v := ev.get(name)) is None else convert(v)  # noqa: E731
    return _pure(fn, name)


def _pure(fn: Getter, key: str) -> Getter:
    """Mark `fn` as a function of the event's `key` alone: the literal index
    may then remember what it found per value of that key, and skip the
    getter when the value repeats (ruleset.py).  A getter of something
    deeper names the function that reads its raw value as `rawkey`."""
    fn.evkey = key  # type: ignore[attr-defined]
    return fn


# Fields of the process behind any event.
PROCESS_FIELDS: dict[str, Field] = {
    "Image": _f(
        _get("exe", image),
        "`exe`: the process's executable (for scripts, the interpreter; "
        "a ` (deleted)` suffix is not part of it)",
    ),
    "ProcessId": _f(_get("pid"), "`pid`"),
    "ParentProcessId": _f(_get("ppid"), "`ppid`"),
    "ParentImage": _f(_parent_image, "`ancestors[0].exe` (without ` (deleted)`)"),
    "User": _f(_get("uid", lambda uid: user_name(uid)), "name of the real `uid` on this host"),
}

PROCESS_CREATION_FIELDS: dict[str, Field] = {
    **PROCESS_FIELDS,
    "CommandLine": _f(lambda ev, ctx: _joined(ev.get("args")), "`args` joined by spaces"),
    "ParentCommandLine": _f(
        _parent_cmdline, "the parent's argv from the process table, joined by spaces"
    ),
    "OriginalFileName": _f(
        lambda ev, ctx: None, "never known: Linux executables carry no original name"
    ),
    "LogonId": _f(_get("auid"), "`auid`, the audit login uid (4294967295 when unset)"),
    "CommandName": _f(_get("comm", text), "`comm`"),
    "EffectiveUserId": _f(_get("euid"), "`euid` (0: runs as root)"),
    "EffectiveGroupId": _f(_get("egid"), "`egid`"),
}
# OriginalFileName is listed so that `rules check` says why it cannot fire.
UNKNOWABLE = {"OriginalFileName"}


def _initiated(ev, ctx):
    return "true" if ev["kind"] == "connect" else "false"


def _local_remote(local: bool, port: bool, ev: dict):
    return ev.get("lport" if port else "laddr") if local else ev.get("rport" if port else "raddr")


def _side(source: bool, port: bool) -> Getter:
    # connect: we are the source; accept: the peer is (it initiated)
    def get(ev, ctx):
        local = (ev["kind"] == "connect") == source
        return _local_remote(local, port, ev)

    return get


NETWORK_FIELDS: dict[str, Field] = {
    **PROCESS_FIELDS,
    "Initiated": _f(_initiated, "`'true'` for connect, `'false'` for accept"),
    "DestinationIp": _f(_side(False, False), "connect: `raddr`; accept: `laddr`"),
    "DestinationPort": _f(_side(False, True), "connect: `rport`; accept: `lport`"),
    "SourceIp": _f(_side(True, False), "connect: `laddr`; accept: `raddr` (the peer)"),
    "SourcePort": _f(_side(True, True), "connect: `lport`; accept: `rport`"),
    "Protocol": _f(lambda ev, ctx: "tcp", "`tcp` (the sensors see TCP only)"),
    "CommandName": _f(_get("comm", text), "`comm`"),
}

CAPABILITY_FIELDS: dict[str, Field] = {
    **PROCESS_FIELDS,
    "Capability": _f(_get("cap_name"), "`cap_name` (`CAP_SYS_ADMIN`, ...)"),
    "CapabilityNumber": _f(_get("cap"), "`cap`"),
    "Verdict": _f(_get("verdict"), "`verdict` (`allowed`, `denied`)"),
    "CommandName": _f(_get("comm", text), "`comm`"),
}

LISTEN_FIELDS: dict[str, Field] = {
    **PROCESS_FIELDS,
    "Kind": _f(_get("kind"), "`bind` or `listen`"),
    "LocalIp": _f(_get("laddr"), "`laddr`"),
    "LocalPort": _f(_get("lport"), "`lport`"),
    "Protocol": _f(_get("proto"), "`proto` (`tcp`, `udp`, ...)"),
    "CommandName": _f(_get("comm", text), "`comm`"),
}

BASH_FIELDS: dict[str, Field] = {
    **PROCESS_FIELDS,
    "CommandLine": _f(_get("line", text), "`line`, the line typed"),
    "CommandName": _f(_get("comm", text), "`comm`"),
}


def _own(**named: Field) -> dict[str, Field]:
    """A Vigil category's fields: the process, the command, and its own."""
    return {**PROCESS_FIELDS, "CommandName": _f(_get("comm", text), "`comm`"), **named}


TARGET_FIELDS: dict[str, Field] = {
    "TargetProcessId": _f(_get("target_pid"), "`target_pid` (host pid)"),
    "TargetImage": _f(_get("target_exe", text), "`target_exe`, from the process table"),
}

# The sensors for what attackers do next (docs/events.md): each its own
# category, its raw fields also by name.
LATER_SENSORS = [
    (
        "file_access",
        ("open", "file"),
        "opens and changes of watched paths",
        _own(
            TargetFilename=_f(_get("path", text), "`path`: resolved by the kernel where it could"),
            Operation=_f(lambda ev, ctx: ev.get("op", "open"), "`op` (`open` for an open)"),
        ),
    ),
    (
        "kernel_module",
        ("module_load",),
        "module loads and unloads, attempts included",
        _own(
            ModuleName=_f(_get("name", text), "`name`"),
            Operation=_f(
                _get("op"),
                "`op` (`init_module`, `finit_module`, `delete_module`, `module_request`)",
            ),
        ),
    ),
    (
        "mount",
        ("mount",),
        "mount, umount2, fsmount, move_mount",
        _own(
            Operation=_f(_get("op"), "`op`"),
            MountSource=_f(_get("source", text), "`source`"),
            MountTarget=_f(_get("target", text), "`target`"),
            FileSystemType=_f(_get("fstype", text), "`fstype`"),
        ),
    ),
    (
        "signal",
        ("kill",),
        "signals sent to processes",
        _own(Signal=_f(_get("sig_name"), "`sig_name` (`SIGKILL`, ...)"), **TARGET_FIELDS),
    ),
    (
        "ptrace",
        ("ptrace",),
        "ptrace requests on another process",
        _own(Request=_f(_get("request"), "`request`"), **TARGET_FIELDS),
    ),
    (
        "identity_change",
        ("setuid", "setgid", "capset"),
        "uid, gid and capability changes",
        _own(Kind=_f(_get("kind"), "`setuid`, `setgid` or `capset`")),
    ),
    (
        "bpf",
        ("bpf",),
        "BPF program loads and attaches",
        _own(
            Operation=_f(_get("cmd"), "`cmd` (`prog_load`, ...)"),
            ProgramType=_f(_get("prog_type"), "`prog_type`"),
        ),
    ),
    (
        "syscall32",
        ("syscall32",),
        "32-bit syscalls, which the syscall tracepoints skip (first of each per image)",
        _own(
            Syscall=_f(_get("syscall"), "`syscall` (the ia32 table's name)"),
            Abi=_f(_get("abi"), "`abi` (`ia32`, `x32`)"),
            Program32Bit=_f(_get("mode32"), "`mode32`: the process image is a 32-bit program"),
        ),
    ),
    (
        "memfd",
        ("memfd",),
        "memfd_create (fileless execution starts here)",
        _own(
            Name=_f(_get("name", text), "`name`"),
        ),
    ),
]


def _exec_ok(ev: dict) -> bool:
    return ev.get("ret", 0) == 0


_O_CREAT = 0o100


def _file_created(ev: dict) -> bool:
    """Sigma's file_event: a file created or replaced (an open for write with
    O_CREAT, a rename's destination) that the kernel allowed."""
    if ev.get("ret", 0) < 0:
        return False
    if ev["kind"] == "open":
        return ev.get("access") == "write" and bool(ev.get("open_flags", 0) & _O_CREAT)
    return ev.get("op") == "rename"


def _target_filename(ev, ctx):
    path = ev.get("path2") if ev["kind"] == "file" else ev.get("path")
    return text(path) if path else None


FILE_EVENT_FIELDS: dict[str, Field] = {
    **PROCESS_FIELDS,
    "CommandName": _f(_get("comm", text), "`comm`"),
    "TargetFilename": _f(
        _target_filename, "the file created: an open's `path`, a rename's `path2`"
    ),
}


LOGSOURCES: list[LogSource] = []


def register(source: LogSource) -> LogSource:
    key = (source.category, source.product, source.service)
    if any((s.category, s.product, s.service) == key for s in LOGSOURCES):
        raise ValueError(f"logsource {key} registered twice")
    LOGSOURCES.append(source)
    return source


register(
    LogSource(
        "process_creation",
        "linux",
        ("exec",),
        PROCESS_CREATION_FIELDS,
        "successful exec (a failed exec creates no process)",
        accepts=_exec_ok,
    )
)
register(
    LogSource(
        "network_connection",
        "linux",
        ("connect", "accept"),
        NETWORK_FIELDS,
        "TCP connect (Initiated 'true') and accept (Initiated 'false')",
    )
)
register(
    LogSource(
        "file_event",
        "linux",
        ("open", "file"),
        FILE_EVENT_FIELDS,
        "files created: opens for write with O_CREAT and renames' destinations, "
        "on the watch list (docs/events.md)",
        accepts=_file_created,
        limit="sees the paths on the open sensor's watch list only (--watch-file)",
    )
)
register(
    LogSource(
        "capability",
        "vigil",
        ("capable",),
        CAPABILITY_FIELDS,
        "capability checks (Vigil's own category; raw event fields also by name)",
        raw_fields=True,
    )
)
register(
    LogSource(
        "network_listen",
        "vigil",
        ("bind", "listen"),
        LISTEN_FIELDS,
        "sockets bound and listening (Vigil's own category; raw event fields also by name)",
        raw_fields=True,
    )
)
register(
    LogSource(
        "bash_command",
        "vigil",
        ("bashreadline",),
        BASH_FIELDS,
        "lines typed into interactive bash (Vigil's own category; raw fields also by name)",
        raw_fields=True,
    )
)


for _category, _kinds, _doc, _fields in LATER_SENSORS:
    register(
        LogSource(
            _category,
            "vigil",
            _kinds,
            _fields,
            f"{_doc} (Vigil's own category; raw event fields also by name)",
            raw_fields=True,
        )
    )


def find(category: str | None, product: str | None, service: str | None) -> LogSource | None:
    """The logsource a rule's logsource selects.  product `linux` and
    `vigil` are one host here: Vigil's categories take either."""
    for s in LOGSOURCES:
        if s.category != category or s.service != service:
            continue
        if product is None or product == s.product or product in ("linux", "vigil"):
            return s
    return None


def getter(source: LogSource, name: str) -> Getter | None:
    """How to read field `name` on `source`'s events; None when Vigil cannot know it."""
    f = source.fields.get(name)
    if f is not None:
        return None if name in UNKNOWABLE else f.getter
    if source.raw_fields:
        return _pure(lambda ev, ctx: None if (v := ev.get(name)) is None else text(v), name)
    return None
