"""`vigil monitor` keeps in-kernel counters and stores them per interval."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import orjson
import pytest

from helpers import tcg_slow_cli, vigil, vigil_argv

pytestmark = pytest.mark.kernel

VIGIL = os.path.join(os.path.dirname(sys.executable), "vigil")
N = 37

# A child that names itself, then makes exactly N capability checks of CAP_SETUID.
CHILD = f"""
import ctypes, os
ctypes.CDLL(None).prctl(15, b"vigil-sumtest", 0, 0, 0)  # PR_SET_NAME
for _ in range({N}):
    os.setuid(0)
"""


@tcg_slow_cli
def test_monitor_counts_in_kernel_and_stores_per_interval(tmp_path):
    db = tmp_path / "s.db"
    proc = subprocess.Popen(
        vigil_argv(
            "monitor",
            "--db",
            str(db),
            "-q",
            "--summary-interval",
            "0.5",
            "--sensor",
            "exec",
            "--sensor",
            "capable",
        ),
        stderr=subprocess.PIPE,
    )
    line = proc.stderr.readline()
    assert b"Ctrl-C to end" in line, line + proc.stderr.read()
    subprocess.run([sys.executable, "-c", CHILD], check=True)
    time.sleep(1.2)  # at least one flush
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err

    res = vigil("summaries", "--db", str(db), "--json", check=True)
    intervals = [orjson.loads(x) for x in res.stdout.splitlines()]
    caps = [i for i in intervals if i["name"] == "capabilities"]
    assert len(caps) >= 2  # several intervals, each its own row
    total = sum(
        n
        for i in caps
        for key, n in i["counts"]
        if key.get("comm") == "vigil-sumtest" and key.get("cap") == 7
    )
    assert total == N
    execs = [i for i in intervals if i["name"] == "execs"]
    assert execs, "the execs counter is stored too"
    # a default counter runs with its sensor only: no connect or listen sensor here
    assert {i["name"] for i in intervals} == {"capabilities", "execs"}
    # compact: one row per interval per counter, not one per event
    row_bytes = sum(len(orjson.dumps(i["counts"])) for i in intervals) / len(intervals)
    assert row_bytes < 4096

    text = vigil("summaries", "--db", str(db), "--name", "capabilities", check=True)
    out = text.stdout.decode()
    assert out.startswith("capabilities:")
    assert any("vigil-sumtest" in x and x.split()[0] == str(N) for x in out.splitlines())


@tcg_slow_cli
def test_bad_summary_option_is_one_line():
    res = vigil("monitor", "--db", "/tmp/x.db", "--summary", "nonsense", "--duration", "1")
    assert res.returncode == 1
    err = res.stderr.decode().strip()
    assert len(err.splitlines()) == 1 and "NAME=SPEC" in err
