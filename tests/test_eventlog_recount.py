"""The discard recount (eventlog.Follower.commit) under the capture's
timing: what the analysis stored is taken off the discarded counts only
when the capture surely counted it, so that a real loss is never hidden
(the worst a race may do is count a stored event as lost too)."""

from __future__ import annotations

import os

from vigil import eventlog


def _ring_bytes(n: int, size: int = 56) -> bytes:
    """`n` ring records as the kernel lays them out (8-byte header, aligned)."""
    rec = b"\x01" * size
    return (len(rec).to_bytes(4, "little") + b"\0" * 4 + rec) * n


def _log(tmp_path) -> tuple[str, eventlog.LogWriter, eventlog.Follower]:
    """A log of 8 KiB budget in 4 KiB segments, one and a half written
    (40 records a chunk; a segment takes two), and the store's follower."""
    log_dir = str(tmp_path / "log")
    meta = {"objects": {}, "boot_offset_ns": 0, "chunk_seed": 7, "processes": []}
    writer = eventlog.LogWriter(log_dir, lambda: meta, lambda rec: "x", 4096, 8192)
    for _ in range(3):
        writer.append(_ring_bytes(40))
    return log_dir, writer, eventlog.Follower(log_dir, "store")


def test_a_segment_discarded_just_after_the_new_position_is_written_is_not_recounted(
    tmp_path, monkeypatch
):
    """The capture may read the position file the analysis has just written,
    count from it (what the analysis had not read: a real loss) and delete
    the segment before the analysis looks again: what was read must not be
    taken off that count."""
    log_dir, writer, fol = _log(tmp_path)
    chunks, seg = fol.read(limit=1)  # one chunk: the position stays inside segment 1
    assert seg.n == 1 and len(chunks) == 1
    fol.note_read(1, {"x": 40})
    before = dict(writer.discarded)

    real = eventlog.commit_position

    def commit_then_capture_moves_on(*args, **kw):
        real(*args, **kw)
        if os.path.exists(os.path.join(log_dir, eventlog.segment_name(1))):
            for _ in range(12):  # past the budget: segment 1 goes, counted from our new position
                writer.append(_ring_bytes(40))

    monkeypatch.setattr(eventlog, "commit_position", commit_then_capture_moves_on)
    fol.commit()
    assert not os.path.exists(os.path.join(log_dir, eventlog.segment_name(1)))
    lost = writer.discarded["x"] - before.get("x", 0)
    assert lost >= 40  # the unread chunk of segment 1 at least: never analysed
    # nothing of that real loss is hidden
    assert eventlog.discarded_counts(log_dir).get("x", 0) >= lost
    assert fol.discarded().get("x", 0) >= lost


def test_a_segment_discarded_after_the_analysis_read_it_counts_once(tmp_path):
    """The capture counts a discarded segment from the analysis's committed
    position; what the analysis read and stored past it (commits are 0.5 s
    apart) is taken off the discarded counts at its next commit, so that
    stored + discarded is what the capture wrote, under any timing."""
    log_dir, writer, fol = _log(tmp_path)
    chunks, seg = fol.read()
    read = 40 * len(chunks)
    assert seg.n == 1 and read == 80
    fol.note_read(seg.n, {"x": read})  # read, and (as the store does) written: not committed
    for _ in range(12):  # the capture goes on past its budget: segment 1 is discarded
        writer.append(_ring_bytes(40))
    assert not os.path.exists(os.path.join(log_dir, eventlog.segment_name(1)))
    counted = writer.discarded["x"]
    assert counted >= read  # counted from the committed position: what we read too
    fol.commit()
    assert fol.recounted == {"x": read}
    assert fol.discarded() == {"x": counted - read}
    assert eventlog.discarded_counts(log_dir) == fol.discarded()
    # a restart keeps the correction
    assert eventlog.Follower(log_dir, "store").recounted == {"x": read}
