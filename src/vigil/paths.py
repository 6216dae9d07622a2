"""Where Vigil finds its built BPF objects and helper binaries.

Objects are built once at set-up into ``build/bpf`` of the source tree (or
wherever $VIGIL_BPF_DIR points, for packaged installs).
"""

from __future__ import annotations

import functools
import os

from .errors import VigilError

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_DB = "/var/lib/vigil/events.db"


def build_dir() -> str:
    return os.environ.get("VIGIL_BUILD_DIR", os.path.join(_ROOT, "build"))


def bpf_dir() -> str:
    return os.environ.get("VIGIL_BPF_DIR", os.path.join(build_dir(), "bpf"))


def bpf_object(name: str) -> str:
    path = os.path.join(bpf_dir(), f"{name}.bpf.o")
    if not os.path.exists(path):
        raise VigilError(f"BPF object {path} is missing: run the set-up (make setup)")
    return path


def usdt_probe_binary() -> str | None:
    path = os.path.join(build_dir(), "bin", "usdt-probe")
    return path if os.path.exists(path) else None


@functools.cache
def libc() -> str:
    for cand in (
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/usr/lib/x86_64-linux-gnu/libc.so.6",
        "/lib/aarch64-linux-gnu/libc.so.6",
        "/lib64/libc.so.6",
    ):
        if os.path.exists(cand):
            return os.path.realpath(cand)
    raise VigilError("libc.so.6 not found")
