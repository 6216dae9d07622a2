"""The process table: who every event's process is, and who its ancestors are.

Seeded from /proc when the agent starts (so processes older than the agent
have a known lineage), then kept by the kernel's fork/exec/exit events, so
short-lived processes are known even when /proc never saw them.  Exited
processes stay a while (bounded) because their children and late events
still name them.

/proc is read directly rather than through psutil: psutil decodes names and
paths to str, and Vigil keeps them as the kernel's bytes.
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass

from .encoding import escape_cached
from .sensors import related_pid_fields

MAX_ANCESTORS = 16
KEEP_EXITED = 8192


@dataclass(slots=True)
class Proc:
    pid: int
    ppid: int
    comm: bytes
    exe: bytes
    args: list[bytes]
    exited: bool = False
    _brief: dict | None = None

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
        self._brief = None


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
    ppid = int(stat[rpar + 2 :].split(None, 2)[1])
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
    return Proc(pid, ppid, comm, exe, args)


class ProcessTable:
    def __init__(
        self,
        max_ancestors: int = MAX_ANCESTORS,
        keep_exited: int = KEEP_EXITED,
        read_proc: bool = True,
    ):
        """`read_proc=False` never looks in /proc (replaying a recording)."""
        self.procs: dict[int, Proc] = {}
        self._read_proc = read_proc
        self.max_ancestors = max_ancestors
        self._exited: deque[int] = deque()
        self._keep_exited = keep_exited

    def seed(self) -> int:
        """Load every process now in /proc; returns how many."""
        for name in os.listdir("/proc"):
            if name.isdigit():
                proc = read_proc(int(name))
                if proc is not None:
                    self.procs.setdefault(proc.pid, proc)
        return len(self.procs)

    def get(self, pid: int) -> Proc | None:
        proc = self.procs.get(pid)
        if proc is None and pid > 0 and self._read_proc:
            proc = read_proc(pid)
            if proc is not None:
                self.procs[pid] = proc
        return proc

    def _forget_exited(self) -> None:
        while len(self._exited) > self._keep_exited:
            pid = self._exited.popleft()
            proc = self.procs.get(pid)
            if proc is not None and proc.exited:
                del self.procs[pid]

    # -- kept current by events ---------------------------------------------------
    def on_fork(self, ev: dict) -> None:
        parent = self.procs.get(ev["pid"])
        if parent is not None:
            child = Proc(ev["child_pid"], ev["pid"], parent.comm, parent.exe, parent.args)
        else:
            child = Proc(ev["child_pid"], ev["pid"], ev["comm"], b"", [])
        self.procs[child.pid] = child  # replaces an exited holder of a reused pid

    def on_exec(self, ev: dict) -> None:
        if ev["ret"] != 0:
            return
        exe = ev.get("exe") or ev["filename"]
        proc = self.procs.get(ev["pid"])
        if proc is None or proc.exited:
            self.procs[ev["pid"]] = Proc(ev["pid"], ev["ppid"], ev["comm"], exe, ev["args"])
        else:
            proc.update(ev["ppid"], ev["comm"], exe, ev["args"])

    def on_exit(self, ev: dict) -> None:
        proc = self.procs.get(ev["pid"])
        if proc is not None:
            proc.exited = True
            self._exited.append(proc.pid)
            self._forget_exited()

    _UPDATES = {"fork": on_fork, "exec": on_exec, "exit": on_exit}

    # -- enrichment ------------------------------------------------------------------
    def ancestors(self, ppid: int) -> list[dict]:
        """The parent, its parent, ... up to pid 1 or the bound."""
        out: list[dict] = []
        pid, seen = ppid, set()
        while pid > 0 and pid not in seen and len(out) < self.max_ancestors:
            seen.add(pid)
            proc = self.get(pid)
            if proc is None:
                out.append({"pid": pid, "comm": "", "exe": ""})
                break
            out.append(proc.brief())
            pid = proc.ppid
        return out

    def enrich(self, events: list[dict]) -> None:
        """Update the table from each event, then add `exe` and `ancestors`.

        Events are handled in ring order, so a process's fork and exec are
        known before its later events are enriched.
        """
        updates = self._UPDATES
        related = related_pid_fields()
        lineage: dict[int, list[dict]] = {}  # ppid -> ancestry, within this batch
        for ev in events:
            update = updates.get(ev["kind"])
            if update is not None:
                update(self, ev)
                lineage.clear()  # the table changed: recompute
            # `exe` is the process's executable at the event: a successful
            # exec brings its own (kernel-resolved); others take the table's
            if not ev.get("exe"):
                proc = self.get(ev["pid"])
                ev["exe"] = proc.exe if proc is not None else b""
            # another process the event names (a signal's target): who it is
            for pid_field, exe_field, comm_field in related.get(ev["kind"], ()):
                other = ev.get(pid_field, 0)
                proc = self.get(other) if other > 0 else None
                ev[exe_field] = proc.exe if proc is not None else b""
                ev[comm_field] = proc.comm if proc is not None else b""
            ppid = ev["ppid"]
            chain = lineage.get(ppid)
            if chain is None:
                chain = lineage[ppid] = self.ancestors(ppid)
            ev["ancestors"] = chain
