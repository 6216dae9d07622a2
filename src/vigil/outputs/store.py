"""The embedded event store: SQLite in WAL mode.

Each event is one row: a few indexed columns for the queries `vigil events`
runs (time, kind, pid, comm), the id of its process's row, and the event
itself, without what its process row holds: `exe` and `ancestors` are
stored once per process image (table `processes`), not copied into every
event, and `time` is made from `ts_ns` when read.  The event itself is
either the kernel's record as it came from the ring (`rec`, with the id
of its layout in table `layouts`: what records.py derived from the BPF
object's BTF, kept so that any later Vigil can decode it), or JSON
(`data`, docs/events.md) for an event made in user space.  A record is
stored undecoded when no stage of the analysis read it: decoding it into
Python objects and those into JSON cost three times what the store's
insert does, at line rate, and the record is half the JSON's size; it is
decoded when read, which is rare.  The readers decode and join, so
`vigil events --json` prints the documented shape.  Rows are inserted in
batched transactions.

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

import functools
import heapq
import logging
import os
import sqlite3
import stat
import struct
import time
import urllib.parse
from collections import Counter, deque
from collections.abc import Iterable
from itertools import islice
from operator import itemgetter

import orjson

from .. import files, records
from ..encoding import escape, escape_cached, iso_time, textual
from ..errors import StoreError, VigilError
from ..paths import DEFAULT_DB
from . import rows as checked

log = logging.getLogger("vigil.store")

SCHEMA_VERSION = "3"  # a database of a newer schema is refused, not misread
# 1: every event's JSON whole, ancestry copied into each row (read, not written)
# 2: every event's JSON (no rec, layout columns, no layouts table): upgraded in
#    place when opened for writing (its rows stay as they are, and are read)
READABLE_VERSIONS = ("1", "2", SCHEMA_VERSION)
DEFAULT_RETENTION_AGE_S = 14 * 86400.0
DEFAULT_RETENTION_BYTES = 2 << 30
PAGE_SIZE = 16384  # of a new store (an existing one keeps its own)
_PARTITIONS = """CREATE TABLE IF NOT EXISTS partitions (
    n INTEGER PRIMARY KEY,
    sealed INTEGER NOT NULL,
    min_ts INTEGER,
    max_ts INTEGER,
    rows INTEGER
)"""
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS layouts (
    id INTEGER PRIMARY KEY,
    digest TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    description TEXT NOT NULL
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
{partitions};
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
""".replace("{partitions}", _PARTITIONS)
# Events go into partitions, tables of the same columns: the newest (live)
# one has no index but its rowid, so an insert writes one B-tree, not five;
# once it holds SEAL_ROWS rows it is sealed: its indexes are built in one
# sorted pass (less than half the cost of keeping them row by row) and a
# new partition takes the inserts.  Readers query each partition (the live
# one by a scan of at most SEAL_ROWS rows); retention drops old partitions
# whole.  The view `events` is their union, for SQL by hand.
SEAL_ROWS = 1 << 16  # a scan of the live partition stays under ~60 ms (bench/store_query)
_PART_COLUMNS = "id, ts_ns, kind, pid, comm, proc, data, rec, layout"
_PART_TABLE = """CREATE TABLE {t} (
    id INTEGER PRIMARY KEY,
    ts_ns INTEGER NOT NULL,
    kind TEXT NOT NULL,
    pid INTEGER NOT NULL,
    comm TEXT NOT NULL,
    proc INTEGER NOT NULL,
    data TEXT NOT NULL,
    rec BLOB,
    layout INTEGER
)"""
# a sealed partition's indexes: what `query` walks, newest first
_PART_INDEXES = (
    ("ts", "ts_ns"),
    ("kind_ts", "kind, ts_ns"),
    ("pid_ts", "pid, ts_ns"),
    ("comm_ts", "comm, ts_ns"),
)
_VIEW_TERMS = 200  # partitions per UNION ALL (SQLite allows 500 terms)
_MAX_PARTITION = 1 << 40  # a catalog number past this was not written by the agent
_INSERT = (
    "INSERT INTO {t} (ts_ns, kind, pid, comm, proc, data, rec, layout) VALUES (?,?,?,?,?,?,?,?)"
)
_INSERT_ID = "INSERT INTO {t} (id, ts_ns, kind, pid, comm, proc, data, rec, layout) VALUES (?,?,?,?,?,?,?,?,?)"
# OR REPLACE: a row put in by hand under our digest or id (its description
# not what the digest says) gives way, rather than our records pointing at it
_INSERT_LAYOUT = "INSERT OR REPLACE INTO layouts VALUES (?,?,?,?)"
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


