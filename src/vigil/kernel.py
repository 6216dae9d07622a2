"""What the running kernel offers: each attach type probed for real, cached.

A feature counts as available only when a tiny program of that type (from
``probe.bpf.o``) loads *and* attaches here; "the kernel has BTF" or "the
config says so" is not enough (fentry and BPF-LSM load fine on paper and
fail with EPERM under some lockdown setups).  Results are cached in-process
and in /run/vigil, keyed by boot id, so only the first run after boot pays.
"""

from __future__ import annotations

import bisect
import errno
import functools
import json
import os
import platform
import subprocess
from dataclasses import asdict, dataclass

from . import _libbpf as bpf
from . import paths
from .errors import BpfError, VigilError

TRACEFS = "/sys/kernel/tracing"
BPFFS = "/sys/fs/bpf"
CACHE_DIR = "/run/vigil"

# Attach types in the order `vigil doctor` shows them.
FEATURES = (
    "tracepoint",
    "raw_tp",
    "tp_btf",
    "fentry",
    "kprobe",
    "lsm",
    "uprobe",
    "usdt",
    "cgroup",
    "ringbuf",
)


@dataclass(frozen=True)
class Probe:
    feature: str
    ok: bool
    detail: str  # "" when ok, else why not


# -- mounts -------------------------------------------------------------------------
def _mounted(path: str, fstype: str) -> bool:
    try:
        with open("/proc/self/mounts", "rb") as f:
            for line in f:
                parts = line.split()
                if parts[1].decode() == path and parts[2].decode() == fstype:
                    return True
    except OSError:
        pass
    return False


