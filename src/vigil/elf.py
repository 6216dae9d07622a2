"""ELF symbol lookup for uprobes, through pyelftools."""

from __future__ import annotations

import functools
import os
import struct

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from .errors import ConfigError

# What pyelftools raises on a crafted file, besides its own ELFError: it
# seeks and reads where the headers say (offsets past 2**63, counts that
# index past a table, names that are not UTF-8).  Found by fuzzing
# (tests/test_fuzz_cli.py); any file can be named in an argdist spec.
MALFORMED = (
    ELFError,
    OSError,
    struct.error,
    ValueError,
    OverflowError,
    IndexError,
    KeyError,
    AssertionError,
)


def _symbols(path: str) -> dict[str, int]:
    """Cached per file version: an upgraded binary is read again."""
    try:
        st = os.stat(path)
    except FileNotFoundError as err:
        raise ConfigError(f"{path}: no such file") from err
    return _read_symbols(path, st.st_ino, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _read_symbols(path: str, _inode: int, _mtime_ns: int) -> dict[str, int]:
    """name -> file offset of every defined function symbol (.symtab, .dynsym)."""
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            loads = [s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
            out: dict[str, int] = {}
            for section_name in (".dynsym", ".symtab"):
                sec = elf.get_section_by_name(section_name)
                if not isinstance(sec, SymbolTableSection):  # absent, or a name on another type
                    continue
                for sym in sec.iter_symbols():
                    if sym["st_info"]["type"] != "STT_FUNC" or not sym["st_value"]:
                        continue
                    addr = sym["st_value"]
                    for seg in loads:
                        lo = seg["p_vaddr"]
                        if lo <= addr < lo + seg["p_memsz"]:
                            name = sym.name.split("@", 1)[0]
                            out.setdefault(name, addr - lo + seg["p_offset"])
                            break
            return out
    except FileNotFoundError as err:
        raise ConfigError(f"{path}: no such file") from err
    except MALFORMED as err:
        raise ConfigError(f"{path}: not a readable ELF file ({err!r})") from None


def symbol_offset(path: str, name: str) -> int:
    """File offset of function `name` in `path`, as uprobes want it."""
    try:
        return _symbols(path)[name]
    except KeyError:
        raise ConfigError(f"{path}: no function symbol {name!r} (stripped?)") from None
