"""`vigil record` / `vigil report`: raw ring segments to a file, decoded later."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading

import orjson
import pytest

from helpers import tcg_slow_cli, unique_marker, vigil, vigil_argv
from vigil.encoding import unescape

pytestmark = pytest.mark.kernel

VIGIL = os.path.join(os.path.dirname(os.sys.executable), "vigil")


def _record(path, *args):
    proc = subprocess.Popen(vigil_argv("record", "-o", str(path), *args), stderr=subprocess.PIPE)
    assert b"Ctrl-C to end" in proc.stderr.readline()
    return proc


def _accepts(n: int) -> int:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(128)
    port = srv.getsockname()[1]

    def serve():
        for _ in range(n):
            conn, _ = srv.accept()
            conn.close()

    t = threading.Thread(target=serve)
    t.start()
    for _ in range(n):
        socket.create_connection(("127.0.0.1", port)).close()
    t.join()
    srv.close()
    return port


@tcg_slow_cli
def test_record_then_report_is_the_documented_json(tmp_path):
    path = tmp_path / "run.vgl"
    proc = _record(
        path, "--sensor", "accept", "--sensor", "exec", "--sensor", "fork", "--sensor", "exit"
    )
    marker = unique_marker()
    weird = b"\xff\\x"
    subprocess.run([b"/bin/true", marker, weird], check=True)
    port = _accepts(300)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert b"events" in err and b"recorded" in err

    res = vigil("report", str(path), "--json", check=True)
    events = [orjson.loads(line) for line in res.stdout.splitlines()]
    accepts = [e for e in events if e["kind"] == "accept" and e["lport"] == port]
    assert len(accepts) == 300
    assert all(e["pid"] == os.getpid() and e["laddr"] == "127.0.0.1" for e in accepts)
    (ex,) = [e for e in events if e["kind"] == "exec" and marker.decode() in e["args"]]
    assert unescape(ex["args"][2]) == weird
    # the recording carries the process table: ancestry reaches the test process
    assert ex["ancestors"][0]["pid"] == os.getpid()
    assert ex["ancestors"][0]["exe"] == os.path.realpath(os.sys.executable)

    res = vigil("report", str(path), "--kind", "exec", check=True)
    lines = res.stdout.decode().splitlines()
    assert lines[0].split()[:2] == ["TIME", "KIND"]
    assert all(line.split()[1] == "exec" for line in lines[1:])


@tcg_slow_cli
def test_bad_recordings_are_one_line_errors(tmp_path):
    junk = tmp_path / "junk.vgl"
    junk.write_bytes(b"not a recording\n")
    res = vigil("report", str(junk))
    assert res.returncode == 1 and b"not a Vigil recording" in res.stderr
    assert len(res.stderr.decode().strip().splitlines()) == 1

    good = tmp_path / "good.vgl"
    proc = _record(good, "--sensor", "exec", "--duration", "1")
    subprocess.run(["/bin/true"], check=True)
    proc.communicate(timeout=30)
    cut = tmp_path / "cut.vgl"
    data = good.read_bytes()
    cut.write_bytes(data[:-3])
    res = vigil("report", str(cut))
    assert res.returncode == 1 and b"cut short" in res.stderr

    res = vigil("record", "-o", "/proc/nonexistent/x.vgl", "--sensor", "exec", "--duration", "1")
    assert res.returncode == 1 and b"cannot write" in res.stderr
