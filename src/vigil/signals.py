"""The signals a service receives, answered the same way by every loop.

A service manager, an operator or a closed pipe can send any of these; left
at their default action each one kills the process where it stands, with
the events in user space (and in the ring) lost and the store marked
"running" forever.  Vigil's loops (the live tools' `RingPipeline.run`, `vigil record`, the
interval tools' `tools.live.every`) enter a :class:`ServiceSignals` instead:

- SIGHUP: reload the configuration.  Components register a hook
  (`reload_hooks`); the loop runs them between two drains, never inside the
  handler, and one line says so.  A reload never stops the loop.
- every other signal whose default action ends the process (SIGINT, SIGTERM,
  SIGQUIT, SIGUSR1, SIGUSR2, SIGALRM, SIGPIPE, SIGXCPU, SIGXFSZ, SIGVTALRM,
  SIGPROF, SIGIO, SIGPWR, SIGSTKFLT, the real-time signals): a clean stop.
  What was in the ring when the signal came is drained (within a grace
  period, see :class:`StopDrain`), sinks are flushed and closed, and the
  command exits 0.  A second stop signal cuts the drain short (what is
  left is counted as unread, never silently dropped).

Not caught: SIGKILL/SIGSTOP (cannot be), the job-control stops (SIGTSTP,
SIGTTIN, SIGTTOU: the shell's business), and the faults a bug raises
synchronously (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGTRAP, SIGSYS):
a handler cannot make those safe to continue from.

Handlers only record the signal and write a byte to a wake-up pipe
(`signal.set_wakeup_fd`), so a loop blocked in epoll/select returns at once
instead of at its next timeout.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

RELOAD_SIGNALS = (signal.SIGHUP,)
USUAL_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_OTHER_STOPS = [
    "SIGQUIT",
    "SIGUSR1",
    "SIGUSR2",
    "SIGALRM",
    "SIGPIPE",
    "SIGXCPU",
    "SIGXFSZ",
    "SIGVTALRM",
    "SIGPROF",
    "SIGIO",
    "SIGPWR",
    "SIGSTKFLT",
]
STOP_SIGNALS = (
    *USUAL_STOP_SIGNALS,
    *(getattr(signal, n) for n in _OTHER_STOPS if hasattr(signal, n)),
    *range(signal.SIGRTMIN, signal.SIGRTMAX + 1),
)

# How long a stop may spend draining what was in the ring when it came.
# systemd waits 90 s before SIGKILL; a stop must end well within that even
# when the sinks are slow, and what is left is counted, not lost silently.
STOP_GRACE_S = 5.0


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class ServiceSignals:
    """Catches the service signals while a loop runs (a context manager).

    `on_stop(signum)` runs inside the handler at the first stop signal, so
    it can note where the ring's producer was at that moment; keep it tiny.
    `on_hurry()` runs inside it at the second; it may raise, to end a
    blocking call the first could not (a write to a reader that stopped
    reading: vigil.outputs.sinks.abort_blocked_write).
    """

    def __init__(
        self,
        *,
        on_stop: Callable[[int], None] | None = None,
        on_hurry: Callable[[], None] | None = None,
        reload_hooks: list[Callable[[], str | None]] | None = None,
        out: TextIO | None = None,
        announce_reloads: bool = True,
        ignore_after: bool = False,
    ):
        """`announce_reloads=False`: a process that only passes SIGHUP on
        (`vigil monitor`'s capture to its analysis) leaves the line to it."""
        self.on_stop = on_stop
        self.on_hurry = on_hurry
        # leave the stop signals ignored on exit, not restored: the
        # process is ending (a live tool's teardown guard), and a signal in
        # its last milliseconds must not kill it with a status of its own
        self.ignore_after = ignore_after
        self.announce_reloads = announce_reloads
        self.reload_hooks = reload_hooks if reload_hooks is not None else []
        self.out = out
        self.stop_signal: int | None = None  # the first stop signal received
        self.hurry = False  # a second stop signal: end the drain now
        self.reloads = 0
        self._reload_pending = False
        self._old: dict[int, object] = {}
        self._old_wakeup = -1
        self._rfd = self._wfd = -1

    # -- state ------------------------------------------------------------------
    @property
    def stopping(self) -> bool:
        return self.stop_signal is not None

    def fileno(self) -> int:
        """Readable when a signal came: poll it beside the ring's fd."""
        return self._rfd

    def request_stop(self, signum: int = 0) -> None:
        """Stop as if `signum` came (0: not a signal, e.g. a --duration deadline)."""
        if self.stop_signal is None:
            self.stop_signal = signum
            if self.on_stop is not None:
                self.on_stop(signum)

    # -- the handler (runs in the main thread, between two bytecodes) -------------
    def _handle(self, signum: int, _frame) -> None:
        if signum in RELOAD_SIGNALS:
            self._reload_pending = True
        elif not self.stopping:
            self.request_stop(signum)
        elif signum != signal.SIGPIPE:
            # an operator's second signal; a closed output raises SIGPIPE at
            # every write and must not cut short the drain into the store
            self.hurry = True
            if self.on_hurry is not None:
                self.on_hurry()  # may raise: it ends a write nobody takes

    # -- the loop's side ------------------------------------------------------------
    def service(self) -> bool:
        """Run pending reloads and empty the wake-up pipe; True when stopping.

        Call it once per turn of the loop, outside any sink's write.
        """
        if self._rfd >= 0:
            try:
                while os.read(self._rfd, 512):
                    pass
            except BlockingIOError:
                pass
        if self._reload_pending:
            self._reload_pending = False
            self._reload()
        return self.stopping

    def _reload(self) -> None:
        failed, notes = [], []
        for hook in self.reload_hooks:
            try:
                note = hook()  # a hook may say what it did (one line's worth)
            except Exception as err:  # a bad new config must not stop the agent
                failed.append(f"{getattr(hook, '__qualname__', hook)}: {err}")
                continue
            if isinstance(note, str) and note:
                notes.append(note)
        self.reloads += 1
        what = (
            f"{len(self.reload_hooks)} component(s)" if self.reload_hooks else "nothing to reload"
        )
        line = f"vigil: SIGHUP: configuration reloaded ({what})"
        if notes:
            line += ": " + "; ".join(notes)
        if failed:
            line = f"vigil: SIGHUP: reload failed, running on: {'; '.join(failed)}"
        if self.announce_reloads or failed:
            self.say(line)

    def stop_notice(self) -> None:
        """One line when an unusual signal (not INT/TERM) stopped us."""
        if self.stop_signal and self.stop_signal not in USUAL_STOP_SIGNALS:
            self.say(f"vigil: {signal_name(self.stop_signal)}: stopping cleanly")

    def say(self, line: str) -> None:
        out = self.out or sys.stderr
        try:
            out.write(line + "\n")
            out.flush()
        except (OSError, ValueError):
            pass  # stderr closed: the stop or reload still happens

    def sleep(self, timeout: float) -> None:
        """Wait `timeout` seconds or until a signal comes, whichever is first."""
        if timeout <= 0:
            return
        if self._rfd < 0:
            time.sleep(min(timeout, 0.2))  # no wake-up pipe: poll request_stop()
            return
        select.select([self._rfd], [], [], timeout)

    # -- install / restore --------------------------------------------------------------
    def __enter__(self) -> ServiceSignals:
        if threading.current_thread() is not threading.main_thread():
            return self  # only the main thread gets signals: stop by request_stop()
        self._rfd, self._wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            self._old_wakeup = signal.set_wakeup_fd(self._wfd, warn_on_full_buffer=False)
            for sig in (*RELOAD_SIGNALS, *STOP_SIGNALS):
                self._old[sig] = signal.signal(sig, self._handle)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            if self.ignore_after and sig in STOP_SIGNALS:
                handler = signal.SIG_IGN
            signal.signal(sig, handler)
        self._old.clear()
        if self._rfd >= 0:
            signal.set_wakeup_fd(self._old_wakeup)
            os.close(self._rfd)
            os.close(self._wfd)
            self._rfd = self._wfd = -1


class StopDrain:
    """After a stop: read the ring up to where its producer was when the
    stop came, and no further, for at most `grace` seconds.

    Records reserved before the stop but still being written are waited for
    (the kernel commits them within microseconds); what is left when the
    grace period ends, or a second stop signal comes, is counted per kind by
    `unread()` (a header walk, no decoding).
    """

    def __init__(
        self, reader, target: int, grace: float = STOP_GRACE_S, since: float | None = None
    ):
        """`since`: when the stop came (time.monotonic()); the grace period
        runs from there, so the turn under way at the signal counts in it."""
        self.reader = reader
        self.target = target
        self.deadline = (time.monotonic() if since is None else since) + grace

    def more(self, signals: ServiceSignals | None = None) -> bool:
        """True while some of the ring before the stop is still to read."""
        if self.reader.consumer_position() >= self.target:
            return False
        if signals is not None and signals.hurry:
            return False
        return time.monotonic() < self.deadline

    def unread(self, kind_of: Callable[[bytes], str | None]) -> dict[str, int]:
        """Per kind, the records before the stop position left unread."""
        out: dict[str, int] = {}
        for rec in self.reader.peek_records(self.target):
            kind = (kind_of(rec) if rec is not None else None) or "unknown"
            out[kind] = out.get(kind, 0) + 1
        return out


def add_unread(stats: dict[str, dict], unread: dict[str, int]) -> None:
    """Fold what a stop left in the ring into per-kind stats: as "unread",
    and in "lost" too (the store's and status's count of what never arrived)."""
    for kind, n in unread.items():
        row = stats.setdefault(kind, {"emitted": 0, "lost": 0, "partial": 0})
        row["unread"] = n
        row["lost"] = row.get("lost", 0) + n


__all__ = [
    "add_unread",
    "RELOAD_SIGNALS",
    "STOP_GRACE_S",
    "STOP_SIGNALS",
    "ServiceSignals",
    "StopDrain",
    "signal_name",
]
