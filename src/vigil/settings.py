"""Vigil's settings: one typed object, the single source of every default.

The config file (vigil.config) and the command-line options (cli,
tools.live) both take their defaults and their bounds from the fields
declared here: a field's `metadata` holds the click type that checks a
value (the same bounded types as vigil.options) and the help text.  A
field marked `live` can change on SIGHUP; every other one needs a restart.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import click

from . import options as opt
from .paths import DEFAULT_DB
from .signals import STOP_GRACE_S

DEFAULT_PATH = "/etc/vigil/vigil.toml"


def knob(default: Any, kind: click.ParamType | type, help: str, *, live: bool = False):
    """A setting: its default, the type that checks it, what it means."""
    meta = {"type": kind, "help": help, "live": live}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def section(cls):
    return field(default_factory=cls, metadata={"section": True})


# Item types for the containers (str lists, str -> str tables).
STR_LIST = list
STR_TABLE = dict


@dataclass
class CapableSettings:
    unique: bool = knob(
        True, bool, "Monitor keeps one record per process image, capability, verdict."
    )


@dataclass
class FilesSettings:
    watch: list = knob([], STR_LIST, "Paths the files sensor watches (where it is built in).")


@dataclass
class KillSettings:
    dedup: bool = knob(True, bool, "The kill sensor reports a repeated signal once.")


@dataclass
class SensorsSettings:
    enable: list = knob([], STR_LIST, "Sensors to run; empty: every one this kernel supports.")
    capable: CapableSettings = section(CapableSettings)
    files: FilesSettings = section(FilesSettings)
    kill: KillSettings = section(KillSettings)


@dataclass
class RingSettings:
    size_mb: int = knob(16, click.IntRange(1, 1024), "Ring buffer size, MiB (a power of two).")
    latency: float = knob(
        0.1, opt.seconds(0.001, 10), "Longest a quiet event waits before it is read, s."
    )


@dataclass
class LogSettings:
    # `vigil monitor` copies the ring to this log; its analysis follows it (docs/eventlog.md)
    dir: str = knob(
        "",
        str,
        "The event log capture writes and the analysis follows; empty: the store's path + .log.",
    )
    budget_mb: int = knob(
        1024,
        click.IntRange(8, 1 << 20),
        "Disk the event log may use, MiB; past it the oldest"
        " unanalysed segment is discarded (counted per kind).",
    )
    # 16 MiB is about 150,000 events: a rotation (a /proc walk for the process
    # table, an fdatasync) every few seconds of a storm at most, and the unit
    # the budget discards, so it is small against any sensible budget
    segment_mb: int = knob(
        16,
        click.IntRange(1, 1024),
        "Size of one event-log segment (the unit the budget discards), MiB.",
    )
    stop_grace: float = knob(
        STOP_GRACE_S,
        opt.seconds(0.0, 3600.0),
        "Longest a stop spends copying what was in the ring when it came, s (what is left is"
        " counted as lost).",
    )
    analysis_grace: float = knob(
        30.0,
        opt.seconds(0.0, 3600.0),
        "Longest the analysis spends on its backlog after a stop, s (the rest stays in the"
        " event log for the next start).",
    )
    analysis_nice: int = knob(
        10,
        click.IntRange(0, 19),
        "CPU priority of the analysis below the workload's (nice; >0 also SCHED_BATCH);"
        " 0: as the capture.",
    )
    # a storm's events wait in the log rather than compete with the workload for
    # CPU: the analysis catches up once the rate falls (docs/eventlog.md)
    storm_rate: int = knob(
        20000,
        click.IntRange(0, 1 << 30),
        "Events/s captured above which the analysis waits for the storm to pass; 0: never waits.",
    )
    storm_hold: float = knob(
        30.0,
        opt.seconds(0.0, 3600.0),
        "Longest the analysis waits out one storm, s (it also stops waiting once the"
        " backlog holds half the log budget).",
    )


@dataclass
class RetentionSettings:
    max_age: float = knob(
        30 * 86400.0, opt.AGE, "Delete stored events older than this (30d, 12h; 0: keep all)."
    )
    max_size_mb: int = knob(
        4096,
        click.IntRange(0, 1 << 30),
        "Delete the oldest events past this size, MiB (0: no limit).",
    )


@dataclass
class StoreSettings:
    # any path the file system takes (on the command line, bytes too)
    path: str = knob(DEFAULT_DB, str, "Event store (SQLite).")
    backlog_mb: int = knob(
        64,
        click.IntRange(1, 1 << 16),
        "Memory for events waiting while the store cannot be written; past it the oldest "
        "are dropped (counted).",
    )
    retention: RetentionSettings = section(RetentionSettings)


@dataclass
class SummariesSettings:
    enabled: bool = knob(True, bool, "Keep in-kernel counters at all.", live=True)
    defaults: bool = knob(True, bool, "Keep the default counters too.", live=True)
    interval: float = knob(
        60.0, opt.INTERVAL, "Seconds between counter flushes to the store.", live=True
    )
    specs: dict = knob(
        {}, STR_TABLE, 'NAME = "argdist -C spec" ("" drops a default counter).', live=True
    )


@dataclass
class StatusSettings:
    interval: float = knob(10.0, opt.INTERVAL, "Seconds between status lines.", live=True)


@dataclass
class RulesSettings:
    paths: list = knob([], STR_LIST, "Detection rule files or directories.", live=True)


@dataclass
class Settings:
    sensors: SensorsSettings = section(SensorsSettings)
    ring: RingSettings = section(RingSettings)
    log: LogSettings = section(LogSettings)
    store: StoreSettings = section(StoreSettings)
    summaries: SummariesSettings = section(SummariesSettings)
    status: StatusSettings = section(StatusSettings)
    rules: RulesSettings = section(RulesSettings)


DEFAULTS = Settings()


# -- walking the declaration ---------------------------------------------------------
def is_section(f: dataclasses.Field) -> bool:
    return bool(f.metadata.get("section"))


def fields_of(obj_or_cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(obj_or_cls)}


def _field_at(dotted: str) -> dataclasses.Field:
    cls: Any = Settings
    *parents, last = dotted.split(".")
    for name in parents:
        cls = fields_of(cls)[name].default_factory  # a section's class
    return fields_of(cls)[last]


def default(dotted: str) -> Any:
    """The default of a setting ('ring.size_mb'): what a CLI option shows."""
    return get(DEFAULTS, dotted)


def param_type(dotted: str):
    """The click type bounding a setting: CLI options use the same one."""
    kind = _field_at(dotted).metadata["type"]
    return kind if isinstance(kind, click.ParamType) else None


def help_of(dotted: str) -> str:
    return _field_at(dotted).metadata["help"]


def is_live(dotted: str) -> bool:
    return bool(_field_at(dotted).metadata.get("live"))


def get(settings: Any, dotted: str) -> Any:
    for name in dotted.split("."):
        settings = getattr(settings, name)
    return settings


def replace(settings: Settings, dotted: str, value: Any) -> Settings:
    """A copy of `settings` with one value changed (settings are not shared)."""
    *parents, last = dotted.split(".")
    if not parents:
        return dataclasses.replace(settings, **{last: value})
    head, rest = parents[0], ".".join([*parents[1:], last])
    inner = getattr(settings, head)
    return dataclasses.replace(settings, **{head: replace(inner, rest, value)})


def leaves(settings: Any, prefix: str = "") -> dict[str, Any]:
    """Every setting as {'ring.size_mb': 16, ...}, in declaration order."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if is_section(f):
            out.update(leaves(value, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = value
    return out


def changed(old: Settings, new: Settings) -> list[str]:
    a, b = leaves(old), leaves(new)
    return [k for k in a if a[k] != b[k]]


__all__ = [
    "DEFAULTS",
    "DEFAULT_PATH",
    "Settings",
    "changed",
    "default",
    "get",
    "help_of",
    "is_live",
    "leaves",
    "param_type",
    "replace",
]
