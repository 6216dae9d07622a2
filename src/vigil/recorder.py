"""Flight recorder: the event ring copied to a file, decoded later.

`vigil monitor` decodes, enriches and stores every event as it comes: about
16 us of CPU per event here, which a storm of 100k accepts/s cannot afford.
`vigil record` does no per-event work at all: each drain walks the record
headers to the last committed record and writes that part of the ring to
the file in one copy (records exactly as the kernel wrote them: header,
process context, addresses).  `vigil report` decodes a recording later
through the same BTF-derived decoder, sensors' finish hooks and process
table as live events, so its output is the documented JSON.

File format (version 2):
  line 1   b"VIGIL-RECORDING 2\\n"
  line 2   JSON metadata: boot_offset_ns, the objects' names and SHA-256
           (decoding needs the same build), sensors, host, boot_id, start time, the
           process table at the start (so ancestry reaches processes older
           than the recording), and chunk_seed (a random u32)
  then     chunks, each a 16-byte header and a payload:
             4s  tag: b"VGRc" ring bytes, b"VGRe" the end mark
             u32 payload length (at most MAX_CHUNK)
             u32 CRC-32 of the payload, zlib.crc32(payload, chunk_seed)
             u32 CRC-32 of the 12 header bytes before it, same seed
           ring bytes: per record a u32 length with the kernel's busy/
           discard bits, a u32 page offset, the payload, padding to 8 bytes.
           The end mark (JSON: chunks, bytes, kernel counters per kind,
           records left unread at the stop) is written by a clean stop
           only: a recording without one was cut short.
  All integers little-endian.

Every chunk is written with one write(2) as soon as it is drained, with no
user-space buffering: a `kill -9` or OOM kill of the recorder loses nothing
that was drained (the data is in the kernel's page cache), and `vigil report`
reads every complete chunk of a cut recording.  fdatasync runs once, at a
clean stop: syncing every drain would stall the drain loop on a slow disk
exactly when a storm fills the ring (losing events to guard against a host
crash), and the kernel writes dirty pages back within ~30 s anyway.

The header's own checksum lets a reader find the next chunk after a damaged
one (a flipped length bit costs one chunk, not the rest of the file); the
per-recording seed keeps a chunk header that an attacker planted inside an
event's strings from passing as a real one.  Version 1 (u64 length +
ring bytes, no checksum) is still read.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import mmap
import os
import re
import secrets
import socket
import stat
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from . import _libbpf as bpf
from . import identity, paths, records, sensors
from .encoding import escape, unescape
from .errors import ConfigError, VigilError
from .files import open_output
from .loader import Session
from .outputs.sinks import write_all
from .process import Proc, ProcessTable
from .signals import STOP_GRACE_S, ServiceSignals, StopDrain

VERSION = 2
MAGIC = b"VIGIL-RECORDING 2\n"
MAGIC_V1 = b"VIGIL-RECORDING 1\n"
TAG_RING = b"VGRc"
TAG_END = b"VGRe"
_HEAD = struct.Struct("<4sIII")
_HEAD_V1 = struct.Struct("<Q")
# A drain copies at most ~4 MiB (RingReader.drain_raw): anything longer is damage.
MAX_CHUNK = 64 << 20
MAX_META = 256 << 20  # the metadata line (mostly the process table)
_OBJECT_NAME = re.compile(r"[a-z0-9_]{1,64}")


def _digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _chunk_head(tag: bytes, payload: bytes, seed: int) -> bytes:
    head = struct.pack("<4sII", tag, len(payload), zlib.crc32(payload, seed))
    return head + struct.pack("<I", zlib.crc32(head, seed))


@dataclass
class Recorded:
    """What `record` wrote, and what its stop left in the ring."""

    written: int = 0
    chunks: int = 0
    unread: dict[str, int] = field(default_factory=dict)


class _ChunkWriter:
    """One write(2) per chunk, straight to the file (see the module docstring)."""

    def __init__(self, fd: int, path: str, seed: int):
        self.fd, self.path, self.seed = fd, path, seed
        self.result = Recorded()

    def raw(self, data: bytes) -> None:
        try:
            write_all(self.fd, data)
        except OSError as err:
            raise VigilError(
                f"cannot write {self.path}: {err.strerror}; the {self.result.chunks} "
                "chunks before are complete and readable"
            ) from None

    def chunk(self, payload: bytes, tag: bytes = TAG_RING) -> None:
        head = _chunk_head(tag, payload, self.seed)
        try:
            n = os.writev(self.fd, [head, payload])
        except OSError:
            n = 0  # raw() retries and reports the error
        if n < len(head) + len(payload):
            self.raw((head + payload)[n:])
        if tag == TAG_RING:
            self.result.chunks += 1
            self.result.written += len(payload)


def recording_meta(session: Session, objects: dict[str, str] | None = None) -> dict:
    """A recording's metadata line (the module docstring): also the head of
    every event-log segment.  `objects` (name -> SHA-256) saves hashing the
    objects again for each segment."""
    names = sorted({s.object for s in session.sensors})
    seed = ProcessTable()
    seed.seed()
    return {
        "processes": [[p.pid, p.ppid, escape(p.comm), escape(p.exe)] for p in seed.procs.values()],
        "boot_offset_ns": session.decoder.clock[0],
        "objects": objects or {name: _digest(paths.bpf_object(name)) for name in names},
        "sensors": [s.name for s in session.sensors],
        "host": socket.gethostname(),
        "boot_id": identity.boot_id(),  # the event log's analysis names events by it
        "started_ns": time.time_ns(),
        "chunk_seed": secrets.randbits(32),
    }


def record(
    session: Session,
    path: str,
    latency: float,
    *,
    duration: float | None = None,
    on_ready: Callable[[], None] | None = None,
    grace: float = STOP_GRACE_S,
) -> Recorded:
    """Copy the ring to `path` until a stop signal (vigil.signals) or
    `duration` s; a stop copies what was in the ring when it came, within
    `grace` s, and writes the end mark."""
    meta = recording_meta(session)
    chunk_seed = meta["chunk_seed"]
    try:
        out = open_output(path, buffering=0)  # no symlinks, 0600, unbuffered; closed below
    except OSError as err:
        raise ConfigError(f"cannot write {path}: {err.strerror}") from err
    with out:
        # every write goes to the fd: nothing waits in the file object's buffer
        writer = _ChunkWriter(out.fileno(), path, chunk_seed)
        writer.raw(MAGIC + json.dumps(meta).encode() + b"\n")
        _copy_ring(session, writer, latency, duration, on_ready, grace)
        end = {
            "chunks": writer.result.chunks,
            "bytes": writer.result.written,
            "stopped_ns": time.time_ns(),
            "kernel": session.kernel_stats(),
            "unread": writer.result.unread,
        }
        writer.chunk(json.dumps(end).encode(), TAG_END)
        try:
            os.fdatasync(writer.fd)
        except OSError as err:
            if err.errno not in (errno.EINVAL, errno.EROFS):  # a file that cannot sync
                raise VigilError(f"cannot write {path}: {err.strerror} (at fdatasync)") from None
    return writer.result


def _copy_ring(
    session: Session,
    writer: _ChunkWriter,
    latency: float,
    duration: float | None,
    on_ready: Callable[[], None] | None,
    grace: float,
) -> None:
    """The recording loop: drain every `latency` s until a stop, then up to
    the producer position at the stop (vigil.signals)."""
    reader = session.reader
    stop_at: list[tuple[int, float]] = []  # producer position and time at the stop
    mark = lambda _s: stop_at.append((reader.producer_position(), time.monotonic()))  # noqa: E731
    with ServiceSignals(on_stop=mark) as sig:
        if sig.fileno() >= 0:
            session.wake_on(sig.fileno())
        if on_ready is not None:
            on_ready()
        deadline = None if duration is None else time.monotonic() + duration
        while not sig.service():
            idle = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
            session.wait(session.poll_wait(latency, idle))
            # a storm faster than the disk must not keep us from a stop
            while not sig.stopping and (raw := reader.drain_raw()):
                writer.chunk(raw)
            if deadline is not None and time.monotonic() >= deadline:
                sig.request_stop()
        sig.stop_notice()
        target, since = stop_at[0]
        drain = StopDrain(reader, target, grace, since)
        while drain.more(sig):
            raw = reader.drain_raw(until=drain.target)
            if raw:
                writer.chunk(raw)
            else:
                time.sleep(0.001)  # reserved before the stop, not yet committed
            sig.service()
        writer.result.unread = drain.unread(session.decoder.kind_of)


# -- reading ------------------------------------------------------------------------------
@dataclass
class Damage:
    """What a recording could not give, for one line at the end of a report."""

    cut: str | None = None  # how the recording ends early, if it does
    bad_chunks: int = 0  # failed their checksum (or a garbled header): skipped
    bad_bytes: int = 0
    bad_records: int = 0  # in good chunks, records no layout decodes
    end: dict | None = None  # the end mark of a clean stop
    version: int = VERSION  # version 1 had no end mark

    @property
    def unfinished(self) -> bool:
        return self.version >= 2 and self.end is None

    @property
    def damaged(self) -> bool:
        """Some of the recording could not be read (`vigil report` exits 1)."""
        return bool(self.cut or self.bad_chunks or self.bad_records or self.unfinished)

    def summary(self) -> str | None:
        parts = []
        if self.cut:
            parts.append(self.cut)
        elif self.unfinished:
            parts.append(
                "no end mark: the recorder did not stop cleanly (killed?); "
                "every complete chunk was read"
            )
        if self.bad_chunks:
            parts.append(
                f"{self.bad_chunks} damaged chunk(s) skipped ({self.bad_bytes} bytes), "
                "their events are missing"
            )
        if self.bad_records:
            parts.append(f"{self.bad_records} undecodable record(s) skipped")
        lost = _recorded_losses(self.end)
        if lost:
            parts.append(lost)
        return "; ".join(parts) or None


def _recorded_losses(end: dict | None) -> str | None:
    """The end mark's word on events the recording never got (ring full, unread)."""
    if not isinstance(end, dict):
        return None
    lost = unread = 0
    kernel = end.get("kernel")
    if isinstance(kernel, dict):
        for row in kernel.values():
            if isinstance(row, dict) and isinstance(row.get("lost"), int):
                lost += row["lost"]
    if isinstance(end.get("unread"), dict):
        unread = sum(n for n in end["unread"].values() if isinstance(n, int))
    if not lost and not unread:
        return None
    out = f"{lost + unread} events were lost while recording"
    return out + (f" ({unread} left unread at the stop)" if unread else "")


