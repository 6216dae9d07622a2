"""One sensor the kernel refuses never takes the others down.

`test_rejected` (tests/progs/rejected.bpf.c) is a real object that every
verifier rejects; it is registered here, beside real sensors, for the
length of one test.
"""

from __future__ import annotations

import pytest

from helpers import TRUE, execs_of, pump_until, start_agent, unique_marker
from vigil import sensors
from vigil.errors import BpfError, VigilError
from vigil.loader import Session
from vigil.sensors import Attach, Sensor, hook

pytestmark = pytest.mark.kernel


@pytest.fixture
def rejected_sensor():
    sensor = Sensor(
        name="test_rejected",
        object="test_rejected",
        kinds=("test_rejected",),
        hooks=(
            hook(
                "getppid",
                Attach("tracepoint", "syscalls/sys_enter_getppid", ("rejected_getppid",)),
            ),
        ),
        summary="a sensor every verifier refuses",
    )
    sensors.register(sensor)
    try:
        yield sensor
    finally:
        sensors._SENSORS.pop(sensor.name, None)


def test_a_rejected_sensor_fails_a_session_that_needs_it(rejected_sensor):
    with pytest.raises(BpfError, match="load BPF object test_rejected"):
        Session(["test_rejected"])


def test_a_rejected_sensor_is_skipped_and_named_and_the_rest_run(rejected_sensor):
    import subprocess

    agent, sink = start_agent(["exec", "test_rejected", "fork"], enrich=False, skip_unloadable=True)
    try:
        assert list(agent.session.skipped) == ["test_rejected"]
        assert "load BPF object test_rejected" in agent.session.skipped["test_rejected"]
        assert [s.name for s in agent.session.sensors] == ["exec", "fork"]
        marker = unique_marker()
        subprocess.run([TRUE, marker], check=True)
        pump_until(agent, sink, lambda evs: execs_of(evs, marker=marker))
    finally:
        agent.session.close()


def test_a_session_with_nothing_loadable_is_an_error(rejected_sensor):
    with pytest.raises(VigilError, match="no sensor could be loaded here"):
        Session(["test_rejected"], skip_unloadable=True)
