"""bcc argdist's probe specifier, parsed and resolved against the running system.

    TYPE:TARGET:FUNC[(SIGNATURE)][:VALUE_TYPES:EXPRS[:FILTER]][#LABEL]

    t:CATEGORY:EVENT()           a tracepoint; names are its fields (tracefs)
    p:BINARY:FUNC(SIGNATURE)     uprobe at FUNC's entry; arg1..arg6 or signature names
    r:BINARY:FUNC()              uretprobe; $retval
    u:BINARY[:PROVIDER]:PROBE()  USDT probe; arg1..arg12 or signature names
    p::FUNC / r::FUNC            kernel function (kprobe), where the kernel has them

EXPRS is a comma list of names, each optionally divided by a constant
(`bytes/1024`); with -H the first is the histogram's value and the rest
group it.  Every probe type also has `comm`, `pcomm` (the parent's comm),
`pid`, `tid`, `uid`, `gid`, `ppid`, `cgroup` and `cpu` (`$comm`... when a
tracepoint field has the same name).  VALUE_TYPES is one C type per
expression, or one type for them all (strings stay strings).  FILTER is
`NAME OP CONSTANT` joined by `&&`, OP one of == != < <= > >= (strings:
== and != only); it runs in the kernel.

Everything is checked here, before anything is loaded: a bad spec is one
ConfigError naming the part that is wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from .. import elf, kernel
from ..encoding import as_text, unescape
from ..errors import ConfigError
from . import config, targets, tracefs

PROBE_TYPES = ("t", "p", "r", "u")

# name -> (bytes, signed)
_WIDTHS = (
    ((1, True), ("char", "s8", "int8_t", "__s8", "signed char")),
    ((1, False), ("u8", "uint8_t", "__u8", "unsigned char", "bool", "_Bool")),
    ((2, True), ("short", "short int", "s16", "int16_t", "__s16", "signed short")),
    ((2, False), ("u16", "uint16_t", "__u16", "unsigned short", "ushort")),
    ((4, True), ("int", "s32", "int32_t", "__s32", "signed", "signed int", "pid_t")),
    (
        (4, False),
        ("u32", "uint32_t", "__u32", "unsigned", "unsigned int", "uint", "uid_t", "gid_t", "dev_t"),
    ),
    (
        (8, True),
        ("long", "long int", "long long", "s64", "int64_t", "__s64", "ssize_t", "off_t", "loff_t"),
    ),
    (
        (8, False),
        (
            "u64",
            "uint64_t",
            "__u64",
            "unsigned long",
            "unsigned long long",
            "ulong",
            "size_t",
            "sector_t",
            "uintptr_t",
        ),
    ),
)
NUMERIC_TYPES = {name: width for width, names in _WIDTHS for name in names}
STRING_TYPES = {"char*", "string", "str"}

# name -> (source, (bytes, signed) or None for strings)
SPECIALS: dict[str, tuple[str, tuple[int, bool] | None]] = {
    "comm": ("comm", None),
    "pcomm": ("pcomm", None),
    "pid": ("pid", (4, False)),
    "tid": ("tid", (4, False)),
    "uid": ("uid", (4, False)),
    "gid": ("gid", (4, False)),
    "ppid": ("ppid", (4, False)),
    "cgroup": ("cgroup", (8, False)),
    "cpu": ("cpu", (4, False)),
}
OPS = {"==": "eq", "!=": "ne", "<": "lt", "<=": "le", ">": "gt", ">=": "ge"}
MAX_REGS_ARGS = 6  # PT_REGS_PARM1..6
MAX_USDT_ARGS = 12  # libbpf's BPF_USDT_MAX_ARG_CNT

_EXPR = re.compile(r"^(?P<name>\$?[A-Za-z_]\w*)\s*(?:/\s*(?P<div>0[xX][0-9a-fA-F]+|\d+))?$")
_ARG = re.compile(r"^arg(\d+)$")
_FILTER = re.compile(r"^\s*(?P<lhs>.+?)\s*(?P<op>==|!=|<=|>=|<|>)\s*(?P<rhs>.+?)\s*$")
_PARAM = re.compile(r"^(?P<type>.*?)(?P<name>[A-Za-z_]\w*)$")


@dataclass(frozen=True)
class Expr:
    """One expression, resolved: where the kernel reads it and how it is typed."""

    text: str  # as written: the key's name ("cap", "arg1", "$retval", "bytes/1024")
    source: str  # enum argdist_source, short name: "field", "arg", "comm", ...
    type: str  # the C type it is counted as ("int", "u32", "char*", "char[16]")
    index: int = 0  # tracepoint field offset, or argument number
    size: int = 0  # bytes of the tracepoint field read
    read_signed: bool = False  # the field read is signed
    cast: int = 8  # bytes of the type (numbers)
    signed: bool = False
    string: bool = False
    deref: bool = False  # a pointer to a string, read as the string
    div: int = 0
    pointer: bool = False  # may be read as a string pointer (char*)


@dataclass(frozen=True)
class Filter:
    expr: Expr
    op: str  # "eq", "ne", "lt", "le", "gt", "ge"
    value: int | bytes
    text: str


@dataclass(frozen=True)
class Spec:
    """A parsed, checked spec: what Aggregation loads."""

    text: str
    probe: str  # t, p, r, u
    target: str  # tracepoint category, or the binary's path ("" = kernel)
    function: str  # tracepoint event, function symbol or USDT probe name
    histogram: bool
    keys: tuple[Expr, ...]  # in key order
    value: Expr | None = None  # -H: the expression whose log2 is counted
    filters: tuple[Filter, ...] = ()
    provider: str = ""  # USDT
    offset: int = 0  # uprobe: the function's file offset
    label: str = ""
    pid: int = -1  # attach uprobes/USDT to this process only
    default: bool = False  # no expression: count calls

    @property
    def key_names(self) -> list[str]:
        return [e.text for e in self.keys]

    @property
    def title(self) -> str:
        return self.label or self.text


def _split(text: str, sep: str) -> list[str]:
    """Split on `sep` outside parentheses and quotes."""
    parts, depth, quote, cur = [], 0, "", []
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur))
    return parts


def _norm_type(text: str) -> str:
    t = re.sub(r"\s*\*", "*", " ".join(text.split()))
    return t.removeprefix("const ").removeprefix("struct ")


def _type_width(typ: str, what: str) -> tuple[int, bool] | None:
    """(bytes, signed) of a numeric type; None for a string type."""
    t = _norm_type(typ)
    if t in STRING_TYPES or t == "char*":
        return None
    if t in NUMERIC_TYPES:
        return NUMERIC_TYPES[t]
    if t.endswith("*"):
        return (8, False)  # other pointers: the address
    raise ConfigError(
        f"bad type {typ!r} for {what}: use a C integer type (int, u32, long, size_t...) or char*"
    )


class _Probe:
    """What names mean at one probe: tracepoint fields, signature, specials."""

    def __init__(self, probe: str, where: str, fields=None, params=None, usdt_args: int = 0):
        self.probe = probe
        self.where = where  # for messages: "tracepoint capability:cap_capable"
        self.fields: dict[str, tracefs.TpField] = fields or {}
        self.params: dict[str, tuple[int, str | None]] = params or {}
        self.usdt_args = usdt_args

    def resolve(self, text: str) -> Expr:
        m = _EXPR.match(text.strip())
        if not m:
            raise ConfigError(
                f"bad expression {text!r} in {self.where}: expected a name"
                " (a field, argN, $retval, comm, pid...) optionally /CONSTANT"
            )
        name, div = m["name"], int(m["div"], 0) if m["div"] else 0
        if m["div"] and div == 0:
            raise ConfigError(f"bad expression {text!r}: division by zero")
        e = self._name(name)
        if div and e.string:
            raise ConfigError(f"bad expression {text!r}: {name} is a string")
        return replace(
            e, text=" ".join(text.split()).replace(" /", "/").replace("/ ", "/"), div=div
        )

    def _name(self, name: str) -> Expr:
        bare = name.removeprefix("$")
        if name == "$retval":
            if self.probe != "r":
                raise ConfigError(f"$retval in {self.where}: only r: probes have a return value")
            return Expr(name, "retval", "long", cast=8, signed=True, pointer=True)
        if not name.startswith("$"):
            if self.probe == "t" and name in self.fields:
                return self._field(self.fields[name])
            if name in self.params:
                pos, typ = self.params[name]
                e = self._arg(name, pos)
                return _typed(e, typ, True) if typ else e
            m = _ARG.match(name)
            if m and self.probe != "t":
                return self._arg(name, int(m[1]))
        if bare in SPECIALS:
            source, width = SPECIALS[bare]
            if width is None:
                return Expr(name, source, "char[16]", cast=0, string=True)
            return Expr(name, source, "u64" if width[0] == 8 else "u32", cast=width[0])
        if self.probe == "t":
            usable = [n for n in self.fields if n == "common_pid" or not n.startswith("common_")]
            known = ", ".join(usable) or "none"
            raise ConfigError(
                f"unknown field {name!r} of {self.where} (fields: {known};"
                f" and {', '.join(SPECIALS)})"
            )
        raise ConfigError(
            f"unknown name {name!r} in {self.where}: use arg1..argN"
            + (", $retval" if self.probe == "r" else "")
            + f", a signature name or one of {', '.join(SPECIALS)}"
        )

    def _arg(self, name: str, pos: int) -> Expr:
        if self.probe == "r":
            raise ConfigError(
                f"{name} in {self.where}: arguments are gone at return; use a p: probe"
            )
        if self.probe == "u":
            if not 1 <= pos <= self.usdt_args:
                raise ConfigError(f"{name}: {self.where} has {self.usdt_args} argument(s)")
            return Expr(name, "usdt_arg", "long", index=pos, cast=8, signed=True, pointer=True)
        if not 1 <= pos <= MAX_REGS_ARGS:
            raise ConfigError(f"{name}: only arguments 1..{MAX_REGS_ARGS} are in registers")
        return Expr(name, "arg", "long", index=pos, cast=8, signed=True, pointer=True)

    def _field(self, f: tracefs.TpField) -> Expr:
        # BPF never sees a record's common header: perf_trace_run_bpf_submit()
        # writes the pt_regs pointer over its first 8 bytes before running
        # the program.  common_pid is the current thread's id: read that.
        if f.name == "common_pid":
            return Expr(f.name, "tid", f.ctype, cast=f.size, signed=f.signed)
        if f.name.startswith("common_") and f.offset < 8:
            raise ConfigError(
                f"field {f.name} of {self.where} is not visible to BPF (the kernel"
                " overwrites the record header before BPF runs)"
            )
        kind = f.kind
        base = {"text": f.name, "type": f.ctype, "index": f.offset, "size": f.size}
        if kind == "int":
            return Expr(**base, source="field", read_signed=f.signed, cast=f.size, signed=f.signed)
        if kind == "pointer":
            return Expr(**base, source="field", cast=8, pointer=True)
        if kind == "chars":
            return Expr(**base, source="field_chars", cast=0, string=True)
        if kind in ("dataloc", "relloc"):
            return Expr(**base, source=f"field_{kind}", cast=0, string=True)
        raise ConfigError(
            f"field {f.name} of {self.where} is {f.ctype}: neither a number nor a string"
        )


def _typed(e: Expr, typ: str, strict: bool) -> Expr:
    """`e` counted as C type `typ`."""
    if not e.pointer and _norm_type(typ) == _norm_type(e.type):
        return e  # a tracepoint field's own type (dev_t, sector_t, char[16]...)
    width = _type_width(typ, e.text)
    if width is None:
        if e.string:
            return e
        if e.pointer:
            return replace(e, type="char*", string=True, deref=True, cast=0)
        if not strict:
            return e  # one type for several expressions: where it fits
        raise ConfigError(f"{e.text} is a number ({e.type}), not a string pointer: cannot be {typ}")
    if e.string:
        if strict:
            raise ConfigError(
                f"{e.text} is a string ({e.type}): it cannot be used as a number ({typ})"
            )
        return e
    return replace(e, type=_norm_type(typ), cast=width[0], signed=width[1])


def _signature(sig: str, where: str) -> dict[str, tuple[int, str | None]]:
    """bcc's `func(int fd, char *buf)`: name -> (position, type)."""
    out: dict[str, tuple[int, str | None]] = {}
    sig = sig.strip()
    if not sig or sig == "void":
        return out
    for pos, param in enumerate(sig.split(","), 1):
        m = _PARAM.match(param.strip())
        if not m or not m["type"].strip():
            raise ConfigError(f"bad parameter {param.strip()!r} in the signature of {where}")
        typ = m["type"].strip()
        _type_width(typ, m["name"])  # a bad type fails here, naming the parameter
        out[m["name"]] = (pos, typ)
    return out


