"""The process table: who every event's process is, and who its ancestors are.

Seeded from /proc when the agent starts (so processes older than the agent
have a known lineage), then kept by the kernel's fork/exec/exit events, so
short-lived processes are known even when /proc never saw them.  Exited
processes stay a while (bounded) because their children and late events
still name them.

A process is (pid, start time), never a pid alone: every record's header
carries the process's and its parent's start (CLOCK_BOOTTIME ns, read in
the kernel), a fork the child's, so a recycled pid starts a new lineage and
an event of the old holder (late in the ring, or its orphaned child's
ancestry) still finds the old one.  /proc gives the start only in clock
ticks (field 22 of stat): a process seeded from there matches the kernel's
start to the tick, and takes the kernel's exact value the first time an
event names it.

/proc is read directly rather than through psutil: psutil decodes names and
paths to str, and Vigil keeps them as the kernel's bytes.
"""

from __future__ import annotations

import os
from collections import OrderedDict, deque
from dataclasses import dataclass

from .encoding import escape_cached
from .identity import Keys, host_name
from .sensors import related_pid_fields

MAX_ANCESTORS = 16
KEEP_EXITED = 8192
_TICK_NS = 1_000_000_000 // os.sysconf("SC_CLK_TCK")


@dataclass(slots=True)
class Proc:
    pid: int
    ppid: int
    comm: bytes
    exe: bytes
    args: list[bytes]
    exited: bool = False
    _brief: dict | None = None
    start: int = 0  # CLOCK_BOOTTIME ns; 0: known only to the tick (`ticks`) or not at all
    pstart: int = 0  # the parent's start, as `start`
    ticks: int = -1  # start in clock ticks, from /proc (-1: not read there)
    exec_gen: int = 0  # successful execs Vigil saw this process make

    def brief(self) -> dict:
        """{pid, comm, exe} for ancestry, as escaped text (docs/events.md).

        Made once per process image and shared by every event that names
        it: ancestry is on every event, so it must cost nothing per event.
        """
        if self._brief is None:
            self._brief = {
                "pid": self.pid,
                "comm": escape_cached(self.comm),
                "exe": escape_cached(self.exe),
            }
        return self._brief

    def update(self, ppid: int, comm: bytes, exe: bytes, args: list[bytes]) -> None:
        self.ppid, self.comm, self.exe, self.args = ppid, comm, exe, args
        self.exec_gen += 1
        self._brief = None

    def started(self, start: int) -> bool:
        """Is this the process that started at `start` (0: unknown, any)?
        A /proc-seeded process learns its exact start here."""
        if not start or self.start == start:
            return True
        if self.start:
            # a child seeded from /proc knows its parent's start to the tick
            return start % _TICK_NS == 0 and start // _TICK_NS == self.start // _TICK_NS
        if self.ticks < 0 or start // _TICK_NS == self.ticks:
            # to the tick, or nothing known (a recording's start-up table):
            # the first event that names it teaches its start
            self.start = start
            return True
        return False