def _mount(fstype: str, path: str) -> None:
    if _mounted(path, fstype):
        return
    os.makedirs(path, exist_ok=True)
    proc = subprocess.run(
        ["mount", "-t", fstype, fstype, path], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0 and not _mounted(path, fstype):
        msg = proc.stderr.strip() or f"exit {proc.returncode}"
        raise VigilError(f"cannot mount {fstype} on {path}: {msg}")


def ensure_tracefs() -> str:
    """Mount tracefs if needed: libbpf resolves tracepoint ids through it."""
    _mount("tracefs", TRACEFS)
    return TRACEFS


def ensure_bpffs() -> str:
    _mount("bpf", BPFFS)
    return BPFFS


def mounts() -> dict[str, bool]:
    return {"tracefs": _mounted(TRACEFS, "tracefs"), "bpffs": _mounted(BPFFS, "bpf")}


# -- facts -------------------------------------------------------------------------
def release() -> str:
    return platform.release()


def has_btf() -> bool:
    return os.path.exists("/sys/kernel/btf/vmlinux")


def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return "unknown"


def cgroup2_root() -> str | None:
    """Where the cgroup v2 hierarchy is mounted (pure or hybrid layouts)."""
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                parts = line.split()
                if parts[2] == "cgroup2":
                    return parts[1]
    except OSError:
        pass
    return None


@functools.cache
def _vmlinux_btf() -> bpf.Btf | None:
    try:
        return bpf.Btf.vmlinux()
    except BpfError:
        return None


@functools.cache
def _kallsyms() -> frozenset[str]:
    try:
        with open("/proc/kallsyms") as f:
            return frozenset(line.split()[2] for line in f)
    except OSError:
        return frozenset()


@functools.cache
def _kernel_text(path: str = "/proc/kallsyms") -> tuple[dict[str, int], list[int]]:
    """Core kernel text symbols from kallsyms: name -> address, and every
    address sorted.  Empty when addresses are hidden (kptr_restrict, not root)."""
    names: dict[str, int] = {}
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                # a module's symbols end in [module]: only the core kernel's
                if len(parts) == 3 and parts[1] in ("t", "T"):
                    names.setdefault(parts[2], int(parts[0], 16))
    except (OSError, ValueError):
        return {}, []
    if not any(names.values()):
        return {}, []  # all zeros: hidden from this reader
    return names, sorted(set(names.values()))


def function_range(name: str, kallsyms: str = "/proc/kallsyms") -> tuple[int, int]:
    """[start, end) of a kernel function's text: its address and the next
    text symbol's.  (0, 0) when unknown (no such function, addresses hidden)."""
    names, addrs = _kernel_text(kallsyms)
    start = names.get(name, 0)
    if not start:
        return 0, 0
    i = bisect.bisect_right(addrs, start)
    return (start, addrs[i]) if i < len(addrs) else (0, 0)


def target_exists(feature: str, target: str) -> bool:
    """Whether the kernel has this attach target (a tracepoint, a function...)."""
    if feature == "tracepoint":
        ensure_tracefs()
        return os.path.isdir(os.path.join(TRACEFS, "events", target))
    btf = _vmlinux_btf()
    if feature in ("raw_tp", "tp_btf"):
        if btf is None:
            return feature == "raw_tp" and os.path.isdir(
                os.path.join(TRACEFS, "events")
            )  # cannot tell without BTF: let the attach decide
        return btf.find(f"btf_trace_{target}", bpf.BTF_KIND_TYPEDEF) is not None
    if feature == "fentry":
        return btf is not None and btf.find(target, bpf.BTF_KIND_FUNC) is not None
    if feature == "lsm":
        return btf is not None and btf.find(f"bpf_lsm_{target}", bpf.BTF_KIND_FUNC) is not None
    if feature == "kprobe":
        return target in _kallsyms()
    if feature in ("uprobe", "uretprobe"):
        from .elf import symbol_offset

        path, _, symbol = target.rpartition(":")  # "PATH:SYMBOL"
        try:
            symbol_offset(path, symbol)
        except VigilError:
            return False  # no such file, not ELF, or no such function
        return True
    return True


# -- probes -------------------------------------------------------------------------
def _probe_one(feature: str) -> Probe:
    """Load and attach probe_<feature> alone; report what the kernel said."""
    if feature == "ringbuf":
        name = "probe_ringbuf"
    else:
        name = f"probe_{feature}"
    try:
        with bpf.Object(paths.bpf_object("probe")) as obj:
            for prog in obj.programs():
                prog.autoload = prog.name == name
            obj.load()
            prog = obj.program(name)
            link = _attach_probe(feature, prog)
            link.destroy()
        return Probe(feature, True, "")
    except BpfError as err:
        return Probe(feature, False, f"{err.what}: {errno.errorcode.get(err.errno, err.errno)}")
    except (VigilError, OSError) as err:
        return Probe(feature, False, str(err))


def _attach_probe(feature: str, prog: bpf.Program) -> bpf.Link:
    if feature in ("tracepoint", "ringbuf"):
        ensure_tracefs()
        return prog.attach()
    if feature == "uprobe":
        from .elf import symbol_offset

        libc = paths.libc()
        return prog.attach_uprobe(libc, symbol_offset(libc, "getppid"))
    if feature == "usdt":
        target = paths.usdt_probe_binary()
        if target is None:
            raise VigilError("no binary with a USDT note to try (build/bin/usdt-probe missing)")
        return prog.attach_usdt(target, "vigil", "probe")
    if feature == "cgroup":
        root = cgroup2_root()
        if root is None:
            raise VigilError("no cgroup v2 hierarchy mounted")
        return prog.attach_cgroup(root)
    return prog.attach()


def _cache_path() -> str:
    return os.path.join(CACHE_DIR, "features.json")


def _cache_key() -> str:
    """Same boot, same kernel, same probe programs: same answers."""
    try:
        st = os.stat(paths.bpf_object("probe"))
        probes = f"{st.st_size}:{st.st_mtime_ns}"
    except (OSError, VigilError):
        probes = "none"
    return f"{boot_id()}/{release()}/{probes}"


def _load_cache() -> dict[str, Probe] | None:
    try:
        with open(_cache_path()) as f:
            data = json.load(f)
        if not isinstance(data, dict) or data.get("key") != _cache_key():
            return None
        probes = {p["feature"]: Probe(**p) for p in data["probes"]}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    # a file that may have been edited: only the shape written here is used
    if all(
        isinstance(p.feature, str) and isinstance(p.ok, bool) and isinstance(p.detail, str)
        for p in probes.values()
    ):
        return probes
    return None


def _save_cache(probes: dict[str, Probe]) -> None:
    try:
        os.makedirs(CACHE_DIR, exist_ok=True)
        tmp = _cache_path() + ".tmp"
        with open(tmp, "w") as f:
            json.dump(
                {"key": _cache_key(), "probes": [asdict(p) for p in probes.values()]},
                f,
            )
        os.replace(tmp, _cache_path())
    except OSError:
        pass  # a cache we cannot write only costs time


_probes: dict[str, Probe] | None = None


def probe_all(refresh: bool = False) -> dict[str, Probe]:
    """Every feature, probed once per boot (``refresh`` probes again)."""
    global _probes
    if _probes is not None and not refresh:
        return _probes
    cached = None if refresh else _load_cache()
    if cached is not None and set(cached) == set(FEATURES):
        _probes = cached
        return _probes
    _probes = {f: _probe_one(f) for f in FEATURES}
    _save_cache(_probes)
    return _probes


def available(feature: str) -> bool:
    probe = probe_all().get(feature)
    return bool(probe and probe.ok)
