"""The one ctypes binding: libbpf.so.1 (Debian's libbpf1) and nothing else.

Every symbol used by Vigil is declared here with its argtypes and restype.
libbpf 1.x returns NULL with errno set, or a negative errno; both become
:class:`vigil.errors.BpfError` naming what failed.  The rest of the package
talks to the small classes at the bottom (``Object``, ``Program``, ``Map``,
``Link``, ``Btf``) and never to ctypes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import mmap
import os
import platform
import struct
import time
from collections import deque
from collections.abc import Iterator
from ctypes import (
    CFUNCTYPE,
    POINTER,
    c_bool,
    c_char_p,
    c_int,
    c_size_t,
    c_uint32,
    c_uint64,
    c_void_p,
)

from .errors import BpfError

log = logging.getLogger("vigil.libbpf")

_lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def _fn(name: str, restype, *argtypes):
    f = getattr(_lib, name)
    f.restype = restype
    f.argtypes = list(argtypes)
    return f


# -- objects and programs -----------------------------------------------------
_open_file = _fn("bpf_object__open_file", c_void_p, c_char_p, c_void_p)
_obj_load = _fn("bpf_object__load", c_int, c_void_p)
_obj_close = _fn("bpf_object__close", None, c_void_p)
_obj_next_program = _fn("bpf_object__next_program", c_void_p, c_void_p, c_void_p)
_obj_find_map = _fn("bpf_object__find_map_by_name", c_void_p, c_void_p, c_char_p)
_obj_next_map = _fn("bpf_object__next_map", c_void_p, c_void_p, c_void_p)
_obj_btf = _fn("bpf_object__btf", c_void_p, c_void_p)
_prog_name = _fn("bpf_program__name", c_char_p, c_void_p)
_prog_section = _fn("bpf_program__section_name", c_char_p, c_void_p)
_prog_set_autoload = _fn("bpf_program__set_autoload", c_int, c_void_p, c_bool)
_prog_autoload = _fn("bpf_program__autoload", c_bool, c_void_p)
_prog_fd = _fn("bpf_program__fd", c_int, c_void_p)
_prog_set_attach_target = _fn("bpf_program__set_attach_target", c_int, c_void_p, c_int, c_char_p)

# -- attach --------------------------------------------------------------------
_attach = _fn("bpf_program__attach", c_void_p, c_void_p)
_attach_tracepoint = _fn("bpf_program__attach_tracepoint", c_void_p, c_void_p, c_char_p, c_char_p)
_attach_raw_tp = _fn("bpf_program__attach_raw_tracepoint", c_void_p, c_void_p, c_char_p)
_attach_trace = _fn("bpf_program__attach_trace", c_void_p, c_void_p)
_attach_lsm = _fn("bpf_program__attach_lsm", c_void_p, c_void_p)
_attach_kprobe = _fn("bpf_program__attach_kprobe", c_void_p, c_void_p, c_bool, c_char_p)
_attach_uprobe = _fn(
    "bpf_program__attach_uprobe", c_void_p, c_void_p, c_bool, c_int, c_char_p, c_size_t
)
_attach_usdt = _fn(
    "bpf_program__attach_usdt",
    c_void_p,
    c_void_p,
    c_int,
    c_char_p,
    c_char_p,
    c_char_p,
    c_void_p,
)
_attach_cgroup = _fn("bpf_program__attach_cgroup", c_void_p, c_void_p, c_int)
_link_destroy = _fn("bpf_link__destroy", c_int, c_void_p)

# -- maps ----------------------------------------------------------------------
_map_name = _fn("bpf_map__name", c_char_p, c_void_p)
_map_fd = _fn("bpf_map__fd", c_int, c_void_p)
_map_type = _fn("bpf_map__type", c_int, c_void_p)
_map_key_size = _fn("bpf_map__key_size", c_uint32, c_void_p)
_map_value_size = _fn("bpf_map__value_size", c_uint32, c_void_p)
_map_max_entries = _fn("bpf_map__max_entries", c_uint32, c_void_p)
_map_set_max_entries = _fn("bpf_map__set_max_entries", c_int, c_void_p, c_uint32)
_map_reuse_fd = _fn("bpf_map__reuse_fd", c_int, c_void_p, c_int)
_map_initial_value = _fn("bpf_map__initial_value", c_void_p, c_void_p, POINTER(c_size_t))
_map_create = _fn("bpf_map_create", c_int, c_int, c_char_p, c_uint32, c_uint32, c_uint32, c_void_p)
_map_lookup = _fn("bpf_map_lookup_elem", c_int, c_int, c_void_p, c_void_p)
_map_update = _fn("bpf_map_update_elem", c_int, c_int, c_void_p, c_void_p, c_uint64)
_map_delete = _fn("bpf_map_delete_elem", c_int, c_int, c_void_p)
_map_next_key = _fn("bpf_map_get_next_key", c_int, c_int, c_void_p, c_void_p)
_BATCH_ARGS = (c_int, c_void_p, c_void_p, c_void_p, c_void_p, POINTER(c_uint32), c_void_p)
_map_lookup_batch = _fn("bpf_map_lookup_batch", c_int, *_BATCH_ARGS)
_map_lookup_and_delete_batch = _fn("bpf_map_lookup_and_delete_batch", c_int, *_BATCH_ARGS)
_num_cpus = _fn("libbpf_num_possible_cpus", c_int)

# -- BTF -----------------------------------------------------------------------
_btf_parse = _fn("btf__parse", c_void_p, c_char_p, c_void_p)
_btf_vmlinux = _fn("btf__load_vmlinux_btf", c_void_p)
_btf_free = _fn("btf__free", None, c_void_p)
_btf_type_cnt = _fn("btf__type_cnt", c_uint32, c_void_p)
_btf_type_by_id = _fn("btf__type_by_id", c_void_p, c_void_p, c_uint32)
_btf_name = _fn("btf__name_by_offset", c_char_p, c_void_p, c_uint32)
_btf_find = _fn("btf__find_by_name_kind", c_int, c_void_p, c_char_p, c_uint32)

# -- libbpf's own log: into Python logging, the last lines kept for errors ----
_PRINT_FN = CFUNCTYPE(c_int, c_int, c_char_p, c_void_p)
_set_print = _fn("libbpf_set_print", c_void_p, _PRINT_FN)
_vsnprintf = _libc.vsnprintf
_vsnprintf.restype = c_int
_vsnprintf.argtypes = [c_char_p, c_size_t, c_char_p, c_void_p]

_recent_log: deque[str] = deque(maxlen=40)
_LEVELS = (logging.WARNING, logging.INFO, logging.DEBUG)


_print_buf = ctypes.create_string_buffer(1 << 20)


@_PRINT_FN
def _on_libbpf_print(level: int, fmt: bytes, args: int) -> int:
    # x86-64 va_list is an array type: it reaches us as a pointer, which is
    # exactly what vsnprintf takes.
    # libbpf prints a rejected program's whole verifier log in one call, the
    # reason last: a short buffer would keep its start and lose the reason.
    buf = _print_buf
    n = _vsnprintf(buf, len(buf), fmt, args)
    text = buf.value.decode("utf-8", "replace").rstrip("\n")
    for line in text.splitlines():
        _recent_log.append(line)
    log.log(_LEVELS[min(level, 2)], "%s", text)
    return n


_set_print(_on_libbpf_print)

# Constants of the kernel UAPI (linux/bpf.h, linux/btf.h): stable numbers.
BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_PERCPU_HASH = 5
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_RINGBUF = 27
BPF_ANY = 0
BTF_KIND_INT, BTF_KIND_PTR, BTF_KIND_ARRAY, BTF_KIND_STRUCT, BTF_KIND_UNION = 1, 2, 3, 4, 5
BTF_KIND_ENUM, BTF_KIND_FWD, BTF_KIND_TYPEDEF, BTF_KIND_VOLATILE, BTF_KIND_CONST = 6, 7, 8, 9, 10
BTF_KIND_RESTRICT, BTF_KIND_FUNC, BTF_KIND_FUNC_PROTO, BTF_KIND_VAR = 11, 12, 13, 14
BTF_KIND_DATASEC, BTF_KIND_FLOAT, BTF_KIND_DECL_TAG, BTF_KIND_TYPE_TAG = 15, 16, 17, 18
BTF_KIND_ENUM64 = 19
PERCPU_MAP_TYPES = {BPF_MAP_TYPE_PERCPU_HASH, BPF_MAP_TYPE_PERCPU_ARRAY}


def recent_log(lines: int = 6) -> str:
    """The last lines libbpf printed: the verifier's or loader's reason."""
    return "\n".join(list(_recent_log)[-lines:])


def _last_errno() -> int:
    return ctypes.get_errno() or errno.EINVAL


def _check_ptr(ptr: int | None, what: str) -> int:
    if not ptr:
        raise BpfError(what, _last_errno(), recent_log())
    return ptr


def _check_rc(rc: int, what: str) -> int:
    if rc < 0:
        raise BpfError(what, -rc if rc != -1 else _last_errno(), recent_log())
    return rc


def num_possible_cpus() -> int:
    return _check_rc(_num_cpus(), "libbpf_num_possible_cpus")


# -- BTF -----------------------------------------------------------------------
_TYPE_HDR = struct.Struct("<III")


class BtfType:
    """One BTF type record, decoded from libbpf's ``struct btf_type``."""

    __slots__ = ("id", "name", "kind", "vlen", "kind_flag", "size_or_type", "_ptr", "_btf")

    def __init__(self, btf: Btf, type_id: int):
        ptr = _check_ptr(_btf_type_by_id(btf._ptr, type_id), f"btf type {type_id}")
        name_off, info, size_or_type = _TYPE_HDR.unpack(ctypes.string_at(ptr, 12))
        self.id = type_id
        self._btf = btf
        self._ptr = ptr
        self.name = btf.name(name_off)
        self.vlen = info & 0xFFFF
        self.kind = (info >> 24) & 0x1F
        self.kind_flag = bool(info >> 31)
        self.size_or_type = size_or_type

    def _extra(self, fmt: str, count: int = 1) -> list[tuple]:
        rec = struct.Struct("<" + fmt)
        raw = ctypes.string_at(self._ptr + 12, rec.size * count)
        return list(rec.iter_unpack(raw))

    def int_encoding(self) -> tuple[int, bool]:
        """(bits, signed) of an INT."""
        (enc,) = self._extra("I")[0]
        return enc & 0xFF, bool((enc >> 24) & 1)

    def array(self) -> tuple[int, int]:
        """(element type id, element count) of an ARRAY."""
        elem, _index, nelems = self._extra("III")[0]
        return elem, nelems

    def members(self) -> list[tuple[str, int, int, int]]:
        """(name, type id, bit offset, bitfield size) of a STRUCT/UNION."""
        out = []
        for name_off, type_id, offset in self._extra("III", self.vlen):
            if self.kind_flag:
                out.append((self._btf.name(name_off), type_id, offset & 0xFFFFFF, offset >> 24))
            else:
                out.append((self._btf.name(name_off), type_id, offset, 0))
        return out

    def enumerators(self) -> list[tuple[str, int]]:
        if self.kind == BTF_KIND_ENUM64:
            return [
                (self._btf.name(n), lo | (hi << 32)) for n, lo, hi in self._extra("III", self.vlen)
            ]
        fmt = "Ii" if self.kind_flag else "II"
        return [(self._btf.name(n), v) for n, v in self._extra(fmt, self.vlen)]

    def datasec_vars(self) -> list[tuple[int, int, int]]:
        """(var type id, offset, size) of a DATASEC."""
        return [tuple(v) for v in self._extra("III", self.vlen)]