def read_proc(pid: int) -> Proc | None:
    """One process from /proc, or None if it is gone."""
    base = b"/proc/%d" % pid
    try:
        with open(base + b"/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # comm may hold spaces and parentheses: it ends at the last ')'
    lpar, rpar = stat.find(b"("), stat.rfind(b")")
    comm = stat[lpar + 1 : rpar]
    fields = stat[rpar + 2 :].split()
    ppid = int(fields[1])
    ticks = int(fields[19])  # field 22: starttime, clock ticks after boot
    try:
        exe = os.readlink(base + b"/exe")
    except OSError:
        exe = b""  # kernel thread, or no permission
    try:
        with open(base + b"/cmdline", "rb") as f:
            raw = f.read()
        args = raw.split(b"\0")[:-1] if raw else []
    except OSError:
        args = []
    return Proc(pid, ppid, comm, exe, args, ticks=ticks)


class ProcessTable:
    def __init__(
        self,
        max_ancestors: int = MAX_ANCESTORS,
        keep_exited: int = KEEP_EXITED,
        read_proc: bool = True,
        keys: Keys | None = None,
        host: str | None = None,
    ):
        """`read_proc=False` never looks in /proc (replaying a recording)."""
        self.procs: dict[int, Proc] = {}  # pid -> its present (or last) holder
        # earlier holders of a recycled pid, (pid, start) -> Proc, bounded
        self.earlier: OrderedDict[tuple[int, int], Proc] = OrderedDict()
        self._read_proc = read_proc
        self.max_ancestors = max_ancestors
        self._exited: deque[Proc] = deque()
        self._keep_exited = keep_exited
        self.keys = keys or Keys()
        self.host = host_name() if host is None else host

    def seed(self) -> int:
        """Load every process now in /proc; returns how many."""
        for name in os.listdir("/proc"):
            if name.isdigit():
                proc = read_proc(int(name))
                if proc is not None:
                    self.procs.setdefault(proc.pid, proc)
        for proc in self.procs.values():
            parent = self.procs.get(proc.ppid)
            if parent is not None and parent.ticks >= 0:
                proc.pstart = parent.ticks * _TICK_NS  # to the tick; exact once seen
        return len(self.procs)

    def get(self, pid: int, start: int = 0) -> Proc | None:
        """The process `pid` that started at `start` (0: whoever holds it)."""
        proc = self.procs.get(pid)
        if proc is not None:
            if proc.started(start):
                return proc
            earlier = self.earlier.get((pid, start))
            if earlier is not None or start < proc.start:
                return earlier  # an older holder of the pid (None: forgotten)
        if pid > 0 and self._read_proc:
            fresh = read_proc(pid)
            if fresh is not None and fresh.started(start):
                self._hold(fresh)
                return fresh
        return None

    def _hold(self, proc: Proc) -> None:
        """`proc` now holds its pid; an earlier holder is kept aside."""
        old = self.procs.get(proc.pid)
        if old is not None and old is not proc and old.start:
            self.earlier[(old.pid, old.start)] = old
            while len(self.earlier) > self._keep_exited:
                self.earlier.popitem(last=False)
        self.procs[proc.pid] = proc

    def _forget_exited(self) -> None:
        while len(self._exited) > self._keep_exited:
            proc = self._exited.popleft()
            if self.procs.get(proc.pid) is proc:
                del self.procs[proc.pid]
            else:
                self.earlier.pop((proc.pid, proc.start), None)

    # -- kept current by events ---------------------------------------------------
    def on_fork(self, ev: dict) -> None:
        parent = self.get(ev["pid"], ev.get("start_time", 0))
        start = ev.get("child_start_time", 0)
        if parent is not None:
            child = Proc(ev["child_pid"], ev["pid"], parent.comm, parent.exe, parent.args)
        else:
            child = Proc(ev["child_pid"], ev["pid"], ev["comm"], b"", [])
        child.start, child.pstart = start, ev.get("start_time", 0)
        self._hold(child)  # a recycled pid: the exited holder is kept aside

    def on_exec(self, ev: dict) -> None:
        if ev["ret"] != 0:
            return
        exe = ev.get("exe") or ev["filename"]
        start = ev.get("start_time", 0)
        proc = self.get(ev["pid"], start)
        if proc is None or proc.exited:
            proc = Proc(ev["pid"], ev["ppid"], ev["comm"], exe, ev["args"], start=start)
            self._hold(proc)
        else:
            proc.update(ev["ppid"], ev["comm"], exe, ev["args"])
        proc.pstart = ev.get("parent_start_time", 0) or proc.pstart

    def on_exit(self, ev: dict) -> None:
        proc = self.get(ev["pid"], ev.get("start_time", 0))
        if proc is not None and not proc.exited:
            proc.exited = True
            self._exited.append(proc)
            self._forget_exited()

    _UPDATES = {"fork": on_fork, "exec": on_exec, "exit": on_exit}

    # -- enrichment ------------------------------------------------------------------
    def ancestors(self, ppid: int, pstart: int = 0) -> list[dict]:
        """The parent, its parent, ... up to pid 1 or the bound."""
        out: list[dict] = []
        pid, start, seen = ppid, pstart, set()
        while pid > 0 and pid not in seen and len(out) < self.max_ancestors:
            seen.add(pid)
            proc = self.get(pid, start)
            if proc is None:
                out.append({"pid": pid, "comm": "", "exe": ""})
                break
            out.append(proc.brief())
            pid, start = proc.ppid, proc.pstart
        return out

    def enrich(self, events: list, decoder=None) -> list[dict]:
        """Update the table from each event, then add `exe`, `ancestors`
        and the identities (`host`, `boot_id`, `process_key`, `parent_key`;
        `seq` and `cpu` come from the kernel, 0 for events made here).

        Events are handled in ring order, so a process's fork and exec are
        known before its later events are enriched.

        A record left undecoded (bytes: records.Decoder.decode_batch with
        `only`; `decoder` is the one that read it) is replaced in its place
        by an UNDECODED tuple: its header's identity and time, and what its
        process gives it, as the store needs them.  So is an (event, record)
        pair (decode_batch's `keep`), once the event is enriched.  Returns
        the events (dicts), in order.
        """
        updates = self._UPDATES
        related = related_pid_fields()
        key = self.keys.key
        host, boot = self.host, self.keys.boot
        # what an event's process gives it, by (pid, start, ppid, pstart):
        # (exe, ancestors, process_key, parent_key, host, boot_id).  A storm's
        # events come from few processes, so most events cost one lookup
        # here; cleared whenever the table changes (fork, exec, exit).
        known: dict[tuple[int, int, int, int], tuple] = {}
        lineage: dict[tuple[int, int], list[dict]] = {}  # parent -> ancestry, in this batch
        decoded = events
        if decoder is not None:
            head, clock, forms = decoder.head.unpack_from, decoder.clock, decoder.forms
            form_of = decoder.form_of
            decoded = []
        for i, ev in enumerate(events):
            rec = None
            if type(ev) is tuple:  # (event, its record): the record is what is stored
                ev, rec = ev
            elif type(ev) is bytes:
                kind_id, ts, pid, ppid, cpu, seq, start, pstart, comm = head(ev)
                ident = (pid, start, ppid, pstart)
                hit = known.get(ident)
                if hit is None:
                    hit = self._identify(ident, False, known, lineage)
                events[i] = (ts + clock[0], forms[kind_id], pid, comm, cpu, seq, hit, ev)
                continue
            kind = ev["kind"]
            update = updates.get(kind)
            if update is not None:
                update(self, ev)
                known.clear()  # the table changed: recompute
                lineage.clear()
            start = ev.get("start_time")
            if start is None:  # made in user space: the table's start
                proc = self.get(ev["pid"])
                start = ev["start_time"] = start_of(proc)
                parent = self.get(ev["ppid"]) if ev["ppid"] else None
                ev["parent_start_time"] = start_of(parent)
                ev.setdefault("seq", 0)
                ev.setdefault("cpu", 0)
            ident = (ev["pid"], start, ev["ppid"], ev["parent_start_time"])
            hit = known.get(ident)
            if hit is None:
                hit = self._identify(ident, bool(ev.get("exe")), known, lineage)
            # `exe` is the process's executable at the event: a successful
            # exec brings its own (kernel-resolved); others take the table's
            if not ev.get("exe"):
                ev["exe"] = hit[0]
            # another process the event names (a signal's target): who it is
            for pid_field, exe_field, comm_field in related.get(kind, ()):
                other = ev.get(pid_field, 0)
                proc = self.get(other) if other > 0 else None
                ev[exe_field] = proc.exe if proc is not None else b""
                ev[comm_field] = proc.comm if proc is not None else b""
            ev["ancestors"] = hit[1]
            ev["host"] = host
            ev["boot_id"] = boot
            ev["process_key"] = hit[2]
            ev["parent_key"] = hit[3]
            if "child_start_time" in ev:
                ev["child_key"] = key(ev["child_pid"], ev["child_start_time"])
            if decoded is not events:
                decoded.append(ev)
                if rec is not None:
                    form = form_of[kind]
                    events[i] = (
                        ev["ts_ns"],
                        form,
                        ev["pid"],
                        ev["comm"],
                        ev["cpu"],
                        ev["seq"],
                        hit,
                        rec,
                    )
        return decoded

    def _identify(self, ident: tuple, own_exe: bool, known: dict, lineage: dict) -> tuple:
        """What the process `ident` (pid, start, ppid, pstart) gives its
        events: (exe, ancestors, process_key, parent_key, host, boot_id)."""
        pid, start, ppid, pstart = ident
        # an event with its own exe (a successful exec) does not ask the
        # table (which, live, may read /proc for an unknown pid)
        proc = None if own_exe else self.get(pid, start)
        chain = lineage.get((ppid, pstart))
        if chain is None:
            chain = lineage[(ppid, pstart)] = self.ancestors(ppid, pstart)
        key = self.keys.key
        hit = (
            proc.exe if proc is not None else b"",
            chain,
            key(pid, start),
            key(ppid, pstart) if ppid else "",
            self.host,
            self.keys.boot,
        )
        # an unknown process may be found in /proc later (the live tools);
        # without /proc, only an event of it would tell, and that clears `known`
        # (an event with its own exe did not ask: its answer is not the table's)
        if proc is not None or not (own_exe or self._read_proc):
            known[ident] = hit
        return hit


# An undecoded record after enrichment (ProcessTable.enrich): its time (Unix
# epoch ns), layout (records.StoredForm), pid, comm (raw, NUL-padded), cpu and seq, what
# its process gives it (ProcessTable._identify) and the record itself.
UNDECODED = ("ts_ns", "layout", "pid", "comm", "cpu", "seq", "process", "record")


def start_of(proc: Proc | None) -> int:
    """A process's start in boot ns: exact once an event gave it, else to the tick."""
    if proc is None:
        return 0
    return proc.start or (proc.ticks * _TICK_NS if proc.ticks >= 0 else 0)
