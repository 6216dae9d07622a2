"""Recordings cut short or damaged: every intact chunk is read, the rest said.

The chunk layout is read here from the format the recorder's docstring
documents (tag, length, payload CRC, header CRC), not from its code.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import time

import orjson
import pytest

from helpers import TRUE, start_vigil, unique_marker, vigil

pytestmark = pytest.mark.kernel

HEAD = struct.Struct("<4sIII")


def chunks(data: bytes) -> list[tuple[int, bytes, int]]:
    """(offset, tag, payload length) of each chunk of a version 2 recording."""
    assert data.startswith(b"VIGIL-RECORDING 2\n")
    pos = data.index(b"\n", data.index(b"\n") + 1) + 1
    out = []
    while pos + HEAD.size <= len(data):
        tag, length, _crc, _hcrc = HEAD.unpack_from(data, pos)
        out.append((pos, tag, length))
        pos += HEAD.size + length
    return out


def _batch(marker: str, tag: str, n: int) -> None:
    for i in range(n):
        subprocess.run([TRUE, marker, f"{tag}{i}"], check=True)


def _wait_chunks(path, n: int, timeout: float = 10) -> None:
    """Until the recorder has written `n` ring chunks (it drains every --latency)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len([c for c in chunks(path.read_bytes()) if c[1] == b"VGRc"]) >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"fewer than {n} chunks in {timeout}s")


def _report(path, *args):
    res = vigil("report", str(path), "--json", *args)
    assert b"Traceback" not in res.stderr
    events = [orjson.loads(line) for line in res.stdout.splitlines()]
    return res, events


def _markers(events, marker: str) -> set[str]:
    return {e["args"][2] for e in events if e["kind"] == "exec" and marker in e["args"]}


def _wait_markers(path, marker: str, want: set[str], timeout: float = 10) -> None:
    """Until the recording in progress holds every `want` marker."""
    deadline = time.monotonic() + timeout
    needles = [f"{marker}\0{w}\0".encode() for w in want]  # argv as the ring holds it
    while time.monotonic() < deadline:
        data = path.read_bytes()
        if all(n in data for n in needles):
            return
        time.sleep(0.1)
    raise AssertionError(f"markers not recorded in {timeout}s")


def _chunk_holding(data: bytes, needle: bytes) -> tuple[int, bytes, int]:
    pos = data.index(needle, data.index(b"\n", data.index(b"\n") + 1))
    return next(c for c in chunks(data) if c[0] <= pos < c[0] + HEAD.size + c[2])


@pytest.fixture
def two_batches(tmp_path):
    """A clean recording; every chunk from index `first` on was written
    after the whole first batch (a0..a29) was in the file."""
    path = tmp_path / "run.vgl"
    proc = start_vigil("record", "-o", str(path), "--sensor", "exec", "--latency", "0.05")
    marker = unique_marker().decode()
    _batch(marker, "a", 30)
    _wait_markers(path, marker, {f"a{i}" for i in range(30)})
    first = len(chunks(path.read_bytes()))
    _batch(marker, "b", 30)
    _wait_markers(path, marker, {f"b{i}" for i in range(30)})
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    data = path.read_bytes()
    return path, data, marker, first


def test_clean_recording_ends_with_an_end_mark(two_batches):
    path, data, marker, _first = two_batches
    *_, (off, tag, length) = chunks(data)
    assert tag == b"VGRe" and off + HEAD.size + length == len(data)
    end = json.loads(data[off + HEAD.size :])
    assert end["chunks"] == len(chunks(data)) - 1
    res, events = _report(path)
    assert res.returncode == 0
    # the only word allowed: losses the kernel counted (other users' storms)
    assert res.stderr == b"" or b"events were lost while recording" in res.stderr
    assert _markers(events, marker) == {f"{t}{i}" for t in "ab" for i in range(30)}


