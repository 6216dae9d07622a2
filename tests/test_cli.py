"""The real `vigil` command line, run as a user would, output parsed."""

from __future__ import annotations

import os
import subprocess
import time

import orjson
import pytest

from helpers import start_vigil, stop_vigil, tcg_slow_cli, unique_marker, vigil
from vigil.encoding import unescape

VIGIL = [os.path.join(os.path.dirname(os.sys.executable), "vigil")]


@pytest.mark.kernel
@tcg_slow_cli
def test_execsnoop_table_with_failed_execs(tmp_path):
    proc = start_vigil("execsnoop", "-x", "-t")
    marker = unique_marker().decode()
    subprocess.run(["/bin/true", "a", "b", marker], check=True)
    missing = f"/nonexistent/{marker}"
    with pytest.raises(FileNotFoundError):
        subprocess.run([missing])
    noexec = tmp_path / "noexec"
    noexec.write_text("x")
    with pytest.raises(PermissionError):
        subprocess.run([str(noexec), marker])
    time.sleep(0.3)
    out, err = stop_vigil(proc)
    lines = out.decode().splitlines()
    assert lines[0].split() == ["TIME(s)", "PCOMM", "PID", "PPID", "RET", "ARGS"]
    rows = {}
    for line in lines[1:]:
        cols = line.split(None, 5)
        if marker in line:
            rows[cols[5]] = cols
    ok = rows[f"/bin/true a b {marker}"]
    assert ok[1] == "true" and ok[4] == "0" and int(ok[3]) == os.getpid()
    float(ok[0])  # TIME(s)
    assert rows[missing][4] == "-2"
    assert rows[f"{noexec} {marker}"][4] == "-13"


@pytest.mark.kernel
@tcg_slow_cli
def test_execsnoop_hides_failures_without_x_and_filters():
    proc = start_vigil("execsnoop", "-n", "^true$")
    marker = unique_marker().decode()
    subprocess.run(["/bin/true", marker], check=True)
    subprocess.run(["/bin/echo", marker], check=True, stdout=subprocess.DEVNULL)
    with pytest.raises(FileNotFoundError):
        subprocess.run([f"/nonexistent/{marker}"])
    time.sleep(0.3)
    out, _ = stop_vigil(proc)
    mine = [line for line in out.decode().splitlines() if marker in line]
    assert len(mine) == 1 and mine[0].split()[0] == "true"


@pytest.mark.kernel
@tcg_slow_cli
def test_execsnoop_json_has_every_field_and_escapes_bytes():
    proc = start_vigil("execsnoop", "-x", "--json", "-l", "vigil-test")
    marker = unique_marker()
    weird = b"\xff\n\x1b[31m"
    subprocess.run([b"/bin/true", marker, weird], check=True)
    time.sleep(0.3)
    out, _ = stop_vigil(proc)
    events = [orjson.loads(line) for line in out.splitlines()]
    (ev,) = [e for e in events if marker.decode() in e["args"]]
    for field in (
        "time",
        "ts_ns",
        "kind",
        "pid",
        "tid",
        "ppid",
        "uid",
        "gid",
        "comm",
        "ret",
        "args",
        "filename",
        "exe",
        "ancestors",
        "flags",
        "cgroup_id",
    ):
        assert field in ev, field
    assert unescape(ev["args"][2]) == weird


@pytest.mark.kernel
@tcg_slow_cli
def test_execsnoop_table_cannot_be_forged():
    proc = start_vigil("execsnoop")
    marker = unique_marker().decode()
    subprocess.run(["/bin/true", marker, "\nFAKE 1 1 0 /bin/evil\r\x1b[2K"], check=True)
    time.sleep(0.3)
    out, _ = stop_vigil(proc)
    text = out.decode()
    assert "\x1b" not in text and "\r" not in text
    (line,) = [line for line in text.splitlines() if marker in line]
    assert "\\nFAKE" in line
    assert not any(line.startswith("FAKE") for line in text.splitlines())


