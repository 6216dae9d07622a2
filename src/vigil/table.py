"""One fixed-width, line-per-event table printer for every live tool.

bcc's tools print fixed columns and a free last column; we do the same,
with every value passed through encoding.display so no event can inject
control characters or a newline into the output.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from .encoding import display


@dataclass(frozen=True)
class Column:
    header: str
    width: int  # 0: last, free-width column
    value: Callable[[dict], object]
    right: bool = False


def clock_time(ev: dict) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ev["ts_ns"] / 1e9))


def relative_time(start_ns: int) -> Callable[[dict], str]:
    return lambda ev: f"{(ev['ts_ns'] - start_ns) / 1e9:.3f}"


class TablePrinter:
    def __init__(self, columns: list[Column], out: TextIO | None = None):
        self.columns = columns
        self.out = out or sys.stdout
        self._formats = []
        for i, col in enumerate(columns):
            last = i == len(columns) - 1
            if last or col.width == 0:
                self._formats.append("{}")
            else:
                align = ">" if col.right else "<"
                self._formats.append(f"{{:{align}{col.width}}}")

    def _line(self, values: list[str]) -> str:
        return " ".join(f.format(v) for f, v in zip(self._formats, values)).rstrip()

    def header(self) -> None:
        self.out.write(self._line([c.header for c in self.columns]) + "\n")
        self.out.flush()

    def format_rows(self, events: list[dict]) -> str:
        lines = []
        for ev in events:
            values = []
            for col in self.columns:
                v = col.value(ev)
                values.append(display(v) if isinstance(v, bytes | str) else str(v))
            lines.append(self._line(values))
        return "\n".join(lines) + "\n"

    def rows(self, events: list[dict]) -> None:
        self.out.write(self.format_rows(events))
        self.out.flush()
