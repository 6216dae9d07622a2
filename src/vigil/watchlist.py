"""The file sensor's watch list: patterns -> the kernel's match tables.

A watch list is a plain list of patterns (one per line in a file, or
repeated --watch options), so a config file can carry it as is:

    /etc/shadow            this file (reads and writes)
    w:/etc/passwd          writes only: open for write/create/truncate,
                           rename, unlink, chmod, chown, truncate
    /etc/cron*             every entry of /etc whose name starts with cron
                           (directories among them: their whole tree)
    /etc/systemd/system/   the whole tree (an existing directory, with or
                           without the trailing slash)
    ~/.bashrc              in every home directory (/etc/passwd) and /root
    /proc/*/mem            a file of every process (procfs, by name)
    @default               the default list (to add to it)

The kernel matches inodes for files it opened (bpf/file.bpf.c): each
watched directory of an existing tree is an entry, each watched name an
(inode of its directory, name) entry.  It matches strings for failed opens
and path calls.  Both are computed here, once, at start: a directory that
does not exist yet (a new user's ~/.ssh) is matched by string only until
the next start.
"""

from __future__ import annotations

import os
import pwd
import stat
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

from .errors import ConfigError

READ, WRITE = 1, 2  # enum file_watch_access
DIR_ALL, DIR_NAMED = 1, 2  # enum file_dir_how
NAME_SIZE = 64  # FILE_NAME_SIZE
KEY_SIZE = 256  # FILE_KEY_SIZE
MAX_TREE_DIRS = 8192  # directories one watched tree may add (file_dirs holds 16384)

DEFAULT_WATCH: tuple[str, ...] = (
    # credentials
    "/etc/shadow",
    "/etc/gshadow",
    "/etc/sudoers",
    "/etc/sudoers.d/",
    "w:/etc/passwd",
    "w:/etc/group",
    # persistence
    "/var/spool/cron/",
    "/etc/cron*",
    "/etc/anacrontab",
    "/etc/systemd/system/",
    "/lib/systemd/system/",
    "/usr/lib/systemd/system/",
    "~/.config/systemd/user/",
    "/etc/ld.so.preload",
    "/etc/profile*",
    "/etc/bash.bashrc",
    "/etc/environment",
    "~/.bashrc",
    "~/.bash_profile",
    "~/.bash_login",
    "~/.profile",
    "~/.zshrc",
    "~/.ssh/authorized_keys",
    "~/.ssh/authorized_keys2",
    # kernel and other processes' memory
    "/proc/*/mem",
    "/dev/mem",
    "/dev/kmem",
    "/dev/port",
    "/boot/",
    "/lib/modules/",
    "/usr/lib/modules/",
)


@dataclass(frozen=True)
class Pattern:
    path: str  # absolute, "~/" expanded by the caller
    access: int  # READ | WRITE bits
    prefix: bool  # a trailing '*': a name prefix
    tree: bool  # a trailing '/': a directory tree


def parse(patterns: Iterable[str]) -> list[Pattern]:
    """Patterns as written -> Pattern; a bad one is a ConfigError naming it."""
    out: list[Pattern] = []
    for raw in patterns:
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        if text == "@default":
            out.extend(parse(DEFAULT_WATCH))
            continue
        access = READ | WRITE
        if text.startswith("w:"):
            access, text = WRITE, text[2:]
        if text.startswith("~/"):
            out.extend(_one(raw, os.path.join(home, text[2:]), access) for home in _homes())
            continue
        if not text.startswith("/"):
            raise ConfigError(f"watch pattern {raw!r}: not an absolute path (or ~/...)")
        out.append(_one(raw, text, access))
    return out


def _one(raw: str, text: str, access: int) -> Pattern:
    tree = text.endswith("/")
    prefix = text.endswith("*")
    body = text[:-1] if prefix else text.rstrip("/") if tree else text
    if "*" in body and not _is_proc_glob(body):
        raise ConfigError(
            f"watch pattern {raw!r}: '*' only at the end of a name, or as /proc/*/NAME"
        )
    if body in ("", "/"):
        raise ConfigError(f"watch pattern {raw!r}: the whole filesystem is not a watch list")
    return Pattern(os.path.normpath(body), access, prefix, tree)


def _is_proc_glob(path: str) -> bool:
    parts = path.split("/")
    return (
        len(parts) == 4 and parts[1:3] == ["proc", "*"] and bool(parts[3]) and "*" not in parts[3]
    )


def _homes() -> list[str]:
    homes = {"/root"}
    for entry in pwd.getpwall():
        if entry.pw_dir.startswith("/") and os.path.isdir(entry.pw_dir) and entry.pw_dir != "/":
            homes.add(entry.pw_dir)
    return sorted(homes)


def kernel_dev(st_dev: int) -> int:
    """stat's st_dev -> the kernel's s_dev (MKDEV: major << 20 | minor)."""
    return (os.major(st_dev) << 20) | os.minor(st_dev)


