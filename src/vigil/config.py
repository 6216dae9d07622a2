"""The config file (TOML, read with the standard library's tomllib).

Every key and value is checked against vigil.settings, whose fields carry
the same bounded click types as the command-line options, so a value the
command line refuses is refused here too, with the same words.  Problems
are collected, not raised one at a time: `vigil config check` prints one
line per bad key or value.  Nothing here raises on hostile input but
ConfigError (tests/test_config.py fuzzes it).
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import re
import tomllib
from collections.abc import Callable, Collection
from typing import Any

import click

from . import options as opt
from . import settings as st
from . import summaries
from .encoding import as_text, display
from .errors import ConfigError
from .settings import Settings

log = logging.getLogger("vigil.config")

# A config file is a few kilobytes; a bigger one is a mistake or an attack.
MAX_BYTES = 1 << 20


class ConfigProblems(ConfigError):
    """A config file with one or more problems, each a line of its own."""

    def __init__(self, path: str, problems: list[str]):
        self.path = path
        self.problems = problems
        shown = "; ".join(problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        super().__init__(f"{_name(path)}: {shown}{more}")


def _name(path: str) -> str:
    return display(as_text(path))


# -- reading ---------------------------------------------------------------------------
def read(path: str, *, missing_ok: bool = False) -> Settings:
    """The settings a file holds (defaults for what it leaves out).

    `missing_ok`: a file that does not exist gives the defaults (the
    default path, /etc/vigil/vigil.toml, is optional; a path the user
    named is not).  ConfigProblems lists every problem found."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        if missing_ok:
            return Settings()
        raise ConfigError(f"{_name(path)}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{_name(path)}: is a directory, not a config file") from None
    except OSError as err:
        raise ConfigError(f"{_name(path)}: {err.strerror or err}") from None
    settings, problems = parse(data)
    if problems:
        raise ConfigProblems(path, problems)
    return settings


def parse(data: bytes) -> tuple[Settings, list[str]]:
    """Settings from a file's bytes, and every problem found (one line each)."""
    if len(data) > MAX_BYTES:
        return Settings(), [f"larger than {MAX_BYTES >> 20} MiB: not a config file"]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line, col = _line_col(data, err.start)
        return Settings(), [f"{line}:{col}: not UTF-8 (byte 0x{data[err.start]:02x})"]
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        return Settings(), [_toml_error(err)]
    except RecursionError:
        return Settings(), ["nested too deeply"]
    except ValueError as err:  # e.g. an integer of more than 4300 digits
        return Settings(), [f"not TOML: {display(' '.join(str(err).split()))}"]
    problems: list[str] = []
    settings = _build(Settings, table, "", problems)
    return settings, problems


def _line_col(data: bytes, offset: int) -> tuple[int, int]:
    line = data.count(b"\n", 0, offset) + 1
    col = offset - (data.rfind(b"\n", 0, offset) + 1) + 1
    return line, col


_AT = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")
_AT_END = re.compile(r"\s*\(at end of document\)\s*$")


def _toml_error(err: tomllib.TOMLDecodeError) -> str:
    """tomllib's 'Invalid value (at line 3, column 9)' as '3:9: invalid value'."""
    msg = str(err)
    m = _AT.search(msg)
    if m:
        what = msg[: m.start()]
        where = f"{m.group(1)}:{m.group(2)}"
    elif _AT_END.search(msg):
        what = _AT_END.sub("", msg)
        where = "end"
    else:
        what, where = msg, "?"
    what = display(" ".join(what.split()))
    return f"{where}: not TOML: {what[:1].lower()}{what[1:]}"


def _build(cls, table: dict, prefix: str, problems: list[str]):
    """An instance of the settings class `cls` from a TOML table; what is
    wrong is appended to `problems` and left at its default."""
    fields = st.fields_of(cls)
    values: dict[str, Any] = {}
    for key, value in table.items():
        where = f"{prefix}{display(key)}"
        f = fields.get(key)
        if f is None:
            problems.append(f"{where}: unknown key{_did_you_mean(key, fields, prefix)}")
            continue
        if st.is_section(f):
            if not isinstance(value, dict):
                problems.append(f"{where}: must be a table ([{where}]), not {_kind(value)}")
                continue
            values[key] = _build(f.default_factory, value, f"{where}.", problems)
            continue
        if f.metadata["type"] is st.STR_TABLE:
            values[key] = _summary_specs(value, where, problems)
            continue
        try:
            values[key] = _check_value(f, value)
        except ValueError as err:
            problems.append(f"{where}: {err}")
    return cls(**values)


def _did_you_mean(key: str, fields: dict, prefix: str) -> str:
    close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.6)
    if close:
        return f" (did you mean {prefix}{close[0]}?)"
    return f" (known: {', '.join(fields)})"


_KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__  # TOML dates and times


