"""The analysis's fast paths give what the plain ones give, on real events.

The decoder is generated per layout, the process table memoises its answer
per process between table changes, and the store serialises events by a
compiled plan per shape: each is checked here against a plain, obviously
right reading of the same recorded events (every field read at its BTF
offset by its own struct call; the store's general path; the process table
asked per event), with field order included (it is the JSON's order).
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import struct
import subprocess

import orjson
import pytest

from helpers import TRUE, tcg_slow_cli, unique_marker, vigil_argv
from vigil import recorder, records
from vigil._libbpf import split_records
from vigil.encoding import escape
from vigil.errors import LayoutError
from vigil.outputs.store import Store, _stored
from vigil.process import ProcessTable

pytestmark = pytest.mark.kernel

SENSORS = ("exec", "fork", "exit", "connect", "accept", "capable")


def _workload(marker: bytes) -> None:
    for _ in range(20):
        subprocess.run([TRUE, marker, b"\xff\\x"], check=True)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    for _ in range(50):
        cli = socket.create_connection(srv.getsockname())
        srv.accept()[0].close()
        cli.close()
    srv.close()
    for _ in range(50):
        os.setuid(0)  # a CAP_SETUID check each


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    path = tmp_path_factory.mktemp("fast") / "mixed.vrec"
    args = ["record", "--all-events", "-o", str(path)]
    for s in SENSORS:
        args += ["--sensor", s]
    proc = subprocess.Popen(vigil_argv(*args), stderr=subprocess.PIPE)
    assert b"Ctrl-C to end" in proc.stderr.readline()
    _workload(unique_marker())
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return str(path)


class _Capture(recorder.Replay):
    """A replay that also keeps each raw record and the decoder."""

    def __init__(self, path: str):
        super().__init__(path, ProcessTable(read_proc=False))
        self.raw: list[bytes] = []

    def _decode(self, decoder, finish, raw):
        self.decoder = decoder
        self.raw.extend(split_records(raw))
        return super()._decode(decoder, finish, raw)


def _plain_decode(layout: records.Layout, flags: dict[int, str], offset: int, rec: bytes):
    """The field rules of records.py, one field at a time."""
    ev = {}
    for f in layout.fields:
        (value,) = struct.unpack_from("<" + f.code, rec, f.offset)
        if f.name == "kind":
            value = layout.kind
        elif f.name == "ts_ns":
            value += offset
        elif f.form == "cstr":
            value = value.split(b"\0")[0]
        elif f.form == "enum":
            value = dict(f.names).get(value, value)
        elif f.name == "flags":
            value = [n for v, n in sorted(flags.items()) if value & v]
        ev[f.name] = value
    if layout.tail is not None:
        ev[layout.tail.name] = rec[layout.tail.offset : layout.tail.offset + layout.tail.size]
    ev.setdefault("kind", layout.kind)
    return ev


@tcg_slow_cli
def test_generated_decoders_read_every_field_as_the_plain_reading(recording):
    replay = _Capture(recording)
    list(replay)
    decoder = replay.decoder
    flags = {1: "one", 4: "four", 8: "eight"}  # any flag table: the rule, not the names
    kinds = set()
    kind_off = struct.Struct("<I")
    for rec in replay.raw:
        (kind_id,) = kind_off.unpack_from(rec, decoder._kind_off)
        layout = decoder.layouts[kind_id]
        fn = records.make_decoder(layout, flags, [12345])
        got = fn(rec)
        want = _plain_decode(layout, flags, 12345, rec)
        assert list(got.items()) == list(want.items())  # values and order
        kinds.add(layout.kind)
        with pytest.raises(LayoutError, match=f"{layout.kind} record of 3 bytes"):
            fn(rec[:3])
    assert kinds >= set(SENSORS)


def _replayed(path: str) -> list[dict]:
    table = recorder.report_table()
    events = []
    for batch in recorder.replay(path, table):
        table.enrich(batch)
        events.extend(batch)
    return events


@tcg_slow_cli
def test_the_memoised_table_answers_as_the_table_asked_per_event(recording):
    fast = _replayed(recording)
    # the same events, enriched one at a time: nothing is memoised across events
    table = recorder.report_table()
    slow = []
    for batch in recorder.replay(recording, table):
        for ev in batch:
            table.enrich([ev])
            slow.append(ev)
    assert len(fast) == len(slow) > 200
    for a, b in zip(fast, slow):
        assert list(a.items()) == list(b.items())


@tcg_slow_cli
def test_stored_rows_are_the_general_paths_rows(recording, tmp_path):
    events = _replayed(recording)
    # hostile shapes after the plans are learnt: text where bytes were,
    # bytes where text was, a field missing, bytes in a list that was
    # empty, a field a process row holds in place of another
    odd = [dict(ev) for ev in events[-40:]]
    for i, ev in enumerate(odd):
        key = ("comm", "kind", "pid", "flags", "time")[i % 5]
        if key == "comm":
            ev["comm"] = ev["comm"].decode(errors="replace") + "\\"
        elif key == "kind":
            ev["uid"] = b'\xfe"x'
        elif key == "pid":
            del ev["tid"]
            ev["extra"] = 1  # same field count, another field
        elif key == "flags":
            ev["flags"] = [b"\xff", b"a"]
        else:  # a joined field where another was: the count is the same
            del ev["tid"]
            ev["time"] = "2026-01-01T00:00:00Z"
    events += odd
    db = str(tmp_path / "s.db")
    store = Store(db)
    store.add(events)
    store.close()
    con = sqlite3.connect(db)
    rows = con.execute(
        "SELECT ts_ns, kind, pid, comm, proc, data FROM events ORDER BY id"
    ).fetchall()
    procs = {
        r[0]: r[1:]
        for r in con.execute("SELECT id, process_key, parent_key, exe, ancestors FROM processes")
    }
    con.close()
    assert len(rows) == len(events)
    for ev, (ts, kind, pid, comm, proc, data) in zip(events, rows):
        assert data == orjson.dumps(_stored(ev)).decode()
        assert (ts, kind, pid) == (ev["ts_ns"], ev["kind"], ev["pid"])
        assert comm == (escape(ev["comm"]) if type(ev["comm"]) is bytes else ev["comm"])
        key, parent, exe, chain = procs[proc]
        assert (key, parent) == (ev["process_key"], ev["parent_key"])
        assert exe == escape(ev["exe"])
        assert orjson.loads(chain) == ev["ancestors"]
    # a process row per image and ancestry, not per event
    images = {
        (e["process_key"], e["parent_key"], e["exe"], orjson.dumps(e["ancestors"])) for e in events
    }
    assert len(procs) == len(images) < len(events) / 2
