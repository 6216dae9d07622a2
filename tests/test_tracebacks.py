"""Issue 8, "Tracebacks that reach the user": each input that raised a
traceback is now one line and a non-zero exit (or, where the input is
legitimate, handled).  Hostile recordings are tested with the recorder."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import orjson
import pytest

from helpers import vigil
from inprocess import assert_user_facing, event, fs_arg, make_store, run, tamper
from vigil.argdist import Aggregation, parse
from vigil.options import PID_MAX_LIMIT, parse_since

NINES = "9" * 400
SPEC = "t:capability:cap_capable():int:comm,cap"


@pytest.fixture
def db(tmp_path):
    events = [event(i) for i in range(6)]
    events.append(event(6, comm=b"\xffodd\\name"))
    return make_store(str(tmp_path / "events.db"), events)


def _one_line_error(res, rc: int, *words: str) -> None:
    assert_user_facing(res)
    assert res.rc == rc, res
    assert len(res.err_lines) == 1, res.err
    for word in words:
        assert word in res.err, res.err


# -- OverflowError: --since, --pid, -n past 64 bits ------------------------------------------
@pytest.mark.parametrize(
    "args, words",
    [
        (["--since", "99999999999999999999d"], ["--since", "before 1970"]),
        (["--since", "9999-12-31T23:59:59"], ["--since", "outside 1970..2262"]),
        (["--since", "0001-01-01T00:00:00"], ["--since"]),
        (["--since", NINES], ["--since", "use 30s"]),  # float infinity
        (["--since", NINES + "d"], ["--since", "before 1970"]),
        (["--since", "1e400s"], ["--since"]),
        (["--pid", str(2**64 + 1)], ["--pid", "range"]),
        (["--pid", str(-(2**64))], ["--pid"]),
        (["--pid", str(PID_MAX_LIMIT)], ["--pid"]),  # no pid is that large
        (["-n", str(2**64)], ["--limit", "range"]),
        (["-n", "0"], ["--limit"]),
    ],
)
def test_events_numbers_out_of_range_are_one_line(db, args, words):
    _one_line_error(run(["events", "--db", db, *args]), 2, *words)


@pytest.mark.parametrize(
    "args", [["--since", "99999999999999999999d"], ["--since", NINES], ["-T", str(2**64)]]
)
def test_summaries_numbers_out_of_range_are_one_line(db, args):
    _one_line_error(run(["summaries", "--db", db, *args]), 2, "error")


def test_since_still_takes_what_it_took(db):
    now = 1_800_000_000 * 10**9
    assert parse_since("10m", now) == now - 600 * 10**9
    assert parse_since(" 1.5h ", now) == now - 5400 * 10**9
    assert parse_since("1970-01-01T00:00:00+00:00", now) == 0
    assert parse_since("2262-04-11T00:00:00+00:00", now) > 0
    res = run(["events", "--db", db, "--since", "2020-01-01T00:00", "--json"])
    assert res.rc == 0 and len(res.out.splitlines()) == 7


# -- UnicodeEncodeError: non-UTF-8 bytes on the command line ------------------------------
def test_comm_is_bytes_raw_or_escaped(db):
    """comm is bytes in the kernel and stored escaped (docs/events.md): raw
    bytes from the command line and the printed form both find it."""
    for comm in (fs_arg(b"\xffodd\\name"), "\\xffodd\\\\name"):
        res = run(["events", "--db", db, "--comm", comm, "--json"])
        assert_user_facing(res)
        (row,) = [orjson.loads(line) for line in res.out.splitlines()]
        assert row["comm"] == "\\xffodd\\\\name"
    res = run(["events", "--db", db, "--comm", fs_arg(b"\xfe")])
    assert res.rc == 0 and res.out.decode().splitlines()[1:] == []


@pytest.mark.parametrize(
    "argv",
    [
        ["events", "--kind", fs_arg(b"\xff")],
        ["events", "--kind", fs_arg(b"ex\xc3ec")],
        ["summaries", "--name", fs_arg(b"\xff")],
        ["report", "/nonexistent", "--kind", fs_arg(b"\xff")],
        ["monitor", "--sensor", fs_arg(b"\xff")],
    ],
)
def test_non_utf8_names_are_one_line(db, argv):
    extra = ["--db", db] if argv[0] in ("events", "summaries", "monitor") else []
    _one_line_error(run([argv[0], *extra, *argv[1:]]), 2, "not valid UTF-8")


def test_argdist_string_filter_takes_bytes():
    """`comm==\\xff` raised UnicodeEncodeError when the filter was configured."""
    raw = fs_arg(b"\xffkid")
    for text in (f"{SPEC}:comm=={raw}", f"{SPEC}:comm==\\xffkid"):
        (flt,) = parse(text).filters
        assert flt.value == b"\xffkid"
        assert parse(text).text.encode()  # printable and storable as UTF-8


def test_summary_with_a_non_utf8_name_fails_before_loading(tmp_path):
    """`--summary $'\\xff=...'` crashed the agent at its first flush and lost
    every event; now the name is refused before anything is opened."""
    path = tmp_path / "never.db"
    res = run(["monitor", "--db", str(path), "--summary", fs_arg(b"\xff=") + SPEC])
    _one_line_error(res, 1, "--summary", "a name is")
    res = run(["monitor", "--db", str(path), "--summary", "x=t:nosuch:tracepoint()"])
    _one_line_error(res, 1, "--summary x", "unknown tracepoint")
    assert not path.exists()


# -- nan: runs forever --------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv",
    [
        ["monitor", "--latency", "nan"],
        ["monitor", "--duration", "nan"],
        ["monitor", "--status-interval", "nan"],
        ["monitor", "--summary-interval", "inf"],
        ["record", "-o", "/dev/null", "--duration", "nan"],
        ["execsnoop", "--duration", "nan"],
        ["execsnoop", "--latency", "nan"],
        ["tcpconnect", "--duration", "-1"],
        ["argdist", "-C", SPEC, "-i", "nan"],
        ["argdist", "-C", SPEC, "-i", "1e400"],
        ["argdist", "-C", SPEC, "-p", str(2**64)],
        ["tcpretrans", "-c", "-i", "nan"],
        ["bitehist", "-i", "nan"],
        ["capable", "-p", "-1"],
    ],
)
def test_nan_and_inf_are_refused_at_once(argv):
    t = time.monotonic()
    res = run(argv)
    _one_line_error(res, 2, "Invalid value")
    assert time.monotonic() - t < 5


def test_end_to_end_as_a_user_runs_them(tmp_path):
    """The real entry point, a UTF-8 locale's strict stdout, no BPF loaded."""
    db = make_store(str(tmp_path / "e.db"), [event(1)])
    env = dict(os.environ, PYTHONIOENCODING="utf-8:strict")
    for args in (
        ["events", "--db", db, "--since", "99999999999999999999d"],
        ["events", "--db", db, "--since", NINES],
        ["events", "--db", db, "--pid", str(2**70)],
        ["events", "--db", db, "--kind", b"\xff"],
        ["summaries", "--db", db, "--name", b"\xff"],
        ["monitor", "--db", db, "--latency", "nan"],
        ["argdist", "-C", SPEC, "-i", "nan"],
        ["execsnoop", "--duration", "nan"],
        ["monitor", "--db", db, "--summary", b"\xff=" + SPEC.encode()],
    ):
        res = vigil(*args, env=env, timeout=30)
        err = res.stderr.decode(errors="replace")
        assert res.returncode in (1, 2), (args, err)
        assert len(err.splitlines()) == 1 and "Traceback" not in err, (args, err)
    res = vigil("events", "--db", db, "--comm", b"\xff", env=env, timeout=30)
    assert res.returncode == 0 and res.stderr == b""