@functools.cache
def _finish_hooks() -> dict:
    """The sensors' finishing touches, per kind (as the analysis applies them)."""
    from ..recorder import finish_hooks

    return finish_hooks()


def _part_name(n: int) -> str:
    return f"events_p{int(n)}"


def _row_size(row: tuple) -> int:
    """What a waiting row holds in memory: its JSON or record, and ROW_OVERHEAD."""
    rec = row[6]
    return len(row[5]) + ROW_OVERHEAD + (len(rec) if rec is not None else 0)


def _rows_size(rows: list[tuple]) -> int:
    """The sum of _row_size over `rows` (in C: flush counts every row)."""
    records = filter(None, map(itemgetter(6), rows))
    return (
        sum(map(len, map(itemgetter(5), rows))) + sum(map(len, records)) + ROW_OVERHEAD * len(rows)
    )


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
    _distrust_schema(db)
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
            db = sqlite3.connect(
                _uri(path, mode="ro", immutable="1"), uri=True, timeout=5.0, isolation_level=None
            )
            _distrust_schema(db)
            return db
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
    db = sqlite3.connect(os.path.abspath(path), timeout=5.0, isolation_level=None)
    _distrust_schema(db)
    return db


def _distrust_schema(db: sqlite3.Connection) -> None:
    """Views and triggers in the file (ours: `events` and its insert) may
    only call innocuous SQL functions: one an editor of the file planted
    cannot reach functions with side effects (SQLite's trusted_schema)."""
    db.execute("PRAGMA trusted_schema=OFF")


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
        # layouts of undecoded records: id(records.StoredForm) -> (form, row id),
        # the form kept so that its id is not reused; digest -> row id; rows unwritten
        self._layout_of: dict[int, tuple] = {}
        self._layout_ids: dict[str, int] = {}
        self._next_layout = 1
        self._pending_layouts: list[tuple] = []
        self._comms: dict[bytes, str] = {}
        self._touch: dict[int, int] = {}  # process row id -> newest ts_ns of its events, unwritten
        self._readers: dict[int, tuple | None] = {}  # layout id -> (decode, finish) or None
        # the live partition (writer): its number, table, rows, oldest ts_ns;
        # the id its first row takes; when a failed seal is tried again
        self._live_n = 0
        self._live = ""
        self._live_rows = 0
        self._live_min: int | None = None
        self._next_id = 1
        self._seal_at = 0.0
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
                self._load_layouts()
                self._open_partitions()
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
        if row[0] == "2":  # the same rows, and two more columns: upgraded in place
            # (its table, indexed, is the first partition: _open_partitions)
            self.db.execute("BEGIN")
            self.db.execute("ALTER TABLE events RENAME TO events_p0")
            self.db.execute("ALTER TABLE events_p0 ADD COLUMN rec BLOB")
            self.db.execute("ALTER TABLE events_p0 ADD COLUMN layout INTEGER")
            # in the same transaction, so that a reader never sees schema 3
            # without its catalog and view (the agent killed in between)
            self.db.execute(_PARTITIONS)
            self.db.execute(
                "INSERT INTO partitions SELECT 0, 1, min(ts_ns), max(ts_ns), count(*) FROM events_p0"
            )
            self.db.execute(f"CREATE VIEW events AS SELECT {_PART_COLUMNS} FROM events_p0")
            self.db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (SCHEMA_VERSION,))
            self.db.execute("COMMIT")
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

    # -- partitions -------------------------------------------------------------------
    def _parts(self) -> list[tuple[str, bool, int | None, int | None, int]]:
        """(table, sealed, min ts_ns, max ts_ns, rows) of every partition,
        newest first (rows and times as of sealing: None, 0 for the live
        one).  A store of schema 1 or 2 is one partition, `events`."""
        if self.version in ("1", "2"):
            return [("events", True, None, None, 0)]
        out = []
        tables = {
            r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        for n, sealed, lo, hi, rows in self.db.execute(
            "SELECT n, sealed, min_ts, max_ts, rows FROM partitions ORDER BY n DESC"
        ):
            # an altered catalog: what names no partition table is not read
            if type(n) is not int or _part_name(n) not in tables:
                continue
            lo = lo if type(lo) is int else None
            hi = hi if type(hi) is int else None
            out.append((_part_name(n), bool(sealed), lo, hi, rows if type(rows) is int else 0))
        return out

    def _open_partitions(self) -> None:
        """The writer's live partition: the unsealed one, or a new one."""
        db = self.db
        parts = db.execute("SELECT n, sealed FROM partitions ORDER BY n").fetchall()
        if any(not 0 <= n < _MAX_PARTITION for n, _sealed in parts):
            # an edited catalog: the next partition's number would not fit SQLite
            raise StoreError(
                f"{self.path}: not a usable Vigil database (partition numbers out of range: "
                "was the store altered?); move it aside to start afresh"
            )
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not parts and "events_p0" in tables:  # a schema 2 store, upgraded: its table, sealed
            db.execute(
                "INSERT INTO partitions SELECT 0, 1, min(ts_ns), max(ts_ns), count(*) FROM events_p0"
            )
            parts = [(0, 1)]
        unsealed = [n for n, sealed in parts if not sealed]
        top = 0
        for n, _sealed in parts:
            top = max(
                top, db.execute(f"SELECT ifnull(max(id), 0) FROM {_part_name(n)}").fetchone()[0]
            )
        self._next_id = top + 1
        if unsealed:
            self._live_n = unsealed[-1]
            self._live = _part_name(self._live_n)
            self._live_rows, self._live_min = db.execute(
                f"SELECT count(*), min(ts_ns) FROM {self._live}"
            ).fetchone()
            if "events" not in {
                r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='view'")
            }:
                db.execute("BEGIN")
                self._rebuild_view()
                db.execute("COMMIT")
        else:
            db.execute("BEGIN")
            self._new_partition(max((n for n, _ in parts), default=0) + 1)
            db.execute("COMMIT")

    def _new_partition(self, n: int) -> None:
        """(In the caller's transaction) partition `n`, now the live one."""
        table = _part_name(n)
        self.db.execute(_PART_TABLE.format(t=table))
        self.db.execute("INSERT INTO partitions VALUES (?, 0, NULL, NULL, 0)", (n,))
        self._live_n, self._live, self._live_rows, self._live_min = n, table, 0, None
        self._rebuild_view()

    def _rebuild_view(self) -> None:
        """(In the caller's transaction) the view `events`: every partition,
        oldest first; and its INSTEAD OF INSERT trigger, into the live one."""
        db = self.db
        for (name,) in db.execute(
            "SELECT name FROM sqlite_master WHERE type='view' AND (name='events' OR name LIKE 'events\\_v%' ESCAPE '\\')"
        ).fetchall():
            db.execute(f"DROP VIEW {name}")
        names = [p[0] for p in reversed(self._parts())]
        terms = []
        for i in range(0, len(names), _VIEW_TERMS):
            part = " UNION ALL ".join(
                f"SELECT {_PART_COLUMNS} FROM {t}" for t in names[i : i + _VIEW_TERMS]
            )
            if len(names) <= _VIEW_TERMS:
                terms.append(part)
                break
            db.execute(f"CREATE VIEW events_v{i // _VIEW_TERMS} AS {part}")
            terms.append(f"SELECT {_PART_COLUMNS} FROM events_v{i // _VIEW_TERMS}")
        db.execute(f"CREATE VIEW events AS {' UNION ALL '.join(terms)}")
        # ids go on from the other partitions' (an empty table would start at 1)
        base = 0
        for name in names:
            if name != self._live:
                top = db.execute(f"SELECT max(id) FROM {name}").fetchone()[0]
                base = max(base, top if type(top) is int else 0)
        new = ", ".join(f"NEW.{c.strip()}" for c in _PART_COLUMNS.split(",")[1:])
        live = self._live
        db.execute(
            f"CREATE TRIGGER events_insert INSTEAD OF INSERT ON events BEGIN "
            f"INSERT INTO {live} ({_PART_COLUMNS}) VALUES (coalesce(NEW.id, "
            f"(SELECT ifnull(max(id), {base}) + 1 FROM {live})), {new}); END"
        )

    def _seal(self) -> None:
        """Index the live partition and start the next one (one transaction;
        if it fails, the partition stays live, and is sealed later)."""
        db, table = self.db, self._live
        try:
            db.execute("BEGIN")
            for suffix, cols in _PART_INDEXES:
                db.execute(f"CREATE INDEX {table}_{suffix} ON {table} ({cols})")
            lo, hi, rows, top = db.execute(
                f"SELECT min(ts_ns), max(ts_ns), count(*), max(id) FROM {table}"
            ).fetchone()
            db.execute(
                "UPDATE partitions SET sealed=1, min_ts=?, max_ts=?, rows=? WHERE n=?",
                (lo, hi, rows, self._live_n),
            )
            live = (self._live_n, self._live, self._live_rows, self._live_min)
            try:
                self._new_partition(self._live_n + 1)
                db.execute("COMMIT")
            except sqlite3.Error:
                self._live_n, self._live, self._live_rows, self._live_min = live
                raise
            self._next_id = (top or 0) + 1
        except sqlite3.Error as err:
            self._rollback()
            self._seal_at = time.monotonic() + 5.0
            log.warning("store %s: partition %s not sealed yet: %s", self.path, table, _reason(err))

    def seal(self) -> None:
        """Seal the live partition now, whatever it holds (bench/pipeline
        counts the indexing of every row it stored; bench/store_query)."""
        self.flush(force=True)
        # rows SQL put in by hand (through the view) count too
        self._live_rows = self.db.execute(f"SELECT count(*) FROM {self._live}").fetchone()[0]
        if self._live_rows:
            self._seal()

    def last_id(self) -> int:
        """The id of the newest stored event (0: none)."""
        for table, *_ in self._parts():
            top = self.db.execute(f"SELECT max(id) FROM {table}").fetchone()[0]
            if top is not None:
                return top
        return 0

    # -- writing --------------------------------------------------------------------
    def add(self, events: list, lines: list[bytes] | None = None) -> None:
        """Queue enriched events for the next flush; past `max_pending_bytes`
        waiting, the oldest are dropped and counted.  An event is a dict
        (stored as JSON) or an undecoded record (process.UNDECODED: stored
        as it is).  (`lines`, the full JSON a console sink made, is not what
        is stored: the stored JSON leaves out what the event's process row
        holds.)"""
        chains: dict[int, bytes] = {}  # id(ancestors list) -> its JSON: lists are shared
        # (process key, parent key, exe, id(ancestors)) -> process row id: the
        # events of a batch come from few processes, whose chains are shared;
        # an undecoded record's by id(what its process gives it), shared too
        procs: dict = {}
        rows = []
        append = rows.append
        size = 0
        general = self._shapes.general
        plans = self._shapes.plans
        layout_of = self._layout_of
        comms = self._comms
        for ev in events:
            if type(ev) is tuple:  # an undecoded record: process.UNDECODED
                ts, form, pid, comm, _cpu, _seq, hit, rec = ev
                proc = procs.get(id(hit))
                if proc is None:
                    proc = procs[id(hit)] = self._proc_row(
                        hit[2], hit[3], hit[0], hit[1], hit[4], hit[5], ts, chains
                    )
                layout = layout_of.get(id(form))
                if layout is None:
                    layout = self._layout_row(form)
                text = comms.get(comm)
                if text is None:
                    if len(comms) > 4096:
                        comms.clear()
                    text = comms[comm] = escape_cached(comm.partition(b"\0")[0])
                size += len(rec)
                append((ts, form.layout.kind, pid, text, proc, "", rec, layout[1]))
                continue
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
                proc = procs[seen] = self._proc_row(
                    seen[0],
                    seen[1],
                    seen[2],
                    chain,
                    ev.get("host", ""),
                    ev.get("boot_id", ""),
                    ev["ts_ns"],
                    chains,
                )
            append(
                (
                    ev["ts_ns"],
                    ev["kind"],
                    ev["pid"],
                    escape_cached(comm) if type(comm) is bytes else comm,
                    proc,
                    data,
                    None,
                    None,
                )
            )
        self._pending.extend(rows)
        self._pending_bytes += size + ROW_OVERHEAD * len(rows)
        if rows:  # each process row's last use: this batch's newest time (a batch is ms)
            newest = max(map(itemgetter(0), rows))
            touch = self._touch
            for proc in procs.values():
                if touch.get(proc, -1) < newest:
                    touch[proc] = newest
        kinds = Counter(map(itemgetter(1), rows))
        self.accepted.update(kinds)
        self.waiting.update(kinds)
        if self._pending_bytes > self.max_pending_bytes:
            self._drop_oldest()

    def _proc_row(
        self,
        process_key: str,
        parent_key: str,
        exe: bytes | str,
        chain: list,
        host: str,
        boot: str,
        ts_ns: int,
        chains: dict[int, bytes],
    ) -> int:
        """The id of a process row (an image and its ancestry), made the
        first time it is seen."""
        chain = chain or _NO_ANCESTORS
        anc = chains.get(id(chain))
        if anc is None:
            anc = chains[id(chain)] = orjson.dumps(chain)
        ident = (process_key, parent_key, exe, anc)
        proc = self._proc_ids.get(ident)
        if proc is None:
            if len(self._proc_ids) > 1 << 17:
                self._proc_ids.clear()  # a row made again costs a row, not a wrong answer
            proc = self._proc_ids[ident] = self._next_proc
            self._next_proc += 1
            text = escape_cached(exe) if type(exe) is bytes else exe
            row = (proc, process_key, parent_key, host, boot, text, anc.decode(), ts_ns)
            self._pending_procs[proc] = row
        return proc

    def _load_layouts(self) -> None:
        """The stored layouts a record may name: only a row whose description
        is what its digest says (one edited or put in by hand under a real
        layout's digest would have every later record of it misread)."""
        top = 0
        for lid, digest, description in self.db.execute(
            "SELECT id, digest, description FROM layouts"
        ):
            top = max(top, lid)
            if type(description) is str and digest == records.digest_of(description):
                self._layout_ids[digest] = lid
        self._next_layout = top + 1

    def _layout_row(self, form) -> tuple:
        """(form, id) of a record layout's row (records.StoredForm), made
        the first time a record of it is stored."""
        lid = self._layout_ids.get(form.digest)
        if lid is None:
            lid = self._layout_ids[form.digest] = self._next_layout
            self._next_layout += 1
            self._pending_layouts.append((lid, form.digest, form.layout.kind, form.description))
        out = self._layout_of[id(form)] = (form, lid)
        return out

    def _drop_oldest(self) -> None:
        pending = self._pending
        while self._pending_bytes > self.max_pending_bytes and pending:
            row = pending.popleft()
            self._pending_bytes -= _row_size(row)
            self.dropped[row[1]] += 1
            self.waiting[row[1]] -= 1
        # the dropped events' process rows, unless a waiting event names them
        # (they are not in the byte bound: keep them from growing without one)
        if len(self._pending_procs) > len(pending):
            named = {row[4] for row in pending}
            gone = {p for p in self._pending_procs if p not in named}
            for proc in gone:
                del self._pending_procs[proc]
                self._touch.pop(proc, None)
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
                if self._pending_layouts:
                    self.db.executemany(_INSERT_LAYOUT, self._pending_layouts)
                if procs:  # before the events that name them
                    self.db.executemany(_INSERT_PROC, procs)
                live = self._live
                top = self.db.execute(f"SELECT max(id) FROM {live}").fetchone()[0]
                if top is not None and top >= self._next_id - 1:
                    self.db.executemany(_INSERT.format(t=live), rows)
                else:  # a new (or emptied) partition: ids go on from the last one given
                    self.db.execute(_INSERT_ID.format(t=live), (self._next_id, *rows[0]))
                    self.db.executemany(_INSERT.format(t=live), islice(rows, 1, None))
                top = self.db.execute(f"SELECT max(id) FROM {live}").fetchone()[0]
                # the newest use of each process row these events name
                touch = self._touch
                used = [(touch[p], p) for p in named if p in touch]
                self.db.executemany(_TOUCH_PROC, used)
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
            self._pending_layouts.clear()
            self._next_id = max(self._next_id, top + 1)  # never again, even once deleted
            for _ts, proc in used:
                del touch[proc]
            self._live_rows += len(rows)
            oldest = min(map(itemgetter(0), rows))
            if self._live_min is None or oldest < self._live_min:
                self._live_min = oldest
            if self._live_rows >= SEAL_ROWS and time.monotonic() >= self._seal_at:
                self._seal()
            for proc in procs:
                del waiting_procs[proc[0]]
            if len(rows) == len(self._pending):
                self._pending.clear()
            else:
                for _ in range(len(rows)):
                    self._pending.popleft()
            self._pending_bytes -= _rows_size(rows)
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
        any more; a sealed partition wholly past the bound is dropped in one
        statement, others lose RETENTION_BATCH rows per transaction, until
        done or `budget_s` is spent (call it again on the next tick).
        Returns how many events were deleted.  Ingestion shares this
        connection: it waits at most one small transaction."""
        if self.readonly or self.error is not None:
            return 0
        deadline = time.monotonic() + budget_s
        deleted = 0
        try:
            if self.retention_age_s is not None:
                now_ns = time.time_ns() if now_ns is None else now_ns
                cutoff = now_ns - int(self.retention_age_s * 1e9)
                deleted += self._delete_oldest(deadline, cutoff)
            if self.retention_bytes is not None:
                deleted += self._shrink(deadline)
            if deleted or time.monotonic() < deadline:
                self._forget_processes(deadline)
        except sqlite3.Error as err:
            self._rollback()
            log.warning("store %s: retention: %s", self.path, _reason(err))
        self.deleted += deleted
        return deleted

    def _delete_oldest(self, deadline: float, cutoff: int | None, limit: int = -1) -> int:
        """Delete the oldest events (those before `cutoff`, if given), at most
        `limit` (-1: all), partition by partition from the oldest, until
        the deadline."""
        deleted = 0
        for table, sealed, lo, hi, rows in reversed(self._parts()):
            if (limit >= 0 and deleted >= limit) or time.monotonic() >= deadline:
                break
            live = table == self._live
            if cutoff is not None:
                if live and (self._live_min is None or self._live_min >= cutoff):
                    break  # nothing old in the live partition: scanning it would find none
                if sealed and not live and lo is not None and lo >= cutoff:
                    break  # partitions are in time order: none older after this one
            whole = (
                sealed
                and not live
                and (
                    (cutoff is not None and hi is not None and hi < cutoff)
                    or (cutoff is None and limit - deleted >= rows > 0)
                )
            )
            if whole or (sealed and not live and rows == 0):
                deleted += self._drop_partition(table)
                continue
            # sealed: its ts index gives the oldest; live: its rowid (in ring order)
            order = "ts_ns" if sealed and not live else "id"
            where = "WHERE ts_ns < ?" if cutoff is not None else ""
            args = (cutoff,) if cutoff is not None else ()
            while limit < 0 or deleted < limit:
                n = RETENTION_BATCH if limit < 0 else min(RETENTION_BATCH, limit - deleted)
                cur = self.db.execute(
                    f"DELETE FROM {table} WHERE id IN (SELECT id FROM {table} {where} "
                    f"ORDER BY {order} LIMIT ?)",
                    (*args, n),
                )
                deleted += cur.rowcount
                if sealed and not live:
                    self.db.execute(
                        "UPDATE partitions SET rows = max(rows - ?, 0) WHERE n = ?",
                        (cur.rowcount, int(table.removeprefix("events_p"))),
                    )
                elif live:
                    self._live_rows = max(self._live_rows - cur.rowcount, 0)
                if cur.rowcount < n or time.monotonic() >= deadline:
                    break
            if live and cutoff is not None:
                self._live_min = self.db.execute(f"SELECT min(ts_ns) FROM {table}").fetchone()[0]
        return deleted

    def _drop_partition(self, table: str) -> int:
        """Drop a sealed partition whole; returns the events it held."""
        db = self.db
        rows = db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        db.execute("BEGIN")
        try:
            db.execute(f"DROP TABLE {table}")
            db.execute("DELETE FROM partitions WHERE n = ?", (int(table.removeprefix("events_p")),))
            self._rebuild_view()
            db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        return rows

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
            rows = sum(p[4] for p in self._parts() if p[0] != self._live) + self._live_rows
            if not rows:
                break
            # the share of rows to go, from the bytes over: at least a batch
            over = (used - bound * 0.85) / max(used, 1)
            n = self._delete_oldest(deadline, None, max(RETENTION_BATCH, int(rows * over)))
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
        # the oldest event: of every partition, not the oldest one's alone
        # (times are not in partition order: a connect or exec record takes
        # its time at the call's start, and the clock may be stepped back);
        # as sealed: retention only deletes, so that may be earlier, and
        # keeps rows longer
        lows = []
        for table, sealed, lo, _hi, _rows in self._parts():
            if table == self._live:
                lo = self._live_min
            elif not sealed or lo is None:  # empty when sealed, or an edited catalog
                lo = self.db.execute(f"SELECT min(ts_ns) FROM {table}").fetchone()[0]
            if type(lo) is int:
                lows.append(lo)
        if not lows:
            return
        oldest = min(lows)
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
        if self.version not in ("1", "2"):
            cols += ", rec, layout"
        try:
            # one snapshot: the agent may seal or drop a partition meanwhile
            snapshot = not self.db.in_transaction
            if snapshot:
                self.db.execute("BEGIN")
            try:
                parts = self._parts()
                found = [
                    self._newest(
                        parts, cols, since_ns, eq if kind is None else {**eq, "kind": kind}, limit
                    )
                    for kind in (kinds or [None])
                ]
                rows = list(islice(heapq.merge(*found, key=_sql_order, reverse=True), limit))
                if self.version != "1":
                    return self._joined(rows)
            finally:
                if snapshot and self.db.in_transaction:
                    self.db.execute("COMMIT")
            return self._checked(r[2] if checked.event(r[2]) is not None else None for r in rows)
        except sqlite3.DatabaseError as err:
            raise StoreError(f"{self.path}: query failed ({err})") from err

    def _newest(
        self, parts: list[tuple], cols: str, since_ns: int | None, eq: dict, limit: int
    ) -> list[tuple]:
        """The `limit` newest rows matching, over the partitions (newest
        first): a sealed one whose newest event is older than what is found
        already (or than `since_ns`) is not read.  Ids grow with the
        partitions, so an older one's row of equal time ranks lower too."""
        got: list[tuple] = []
        for table, sealed, _lo, hi, _rows in parts:
            if sealed and hi is not None:
                if since_ns is not None and hi < since_ns:
                    continue
                if len(got) >= limit and type(got[-1][0]) is int and hi <= got[-1][0]:
                    continue
            rows = self._select(table, cols, since_ns, eq, limit)
            got = list(islice(heapq.merge(got, rows, key=_sql_order, reverse=True), limit))
        return got

    def _select(
        self, table: str, cols: str, since_ns: int | None, eq: dict, limit: int, plan: bool = False
    ) -> list[tuple]:
        where, args = _where(since_ns, **eq)
        sql = f"SELECT {cols} FROM {table}{where} ORDER BY ts_ns DESC, id DESC LIMIT ?"
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
        arguments on a sealed partition (tests and benchmarks check that
        none sorts or scans a whole partition; the live one, scanned, holds
        at most SEAL_ROWS rows)."""
        eq = {k: v for k, v in {"pid": pid, "comm": comm}.items() if v is not None}
        out = []
        sealed = [p for p in self._parts() if p[1] and p[0] != self._live]
        for kind in list(dict.fromkeys(kinds)) or [None]:
            for table, *_ in sealed:
                rows = self._select(
                    table,
                    "ts_ns, id, data",
                    since_ns,
                    eq if kind is None else {**eq, "kind": kind},
                    limit,
                    True,
                )
                out.append("; ".join(r[-1] for r in rows))
        return out

    def _joined(self, rows: list[tuple]) -> list[str]:
        """Stored rows, decoded, with their process rows joined back: the full event."""
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
        for row in rows:
            ev = self._event(row)
            joined = procs.get(row[3])
            if ev is None or joined is False:
                self.skipped += 1
                continue
            if joined is None:  # its row is gone (an altered store): as an unknown process
                joined = {"exe": "", "ancestors": []}
            for name, value in joined.items():
                # a record's own exe (a check made inside execve) is the event's
                if not ev.get(name):
                    ev[name] = value
            ev["time"] = iso_time(ev["ts_ns"])
            out.append(orjson.dumps(ev).decode())
        return out

    def _event(self, row: tuple) -> dict | None:
        """A row's event (ts_ns, id, data[, proc, rec, layout]): its JSON, or
        its record decoded; None for a row the agent never writes."""
        if len(row) < 6 or row[4] is None:
            return checked.event(row[2])
        rec, data = row[4], row[2]
        reader = self._reader(row[5])
        # (the agent writes a record's row with no JSON beside it)
        if reader is None or type(rec) is not bytes or type(row[0]) is not int or data != "":
            return None
        decode, finish = reader
        try:
            ev = decode(rec)
            if finish is not None:
                finish(ev)
        except Exception:  # noqa: BLE001 - an altered record: skipped and counted
            return None
        ev["ts_ns"] = row[0]  # the epoch time it was stored with (the record's is boot time)
        ev = textual(ev)
        # the JSON rows' rule (rows.event): a layout edited to give `ts_ns`
        # or `pid` another type would otherwise reach the printers
        return ev if checked.header(ev) else None

    def _reader(self, layout_id) -> tuple | None:
        """(decode, finish hook) of a stored layout; None if it is unusable."""
        if layout_id in self._readers:
            return self._readers[layout_id]
        reader = None
        row = None
        if type(layout_id) is int:
            row = self.db.execute(
                "SELECT description FROM layouts WHERE id=?", (layout_id,)
            ).fetchone()
        if row is not None and type(row[0]) is str:
            try:
                layout, flags = records.described(orjson.loads(row[0]))
                decode = records.make_decoder(layout, flags)
            except (orjson.JSONDecodeError, VigilError, struct.error, RecursionError):
                log.debug("store %s: layout %s unusable", self.path, layout_id)
            else:
                reader = (decode, _finish_hooks().get(layout.kind))
        if len(self._readers) > 4096:
            self._readers.clear()
        self._readers[layout_id] = reader
        return reader

    def identities_after(self, mark: int, kind: str | None = None) -> list[tuple]:
        """(cpu, seq) of every event (of `kind`) stored after row `mark`."""
        try:
            cols = "ts_ns, id, data, proc" + (
                ", rec, layout" if self.version not in ("1", "2") else ""
            )
            where, args = _where(None, kind=kind) if kind is not None else ("", [])
            where = f"{where} AND id > ?" if where else " WHERE id > ?"
            rows = self.db.execute(f"SELECT {cols} FROM events{where}", [*args, mark]).fetchall()
        except sqlite3.Error as err:
            raise StoreError(f"{self.path}: cannot read the last rows ({err})") from err
        out = []
        for row in rows:
            ev = self._event(row)
            if ev is None:
                continue
            # numbers only: an edited row's list would be unhashable in the
            # caller's set, and fail the agent's start
            cpu, seq = ev.get("cpu"), ev.get("seq")
            if type(cpu) is int and type(seq) is int:
                out.append((cpu, seq))
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
