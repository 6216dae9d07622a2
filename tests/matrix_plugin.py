"""pytest plugin of `make test-kernels`: what each test loaded, and how it ended.

Loaded with `-p matrix_plugin` and `VIGIL_MATRIX_OUT=<file>`; writes one
JSON line per test: its id, outcome, duration and the attach points it
used ([sensor, attach type, target], from every choice the loader made
during the test, forced or not), so the matrix runner can print sensor x
kernel x attach point without a table of tests kept by hand.  It only
observes: the loader's own choose() runs unchanged.
"""

from __future__ import annotations

import json
import os

import pytest

_uses: set[tuple[str, str, str]] = set()
_out = None


def pytest_configure(config):
    global _out
    path = os.environ.get("VIGIL_MATRIX_OUT")
    if not path:
        return
    _out = open(path, "w", buffering=1)  # noqa: SIM115 - open for the whole session
    from vigil import loader

    choose = loader.choose

    def recording_choose(*args, **kwargs):
        chosen = choose(*args, **kwargs)
        _uses.update((c.sensor, c.feature, c.target) for c in chosen)
        return chosen

    loader.choose = recording_choose


def pytest_deselected(items):
    """Tests left out by `-m`: the tcg_slow ones are listed with their reason."""
    if _out is None:
        return
    for item in items:
        mark = item.get_closest_marker("tcg_slow")
        if mark is None:
            continue
        reason = mark.kwargs.get("reason") or (mark.args[0] if mark.args else "")
        line = {"test": item.nodeid, "outcome": "tcg_slow", "reason": reason, "uses": []}
        _out.write(json.dumps(line) + "\n")


def pytest_runtest_setup(item):
    _uses.clear()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    if _out is None:
        return
    rep = outcome.get_result()
    # one line per test: its call, or the setup/teardown phase that failed or skipped it
    if rep.when == "call" or (rep.when == "setup" and not rep.passed) or rep.failed:
        state = rep.outcome
        if rep.when != "call" and rep.failed:
            state = "error"
        line = {
            "test": item.nodeid,
            "outcome": state,
            "when": rep.when,
            "duration": round(rep.duration, 3),
            "uses": sorted(_uses),
        }
        if rep.skipped and isinstance(rep.longrepr, tuple):
            line["reason"] = rep.longrepr[2]
        elif rep.failed:
            # the end of the traceback: where and why (the console has it all)
            line["reason"] = str(rep.longrepr)[-1500:]
        _out.write(json.dumps(line) + "\n")


def pytest_unconfigure(config):
    if _out is not None:
        _out.close()
