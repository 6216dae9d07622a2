"""Live tools (`vigil execsnoop`, `vigil tcpconnect`, ...): one module each.

Each module defines one click command, named COMMAND, on top of
tools.live.run_live, the shared runner (load sensors, enrich, filter, print
a table or JSON lines).  Modules are found here at import: adding a tool is
adding a module.
"""

from __future__ import annotations

import importlib
import pkgutil


def commands() -> list:
    out = []
    for mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{mod.name}")
        command = getattr(module, "COMMAND", None)
        if command is not None:
            out.append(command)
    return out
