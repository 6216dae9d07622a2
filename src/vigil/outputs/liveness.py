"""Which agent writes a store, whether it is still alive, how its last run ended.

The agent's record (JSON) says who it is: pid, the process's start time
(field 22 of /proc/PID/stat, clock ticks since boot) and the boot id, so a
reader can tell at once whether that very process still runs (a pid reused
by another process, or a record from before a reboot, is not it).  It is
kept in two places:

- the store's `meta` table, key `agent`, beside the counters it describes;
- `<db>-agent`, a file of fixed size written in place (os.pwrite over
  blocks allocated when it was created), because a store that cannot be
  written (disk full) must still be able to say so, and say it last.

Readers take whichever copy is newer.  A record left "running" by a process
that is gone means the run ended uncleanly (kill -9, crash, power loss);
the next agent to open the store says so, with the last status it wrote.
"""

from __future__ import annotations

import logging
import os
import stat
import time

import orjson

from .. import files
from ..errors import StoreError, VigilError
from .store import Store

log = logging.getLogger("vigil.store")

STATE_SUFFIX = "-agent"
STATE_SIZE = 16384


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def process_start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (after the comm, which may hold spaces
    and parentheses), or None if no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    try:
        return int(data[data.rindex(b")") + 2 :].split()[19])
    except (ValueError, IndexError):
        return None


# The process that stands for the agent: `vigil monitor`'s analysis writes the
# record in the name of its capture process (vigil.pipeline), the one an
# operator signals and `vigil status` must find alive.
AGENT_PID: int | None = None


def identity() -> dict:
    pid = AGENT_PID or os.getpid()
    return {"pid": pid, "start_time": process_start_time(pid), "boot_id": _boot_id()}


def alive(record: dict) -> bool:
    """Is the process that wrote `record` still running on this boot?"""
    pid = record.get("pid")
    if not isinstance(pid, int) or pid <= 0 or record.get("boot_id") != _boot_id():
        return False
    start = process_start_time(pid)
    return start is not None and start == record.get("start_time")


def state_path(db_path: str) -> str:
    return db_path + STATE_SUFFIX


# The record's fields and their types: anything else in a stored record
# (tampered, or from another version) is ignored rather than trusted.
_FIELDS = {
    "state": str,
    "pid": int,
    "start_time": int,
    "boot_id": str,
    "started_ns": int,
    "updated_ns": int,
    "status": str,
    "store": "record",  # _STORE_FIELDS
    "unwritten": dict,
    "lag": "lag",  # _LAG_FIELDS: the analysis behind the capture (vigil.pipeline)
    "discarded": dict,  # per kind, deleted from the event log unanalysed
}
_LAG_FIELDS = {"bytes": int, "events": int, "seconds": float}
_STORE_FIELDS = {
    "error": str,
    "failing_since_ns": int,
    "pending": int,
    "pending_bytes": int,
    "max_pending_bytes": int,
    "stored": dict,
    "waiting": dict,
    "dropped": dict,
}


def _typed(obj: dict, fields: dict) -> dict:
    out = {}
    for key, kind in fields.items():
        value = obj.get(key)
        if kind in ("record", "lag"):
            if isinstance(value, dict):
                out[key] = _typed(value, _STORE_FIELDS if kind == "record" else _LAG_FIELDS)
            continue
        if isinstance(value, kind) and not isinstance(value, bool):
            if kind is dict:  # per-kind counts
                value = {str(k): n for k, n in value.items() if type(n) is int and 0 <= n < 1 << 63}
            elif kind is int and not 0 <= value < 1 << 63:
                continue
            out[key] = value
    return out


def _parse(raw: bytes | str | None) -> dict | None:
    if not raw:
        return None
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError:
        # stores written before this record: the bare word running/stopped
        text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
        return {"state": text.strip()} if text.strip() in ("running", "stopped") else None
    if not isinstance(record, dict):
        return None
    return _typed(record, _FIELDS)


def _read_side_file(path: str) -> bytes | None:
    """The side file's text; never through a symlink, never blocking on a FIFO."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.pread(fd, STATE_SIZE, 0).strip()
    except OSError:
        return None
    finally:
        os.close(fd)


def printable(text: str) -> str:
    """A stored string shown on a terminal: control characters escaped."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def read_record(store: Store) -> dict | None:
    """The newest of the store's and the side file's copy of the record."""
    candidates = [_parse(store.get_meta("agent")), _parse(_read_side_file(state_path(store.path)))]
    found = [c for c in candidates if c]
    return max(found, key=lambda r: r.get("updated_ns") or 0) if found else None


