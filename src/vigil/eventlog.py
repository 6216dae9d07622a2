"""The event log: capture appends committed ring bytes, consumers follow.

`vigil monitor` captures and analyses in two processes.  The capture side
does what `vigil record` does (no per-event work: each drain is one chunk,
one write(2)) into a directory of SEGMENTS; the analysis side follows the
segments, decodes, enriches, detects and stores, at a lower CPU priority,
and may lag behind a storm and catch up later.

Layout of the log directory (private, 0700):
  NNNNNNNNNNNN.seg   segments, numbered from 1: each a version-2 recording
                     (vigil.recorder: magic line, metadata with the process
                     table at the segment's start, checksummed chunks).  A
                     segment ends with an end mark when the capture moved on
                     (rotation) or stopped; `vigil report` reads any of them.
  pos-NAME.json      a consumer's committed position {"segment", "offset"}:
                     where its next unread chunk starts.  Rewritten (write,
                     fsync, rename) only after everything before it is
                     durable in that consumer's sink, so a restart resumes
                     there: nothing lost, nothing stored twice (unless the
                     process dies in the microseconds between its sink's
                     commit and the rename: then one batch is stored again).
  capture.json       the capture's last word: its segment and size, the
                     kernel's counters, when; rewritten every status tick.
  discarded.json     per kind, records the capture had to delete unanalysed
                     to keep the disk budget (cumulative, never reset).

Disk budget: when the segments take more than `budget_bytes`, the oldest
is deleted at the next rotation; the records in it that some consumer had
not yet passed are counted per kind (a walk over the record headers: no
decoding) into discarded.json, and the analysis reports them as lost.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from . import _libbpf as bpf
from . import recorder
from .errors import ConfigError, VigilError

log = logging.getLogger("vigil")
SEGMENT = re.compile(r"(\d{12})\.seg")
CONSUMERS = ("store",)


def segment_name(n: int) -> str:
    return f"{n:012d}.seg"


def segments(log_dir: str) -> list[int]:
    """Numbers of the segments present, oldest first."""
    try:
        names = os.listdir(log_dir)
    except FileNotFoundError:
        return []
    return sorted(int(m.group(1)) for name in names if (m := SEGMENT.fullmatch(name)))


def write_json(path: str, obj: dict, sync: bool = True) -> None:
    """Replace `path` atomically (a reader or a crash sees old or new, whole)."""
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, json.dumps(obj).encode())
        if sync:
            os.fdatasync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


class JsonFile:
    """A JSON file another process replaces (write_json), read again only
    when it was replaced: the analysis looks at the capture's every tick."""

    def __init__(self, path: str):
        self.path = path
        self.seen: tuple | None = None  # (inode, mtime, ctime, size) of what was read
        self._obj: dict = {}

    def read(self) -> dict:
        try:
            st = os.stat(self.path)
        except OSError:
            self.seen, self._obj = None, {}
            return self._obj
        seen = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)
        if seen != self.seen:
            self.seen, self._obj = seen, read_json(self.path)
        return self._obj


def read_json(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            obj = json.loads(f.read(1 << 20))
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}


@dataclass(frozen=True)
class Position:
    segment: int = 0  # 0: before the first segment
    offset: int = 0  # byte offset of the next chunk (0: at the segment's head)


def load_position(log_dir: str, consumer: str) -> Position:
    obj = read_json(os.path.join(log_dir, f"pos-{consumer}.json"))
    seg, off = obj.get("segment"), obj.get("offset")
    if type(seg) is int and type(off) is int and seg >= 0 and off >= 0:
        return Position(seg, off)
    return Position()


def load_mark(log_dir: str, consumer: str) -> int | None:
    """The consumer's own mark at its last commit (the store: its last event row)."""
    mark = read_json(os.path.join(log_dir, f"pos-{consumer}.json")).get("mark")
    return mark if type(mark) is int and mark >= 0 else None


def load_recounted(log_dir: str, consumer: str) -> dict[str, int]:
    """Per kind, events the consumer stored that the capture also counted
    as discarded (Follower.commit): to take off discarded.json's counts."""
    obj = read_json(os.path.join(log_dir, f"pos-{consumer}.json")).get("recounted")
    if not isinstance(obj, dict):
        return {}
    return {k: v for k, v in obj.items() if isinstance(k, str) and type(v) is int and v > 0}