def _parse_filter(text: str, probe: _Probe, exprs: dict[str, Expr], str_len: int) -> Filter:
    m = _FILTER.match(text)
    if not m:
        raise ConfigError(
            f"bad filter {text.strip()!r}: expected NAME OP CONSTANT, OP one of"
            f" {' '.join(OPS)} (several joined by &&)"
        )
    lhs = " ".join(m["lhs"].split())
    e = exprs.get(lhs) or probe.resolve(lhs)
    rhs = m["rhs"]
    if e.string:
        if m["op"] not in ("==", "!="):
            raise ConfigError(f"bad filter {text.strip()!r}: strings take == and != only")
        if len(rhs) >= 2 and rhs[0] == rhs[-1] and rhs[0] in "'\"":
            rhs = rhs[1:-1]
        # the kernel's strings are bytes: raw, or \xHH as Vigil prints them
        raw = unescape(rhs)
        # 2 bytes short of the kernel's buffer: a longer string, cut there, never matches
        if len(raw) > str_len - 2:
            raise ConfigError(
                f"bad filter {text.strip()!r}: string constants are {str_len - 2} bytes at most"
            )
        return Filter(e, OPS[m["op"]], raw, text.strip())
    try:
        value = int(rhs, 0)
    except ValueError:
        raise ConfigError(
            f"bad filter {text.strip()!r}: {rhs!r} is not an integer ({lhs} is {e.type})"
        ) from None
    if not -(1 << 63) <= value < (1 << 64):
        raise ConfigError(f"bad filter {text.strip()!r}: {rhs} does not fit 64 bits")
    return Filter(e, OPS[m["op"]], value, text.strip())


