"""The setuid, setgid and capset sensors on the real kernel: a child drops root."""

from __future__ import annotations

import pwd

import pytest

from helpers import pump_until, start_agent
from test_capable import DROP_CHOWN, Child
from vigil import sensors

pytestmark = pytest.mark.kernel

NOBODY = pwd.getpwnam("nobody")
DROP_ROOT = f"""
os.setgroups([])
os.setgid({NOBODY.pw_gid})
os.setuid({NOBODY.pw_uid})
try:
    os.setuid(0)
    sys.exit("setuid(0) worked as nobody")
except PermissionError:
    pass
"""


@pytest.fixture
def agent():
    agent, sink = start_agent(["setuid", "setgid", "capset"], enrich=False)
    yield agent, sink
    agent.session.close()


def _mine(events, pid, kind):
    return [e for e in events if e["kind"] == kind and e["pid"] == pid]


def test_root_to_nobody(agent):
    agent, sink = agent
    child = Child("vcreds-drop", DROP_ROOT)
    done = lambda evs: len(_mine(evs, child.pid, "setuid")) == 2  # noqa: E731
    events = pump_until(agent, sink, done)
    (gid,) = _mine(events, child.pid, "setgid")
    assert (gid["syscall"], gid["ret"], gid["arg0"]) == ("setgid", 0, NOBODY.pw_gid)
    assert (gid["old_gid"], gid["old_egid"], gid["old_sgid"], gid["old_fsgid"]) == (0, 0, 0, 0)
    assert (gid["new_gid"], gid["new_egid"], gid["new_sgid"], gid["new_fsgid"]) == (
        NOBODY.pw_gid,
    ) * 4
    drop, back = _mine(events, child.pid, "setuid")
    assert (drop["syscall"], drop["ret"], drop["arg0"]) == ("setuid", 0, NOBODY.pw_uid)
    assert (drop["old_uid"], drop["old_euid"], drop["old_suid"], drop["old_fsuid"]) == (0,) * 4
    assert (drop["new_uid"], drop["new_euid"], drop["new_suid"], drop["new_fsuid"]) == (
        NOBODY.pw_uid,
    ) * 4
    assert drop["uid"] == 0 and drop["comm"] == b"vcreds-drop"  # the header: at entry
    # the way back is refused and changes nothing
    assert (back["ret"], back["arg0"], back["old_euid"], back["new_euid"]) == (
        -1,
        0,
        NOBODY.pw_uid,
        NOBODY.pw_uid,
    )
    n = NOBODY.pw_uid
    assert sensors.get("setuid").describe(drop) == (
        f"setuid({n}) uid 0->{n} euid 0->{n} suid 0->{n} fsuid 0->{n} ok"
    )
    assert sensors.get("setuid").describe(back) == "setuid(0) uids unchanged EPERM"


def test_setresuid_and_setfsuid_arguments(agent):
    agent, sink = agent
    code = "os.setresuid(-1, 4242, -1)\nos.setresuid(-1, 0, -1)\n"
    code += "import ctypes\nctypes.CDLL(None).setfsuid(777)\n"
    child = Child("vcreds-res", code)
    done = lambda evs: len(_mine(evs, child.pid, "setuid")) == 3  # noqa: E731
    res, back, fs = _mine(pump_until(agent, sink, done), child.pid, "setuid")
    assert (res["syscall"], res["arg0"], res["arg1"], res["arg2"]) == ("setresuid", -1, 4242, -1)
    assert (res["old_euid"], res["new_euid"], res["new_uid"], res["new_fsuid"]) == (
        0,
        4242,
        0,
        4242,
    )
    assert (back["old_euid"], back["new_euid"]) == (4242, 0)  # became root again (saved uid 0)
    assert (fs["syscall"], fs["ret"], fs["old_fsuid"], fs["new_fsuid"]) == ("setfsuid", 0, 0, 777)


def test_capset_drops_a_capability(agent):
    agent, sink = agent
    child = Child("vcreds-cap", DROP_CHOWN)
    done = lambda evs: _mine(evs, child.pid, "capset")  # noqa: E731
    (ev,) = _mine(pump_until(agent, sink, done), child.pid, "capset")
    assert ev["ret"] == 0 and ev["target_pid"] == 0
    assert ev["old_effective"] & 1 and not ev["new_effective"] & 1  # CAP_CHOWN is bit 0
    assert ev["old_effective"] ^ ev["new_effective"] == 1
    assert ev["old_permitted"] == ev["new_permitted"] and ev["old_permitted"] & 1
    assert ev["effective_dropped"] == ["CAP_CHOWN"] and ev["effective_added"] == []
    assert ev["permitted_dropped"] == []
    assert sensors.get("capset").describe(ev) == "capset effective -CHOWN ok"


LOOP = "for _ in range(300):\n    os.setuid(0)\nos.setgid(4343)\n"


@pytest.mark.parametrize("unique", [0, 1])
def test_calls_that_change_nothing_are_kept_once(unique):
    agent, sink = start_agent(["setuid", "setgid"], enrich=False, rodata={"unique": unique})
    try:
        child = Child("vcreds-loop", LOOP)
        pump_until(agent, sink, lambda evs: _mine(evs, child.pid, "setgid"))
        count = len(_mine(sink.events, child.pid, "setuid"))
        assert count == (1 if unique else 300)
        # a call that changed something is never folded
        (gid,) = _mine(sink.events, child.pid, "setgid")
        assert (gid["old_gid"], gid["new_gid"]) == (0, 4343)
    finally:
        agent.session.close()
