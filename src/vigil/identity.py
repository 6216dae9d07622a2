"""Who an event is: the host, the boot, its number, and its process's key.

Every event carries `host`, `boot_id` and `seq`: (boot_id, cpu, seq) is
unique, so a consumer can drop duplicates (a replayed log, a resent batch)
and find gaps (a missing seq of a CPU is a record the ring lost, and the
kernel counted it as `lost`).

Where seq is assigned, and why: in the kernel, as the record is queued
(`stamp_seq` in bpf/common.bpf.h), from a per-CPU counter.
  * Kernel, not user space: the raw record carries its number, so an
    analysis that restarts and replays the same log bytes gives every event
    the same seq again (a number made at decode would change with the
    restart, unless derived from log position, which a re-cut log changes).
    And a record the ring refused burns its number, so loss is visible to
    any consumer, not only as a counter.
  * Per CPU, not one global counter: a global atomic add is a cache line
    all CPUs fight over on every event of a storm; a per-CPU one is never
    contended.  The price is that order and gaps are per (boot, cpu).
  * Seeded with CLOCK_BOOTTIME ns when a session loads, so later runs of
    the agent on the same boot never reuse a number (a counter never
    passes the clock unless one CPU queues more than one record per ns).

The process key is (boot id, pid, process start in boot ns), like
Tetragon's exec_id: the start time is the kernel's (the thread group
leader's start_boottime, read in the header), so a recycled pid gets a new
key and lineages never mix.  A key is text: "<boot_id>:<start_ns>:<pid>".
"""

from __future__ import annotations

import os
import socket
import struct
import time

from . import _libbpf as bpf

_BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"


def boot_id() -> str:
    try:
        with open(_BOOT_ID_PATH) as f:
            return f.read().strip()
    except OSError:
        return ""


def host_name() -> str:
    return socket.gethostname()


def create_seq_map() -> int:
    """The per-CPU record counters every object of a session shares
    (`vigil_seq`), each seeded with CLOCK_BOOTTIME ns; returns its fd."""
    fd = bpf.map_create(bpf.BPF_MAP_TYPE_PERCPU_ARRAY, "vigil_seq", 4, 8, 1)
    try:
        seed = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        ncpu = bpf.num_possible_cpus()
        bpf.map_update(fd, struct.pack("<I", 0), struct.pack("<Q", seed) * ncpu)
    except BaseException:
        os.close(fd)
        raise
    return fd


class Keys:
    """Process keys as text, made once per (pid, start)."""

    def __init__(self, boot: str | None = None):
        self.boot = boot_id() if boot is None else boot
        self._keys: dict[tuple[int, int], str] = {}

    def key(self, pid: int, start_ns: int) -> str:
        k = (pid, start_ns)
        text = self._keys.get(k)
        if text is None:
            if len(self._keys) > 65536:
                self._keys.clear()
            text = self._keys[k] = f"{self.boot}:{start_ns}:{pid}"
        return text