@pytest.mark.kernel
@tcg_slow_cli
def test_monitor_stores_and_events_queries(tmp_path):
    db = str(tmp_path / "v.db")
    proc = start_vigil("monitor", "--db", db, "-q", "--status-interval", "0.2")
    marker = unique_marker()
    weird = b"caf\xe9 \\ \xff"
    subprocess.run([b"/bin/true", marker, weird], check=True)
    time.sleep(1.0)
    out, err = stop_vigil(proc)
    assert b"events stored" in err
    res = vigil(
        "events",
        "--db",
        db,
        "--kind",
        "exec",
        "--comm",
        "true",
        "--json",
        "-n",
        "1000000",
        check=True,
    )
    events = [orjson.loads(line) for line in res.stdout.splitlines()]
    (ev,) = [e for e in events if marker.decode() in e["args"]]
    assert unescape(ev["args"][2]) == weird  # byte-exact through the store
    assert ev["ancestors"][0]["pid"] == os.getpid()
    # newest first
    times = [e["ts_ns"] for e in events]
    assert times == sorted(times, reverse=True)
    # filters: pid and comm, table form
    res = vigil("events", "--db", db, "--pid", str(ev["pid"]), check=True)
    lines = res.stdout.decode().splitlines()
    assert lines[0].split()[:5] == ["TIME", "KIND", "PID", "PPID", "COMM"]
    kinds = {line.split()[1] for line in lines[1:]}
    assert {"exec", "exit"} <= kinds
    res = vigil("events", "--db", db, "--comm", "true", "--since", "5m", "--json", check=True)
    assert all(orjson.loads(line)["comm"] == "true" for line in res.stdout.splitlines())
    # status: per kind, with counts and no loss
    res = vigil("status", "--db", db, "--json", check=True)
    status = orjson.loads(res.stdout)
    by_kind = {row["kind"]: row for row in status["sensors"]}
    assert {"exec", "fork", "exit"} <= set(by_kind)
    assert all(row["lost"] == 0 for row in by_kind.values())
    assert by_kind["exec"]["stored"] >= 1
    res = vigil("status", "--db", db, check=True)
    assert b"EVENTS/S" in res.stdout


@pytest.mark.kernel
def test_doctor_reports_features_and_choices():
    res = vigil("doctor", "--json", check=True)
    report = orjson.loads(res.stdout)
    assert report["btf"] is True
    assert report["mounts"] == {"tracefs": True, "bpffs": True}
    assert report["features"]["tracepoint"]["ok"] is True
    assert report["features"]["ringbuf"]["ok"] is True
    for feature in ("fentry", "kprobe", "lsm"):  # as measured on this kernel
        assert feature in report["features"]
    chosen = {(c["sensor"], c["hook"]): c["feature"] for c in report["sensors"]}
    assert chosen[("exec", "execve")] == "tracepoint"
    assert chosen[("fork", "fork")] in ("tp_btf", "raw_tp")
    text = vigil("doctor", check=True).stdout.decode()
    assert "ATTACH" in text and "SENSOR" in text


@pytest.mark.parametrize(
    "args, message",
    [
        (["execsnoop", "--bogus"], "No such option"),
        (["frobnicate"], "No such command"),
        (["execsnoop", "-u", "notanumber"], "Invalid value"),
        (["execsnoop", "-n", "("], "bad name regex"),
        (["events", "--since", "yesterday-ish", "--db", "/dev/null"], "error"),
        (["monitor", "--db", "/proc/nonexistent/x.db", "--duration", "1"], "cannot create"),
    ],
)
def test_bad_input_is_one_line(args, message):
    res = vigil(*args)
    assert res.returncode != 0
    err = res.stderr.decode().strip()
    assert len(err.splitlines()) == 1, err
    assert message in err
    assert "Traceback" not in err


def test_corrupt_database_is_one_line_and_left_alone(tmp_path):
    db = tmp_path / "corrupt.db"
    db.write_bytes(b"this is not sqlite" * 100)
    before = db.read_bytes()
    for args in (
        ["events", "--db", str(db)],
        ["status", "--db", str(db)],
        ["monitor", "--db", str(db), "--duration", "1"],
    ):
        res = vigil(*args)
        assert res.returncode == 1
        err = res.stderr.decode().strip()
        assert len(err.splitlines()) == 1 and "not a usable Vigil database" in err, err
    assert db.read_bytes() == before  # nothing overwritten


def test_unwritable_db_directory(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    # root ignores mode bits: make it unwritable by mounting read-only instead
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "none", str(ro)], check=True)
    try:
        res = vigil("monitor", "--db", str(ro / "x.db"), "--duration", "1")
        assert res.returncode == 1
        err = res.stderr.decode().strip()
        assert len(err.splitlines()) == 1 and "cannot write" in err, err
    finally:
        subprocess.run(["umount", str(ro)], check=True)