def discarded_counts(log_dir: str, consumers: tuple[str, ...] = ("store",)) -> dict[str, int]:
    """Per kind, events discarded unanalysed: what the capture counted, less
    what the consumers had stored of it already (load_recounted)."""
    out = {
        k: v
        for k, v in read_json(os.path.join(log_dir, "discarded.json")).items()
        if isinstance(k, str) and type(v) is int
    }
    for consumer in consumers:
        for kind, n in load_recounted(log_dir, consumer).items():
            if kind in out:
                out[kind] = max(0, out[kind] - n)
    return {k: v for k, v in out.items() if v}


def commit_position(
    log_dir: str,
    consumer: str,
    pos: Position,
    mark: int | None = None,
    recounted: dict[str, int] | None = None,
) -> None:
    obj: dict = {"segment": pos.segment, "offset": pos.offset}
    if mark is not None:
        obj["mark"] = mark
    if recounted:
        obj["recounted"] = recounted
    write_json(os.path.join(log_dir, f"pos-{consumer}.json"), obj)


def open_dir(log_dir: str) -> None:
    """The log directory, created private; an existing one must be a directory."""
    try:
        os.makedirs(log_dir, mode=0o700, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot create the event log {log_dir}: {err.strerror}") from err
    if not os.path.isdir(log_dir) or os.path.islink(log_dir):
        raise ConfigError(f"event log {log_dir}: not a directory")


# -- reading segments ---------------------------------------------------------------------
class Segment:
    """One segment opened for reading while it may still grow."""

    def __init__(self, log_dir: str, n: int):
        self.n = n
        self.path = os.path.join(log_dir, segment_name(n))
        self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        self.meta: dict | None = None
        self.data_start = 0
        self.ended = False  # its end mark was read

    def close(self) -> None:
        os.close(self.fd)

    def read_head(self) -> bool:
        """The magic line and metadata; False while the capture has not written them."""
        head = os.pread(self.fd, recorder.MAX_META, 0)
        nl1 = head.find(b"\n")
        if nl1 < 0:
            return False
        if head[: nl1 + 1] != recorder.MAGIC:
            raise ConfigError(f"{self.path}: not an event-log segment")
        nl2 = head.find(b"\n", nl1 + 1)
        if nl2 < 0:
            return False
        self.meta = recorder.parse_meta(self.path, head[nl1 + 1 : nl2])
        self.data_start = nl2 + 1
        return True

    def chunks(self, offset: int, limit: int) -> Iterator[tuple[bytes, bytes, int]]:
        """(tag, payload, end offset) of the complete chunks from `offset`,
        about `limit` bytes.  A chunk that fails its checksum is skipped
        (counted by the caller through `bad`); an incomplete one ends it."""
        import zlib

        head_s = recorder.CHUNK_HEAD
        seed = self.meta["chunk_seed"]
        avail = os.fstat(self.fd).st_size - offset
        if avail < head_s.size:
            return  # nothing new: the idle case, no read at all
        # a drain is at most ~4 MiB (RingReader.drain_raw): one read holds the chunk past `limit`
        data = os.pread(self.fd, min(avail, limit + head_s.size + (4 << 20)), offset)
        pos = 0
        while pos + head_s.size <= len(data) and pos < limit:
            tag, length, data_crc, head_crc = head_s.unpack_from(data, pos)
            if (
                tag not in (recorder.TAG_RING, recorder.TAG_END)
                or zlib.crc32(data[pos : pos + 12], seed) != head_crc
                or length > recorder.MAX_CHUNK
            ):
                raise VigilError(f"{self.path}: damaged chunk header at byte {offset + pos}")
            end = pos + head_s.size + length
            if end > len(data):
                return  # still being written
            payload = data[pos + head_s.size : end]
            pos = end
            if zlib.crc32(payload, seed) != data_crc:
                payload = b""  # damaged: its records are missing (see Follower.bad_chunks)
                tag = b"bad!"
            yield tag, payload, offset + pos


def count_kinds(
    log_dir: str, n: int, offset: int, kind_of: Callable[[bytes], str | None]
) -> dict[str, int]:
    """Per kind, the records of segment `n` from `offset` on: headers only."""
    out: dict[str, int] = {}
    try:
        seg = Segment(log_dir, n)
    except OSError:
        return out
    try:
        if not seg.read_head():
            return out
        pos = max(offset, seg.data_start)
        while True:
            got = False
            for tag, payload, end in seg.chunks(pos, 8 << 20):
                got, pos = True, end
                if tag == recorder.TAG_RING:
                    for rec in bpf.split_records(payload):
                        kind = kind_of(rec) or "unknown"
                        out[kind] = out.get(kind, 0) + 1
            if not got:
                return out
    except VigilError:
        return out
    finally:
        seg.close()


# -- the capture side ---------------------------------------------------------------------
class LogWriter:
    """Appends drained ring bytes to the segments (see the module docstring)."""

    def __init__(
        self,
        log_dir: str,
        meta: Callable[[], dict],
        kind_of: Callable[[bytes], str | None],
        segment_bytes: int,
        budget_bytes: int,
        consumers: tuple[str, ...] = CONSUMERS,
    ):
        self.dir = log_dir
        self.meta = meta
        self.kind_of = kind_of
        self.segment_bytes = segment_bytes
        self.budget_bytes = max(budget_bytes, 2 * segment_bytes)
        self.consumers = consumers
        open_dir(log_dir)
        present = segments(log_dir)
        self.n = present[-1] if present else 0
        self.sizes = {n: self._size(n) for n in present}
        self.fd: int | None = None
        self.writer: recorder.ChunkWriter | None = None
        self.size = 0
        self.written = 0  # ring bytes, this run
        self.discarded: dict[str, int] = read_json(os.path.join(log_dir, "discarded.json"))
        self.error: str | None = None  # the last write failure, while failing
        self._retry_at = 0.0

    def _size(self, n: int) -> int:
        try:
            return os.stat(os.path.join(self.dir, segment_name(n))).st_size
        except OSError:
            return 0

    def append(self, raw: bytes) -> None:
        """One drain, one chunk.  A chunk the disk cannot take (full, I/O
        error) is counted per kind as lost (discarded.json) and capture goes
        on: the ring must keep being read, and the next chunk may fit."""
        try:
            if self.writer is None or self.size >= self.segment_bytes:
                if self.error is not None and time.monotonic() < self._retry_at:
                    raise VigilError(self.error)  # failing: a new segment once a second at most
                self.rotate()
            self.writer.chunk(raw)
        except (VigilError, OSError) as err:
            self._unwritten(raw, err)
            return
        if self.error is not None:
            self.error = None
            log.warning("event log %s: writing again", self.dir)
        self.size += recorder.CHUNK_HEAD.size + len(raw)
        self.written += len(raw)

    def _unwritten(self, raw: bytes, err: Exception) -> None:
        if self.error is None:
            log.warning("event log %s: cannot write (%s): events counted as lost", self.dir, err)
        self.error = str(err)
        self._retry_at = time.monotonic() + 1.0
        for rec in bpf.split_records(raw):
            kind = self.kind_of(rec) or "unknown"
            self.discarded[kind] = self.discarded.get(kind, 0) + 1
        # the segment may now end in a partial chunk: the next one starts afresh
        if self.writer is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.sizes[self.n] = self.size
            self.fd = self.writer = None
        with contextlib.suppress(OSError):
            write_json(os.path.join(self.dir, "discarded.json"), self.discarded, sync=False)

    def rotate(self) -> None:
        """End the current segment, start the next, keep the budget."""
        if self.writer is not None:
            with contextlib.suppress(VigilError, OSError):  # full disk: the end is implied
                self._end_segment({"next": self.n + 1})
        self._keep_budget()
        self.n += 1
        path = os.path.join(self.dir, segment_name(self.n))
        meta = self.meta()
        fd = os.open(
            path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600
        )
        self.fd = fd
        self.writer = recorder.ChunkWriter(fd, path, meta["chunk_seed"])
        head = recorder.MAGIC + json.dumps(meta).encode() + b"\n"
        self.writer.raw(head)
        self.size = len(head)

    def _end_segment(self, end: dict) -> None:
        if self.writer is None:
            return
        try:
            self.writer.chunk(json.dumps(end).encode(), recorder.TAG_END)
            self.size += recorder.CHUNK_HEAD.size
            with contextlib.suppress(OSError):
                os.fdatasync(self.fd)  # the segment is whole on disk before the next begins
        finally:
            os.close(self.fd)
            self.sizes[self.n] = self.size
            self.fd = self.writer = None

    def _keep_budget(self) -> None:
        """Delete segments every consumer passed; past the budget, the oldest
        even if not (their unanalysed records counted per kind)."""
        positions = [load_position(self.dir, c) for c in self.consumers]
        slowest = min(positions, key=lambda p: (p.segment, p.offset))
        for n in sorted(self.sizes):
            if n >= self.n:
                break
            consumed = n < slowest.segment
            over = sum(self.sizes.values()) + self.size > self.budget_bytes
            if not consumed and not over:
                break
            if not consumed:
                for pos in positions:
                    if pos.segment <= n:
                        lost = count_kinds(
                            self.dir, n, pos.offset if pos.segment == n else 0, self.kind_of
                        )
                        for kind, k in lost.items():
                            self.discarded[kind] = self.discarded.get(kind, 0) + k
                        break  # counted once, for the slowest consumer's view
                write_json(os.path.join(self.dir, "discarded.json"), self.discarded)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.dir, segment_name(n)))
            del self.sizes[n]

    def close(self, end: dict) -> None:
        """A clean stop: the end mark (with `end`), synced."""
        self._end_segment(end)

    def report_with(self, kernel: dict, rates: dict[str, float], **extra) -> None:
        """The capture's status for the analysis (lag, kernel counters)."""
        write_json(
            os.path.join(self.dir, "capture.json"),
            {
                "segment": self.n,
                "size": self.size,
                "time_ns": time.time_ns(),
                "kernel": kernel,
                "rates": rates,
                "pid": os.getpid(),
                **extra,
            },
            sync=False,
        )


