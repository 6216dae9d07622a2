"""Reading in-kernel counter maps (hash: key -> u64 count) without loss.

The map is never cleared as it is read: an increment racing the delete of
its entry would be lost (bcc's clear() loses those).  The kernel keeps
running totals; we report differences since the last read, and delete only
entries idle for `idle_reads` reads, to give their room back for new keys.
"""

from __future__ import annotations

import struct

from . import _libbpf as bpf

IDLE_READS = 3
_U64 = struct.Struct("<Q")


class CounterMap:
    def __init__(self, m: bpf.Map, key_size: int, idle_reads: int = IDLE_READS):
        self.map = m
        self.key_size = key_size
        self.idle_reads = idle_reads
        self._base: dict[bytes, int] = {}  # raw key -> running total at the last read
        self._idle: dict[bytes, int] = {}  # raw key -> reads with no change

    def read(self, clear: bool = True) -> list[tuple[bytes, int]]:
        """(raw key, count): since the last clearing read, or running totals."""
        m = self.map
        rows = bpf.map_lookup_batch(m.fd, self.key_size, m.value_size)
        out = []
        base, idle = self._base, self._idle
        for key, value in rows:
            (n,) = _U64.unpack_from(value)
            if clear:
                delta = n - base.get(key, 0)
                base[key] = n
                if delta == 0:
                    idle[key] = idle.get(key, 0) + 1
                    if idle[key] >= self.idle_reads:
                        bpf.map_delete(m.fd, key)
                        del base[key], idle[key]
                    continue
                idle.pop(key, None)
                n = delta
            out.append((key, n))
        return out
