"""One spec in the kernel: load the precompiled program, configure, attach, read.

Each Aggregation opens its own instance of argdist.bpf.o (one per spec),
writes the spec into its `.rodata`, keeps the one program the probe type
needs, and attaches it.  The kernel counts; read() / read_hist() take the
counts (and clear them) with batched map reads.
"""

from __future__ import annotations

from .. import _libbpf as bpf
from .. import kernel, paths, records
from ..counters import IDLE_READS, CounterMap  # noqa: F401 (IDLE_READS: tests)
from ..encoding import escape
from ..errors import LayoutError, VigilError
from ..loader import set_rodata
from . import config
from .spec import Expr, Spec, parse

PROGRAMS = {"t": "argdist_tp", "p": "argdist_regs", "r": "argdist_regs", "u": "argdist_usdt"}
COUNTERS = ("dropped", "errors")  # .bss of bpf/argdist.bpf.c
SLOTS = 64  # log2 of a 64-bit value: slots 0..63
DEFAULT_MAX_ENTRIES = 10240  # bcc's default table size


def _s64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


class Aggregation:
    """A spec's counts or histogram, kept in the kernel.

    Use as a context manager (or start()/close()).  read() gives
    [(key, count)], largest count first; read_hist() gives [(key, slots)]
    where slots[i] counts values in [2**i, 2**(i+1)) (slot 0 also holds 0).
    Keys are dicts from the spec's expression text to the value (int, or
    str for strings).  `lost` counts events not counted because the map was
    full, `errors` events whose values could not be read.
    """

    def __init__(self, spec: Spec | str, *, max_entries: int = DEFAULT_MAX_ENTRIES):
        self.spec = parse(spec) if isinstance(spec, str) else spec
        self.max_entries = max_entries
        self._obj: bpf.Object | None = None
        self._links: list[bpf.Link] = []
        self._map: bpf.Map | None = None
        self._decode = None
        self._key_size = 0
        self._counts: CounterMap | None = None

    # -- life cycle -----------------------------------------------------------------
    def start(self) -> Aggregation:
        if self._obj is not None:
            return self
        try:
            self._load()
        except BaseException:
            self.close()
            raise
        return self

    def _load(self) -> None:
        spec = self.spec
        if spec.probe == "t":
            kernel.ensure_tracefs()  # libbpf finds the tracepoint's id there
        obj = self._obj = bpf.Object(paths.bpf_object(config.OBJECT))
        want = PROGRAMS[spec.probe]
        for prog in obj.programs():
            prog.autoload = prog.name == want
        btf = obj.btf()
        sources = config.enum(btf, "argdist_source", "ARGDIST_SRC_")
        flags = config.enum(btf, "argdist_flag", "ARGDIST_F_")
        ops = config.enum(btf, "argdist_op", "ARGDIST_OP_")

        def expr(e: Expr) -> dict:
            bits = 0
            for name, on in (
                ("read_signed", e.read_signed),
                ("signed", e.signed),
                ("string", e.string),
                ("deref", e.deref),
            ):
                if on:
                    bits |= flags[name]
            return {
                "source": sources[e.source],
                "index": e.index,
                "size": e.size,
                "cast": e.cast,
                "flags": bits,
                "div": e.div,
            }

        filters = []
        for f in spec.filters:
            cfg = {"expr": expr(f.expr), "op": ops[f.op]}
            if isinstance(f.value, bytes):
                cfg["str"] = f.value
            else:
                cfg["value"] = _s64(f.value)
            filters.append(cfg)
        layout = key_layout(spec)
        rodata = {
            "key_kind": config.enum(btf, "argdist_key_kind", "ARGDIST_KEY_")[layout],
            "nr_keys": len(spec.keys),
            "nr_filters": len(filters),
            "histogram": int(spec.histogram),
            "keys": [expr(e) for e in spec.keys],
            "filters": filters,
        }
        if spec.value is not None:
            rodata["value"] = expr(spec.value)
        set_rodata(obj, rodata)
        map_name, key_struct = config.KEY_LAYOUTS[layout]
        for name, _struct in config.KEY_LAYOUTS.values():
            obj.map(name).set_max_entries(self.max_entries if name == map_name else 1)
        self._map = obj.map(map_name)
        obj.load()

        decode, size = records.struct_decoder(btf, key_struct)
        if size != self._map.key_size:
            raise LayoutError(f"{key_struct} is {size} bytes, map key {self._map.key_size}")
        self._decode, self._key_size = decode, size
        self._counts = CounterMap(self._map, size)
        prog = obj.program(want)
        pid = spec.pid
        if spec.probe == "t":
            link = prog.attach_tracepoint(spec.target, spec.function)
        elif spec.probe in ("p", "r") and spec.target:
            link = prog.attach_uprobe(spec.target, spec.offset, spec.probe == "r", pid)
        elif spec.probe in ("p", "r"):
            link = prog.attach_kprobe(spec.function, spec.probe == "r")
        else:
            link = prog.attach_usdt(spec.target, spec.provider, spec.function, pid)
        self._links.append(link)

    def close(self) -> None:
        bpf.destroy_links(self._links)
        self._links.clear()
        if self._obj is not None:
            self._obj.close()
            self._obj = None
        self._map = None
        self._counts = None

    def __enter__(self) -> Aggregation:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- reading ----------------------------------------------------------------------
    def _entries(self, clear: bool) -> list[tuple[dict, int, int]]:
        """(key, slot, count) of every entry: with `clear`, the counts since
        the last clearing read (counters.CounterMap: nothing lost to races),
        else the kernel's running totals."""
        if self._counts is None:
            raise VigilError(f"argdist spec {self.spec.text!r} is not started")
        out = []
        for kraw, n in self._counts.read(clear):
            raw = self._decode(kraw)
            key = {}
            for i, e in enumerate(self.spec.keys):
                if e.string:
                    key[e.text] = escape(raw[f"s{i}"])
                else:
                    key[e.text] = _s64(raw[f"v{i}"]) if e.signed else raw[f"v{i}"]
            out.append((key, raw["slot"], n))
        return out

    def read(self, clear: bool = True) -> list[tuple[dict, int]]:
        """[(key, count)] since the last clearing read, largest count first."""
        if self.spec.histogram:
            raise VigilError(f"{self.spec.text!r} is a histogram: use read_hist()")
        rows = [(key, n) for key, _slot, n in self._entries(clear)]
        return sorted(rows, key=lambda r: (-r[1], _order(r[0])))

    def read_hist(self, clear: bool = True) -> list[tuple[dict, list[int]]]:
        """[(key without the value, slot counts)], ordered by key."""
        if not self.spec.histogram:
            raise VigilError(f"{self.spec.text!r} counts: use read()")
        hists: dict[tuple, tuple[dict, list[int]]] = {}
        for key, slot, n in self._entries(clear):
            _key, slots = hists.setdefault(tuple(key.items()), (key, [0] * SLOTS))
            slots[min(slot, SLOTS - 1)] += n
        return sorted(hists.values(), key=lambda r: _order(r[0]))

    def _counter(self, name: str) -> int:
        if self._obj is None:
            return 0
        return config.read_counters(self._obj, COUNTERS)[name]

    @property
    def lost(self) -> int:
        """Events not counted: the map was full (raise max_entries)."""
        return self._counter("dropped")

    @property
    def errors(self) -> int:
        """Events not counted: a value could not be read (e.g. a paged-out string)."""
        return self._counter("errors")


def key_layout(spec: Spec) -> str:
    """The smallest key layout that holds the spec's keys (config.KEY_LAYOUTS)."""
    strings = [e for e in spec.keys if e.string]
    if not strings:
        return "num"
    comm_len = config.limits().comm_len
    if all(
        e.source in ("comm", "pcomm") or (e.source == "field_chars" and e.size <= comm_len)
        for e in strings
    ):
        return "comm"
    return "long"


def _order(key: dict) -> tuple:
    return tuple((isinstance(v, str), v) for v in key.values())
