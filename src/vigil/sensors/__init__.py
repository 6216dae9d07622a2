"""The sensor table: every sensor declared once, registered at import.

A sensor is a declaration, not a program: which BPF object holds it, which
record kinds it emits, and for each thing it hooks the programs that can do
it, best first.  The loader keeps, per hook, the first program whose attach
type the kernel probe reports working and whose target exists here.
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class Hook:
    """One thing to hook, with its ways of doing it, best first."""

    name: str
    alternatives: tuple[Attach, ...]


def tracepoint(target: str, *programs: str) -> Attach:
    return Attach("tracepoint", target, programs)


def hook(name: str, *alternatives: Attach) -> Hook:
    return Hook(name, alternatives)


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
    # .rodata constants every load of this sensor sets, on top of the caller's.
    rodata: dict[str, int] = field(default_factory=dict)
    # .rodata constants `vigil monitor` sets (e.g. in-kernel de-duplication of a
    # high-rate sensor), where a live tool would show everything.
    monitor_rodata: dict[str, int] = field(default_factory=dict)


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
def _import_all() -> None:
    """Every module of this package declares sensors: import them all once."""
    import importlib
    import pkgutil

    for mod in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{mod.name}")
