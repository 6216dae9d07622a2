"""A store edited by hand (or by someone on the host), read and written:
every altered row is skipped and counted, or the store refused in one
line; never a traceback, never an agent that fails to start.  No kernel:
the records are made from the accept sensor's BTF (the built object)."""

from __future__ import annotations

import sqlite3

import orjson
import pytest

from helpers import vigil
from vigil import _libbpf as bpf
from vigil import paths, records
from vigil.errors import StoreError
from vigil.outputs import store as store_module
from vigil.outputs.store import Store
from vigil.pipeline import _stored_after
from vigil.process import ProcessTable

BASE = 1_700_000_000_000_000_000


@pytest.fixture(scope="module")
def accept():
    """(decoder, a blank accept record with its kind set)."""
    decoder = records.Decoder(BASE)
    with bpf.Object(paths.bpf_object("accept")) as obj:
        decoder.add_btf(obj.btf())
        kind_at = records.header_kind_offset(obj.btf())
    (kind_id,) = [k for k, lay in decoder.layouts.items() if lay.kind == "accept"]
    rec = bytearray(decoder.layouts[kind_id].size)
    rec[kind_at : kind_at + 4] = kind_id.to_bytes(4, "little")
    return decoder, bytes(rec)


def _store_records(db: str, accept, n: int = 3) -> None:
    decoder, rec = accept
    store = Store(db)
    entries: list = [rec] * n
    ProcessTable(read_proc=False).enrich(entries, decoder)
    store.add(entries)
    store.close()


def _sql(db: str, *statements) -> None:
    raw = sqlite3.connect(db)
    for sql in statements:
        raw.execute(*sql) if isinstance(sql, tuple) else raw.execute(sql)
    raw.commit()
    raw.close()


def _events(db: str, *args) -> tuple[list[dict], str]:
    res = vigil("events", "--db", db, "--json", *args)
    err = res.stderr.decode()
    assert res.returncode == 0 and "Traceback" not in err and "internal error" not in err, err
    return [orjson.loads(line) for line in res.stdout.splitlines()], err


def test_extras_beside_a_record_cannot_give_the_header_another_type(tmp_path, accept):
    db = str(tmp_path / "s.db")
    _store_records(db, accept)
    _sql(db, """UPDATE events_p1 SET data = '{"ts_ns": "x", "pid": [1]}' WHERE id = 1""")
    got, err = _events(db)
    assert len(got) == 2 and "1 malformed rows skipped" in err
    res = vigil("events", "--db", db)  # the table printer too
    assert res.returncode == 0 and b"internal error" not in res.stderr, res.stderr


def test_a_layout_giving_pid_another_type_is_skipped_as_a_json_row_would_be(tmp_path, accept):
    db = str(tmp_path / "s.db")
    _store_records(db, accept)
    raw = sqlite3.connect(db)
    desc = orjson.loads(raw.execute("SELECT description FROM layouts").fetchone()[0])
    raw.close()
    for field in desc["fields"]:
        if field[0] == "pid":
            field[4] = "4s"  # 4 bytes still: passes `described`, decodes to bytes
    _sql(db, ("UPDATE layouts SET description = ?", (orjson.dumps(desc).decode(),)))
    got, err = _events(db)
    assert got == [] and "3 malformed rows skipped" in err


def test_restart_dedup_survives_rows_with_lists_for_cpu_and_seq(tmp_path, accept):
    """The agent's start reads the rows past its mark (AlreadyStored): an
    edited row must not stop it (a list is unhashable)."""
    db = str(tmp_path / "s.db")
    _store_records(db, accept)
    _sql(
        db,
        """UPDATE events_p1 SET data = '{"cpu": [1], "seq": [2]}' WHERE id = 1""",
        (
            "INSERT INTO events (ts_ns, kind, pid, comm, proc, data) VALUES (1,'exec',1,'x',1,?)",
            ('{"kind":"exec","ts_ns":1,"pid":1,"ppid":0,"comm":"x","cpu":[1],"seq":{"a":3}}',),
        ),
    )
    store = Store(db)
    try:
        assert _stored_after(store, 0) == set()  # blank records: seq 0, never a key
    finally:
        store.close()


def _event(i: int, ts_ns: int, exe: bytes) -> dict:
    return {
        "kind": "exit",
        "ts_ns": ts_ns,
        "pid": 1000 + i,
        "ppid": 1,
        "comm": b"c",
        "process_key": f"b:{i}",
        "exe": exe,
        "ancestors": [],
    }


def test_process_rows_stay_while_a_newer_partition_holds_an_earlier_event(tmp_path, monkeypatch):
    """Times are not in partition order (a connect's record takes its time
    when the call began; the clock may be stepped back): a process whose
    only event sits in a newer partition, older than the oldest partition's
    first, keeps its row, and `vigil events` shows its exe."""
    monkeypatch.setattr(store_module, "SEAL_ROWS", 100)
    db = str(tmp_path / "p.db")
    store = Store(db, retention_age_s=None, retention_bytes=None)
    store.add([_event(0, BASE + 10_000 + i, b"/bin/first") for i in range(100)])
    store.flush()  # sealed: partition 1, its times from BASE + 10000
    store.add([_event(1, BASE + 5, b"/bin/late")])  # partition 2, an earlier time
    store.flush()
    store.enforce_retention(budget_s=1.0)
    store.close()
    got, _err = _events(db, "--pid", "1001")
    assert [ev["exe"] for ev in got] == ["/bin/late"]


def test_a_partition_number_out_of_range_is_refused_in_one_line(tmp_path, accept):
    db = str(tmp_path / "s.db")
    _store_records(db, accept)
    top = (1 << 63) - 1
    _sql(
        db,
        f"UPDATE partitions SET n = {top}",
        f"ALTER TABLE events_p1 RENAME TO events_p{top}",
        "DROP VIEW events",
    )
    with pytest.raises(StoreError, match="partition numbers out of range"):
        Store(db)
    got, _err = _events(db)  # still read
    assert len(got) == 3


def test_a_layout_put_in_under_a_real_digest_is_not_used_for_new_records(tmp_path, accept):
    """Someone plants a description of their own under the digest the
    agent's accept layout has (e.g. lport and rport swapped): the records
    the agent stores after that still read as the kernel wrote them."""
    decoder, rec = accept
    form = next(f for f in decoder.forms.values() if f.layout.kind == "accept")
    forged = orjson.loads(form.description)
    names = [f[0] for f in forged["fields"]]
    lport, rport = names.index("lport"), names.index("rport")
    forged["fields"][lport][0], forged["fields"][rport][0] = "rport", "lport"
    db = str(tmp_path / "s.db")
    Store(db).close()
    _sql(
        db,
        (
            "INSERT INTO layouts VALUES (1, ?, 'accept', ?)",
            (form.digest, orjson.dumps(forged).decode()),
        ),
    )
    real = bytearray(rec)
    at = form.layout.fields[lport].offset
    real[at : at + 2] = (8080).to_bytes(2, "little")
    _store_records(db, (decoder, bytes(real)), n=1)
    got, _err = _events(db)
    assert [(ev["lport"], ev["rport"]) for ev in got] == [(8080, 0)]
