"""Sigma's file_event on Vigil's open and file sensors: the SigmaHQ corpus's
"New Cron File Created" rule against real events, a file planted in
/etc/cron.d (by an open with O_CREAT, and by a rename into it) fires it;
reading a cron file does not."""

from __future__ import annotations

import os

import pytest

from helpers import pump_until, start_agent
from test_capable import Child
from test_detect_cli import SIGMA, needs_corpus
from vigil.detect import ruleset
from vigil.detect.fields import Context

pytestmark = [pytest.mark.kernel, needs_corpus]

CRON_RULE = "rules/linux/file_event/file_event_lnx_susp_cron_file_created.yml"
CRON_ID = "6c4e2f43-d94d-4ead-b64d-97e53fa2bd05"


def test_cron_file_creation_fires_the_corpus_rule():
    rs, verdicts = ruleset.load([os.path.join(SIGMA, CRON_RULE)])
    (rule,) = verdicts
    # honest about the blind spot: only the watch list is seen
    assert rule.verdict == "degraded" and "watch list" in rule.reasons[-1]
    if not os.path.isdir("/etc/cron.d"):
        pytest.skip("no /etc/cron.d here")
    name = f"vigil-sigma-{os.getpid()}"
    # staged beside /etc/cron.d (a rename cannot cross filesystems), not watched
    planted, staged = f"/etc/cron.d/{name}", f"/etc/.{name}.staged"
    agent, sink = start_agent(["open", "file"], enrich=False)  # the default watch list
    try:
        code = (
            f"open({planted!r}, 'w').write('* * * * * root true\\n')\n"
            f"open({staged!r}, 'w').write('x\\n')\n"
            f"os.rename({staged!r}, {planted + '.2'!r})\n"
            f"open({planted!r}).read()\n"  # a read: no file_event
        )
        child = Child("vsigma-cron", code)

        def mine(evs):
            return [e for e in evs if e["pid"] == child.pid and e["kind"] in ("open", "file")]

        events = pump_until(agent, sink, lambda evs: len(mine(evs)) >= 3)
        ctx = Context()
        fired = [
            (e["kind"], e.get("op", "open"))
            for e in mine(events)
            if any(r.id == CRON_ID for r, _ in rs.match(e, ctx))
        ]
        assert fired == [("open", "open"), ("file", "rename")]
    finally:
        agent.session.close()
        for path in (planted, planted + ".2", staged):
            if os.path.exists(path):
                os.unlink(path)
