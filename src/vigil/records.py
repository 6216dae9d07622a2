"""Record layouts derived from a BPF object's BTF, and their decoders.

The C headers in ``bpf/`` are the only declaration of every record.  Here we
read the compiled object's BTF: the kinds from ``enum vigil_event_kind``,
each kind's ``struct <kind>_event``, the flag names from ``enum vigil_flag``,
and build a ``struct.Struct`` per kind.  Add a field in C and rebuild: the
decoder follows, nothing in Python changes.

Field rules:
  * integers decode to ``int``; a field declared with an enum type decodes
    to the enumerator's name, lowercased, without the enum's common prefix
    (``enum exec_syscall syscall`` -> "execve"); unknown values stay ints;
  * ``char[N]`` is a C string: bytes up to the first NUL;
  * other 1-byte arrays (``__u8[N]``) and unions are raw ``bytes``;
  * arrays of wider integers decode to tuples;
  * a nested struct's fields are flattened into the record under their own
    names (the common header, shared pieces like the socket addresses); a
    name that would then appear twice is an error;
  * names starting with ``__`` are padding and are skipped;
  * the last member, if it is a ``char[]``, may be cut short in the ring
    (variable length): it decodes to the raw bytes that are present.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from . import _libbpf as bpf
from .errors import LayoutError

KIND_ENUM = "vigil_event_kind"
KIND_PREFIX = "VIGIL_EV_"
FLAG_ENUM = "vigil_flag"
FLAG_PREFIX = "VIGIL_F_"
HEADER_STRUCT = "vigil_header"
# What the analysis reads of a record it leaves undecoded (the process it
# names, its identity, its time; vigil.process, vigil.outputs.store): these
# header fields, in the order vigil_header declares them.
HEAD_FIELDS = (
    "kind",
    "ts_ns",
    "pid",
    "ppid",
    "cpu",
    "seq",
    "start_time",
    "parent_start_time",
    "comm",
)

_INT_CODES = {
    (1, False): "B",
    (1, True): "b",
    (2, False): "H",
    (2, True): "h",
    (4, False): "I",
    (4, True): "i",
    (8, False): "Q",
    (8, True): "q",
}
_QUALIFIERS = {
    bpf.BTF_KIND_TYPEDEF,
    bpf.BTF_KIND_CONST,
    bpf.BTF_KIND_VOLATILE,
    bpf.BTF_KIND_RESTRICT,
    bpf.BTF_KIND_TYPE_TAG,
}


@dataclass(frozen=True)
class Field:
    name: str
    offset: int
    size: int
    form: str  # "int", "enum", "cstr", "bytes", "ints"
    code: str  # struct format of the field
    count: int = 1
    names: tuple[tuple[int, str], ...] = ()  # enum fields: value -> name
    path: str = ""  # the C member path ("hdr.pid", "addrs.lport")


@dataclass(frozen=True)
class Layout:
    """One record kind: its struct, fields and the size of its fixed part."""

    kind: str
    kind_id: int
    struct_name: str
    size: int
    fields: tuple[Field, ...]
    tail: Field | None

    @property
    def fixed_size(self) -> int:
        return self.tail.offset if self.tail else self.size

    def field(self, name: str) -> Field:
        for f in self.fields + ((self.tail,) if self.tail else ()):
            if f.name == name:
                return f
        raise KeyError(name)


def strip_qualifiers(btf: bpf.Btf, type_id: int) -> bpf.BtfType:
    """The type under any typedef/const/volatile/restrict/type tag."""
    t = btf.type(type_id)
    while t.kind in _QUALIFIERS:
        t = btf.type(t.size_or_type)
    return t


# -- values in C layout (.rodata constants, map keys written from Python) --------
def type_size(btf: bpf.Btf, type_id: int) -> int:
    t = strip_qualifiers(btf, type_id)
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
    t = strip_qualifiers(btf, type_id)
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


def _int_info(btf: bpf.Btf, t: bpf.BtfType) -> tuple[int, bool, bool]:
    """(size, signed, is_char) of an INT or ENUM type."""
    if t.kind == bpf.BTF_KIND_INT:
        bits, signed = t.int_encoding()
        # only plain `char` is text; `unsigned char`/`__u8` arrays are raw bytes
        return bits // 8, signed, t.name == "char"
    if t.kind in (bpf.BTF_KIND_ENUM, bpf.BTF_KIND_ENUM64):
        return t.size_or_type, t.kind_flag, False
    raise LayoutError(f"{t.name or 'type'} (BTF kind {t.kind}) is not an integer")


def _fields(
    btf: bpf.Btf, struct_t: bpf.BtfType, base: int, prefix: str, cpath: str = ""
) -> list[Field]:
    out: list[Field] = []
    for name, type_id, bit_off, bitfield in struct_t.members():
        if name.startswith("__"):
            continue
        if bitfield or bit_off % 8:
            raise LayoutError(f"{struct_t.name}.{name}: bitfields are not supported in records")
        off = base + bit_off // 8
        t = strip_qualifiers(btf, type_id)
        full = prefix + name
        path = cpath + name
        if t.kind == bpf.BTF_KIND_STRUCT:
            out.extend(_fields(btf, t, off, prefix, path + "."))
        elif t.kind == bpf.BTF_KIND_UNION:
            out.append(Field(full, off, t.size_or_type, "bytes", f"{t.size_or_type}s", path=path))
        elif t.kind == bpf.BTF_KIND_ARRAY:
            elem_id, n = t.array()
            size, signed, is_char = _int_info(btf, strip_qualifiers(btf, elem_id))
            if size == 1:
                form = "cstr" if is_char else "bytes"
                out.append(Field(full, off, n, form, f"{n}s", path=path))
            else:
                code = _INT_CODES[(size, signed)]
                out.append(Field(full, off, n * size, "ints", f"{n}{code}", n, path=path))
        elif t.kind in (bpf.BTF_KIND_ENUM, bpf.BTF_KIND_ENUM64):
            size, signed, _ = _int_info(btf, t)
            names = _enum_names(t.enumerators())
            out.append(
                Field(full, off, size, "enum", _INT_CODES[(size, signed)], names=names, path=path)
            )
        elif t.kind == bpf.BTF_KIND_INT:
            size, signed, _ = _int_info(btf, t)
            out.append(Field(full, off, size, "int", _INT_CODES[(size, signed)], path=path))
        elif t.kind == bpf.BTF_KIND_PTR:
            out.append(Field(full, off, 8, "int", "Q", path=path))
        else:
            raise LayoutError(f"{struct_t.name}.{name}: unsupported BTF kind {t.kind}")
    return out


def _enum_names(enumerators: list[tuple[str, int]]) -> tuple[tuple[int, str], ...]:
    """value -> short name: EXEC_SYSCALL_EXECVE -> "execve".

    Sentinels such as the kernel's `__MAX_BPF_CMD` are not names: they are
    left out, and do not spoil the common prefix (`enum bpf_cmd` fields
    decode to "prog_load").  Of aliases (two names, one value) the first wins.
    """
    enumerators = [(n, v) for n, v in enumerators if not n.startswith("__")]
    names = [n for n, _ in enumerators]
    prefix = os.path.commonprefix(names) if len(names) > 1 else ""
    prefix = prefix[: prefix.rfind("_") + 1]
    out: dict[int, str] = {}
    for n, v in enumerators:
        out.setdefault(v, n[len(prefix) :].lower())
    return tuple(out.items())


def enum_values(btf: bpf.Btf, enum_name: str) -> dict[str, int]:
    t = btf.find(enum_name, bpf.BTF_KIND_ENUM)
    if t is None:
        raise LayoutError(f"enum {enum_name} not found in BTF")
    return dict(t.enumerators())


def layout_of(
    btf: bpf.Btf, kind: str, kind_id: int, struct_name: str | None = None, tail: bool = True
) -> Layout:
    struct_name = struct_name or f"{kind}_event"
    t = btf.find(struct_name, bpf.BTF_KIND_STRUCT)
    if t is None:
        raise LayoutError(f"struct {struct_name} not in the object's BTF (missing VIGIL_RECORD?)")
    fields = _fields(btf, t, 0, "")
    names = [f.name for f in fields]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise LayoutError(f"struct {struct_name}: field names repeat once flattened: {dupes}")
    last = fields.pop() if tail and fields and fields[-1].form == "cstr" else None
    return Layout(kind, kind_id, struct_name, t.size_or_type, tuple(fields), last)


def layouts_of(btf: bpf.Btf) -> dict[int, Layout]:
    """Every record kind whose struct is in this BTF, by kind number."""
    out = {}
    for name, value in enum_values(btf, KIND_ENUM).items():
        kind = name.removeprefix(KIND_PREFIX).lower()
        if btf.find(f"{kind}_event", bpf.BTF_KIND_STRUCT) is not None:
            out[value] = layout_of(btf, kind, value)
    return out


def flag_names(btf: bpf.Btf) -> dict[int, str]:
    return {v: n.removeprefix(FLAG_PREFIX).lower() for n, v in enum_values(btf, FLAG_ENUM).items()}


def header_kind_offset(btf: bpf.Btf) -> int:
    t = btf.find(HEADER_STRUCT, bpf.BTF_KIND_STRUCT)
    if t is None:
        raise LayoutError(f"struct {HEADER_STRUCT} not in BTF")
    for f in _fields(btf, t, 0, ""):
        if f.name == "kind":
            if f.size != 4:
                raise LayoutError("vigil_header.kind must be 32 bits")
            return f.offset
    raise LayoutError("vigil_header has no kind field")


def header_reader(btf: bpf.Btf) -> struct.Struct:
    """A Struct whose unpack_from(record) is the HEAD_FIELDS of its header."""
    layout = layout_of(btf, "header", 0, HEADER_STRUCT, tail=False)
    picked = sorted((f for f in layout.fields if f.name in HEAD_FIELDS), key=lambda f: f.offset)
    if tuple(f.name for f in picked) != HEAD_FIELDS:
        raise LayoutError(f"{HEADER_STRUCT} must declare {', '.join(HEAD_FIELDS)} in this order")
    fmt, pos = ["<"], 0
    for f in picked:
        if f.offset > pos:
            fmt.append(f"{f.offset - pos}x")
        fmt.append(f.code)
        pos = f.offset + f.size
    return struct.Struct("".join(fmt))


# -- layouts kept with what they decode (the store: vigil.outputs.store) -----------------
# A stored record is decoded long after it was written, maybe by another
# build: the store keeps each layout's description beside the records.  The
# description is read from a file anyone with write access could have
# edited, and make_decoder compiles code from it: every value is checked
# for type and form, and names are identifiers, before it is used.
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}\Z")
_CODE = re.compile(r"(?:[1-9][0-9]{0,4}s|[BbHhIiQq])\Z")
_FORMS = ("int", "enum", "cstr", "bytes", "ints")
_MAX_RECORD = 1 << 16


def describe(layout: Layout, flags: dict[int, str]) -> dict:
    """`layout` and the flag names as plain JSON values (see `described`)."""

    def field(f: Field) -> list:
        return [f.name, f.offset, f.size, f.form, f.code, f.count, [list(n) for n in f.names]]

    return {
        "kind": layout.kind,
        "kind_id": layout.kind_id,
        "struct": layout.struct_name,
        "size": layout.size,
        "fields": [field(f) for f in layout.fields],
        "tail": field(layout.tail) if layout.tail else None,
        "flags": sorted([bit, name] for bit, name in flags.items()),
    }


def _int_in(value, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high:
        raise LayoutError(f"{value!r} is not an integer in [{low}, {high}]")
    return value


def _name(value) -> str:
    if type(value) is not str or not _NAME.match(value):
        raise LayoutError(f"{value!r} is not a name")
    return value


def _field(value, size: int) -> Field:
    if type(value) is not list or len(value) != 7:
        raise LayoutError("a field is not a list of 7 values")
    name, offset, fsize, form, code, count, names = value
    if form not in _FORMS or type(code) is not str or not _CODE.match(code):
        raise LayoutError(f"field {name!r}: bad form {form!r} or code {code!r}")
    if type(names) is not list:
        raise LayoutError(f"field {name!r}: bad enum names")
    labels = []
    for pair in names:
        if type(pair) is not list or len(pair) != 2 or type(pair[1]) is not str:
            raise LayoutError(f"field {name!r}: bad enum name")
        labels.append((_int_in(pair[0], -(1 << 63), (1 << 64) - 1), pair[1]))
    offset = _int_in(offset, 0, size)
    fsize = _int_in(fsize, 1, size - offset if size > offset else 1)
    if struct.calcsize("<" + code) != fsize:
        raise LayoutError(f"field {name!r}: code {code!r} is not {fsize} bytes")
    return Field(_name(name), offset, fsize, form, code, _int_in(count, 1, size), tuple(labels))


def described(desc) -> tuple[Layout, dict[int, str]]:
    """A `describe` result (as read back from JSON) -> (layout, flag names);
    LayoutError for anything that is not exactly such a description."""
    if type(desc) is not dict:
        raise LayoutError("a layout description is not an object")
    try:
        size = _int_in(desc["size"], 1, _MAX_RECORD)
        fields = desc["fields"]
        if type(fields) is not list or not fields:
            raise LayoutError("no fields")
        tail = desc["tail"]
        flags = desc["flags"]
        if type(flags) is not list:
            raise LayoutError("bad flag names")
        names: dict[int, str] = {}
        for pair in flags:
            if type(pair) is not list or len(pair) != 2 or type(pair[1]) is not str:
                raise LayoutError("bad flag name")
            names[_int_in(pair[0], 1, (1 << 32) - 1)] = pair[1]
        layout = Layout(
            _name(desc["kind"]),
            _int_in(desc["kind_id"], 0, (1 << 32) - 1),
            _name(desc["struct"]),
            size,
            tuple(_field(f, size) for f in fields),
            None if tail is None else _field(tail, size),
        )
    except KeyError as err:
        raise LayoutError(f"a layout description lacks {err}") from None
    if layout.tail is not None and layout.tail.form != "cstr":
        raise LayoutError("a layout's tail is not text")
    seen = [f.name for f in layout.fields]
    if len(set(seen)) != len(seen) or "ts_ns" not in seen:
        raise LayoutError("a layout's field names repeat, or it has no ts_ns")
    return layout, names


@dataclass(frozen=True, eq=False)
class StoredForm:
    """A layout as the store keeps it beside its undecoded records: the
    `describe` JSON and its digest (equal descriptions, one row)."""

    layout: Layout
    description: str
    digest: str

    @classmethod
    def of(cls, layout: Layout, flags: dict[int, str]) -> StoredForm:
        text = json.dumps(describe(layout, flags), sort_keys=True, separators=(",", ":"))
        return cls(layout, text, digest_of(text))


def digest_of(description: str) -> str:
    """The digest a stored description is kept under (StoredForm.digest)."""
    return hashlib.sha256(description.encode(errors="surrogatepass")).hexdigest()


Decoded = dict
DecodeFn = Callable[[bytes], Decoded]


def make_decoder(layout: Layout, flags: dict[int, str], clock: list[int] | None = None) -> DecodeFn:
    """A function turning one raw record into a dict of its fields.

    ``ts_ns`` (CLOCK_BOOTTIME in the kernel) becomes Unix-epoch nanoseconds
    by adding ``clock[0]``, the current boot-to-epoch offset (a cell, so the
    owner can follow wall-clock steps); ``kind`` becomes the kind's name.

    The function is generated from the layout (as `collections.namedtuple`
    does): one `unpack_from` and one dict display with every field's
    conversion inline, in the struct's order.  A loop over the fields per
    record, the obvious decoder, costs several times more, and decoding is
    done for every event the kernel sends.
    """
    clock = clock if clock is not None else [0]
    fmt, pos = ["<"], 0
    for f in layout.fields:
        if f.offset < pos:
            raise LayoutError(f"{layout.struct_name}.{f.name} overlaps the field before it")
        if f.offset > pos:
            fmt.append(f"{f.offset - pos}x")
        if f.form == "ints":
            raise LayoutError(f"{layout.struct_name}: integer arrays are not supported yet")
        fmt.append(f.code)
        pos = f.offset + f.size
    fixed = layout.fixed_size
    if fixed > pos:
        fmt.append(f"{fixed - pos}x")
    namespace = {
        "_unpack_from": struct.Struct("".join(fmt)).unpack_from,
        "_clock": clock,
        "_flag_bits": tuple(sorted(flags.items())),
        "LayoutError": LayoutError,
    }
    items = []
    for i, f in enumerate(layout.fields):
        value = f"v{i}"
        if f.name == "kind":
            value = repr(layout.kind)
        elif f.name == "ts_ns":
            value = f"v{i} + _clock[0]"
        elif f.form == "cstr":
            value = f"v{i}.partition(b'\\0')[0]"
        elif f.form == "enum":
            namespace[f"_labels{i}"] = dict(f.names)
            value = f"_labels{i}.get(v{i}, v{i})"
        elif f.name == "flags":
            value = f"[n for b, n in _flag_bits if v{i} & b] if v{i} else []"
        items.append(f"{f.name!r}: {value}")
    if layout.tail is not None:
        items.append(f"{layout.tail.name!r}: rec[{fixed}:{fixed + layout.tail.size}]")
    if all(f.name != "kind" for f in layout.fields):
        items.append(f"'kind': {layout.kind!r}")
    unpacked = "".join(f"v{i}, " for i in range(len(layout.fields))) or "_"
    source = (
        "def decode(rec):\n"
        f"    if len(rec) < {fixed}:\n"
        f"        raise LayoutError(f'{layout.kind} record of {{len(rec)}} bytes, "
        f"expected at least {fixed}')\n"
        f"    {unpacked} = _unpack_from(rec)\n"
        f"    return {{{', '.join(items)}}}\n"
    )
    exec(compile(source, f"<decoder of {layout.struct_name}>", "exec"), namespace)  # noqa: S102
    return namespace["decode"]


def struct_decoder(btf: bpf.Btf, struct_name: str) -> tuple[DecodeFn, int]:
    """(decode, size) for any struct in BTF, e.g. a map's key or value.

    Same field rules as records; the result has no `kind`, and `ts_ns` is
    left as the kernel wrote it.
    """
    layout = layout_of(btf, struct_name, 0, struct_name, tail=False)
    decode = make_decoder(layout, {})

    def decode_struct(raw: bytes) -> Decoded:
        out = decode(raw)
        del out["kind"]
        return out

    return decode_struct, layout.size


class Decoder:
    """Decodes records of every kind the loaded objects declare."""

    def __init__(self, boot_offset_ns: int = 0) -> None:
        self.clock = [boot_offset_ns]
        self.layouts: dict[int, Layout] = {}
        self._decoders: dict[int, DecodeFn] = {}
        self._kind_off: int | None = None
        self._kind_struct = struct.Struct("<I")
        self.undecodable = 0
        self.flags: dict[int, str] = {}
        self.head: struct.Struct | None = None  # header_reader
        self.forms: dict[int, StoredForm] = {}  # what the store keeps of each layout
        self.form_of: dict[str, StoredForm] = {}  # the same, by kind name
        # records decode_batch returned (decoded or not), by kind number: the
        # analysis's per-kind counts without another look at each record
        self.counts: dict[int, int] = {}

    def add_btf(self, btf: bpf.Btf) -> None:
        kind_off = header_kind_offset(btf)
        if self._kind_off not in (None, kind_off):
            raise LayoutError("objects disagree on vigil_header layout")
        self._kind_off = kind_off
        head = header_reader(btf)
        if self.head is not None and self.head.format != head.format:
            raise LayoutError("objects disagree on vigil_header layout")
        self.head = head
        flags = self.flags = flag_names(btf)
        for kind_id, layout in layouts_of(btf).items():
            known = self.layouts.get(kind_id)
            if known is not None and known != layout:
                raise LayoutError(f"objects disagree on struct {layout.struct_name}")
            self.layouts[kind_id] = layout
            self.forms[kind_id] = self.form_of[layout.kind] = StoredForm.of(layout, flags)
            self._decoders[kind_id] = make_decoder(layout, flags, self.clock)

    def set_boot_offset(self, offset_ns: int) -> None:
        self.clock[0] = offset_ns

    def kinds(self) -> list[str]:
        return [layout.kind for layout in self.layouts.values()]

    def kind_of(self, rec: bytes) -> str | None:
        """The kind name of a raw record, without decoding it (None: unknown)."""
        if self._kind_off is None or len(rec) < self._kind_off + 4:
            return None
        layout = self.layouts.get(self._kind_struct.unpack_from(rec, self._kind_off)[0])
        return layout.kind if layout is not None else None

    def decode(self, rec: bytes) -> Decoded | None:
        (kind_id,) = self._kind_struct.unpack_from(rec, self._kind_off)
        fn = self._decoders.get(kind_id)
        if fn is None:
            self.undecodable += 1
            return None
        return fn(rec)

    def decode_batch(
        self,
        recs: Iterable[bytes],
        finish: dict[str, Callable[[Decoded], None] | None] | None = None,
        only: frozenset[str] | None = None,
        keep: frozenset[str] = frozenset(),
    ) -> list:
        """Records -> events, in order; `finish` (kind -> hook or None), the
        sensors' finishing touches, is applied to each as it is decoded.

        With `only`, records of other kinds are left as they are (bytes, in
        their place): what no stage reads is stored as the kernel wrote it
        and decoded when read (vigil.outputs.store), rather than turned into
        a dict of Python objects per event at line rate.  An event of a kind
        in `keep` comes with its record, as (event, record): the stages read
        the one, the store writes the other."""
        decoders, unpack, off = self._decoders, self._kind_struct.unpack_from, self._kind_off
        hooks = {}
        if finish:
            hooks = {k: finish.get(layout.kind) for k, layout in self.layouts.items()}
        hook_of = hooks.get
        raw = {}
        if only is not None:
            raw = {
                k: layout.fixed_size
                for k, layout in self.layouts.items()
                if layout.kind not in only
            }
        raw_size = raw.get
        kept = {k for k, layout in self.layouts.items() if layout.kind in keep}
        out = []
        append = out.append
        counts = self.counts
        for rec in recs:
            kind_id = unpack(rec, off)[0]
            fixed = raw_size(kind_id)
            if fixed is not None:
                if len(rec) < fixed:
                    raise LayoutError(f"a record of {len(rec)} bytes, expected at least {fixed}")
                append(rec)
                counts[kind_id] = counts.get(kind_id, 0) + 1
                continue
            fn = decoders.get(kind_id)
            if fn is None:
                self.undecodable += 1
                continue
            ev = fn(rec)
            hook = hook_of(kind_id)
            if hook is not None:
                hook(ev)
            append((ev, rec) if kind_id in kept else ev)
            counts[kind_id] = counts.get(kind_id, 0) + 1
        return out

    def take_counts(self) -> dict[str, int]:
        """Per kind name, the records decode_batch returned since the last call."""
        out: dict[str, int] = {}
        for kind_id, n in self.counts.items():
            kind = self.layouts[kind_id].kind
            out[kind] = out.get(kind, 0) + n
        self.counts = {}
        return out