def describe(record: dict | None, now_ns: int | None = None) -> tuple[str, str]:
    """(state, one line) for `vigil status`: running, died, stopped or unknown."""
    if not record:
        return "unknown", "no agent has recorded its state in this store"
    now_ns = now_ns or time.time_ns()
    age = (now_ns - (record.get("updated_ns") or now_ns)) / 1e9
    pid = record.get("pid")
    store = record.get("store") or {}
    if record.get("state") == "stopped":
        line = f"stopped {age:.0f}s ago"
        unwritten = sum((record.get("unwritten") or {}).values())
        if unwritten:
            why = printable(store.get("error") or "the store fell behind")
            line += f"; {unwritten} events were never written ({why})"
        return "stopped", line
    if record.get("state") != "running":
        return "unknown", f"state {printable(repr(record.get('state')))}"
    if pid is None:  # a record without identity: only its age can tell
        return (
            ("running", "running")
            if age < 15
            else (
                "died",
                f"not running (last report {age:.0f}s ago)",
            )
        )
    if not alive(record):
        return "died", (
            f"died (pid {pid} is gone, last report {age:.0f}s ago): the run ended uncleanly; "
            f"its last status: {printable(record.get('status') or 'none')}"
        )
    line = f"running (pid {pid})"
    if store.get("error"):
        since = (now_ns - store.get("failing_since_ns", now_ns)) / 1e9
        line += (
            f"; store FAILING for {since:.0f}s: {printable(store['error'])}; "
            f"{store.get('pending', 0)} events waiting in memory, "
            f"{sum((store.get('dropped') or {}).values())} dropped"
        )
    elif age > 15:
        line += f"; but its last report is {age:.0f}s old"
    return "running", line


class AgentRecord:
    """The running agent's record in a store it writes: checks the previous
    run at start, then is rewritten at each status tick and at the end."""

    def __init__(self, store: Store):
        self.store = store
        previous = read_record(store)
        me = identity()
        ours = previous is not None and all(previous.get(k) == v for k, v in me.items())
        if ours:  # this process opened the store again (a reload): no other run to report
            pass
        elif previous and previous.get("state") == "running" and previous.get("pid") is not None:
            if alive(previous):
                raise StoreError(
                    f"{store.path}: another vigil monitor (pid {previous['pid']}) is writing "
                    "this store"
                )
            when = previous.get("updated_ns")
            at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when / 1e9)) if when else "?"
            log.warning(
                "the previous run (pid %s) ended uncleanly (killed or crashed): events of its "
                "last moments may be missing; its last status, at %s: %s",
                previous.get("pid"),
                at,
                printable(previous.get("status") or "none recorded"),
            )
        self.previous = previous
        self.record = {"state": "running", **me, "started_ns": time.time_ns()}
        self._file: int | None = None
        try:
            self._file = files.open_private(state_path(store.path))
            if os.fstat(self._file).st_size < STATE_SIZE:  # allocate it now, while there is room
                os.pwrite(self._file, b" " * STATE_SIZE, 0)
        except (VigilError, OSError) as err:
            log.warning("%s: agent state not kept beside the store: %s", store.path, err)
            if self._file is not None:
                os.close(self._file)
                self._file = None
        self.update({}, "")

    def update(self, stats: dict[str, dict], status: str, **extra) -> None:
        record = self.record
        record.update(extra)
        record["updated_ns"] = time.time_ns()
        record["status"] = status
        record["store"] = self.store.health()
        data = orjson.dumps(record)
        self.store.record_status(stats, {"agent": data.decode()})
        if self._file is not None:
            if len(data) > STATE_SIZE:  # keep the part that matters
                data = orjson.dumps({k: v for k, v in record.items() if k != "status"})[:STATE_SIZE]
            try:
                os.pwrite(self._file, data.ljust(STATE_SIZE), 0)
            except OSError as err:
                log.debug("%s: agent state not written: %s", self.store.path, err)

    def stopped(self, stats: dict[str, dict], status: str) -> None:
        waiting = {k: n for k, n in self.store.waiting.items() if n}
        self.update(stats, status, state="stopped", unwritten=waiting)
        if self._file is not None:
            os.close(self._file)
            self._file = None
