"""The sensor table: every sensor declared once, registered at import.

A sensor is a declaration, not a program: which BPF object holds it, which
record kinds it emits, and for each thing it hooks the programs that can do
it, best first.  The loader keeps, per hook, the first program whose attach
type the kernel probe reports working and whose target exists here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import ConfigError


@dataclass(frozen=True)
class Hook:
    """One thing to hook; `programs` are alternatives, in order of preference.

    Each alternative is (program name, attach type, target); the attach type
    is one of kernel.FEATURES and the target what kernel.target_exists takes.
    """

    name: str
    programs: tuple[tuple[str, str, str], ...]


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


def _import_all() -> None:
    from . import exec as _exec  # noqa: F401
    from . import lifecycle as _lifecycle  # noqa: F401
