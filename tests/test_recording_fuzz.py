"""Hostile recordings: `vigil report` never shows a traceback.

Whatever the bytes (random, a real recording with bits flipped, cut at any
offset, chunk lengths of 2^62, metadata of the wrong types, ring records
forged with valid checksums), `vigil report` ends with exit status 0 or 1
and at most one line on stderr.  It runs in-process (cli.main, as the
console script does) so that thousands of cases take seconds: an exception
escaping main() is exactly what would print a traceback.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import struct
import subprocess
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import TRUE, unique_marker, vigil
from vigil import cli

# Bounded and deadline-free: timing noise on a shared machine must not fail
# a property that is about tracebacks; no example database in the tree.
settings.register_profile(
    "vigil-fuzz",
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
FUZZ = settings.get_profile("vigil-fuzz")

HEAD = struct.Struct("<4sIII")  # the documented chunk header


def chunk(tag: bytes, payload: bytes, seed: int) -> bytes:
    head = struct.pack("<4sII", tag, len(payload), zlib.crc32(payload, seed))
    return head + struct.pack("<I", zlib.crc32(head, seed)) + payload


def ring_record(payload: bytes, flags: int = 0) -> bytes:
    """One record as the kernel lays it in the ring: u32 length (busy/discard
    bits on top), u32 page offset, payload, padding to 8 bytes."""
    rec = struct.pack("<II", len(payload) | flags, 0) + payload
    return rec + b"\0" * (-len(rec) % 8)


def records_of(ring: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos + 8 <= len(ring):
        (length,) = struct.unpack_from("<I", ring, pos)
        n = length & 0x3FFFFFFF
        out.append(ring[pos + 8 : pos + 8 + n])
        pos += (n + 8 + 7) & ~7
    return out


def report(path, *args) -> tuple[int, str]:
    err = io.StringIO()
    with (
        open(os.devnull, "w") as null,
        contextlib.redirect_stdout(null),
        contextlib.redirect_stderr(err),
    ):
        rc = cli.main(["report", str(path), *args])
    return rc, err.getvalue()


def check(path, *args) -> tuple[int, str]:
    rc, err = report(path, *args)
    lines = err.splitlines()
    assert rc in (0, 1), (rc, err)
    assert len(lines) <= 1, err
    assert rc == 0 or (lines and lines[0].startswith("vigil: ")), err
    assert "Traceback" not in err
    return rc, err


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A real recording of a few marker execs, cut down to a small one:
    two processes in its table, the marker records in two chunks."""
    d = tmp_path_factory.mktemp("fuzz")
    real = d / "real.vgl"
    marker = unique_marker()
    proc = subprocess.Popen(
        [
            os.path.join(os.path.dirname(os.sys.executable), "vigil"),
            "record",
            "-o",
            str(real),
            "--sensor",
            "exec",
            "--sensor",
            "fork",
            "--sensor",
            "exit",
            "--latency",
            "0.05",
        ],
        stderr=subprocess.PIPE,
    )
    assert b"Ctrl-C to end" in proc.stderr.readline()
    for i in range(3):
        subprocess.run([TRUE, marker, str(i)], check=True)
    proc.send_signal(2)
    proc.communicate(timeout=30)
    data = real.read_bytes()
    l1 = data.index(b"\n") + 1
    l2 = data.index(b"\n", l1) + 1
    meta = json.loads(data[l1:l2])
    seed = meta["chunk_seed"]
    pos, every = l2, []
    while pos + HEAD.size <= len(data):
        tag, n, _c, _h = HEAD.unpack_from(data, pos)
        if tag == b"VGRc":
            every += records_of(data[pos + HEAD.size : pos + HEAD.size + n])
        pos += HEAD.size + n
    recs = [r for r in every if marker in r]
    assert len(recs) == 3
    shortest = sorted(every, key=len)[:2]  # fork/exit records: for cutting at every offset
    meta["processes"] = meta["processes"][:2]
    head = b"VIGIL-RECORDING 2\n" + json.dumps(meta).encode() + b"\n"
    body = chunk(b"VGRc", b"".join(map(ring_record, recs[:2])), seed)
    body += chunk(b"VGRc", ring_record(recs[2]), seed)
    end = chunk(b"VGRe", json.dumps({"chunks": 2}).encode(), seed)
    tiny = b"".join(chunk(b"VGRc", ring_record(r), seed) for r in shortest)
    path = d / "small.vgl"
    path.write_bytes(head + body + end)
    rc, err = report(path)
    assert (rc, err) == (0, "")
    res = vigil("report", str(path), "--json", check=True)
    assert len([line for line in res.stdout.splitlines() if marker in line]) == 3
    return {
        "dir": d,
        "head": head,
        "body": body,
        "tiny": tiny,
        "end": end,
        "meta": meta,
        "recs": recs,
    }