class Btf:
    """Read access to a BTF blob (an object's, a file's or the kernel's)."""

    def __init__(self, ptr: int, owned: bool):
        self._ptr = ptr
        self._owned = owned
        self._names: dict[int, str] = {}

    @classmethod
    def from_file(cls, path: str) -> Btf:
        return cls(_check_ptr(_btf_parse(os.fsencode(path), None), f"btf__parse {path}"), True)

    @classmethod
    def vmlinux(cls) -> Btf:
        return cls(_check_ptr(_btf_vmlinux(), "btf__load_vmlinux_btf"), True)

    def close(self) -> None:
        if self._owned and self._ptr:
            _btf_free(self._ptr)
        self._ptr = 0

    def name(self, off: int) -> str:
        try:
            return self._names[off]
        except KeyError:
            raw = _btf_name(self._ptr, off)
            name = raw.decode() if raw else ""
            self._names[off] = name
            return name

    def type(self, type_id: int) -> BtfType:
        return BtfType(self, type_id)

    def type_count(self) -> int:
        return _btf_type_cnt(self._ptr)

    def find(self, name: str, kind: int) -> BtfType | None:
        tid = _btf_find(self._ptr, name.encode(), kind)
        return None if tid < 0 else self.type(tid)


# -- links, programs, maps, objects ----------------------------------------------
class Link:
    def __init__(self, ptr: int, what: str):
        self._ptr = ptr
        self.what = what

    def destroy(self) -> None:
        if self._ptr:
            _link_destroy(self._ptr)
            self._ptr = 0


