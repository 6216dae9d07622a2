"""The real `vigil` command line, run as a user would, output parsed."""

from __future__ import annotations

import os
import re
import signal
import stat
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
    # the lifecycle kinds lose nothing (the ring's shares keep them whatever
    # else the host floods; floodable kinds may be shed and are counted)
    assert all(by_kind[k]["lost"] == 0 for k in ("exec", "fork", "exit")), by_kind
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
    # an optional hook the kernel lacks is named with where it exists
    missing = {(m["sensor"], m["hook"]): m["elsewhere"] for m in report["optional_hooks_missing"]}
    lsm = report["features"]["lsm"]["ok"]
    assert (("exec", "exec_file") in chosen) == lsm
    assert (("exec", "exec_file") in missing) == (not lsm)
    if not lsm:
        assert missing[("exec", "exec_file")] == "lsm bprm_check_security"
    text = vigil("doctor", check=True).stdout.decode()
    assert "ATTACH" in text and "SENSOR" in text
    assert ("(not on this kernel)" in text) == bool(missing)


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


# -- the store on a bad day (issue 8: items 4, 5, 9, 10) -------------------------------
@pytest.fixture
def small_tmpfs(tmp_path):
    """A real 2 MiB tmpfs: "disk full" is the kernel's ENOSPC."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "vigil-test", str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=True)


@pytest.fixture(scope="module")
def exec_storm(tmp_path_factory):
    """bench/exec_storm.c: N vfork+exec as fast as one process can."""
    out = tmp_path_factory.mktemp("storm") / "exec_storm"
    src = os.path.join(os.path.dirname(os.path.dirname(__file__)), "bench", "exec_storm.c")
    subprocess.run(["cc", "-O2", "-o", str(out), src], check=True)
    return str(out)


def _fill(directory) -> str:
    path = os.path.join(directory, "fill")
    with open(path, "wb", buffering=0) as f:
        for size in (65536, 512):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError:
                pass
    return path


def _agent(db) -> dict:
    return orjson.loads(vigil("status", "--db", str(db), "--json", check=True).stdout)["agent"]


def _wait_for(what, timeout=20.0, every=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"not within {timeout}s")


ACCOUNT = re.compile(rb"(\w+) (\d+) received = (\d+) stored \+ (\d+) dropped \+ (\d+) unwritten")


def _accounts(err: bytes) -> dict[str, tuple[int, int, int, int]]:
    (line,) = [x for x in err.splitlines() if x.startswith(b"vigil: store: ")]
    return {m[1].decode(): tuple(map(int, m.groups()[1:])) for m in ACCOUNT.finditer(line)}


MONITOR_STORE = ["-q", "--status-interval", "0.3", "--no-summaries"]
MONITOR_STORE += ["--sensor", "exec", "--sensor", "fork", "--sensor", "exit"]


@pytest.mark.kernel
def test_full_store_says_so_resumes_when_freed_and_counts_exactly(
    small_tmpfs, exec_storm, tmp_path
):
    db = small_tmpfs / "v.db"
    # the event log on another disk: this is about the store's disk (the log's
    # own full disk: tests/test_eventlog.py)
    log = ["--log-dir", str(tmp_path / "log")]
    proc = start_vigil("monitor", "--db", str(db), *MONITOR_STORE, "--store-backlog-mb", "1", *log)
    try:
        filler = _fill(small_tmpfs)
        subprocess.run([exec_storm, "3000"], check=True, capture_output=True)
        failing = _wait_for(lambda: (_agent(db).get("store") or {}).get("error"))
        assert "disk full" in failing
        agent = _agent(db)
        assert agent["state"] == "running" and "store FAILING" in agent["detail"]
        stored_full = agent["store"]["stored"].get("exec", 0)
        os.unlink(filler)
        # space came back: the backlog goes in, in chunks, and the failure clears
        _wait_for(lambda: _agent(db)["store"]["stored"].get("exec", 0) > stored_full)
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err  # events were lost: the command failed
    assert b"store FAILING for" in err and b"disk full" in err  # the status line said so
    assert b"writing again" in err
    assert b"events were not stored" in err.splitlines()[-1]
    accounts = _accounts(err)
    for kind, (received, stored, dropped, unwritten) in accounts.items():
        assert stored + dropped + unwritten == received, kind
    received, stored, dropped, unwritten = accounts["exec"]
    assert received >= 3000 - 100 and dropped > 0  # a 1 MiB backlog cannot hold the storm
    rows = vigil("events", "--db", str(db), "--kind", "exec", "-n", "10000000", "--json").stdout
    assert len(rows.splitlines()) == stored  # what it says it stored is there


@pytest.mark.kernel
def test_stop_while_store_full_reports_unwritten_events(small_tmpfs, exec_storm, tmp_path):
    db = small_tmpfs / "v.db"
    proc = start_vigil("monitor", "--db", str(db), *MONITOR_STORE, "--log-dir", str(tmp_path / "l"))
    try:
        _fill(small_tmpfs)
        subprocess.run([exec_storm, "500"], check=True, capture_output=True)
        _wait_for(lambda: (_agent(db).get("store") or {}).get("error"))
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    last = err.decode().strip().splitlines()[-1]
    assert last.startswith("vigil: error: ") and "not stored" in last and "disk full" in last
    received, stored, dropped, unwritten = _accounts(err)["exec"]
    assert unwritten > 0 and stored + dropped + unwritten == received
    agent = _agent(db)  # the side file said it last, though the database was full
    assert agent["state"] == "stopped" and agent["unwritten"]["exec"] == unwritten
    assert "never written" in agent["detail"]


@pytest.mark.kernel
def test_kill_9_is_seen_at_once_and_reported_by_the_next_run(tmp_path):
    db = tmp_path / "v.db"
    proc = start_vigil("monitor", "--db", str(db), *MONITOR_STORE)
    _wait_for(lambda: "exec" in (_agent(db).get("status") or ""))
    assert _agent(db)["state"] == "running"
    # a second agent on the same store is refused while the first lives
    res = vigil("monitor", "--db", str(db), "--duration", "1", *MONITOR_STORE)
    assert res.returncode == 1 and f"pid {proc.pid}".encode() in res.stderr
    proc.kill()
    proc.wait()
    agent = _agent(db)  # at once: no 15 s of "running"
    assert agent["state"] == "died" and agent["recorded_state"] == "running"
    assert agent["pid"] == proc.pid and "ended uncleanly" in agent["detail"]
    assert "ended uncleanly" in vigil("status", "--db", str(db), check=True).stdout.decode()
    proc.stderr.close()
    proc.stdout.close()
    again = start_vigil("monitor", "--db", str(db), *MONITOR_STORE)
    said = again.seen.decode()
    assert f"previous run (pid {proc.pid}) ended uncleanly" in said
    assert "its last status" in said and "exec" in said.split("its last status")[1]
    assert _agent(db)["state"] == "running"
    stop_vigil(again)
    assert _agent(db)["state"] == "stopped"


@pytest.mark.kernel
def test_record_refuses_planted_symlink_and_special_file(tmp_path):
    victim = tmp_path / "root-owned"
    victim.write_bytes(b"precious")
    link = tmp_path / "out.rec"
    link.symlink_to(victim)
    for path, why in ((str(link), "symbolic link"), ("/dev/null", "not a regular file")):
        res = vigil("record", "-o", path, "--sensor", "exec", "--duration", "0.2")
        err = res.stderr.decode().strip()
        assert res.returncode == 1 and why in err.splitlines()[-1], err
        assert "Traceback" not in err
    assert victim.read_bytes() == b"precious"
    res = vigil("record", "-o", str(tmp_path / "new.rec"), "--sensor", "exec", "--duration", "0.2")
    assert res.returncode == 0, res.stderr
    assert stat.S_IMODE(os.stat(tmp_path / "new.rec").st_mode) == 0o600


def test_monitor_refuses_dev_null_and_leaves_no_journal():
    res = vigil("monitor", "--db", "/dev/null", "--duration", "1")
    err = res.stderr.decode().strip()
    assert res.returncode == 1 and "not a regular file" in err.splitlines()[-1], err
    assert not os.path.exists("/dev/null-journal") and not os.path.exists("/dev/null-wal")
