"""bcc's output: argdist's COUNT/EVENT rows, print_log2_hist, and JSON lines."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

import orjson

from ..encoding import display, iso_time

STARS_MAX = 40  # bcc's stars_max


def key_text(key: dict, default: str = "total calls") -> str:
    """bcc's event column: "cap = 12, comm = sshd"."""
    if not key:
        return default
    return ", ".join(f"{k} = {display(v) if isinstance(v, str) else v}" for k, v in key.items())


def _stars(val: int, val_max: int, width: int) -> str:
    # bcc's table._stars, as is
    text, i = "", 0
    while not (i > (width * val / val_max) - 1 or i > width - 1):
        text += "*"
        i += 1
    if val > val_max:
        text = text[:-1] + "+"
    return text


def log2_hist_lines(slots: list[int], val_type: str) -> list[str]:
    """bcc's print_log2_hist: slot i holds [2**i, 2**(i+1)) (slot 0: 0 and 1)."""
    idx_max = max((i for i, v in enumerate(slots) if v), default=-1)
    if idx_max < 0:
        return []
    val_max = max(slots)
    if idx_max <= 32:
        header, width, stars = "     %-19s : count     distribution", 10, STARS_MAX
    else:
        header, width, stars = "               %-29s : count     distribution", 20, STARS_MAX // 2
    lines = [header % val_type]
    for i in range(idx_max + 1):
        low, high = 1 << i, (1 << (i + 1)) - 1
        if low == high:
            low -= 1
        val = slots[i]
        lines.append(
            f"{low:>{width}} -> {high:<{width}} : {val:<8} |{_stars(val, val_max, stars):<{stars}}|"
        )
    return lines


def count_lines(title: str, rows: list[tuple[dict, int]], top: int | None) -> list[str]:
    """bcc argdist -C: the spec, then COUNT/EVENT rows, smallest count first."""
    rows = sorted(rows, key=lambda r: r[1])
    if top is not None:
        rows = rows[-top:] if top > 0 else []
    lines = [title, f"\t{'COUNT':<10} EVENT"]
    lines.extend(f"\t{n:<10} {key_text(key)}" for key, n in rows)
    return lines


def hist_lines(
    title: str | None,
    hists: list[tuple[dict, list[int]]],
    val_type: str,
    section: Callable[[dict], str] = key_text,
) -> list[str]:
    """bcc argdist -H: the spec, then one histogram per key (a section line each
    when the histogram is grouped)."""
    lines = [title] if title is not None else []
    for key, slots in hists:
        if key:
            lines.append("")
            lines.append(section(key))
        lines.extend(log2_hist_lines(slots, val_type))
    return lines


def json_counts(spec_text: str, rows: list[tuple[dict, int]], lost: int, errors: int) -> bytes:
    return orjson.dumps(
        {
            "time": iso_time(time.time_ns()),
            "spec": spec_text,
            "counts": [{"key": key, "count": n} for key, n in rows],
            "lost": lost,
            "errors": errors,
        }
    )


def json_hist(
    spec_text: str, value: str, hists: list[tuple[dict, list[int]]], lost: int, errors: int
) -> bytes:
    """slots[i] counts values in [2**i, 2**(i+1)); trailing empty slots are cut."""

    def trim(slots: list[int]) -> list[int]:
        end = max((i + 1 for i, v in enumerate(slots) if v), default=0)
        return slots[:end]

    return orjson.dumps(
        {
            "time": iso_time(time.time_ns()),
            "spec": spec_text,
            "value": value,
            "hists": [{"key": key, "slots": trim(slots)} for key, slots in hists],
            "lost": lost,
            "errors": errors,
        }
    )


def emit(lines: list[str] | bytes, out: TextIO | None = None) -> None:
    out = out or sys.stdout
    if isinstance(lines, bytes):
        out.buffer.write(lines + b"\n")
    else:
        out.write("\n".join(lines) + "\n")
    out.flush()
