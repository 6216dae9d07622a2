"""The detection stage of the pipeline: rules over each batch, alerts out.

`vigil monitor`, `vigil report` and `vigil rules test` run the same
Detector, so a replay raises what the live agent raised.  A batch's alerts
(new ones and repeats that moved a count) ride on `batch.alerts` to the
sinks: AlertStoreSink stores them, AlertPrinter shows them.

Reload: `request_reload()` is signal-safe (it only sets a flag); the next
batch loads the rules again, and a reload that finds an invalid rule while
`strict`, or no file at all, keeps the old set and says why.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from ..errors import ConfigError
from . import ruleset
from .alerts import DEFAULT_WINDOW, AlertBook, LossWatch, process_key
from .compile import INVALID, Rule
from .fields import Context

log = logging.getLogger("vigil.detect")


def problems(rules: list[Rule]) -> list[str]:
    """One line per invalid rule: file, rule id, the problem."""
    return [
        f"{r.path}: rule {r.id or '(no id)'}: {'; '.join(r.reasons)}"
        for r in rules
        if r.verdict == INVALID
    ]


class Detector:
    """A pipeline stage: matches events, keeps the alert book."""

    def __init__(
        self,
        paths: Sequence[str],
        *,
        processes=None,
        strict: bool = False,
        window: float = DEFAULT_WINDOW,
        host: str | None = None,
    ):
        self.paths = list(paths)
        self.strict = strict
        self.ctx = Context(processes)
        self.book = AlertBook(window, host)
        self.rules, self.verdicts = self._load()
        self._reload = False
        self.own_pid = os.getpid()
        self.loss = LossWatch()

    def _load(self, strict: bool | None = None):
        strict = self.strict if strict is None else strict
        rules, verdicts = ruleset.load(self.paths)
        bad = problems(verdicts)
        for line in bad:
            log.warning("%s", line)
        if not ruleset.rule_files(self.paths):
            raise ConfigError(f"no rule files in {', '.join(self.paths)}")
        if bad and strict:
            raise ConfigError(f"{len(bad)} invalid rule(s) (--strict): {bad[0]}")
        return rules, verdicts

    # -- reload -----------------------------------------------------------------
    @property
    def reads(self) -> frozenset[str]:
        """The event kinds its rules read (stages.Stage.reads): asked before
        each read, so a reload requested by then applies to that read.  Once
        asked, reloads happen here only: a reload between the read and the
        stage would give new rules a batch whose kinds were left undecoded."""
        self._asked = True
        if self._reload:
            self.reload()
        return frozenset(self.rules.routes)

    def request_reload(self, *_args) -> None:
        self._reload = True

    def reload(self) -> bool:
        """Load the rules again; on failure keep the old set. True if replaced.

        A reload is always strict: one invalid rule keeps the whole old set
        (a half-edited file must not silently drop the rules it held)."""
        self._reload = False
        try:
            rules, verdicts = self._load(strict=True)
        except Exception as err:  # a broken reload never leaves us without rules
            log.error("rule reload failed, keeping the %d loaded rules: %s", len(self.rules), err)
            return False
        self.rules, self.verdicts = rules, verdicts
        log.warning("rules reloaded: %d loaded", len(rules))
        return True

    # -- loss ---------------------------------------------------------------------
    def note_stats(self, stats: dict[str, dict]) -> None:
        """Called with each status snapshot: remember which sensors lose events."""
        self.loss.note_stats(stats)

    # -- the stage --------------------------------------------------------------
    _asked = False  # the pipeline asks `reads` before each read

    def process(self, batch) -> None:
        if self._reload and not self._asked:
            self.reload()
        touched = {}
        match, raise_ = self.rules.match, self.book.raise_
        ctx = self.ctx
        me = self.own_pid
        for ev in batch.events:
            if ev["pid"] == me:  # the agent's own /proc reads and BPF calls
                continue
            for rule, view in match(ev, ctx):
                if rule.dedup:
                    key = tuple(view.get(f) for f in rule.dedup)
                else:
                    key = process_key(ev)
                alert = raise_(
                    source="rule",
                    name=rule.id,
                    key=key,
                    ev=ev,
                    header={"rule": rule.brief()},
                    matched=rule.matched(view),
                    losing=self.loss.losing(ev["kind"], ev["ts_ns"]),
                )
                touched[alert.id] = alert
        if touched:
            batch.alerts.extend(touched.values())

    def run(self, events: list[dict]) -> list:
        """Detect over events outside a pipeline (tests, backtests)."""

        class _B:
            def __init__(self, evs):
                self.events, self.alerts = evs, []

        b = _B(events)
        self.process(b)
        return b.alerts
