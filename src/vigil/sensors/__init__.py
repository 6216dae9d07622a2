"""The sensor table: every sensor declared once, registered at import.

A sensor is a declaration, not a program: which BPF object holds it, which
record kinds it emits, and for each thing it hooks the programs that can do
it, best first.  The loader keeps, per hook, the first program whose attach
type the kernel probe reports working and whose target exists here.
"""

from __future__ import annotations

import errno
import functools
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import ConfigError


@dataclass(frozen=True)
class Attach:
    """One way to hook something: programs of one attach type.

    `feature` is one of kernel.FEATURES; `target` is what
    kernel.target_exists checks (a tracepoint "cat/name", a function...).
    Several programs make one alternative when they only work together
    (cgroup/bind4 with cgroup/bind6).
    """

    feature: str
    target: str
    programs: tuple[str, ...]
    # .rodata this alternative sets when chosen ((name, value) pairs): one
    # program serving two sensors learns which of its jobs to do
    rodata: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class Hook:
    """One thing to hook, with its ways of doing it, best first.

    An `optional` hook adds detail where the kernel has it (module:module_load
    names the module loaded); without it the sensor still loads.
    """

    name: str
    alternatives: tuple[Attach, ...]
    optional: bool = False


def tracepoint(target: str, *programs: str) -> Attach:
    return Attach("tracepoint", target, programs)


def hook(name: str, *alternatives: Attach, optional: bool = False) -> Hook:
    return Hook(name, alternatives, optional)


@dataclass(frozen=True)
class Sensor:
    name: str
    object: str  # build/bpf/<object>.bpf.o
    kinds: tuple[str, ...]  # record kinds it emits
    hooks: tuple[Hook, ...]
    summary: str
    # Turns post-decode fields into their final form (e.g. argv bytes -> list).
    finish: Callable[[dict], None] | None = None
    # One line of what happened, for `vigil monitor`'s DETAIL column.
    describe: Callable[[dict], str] | None = None
    # .rodata constants every load of this sensor sets, on top of the caller's;
    # a callable value is called at load (e.g. the loading process's pid).
    rodata: dict[str, int | Callable[[], int]] = field(default_factory=dict)
    # .rodata constants `vigil monitor` sets (e.g. in-kernel de-duplication of a
    # high-rate sensor), where a live tool would show everything.
    monitor_rodata: dict[str, int] = field(default_factory=dict)
    # Fields holding another process's pid (kill's `target_pid`): the process
    # table adds that process's `<stem>_exe` and `<stem>_comm` (stem: the
    # name without `_pid`), as it adds `exe` for the event's own process.
    related_pids: tuple[str, ...] = ()
    # Fills the object's maps once it is loaded, before anything is attached
    # (the file sensor's watch tables), from the session's sensor options.
    after_load: Callable[[object, dict], None] | None = None


def result_text(ret: int) -> str:
    """A syscall's result as people read it: 0, a count, or ENOSYS."""
    if ret < 0:
        return errno.errorcode.get(-ret, str(ret))
    return "ok" if ret == 0 else str(ret)


_SENSORS: dict[str, Sensor] = {}


def register(sensor: Sensor) -> Sensor:
    if sensor.name in _SENSORS:
        raise ValueError(f"sensor {sensor.name!r} registered twice")
    _SENSORS[sensor.name] = sensor
    return sensor


def all_sensors() -> dict[str, Sensor]:
    _import_all()
    return dict(_SENSORS)


def get(name: str) -> Sensor:
    _import_all()
    try:
        return _SENSORS[name]
    except KeyError:
        known = ", ".join(sorted(_SENSORS))
        raise ConfigError(f"unknown sensor {name!r} (known: {known})") from None


@functools.cache
def related_pid_fields() -> dict[str, tuple[tuple[str, str, str], ...]]:
    """kind -> ((pid field, exe field, comm field), ...) for every sensor."""
    out: dict[str, tuple[tuple[str, str, str], ...]] = {}
    for sensor in all_sensors().values():
        fields = tuple(
            (f, f.removesuffix("_pid") + "_exe", f.removesuffix("_pid") + "_comm")
            for f in sensor.related_pids
        )
        if fields:
            for kind in sensor.kinds:
                out[kind] = fields
    return out


@functools.cache
def _import_all() -> None:
    """Every module of this package declares sensors: import them all once."""
    import importlib
    import pkgutil

    for mod in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{mod.name}")
