"""Parameter types every command shares: each value a user can type is
checked and bounded here, where click turns a bad one into a one-line
usage error, before anything is opened or loaded.

Why each bound exists:
  * floats: "nan" and "inf" parse as floats, and every comparison with NaN
    is false, so `--duration nan` never ends and `-i nan` ticks in a busy
    loop.  Only finite numbers in a stated range pass.
  * ints: SQLite and the kernel take at most 64 bits; a pid is below the
    kernel's PID_MAX_LIMIT.
  * text: on Linux, arguments that are not UTF-8 reach Python as lone
    surrogates ("surrogateescape").  Names Vigil defines (kinds, sensors,
    summaries) are UTF-8 or wrong; names the kernel holds as bytes (comm)
    are bytes, written raw or as Vigil prints them (docs/events.md, \\xHH).
"""

from __future__ import annotations

import math
import re
import time
from datetime import datetime

import click

from .encoding import as_text, display, unescape

INT64_MAX = (1 << 63) - 1
# include/linux/threads.h: the largest pid_max a 64-bit kernel accepts;
# every pid is below it.
PID_MAX_LIMIT = 4 * 1024 * 1024
# A run or a wait longer than this is a typo, not a plan.
MAX_DURATION = 10 * 366 * 86400.0
MAX_INTERVAL = 7 * 86400.0


class FiniteFloat(click.FloatRange):
    """A FloatRange that also refuses nan and inf (which pass every range)."""

    name = "seconds"

    def convert(self, value, param, ctx):
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return super().convert(number, param, ctx)


def seconds(low: float = 0.0, high: float = MAX_DURATION, *, min_open: bool = False) -> FiniteFloat:
    return FiniteFloat(low, high, min_open=min_open)


DURATION = seconds(0.0, MAX_DURATION)  # --duration: 0 = start and stop at once
INTERVAL = seconds(0.1, MAX_INTERVAL)  # -i, --status-interval, --summary-interval
PID = click.IntRange(1, PID_MAX_LIMIT - 1)
COUNT = click.IntRange(1, INT64_MAX)  # -n, --limit, --top: how many
COUNT0 = click.IntRange(0, INT64_MAX)


def _surrogate_free(value: str, param, ctx, what: str = "") -> str:
    try:
        value.encode()
    except UnicodeEncodeError:
        raise click.BadParameter(
            f"'{display(as_text(value))}' is not valid UTF-8{what}", ctx, param
        ) from None
    return value


class Utf8Text(click.ParamType):
    """Text Vigil itself defines (a kind, a sensor or summary name): UTF-8."""

    name = "text"

    def convert(self, value, param, ctx):
        if not isinstance(value, str):
            return value
        return _surrogate_free(value, param, ctx)


TEXT = Utf8Text()


class KernelBytes(click.ParamType):
    """A name the kernel keeps as bytes (comm): raw bytes on the command
    line, or the escaped form Vigil prints (\\xHH, \\\\); returns bytes."""

    name = "bytes"

    def convert(self, value, param, ctx):
        if isinstance(value, bytes):
            return value
        try:
            return unescape(value)
        except UnicodeEncodeError:  # a surrogate no command line can hold
            self.fail(f"'{display(as_text(value))}' is not text or bytes", param, ctx)


COMM = KernelBytes()

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_AGO = re.compile(r"(\d+(?:\.\d+)?)([smhdw])", re.ASCII)
_SINCE_HELP = "use 30s, 10m, 2h, 1d, 1w or an ISO time such as 2026-11-30T08:00"


def parse_since(text: str, now_ns: int | None = None) -> int:
    """'10m', '2h', '90s', '1d' ago, or an ISO time -> Unix ns, within
    1970..2262 (what a signed 64-bit count of ns holds); ValueError else."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    text = text.strip()
    m = _AGO.fullmatch(text)
    if m:
        ago_ns = float(m.group(1)) * _UNITS[m.group(2)] * 1e9
        if ago_ns > now_ns:
            raise ValueError("that is before 1970 (leave --since out for everything)")
        return now_ns - int(ago_ns)
    try:
        ns = datetime.fromisoformat(text).timestamp() * 1e9
    except (ValueError, OverflowError, OSError):
        raise ValueError(_SINCE_HELP) from None
    if not 0 <= ns < 2.0**63:
        raise ValueError("outside 1970..2262")
    return int(ns)


class Since(click.ParamType):
    """--since: how long ago, or an ISO time; converts to Unix ns."""

    name = "since"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        _surrogate_free(value, param, ctx, f" ({_SINCE_HELP})")
        try:
            return parse_since(value)
        except ValueError as err:
            self.fail(f"'{display(as_text(value))}': {err}", param, ctx)


SINCE = Since()


class Age(click.ParamType):
    """A span of time: seconds as a number, or 90s, 10m, 12h, 30d, 2w;
    0 means "no limit".  Returns seconds (finite, at most MAX_DURATION)."""

    name = "age"

    def convert(self, value, param, ctx):
        if isinstance(value, bool):
            self.fail(f"{value!r} is not a time span (use 30d, 12h or seconds)", param, ctx)
        if isinstance(value, (int, float)):
            number = float(value)
        else:
            text = _surrogate_free(str(value), param, ctx).strip()
            m = _AGO.fullmatch(text)
            if m:
                number = float(m.group(1)) * _UNITS[m.group(2)]
            else:
                try:
                    number = float(text)
                except ValueError:
                    self.fail(
                        f"'{display(text)}' is not a time span (use 30d, 12h or seconds)",
                        param,
                        ctx,
                    )
        if not math.isfinite(number) or not 0 <= number <= MAX_DURATION:
            self.fail(f"{value!r} is not between 0 and {MAX_DURATION:.0f} s", param, ctx)
        return number


AGE = Age()
