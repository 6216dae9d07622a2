"""Where probes go: binaries and libraries by name, USDT notes."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess

from elftools.elf.elffile import ELFFile
from elftools.elf.sections import NoteSection

from .. import paths
from ..elf import MALFORMED as MALFORMED_ELF
from ..errors import ConfigError, VigilError


@functools.lru_cache(maxsize=64)
def _ldconfig() -> dict[str, str]:
    """soname prefix "libfoo.so" -> path, from the loader's cache."""
    try:
        out = subprocess.run(
            ["ldconfig", "-p"], capture_output=True, text=True, check=False, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    libs: dict[str, str] = {}
    for line in out.splitlines()[1:]:
        name, sep, path = line.strip().partition(" => ")
        if sep:
            libs.setdefault(name.split()[0].split(".so", 1)[0] + ".so", path.strip())
    return libs


def binary(name: str) -> str:
    """A path for `name`: a path as given, "c" for libc, a program on $PATH,
    or a library the dynamic loader knows (bcc's `p:c:malloc` style)."""
    if "/" in name:
        if not os.path.isfile(name):
            raise ConfigError(f"{name}: no such file")
        return name
    if name in ("c", "libc"):
        try:
            return paths.libc()
        except VigilError as err:
            raise ConfigError(str(err)) from None
    found = shutil.which(name)
    if found:
        return found
    lib = name if name.startswith("lib") else f"lib{name}"
    path = _ldconfig().get(lib.split(".so", 1)[0] + ".so")
    if path:
        return path
    raise ConfigError(f"cannot find a binary or library named {name!r}")


@functools.lru_cache(maxsize=64)
def usdt_probes(path: str) -> tuple[tuple[str, str, int], ...]:
    """(provider, name, argument count) of every USDT probe in an ELF file."""
    out = []
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            addr = 8 if elf.elfclass == 64 else 4
            for sec in elf.iter_sections():
                if sec.name != ".note.stapsdt" or not isinstance(sec, NoteSection):
                    continue  # (a crafted file may give the name to another type)
                for note in sec.iter_notes():
                    desc = note["n_descdata"]
                    if isinstance(desc, str):
                        desc = desc.encode("latin-1")
                    # pc, base, semaphore addresses, then provider\0name\0args\0
                    provider, name, args = desc[3 * addr :].split(b"\0")[:3]
                    nargs = len(args.split()) if args else 0
                    out.append((provider.decode(), name.decode(), nargs))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except MALFORMED_ELF as err:
        raise ConfigError(f"{path}: not a readable ELF file ({err})") from None
    return tuple(out)


def usdt_probe(path: str, provider: str | None, name: str) -> tuple[str, int]:
    """(provider, argument count) of USDT probe `name` in `path`."""
    probes = usdt_probes(path)
    hits = [p for p in probes if p[1] == name and (provider is None or p[0] == provider)]
    if not hits:
        known = ", ".join(sorted({f"{p}:{n}" for p, n, _ in probes})) or "none"
        want = f"{provider}:{name}" if provider else name
        raise ConfigError(f"{path}: no USDT probe {want} (probes: {known})")
    providers = {p for p, _, _ in hits}
    if len(providers) > 1:
        raise ConfigError(
            f"{path}: USDT probe {name} exists for providers {', '.join(sorted(providers))}:"
            " name one (u:BINARY:PROVIDER:PROBE())"
        )
    return hits[0][0], max(n for _, _, n in hits)
