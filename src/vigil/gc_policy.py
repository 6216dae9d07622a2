"""The cycle collector's settings for a process that streams events.

Events are dicts made and freed by the thousand per batch; they hold no
cycles, so reference counting frees them.  CPython's cycle collector still
runs every 700 net allocations of containers, and as a batch's events
live through several such runs it promotes and scans them again, and every
few runs it scans every long-lived object (loaded BTF, sensor tables, the
process table).  Measured on bench/pipeline: 1.8-2.5 us per event, about a
tenth of the analysis, in 659 collections per 150k events (5 full).

So, once a long-running process has set up: what exists then is frozen
out of the collector's sight (`gc.freeze`: start-up objects are not
garbage), and the young generation is collected every 100,000 net
allocations instead of 700 (0.25 us per event, one collection per 150k
events).  Cycles are still collected; the price is up to that many
objects of cyclic garbage waiting a little longer (a few MiB).
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 100_000


def for_streaming() -> None:
    """Call once set up, before the event loop; idempotent."""
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
