"""The embedded event store: SQLite in WAL mode.

Each event is one row: a few indexed columns for the queries `vigil events`
runs (time, kind, pid, comm), the id of its process's row, and the event
itself as JSON (docs/events.md) without what its process row holds: `exe`
and `ancestors` are stored once per process image (table `processes`), not
copied into every event, and `time` is made from `ts_ns` when read.  The
readers join them back, so `vigil events --json` prints the documented
shape.  Rows are inserted in batched transactions.

Retention (age and size) is enforced by `enforce_retention`, called on a
timer: small DELETE transactions within a time budget, so ingestion, which
shares the connection, never waits long.

If a write fails (disk full, read-only, locked by someone else), the rows
wait in memory and are retried in transactions of a few rows at first, then
more as they succeed, so that whatever space frees up is used at once (a
backlog retried in one transaction needs room for all of it, and a WAL that
grew into a failed transaction keeps that room for the next, smaller one).
The waiting rows are bounded in bytes; past the bound the oldest are
dropped.  Every event handed to the store ends up counted per kind as
stored, dropped or still pending (unwritten at exit): never silent.

After a failure the WAL file keeps the size it grew to (SQLite reuses it)
and checkpoints fail until the main file can grow; `journal_size_limit`
trims it back once a checkpoint succeeds.

Files are created 0600 in a 0700 directory and never through a symlink or
onto a special file (files.py); readers open the database read-only through
a URI whose path is percent-quoted, so `#`, `?` and `%41` in a name are just
characters.
"""

from __future__ import annotations

import heapq
import logging
import os
import sqlite3
import stat
import time
import urllib.parse
from collections import Counter, deque
from collections.abc import Iterable
from itertools import islice
from operator import itemgetter

import orjson

from .. import files
from ..encoding import escape, escape_cached, iso_time
from ..errors import StoreError, VigilError
from ..paths import DEFAULT_DB
from . import rows as checked

log = logging.getLogger("vigil.store")

SCHEMA_VERSION = "2"  # a database of a newer schema is refused, not misread
# 1: every event's JSON whole, ancestry copied into each row (read, not written)
READABLE_VERSIONS = ("1", SCHEMA_VERSION)
DEFAULT_RETENTION_AGE_S = 14 * 86400.0
DEFAULT_RETENTION_BYTES = 2 << 30
PAGE_SIZE = 16384  # of a new store (an existing one keeps its own)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    ts_ns INTEGER NOT NULL,
    kind TEXT NOT NULL,
    pid INTEGER NOT NULL,
    comm TEXT NOT NULL,
    proc INTEGER NOT NULL,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS processes (
    id INTEGER PRIMARY KEY,
    process_key TEXT NOT NULL,
    parent_key TEXT NOT NULL,
    host TEXT NOT NULL,
    boot_id TEXT NOT NULL,
    exe TEXT NOT NULL,
    ancestors TEXT NOT NULL,
    last_ts_ns INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS processes_last ON processes (last_ts_ns);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts_ns);