def _check_value(f: dataclasses.Field, value: Any) -> Any:
    kind = f.metadata["type"]
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"must be true or false, not {_kind(value)}")
        return value
    if kind is str:
        if not isinstance(value, str):
            raise ValueError(f"must be a string, not {_kind(value)}")
        _utf8(value)
        return value
    if kind is st.STR_LIST:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"must be an array of strings, not {_kind(value)}")
        for v in value:
            _utf8(v)
        return list(value)
    # a bounded click type, shared with the command-line option
    default = f.default
    if isinstance(default, bool) or isinstance(value, bool):
        raise ValueError(f"must be {_KINDS[type(default)]}, not {_kind(value)}")
    if isinstance(default, int) and not isinstance(value, int):
        raise ValueError(f"must be an integer, not {_kind(value)}")
    if isinstance(default, float) and kind is not opt.AGE and not isinstance(value, (int, float)):
        raise ValueError(f"must be a number, not {_kind(value)}")
    if isinstance(default, str) and not isinstance(value, str):
        raise ValueError(f"must be a string, not {_kind(value)}")
    if isinstance(value, str):
        _utf8(value)
    try:
        return kind.convert(value, None, None)
    except click.BadParameter as err:
        raise ValueError(_bad(err, value)) from None
    except OverflowError:  # an integer too big for a float comparison
        raise ValueError(f"{_short(value)} is out of range") from None


def _bad(err: click.BadParameter, value: Any) -> str:
    msg = " ".join(err.format_message().split()).removeprefix("Invalid value: ")
    return display(msg.replace(repr(value), _short(value)) if len(repr(value)) > 40 else msg)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:18]}...{text[-8:]} ({len(text)} chars)"


def _utf8(text: str) -> None:
    try:
        text.encode()
    except UnicodeEncodeError:  # a TOML \ud800 escape cannot be; be safe anyway
        raise ValueError(f"'{display(as_text(text))}' is not valid UTF-8") from None


def _summary_specs(table: Any, where: str, problems: list[str]) -> dict[str, str]:
    """name = spec pairs, each name and spec checked as --summary checks
    them (one problem line per bad pair; the good ones are kept)."""
    if not isinstance(table, dict):
        problems.append(f'{where}: must be a table of NAME = "SPEC", not {_kind(table)}')
        return {}
    out = {}
    for name, spec in table.items():
        shown = f"{where}.{display(name)}"
        if not isinstance(spec, str):
            problems.append(f"{shown}: must be a string (an argdist -C spec), not {_kind(spec)}")
            continue
        try:
            _utf8(spec)
            summaries.check_name(name)
            if spec.strip():
                summaries.check_spec(spec.strip())
        except (ConfigError, ValueError) as err:
            problems.append(f"{shown}: {display(' '.join(str(err).split()))}")
            continue
        out[name] = spec.strip()
    return out


# -- the effective summaries -----------------------------------------------------------
def summary_specs(settings: Settings, sensors: Collection[str] | None = None) -> dict[str, str]:
    """name -> spec the monitor keeps: the defaults (unless turned off; with
    `sensors`, those of a running sensor only), then the file's table (""
    drops a name)."""
    s = settings.summaries
    if not s.enabled:
        return {}
    out = (
        {
            name: spec
            for name, spec in summaries.DEFAULT_SUMMARIES.items()
            if sensors is None or summaries.DEFAULT_SENSOR[name] in sensors
        }
        if s.defaults
        else {}
    )
    for name, spec in s.specs.items():
        if spec:
            out[name] = spec
        else:
            out.pop(name, None)
    return out


# -- the command line over the file -----------------------------------------------------
def load_for_command(ctx: click.Context, path: str | None) -> tuple[Settings, dict[str, Any]]:
    """The settings a command runs with: --config FILE (or the default path,
    optional), then every option the user gave explicitly on top.  Returns
    them and those explicit options (a reload keeps them over the file)."""
    explicit = explicit_options(ctx)
    settings = read(path or st.DEFAULT_PATH, missing_ok=path is None)
    return overlay(settings, explicit), explicit


def explicit_options(ctx: click.Context) -> dict[str, Any]:
    """{setting: value} of the options given on the command line: they win
    over the file; options left at their default leave the file's value
    (click's parameter source tells the two apart)."""
    given = (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT)
    out: dict[str, Any] = {}
    for param in ctx.command.params:
        dotted = OPTION_SETTINGS.get(param.name or "")
        if dotted is None or ctx.get_parameter_source(param.name) not in given:
            continue
        value = ctx.params[param.name]
        out[dotted] = list(value) if isinstance(value, tuple) else value
    return out


def overlay(settings: Settings, explicit: dict[str, Any]) -> Settings:
    for dotted, value in explicit.items():
        settings = st.replace(settings, dotted, value)
    return settings