def _chunks_v2(mm, pos: int, seed: int, damage: Damage) -> Iterator[bytes]:
    size, crc = len(mm), zlib.crc32
    while pos < size:
        if pos + _HEAD.size > size:
            damage.cut = f"cut short inside a chunk header ({size - pos} of {_HEAD.size} bytes)"
            return
        tag, length, data_crc, head_crc = _HEAD.unpack_from(mm, pos)
        if (
            tag not in (TAG_RING, TAG_END)
            or crc(mm[pos : pos + 12], seed) != head_crc
            or length > MAX_CHUNK
        ):
            nxt = _next_head(mm, pos + 1, seed)
            damage.bad_chunks += 1
            damage.bad_bytes += nxt - pos
            pos = nxt
            continue
        start, end = pos + _HEAD.size, pos + _HEAD.size + length
        if end > size:
            damage.cut = f"cut short inside the last chunk ({size - start} of {length} bytes)"
            return
        payload = mm[start:end]
        pos = end
        if crc(payload, seed) != data_crc:
            damage.bad_chunks += 1
            damage.bad_bytes += _HEAD.size + length
            continue
        if tag == TAG_END:
            try:
                damage.end = json.loads(payload)
            except ValueError:
                damage.end = {}
            continue
        yield payload


def _next_head(mm, pos: int, seed: int) -> int:
    """Where the next chunk header that checks out starts (or the end)."""
    size = len(mm)
    while True:
        pos = mm.find(b"VGR", pos)
        if pos < 0 or pos + _HEAD.size > size:
            return size
        tag, length, _crc, head_crc = _HEAD.unpack_from(mm, pos)
        if (
            tag in (TAG_RING, TAG_END)
            and length <= MAX_CHUNK
            and zlib.crc32(mm[pos : pos + 12], seed) == head_crc
        ):
            return pos
        pos += 1


