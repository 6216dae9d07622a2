"""Records stored undecoded (what no stage of the analysis reads) read back
as the very events the decoding path makes: real records, from the kernel."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys

import orjson
import pytest

from helpers import tcg_slow_cli, unique_marker, vigil, vigil_argv
from test_recorder import _accepts
from vigil import recorder
from vigil.encoding import escape
from vigil.outputs.store import Store
from vigil.stages import Batch, Enrich

pytestmark = pytest.mark.kernel

ODD_PORT = 9  # discard: closed here, the connect is refused (a record all the same)
# PR_SET_NAME with hostile bytes, then three connects
HOSTILE_COMM = f"""
import ctypes, socket
ctypes.CDLL(None).prctl(15, b'\\xff\\\\x"\\n\\xc3(', 0, 0, 0)
for _ in range(3):
    s = socket.socket()
    try:
        s.connect(("127.0.0.1", {ODD_PORT}))
    except OSError:
        pass
    s.close()
"""
ODD_COMM_TEXT = escape(b'\xff\\x"\n\xc3(')


def _store_as_the_analysis_does(recording: str, db: str) -> Store:
    """The recording through the analysis's decode (only what Enrich reads),
    process table and store, as pipeline.LogSource feeds them."""
    table = recorder.report_table()
    source = recorder.replay(recording, table)
    enrich = Enrich(table)
    store = Store(db)
    damage = recorder.Damage()
    for raw in source.chunks():
        events = recorder.decode_chunk(source.decoder, source.finish, raw, damage, enrich.reads)
        batch = Batch(events, source.decoder)
        enrich.process(batch)
        store.add(batch.entries)
    store.close()
    assert damage.bad_records == 0
    return store


@tcg_slow_cli
def test_undecoded_records_read_back_as_the_decoded_events(tmp_path):
    path = str(tmp_path / "run.vgl")
    sensors = ("accept", "connect", "capable", "exec", "fork", "exit")
    proc = subprocess.Popen(
        vigil_argv("record", "-o", path, *[a for s in sensors for a in ("--sensor", s)]),
        stderr=subprocess.PIPE,
    )
    assert b"Ctrl-C to end" in proc.stderr.readline()
    marker = unique_marker()
    subprocess.run([b"/bin/true", marker, b"\xff\\x"], check=True)
    port = _accepts(50)
    # capability checks inside execve (the record's own exe) and outside it
    subprocess.run(["unshare", "-m", "/bin/true", marker], check=False)
    # a process naming itself with bytes meant to break a reader (not UTF-8, an
    # escape, a newline, a quote): its undecoded records must read back as the
    # decoding path prints them, not hide it or break the row
    subprocess.run([sys.executable, "-c", HOSTILE_COMM], check=True)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err

    db = str(tmp_path / "s.db")
    _store_as_the_analysis_does(path, db)
    raw = sqlite3.connect(db)
    kinds = dict(raw.execute("SELECT kind, count(rec) * 1.0 / count(*) FROM events GROUP BY kind"))
    raw.close()
    # undecoded: what no stage reads; decoded: the process table's kinds
    assert kinds["accept"] == kinds["connect"] == kinds["capable"] == 1.0
    assert kinds["exec"] == kinds["fork"] == kinds["exit"] == 0.0

    stored = vigil("events", "--db", db, "--json", "-n", "10000000", check=True).stdout
    reported = vigil("report", path, "--json", check=True).stdout
    by_key = {}
    for line in reported.splitlines():
        ev = orjson.loads(line)
        by_key[(ev["cpu"], ev["seq"])] = ev
    got = [orjson.loads(line) for line in stored.splitlines()]
    assert len(got) == len(by_key)
    for ev in got:
        assert ev == by_key[(ev["cpu"], ev["seq"])], ev  # every field, the joined ones too
    odd = [e for e in got if e["kind"] == "connect" and e["comm"] == ODD_COMM_TEXT]
    assert len(odd) >= 3 and all(e["rport"] == ODD_PORT for e in odd), odd[:2]
    accepts = [e for e in got if e["kind"] == "accept" and e["lport"] == port]
    assert len(accepts) == 50, (port, err, [e for e in got if e["kind"] == "accept"][:3]) and all(
        e["pid"] == os.getpid() for e in accepts
    )
    assert all(e["exe"] == os.path.realpath(os.sys.executable) for e in accepts)


def test_altered_layouts_and_records_are_skipped_and_counted(tmp_path):
    """A layout row or record edited in the file: its events are skipped,
    said once, never a traceback, and the other events still read."""
    from vigil import _libbpf as bpf
    from vigil import paths, records
    from vigil.process import ProcessTable

    decoder = records.Decoder(10**18)
    with bpf.Object(paths.bpf_object("accept")) as obj:
        decoder.add_btf(obj.btf())
        kind_at = records.header_kind_offset(obj.btf())
    (kind_id,) = [k for k, lay in decoder.layouts.items() if lay.kind == "accept"]
    layout = decoder.layouts[kind_id]
    rec = bytearray(layout.size)
    rec[kind_at : kind_at + 4] = kind_id.to_bytes(4, "little")
    db = str(tmp_path / "t.db")
    store = Store(db)
    table = ProcessTable(read_proc=False)
    entries: list = [bytes(rec), bytes(rec), bytes(rec)]
    table.enrich(entries, decoder)
    store.add(entries)
    store.close()
    res = vigil("events", "--db", db, "--json", check=True)
    assert len(res.stdout.splitlines()) == 3

    raw = sqlite3.connect(db)
    raw.execute("UPDATE events_p1 SET rec = x'00' WHERE id = 1")  # cut short
    raw.commit()
    res = vigil("events", "--db", db, "--json", check=True)
    assert len(res.stdout.splitlines()) == 2
    assert res.stderr.decode().count("\n") == 1 and b"1 malformed rows skipped" in res.stderr
    for bad in (
        '{"kind": "accept"}',
        "[1]",
        "not json",
        orjson.dumps(
            {
                **orjson.loads(raw.execute("SELECT description FROM layouts").fetchone()[0]),
                "kind": "x'); import os; os.system('touch /tmp/pwned'); ('",
            }
        ).decode(),
    ):
        raw.execute("UPDATE layouts SET description = ?", (bad,))
        raw.commit()
        res = vigil("events", "--db", db, "--json")
        assert res.returncode == 0 and res.stdout == b"", (bad, res)
        assert b"3 malformed rows skipped" in res.stderr, res.stderr
        assert b"Traceback" not in res.stderr
    raw.close()
    assert not os.path.exists("/tmp/pwned")