def _kprobe(func: str, probe: str) -> None:
    if not kernel.available("kprobe"):
        raise ConfigError(
            f"{probe}::{func}: kernel functions need kprobes, which this kernel lacks;"
            " use a tracepoint (t:CATEGORY:EVENT)"
        )
    if not kernel.target_exists("kprobe", func):
        raise ConfigError(f"{probe}::{func}: no such kernel function")


def parse(text: str, histogram: bool = False, *, pid: int | None = None) -> Spec:
    """A spec from its text (-C: counts; -H, `histogram`: log2 histogram).

    `pid` keeps one process's events only (in the kernel; uprobes and USDT
    are also attached to that process only).
    """
    # Non-UTF-8 bytes from the command line (surrogates in Python) become
    # \xHH, as Vigil prints strings: string constants read them back as bytes.
    raw = as_text(text.strip())
    body, label = raw, ""
    close = body.rfind(")")
    hash_at = body.find("#", close + 1)
    if hash_at >= 0:
        body, label = body[:hash_at], body[hash_at + 1 :].strip()
    parts = _split(body, ":")
    probe = parts[0].strip()
    if probe not in PROBE_TYPES:
        raise ConfigError(
            f"bad probe type {probe!r} in {raw!r}: expected t (tracepoint), p (entry),"
            " r (return) or u (USDT)"
        )
    provider = None
    if probe == "u" and len(parts) > 3 and "(" not in parts[2]:
        provider = parts[2].strip()
        del parts[2]
    if len(parts) < 3 or not parts[2].strip():
        raise ConfigError(f"bad spec {raw!r}: expected {probe}:TARGET:FUNCTION()")
    target, func_part, rest = parts[1].strip(), parts[2].strip(), parts[3:]
    fm = re.match(r"^(?P<func>[^()\s]+)\s*(?:\((?P<sig>.*)\))?$", func_part)
    if not fm:
        raise ConfigError(f"bad function {func_part!r} in {raw!r}: expected NAME(SIGNATURE)")
    func, sig = fm["func"], fm["sig"] or ""

    lim = config.limits()
    offset, nargs, fields = 0, 0, {}
    if probe == "t":
        if not target:
            raise ConfigError(f"bad spec {raw!r}: t:CATEGORY:EVENT() needs a category")
        where = f"tracepoint {target}:{func}"
        fields = tracefs.fields(target, func)
        if sig.strip():
            raise ConfigError(f"{where}: tracepoints take no signature (its fields are its names)")
    elif probe in ("p", "r"):
        if target:
            target = targets.binary(target)
            offset = elf.symbol_offset(target, func)
            where = f"{target}:{func}"
        else:
            _kprobe(func, probe)
            where = f"kernel function {func}"
    else:
        if not target:
            raise ConfigError(f"bad spec {raw!r}: u:BINARY:PROVIDER:PROBE() needs a binary")
        target = targets.binary(target)
        provider, nargs = targets.usdt_probe(target, provider, func)
        where = f"USDT probe {provider}:{func} of {target}"
    params = _signature(sig, where) if probe != "t" else {}
    ctx = _Probe(probe, where, fields, params, nargs)

    default = False
    if not rest:
        if histogram and probe != "r":
            raise ConfigError(f"{raw!r}: a histogram needs a value (TYPE:EXPRESSION)")
        default = True
        rest = ["int", "$retval"] if probe == "r" else []
    elif len(rest) == 1:
        raise ConfigError(f"bad spec {raw!r}: a type needs an expression after it (TYPE:EXPR)")
    types = [t.strip() for t in _split(rest[0], ",")] if rest else []
    texts = [x.strip() for x in _split(rest[1], ",")] if len(rest) > 1 else []
    if any(not x for x in texts) or any(not t for t in types):
        raise ConfigError(f"bad spec {raw!r}: empty type or expression")
    if len(types) not in (1, len(texts)) and texts:
        raise ConfigError(
            f"bad spec {raw!r}: {len(types)} types for {len(texts)} expressions"
            " (give one type, or one per expression)"
        )
    exprs = []
    for i, t in enumerate(texts):
        typ = types[i] if len(types) == len(texts) else types[0]
        strict = len(types) == len(texts)
        exprs.append(_typed(ctx.resolve(t), typ, strict))
    names = [e.text for e in exprs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"bad spec {raw!r}: {', '.join(dupes)} given twice")

    value = None
    if histogram:
        value, exprs = exprs[0], exprs[1:]
        if value.string:
            raise ConfigError(
                f"{value.text} is a string ({value.type}): a histogram needs a number"
            )
    if len(exprs) > lim.keys:
        raise ConfigError(f"bad spec {raw!r}: at most {lim.keys} key expressions")

    filters = []
    filter_text = ":".join(rest[2:]).strip()
    if filter_text:
        known = {e.text: e for e in exprs + ([value] if value else [])}
        filters = [_parse_filter(f, ctx, known, lim.filter_len) for f in filter_text.split("&&")]
    if pid is not None:
        filters.append(Filter(ctx.resolve("$pid"), "eq", pid, f"pid=={pid}"))
    if len(filters) > lim.filters:
        raise ConfigError(f"bad filter in {raw!r}: at most {lim.filters} conditions")
    return Spec(
        text=raw,
        probe=probe,
        target=target,
        function=func,
        histogram=histogram,
        keys=tuple(exprs),
        value=value,
        filters=tuple(filters),
        provider=provider or "",
        offset=offset,
        label=label,
        pid=-1 if pid is None else pid,
        default=default and probe != "r",
    )