@dataclass
class Tables:
    """What goes into the three maps of bpf/file.bpf.c."""

    dirs: dict[tuple[int, int], list[int]] = field(default_factory=dict)  # -> [how, access]
    names: dict[tuple[int, int, bytes, bool], int] = field(default_factory=dict)
    paths: dict[tuple[bytes, bool], int] = field(default_factory=dict)

    def add_dir(self, st: os.stat_result, how: int, access: int = 0) -> None:
        entry = self.dirs.setdefault((kernel_dev(st.st_dev), st.st_ino), [0, 0])
        entry[0] |= how
        if how & DIR_ALL:
            entry[1] |= access

    def add_name(self, dev: int, ino: int, name: str, prefix: bool, access: int) -> None:
        raw = os.fsencode(name)[: NAME_SIZE - 1]
        key = (dev, ino, raw, prefix)
        self.names[key] = self.names.get(key, 0) | access

    def add_path(self, path: str, prefix: bool, access: int) -> None:
        raw = os.fsencode(path)
        if len(raw) >= KEY_SIZE:
            return  # longer than the kernel matches
        self.paths[(raw, prefix)] = self.paths.get((raw, prefix), 0) | access


def compile_patterns(patterns: list[Pattern]) -> Tables:
    t = Tables()
    for p in patterns:
        if _is_proc_glob(p.path):
            t.add_name(0, 0, p.path.rsplit("/", 1)[1], p.prefix, p.access)
            continue
        for path in dict.fromkeys([p.path, os.path.realpath(p.path)]):
            _add(t, p, path)
    return t


def _add(t: Tables, p: Pattern, path: str) -> None:
    parent, name = os.path.split(path)
    if p.tree or _isdir(path):
        t.add_path(path.rstrip("/") + "/", True, p.access)
        _add_tree(t, path, p.access)
        if not p.prefix:
            return
    t.add_path(path, p.prefix, p.access)
    try:
        pst = os.stat(parent)
    except OSError:
        return  # matched by string only (failed opens, path calls)
    t.add_dir(pst, DIR_NAMED)
    t.add_name(kernel_dev(pst.st_dev), pst.st_ino, name, p.prefix, p.access)
    if p.prefix:  # cron* names cron.d/: its tree too
        try:
            entries = os.listdir(parent)
        except OSError:
            entries = []
        for entry in entries:
            full = os.path.join(parent, entry)
            if entry.startswith(name) and _isdir(full) and not os.path.islink(full):
                t.add_path(full + "/", True, p.access)
                _add_tree(t, full, p.access)


def _isdir(path: str) -> bool:
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except OSError:
        return False


def _add_tree(t: Tables, top: str, access: int) -> None:
    """Every directory of an existing tree, as DIR_ALL (files opened in it)."""
    count = 0
    for root, dirs, _files in os.walk(top, onerror=lambda err: None):
        try:
            st = os.stat(root)
        except OSError:
            continue
        t.add_dir(st, DIR_ALL, access)
        count += 1
        if count >= MAX_TREE_DIRS:
            dirs.clear()
            break


def load_maps(obj, patterns: list[Pattern]) -> Tables:
    """Fill file_dirs, file_names and file_paths of a loaded file object."""
    from . import _libbpf as bpf

    t = compile_patterns(patterns)
    fd = obj.map("file_dirs").fd
    for (dev, ino), (how, access) in t.dirs.items():
        bpf.map_update(fd, struct.pack("<IIQ", dev, 0, ino), struct.pack("<II", how, access))
    fd = obj.map("file_names").fd
    for (dev, ino, raw, prefix), access in t.names.items():
        data = raw if prefix else raw + b"\0"
        key = struct.pack("<IIII", 96 + 8 * len(data), dev, ino & 0xFFFFFFFF, ino >> 32)
        bpf.map_update(fd, key + data.ljust(NAME_SIZE, b"\0"), struct.pack("<I", access))
    fd = obj.map("file_paths").fd
    for (raw, prefix), access in t.paths.items():
        data = raw if prefix else raw + b"\0"
        key = struct.pack("<I", 8 * len(data)) + data.ljust(KEY_SIZE, b"\0")
        bpf.map_update(fd, key, struct.pack("<I", access))
    return t


def read_file(path: str) -> list[str]:
    """A watch-list file: one pattern per line, '#' comments."""
    try:
        with open(path, encoding="utf-8") as f:
            return [line for line in f.read().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"watch list {path}: {err}") from None


def watch_options(f):
    """--watch PATTERN (repeatable) and --watch-file FILE: the file sensor's list."""
    import click

    f = click.option(
        "--watch-file",
        metavar="FILE",
        help="Watch-list patterns, one per line (replaces the defaults; @default adds them).",
    )(f)
    return click.option(
        "-w",
        "--watch",
        multiple=True,
        metavar="PATTERN",
        help="A path to watch (repeatable; replaces the defaults, @default adds them): "
        "/etc/shadow, w:/etc/passwd (writes only), /etc/cron*, /etc/systemd/system/, "
        "~/.bashrc, /proc/*/mem.",
    )(f)


def sensor_options(watch: tuple[str, ...], watch_file: str | None) -> dict:
    """The session's options for the file sensors: {} keeps the defaults."""
    patterns = list(watch) + (read_file(watch_file) if watch_file else [])
    if not patterns:
        return {}
    parse(patterns)  # a bad pattern fails here, before anything is loaded
    return {"watch": patterns}