def _chunks_v1(mm, pos: int, damage: Damage) -> Iterator[bytes]:
    size = len(mm)
    while pos < size:
        if pos + _HEAD_V1.size > size:
            damage.cut = "cut short inside a chunk header"
            return
        (length,) = _HEAD_V1.unpack_from(mm, pos)
        start = pos + _HEAD_V1.size
        if length > MAX_CHUNK or start + length > size:
            # version 1 has no checksum: damage and a cut look alike, and
            # nothing after a bad length can be found again
            damage.cut = f"cut short or damaged at byte {pos} (chunk length {length})"
            return
        pos = start + length
        yield mm[start:pos]


def _bad_meta(path: str, why: str) -> ConfigError:
    return ConfigError(f"{path}: bad recording metadata ({why})")


def _int(value, lo: int, hi: int) -> bool:
    return type(value) is int and lo <= value < hi


def _parse_meta(path: str, line: bytes, version: int) -> dict:
    try:
        meta = json.loads(line)
    except (ValueError, RecursionError) as err:
        raise _bad_meta(path, f"not JSON: {err}") from None
    if not isinstance(meta, dict):
        raise _bad_meta(path, "not a JSON object")
    objects = meta.get("objects")
    if not isinstance(objects, dict) or not all(
        isinstance(k, str) and _OBJECT_NAME.fullmatch(k) and isinstance(v, str)
        for k, v in objects.items()
    ):
        raise _bad_meta(path, "objects must map object names to SHA-256 digests")
    if not _int(meta.get("boot_offset_ns"), 0, 1 << 62):
        raise _bad_meta(path, "boot_offset_ns must be an integer")
    if version >= 2 and not _int(meta.get("chunk_seed"), 0, 1 << 32):
        raise _bad_meta(path, "chunk_seed must be a 32-bit integer")
    procs = meta.get("processes", [])
    if not isinstance(procs, list):
        raise _bad_meta(path, "processes must be a list")
    for p in procs:
        if not (
            isinstance(p, list)
            and len(p) == 4
            and _int(p[0], 0, 1 << 32)
            and _int(p[1], 0, 1 << 32)
            and isinstance(p[2], str)
            and isinstance(p[3], str)
        ):
            raise _bad_meta(path, "processes must be [pid, ppid, comm, exe] rows")
    return meta


