"""The BPF side's configuration, written and read through the object's BTF.

bpf/argdist.h declares the configuration structs, enums and the hash key;
here they are encoded from their BTF: struct members by name, arrays from
their element type, enum values by enumerator name.  Nothing of their
layout is written down in Python.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass

from .. import _libbpf as bpf
from .. import paths, records
from ..errors import LayoutError

OBJECT = "argdist"  # bpf/argdist.bpf.c
# enum argdist_key_kind (short name) -> its counting map and key struct
KEY_LAYOUTS = {
    "num": ("ncounts", "argdist_nkey"),
    "comm": ("ccounts", "argdist_ckey"),
    "long": ("counts", "argdist_key"),
}


def read_counters(obj: bpf.Object, names: tuple[str, ...]) -> dict[str, int]:
    """Current values of 64-bit `.bss` counters, read from the kernel's map."""
    layout = records.datasec(obj.btf(), ".bss")
    bss = next(m for m in obj.maps() if m.name.endswith(".bss"))
    raw = bpf.map_lookup(bss.fd, struct.pack("<I", 0), bss.value_size) or b""
    out = {}
    for name in names:
        _tid, offset, size = layout[name]
        out[name] = int.from_bytes(raw[offset : offset + size], "little")
    return out


def enum(btf: bpf.Btf, enum_name: str, prefix: str) -> dict[str, int]:
    """Short lowercase name -> value: ARGDIST_SRC_FIELD_DATALOC -> field_dataloc."""
    t = btf.find(enum_name, bpf.BTF_KIND_ENUM)
    if t is None:
        raise LayoutError(f"enum {enum_name} not in {OBJECT}'s BTF")
    return {n.removeprefix(prefix).lower(): v for n, v in t.enumerators()}


@dataclass(frozen=True)
class Limits:
    keys: int  # expressions per spec (histogram value aside)
    filters: int
    filter_len: int  # bytes of a filter's string constant, NUL included
    comm_len: int  # strings of the comm-sized key (struct argdist_ckey)
    str_len: int  # strings of the long key (struct argdist_key): cut to str_len - 1


@functools.cache
def limits() -> Limits:
    """Array bounds of the configuration, from the object's BTF."""
    btf = bpf.Btf.from_file(paths.bpf_object(OBJECT))
    try:
        ro = records.datasec(btf, ".rodata")

        def count(var: str) -> int:
            t = records.strip_qualifiers(btf, ro[var][0])
            return t.array()[1]

        def length(struct_name: str, member: str) -> int:
            t = btf.find(struct_name, bpf.BTF_KIND_STRUCT)
            tid = next(tid for name, tid, _, _ in t.members() if name == member)
            return records.strip_qualifiers(btf, tid).array()[1]

        return Limits(
            count("keys"),
            count("filters"),
            length("argdist_filter", "str"),
            length(KEY_LAYOUTS["comm"][1], "s0"),
            length(KEY_LAYOUTS["long"][1], "s0"),
        )
    finally:
        btf.close()