def test_kill_9_mid_recording_keeps_every_drained_chunk(tmp_path):
    path = tmp_path / "run.vgl"
    proc = start_vigil("record", "-o", str(path), "--sensor", "exec", "--latency", "0.05")
    marker = unique_marker().decode()
    _batch(marker, "k", 200)
    _wait_chunks(path, 1)
    time.sleep(0.3)  # a few more drains
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    proc.stderr.close()
    proc.stdout.close()
    assert os.path.getsize(path) > 0  # nothing was held back in user space
    res, events = _report(path)
    assert res.returncode == 1
    (line,) = res.stderr.decode().splitlines()
    assert line.startswith(f"vigil: warning: {path}: no end mark"), line
    assert _markers(events, marker) == {f"k{i}" for i in range(200)}


def test_cut_inside_a_chunk_reads_the_chunks_before(two_batches, tmp_path):
    path, data, marker, first = two_batches
    off, _tag, length = _chunk_holding(data[: chunks(data)[-1][0]], f"{marker}\0b".encode())
    assert chunks(data).index((off, _tag, length)) >= first
    cut = tmp_path / "cut.vgl"
    cut.write_bytes(data[: off + HEAD.size + length // 2])
    res, events = _report(cut)
    assert res.returncode == 1
    (line,) = res.stderr.decode().splitlines()
    assert "cut short inside the last chunk" in line, line
    assert {f"a{i}" for i in range(30)} <= _markers(events, marker)


def _flip(data: bytes, pos: int, bit: int = 0) -> bytes:
    out = bytearray(data)
    out[pos] ^= 1 << bit
    return bytes(out)


def test_bit_flipped_chunk_is_skipped_counted_and_reported(two_batches, tmp_path):
    path, data, marker, first = two_batches
    # the chunk holding a0: flip one bit in its payload
    off, tag, length = _chunk_holding(data, f"{marker}\0a0\0".encode())
    bad = tmp_path / "flipped.vgl"
    bad.write_bytes(_flip(data, off + HEAD.size + length // 2, 3))
    res, events = _report(bad)
    assert res.returncode == 1
    (line,) = res.stderr.decode().splitlines()
    assert f"1 damaged chunk(s) skipped ({HEAD.size + length} bytes)" in line, line
    found = _markers(events, marker)
    assert {f"b{i}" for i in range(30)} <= found  # the other chunks are all read
    assert "a0" not in found


def test_flipped_length_costs_one_chunk_not_the_rest(two_batches, tmp_path):
    path, data, marker, first = two_batches
    off, _tag, _length = _chunk_holding(data, f"{marker}\0a0\0".encode())
    bad = tmp_path / "length.vgl"
    bad.write_bytes(_flip(data, off + 4 + 3, 7))  # the length's top bit: a 2 GiB chunk
    res, events = _report(bad)
    assert res.returncode == 1
    assert "1 damaged chunk(s) skipped" in res.stderr.decode()
    found = _markers(events, marker)
    assert {f"b{i}" for i in range(30)} <= found and "a0" not in found


def test_version_1_recordings_are_still_read(two_batches, tmp_path):
    """The same ring bytes in the version 1 layout (u64 length + bytes)."""
    path, data, marker, _first = two_batches
    head_end = data.index(b"\n", data.index(b"\n") + 1) + 1
    meta = json.loads(data[data.index(b"\n") + 1 : head_end])
    del meta["chunk_seed"]
    v1 = b"VIGIL-RECORDING 1\n" + json.dumps(meta).encode() + b"\n"
    for off, tag, length in chunks(data):
        if tag == b"VGRc":
            v1 += struct.pack("<Q", length) + data[off + HEAD.size : off + HEAD.size + length]
    old = tmp_path / "v1.vgl"
    old.write_bytes(v1)
    res, events = _report(old)
    assert res.returncode == 0 and res.stderr == b"", res.stderr
    assert _markers(events, marker) == {f"{t}{i}" for t in "ab" for i in range(30)}
    future = tmp_path / "v9.vgl"
    future.write_bytes(b"VIGIL-RECORDING 9\n{}\n")
    res = vigil("report", str(future))
    assert res.returncode == 1 and b"reads versions 1 and 2" in res.stderr