def decoder_for(path: str, meta: dict) -> records.Decoder:
    """The decoder for a recording's (or log segment's) records: the layouts
    of the very objects that wrote them, or a one-line error."""
    decoder = records.Decoder(meta["boot_offset_ns"])
    for name, digest in meta["objects"].items():
        try:
            obj_path = paths.bpf_object(name)
        except VigilError:
            raise ConfigError(
                f"{path}: recorded with a sensor object {name!r} this build lacks"
            ) from None
        if _digest(obj_path) != digest:
            raise ConfigError(
                f"{path}: recorded with another build of {name}.bpf.o; "
                "report it with the build that recorded it"
            )
        with bpf.Object(obj_path) as obj:
            decoder.add_btf(obj.btf())
    return decoder


def finish_hooks() -> dict:
    """Per kind, the sensor's finish hook (run on every decoded event)."""
    return {k: s.finish for s in sensors.all_sensors().values() for k in s.kinds}


def parse_meta(path: str, line: bytes) -> dict:
    """A version-2 metadata line, checked (bad metadata: ConfigError)."""
    return _parse_meta(path, line, VERSION)


def decode_chunk(
    decoder: records.Decoder,
    finish: dict,
    raw: bytes,
    damage: Damage,
    only: frozenset[str] | None = None,
    keep: frozenset[str] = frozenset(),
) -> list:
    """One chunk's events, finished.  With `only`, records of other kinds
    stay bytes, and those of `keep` come with their events
    (records.Decoder.decode_batch).  The bytes are untrusted (a checksum
    proves only that they are what was written): a record the decoder or a
    finish hook cannot take is counted in `damage` and skipped, never fatal."""
    recs = bpf.split_records(raw)
    unknown, counts = decoder.undecodable, dict(decoder.counts)
    try:
        return decoder.decode_batch(recs, finish, only, keep)
    except Exception:  # noqa: BLE001 - see the docstring: one record at a time
        decoder.undecodable, decoder.counts = unknown, counts  # counted again below
    events = []
    for rec in recs:
        try:
            events.extend(decoder.decode_batch([rec], finish, only, keep))
        except Exception:  # noqa: BLE001
            damage.bad_records += 1
    return events


