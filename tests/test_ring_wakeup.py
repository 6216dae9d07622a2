"""A quiet reader sleeps; the kernel wakes it for the first record after a
quiet spell (bpf/common.bpf.h quiet_wake_ns), so an idle monitor does not
poll its ring ten times a second and no record waits for its idle timeout."""

from __future__ import annotations

import subprocess
import threading
import time

import pytest

from vigil import loader

pytestmark = pytest.mark.kernel

UID = 54321  # no process of this machine runs as it: the ring stays quiet


def _exec_as_uid_later(delay: float) -> threading.Timer:
    run = lambda: subprocess.run(["/bin/true"], user=UID, check=True)  # noqa: E731
    timer = threading.Timer(delay, run)
    timer.start()
    return timer


def _quiet(session: loader.Session) -> None:
    while session.reader.drain_raw():
        pass
    time.sleep(0.3)
    assert session.reader.drain_raw() == b""


def test_the_first_record_after_a_quiet_spell_wakes_the_reader():
    with loader.Session(
        ["exec"], ring_bytes=1 << 20, latency=0.05, rodata={"targ_uid": UID}
    ) as session:
        assert session.quiet_wake_ns == 25_000_000
        _quiet(session)
        assert session.poll_wait(0.05, idle=30.0) == 30.0  # quiet: sleep till the timers
        timer = _exec_as_uid_later(0.5)
        t0 = time.monotonic()
        session.wait(30.0)
        waited = time.monotonic() - t0
        timer.join()
        events = session.read()
        assert [e for e in events if e["kind"] == "exec" and e["uid"] == UID]
        assert 0.3 < waited < 5.0, waited  # woken by the record, not by the timeout
        assert session.poll_wait(0.05, idle=30.0) == 0.05  # records flow: poll again


def test_without_a_latency_a_quiet_reader_is_not_woken():
    # the control: the same record, no quiet wake-up; it waits for the poll
    with loader.Session(["exec"], ring_bytes=1 << 20, rodata={"targ_uid": UID}) as session:
        assert session.quiet_wake_ns == 0
        assert session.poll_wait(0.05, idle=30.0) == 0.05  # it must poll
        _quiet(session)
        timer = _exec_as_uid_later(0.2)
        t0 = time.monotonic()
        session.wait(1.5)
        waited = time.monotonic() - t0
        timer.join()
        assert waited >= 1.4, waited
        assert [e for e in session.read() if e["kind"] == "exec" and e["uid"] == UID]


def test_a_burst_while_the_reader_sleeps_is_all_there_at_its_next_drain():
    # 300 execs in a burst: the records past the first wake no one (at most
    # one forced wake-up per quiet_wake_ns), none is lost for that
    with loader.Session(
        ["exec"], ring_bytes=4 << 20, latency=1.0, rodata={"targ_uid": UID}
    ) as session:
        _quiet(session)
        script = "i=0; while [ $i -lt 300 ]; do /bin/true; i=$((i+1)); done"
        subprocess.run(["sh", "-c", script], user=UID, check=True)
        time.sleep(0.1)
        events = [e for e in session.read() if e["kind"] == "exec" and e["uid"] == UID]
        trues = [e for e in events if e["ret"] == 0 and e["filename"] == b"/bin/true"]
        assert len(trues) == 300


def test_a_record_right_after_a_forced_wake_up_is_not_left_asleep():
    # The timing an evader would pick: a second record inside quiet_wake_ns
    # of the first (it forces no wake-up), just as the reader, having read
    # the first, might go back to sleep.  The reader polls for twice the
    # latency after any record, so the second arrives within it, not at
    # the 30 s idle timeout.
    with loader.Session(
        ["exec"], ring_bytes=1 << 20, latency=0.05, rodata={"targ_uid": UID}
    ) as session:
        _quiet(session)
        script = "/bin/true; /bin/true"  # two execs a few ms apart
        timer = threading.Timer(
            0.3, lambda: subprocess.run(["sh", "-c", script], user=UID, check=True)
        )
        timer.start()
        seen, t0 = [], time.monotonic()
        while len(seen) < 2 and time.monotonic() - t0 < 10:
            session.wait(session.poll_wait(0.05, idle=30.0))
            seen += [
                e
                for e in session.read()
                if e["kind"] == "exec" and e["ret"] == 0 and e["filename"] == b"/bin/true"
            ]
        timer.join()
        assert len(seen) == 2
        assert time.monotonic() - t0 < 3.0  # woken, then polled: never the idle timeout