def _write(small, name: str, data: bytes):
    path = small["dir"] / name
    path.write_bytes(data)
    return path


@pytest.mark.kernel
def test_truncated_at_every_offset(small):
    data = small["head"] + small["tiny"] + small["end"]
    assert check(_write(small, "whole.vgl", data)) == (0, "")
    body_at = len(small["head"])
    offsets = [*range(0, body_at, 7), *range(body_at, len(data))]
    for n in offsets:
        rc, err = check(_write(small, "cut.vgl", data[:n]))
        assert rc == 1, (n, err)  # nothing cut off passes as a whole recording


@pytest.mark.kernel
@FUZZ
@given(
    flips=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 7)), min_size=1, max_size=4)
)
def test_bit_flips(small, flips):
    data = bytearray(small["head"] + small["body"] + small["end"])
    for pos, bit in flips:
        data[pos % len(data)] ^= 1 << bit
    check(_write(small, "flip.vgl", bytes(data)))


@pytest.mark.kernel
@FUZZ
@given(
    length=st.sampled_from([1 << 62, (1 << 64) - 1, (1 << 32) - 1, 1 << 31, 65 << 20, 0])
    | st.integers(0, (1 << 64) - 1),
    which=st.integers(0, 2),
)
def test_huge_chunk_lengths(small, length, which):
    """A chunk length of 2^62 and friends, in both versions' layouts."""
    seed = small["meta"]["chunk_seed"]
    body = bytearray(small["body"])
    if which < 2:  # version 2: the raw field, with and without a matching header CRC
        struct.pack_into("<I", body, 4, length & 0xFFFFFFFF)
        if which == 1:
            struct.pack_into("<I", body, 12, zlib.crc32(bytes(body[:12]), seed))
        data = small["head"] + bytes(body) + small["end"]
    else:  # version 1: a u64 length, no checksum at all
        meta = dict(small["meta"])
        del meta["chunk_seed"]
        data = b"VIGIL-RECORDING 1\n" + json.dumps(meta).encode() + b"\n"
        data += struct.pack("<Q", length) + b"\0" * 64
    check(_write(small, "huge.vgl", data))


@pytest.mark.kernel
@FUZZ
@given(
    payload=st.binary(max_size=600),
    flags=st.sampled_from([0, 1 << 31, 1 << 30]),
    raw=st.booleans(),
    as_json=st.booleans(),
)
def test_forged_records_with_valid_checksums(small, payload, flags, raw, as_json):
    """Ring bytes the checksum cannot catch (a forger who knows the seed):
    short records, unknown kinds, garbage fields, lengths past the chunk."""
    seed = small["meta"]["chunk_seed"]
    ring = payload if raw else ring_record(payload, flags)
    data = small["head"] + chunk(b"VGRc", ring, seed) + small["end"]
    check(_write(small, "forged.vgl", data), *(["--json"] if as_json else []))


@pytest.mark.kernel
@FUZZ
@given(
    rec=st.integers(0, 2),
    pos=st.integers(0, 1 << 16),
    value=st.binary(min_size=1, max_size=8),
    as_json=st.booleans(),
)
def test_real_records_with_fields_overwritten(small, rec, pos, value, as_json):
    """A real exec record with any field overwritten (kind, lengths, times,
    string sizes), re-checksummed."""
    seed = small["meta"]["chunk_seed"]
    r = bytearray(small["recs"][rec])
    at = pos % len(r)
    r[at : at + len(value)] = value
    data = small["head"] + chunk(b"VGRc", ring_record(bytes(r)), seed) + small["end"]
    check(_write(small, "field.vgl", data), *(["--json"] if as_json else []))


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4)
    ),
    max_leaves=12,
)


@pytest.mark.kernel
@FUZZ
@given(
    key=st.sampled_from(["objects", "boot_offset_ns", "processes", "chunk_seed", "sensors", None]),
    value=_json,
)
def test_metadata_of_any_type(small, key, value):
    meta = dict(small["meta"]) if key is not None else value
    if key is not None:
        meta[key] = value
    data = b"VIGIL-RECORDING 2\n" + json.dumps(meta).encode() + b"\n" + small["body"] + small["end"]
    check(_write(small, "meta.vgl", data))


@FUZZ
@given(
    data=st.binary(max_size=4096),
    magic=st.sampled_from([b"", b"VIGIL-RECORDING 2\n", b"VIGIL-RECORDING 1\n"]),
)
def test_random_bytes(tmp_path, data, magic):
    path = tmp_path / "random.vgl"
    path.write_bytes(magic + data)
    rc, err = check(path)
    assert rc == 1


def test_files_that_are_not_recordings(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # opening it for reading must not wait for a writer
    for path in ("/dev/null", "/dev/zero", str(tmp_path), str(fifo), str(tmp_path / "missing.vgl")):
        rc, err = check(path)
        assert rc == 1 and err.startswith("vigil: error: "), (path, err)
