"""Each attach mode the kernel allows for a hook reports the same events."""

from __future__ import annotations

import os
import subprocess

import pytest

from helpers import pump_until, start_agent
from test_bpf_memfd import bpf_trigger
from test_capable import chown_trigger
from test_file import MODE_OPTIONS, open_trigger
from test_listen import bind_trigger, listen_trigger
from test_module import attempt_trigger, request_trigger
from test_mount import mount_trigger
from test_signal import kill_trigger, ptrace_trigger
from test_syscall32 import ia32_trigger
from test_tcp import connect_trigger
from vigil import sensors
from vigil.loader import usable

pytestmark = pytest.mark.kernel


def _fork_trigger():
    proc = subprocess.Popen(["/bin/true"])
    proc.wait()
    return lambda ev: (
        ev["kind"] == "fork" and ev["child_pid"] == proc.pid and ev["pid"] == os.getpid()
    )


# (sensor, hook) -> a trigger that makes the event and returns a matcher for it
TRIGGERS = {
    ("fork", "fork"): _fork_trigger,
    ("capable", "cap_capable"): chown_trigger,
    ("bind", "bind"): bind_trigger,
    ("listen", "listen"): listen_trigger,
    ("connect", "connect"): connect_trigger,
    ("module_load", "module_syscalls"): attempt_trigger,
    ("module_load", "module_request"): request_trigger,
    ("mount", "mount"): mount_trigger,
    ("kill", "kill"): kill_trigger,
    ("ptrace", "ptrace"): ptrace_trigger,
    ("bpf", "bpf"): bpf_trigger,
    ("open", "open"): open_trigger,
    ("syscall32", "syscall32"): ia32_trigger,
}


def _alternatives():
    for sensor_name, hook_name in TRIGGERS:
        hook = next(h for h in sensors.get(sensor_name).hooks if h.name == hook_name)
        for alt in hook.alternatives:
            yield pytest.param(sensor_name, hook_name, alt, id=f"{sensor_name}-{alt.feature}")


def test_every_hook_with_alternatives_has_a_trigger():
    for name, sensor in sensors.all_sensors().items():
        for hook in sensor.hooks:
            if len(hook.alternatives) > 1:
                assert (name, hook.name) in TRIGGERS, f"{name}/{hook.name} has no attach-mode test"


@pytest.mark.parametrize("sensor_name, hook_name, alt", list(_alternatives()))
def test_forced_attach_mode_sees_the_event(sensor_name, hook_name, alt):
    if not usable(alt):
        pytest.skip(f"{alt.feature} not available on this kernel")
    # feature:target: a hook may have two alternatives of one type
    # (module_load: per-call tracepoints, or raw_syscalls)
    choice = f"{alt.feature}:{alt.target}"
    options = MODE_OPTIONS if sensor_name == "open" else {}  # its own watched tree
    agent, sink = start_agent([sensor_name], enrich=False, choices={hook_name: choice}, **options)
    try:
        chosen = [c for c in agent.session.choices if c.hook == hook_name]
        assert [(c.feature, c.programs) for c in chosen] == [(alt.feature, alt.programs)]
        match = TRIGGERS[(sensor_name, hook_name)]()
        events = pump_until(agent, sink, lambda evs: any(match(e) for e in evs))
        assert sum(1 for e in events if match(e)) == 1
    finally:
        agent.session.close()