ChunkWriter = _ChunkWriter
chunk_head = _chunk_head
CHUNK_HEAD = _HEAD


class Replay:
    """A recording's events, decoded and finished, in batches (iterate it);
    afterwards `damage` says what could not be read.  `table` is seeded
    with the processes the recording started with."""

    def __init__(self, path: str, table: ProcessTable, batch: int = 4096):
        self.path = path
        self.table = table
        self.batch = batch
        self.damage = Damage()
        self.version = VERSION

    def __iter__(self) -> Iterator[list[dict]]:
        with self._mapped() as mm:
            yield from self._read(mm)

    def chunks(self) -> Iterator[bytes]:
        """The recording's ring chunks, undecoded (the table seeded first):
        for a caller that decodes them itself with `self.decoder` and
        `self.finish` (bench/pipeline, as the analysis reads its log)."""
        with self._mapped() as mm:
            yield from self._raw(mm)

    @contextlib.contextmanager
    def _mapped(self) -> Iterator[mmap.mmap]:
        path = self.path
        try:
            # O_NONBLOCK: a FIFO planted under the name must not hang the open
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as err:
            raise ConfigError(f"cannot read {path}: {err.strerror}") from err
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ConfigError(f"{path}: not a regular file")
            if st.st_size == 0:
                raise ConfigError(f"{path}: not a Vigil recording (empty file)")
            try:
                mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError) as err:
                raise ConfigError(f"cannot read {path}: {err}") from None
        finally:
            os.close(fd)  # the mapping stays valid without it
        with mm:
            yield mm

    def _read(self, mm) -> Iterator[list[dict]]:
        pending: list[dict] = []
        for raw in self._raw(mm):
            pending.extend(self._decode(self.decoder, self.finish, raw))
            if len(pending) >= self.batch:
                yield pending
                pending = []
        if pending:
            yield pending
        self.damage.bad_records += self.decoder.undecodable  # kinds no recorded object declares

    def _raw(self, mm) -> Iterator[bytes]:
        path = self.path
        first = mm.find(b"\n", 0, 64) + 1
        magic = mm[:first]
        if magic not in (MAGIC, MAGIC_V1):
            if magic.startswith(b"VIGIL-RECORDING "):
                raise ConfigError(
                    f"{path}: a recording of format {magic[16:-1].decode(errors='replace')!r}; "
                    f"this Vigil reads versions 1 and {VERSION}"
                )
            raise ConfigError(f"{path}: not a Vigil recording")
        self.version = self.damage.version = 1 if magic == MAGIC_V1 else 2
        end_meta = mm.find(b"\n", first, first + MAX_META)
        if end_meta < 0:
            raise ConfigError(f"{path}: recording cut short inside its metadata")
        meta = _parse_meta(path, mm[first:end_meta], self.version)
        table = self.table
        try:
            for pid, ppid, comm, exe in meta.get("processes", []):
                table.procs[pid] = Proc(pid, ppid, unescape(comm), unescape(exe), [])
        except ValueError as err:
            raise _bad_meta(path, f"process name: {err}") from None
        self.decoder = decoder_for(path, meta)
        self.finish = finish_hooks()
        pos = end_meta + 1
        if self.version == 1:
            yield from _chunks_v1(mm, pos, self.damage)
        else:
            yield from _chunks_v2(mm, pos, meta["chunk_seed"], self.damage)

    def _decode(self, decoder: records.Decoder, finish: dict, raw: bytes) -> list[dict]:
        return decode_chunk(decoder, finish, raw, self.damage)


def replay(path: str, table: ProcessTable, batch: int = 4096) -> Replay:
    """The recording's events in batches: see :class:`Replay`."""
    return Replay(path, table, batch)


def report_table() -> ProcessTable:
    """A process table fed only by the recording (today's /proc is not then)."""
    return ProcessTable(read_proc=False)


__all__ = ["MAGIC", "VERSION", "Damage", "Recorded", "Replay", "record", "replay", "report_table"]
