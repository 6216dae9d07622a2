"""Learned baselines against real events: a monitor learns for a few
seconds, is then armed, and each kind alerts on a new entry (a new
listener, a new outbound port, a new capability, a new exec pair) but not
on what it learned.  Entries survive restarts; accept and reset work."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time

import pytest

from helpers import TRUE, start_vigil, stop_vigil, vigil

pytestmark = pytest.mark.kernel
PY = sys.executable
LEARN = 12.0


def _listen_connect(port: int) -> tuple[int, int]:
    """A child that listens on `port` (0: any) and connects to it; (pid, port)."""
    code = (
        "import socket,sys; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1);"
        f"s.bind(('127.0.0.1',{port})); s.listen(); p=s.getsockname()[1];"
        "socket.create_connection(('127.0.0.1',p)).close(); print(p)"
    )
    out = subprocess.run([PY, "-c", code], capture_output=True, check=True, timeout=30)
    return int(out.stdout)


def _low_port_bind() -> int:
    """A child binding a port below 1024: CAP_NET_BIND_SERVICE."""
    for port in range(900, 1000):
        p = subprocess.run(
            [PY, "-c", f"import socket; socket.socket().bind(('127.0.0.1',{port}))"],
            capture_output=True,
            timeout=30,
        )
        if p.returncode == 0:
            return port
    pytest.skip("no free port below 1024")


def test_baselines_learn_then_alert_on_new(tmp_path):
    db = str(tmp_path / "db")
    newchild = str(tmp_path / "newchild")
    shutil.copy(TRUE, newchild)
    sensors = ["exec", "fork", "exit", "capable", "connect", "listen", "bind"]
    args = ["monitor", "-q", "--db", db, "--no-rules", "--baseline-learn", f"{LEARN}s"]
    for s in sensors:
        args += ["--sensor", s]
    proc = start_vigil(*args)
    try:
        # learning: what this host "normally" does
        known_port = _listen_connect(0)
        subprocess.run([TRUE], check=True)
        # armed LEARN s after the monitor opened its store (recorded there)
        with sqlite3.connect(db) as con:
            learn_from = max(r[0] for r in con.execute("SELECT learn_from_ns FROM baseline_kinds"))
        if time.time_ns() > learn_from + (LEARN - 1) * 1e9:
            pytest.skip("the monitor took longer than the learning period to start")
        time.sleep(max(0.0, (learn_from + (LEARN + 0.5) * 1e9 - time.time_ns()) / 1e9))
        # armed: the same things again (no alert), then new ones
        _listen_connect(known_port)
        subprocess.run([TRUE], check=True)
        new_port = _listen_connect(0)
        subprocess.run([newchild], check=True)
        low = _low_port_bind()
        time.sleep(1.0)
    finally:
        out, err = stop_vigil(proc)
    res = vigil("alerts", "--db", db, "--json", "-n", "10000", text=True)
    alerts = [json.loads(x) for x in res.stdout.splitlines()]
    new = {(a["baseline"]["kind"], tuple(a["baseline"]["new"].values())) for a in alerts}
    me = os.path.realpath(PY)
    wanted = {
        ("listen", (me, "tcp", new_port)),
        ("connect", (me, new_port)),
        ("exec", (me, newchild)),
        ("capability", (me, "CAP_NET_BIND_SERVICE")),
    }
    if not wanted <= new and b"events lost" in err:
        # the host is shared: another engineer's exec storm can fill the ring
        pytest.skip(
            f"the monitor lost events ({err.decode().strip()}); the trigger may be among them"
        )
    assert ("listen", (me, "tcp", new_port)) in new
    assert ("connect", (me, new_port)) in new
    assert ("exec", (me, newchild)) in new
    assert ("capability", (me, "CAP_NET_BIND_SERVICE")) in new, (low, new)
    # what was learned stays quiet
    assert ("listen", (me, "tcp", known_port)) not in new
    assert ("connect", (me, known_port)) not in new
    assert ("exec", (me, TRUE)) not in new
    for a in alerts:
        assert a["source"] == "baseline" and a["summary"].startswith(f"new {a['baseline']['kind']}")
        assert a["event"]["pid"] and a["event"]["exe"]  # which process did it
    assert b"ALERT MEDIUM new exec" in out

    # stored: show lists learned and new entries; accept makes them normal
    show = [
        json.loads(x)
        for x in vigil("baseline", "show", "--db", db, "--json", text=True).stdout.splitlines()
    ]
    states = {(r["kind"], r["state"]) for r in show}
    assert ("listen", "learned") in states and ("exec", "new") in states
    res = vigil("baseline", "accept", "exec", "--db", db, text=True)
    assert res.returncode == 0 and "accepted" in res.stdout
    show = [
        json.loads(x)
        for x in vigil(
            "baseline", "show", "exec", "--db", db, "--json", text=True
        ).stdout.splitlines()
    ]
    assert not [r for r in show if r["state"] == "new"]
    assert any(r["exe"] == newchild and r["state"] == "accepted" for r in show)

    # a restart remembers: the accepted pair and the learned ones stay quiet,
    # and learning is not started over (armed at once)
    proc = start_vigil(
        "monitor",
        "-q",
        "--db",
        db,
        "--no-rules",
        "--baseline-learn",
        f"{LEARN}s",
        "--sensor",
        "exec",
        "--sensor",
        "fork",
        "--sensor",
        "exit",
    )
    try:
        subprocess.run([newchild], check=True)
        other = str(tmp_path / "otherchild")
        shutil.copy(TRUE, other)
        subprocess.run([other], check=True)
        time.sleep(1.0)
    finally:
        stop_vigil(proc)
    alerts = [
        json.loads(x)
        for x in vigil("alerts", "--db", db, "--json", "-n", "10000", text=True).stdout.splitlines()
    ]
    execs = [
        tuple(a["baseline"]["new"].values()) for a in alerts if a["baseline"]["kind"] == "exec"
    ]
    assert execs.count((me, newchild)) == 1 and (me, other) in execs

    res = vigil("baseline", "reset", "--db", db, text=True)
    assert res.returncode == 0
    assert vigil("baseline", "show", "--db", db, "--json", text=True).stdout == ""
