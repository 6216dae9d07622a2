"""Flight recorder: the event ring copied to a file, decoded later.

`vigil monitor` decodes, enriches and stores every event as it comes: about
16 us of CPU per event here, which a storm of 100k accepts/s cannot afford.
`vigil record` does no per-event work at all: each drain walks the record
headers to the last committed record and writes that part of the ring to
the file in one copy (records exactly as the kernel wrote them: header,
process context, addresses).  `vigil report` decodes a recording later
through the same BTF-derived decoder, sensors' finish hooks and process
table as live events, so its output is the documented JSON.

File format (version 1):
  line 1   b"VIGIL-RECORDING 1\\n"
  line 2   JSON metadata: boot_offset_ns, the objects' names and SHA-256
           (decoding needs the same build), sensors, start time, and the
           process table at the start (so ancestry reaches processes older
           than the recording)
  then     chunks: u64 little-endian length + ring bytes (per record: u32
           length with the kernel's busy/discard bits, u32 page offset,
           payload, padding to 8 bytes)
"""

from __future__ import annotations

import hashlib
import json
import socket
import struct
import time
from collections.abc import Iterator

from . import _libbpf as bpf
from . import paths, records, sensors
from .encoding import escape, unescape
from .errors import ConfigError
from .files import open_output
from .loader import Session
from .process import Proc, ProcessTable

MAGIC = b"VIGIL-RECORDING 1\n"
_CHUNK = struct.Struct("<Q")


def _digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def record(session: Session, path: str, should_stop, latency: float) -> int:
    """Copy the ring to `path` until should_stop(); returns bytes written."""
    objects = sorted({s.object for s in session.sensors})
    seed = ProcessTable()
    seed.seed()
    meta = {
        "processes": [[p.pid, p.ppid, escape(p.comm), escape(p.exe)] for p in seed.procs.values()],
        "boot_offset_ns": session.decoder.clock[0],
        "objects": {name: _digest(paths.bpf_object(name)) for name in objects},
        "sensors": [s.name for s in session.sensors],
        "host": socket.gethostname(),
        "started_ns": time.time_ns(),
    }
    written = 0
    try:
        out = open_output(path, buffering=1 << 20)  # no symlinks, 0600; closed below
    except OSError as err:
        raise ConfigError(f"cannot write {path}: {err.strerror}") from err
    with out:
        out.write(MAGIC + json.dumps(meta).encode() + b"\n")
        reader = session.reader
        while True:
            stopping = should_stop()
            if not stopping:
                session.wait(latency)
            while raw := reader.drain_raw():
                out.write(_CHUNK.pack(len(raw)))
                out.write(raw)
                written += len(raw)
            if stopping:
                break
    return written


def _chunks(f) -> Iterator[bytes]:
    while head := f.read(_CHUNK.size):
        if len(head) < _CHUNK.size:
            raise ConfigError("recording ends in the middle of a chunk header (cut short?)")
        (n,) = _CHUNK.unpack(head)
        raw = f.read(n)
        if len(raw) < n:
            raise ConfigError("recording ends in the middle of a chunk (cut short?)")
        yield raw


def replay(path: str, table: ProcessTable, batch: int = 4096) -> Iterator[list[dict]]:
    """The recording's events, decoded and finished, in batches; `table` is
    seeded with the processes the recording started with."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror}") from err
    with f:
        if f.readline() != MAGIC:
            raise ConfigError(f"{path}: not a Vigil recording")
        try:
            meta = json.loads(f.readline())
            objects, offset = meta["objects"], int(meta["boot_offset_ns"])
        except (ValueError, KeyError, TypeError) as err:
            raise ConfigError(f"{path}: bad recording metadata ({err})") from None
        for pid, ppid, comm, exe in meta.get("processes", []):
            table.procs[pid] = Proc(pid, ppid, unescape(comm), unescape(exe), [])
        decoder = records.Decoder(offset)
        finish = {}
        for name, digest in objects.items():
            obj_path = paths.bpf_object(name)
            if _digest(obj_path) != digest:
                raise ConfigError(
                    f"{path}: recorded with another build of {name}.bpf.o; "
                    "report it with the build that recorded it"
                )
            with bpf.Object(obj_path) as obj:
                decoder.add_btf(obj.btf())
        for sensor in sensors.all_sensors().values():
            for kind in sensor.kinds:
                finish[kind] = sensor.finish
        pending: list[dict] = []
        for raw in _chunks(f):
            events = decoder.decode_batch(bpf.split_records(raw))
            for ev in events:
                fn = finish.get(ev["kind"])
                if fn is not None:
                    fn(ev)
            pending.extend(events)
            if len(pending) >= batch:
                yield pending
                pending = []
        if pending:
            yield pending


def report_table() -> ProcessTable:
    """A process table fed only by the recording (today's /proc is not then)."""
    return ProcessTable(read_proc=False)


__all__ = ["MAGIC", "record", "replay", "report_table"]