# -- tampered store rows: JSONDecodeError, KeyError, TypeError -----------------------------
_EVENT_SQL = "INSERT INTO events (ts_ns, kind, pid, comm, proc, data) VALUES (?,?,?,?,?,?)"
_HOSTILE_DATA = [
    "not json",  # JSONDecodeError
    "{}",  # KeyError
    "[1, 2]",
    '{"kind": "exec", "ts_ns": "soon", "pid": 1, "ppid": 1, "comm": "x"}',  # TypeError
    '{"kind": 7, "ts_ns": 1, "pid": 1, "ppid": 1, "comm": "x"}',
    '{"kind": "exec", "ts_ns": 1e300, "pid": 1, "ppid": 1, "comm": "x"}',
    '{"kind": "exec", "ts_ns": 18446744073709551615, "pid": 1, "ppid": 1, "comm": "x"}',
    b"\x00\xff binary",
    12345,
    3.5,
    "",
]


def test_tampered_event_rows_are_skipped_and_counted(db):
    rows = [
        (2_000_000_000_000_000_000 + i, "exec", 1, "x", 1, d) for i, d in enumerate(_HOSTILE_DATA)
    ]
    # header right, the kind's own fields wrong: DETAIL cannot be described
    bad_detail = '{"kind":"exec","ts_ns":3,"pid":1,"ppid":1,"comm":"x","args":5}'
    rows.append((3_000_000_000_000_000_000, "exec", 1, "x", 1, bad_detail))
    tamper(db, _EVENT_SQL, rows)
    res = run(["events", "--db", db, "-n", "1000", "--json"])
    assert_user_facing(res)
    lines = [orjson.loads(line) for line in res.out.splitlines()]
    assert len(lines) == 8 and all(isinstance(ev, dict) for ev in lines)
    assert f"{len(_HOSTILE_DATA)} malformed rows skipped" in res.err
    res = run(["events", "--db", db, "-n", "1000"])
    assert_user_facing(res, max_err_lines=2)
    assert len(res.out.splitlines()) == 1 + 8
    assert "1 stored events have a malformed DETAIL" in res.err


