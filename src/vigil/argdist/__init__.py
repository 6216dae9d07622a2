"""In-kernel counts and log2 histograms from bcc-like probe specs, without a
compiler at run time: one precompiled, parameterised BPF program
(bpf/argdist.bpf.c) configured through `.rodata` per spec.

    from vigil.argdist import Aggregation, parse

    with Aggregation(parse("t:capability:cap_capable():int:comm,cap")) as agg:
        ...
        for key, count in agg.read():      # [({"comm": "sshd", "cap": 12}, 83), ...]
            ...

See spec.py for the spec syntax, printers.py for bcc's output formats.
"""

from __future__ import annotations

from .runner import SLOTS, Aggregation
from .spec import Expr, Filter, Spec, parse

__all__ = ["SLOTS", "Aggregation", "Expr", "Filter", "Spec", "parse"]
