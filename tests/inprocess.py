"""Run `vigil` in this process (cli.main with an argv list), as a user would
see it: stdout a strict UTF-8 text stream (a UTF-8 terminal; the C locale
would hide surrogates that reach it), stderr with Python's own
backslashreplace, log lines on that stderr.  Much faster than a subprocess,
so property-based tests can run hundreds of commands."""

from __future__ import annotations

import io
import logging
import os
import sqlite3
import sys
from dataclasses import dataclass

from vigil import cli
from vigil.encoding import to_json
from vigil.outputs.store import Store

# main()'s exit codes: 0 fine, 1 a VigilError, 2 a usage error
ALLOWED_EXITS = {0, 1, 2}


@dataclass
class Result:
    rc: int
    out: bytes
    err: str

    @property
    def err_lines(self) -> list[str]:
        return self.err.splitlines()


def run(argv: list[str]) -> Result:
    out_buf, err_buf = io.BytesIO(), io.BytesIO()
    out = io.TextIOWrapper(out_buf, encoding="utf-8", errors="strict", write_through=True)
    err = io.TextIOWrapper(err_buf, encoding="utf-8", errors="backslashreplace", write_through=True)
    root, vigil_log = logging.getLogger(), logging.getLogger("vigil")
    saved = (sys.stdout, sys.stderr, root.handlers[:], root.level, vigil_log.level)
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter("vigil: %(message)s"))
    sys.stdout, sys.stderr = out, err
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    vigil_log.setLevel(logging.NOTSET)
    try:
        rc = cli.main(argv)
        out.flush()
        err.flush()
    finally:
        sys.stdout, sys.stderr = saved[0], saved[1]
        root.handlers[:] = saved[2]
        root.setLevel(saved[3])
        vigil_log.setLevel(saved[4])
    return Result(rc, out_buf.getvalue(), err_buf.getvalue().decode())


def assert_user_facing(res: Result, max_err_lines: int = 1) -> None:
    """The contract of issue 8: an allowed exit code, a short stderr, never a
    traceback, and never main()'s internal-error line (that is a bug)."""
    assert res.rc in ALLOWED_EXITS, res
    assert "Traceback" not in res.err, res.err
    assert "internal error" not in res.err, res.err
    limit = 1 if res.rc else max_err_lines
    assert len(res.err_lines) <= limit, res.err
    if res.rc:
        assert res.err_lines and "error" in res.err_lines[0], res.err


def event(i: int, **fields) -> dict:
    ev = {
        "kind": ("exec", "fork", "exit")[i % 3],
        "ts_ns": 1_790_000_000_000_000_000 + i,
        "pid": 1000 + i,
        "tid": 1000 + i,
        "ppid": 1,
        "uid": 0,
        "gid": 0,
        "cgroup_id": 1,
        "comm": b"comm%d" % i,
        "flags": [],
        "ret": 0,
        "filename": b"/bin/true",
        "args": [b"/bin/true"],
        "child_pid": 5,
        "exit_code": 0,
        "signal": 0,
        "duration_ns": 1,
    }
    ev.update(fields)
    return ev


def make_store(path: str, events: list[dict] = (), summaries=(), status=None) -> str:
    """A store as the agent writes it."""
    store = Store(path)
    if events:
        store.add(list(events), [to_json(e) for e in events])
        store.flush()
    for args in summaries:
        store.add_summary(*args)
    if status:
        store.record_status(status)
    store.close()
    return path


def tamper(path: str, sql: str, rows: list[tuple]) -> None:
    db = sqlite3.connect(path)
    try:
        db.executemany(sql, rows)
        db.commit()
    finally:
        db.close()


def fs_arg(raw: bytes) -> str:
    """A command-line argument as Python on Linux receives it."""
    return os.fsdecode(raw)
