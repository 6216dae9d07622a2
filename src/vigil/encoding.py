"""Bytes from the kernel, shown and stored without loss.

argv, paths and comm are bytes: a process may put anything in them.  Vigil
keeps them as bytes end to end and turns them into text only at the edge,
with one reversible rule (docs/events.md, "Strings"):

  * valid UTF-8 is kept as is,
  * a backslash becomes two backslashes,
  * every byte that is not part of valid UTF-8 becomes ``\\xHH``.

``unescape(escape(b)) == b`` for every ``b``.  Tables add one more step,
:func:`display`, which also writes control characters as escapes so that a
crafted argv cannot move the cursor or forge a line of output.
"""

from __future__ import annotations

import re
import time

import orjson

_SURROGATE = re.compile("[\udc80-\udcff]")
_ESCAPE = re.compile(r"\\(\\|x[0-9a-f]{2})")


def _hex(m: re.Match) -> str:
    return f"\\x{ord(m.group()) - 0xDC00:02x}"


def escape(b: bytes) -> str:
    """Bytes -> text, reversibly (see module docstring)."""
    try:
        s = b.decode()
    except UnicodeDecodeError:
        s = b.decode("utf-8", "surrogateescape").replace("\\", "\\\\")
        return _SURROGATE.sub(_hex, s)
    return s.replace("\\", "\\\\") if "\\" in s else s


def _unhex(m: re.Match) -> str:
    g = m.group(1)
    if g == "\\":
        return "\\"
    value = int(g[1:], 16)
    # bytes >= 0x80 go back through surrogateescape; lower ones are plain ASCII
    return chr(0xDC00 + value) if value >= 0x80 else chr(value)


def unescape(s: str) -> bytes:
    """Text from :func:`escape` -> the original bytes (lone surrogates, as
    Python gives non-UTF-8 arguments, become their bytes again)."""
    if "\\" not in s:
        # surrogateescape: raw bytes from the command line pass through too
        return s.encode("utf-8", "surrogateescape")
    return _ESCAPE.sub(_unhex, s).encode("utf-8", "surrogateescape")


# C0 controls, DEL, C1 controls and the Unicode line/paragraph separators.
_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)}
_CONTROL.update({c: f"\\u{c:04x}" for c in (*range(0x80, 0xA0), 0x2028, 0x2029)})
_CONTROL.update({0x0A: "\\n", 0x09: "\\t", 0x0D: "\\r"})


def as_text(arg: str) -> str:
    """A command-line string made safe to store and print as UTF-8: itself
    when it is UTF-8, else escaped (a non-UTF-8 byte arrives as a surrogate)."""
    try:
        arg.encode()
    except UnicodeEncodeError:
        try:
            return escape(arg.encode("utf-8", "surrogateescape"))
        except UnicodeEncodeError:  # a surrogate no byte maps to: not from argv
            return arg.encode("utf-8", "backslashreplace").decode()
    return arg


def display(value: bytes | str) -> str:
    """Safe for one terminal line: escaped, with no control character left."""
    s = escape(value) if isinstance(value, bytes) else value
    return s.translate(_CONTROL) if not s.isprintable() else s


def display_args(args: list[bytes]) -> str:
    return " ".join(display(a) for a in args)


# -- JSON --------------------------------------------------------------------------
_escaped: dict[bytes, str] = {}


def escape_cached(b: bytes) -> str:
    """escape(), remembered: comm and paths repeat across events."""
    s = _escaped.get(b)
    if s is None:
        if len(_escaped) > 65536:
            _escaped.clear()
        s = _escaped[b] = escape(b)
    return s


def textual(ev: dict) -> dict:
    """The event with bytes (and lists of bytes) as escaped text, for JSON.

    Done here in one pass rather than through orjson's `default` hook,
    which calls back into Python once per bytes value (~1 us each).
    """
    out = {}
    for key, value in ev.items():
        kind = type(value)
        if kind is bytes:
            value = escape_cached(value)
        elif kind is list and value and type(value[0]) is bytes:
            value = [escape(v) for v in value]
        out[key] = value
    return out


def _default(obj):
    if isinstance(obj, bytes | bytearray):
        return escape(bytes(obj))
    raise TypeError(f"cannot encode {type(obj).__name__} in an event")


_iso_cache: tuple[int, str] = (-1, "")


def iso_time(ts_ns: int) -> str:
    """RFC 3339 UTC with nanoseconds; the per-second prefix is cached."""
    global _iso_cache
    sec, ns = divmod(ts_ns, 1_000_000_000)
    if _iso_cache[0] != sec:
        _iso_cache = (sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)))
    return f"{_iso_cache[1]}.{ns:09d}Z"


def to_json(ev: dict) -> bytes:
    """One event as one line of JSON (no newline), documented names."""
    return orjson.dumps(textual(ev), default=_default)


def from_json(line: bytes | str) -> dict:
    return orjson.loads(line)