def test_tampered_status_rows_are_skipped(tmp_path):
    db = make_store(str(tmp_path / "s.db"), status={"exec": {"emitted": 5, "lost": 0, "rate": 1.0}})
    sql = "INSERT INTO sensor_status VALUES (?,?,?,?,?,?,?,?)"
    tamper(
        db,
        sql,
        [
            ("a", 1, "many", 0, 0, 0, 0, 1.0),  # TypeError in the table
            ("b", 1, 0, 0, 0, 0, 0, "fast"),
            ("c", b"\xff", 0, 0, 0, 0, 0, 1.0),
            (b"\xff", 1, 0, 0, 0, 0, 0, 1.0),
            ("e", 1, 0, 0, 0, 0, 0, float("inf")),
        ],
    )
    for argv in (["status", "--db", db], ["status", "--db", db, "--json"]):
        res = run(argv)
        assert_user_facing(res)
        assert "5 malformed rows skipped" in res.err
    assert [s["kind"] for s in orjson.loads(res.out)["sensors"]] == ["exec"]


def test_tampered_summary_rows_are_skipped(tmp_path):
    good = (10**18, 10**9, "execs", SPEC, [({"comm": "a", "cap": 21}, 3)])
    db = make_store(str(tmp_path / "m.db"), summaries=[good])
    sql = "INSERT INTO summaries (ts_ns, interval_ns, name, spec, counts) VALUES (?,?,?,?,?)"
    tamper(
        db,
        sql,
        [
            (1, 1, "execs", "s", "not json"),
            (1, 1, "execs", "s", '{"a": 1}'),
            (1, 1, "execs", "s", "[[1, 2, 3]]"),
            (1, 1, "execs", "s", '[[{"comm": "a"}, "many"]]'),
            (1, 1, "execs", "s", "[[[1], 2]]"),
            ("x", 1, "execs", "s", "[]"),
            (1, 1, b"\xff", "s", "[]"),
            (1, 1, "execs", "s", b"[]"),
        ],
    )
    for argv in (["summaries", "--db", db], ["summaries", "--db", db, "--json"]):
        res = run(argv)
        assert_user_facing(res)
        assert "8 malformed rows skipped" in res.err
    assert [orjson.loads(x)["name"] for x in res.out.splitlines()] == ["execs"]


def test_internal_error_is_one_line_and_traceback_only_with_v(monkeypatch, db):
    """main()'s last line of defence, for a bug that no test has found yet."""

    def broken(*_a, **_k):
        raise RuntimeError("a bug\nover two lines")

    monkeypatch.setattr("vigil.cli.Store", broken)
    res = run(["events", "--db", db])
    assert res.rc == 70 and res.err_lines == [
        "vigil: internal error: RuntimeError: a bug over two lines; run with -v for details"
    ]
    res = run(["-v", "events", "--db", db])
    assert res.rc == 70 and "Traceback" in res.err