# -- the analysis side --------------------------------------------------------------------
@dataclass
class Lag:
    """How far a consumer is behind the capture."""

    bytes: int = 0
    events: int = 0  # estimated from the bytes and the mean record size seen
    seconds: float = 0.0  # since the newest event analysed was made (0 when caught up)


class Follower:
    """A consumer's view of the log: chunks from its committed position on."""

    def __init__(self, log_dir: str, consumer: str):
        self.dir = log_dir
        self.consumer = consumer
        self._capture = JsonFile(os.path.join(log_dir, "capture.json"))
        self._discarded = JsonFile(os.path.join(log_dir, "discarded.json"))
        self.committed = load_position(log_dir, consumer)
        self._committed_at = 0.0
        # per kind, events we stored that the capture counted as discarded too
        # (it counts from our committed position: see commit); cumulative
        self.recounted: dict[str, int] = load_recounted(log_dir, consumer)
        self._read_since: dict[int, dict[str, int]] = {}  # segment -> kinds read, uncommitted
        self.pos = self.committed
        self.seg: Segment | None = None
        self.skipped_segments = 0  # gone (discarded by the budget) before we read them
        self.bad_chunks = 0
        self.bytes_read = 0
        self.records_read = 0
        self.last_ts_ns = 0

    def _open(self) -> bool:
        """Open the segment at or after our position; False if there is none yet."""
        present = segments(self.dir)
        later = [n for n in present if n >= self.pos.segment]
        if not later:
            return False
        n = later[0]
        if n != self.pos.segment:
            if self.pos.segment:
                self.skipped_segments += n - self.pos.segment
            self.pos = Position(n, 0)
        try:
            seg = Segment(self.dir, n)
        except FileNotFoundError:
            return False
        if not seg.read_head():
            seg.close()
            if self._abandoned(seg):  # its head was never written whole (a full disk)
                self.pos = Position(n + 1, 0)
            return False
        self.seg = seg
        if self.pos.offset < seg.data_start:
            self.pos = Position(n, seg.data_start)
        return True

    def current(self) -> Segment | None:
        """The segment our position is in, opened (None: none written yet)."""
        if self.seg is None and not self._open():
            return None
        return self.seg

    def read(self, limit: int = 4 << 20) -> tuple[list[bytes], Segment | None]:
        """Ring bytes of the next chunks (about `limit` bytes) and their
        segment (a new one on a switch); ([], None) when there is nothing yet."""
        if self.seg is None and not self._open():
            return [], None
        seg = self.seg
        if os.fstat(seg.fd).st_nlink == 0:
            # the capture discarded it (the budget) and counted what we had not
            # committed: reading it now would count those events twice
            seg.close()
            self.seg = None
            self.skipped_segments += 1
            self.pos = Position(seg.n + 1, 0)
            return [], None
        out: list[bytes] = []
        size = 0
        # a later segment means this one is final; checked BEFORE reading, so
        # that what the capture appended just before it moved on is read too
        final = self._abandoned(seg)
        for tag, payload, end in seg.chunks(self.pos.offset, limit):
            self.pos = Position(seg.n, end)
            if tag == recorder.TAG_END:
                seg.ended = True
                break
            if tag == recorder.TAG_RING:
                out.append(payload)
                size += len(payload)
            else:
                self.bad_chunks += 1
        if out and os.fstat(seg.fd).st_nlink == 0:
            # discarded (and counted) while we read it: these are lost, not ours
            out, size = [], 0
            seg.ended = True
            self.skipped_segments += 1
        self.bytes_read += size
        if not out and not seg.ended and final:
            seg.ended = True  # the capture died inside it and went on in a later one
        if seg.ended:
            seg.close()
            self.seg = None
            self.pos = Position(seg.n + 1, 0)
        return out, seg

    def _abandoned(self, seg: Segment) -> bool:
        return any(n > seg.n for n in segments(self.dir))

    def commit(self, mark: Callable[[], int | None] | None = None, every: float = 0.0) -> None:
        """Everything read so far is durable in our sink; `mark()`: where the
        sink is now (kept beside the position: what it wrote after it, a
        batch cut short by a kill, is known at the restart).  Not again
        within `every` s of the last commit (a position file is an fdatasync)."""
        if self.pos != self.committed:
            now = time.monotonic()
            if now - self._committed_at < every:
                return
            # A segment we read from since the last commit and the capture
            # has deleted since (its budget) was counted from our committed
            # position, so what we read of it, and the sink holds, counts
            # twice: it is taken off the discarded counts (discarded()).
            # Only what is gone before the new position is written: a
            # deletion after that may have counted from the new position
            # (what we had not read, a real loss, which a recount would
            # hide), or not at all (passed); such a segment's events may
            # count as lost and stored both, never as neither.
            at = mark() if mark else None
            gone = [n for n in self._read_since if not os.path.exists(self._path(n))]
            for n in gone:
                for kind, k in self._read_since.pop(n).items():
                    self.recounted[kind] = self.recounted.get(kind, 0) + k
            commit_position(self.dir, self.consumer, self.pos, at, self.recounted)
            self._read_since.clear()
            self.committed, self._committed_at = self.pos, now

    def note_read(self, segment: int, kinds: dict[str, int]) -> None:
        """What the last read held, per kind (the sink stores it before commit)."""
        seen = self._read_since.setdefault(segment, {})
        for kind, k in kinds.items():
            seen[kind] = seen.get(kind, 0) + k

    def _path(self, n: int) -> str:
        return os.path.join(self.dir, segment_name(n))

    def lag(self) -> Lag:
        cap = self.capture()
        behind = 0
        pos = self.pos
        for n in segments(self.dir):
            if n < pos.segment:
                continue
            try:
                size = os.stat(os.path.join(self.dir, segment_name(n))).st_size
            except OSError:
                continue
            behind += max(0, size - (pos.offset if n == pos.segment else 0))
        if not cap:
            behind = 0
        per_event = self.bytes_read / self.records_read if self.records_read else 100
        # the end marks and heads are not events: a few hundred bytes are noise
        if behind < 4096:
            return Lag()
        seconds = (time.time_ns() - self.last_ts_ns) / 1e9 if self.last_ts_ns else 0.0
        return Lag(behind, int(behind / per_event), max(0.0, seconds))

    def discarded(self) -> dict[str, int]:
        """Per kind, events discarded unanalysed (less what we stored of them)."""
        obj = self._discarded.read()
        out = {k: v for k, v in obj.items() if isinstance(k, str) and type(v) is int}
        for kind, n in self.recounted.items():
            if kind in out:
                out[kind] = max(0, out[kind] - n)
        return {k: v for k, v in out.items() if v}

    def capture(self) -> dict:
        """The capture's last word (do not modify: it is cached)."""
        return self._capture.read()

    def capture_version(self) -> tuple | None:
        """Which of the capture's words is there: changes when it writes one."""
        self._capture.read()
        return self._capture.seen

    def close(self) -> None:
        if self.seg is not None:
            self.seg.close()
            self.seg = None


__all__ = [
    "Follower",
    "Lag",
    "LogWriter",
    "Position",
    "commit_position",
    "count_kinds",
    "load_position",
    "segments",
]
