"""bashreadline: command lines typed into interactive bash (bpf/bashreadline.bpf.c).

The uretprobe goes on `readline` in the installed bash binary, found when
this module is imported: $VIGIL_BASH if set, else `bash` on $PATH, /bin/bash,
/usr/bin/bash (symlinks resolved: the probe is on the file, so every path to
it is covered).  A bash without the symbol (one linked to a shared
libreadline, or stripped of .dynsym) leaves the hook unusable: `vigil
monitor` names the sensor and skips it; `vigil bashreadline` says why.
"""

from __future__ import annotations

import os
import shutil

from ..elf import symbol_offset
from ..encoding import display
from ..errors import ConfigError
from . import Attach, Hook, Sensor, hook, register

BASH_ENV = "VIGIL_BASH"
SYMBOL = "readline"
_CANDIDATES = ("/bin/bash", "/usr/bin/bash")


def bash_binary() -> str | None:
    """The bash to probe, resolved; None when there is none."""
    override = os.environ.get(BASH_ENV)
    if override:
        return os.path.realpath(override)  # taken as given: checked at attach
    for cand in (shutil.which("bash"), *_CANDIDATES):
        if cand and os.path.isfile(cand):
            return os.path.realpath(cand)
    return None


def readline_hook(bash: str | None) -> Hook:
    """The hook for `bash` ("PATH:readline"); a missing bash gives a target that cannot exist."""
    target = f"{bash or _CANDIDATES[0]}:{SYMBOL}"
    # "uprobe" is the probed feature; the program's SEC("uretprobe") makes it a return probe
    return hook(SYMBOL, Attach("uprobe", target, ("handle_readline_ret",)))


def require_readline(bash: str | None) -> str:
    """`bash` if it can be probed, else a one-line ConfigError saying why not."""
    if bash is None:
        where = ", ".join(("$PATH", *_CANDIDATES))
        raise ConfigError(f"no bash binary found (looked in {where}; set ${BASH_ENV})")
    symbol_offset(bash, SYMBOL)  # "PATH: no function symbol 'readline' (stripped?)"
    return bash


def _finish(ev: dict) -> None:
    # the record ends after the line's NUL: what arrives is the string and its NUL
    ev["line"] = ev["line"].partition(b"\0")[0]


def _describe(ev: dict) -> str:
    cut = " (truncated)" if "truncated" in ev["flags"] else ""
    return display(ev["line"]) + cut


def sensor_for(bash: str | None) -> Sensor:
    """The sensor declaration for one bash binary (not registered)."""
    return Sensor(
        name="bashreadline",
        object="bashreadline",
        kinds=("bashreadline",),
        summary="command lines typed into interactive bash (readline)",
        hooks=(readline_hook(bash),),
        finish=_finish,
        describe=_describe,
    )


BASH = bash_binary()
SENSOR = register(sensor_for(BASH))