# -- the kernel side of the fixes ---------------------------------------------------------
def _child_with_comm(comm: bytes, calls: int) -> subprocess.Popen:
    code = (
        "import ctypes, os, sys\n"
        f"ctypes.CDLL(None).prctl(15, ctypes.c_char_p({comm!r}))\n"
        "print('ready', flush=True); sys.stdin.readline()\n"
        f"for _ in range({calls}): os.getppid()\n"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )


@pytest.mark.kernel
def test_argdist_filter_on_non_utf8_comm_counts_in_kernel():
    """A comm of bytes that are not UTF-8, named raw on the command line,
    matches in the kernel (the filter was encoded strictly and crashed)."""
    comm = b"\xfevigil\xffkid"
    child = _child_with_comm(comm, 7)
    assert child.stdout.readline() == "ready\n"
    spec = parse(f"t:syscalls:sys_enter_getppid():u32:pid:comm=={fs_arg(comm)}")
    with Aggregation(spec) as agg:
        child.communicate("go\n", timeout=30)
        counts = agg.read()
    assert counts == [({"pid": child.pid}, 7)]


@pytest.mark.kernel
def test_monitor_keeps_a_summary_whose_spec_is_not_utf8(tmp_path):
    """The flush stores the spec as UTF-8 text, and every event is stored."""
    db = tmp_path / "m.db"
    spec = "t:syscalls:sys_enter_getppid():u32:pid:comm==" + fs_arg(b"\xffkid")
    res = vigil(
        "monitor", "--db", str(db), "-q", "--sensor", "exec", "--duration", "1.5",
        "--summary-interval", "0.5", "--summary", f"odd={spec}", timeout=60,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert b"events stored" in res.stderr and b"Traceback" not in res.stderr
    out = run(["summaries", "--db", str(db), "--name", "odd", "--json"])
    assert_user_facing(out)
    specs = {orjson.loads(x)["spec"] for x in out.out.splitlines()}
    assert specs == {"t:syscalls:sys_enter_getppid():u32:pid:comm==\\xffkid"}


@pytest.mark.kernel
@pytest.mark.parametrize(
    "argv",
    [
        ["execsnoop", "--duration", "0", "--latency", "0.001"],
        ["capable", "--duration", "0.2", "-p", str(PID_MAX_LIMIT - 1)],
        ["argdist", "-C", SPEC, "-i", "0.1", "-n", "1", "-T", "0", "--max-entries", "1"],
        ["tcpretrans", "-c", "-i", "0.1", "--duration", "0.2"],
        ["bitehist", "-i", "0.1", "-n", "1"],
        ["monitor", "--db", "TMP/m.db", "-q", "--sensor", "exec", "--duration", "0.3",
         "--status-interval", "0.1", "--summary-interval", "0.1", "--latency", "0.001"],
        ["record", "-o", "TMP/r.rec", "--sensor", "exec", "--duration", "0"],
    ],
)  # fmt: skip
def test_loading_commands_run_at_the_bounds_of_their_options(argv, tmp_path):
    """The bounds refuse only what is wrong: the edge values still load and run."""
    argv = [a.replace("TMP", str(tmp_path)) for a in argv]
    t = time.monotonic()
    res = vigil(*argv, timeout=60)
    err = res.stderr.decode()
    assert res.returncode == 0, err
    assert "Traceback" not in err and "internal error" not in err
    assert time.monotonic() - t < 30


def test_text_that_is_not_utf8_fails_one_row_not_the_query(db):
    """SQLite keeps TEXT unchecked: such a row failed the whole query."""
    import sqlite3

    con = sqlite3.connect(db)
    con.execute(
        "INSERT INTO events (ts_ns, kind, pid, comm, proc, data)"
        " VALUES (9e18, 'exec', 1, 'x', 1, CAST(x'7b22ff' AS TEXT))"
    )
    con.execute("INSERT INTO sensor_status VALUES (CAST(x'ff' AS TEXT), 1, 1, 1, 1, 1, 1, 1.0)")
    con.commit()
    con.close()
    for argv in (["events", "--json"], ["status", "--json"]):
        res = run([argv[0], "--db", db, *argv[1:]])
        assert_user_facing(res)
        assert res.rc == 0 and "1 malformed rows skipped" in res.err
    assert len(run(["events", "--db", db, "--json"]).out.splitlines()) == 7