# click parameter name -> setting: those made by option() register here
# themselves (a flag missing from a hand-kept list was silently ignored).
# Options not named here do not come from the file (per-run choices:
# --json, --duration, --quiet).
OPTION_SETTINGS = {
    "sensor_names": "sensors.enable",
    "ring_mb": "ring.size_mb",
    "latency": "ring.latency",
    "db_path": "store.path",
    "store_backlog_mb": "store.backlog_mb",
    "stop_grace": "log.stop_grace",
    "log_dir": "log.dir",
    "log_budget_mb": "log.budget_mb",
    "log_segment_mb": "log.segment_mb",
    "analysis_grace": "log.analysis_grace",
    "analysis_nice": "log.analysis_nice",
    "status_interval": "status.interval",
    "summary_interval": "summaries.interval",
    "rule_paths": "rules.paths",
    "watch": "sensors.files.watch",
}


def option(dotted: str, *decls: str, **kwargs):
    """A click option whose default, type and help come from the setting,
    and whose value, when given, overrides it (explicit_options)."""
    name = click.Option(list(decls)).name
    if OPTION_SETTINGS.setdefault(name, dotted) != dotted:
        raise ValueError(f"option {name} names both {OPTION_SETTINGS[name]} and {dotted}")
    kind = st.param_type(dotted)
    kwargs.setdefault("default", st.default(dotted))
    kwargs.setdefault("show_default", True)
    if kind is not None:
        kwargs.setdefault("type", kind)
    kwargs.setdefault("help", st.help_of(dotted))
    return click.option(*decls, **kwargs)


def config_option(f):
    return click.option(
        "--config",
        "config_path",
        metavar="FILE",
        help=f"Config file (TOML; default {st.DEFAULT_PATH} if it exists). Options given"
        " here override it.",
    )(f)


# -- showing -----------------------------------------------------------------------------
def dump(settings: Settings) -> str:
    """The settings as a TOML file (`vigil config show`), each key with its help."""
    lines: list[str] = []
    _dump_section(settings, "", lines)
    return "\n".join(lines).strip() + "\n"


def _dump_section(obj: Any, prefix: str, lines: list[str]) -> None:
    subsections = []
    if prefix:
        lines += ["", f"[{prefix.rstrip('.')}]"]
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if st.is_section(f):
            subsections.append((value, f"{prefix}{f.name}."))
            continue
        if isinstance(value, dict):
            subsections.append((value, f"{prefix}{f.name}"))
            continue
        lines.append(
            f"# {f.metadata['help']}{' (live on SIGHUP)' if f.metadata.get('live') else ''}"
        )
        lines.append(f"{f.name} = {_toml_value(value)}")
    for value, name in subsections:
        if isinstance(value, dict):
            lines += ["", f"[{name}]"]
            lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()]
        else:
            _dump_section(value, name, lines)


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_value(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        out = []
        for ch in value:
            if ch in '"\\':
                out.append("\\" + ch)
            elif ord(ch) < 0x20 or ord(ch) == 0x7F:
                out.append(f"\\u{ord(ch):04x}")
            else:
                out.append(ch)
        return '"' + "".join(out) + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(type(value).__name__)


# -- SIGHUP ---------------------------------------------------------------------------------
class Reloader:
    """A reload hook (RingPipeline.on_reload): re-read the file, apply what can
    change while running, and return what changed and what needs a restart
    (ServiceSignals puts it on its one SIGHUP line).  A
    broken file raises ConfigError; the signal handler's line then says the
    reload failed and the agent runs on with what it had."""

    def __init__(self, path: str | None, running: Settings, explicit: dict[str, Any]):
        """`running`: the settings in force; `explicit`: the command line's
        options (load_for_command), kept over the file's on every reload."""
        self.path = path or st.DEFAULT_PATH
        self.missing_ok = path is None
        self.running = running
        self.explicit = explicit
        self.appliers: dict[str, Callable[[Settings], None]] = {}
        self.__qualname__ = "config"  # how the SIGHUP line names this hook

    def apply(self, dotted_prefix: str, fn) -> None:
        """`fn(settings)` applies live settings under `dotted_prefix`."""
        self.appliers[dotted_prefix] = fn

    def __call__(self) -> str:
        new = read(self.path, missing_ok=self.missing_ok)
        new = overlay(new, self.explicit)
        diff = st.changed(self.running, new)
        live = [d for d in diff if st.is_live(d) and self._applier(d)]
        later = [d for d in diff if d not in live]
        applied_to = {self._applier(d) for d in live}
        for prefix in self.appliers:
            if prefix in applied_to:
                self.appliers[prefix](new)
        for d in live:
            self.running = st.replace(self.running, d, st.get(new, d))
        parts = [f"applied {', '.join(live)}" if live else "no live setting changed"]
        if later:
            parts.append(f"needs a restart: {', '.join(later)}")
        return f"{_name(self.path)}: {'; '.join(parts)}"  # on the SIGHUP line

    def _applier(self, dotted: str) -> str | None:
        for prefix in self.appliers:
            if dotted == prefix or dotted.startswith(prefix + "."):
                return prefix
        return None


__all__ = [
    "ConfigProblems",
    "OPTION_SETTINGS",
    "Reloader",
    "config_option",
    "dump",
    "load_for_command",
    "option",
    "overlay",
    "explicit_options",
    "parse",
    "read",
    "summary_specs",
]