def destroy_links(links: list[Link]) -> None:
    """Detach all of `links`, one after another.  Detaching a perf-event
    tracepoint waits for RCU grace periods (tracepoint_synchronize_unregister,
    50-80 ms here) under the kernel's event_mutex, so `vigil monitor`'s 75
    links take 4-6 s to stop.  Detaching from threads overlapped the other
    links' waits (6.6 s -> 4.7 s) but a 6.1 guest of the kernel matrix then
    hung in a soft lockup once, in a test's detach: not worth 2 s."""
    for link in links:
        link.destroy()


class Program:
    def __init__(self, ptr: int, obj: Object):
        self._ptr = ptr
        self.obj = obj
        self.name = _prog_name(ptr).decode()
        self.section = _prog_section(ptr).decode()

    @property
    def autoload(self) -> bool:
        return bool(_prog_autoload(self._ptr))

    @autoload.setter
    def autoload(self, on: bool) -> None:
        _check_rc(_prog_set_autoload(self._ptr, on), f"set autoload of {self.name}")

    @property
    def fd(self) -> int:
        return _prog_fd(self._ptr)

    def set_attach_target(self, func: str) -> None:
        what = f"set attach target of {self.name} to {func}"
        _check_rc(_prog_set_attach_target(self._ptr, 0, func.encode()), what)

    def _link(self, ptr: int | None, target: str) -> Link:
        what = f"attach {self.obj.name}:{self.name} to {target}"
        return Link(_check_ptr(ptr, what), what)

    def attach(self) -> Link:
        """Attach where the program's SEC() says (tracepoint, raw_tp, tp_btf, ...)."""
        return self._link(_attach(self._ptr), self.section)

    def attach_tracepoint(self, category: str, name: str) -> Link:
        ptr = _attach_tracepoint(self._ptr, category.encode(), name.encode())
        return self._link(ptr, f"tracepoint {category}:{name}")

    def attach_raw_tracepoint(self, name: str) -> Link:
        return self._link(_attach_raw_tp(self._ptr, name.encode()), f"raw_tp {name}")

    def attach_kprobe(self, func: str, retprobe: bool = False) -> Link:
        kind = "kretprobe" if retprobe else "kprobe"
        return self._link(_attach_kprobe(self._ptr, retprobe, func.encode()), f"{kind} {func}")

    def attach_uprobe(
        self, binary: str, offset: int, retprobe: bool = False, pid: int = -1
    ) -> Link:
        ptr = _attach_uprobe(self._ptr, retprobe, pid, os.fsencode(binary), offset)
        kind = "uretprobe" if retprobe else "uprobe"
        return self._link(ptr, f"{kind} {binary}+{offset:#x}")

    def attach_usdt(self, binary: str, provider: str, name: str, pid: int = -1) -> Link:
        ptr = _attach_usdt(
            self._ptr, pid, os.fsencode(binary), provider.encode(), name.encode(), None
        )
        return self._link(ptr, f"usdt {binary}:{provider}:{name}")

    def attach_cgroup(self, cgroup_path: str) -> Link:
        fd = os.open(cgroup_path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            return self._link(_attach_cgroup(self._ptr, fd), f"cgroup {cgroup_path}")
        finally:
            os.close(fd)


class Map:
    def __init__(self, ptr: int, obj: Object | None):
        self._ptr = ptr
        self.obj = obj
        self.name = _map_name(ptr).decode()

    @property
    def fd(self) -> int:
        return _map_fd(self._ptr)

    @property
    def type(self) -> int:
        return _map_type(self._ptr)

    @property
    def key_size(self) -> int:
        return _map_key_size(self._ptr)

    @property
    def value_size(self) -> int:
        return _map_value_size(self._ptr)

    @property
    def max_entries(self) -> int:
        return _map_max_entries(self._ptr)

    def set_max_entries(self, n: int) -> None:
        _check_rc(_map_set_max_entries(self._ptr, n), f"set max_entries of map {self.name}")

    def reuse_fd(self, fd: int) -> None:
        _check_rc(_map_reuse_fd(self._ptr, fd), f"reuse fd {fd} for map {self.name}")

    def data_view(self) -> memoryview:
        """The initial image of a global-data map (.rodata/.bss/.data):
        write .rodata constants here between open and load.

        Not a view of the live map after load (with libbpf 1.1 it keeps
        showing the initial bytes): read live values with map_lookup.
        """
        size = c_size_t()
        ptr = _check_ptr(_map_initial_value(self._ptr, ctypes.byref(size)), f"data of {self.name}")
        return memoryview((ctypes.c_char * size.value).from_address(ptr)).cast("B")


def map_create(map_type: int, name: str, key_size: int, value_size: int, max_entries: int) -> int:
    """Create a map outside any object (the shared ring); returns its fd."""
    fd = _map_create(map_type, name.encode(), key_size, value_size, max_entries, None)
    return _check_rc(fd, f"create map {name}")


def map_lookup(fd: int, key: bytes, value_size: int) -> bytes | None:
    value = ctypes.create_string_buffer(value_size)
    if _map_lookup(fd, key, value) < 0:
        err = _last_errno()
        if err == errno.ENOENT:
            return None
        raise BpfError(f"lookup in map fd {fd}", err)
    return value.raw


def map_update(fd: int, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
    if _map_update(fd, key, value, flags) < 0:
        raise BpfError(f"update map fd {fd}", _last_errno())


def map_delete(fd: int, key: bytes) -> bool:
    if _map_delete(fd, key) < 0:
        err = _last_errno()
        if err == errno.ENOENT:
            return False
        raise BpfError(f"delete from map fd {fd}", err)
    return True


def map_keys(fd: int, key_size: int) -> list[bytes]:
    keys: list[bytes] = []
    prev = None
    nxt = ctypes.create_string_buffer(key_size)
    while _map_next_key(fd, prev, nxt) == 0:
        keys.append(nxt.raw)
        prev = ctypes.create_string_buffer(nxt.raw, key_size)
    return keys


def map_lookup_batch(
    fd: int, key_size: int, value_size: int, delete: bool = False, chunk: int = 1024
) -> list[tuple[bytes, bytes]]:
    """Every (key, value) of a hash map, `chunk` entries per syscall.

    With `delete` each entry is removed as it is read, bucket by bucket
    under the bucket's lock (bpf_map_lookup_and_delete_batch): reading and
    clearing a counting map leaves no window per key between the two.
    `value_size` is per entry as the syscall returns it (per-CPU maps:
    rounded up to 8, times the possible CPUs).
    """
    fn = _map_lookup_and_delete_batch if delete else _map_lookup_batch
    what = f"{'lookup and delete' if delete else 'lookup'} batch in map fd {fd}"
    token = max(key_size, 8)  # hash maps use a u32 bucket index as the batch token
    in_batch, out_batch = None, ctypes.create_string_buffer(token)
    out: list[tuple[bytes, bytes]] = []
    while True:
        keys = ctypes.create_string_buffer(key_size * chunk)
        values = ctypes.create_string_buffer(value_size * chunk)
        count = c_uint32(chunk)
        rc = fn(fd, in_batch, out_batch, keys, values, ctypes.byref(count), None)
        err = 0 if rc >= 0 else (-rc if rc != -1 else _last_errno())
        kraw, vraw = keys.raw, values.raw
        for i in range(count.value):
            out.append(
                (
                    kraw[i * key_size : (i + 1) * key_size],
                    vraw[i * value_size : (i + 1) * value_size],
                )
            )
        if err == errno.ENOENT:
            return out  # the last batch (maybe empty): the map is walked
        if err == errno.ENOSPC and count.value == 0:
            chunk *= 2  # one bucket holds more entries than a chunk: retry bigger
            continue
        if err:
            raise BpfError(what, err, recent_log())
        in_batch = ctypes.create_string_buffer(out_batch.raw, token)


class Object:
    """A BPF object file: open, adjust, load, attach, close."""

    def __init__(self, path: str):
        self.path = path
        self.name = os.path.basename(path).removesuffix(".bpf.o")
        ptr = _open_file(os.fsencode(path), None)
        self._ptr = _check_ptr(ptr, f"open BPF object {path}")
        self._btf: Btf | None = None

    def close(self) -> None:
        if self._ptr:
            _obj_close(self._ptr)
            self._ptr = 0

    def __enter__(self) -> Object:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def programs(self) -> list[Program]:
        out, cur = [], None
        while cur := _obj_next_program(self._ptr, cur):
            out.append(Program(cur, self))
        return out

    def program(self, name: str) -> Program:
        for prog in self.programs():
            if prog.name == name:
                return prog
        raise BpfError(f"find program {name} in {self.path}", errno.ENOENT)

    def maps(self) -> list[Map]:
        out, cur = [], None
        while cur := _obj_next_map(self._ptr, cur):
            out.append(Map(cur, self))
        return out

    def map(self, name: str) -> Map:
        ptr = _obj_find_map(self._ptr, name.encode())
        if not ptr:
            raise BpfError(f"find map {name} in {self.path}", errno.ENOENT)
        return Map(ptr, self)

    def btf(self) -> Btf:
        if self._btf is None:
            ptr = _check_ptr(_obj_btf(self._ptr), f"BTF of {self.path}")
            self._btf = Btf(ptr, owned=False)
        return self._btf

    def load(self) -> None:
        _check_rc(_obj_load(self._ptr), f"load BPF object {self.name}")


# -- ring buffer: walked in bulk from Python over its mmap ------------------------
_BUSY = 1 << 31
_DISCARD = 1 << 30
_HDR = 8


class RingReader:
    """Reads a BPF ring buffer's records straight from its mmap, in bulk.

    The kernel maps the data area twice back to back, so a record that wraps
    is contiguous.  Records are copied out (bytes) and the consumer position
    advanced once per drain: no per-record call into C.  This relies on x86's
    total store order for the producer/record-header reads (Python has no
    acquire load): ring_reader() uses it only on x86 and LibbpfRingReader,
    libbpf's ring_buffer__consume with its barriers, everywhere else.
    """

    def __init__(self, fd: int, size: int):
        page = mmap.PAGESIZE
        self.fd = fd
        self.size = size
        self._mask = size - 1
        self._cons_map = mmap.mmap(fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._prod_map = mmap.mmap(
            fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page
        )
        self._cons = memoryview(self._cons_map).cast("Q")
        self._prod = memoryview(self._prod_map)
        self._prod_pos = self._prod[:8].cast("Q")
        self._data = self._prod[page:]
        self._data_at = time.monotonic()  # the last drain that found records

    def quiet_for(self) -> float:
        """Seconds since a drain last found records."""
        return time.monotonic() - self._data_at

    def pending_bytes(self) -> int:
        return self._prod_pos[0] - self._cons[0]

    def producer_position(self) -> int:
        """Where the kernel will reserve next (a stop drains up to here)."""
        return self._prod_pos[0]

    def consumer_position(self) -> int:
        return self._cons[0]

    def _committed_end(self, cons: int, end: int) -> int:
        """Position of the first record at or after `cons` not yet committed."""
        data, mask, unpack = self._data, self._mask, _LEN_HDR.unpack_from
        while cons < end:
            (length,) = unpack(data, cons & mask)
            if length & _BUSY:
                break  # reserved, not yet committed: stop here
            cons += ((length & ~(_BUSY | _DISCARD)) + _HDR + 7) & ~7
        return cons

    def drain_raw(self, limit: int = 4 << 20, until: int | None = None) -> bytes:
        """The committed part of the ring as it lies there (record headers,
        padding and discarded records included), up to about `limit` bytes,
        in one copy.  split_records() turns it into records.  With `until`
        (a producer position), nothing from there on is read.
        """
        cons = self._cons[0]
        prod = self._prod_pos[0] if until is None else min(until, self._prod_pos[0])
        if cons >= prod:
            return b""
        self._data_at = time.monotonic()  # reserved counts: its record comes
        stop = self._committed_end(cons, min(prod, cons + limit))
        off = cons & self._mask
        # the data area is mapped twice in a row: no wrap to handle
        raw = bytes(self._data[off : off + (stop - cons)])
        self._cons[0] = stop
        return raw

    def drain(self, limit: int = 4 << 20, until: int | None = None) -> list[bytes]:
        """Committed records, oldest first, up to about `limit` bytes of them."""
        return split_records(self.drain_raw(limit, until))

    def peek_records(self, until: int) -> Iterator[bytes | None]:
        """The records between the consumer and `until`, without consuming
        them (None for one still being written): to count what a stop left."""
        data, mask, unpack = self._data, self._mask, _LEN_HDR.unpack_from
        pos = self._cons[0]
        end = min(until, self._prod_pos[0])
        while pos < end:
            (length,) = unpack(data, pos & mask)
            rec_len = length & ~(_BUSY | _DISCARD)
            if length & _BUSY:
                yield None
            elif not length & _DISCARD:
                off = (pos & mask) + _HDR
                yield bytes(data[off : off + rec_len])
            pos += (rec_len + _HDR + 7) & ~7

    def close(self) -> None:
        for view in ("_cons", "_prod_pos", "_data", "_prod"):
            getattr(self, view).release()
        self._cons_map.close()
        self._prod_map.close()


_LEN_HDR = struct.Struct("<I")
_SAMPLE_FN = CFUNCTYPE(c_int, c_void_p, c_void_p, c_size_t)
_rb_new = _fn("ring_buffer__new", c_void_p, c_int, _SAMPLE_FN, c_void_p, c_void_p)
_rb_consume = _fn("ring_buffer__consume", c_int, c_void_p)
_rb_free = _fn("ring_buffer__free", None, c_void_p)
_STOP = -1024  # a callback's "enough for this drain" (no libbpf error is this)

# Architectures whose memory model makes RingReader's plain loads safe.
TSO_MACHINES = frozenset({"x86_64", "amd64", "i386", "i486", "i586", "i686"})


class LibbpfRingReader(RingReader):
    """RingReader's interface over libbpf's ring_buffer__consume, whose
    acquire/release accesses are right on every architecture.  It costs a
    call from C into Python per record, so it is the fallback, not the
    default on x86.  drain_raw() rebuilds the ring's framing (an 8-byte
    header per record, 8-byte aligned) so split_records and recordings see
    the same bytes as from RingReader.  Positions are read as RingReader
    reads them: for `until`, stop accounting and lag, never for data.
    """

    def __init__(self, fd: int, size: int):
        super().__init__(fd, size)
        self._out = bytearray()
        self._limit = 0
        self._until: int | None = None
        self._rewind: int | None = None
        self._callback = _SAMPLE_FN(self._sample)  # kept: C holds a pointer to it
        self._rb = _check_ptr(_rb_new(fd, self._callback, None, None), "ring_buffer__new")

    def _sample(self, _ctx, data: int, size: int) -> int:
        # the consumer position is this record's own until the callback returns
        if self._until is not None and self._cons[0] >= self._until:
            self._rewind = self._cons[0]  # past `until`: leave it in the ring
            return _STOP
        out = self._out
        out += _LEN_HDR.pack(size) + b"\0" * (_HDR - _LEN_HDR.size)
        out += ctypes.string_at(data, size)
        out += b"\0" * (-len(out) % 8)
        return _STOP if len(out) >= self._limit else 0

    def drain_raw(self, limit: int = 4 << 20, until: int | None = None) -> bytes:
        self._out, self._limit, self._until, self._rewind = bytearray(), limit, until, None
        if self._prod_pos[0] > self._cons[0]:
            self._data_at = time.monotonic()
        rc = _rb_consume(self._rb)
        if self._rewind is not None:
            # libbpf consumed the record we refused: give it back (we are
            # the only consumer; the producer only sees less free space)
            self._cons[0] = self._rewind
        if rc < 0 and rc != _STOP:
            raise BpfError("ring_buffer__consume", -rc)
        raw, self._out = bytes(self._out), bytearray()
        return raw

    def close(self) -> None:
        if self._rb:
            _rb_free(self._rb)
            self._rb = None
        super().close()


def ring_reader(fd: int, size: int, machine: str | None = None) -> RingReader:
    """The bulk reader on x86, libbpf's consumer elsewhere.  $VIGIL_RING_READER
    = "libbpf" forces the fallback (tests run it on x86 with real events)."""
    machine = (machine or platform.machine()).lower()
    if os.environ.get("VIGIL_RING_READER") == "libbpf" or machine not in TSO_MACHINES:
        return LibbpfRingReader(fd, size)
    return RingReader(fd, size)


def split_records(raw: bytes) -> list[bytes]:
    """Records of a ring segment from RingReader.drain_raw (or a recording:
    bounds-checked, a cut or garbled tail yields no record)."""
    out = []
    pos, n, unpack = 0, len(raw), _LEN_HDR.unpack_from
    while pos + _HDR <= n:
        (length,) = unpack(raw, pos)
        rec_len = length & ~(_BUSY | _DISCARD)
        if not length & _DISCARD:
            out.append(raw[pos + _HDR : pos + _HDR + rec_len])
        pos += (rec_len + _HDR + 7) & ~7
    return out


__all__ = [
    "BpfError",
    "Btf",
    "BtfType",
    "Link",
    "Map",
    "Object",
    "Program",
    "LibbpfRingReader",
    "RingReader",
    "ring_reader",
    "map_create",
    "map_delete",
    "map_keys",
    "map_lookup",
    "map_lookup_batch",
    "map_update",
    "num_possible_cpus",
    "recent_log",
    "split_records",
]
