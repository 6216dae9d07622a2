"""Tracepoint record layouts, read from tracefs at run time.

``/sys/kernel/tracing/events/<category>/<event>/format`` gives every field's
offset, size and signedness in the running kernel: the precompiled program
reads fields where this file says they are, so no kernel header and no
compiler is involved.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass

from .. import kernel
from ..errors import ConfigError

_FIELD = re.compile(
    r"^\s*field:(?P<decl>[^;]*);\s*offset:(?P<offset>\d+);\s*size:(?P<size>\d+);"
    r"\s*signed:(?P<signed>\d+);"
)
# "unsigned int bytes", "char comm[16]", "__data_loc char[] cmd", "const char * name"
_DECL = re.compile(r"^(?P<type>.*?)(?P<name>[A-Za-z_]\w*)\s*(?P<dim>\[[^\]]*\])?\s*$")
_NAME = re.compile(r"^[A-Za-z_][\w.-]*$")


@dataclass(frozen=True)
class TpField:
    """One field of a tracepoint's record."""

    name: str
    ctype: str  # as tracefs writes it: "unsigned int", "char[16]", "__data_loc char[]"
    offset: int
    size: int
    signed: bool

    @property
    def kind(self) -> str:
        """int, pointer, chars (char[N]), dataloc, relloc, or array (not usable)."""
        if self.ctype.startswith("__data_loc"):
            return "dataloc" if "char" in self.ctype else "array"
        if self.ctype.startswith("__rel_loc"):
            return "relloc" if "char" in self.ctype else "array"
        if "[" in self.ctype:
            base = self.ctype.split("[", 1)[0].split()
            return "chars" if base and base[-1] == "char" and "unsigned" not in base else "array"
        if "*" in self.ctype:
            return "pointer"
        return "int" if self.size in (1, 2, 4, 8) else "array"

    @property
    def is_string(self) -> bool:
        return self.kind in ("chars", "dataloc", "relloc")


def format_path(category: str, event: str) -> str:
    return os.path.join(kernel.TRACEFS, "events", category, event, "format")


def parse_format(text: str) -> dict[str, TpField]:
    """name -> field, in record order, from the text of a format file."""
    out: dict[str, TpField] = {}
    for line in text.splitlines():
        m = _FIELD.match(line)
        if not m:
            continue
        d = _DECL.match(m["decl"].strip())
        if not d:
            continue
        ctype = " ".join(d["type"].split()) + (d["dim"] or "")
        out[d["name"]] = TpField(
            d["name"], ctype, int(m["offset"]), int(m["size"]), m["signed"] == "1"
        )
    return out


@functools.lru_cache(maxsize=128)
def fields(category: str, event: str) -> dict[str, TpField]:
    """The fields of tracepoint category:event; ConfigError if there is none."""
    if not (_NAME.match(category) and _NAME.match(event)):
        raise ConfigError(f"bad tracepoint name {category}:{event}")
    kernel.ensure_tracefs()
    path = format_path(category, event)
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        raise ConfigError(f"unknown tracepoint {category}:{event} (no {path})") from None
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror}") from None
    out = parse_format(text)
    if not out:
        raise ConfigError(f"{path}: no fields found")
    return out
