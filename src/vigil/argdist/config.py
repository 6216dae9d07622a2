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
from .. import paths
from ..errors import LayoutError

OBJECT = "argdist"  # bpf/argdist.bpf.c
# enum argdist_key_kind (short name) -> its counting map and key struct
KEY_LAYOUTS = {
    "num": ("ncounts", "argdist_nkey"),
    "comm": ("ccounts", "argdist_ckey"),
    "long": ("counts", "argdist_key"),
}
_QUALIFIERS = {
    bpf.BTF_KIND_TYPEDEF,
    bpf.BTF_KIND_CONST,
    bpf.BTF_KIND_VOLATILE,
    bpf.BTF_KIND_RESTRICT,
    bpf.BTF_KIND_TYPE_TAG,
}


def _strip(btf: bpf.Btf, type_id: int) -> bpf.BtfType:
    t = btf.type(type_id)
    while t.kind in _QUALIFIERS:
        t = btf.type(t.size_or_type)
    return t


def type_size(btf: bpf.Btf, type_id: int) -> int:
    t = _strip(btf, type_id)
    if t.kind == bpf.BTF_KIND_ARRAY:
        elem, n = t.array()
        return type_size(btf, elem) * n
    if t.kind == bpf.BTF_KIND_PTR:
        return 8
    return t.size_or_type


def encode(btf: bpf.Btf, type_id: int, value) -> bytes:
    """`value` in the C layout of BTF type `type_id`.

    Integers and enums take an int; arrays a list (char arrays also str or
    bytes, NUL-padded); structs a dict by member name (missing members are
    zero; a name the struct lacks is an error).
    """
    t = _strip(btf, type_id)
    if t.kind in (bpf.BTF_KIND_INT, bpf.BTF_KIND_ENUM, bpf.BTF_KIND_ENUM64):
        size = t.size_or_type
        signed = t.int_encoding()[1] if t.kind == bpf.BTF_KIND_INT else t.kind_flag
        try:
            return int(value).to_bytes(size, "little", signed=signed and int(value) < 0)
        except OverflowError:
            raise LayoutError(f"{value} does not fit {t.name or 'an integer'}") from None
    if t.kind == bpf.BTF_KIND_ARRAY:
        elem, n = t.array()
        esize = type_size(btf, elem)
        if isinstance(value, str):
            value = value.encode()
        if isinstance(value, bytes):
            if esize != 1 or len(value) > n:
                raise LayoutError(f"{value!r} does not fit a {n}-byte array")
            return value.ljust(n, b"\0")
        if len(value) > n:
            raise LayoutError(f"{len(value)} items for an array of {n}")
        return b"".join(encode(btf, elem, v) for v in value).ljust(n * esize, b"\0")
    if t.kind == bpf.BTF_KIND_STRUCT:
        out = bytearray(t.size_or_type)
        members = {name: (tid, bit_off) for name, tid, bit_off, _ in t.members()}
        unknown = set(value) - set(members)
        if unknown:
            raise LayoutError(f"struct {t.name} has no member {', '.join(sorted(unknown))}")
        for name, v in value.items():
            tid, bit_off = members[name]
            raw = encode(btf, tid, v)
            out[bit_off // 8 : bit_off // 8 + len(raw)] = raw
        return bytes(out)
    raise LayoutError(f"cannot encode BTF kind {t.kind} ({t.name})")


def datasec(btf: bpf.Btf, name: str) -> dict[str, tuple[int, int, int]]:
    """var name -> (type id, offset, size) of a data section (.rodata, .bss)."""
    sec = btf.find(name, bpf.BTF_KIND_DATASEC)
    if sec is None:
        return {}
    out = {}
    for var_id, offset, size in sec.datasec_vars():
        var = btf.type(var_id)
        out[var.name] = (var.size_or_type, offset, size)
    return out


def write_rodata(obj: bpf.Object, values: dict) -> None:
    """Set `.rodata` variables (any type: structs, arrays) before load."""
    btf = obj.btf()
    layout = datasec(btf, ".rodata")
    ro = next((m for m in obj.maps() if m.name.endswith(".rodata")), None)
    if ro is None:
        raise LayoutError(f"{obj.name}: no .rodata")
    view = ro.data_view()
    for name, value in values.items():
        if name not in layout:
            raise LayoutError(f"{obj.name}: no .rodata variable {name!r}")
        type_id, offset, size = layout[name]
        raw = encode(btf, type_id, value)
        if len(raw) != size:
            raise LayoutError(f"{obj.name}: {name} encodes to {len(raw)} bytes, not {size}")
        view[offset : offset + size] = raw


def read_counters(obj: bpf.Object, names: tuple[str, ...]) -> dict[str, int]:
    """Current values of 64-bit `.bss` counters, read from the kernel's map."""
    layout = datasec(obj.btf(), ".bss")
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
        ro = datasec(btf, ".rodata")

        def count(var: str) -> int:
            t = _strip(btf, ro[var][0])
            return t.array()[1]

        def length(struct_name: str, member: str) -> int:
            t = btf.find(struct_name, bpf.BTF_KIND_STRUCT)
            tid = next(tid for name, tid, _, _ in t.members() if name == member)
            return _strip(btf, tid).array()[1]

        return Limits(
            count("keys"),
            count("filters"),
            length("argdist_filter", "str"),
            length(KEY_LAYOUTS["comm"][1], "s0"),
            length(KEY_LAYOUTS["long"][1], "s0"),
        )
    finally:
        btf.close()