CREATE INDEX IF NOT EXISTS events_kind_ts ON events (kind, ts_ns);
CREATE INDEX IF NOT EXISTS events_pid_ts ON events (pid, ts_ns);
CREATE INDEX IF NOT EXISTS events_comm_ts ON events (comm, ts_ns);
CREATE TABLE IF NOT EXISTS summaries (
    id INTEGER PRIMARY KEY,
    ts_ns INTEGER NOT NULL,
    interval_ns INTEGER NOT NULL,
    name TEXT NOT NULL,
    spec TEXT NOT NULL,
    counts TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS summaries_name_ts ON summaries (name, ts_ns);
CREATE TABLE IF NOT EXISTS sensor_status (
    kind TEXT PRIMARY KEY,
    updated_ns INTEGER NOT NULL,
    emitted INTEGER NOT NULL,
    lost INTEGER NOT NULL,
    partial INTEGER NOT NULL,
    stored INTEGER NOT NULL,
    dropped INTEGER NOT NULL,
    rate REAL NOT NULL
);
"""
_INSERT = "INSERT INTO events (ts_ns, kind, pid, comm, proc, data) VALUES (?,?,?,?,?,?)"
_INSERT_PROC = "INSERT INTO processes VALUES (?,?,?,?,?,?,?,?)"
_TOUCH_PROC = "UPDATE processes SET last_ts_ns = max(last_ts_ns, ?) WHERE id = ?"
# what a process row holds, or a reader makes: not in an event's stored JSON
_JOINED = frozenset(("exe", "ancestors", "time", "host", "boot_id", "process_key", "parent_key"))
_NO_ANCESTORS: list = []  # never changed: shared by events without ancestry
# rows per DELETE: one such transaction takes a few ms, which ingestion can wait
RETENTION_BATCH = 2000


def _where(since_ns: int | None, **columns) -> tuple[str, list]:
    """ " WHERE ..." and its arguments: ts_ns >= since, column = value, or
    column IN (...) for a list value (an empty list matches everything)."""
    where, args = [], []
    if since_ns is not None:
        where.append("ts_ns >= ?")
        args.append(since_ns)
    for column, value in columns.items():
        if isinstance(value, list):
            if value:
                where.append(f"{column} IN ({','.join('?' * len(value))})")
                args.extend(value)
        else:
            where.append(f"{column} = ?")
            args.append(value)
    return (" WHERE " + " AND ".join(where) if where else ""), args


# What a waiting row costs in memory beyond its JSON text: the tuple, its
# ints and the str header (measured with tracemalloc: ~155 bytes).
ROW_OVERHEAD = 160
# Files SQLite keeps beside the database.
SIDECARS = ("-wal", "-shm", "-journal")


def _rank(value) -> int:
    """SQLite's order of storage classes: NULL, numbers, text, blobs."""
    if value is None:
        return 0
    if type(value) is str:
        return 2
    return 3 if type(value) is bytes else 1


def _sql_order(row: tuple) -> tuple:
    """(ts_ns, id) as SQLite orders them, whatever an altered store holds."""
    return (_rank(row[0]), row[0], _rank(row[1]), row[1])


class _Shapes:
    """The stored JSON of events, made by one plan per (kind, field count):
    which fields to drop and which hold bytes, learnt from the first such
    event and compiled into a function (`_compile_plan`), so that each
    later event costs one call and one orjson.dumps rather than a loop
    over its fields.  `Store.add` calls `plans[shape](ev)`; an event the
    plan does not fit raises, and takes the general path (`general`)."""

    def __init__(self) -> None:
        self.plans: dict[tuple[str, int], object] = {}

    def general(self, ev: dict) -> str:
        """The event through `_stored`; the first of its shape makes the plan."""
        out = _stored(ev)
        shape = (ev["kind"], len(ev))
        if shape not in self.plans and len(self.plans) < 256:
            self.plans[shape] = _compile_plan(ev, out)
        return orjson.dumps(out).decode()


def _compile_plan(ev: dict, out: dict):
    """The serialiser of events shaped like `ev` (`out`: its stored form).

    A copy of the event (one C call) less what its process row holds, and
    its bytes fields escaped in place (order kept), rather than a new dict
    built key by key: half the cost.  Whatever the event holds, the result
    is `_stored`'s or an exception (a joined field missing or one more: KeyError; bytes
    where the plan has none: TypeError from orjson; text where it has
    bytes: AttributeError), and the general path takes the event."""
    lines = ["def dump(ev):", "    out = ev.copy()"]
    joined = [k for k in ev if k in _JOINED]
    if joined:
        lines.append("    del " + ", ".join(f"out[{k!r}]" for k in joined))
    # as many fields, but one of them joined where this shape has another
    for key in sorted(_JOINED - set(joined)):
        lines.append(f"    if {key!r} in out:")
        lines.append(f"        raise KeyError({key!r})")
    for key in out:
        value = ev[key]
        if type(value) is bytes:
            lines.append(f"    out[{key!r}] = _escape_cached(out[{key!r}])")
        elif type(value) is list:
            lines.append(f"    v = out[{key!r}]")
            lines.append("    if v and type(v[0]) is bytes:")
            lines.append(f"        out[{key!r}] = [_escape(x) for x in v]")
    lines.append("    return _dumps(out).decode()")
    namespace = {"_dumps": orjson.dumps, "_escape_cached": escape_cached, "_escape": escape}
    source = "\n".join(lines) + "\n"
    exec(compile(source, f"<stored form of {ev['kind']}>", "exec"), namespace)  # noqa: S102
    return namespace["dump"]


def _stored(ev: dict) -> dict:
    """The event as stored: bytes as escaped text, without what its
    process row holds (one pass; encoding.textual, minus _JOINED)."""
    out = {}
    for key, value in ev.items():
        if key in _JOINED:
            continue
        kind = type(value)
        if kind is bytes:
            value = escape_cached(value)
        elif kind is list and value and type(value[0]) is bytes:
            value = [escape(v) for v in value]
        out[key] = value
    return out


def _last_use(rows: list[tuple]) -> list[tuple[int, int]]:
    """(newest ts_ns, process row id) per process row named by `rows`."""
    last: dict[int, int] = {}
    for row in rows:
        proc, ts = row[4], row[0]
        if last.get(proc, -1) < ts:
            last[proc] = ts
    return [(ts, proc) for proc, ts in last.items()]


def _reason(err: sqlite3.Error) -> str:
    """Why SQLite failed, in the words an operator acts on."""
    name = getattr(err, "sqlite_errorname", None) or ""
    for prefix, why in (
        ("SQLITE_FULL", "disk full"),
        ("SQLITE_READONLY", "read-only"),
        ("SQLITE_IOERR", "I/O error"),
        ("SQLITE_BUSY", "locked by another process"),
        ("SQLITE_LOCKED", "locked by another process"),
        ("SQLITE_CORRUPT", "corrupt"),
        ("SQLITE_NOTADB", "not a database"),
        ("SQLITE_CANTOPEN", "cannot open"),
        ("SQLITE_PERM", "permission denied"),
    ):
        if name.startswith(prefix):
            return f"{why} ({err})"
    return str(err)


def _out_of_space(err: sqlite3.Error) -> bool:
    name = getattr(err, "sqlite_errorname", None) or ""
    return name.startswith(("SQLITE_FULL", "SQLITE_IOERR"))


def _denied(path: str) -> StoreError:
    try:
        owner = os.stat(path).st_uid
    except OSError:
        owner = 0
    whose = "root's" if owner == 0 else f"uid {owner}'s"
    return StoreError(
        f"{path}: permission denied: the store is {whose} (it holds commands and arguments "
        "that may be secret); run this as root"
    )


def _check_readable(path: str) -> None:
    """One clear line for a store a reader cannot open at all."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise StoreError(f"{path}: no such database (has `vigil monitor` run?)") from None
    except PermissionError:  # a 0700 directory hides the file itself
        raise _denied(path) from None
    except OSError as err:
        raise StoreError(f"{path}: {err.strerror}") from err
    if not stat.S_ISREG(st.st_mode):
        raise StoreError(f"{path}: not a regular file, so not a Vigil database")
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
    except PermissionError:
        raise _denied(path) from None
    except OSError as err:
        raise StoreError(f"{path}: {err.strerror}") from err


def _uri(path: str, **params: str) -> str:
    """A SQLite URI for `path`: the path percent-quoted, so that `?`, `#`
    and `%xx` in a file name are not read as URI syntax."""
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return f"file:{urllib.parse.quote(os.path.abspath(path), safe='/')}?{query}"


def _on_readonly_fs(path: str) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _connect_readonly(path: str) -> sqlite3.Connection:
    _check_readable(path)
    db = sqlite3.connect(_uri(path, mode="ro"), uri=True, timeout=5.0, isolation_level=None)
    try:
        db.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
        return db
    except sqlite3.Error as err:
        db.close()
        if not (err.sqlite_errorname or "").startswith("SQLITE_CANTOPEN"):
            raise
        # A WAL database needs its -shm index, which a reader may be unable
        # to create.  On read-only media a store with no unfinished WAL is
        # complete and cannot change: read it as immutable.
        parent = os.path.dirname(os.path.abspath(path))
        if _on_readonly_fs(parent):
            wal = path + "-wal"
            if os.path.exists(wal) and os.path.getsize(wal) > 0:
                raise StoreError(
                    f"{path}: cannot be read in place: it is on read-only storage with an "
                    f"unfinished write-ahead log ({wal}); copy both files to writable storage"
                ) from err
            return sqlite3.connect(
                _uri(path, mode="ro", immutable="1"), uri=True, timeout=5.0, isolation_level=None
            )
        if not os.access(parent, os.W_OK):
            if os.stat(path).st_uid != os.geteuid():  # a store from before it was private
                raise _denied(path) from err
            raise StoreError(
                f"{path}: cannot be read: SQLite must create {path}-shm beside it and "
                f"{parent} is not writable"
            ) from err
        raise


def _prepare_writable(path: str) -> None:
    """The directory 0700 (Vigil's own is tightened), the database and its
    sidecars plain files of ours, 0600, none reached through a symlink."""
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    ours = path == DEFAULT_DB or not os.path.exists(parent)
    try:
        files.private_dir(parent, tighten_existing=ours)
    except VigilError as err:
        raise StoreError(str(err)) from err
    if _on_readonly_fs(parent):
        raise StoreError(f"cannot write to {parent}: read-only file system")
    if not os.access(parent, os.W_OK):
        raise StoreError(f"cannot write to {parent}: permission denied")
    if os.stat(parent).st_mode & 0o022:
        log.warning(
            "%s: other users can create files in this directory (the store's -wal and -shm "
            "among them); keep the store in a directory only root can write",
            parent,
        )
    try:
        os.close(files.open_private(path, tighten_existing=False))
        for suffix in SIDECARS:
            side = path + suffix
            try:
                files.check_existing(side, os.lstat(side))
            except FileNotFoundError:
                continue  # SQLite creates it with the database's mode
    except VigilError as err:
        raise StoreError(str(err)) from err


def _tighten(path: str) -> None:
    """A store older than this rule may be readable by all: no longer (a
    file that turns out not to be a store is left as it was)."""
    for name in (path, *(path + suffix for suffix in SIDECARS)):
        try:
            files.tighten(name, os.lstat(name))
        except FileNotFoundError:
            continue
        except OSError as err:
            log.warning("%s: cannot make it private: %s", name, err.strerror)


def _connect(path: str, readonly: bool) -> sqlite3.Connection:
    if readonly:
        return _connect_readonly(path)
    _prepare_writable(path)
    # a plain (absolute) file name, not a URI: SQLite takes it as it is
    return sqlite3.connect(os.path.abspath(path), timeout=5.0, isolation_level=None)


def _text_or_bytes(raw: bytes) -> str | bytes:
    """A TEXT value as read: SQLite does not check that text is UTF-8, and
    one such row must not fail a whole query.  Left as bytes, the row is
    skipped by the checks in outputs/rows.py."""
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw


class Store:
    def __init__(
        self,
        path: str,
        *,
        readonly: bool = False,
        max_pending_bytes: int = 64 << 20,
        chunk_rows: int = 4096,
        retry_interval: float = 0.5,
        retention_age_s: float | None = DEFAULT_RETENTION_AGE_S,
        retention_bytes: int | None = DEFAULT_RETENTION_BYTES,
    ):
        """`retention_age_s`: events older than this are deleted; and the
        oldest go once the database would pass `retention_bytes` (None or 0:
        no bound), both by `enforce_retention`."""
        self.path = path
        self.readonly = readonly
        self.retention_age_s = retention_age_s or None
        self.retention_bytes = retention_bytes or None
        self.deleted = 0  # events retention deleted, this run
        self.version = SCHEMA_VERSION
        # process rows: identity -> id, and the rows not yet written
        self._proc_ids: dict[tuple, int] = {}
        # process rows not yet written, by id: each goes in with the first
        # chunk of events that names it (all at once would make a transaction
        # a full disk can never take)
        self._pending_procs: dict[int, tuple] = {}
        self._shapes = _Shapes()
        self._next_proc = 1
        self._pending: deque[tuple] = deque()
        self.skipped = 0  # rows read back in a shape the agent never writes
        self._pending_bytes = 0
        self.max_pending_bytes = max_pending_bytes
        self.chunk_rows = chunk_rows
        self._chunk = chunk_rows  # rows per transaction now: smaller after a failure
        self.retry_interval = retry_interval
        self._retry_at = 0.0
        # per kind: handed to the store = stored + dropped + waiting
        self.accepted: Counter[str] = Counter()
        self.stored: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self.waiting: Counter[str] = Counter()
        self.error: str | None = None  # why writes fail now, None when they work
        self.last_error: str | None = None  # why they last failed
        self.failing_since_ns = 0
        self.db = None
        self._dir = os.path.dirname(os.path.abspath(path))
        self._wal_path = os.path.abspath(path) + "-wal"
        try:
            self.db = _connect(path, readonly)
            if readonly:
                self.db.text_factory = _text_or_bytes
            else:
                new = self._check_before_writing()
                if new:
                    # 16 KiB pages: a quarter of the B-tree pages for five B-trees
                    # taking every event; inserts cost ~10-15% less than with
                    # 4 KiB (bench/pipeline's rows, interleaved runs)
                    self.db.execute(f"PRAGMA page_size={PAGE_SIZE}")
                    # so that size retention can give pages back to the disk
                    self.db.execute("PRAGMA auto_vacuum=INCREMENTAL")
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=NORMAL")
                self.db.execute(f"PRAGMA journal_size_limit={16 << 20}")
                # four indexes take inserts all over their B-trees: keep
                # their pages in memory rather than re-read them per batch
                self.db.execute(f"PRAGMA cache_size=-{64 << 10}")
                self.db.executescript(_SCHEMA)
            self._check_version()
            if not readonly:
                self._next_proc = self.db.execute(
                    "SELECT ifnull(max(id), 0) + 1 FROM processes"
                ).fetchone()[0]
            if not readonly:
                _tighten(os.path.abspath(path))
        except sqlite3.Error as err:
            if self.db is not None:
                self.db.close()
            raise self._open_error(err) from err
        except BaseException:
            if self.db is not None:
                self.db.close()
            raise

    def _open_error(self, err: sqlite3.Error) -> StoreError:
        name = getattr(err, "sqlite_errorname", None) or ""
        if name.startswith(("SQLITE_NOTADB", "SQLITE_CORRUPT")):
            return StoreError(
                f"{self.path}: not a usable Vigil database ({err}); move it aside to start afresh"
            )
        if name.startswith("SQLITE_ERROR") and "no such table" in str(err):
            return StoreError(f"{self.path}: not a usable Vigil database (no Vigil tables)")
        if name.startswith("SQLITE_FULL"):
            return StoreError(f"{self.path}: cannot set up the store: disk full")
        if name.startswith("SQLITE_READONLY") or _on_readonly_fs(
            os.path.dirname(os.path.abspath(self.path))
        ):
            return StoreError(f"{self.path}: cannot write: read-only ({err})")
        return StoreError(f"{self.path}: cannot open the store: {_reason(err)}")

    def _check_before_writing(self) -> bool:
        """Touch nothing in a database that is not ours or not of our schema;
        True for a new (empty) one."""
        tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master")}
        if not tables:
            return True
        if "meta" not in tables:
            raise StoreError(
                f"{self.path}: not a Vigil database (it has other tables); refusing to write to it"
            )
        self._check_version()
        return False

    def _check_version(self) -> None:
        row = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            if self.readonly:
                raise StoreError(f"{self.path}: not a usable Vigil database (no schema version)")
            self.db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
            return
        if row[0] == SCHEMA_VERSION or (self.readonly and row[0] in READABLE_VERSIONS):
            self.version = row[0]
            return
        try:
            newer = int(row[0]) > int(SCHEMA_VERSION)
        except (TypeError, ValueError):
            raise StoreError(
                f"{self.path}: not a usable Vigil database (schema version {row[0]!r})"
            ) from None
        if newer:
            raise StoreError(
                f"{self.path}: written by a newer Vigil (schema version {row[0]}; this Vigil "
                f"reads {SCHEMA_VERSION}): upgrade Vigil to read it"
            )
        raise StoreError(
            f"{self.path}: an older Vigil's store (schema version {row[0]}; this Vigil writes "
            f"{SCHEMA_VERSION}, with processes stored once instead of in every event): "
            "`vigil events` still reads it; move it aside (or point --db elsewhere) to start "
            "a new one"
        )

    def close(self) -> None:
        if not self.readonly:
            self.flush(force=True)
        self.db.close()

    def set_meta(self, key: str, value: str) -> bool:
        try:
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))
            return True
        except sqlite3.Error as err:
            log.debug("store %s: meta %s not written: %s", self.path, key, err)
            return False

    def get_meta(self, key: str) -> str | None:
        try:
            row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        except sqlite3.DatabaseError as err:
            raise StoreError(f"{self.path}: cannot read meta ({err})") from err
        return row[0] if row else None

    # -- writing --------------------------------------------------------------------
    def add(self, events: list[dict], lines: list[bytes] | None = None) -> None:
        """Queue enriched events for the next flush; past `max_pending_bytes`
        waiting, the oldest are dropped and counted.  (`lines`, the full
        JSON a console sink made, is not what is stored: the stored JSON
        leaves out what the event's process row holds.)"""
        proc_of = self._proc_of
        chains: dict[int, bytes] = {}  # id(ancestors list) -> its JSON: lists are shared
        # (process key, parent key, exe, id(ancestors)) -> process row id: the
        # events of a batch come from few processes, whose chains are shared
        procs: dict[tuple, int] = {}
        rows = []
        append = rows.append
        size = 0
        general = self._shapes.general
        plans = self._shapes.plans
        for ev in events:
            plan = plans.get((ev["kind"], len(ev)))
            try:
                data = plan(ev)  # the shape's compiled plan (none yet: TypeError)
            except (KeyError, TypeError, AttributeError):
                data = general(ev)
            size += len(data)
            comm = ev["comm"]
            chain = ev.get("ancestors") or _NO_ANCESTORS
            seen = (
                ev.get("process_key", ""),
                ev.get("parent_key", ""),
                ev.get("exe", b""),
                id(chain),
            )
            proc = procs.get(seen)
            if proc is None:
                proc = procs[seen] = proc_of(ev, chains, procs)
            append(
                (
                    ev["ts_ns"],
                    ev["kind"],
                    ev["pid"],
                    escape_cached(comm) if type(comm) is bytes else comm,
                    proc,
                    data,
                )
            )
        self._pending.extend(rows)
        self._pending_bytes += size + ROW_OVERHEAD * len(rows)
        kinds = Counter(map(itemgetter(1), rows))
        self.accepted.update(kinds)
        self.waiting.update(kinds)
        if self._pending_bytes > self.max_pending_bytes:
            self._drop_oldest()

    def _proc_of(self, ev: dict, chains: dict[int, bytes], seen: dict[tuple, int]) -> int:
        """The id of the event's process row (its image and ancestry), made
        the first time that image is seen.  (`seen`, the caller's memo of
        ids, is cleared with ours.)"""
        chain = ev.get("ancestors") or _NO_ANCESTORS
        anc = chains.get(id(chain))
        if anc is None:
            anc = chains[id(chain)] = orjson.dumps(chain)
        exe = ev.get("exe", b"")
        ident = (ev.get("process_key", ""), ev.get("parent_key", ""), exe, anc)
        proc = self._proc_ids.get(ident)
        if proc is None:
            if len(self._proc_ids) > 1 << 17:
                self._proc_ids.clear()  # a row made again costs a row, not a wrong answer
                seen.clear()
            proc = self._proc_ids[ident] = self._next_proc
            self._next_proc += 1
            text = escape_cached(exe) if type(exe) is bytes else exe
            host, boot = ev.get("host", ""), ev.get("boot_id", "")
            row = (proc, ident[0], ident[1], host, boot, text, anc.decode(), ev["ts_ns"])
            self._pending_procs[proc] = row
        return proc

    def _drop_oldest(self) -> None:
        pending = self._pending
        while self._pending_bytes > self.max_pending_bytes and pending:
            row = pending.popleft()
            self._pending_bytes -= len(row[5]) + ROW_OVERHEAD
            self.dropped[row[1]] += 1
            self.waiting[row[1]] -= 1
        # the dropped events' process rows, unless a waiting event names them
        # (they are not in the byte bound: keep them from growing without one)
        if len(self._pending_procs) > len(pending):
            named = {row[4] for row in pending}
            gone = {p for p in self._pending_procs if p not in named}
            for proc in gone:
                del self._pending_procs[proc]
            # a later event of such a process makes its row again
            for ident, proc in list(self._proc_ids.items()):
                if proc in gone:
                    del self._proc_ids[ident]

    def flush(self, budget: float | None = None, force: bool = False) -> int:
        """Write waiting rows in transactions of at most `chunk_rows`, until
        none wait, a write fails, or `budget` seconds are spent; returns rows
        written.  While failing, tries again only every `retry_interval` s
        (unless `force`d)."""
        if not self._pending:
            return 0
        now = time.monotonic()
        if self.error is not None and not force and now < self._retry_at:
            return 0
        deadline = None if budget is None else now + budget
        written = 0
        checkpointed = self.error is not None
        if checkpointed:
            self._checkpoint()
        while self._pending:
            rows = list(islice(self._pending, min(self._chunk, len(self._pending))))
            waiting_procs = self._pending_procs
            named = set(map(itemgetter(4), rows))
            procs = sorted(waiting_procs[i] for i in named if i in waiting_procs)
            try:
                self.db.execute("BEGIN")
                if procs:  # before the events that name them
                    self.db.executemany(_INSERT_PROC, procs)
                self.db.executemany(_INSERT, rows)
                self.db.executemany(_TOUCH_PROC, _last_use(rows))
                self.db.execute("COMMIT")
            except sqlite3.Error as err:
                self._rollback()
                if _out_of_space(err) and not checkpointed:
                    # the WAL may hold all the room there is: move it into
                    # the main file so that its space can be used again
                    self._checkpoint()
                    checkpointed = True
                    continue
                if len(rows) > 1:
                    self._chunk = max(1, len(rows) // 4)
                    if _out_of_space(err):  # a smaller transaction may fit: try now
                        continue
                self._failed(err)
                return written
            for proc in procs:
                del waiting_procs[proc[0]]
            if len(rows) == len(self._pending):
                self._pending.clear()
            else:
                for _ in range(len(rows)):
                    self._pending.popleft()
            self._pending_bytes -= sum(map(len, map(itemgetter(5), rows)))
            self._pending_bytes -= ROW_OVERHEAD * len(rows)
            kinds = Counter(map(itemgetter(1), rows))
            self.stored.update(kinds)
            self.waiting.subtract(kinds)
            written += len(rows)
            self._chunk = min(self.chunk_rows, self._chunk * 2)
            if self._space_low():
                self._checkpoint()
            if self.error is not None:
                self._recovered()
            if deadline is not None and time.monotonic() >= deadline:
                break
        return written

    def _space_low(self) -> bool:
        """Is the WAL big next to the free space?  A checkpoint copies WAL
        pages into the database, which must grow to take them: once the WAL
        has taken the room that growth needs, neither can move (a 2 MiB
        disk ends as a 2 MiB WAL and an empty database, for good).  So
        checkpoint early while there is room, not at SQLite's 1000 pages."""
        try:
            wal = os.stat(self._wal_path).st_size
            vfs = os.statvfs(self._dir)
        except OSError:
            return False
        return wal * 4 > vfs.f_bavail * vfs.f_frsize

    def _checkpoint(self) -> None:
        """Copy what the WAL holds into the database, without waiting for
        readers (PASSIVE), so that the next writer starts the WAL over and
        reuses its space.  Needs room for the database to grow: on a full
        disk it fails until space frees, and the WAL keeps its size."""
        try:
            busy, frames, done = self.db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as err:
            log.debug("store %s: checkpoint: %s", self.path, err)
            return
        if frames > done:
            log.debug("store %s: checkpoint copied %d of %d frames", self.path, done, frames)

    def _rollback(self) -> None:
        try:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
        except sqlite3.Error as err:
            log.debug("store %s: rollback: %s", self.path, err)

    def _failed(self, err: sqlite3.Error) -> None:
        self._retry_at = time.monotonic() + self.retry_interval
        if self.error is None:
            self.failing_since_ns = time.time_ns()
            log.error(
                "store %s: writes failing: %s; %d events wait in memory (up to %d MiB, "
                "then the oldest are dropped and counted)",
                self.path,
                _reason(err),
                len(self._pending),
                self.max_pending_bytes >> 20,
            )
        self.error = self.last_error = _reason(err)

    def _recovered(self) -> None:
        log.warning(
            "store %s: writing again after %.0fs; %d events still wait",
            self.path,
            (time.time_ns() - self.failing_since_ns) / 1e9,
            len(self._pending),
        )
        self.error = None
        self.failing_since_ns = 0

    # -- retention --------------------------------------------------------------------
    def enforce_retention(self, budget_s: float = 0.05, now_ns: int | None = None) -> int:
        """Delete events past the age bound, then the oldest while the
        database is past its size bound, then process rows no event names
        any more; in transactions of RETENTION_BATCH rows, until done or
        `budget_s` is spent (call it again on the next tick).  Returns how
        many events were deleted.  Ingestion shares this connection: it
        waits at most one small transaction."""
        if self.readonly or self.error is not None:
            return 0
        deadline = time.monotonic() + budget_s
        deleted = 0
        try:
            if self.retention_age_s is not None:
                now_ns = time.time_ns() if now_ns is None else now_ns
                cutoff = now_ns - int(self.retention_age_s * 1e9)
                deleted += self._delete_oldest(deadline, "WHERE ts_ns < ?", (cutoff,))
            if self.retention_bytes is not None:
                deleted += self._shrink(deadline)
            if deleted or time.monotonic() < deadline:
                self._forget_processes(deadline)
        except sqlite3.Error as err:
            self._rollback()
            log.warning("store %s: retention: %s", self.path, _reason(err))
        self.deleted += deleted
        return deleted

    def _delete_oldest(self, deadline: float, where: str, args: tuple, limit: int = -1) -> int:
        """Delete the oldest events matching `where`, a batch per
        transaction, at most `limit` (-1: all) or until the deadline."""
        deleted = 0
        while limit < 0 or deleted < limit:
            n = RETENTION_BATCH if limit < 0 else min(RETENTION_BATCH, limit - deleted)
            cur = self.db.execute(
                f"DELETE FROM events WHERE id IN (SELECT id FROM events {where} "
                "ORDER BY ts_ns LIMIT ?)",
                (*args, n),
            )
            deleted += cur.rowcount
            if cur.rowcount < n or time.monotonic() >= deadline:
                break
        return deleted

    def _pages(self) -> tuple[int, int, int]:
        """(pages, free pages, page size) of the database file."""
        db = self.db
        return (
            db.execute("PRAGMA page_count").fetchone()[0],
            db.execute("PRAGMA freelist_count").fetchone()[0],
            db.execute("PRAGMA page_size").fetchone()[0],
        )

    def _shrink(self, deadline: float) -> int:
        """Keep the database under `retention_bytes`: the oldest events go
        while the pages in use pass 90% of it (the rest is room for the
        next interval's rows, in pages the deletes freed), and free pages
        past the bound go back to the file system."""
        deleted = 0
        bound = self.retention_bytes
        while time.monotonic() < deadline:
            pages, free, size = self._pages()
            used = (pages - free) * size
            if used <= bound * 0.9:
                break
            rows = self.db.execute("SELECT max(id) - min(id) + 1 FROM events").fetchone()[0]
            if not rows:
                break
            # the share of rows to go, from the bytes over: at least a batch
            over = (used - bound * 0.85) / max(used, 1)
            n = self._delete_oldest(deadline, "", (), max(RETENTION_BATCH, int(rows * over)))
            deleted += n
            if not n:
                break
        pages, free, size = self._pages()
        if free and pages * size > bound:
            self.db.execute(f"PRAGMA incremental_vacuum({free})").fetchall()
        return deleted

    def _forget_processes(self, deadline: float) -> None:
        """Process rows whose last event is older than every stored event
        go (none that a waiting event names)."""
        oldest = self.db.execute("SELECT min(ts_ns) FROM events").fetchone()[0]
        if oldest is None:
            return
        waiting = {row[4] for row in self._pending} | set(self._pending_procs)
        while time.monotonic() < deadline:
            ids = [
                r[0]
                for r in self.db.execute(
                    "SELECT id FROM processes WHERE last_ts_ns < ? LIMIT ?",
                    (oldest, RETENTION_BATCH),
                )
                if r[0] not in waiting
            ]
            if not ids:
                return
            self.db.execute("BEGIN")
            self.db.executemany("DELETE FROM processes WHERE id = ?", [(i,) for i in ids])
            self.db.execute("COMMIT")
            gone = set(ids)
            for ident, proc in list(self._proc_ids.items()):
                if proc in gone:
                    del self._proc_ids[ident]
            if len(ids) < RETENTION_BATCH:
                return

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    def health(self) -> dict:
        """The store's state for status lines and `vigil status`."""
        return {
            "error": self.error,
            "failing_since_ns": self.failing_since_ns,
            "pending": len(self._pending),
            "pending_bytes": self._pending_bytes,
            "max_pending_bytes": self.max_pending_bytes,
            "stored": {k: n for k, n in self.stored.items() if n},
            "waiting": {k: n for k, n in self.waiting.items() if n},
            "dropped": {k: n for k, n in self.dropped.items() if n},
        }

    def record_status(self, stats: dict[str, dict[str, float]], meta: dict | None = None) -> bool:
        """Per-kind counters (and meta rows) in one transaction; False if
        the store could not take them."""
        now = time.time_ns()
        rows = [
            (
                kind,
                now,
                s.get("emitted", 0),
                s.get("lost", 0),
                s.get("partial", 0),
                self.stored.get(kind, 0),
                self.dropped.get(kind, 0),
                s.get("rate", 0.0),
            )
            for kind, s in stats.items()
        ]
        try:
            self.db.execute("BEGIN")
            self.db.executemany(
                "INSERT OR REPLACE INTO sensor_status VALUES (?,?,?,?,?,?,?,?)", rows
            )
            if meta:
                self.db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", meta.items())
            self.db.execute("COMMIT")
            return True
        except sqlite3.Error as err:
            self._rollback()
            log.debug("store %s: status not written: %s", self.path, err)
            return False

    def add_summary(
        self, ts_ns: int, interval_ns: int, name: str, spec: str, rows: list[tuple[dict, int]]
    ) -> None:
        """One interval of an in-kernel counter: a single row, its counts as
        compact JSON ([[key, count], ...]), so a week costs kilobytes."""
        counts = orjson.dumps([[key, n] for key, n in rows]).decode()
        try:
            self.db.execute(
                "INSERT INTO summaries (ts_ns, interval_ns, name, spec, counts) VALUES (?,?,?,?,?)",
                (ts_ns, interval_ns, name, spec, counts),
            )
        except sqlite3.Error as err:
            log.error("store %s: summary %s not written: %s", self.path, name, err)

    def summaries(
        self, *, since_ns: int | None = None, names: Iterable[str] = ()
    ) -> list[tuple[int, int, str, str, list]]:
        """(ts_ns, interval_ns, name, spec, [[key, count], ...]) rows, oldest first
        (malformed rows skipped and counted in `skipped`)."""
        where, args = _where(since_ns, name=list(names))
        sql = f"SELECT ts_ns, interval_ns, name, spec, counts FROM summaries{where}"
        sql += " ORDER BY ts_ns, id"
        try:
            return self._checked(checked.summary(row) for row in self.db.execute(sql, args))
        except sqlite3.DatabaseError as err:
            raise StoreError(f"{self.path}: query failed ({err})") from err

    def _checked(self, rows: Iterable) -> list:
        """The rows a check (outputs/rows.py) passed; the others counted."""
        out = []
        for row in rows:
            if row is None:
                self.skipped += 1
            else:
                out.append(row)
        return out

    # -- reading --------------------------------------------------------------------
    def query(
        self,
        *,
        since_ns: int | None = None,
        kinds: Iterable[str] = (),
        pid: int | None = None,
        comm: str | None = None,
        limit: int = 100,
    ) -> list[str]:
        """Events as their JSON text (docs/events.md), newest first
        (malformed rows skipped and counted in `skipped`).

        Each kind of several is its own query, merged here: `kind IN (..)`
        would read every row of those kinds to sort them, one kind walks
        its (kind, ts_ns) index backwards and stops at `limit`."""
        kinds = list(dict.fromkeys(kinds))
        eq = {k: v for k, v in {"pid": pid, "comm": comm}.items() if v is not None}
        cols = "ts_ns, id, data" + (", proc" if self.version != "1" else "")
        try:
            parts = [
                self._select(cols, since_ns, eq if kind is None else {**eq, "kind": kind}, limit)
                for kind in (kinds or [None])
            ]
            rows = list(islice(heapq.merge(*parts, key=_sql_order, reverse=True), limit))
            if self.version == "1":
                return self._checked(
                    r[2] if checked.event(r[2]) is not None else None for r in rows
                )
            return self._joined(rows)
        except sqlite3.DatabaseError as err:
            raise StoreError(f"{self.path}: query failed ({err})") from err

    def _select(
        self, cols: str, since_ns: int | None, eq: dict, limit: int, plan: bool = False
    ) -> list[tuple]:
        where, args = _where(since_ns, **eq)
        sql = f"SELECT {cols} FROM events{where} ORDER BY ts_ns DESC, id DESC LIMIT ?"
        if plan:
            sql = "EXPLAIN QUERY PLAN " + sql
        return self.db.execute(sql, [*args, limit]).fetchall()

    def query_plan(
        self,
        *,
        since_ns: int | None = None,
        kinds: Iterable[str] = (),
        pid: int | None = None,
        comm: str | None = None,
        limit: int = 100,
    ) -> list[str]:
        """SQLite's plan for each statement `query` runs with these
        arguments (tests and benchmarks check that no query sorts or scans
        the whole table)."""
        eq = {k: v for k, v in {"pid": pid, "comm": comm}.items() if v is not None}
        out = []
        for kind in list(dict.fromkeys(kinds)) or [None]:
            rows = self._select(
                "ts_ns, id, data",
                since_ns,
                eq if kind is None else {**eq, "kind": kind},
                limit,
                True,
            )
            out.append("; ".join(r[-1] for r in rows))
        return out

    def _joined(self, rows: list[tuple]) -> list[str]:
        """Stored rows with their process rows joined back: the full event."""
        ids = list({r[3] for r in rows})
        procs = {}
        for start in range(0, len(ids), 500):
            part = ids[start : start + 500]
            sql = (
                "SELECT id, exe, ancestors, process_key, parent_key, host, boot_id "
                f"FROM processes WHERE id IN ({','.join('?' * len(part))})"
            )
            for row in self.db.execute(sql, part):
                procs[row[0]] = checked.process(*row[1:])
        out = []
        for _ts, _id, data, proc in rows:
            ev = checked.event(data)
            joined = procs.get(proc)
            if ev is None or joined is False:
                self.skipped += 1
                continue
            if joined is None:  # its row is gone (an altered store): as an unknown process
                joined = {"exe": "", "ancestors": []}
            for name, value in joined.items():
                ev.setdefault(name, value)
            ev["time"] = iso_time(ev["ts_ns"])
            out.append(orjson.dumps(ev).decode())
        return out

    def status(self) -> list[dict]:
        try:
            cur = self.db.execute("SELECT * FROM sensor_status ORDER BY kind")
            names = [d[0] for d in cur.description]
            return self._checked(checked.status(dict(zip(names, row))) for row in cur)
        except sqlite3.DatabaseError as err:
            raise StoreError(f"{self.path}: cannot read status ({err})") from err

    def count(self) -> int:
        try:
            return self.db.execute("SELECT count(*) FROM events").fetchone()[0]
        except sqlite3.DatabaseError as err:
            raise StoreError(f"{self.path}: cannot count events ({err})") from err
