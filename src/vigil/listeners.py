"""Sockets already bound or listening when Vigil starts: the start-up snapshot.

The bind and listen sensors see sockets from the moment they are loaded; a
server started before Vigil would stay invisible until it restarts.  This
module lists what is already there and turns each socket into an event of
the same kind and schema as the kernel's, with ``origin: "snapshot"``:

  * TCP sockets in LISTEN   -> ``listen`` events (backlog from sock_diag);
  * unconnected UDP sockets -> ``bind`` events (a connected UDP socket got
    its port from connect(), which the bind sensor does not report either).

Take the snapshot *after* the sensors are attached: a socket opened in
between then shows twice (snapshot and live) rather than never.

Owners come from psutil (each process's fds, as ``ss -p`` finds them); a
socket held by several processes (a server's workers) is listed once per
process.  A socket no process holds (in-kernel listeners, or owners in a pid
namespace we cannot see) has pid 0.  Only the caller's network namespace is
listed, like ``ss``.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Iterable

import psutil

from . import kernel, sensors
from .process import ProcessTable, read_proc, start_of

__all__ = ["snapshot_events"]

_TCP_LISTEN = 10  # include/net/tcp_states.h
_NETLINK_SOCK_DIAG = 4  # linux/netlink.h (not in Python's socket module)
_SOCK_DIAG_BY_FAMILY = 20  # linux/sock_diag.h
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_NLMSG = struct.Struct("=IHHII")  # struct nlmsghdr
# struct inet_diag_req_v2 (family, protocol, ext, pad, states) + a zero sockid
_DIAG_REQ = struct.Struct("=BBBBI48x")
# struct inet_diag_msg: family, state, timer, retrans, sockid (48 bytes), expires,
# rqueue, wqueue, uid, inode
_DIAG_MSG = struct.Struct("=BBBB2s2s16s16s4x8xIIIII")


def snapshot_events(
    kinds: Iterable[str] = ("bind", "listen"),
    *,
    pid: int | None = None,
    processes: ProcessTable | None = None,
) -> list[dict]:
    """The sockets bound or listening now, as `bind`/`listen` events.

    Events have every field a kernel event of the kind has once decoded and
    finished (the sensor's own finish hook runs on them), but no
    enrichment: pass them through ProcessTable.enrich like kernel events.
    `pid` keeps one process's sockets; `processes` answers pid -> process
    (a fresh /proc read otherwise).
    """
    kinds = set(kinds)
    now = time.time_ns()
    backlogs = _listen_backlogs() if "listen" in kinds else {}
    seen: set[tuple] = set()
    out = []
    for conn in psutil.net_connections(kind="inet"):
        if conn.type == socket.SOCK_STREAM and conn.status == psutil.CONN_LISTEN:
            kind = "listen"
        elif conn.type == socket.SOCK_DGRAM and not conn.raddr:
            kind = "bind"
        else:
            continue
        owner = conn.pid or 0
        if kind not in kinds or (pid is not None and owner != pid):
            continue
        inode = _socket_inode(owner, conn.fd)
        key = (owner, inode or (conn.family, conn.type, conn.laddr))
        if key in seen:
            continue  # one process holding the socket through two fds
        seen.add(key)
        ev = _event(kind, now, owner, conn, processes)
        if kind == "listen":
            backlog = backlogs.get(inode) or backlogs.get((conn.family, *conn.laddr))
            if backlog is None:
                ev["flags"].append("partial")
            ev["backlog"] = backlog or 0
        sensors.get(kind).finish(ev)
        out.append(ev)
    out.sort(key=lambda ev: (ev["kind"] != "listen", ev["proto"], ev["lport"], ev["pid"]))
    return out


def _event(kind: str, now: int, pid: int, conn, processes: ProcessTable | None) -> dict:
    """A raw record as the kernel would send it, before the finish hook."""
    proc = (processes.get(pid) if processes is not None else read_proc(pid)) if pid else None
    uid, gid = _ids(pid)
    family = int(conn.family)
    return {
        "kind": kind,
        "flags": [],
        "ts_ns": now,
        "pid": pid,
        "tid": pid,
        "ppid": proc.ppid if proc else 0,
        "uid": uid,
        "gid": gid,
        "cpu": 0,
        "cgroup_id": _cgroup_id(pid),
        "seq": 0,  # no kernel counter numbered it (docs/events.md)
        "start_time": start_of(proc),
        "parent_start_time": proc.pstart if proc else 0,
        "comm": proc.comm if proc else b"",
        "family": family,
        "protocol": socket.IPPROTO_TCP if conn.type == socket.SOCK_STREAM else socket.IPPROTO_UDP,
        "lport": conn.laddr.port,
        "rport": 0,
        "laddr": socket.inet_pton(family, conn.laddr.ip).ljust(16, b"\0"),
        "raddr": bytes(16),
        "origin": "snapshot",
        "exe": (proc.exe if proc else b"") + b"\0",  # as the ring sends it
    }


def _socket_inode(pid: int, fd: int) -> int | None:
    if not pid or fd is None or fd < 0:
        return None
    try:
        link = os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError:
        return None
    if link.startswith("socket:["):
        return int(link[8:-1])
    return None


def _ids(pid: int) -> tuple[int, int]:
    """Real uid and gid, as the kernel's header has them (-1 if unknown)."""
    if not pid:
        return 0, 0
    try:
        p = psutil.Process(pid)
        return p.uids().real, p.gids().real
    except psutil.Error:
        return 0xFFFFFFFF, 0xFFFFFFFF


def _cgroup_id(pid: int) -> int:
    """The cgroup v2 id (the cgroup directory's inode), as bpf_get_current_cgroup_id()."""
    root = kernel.cgroup2_root()
    if not pid or root is None:
        return 0
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            for line in f:
                if line.startswith("0::"):
                    return os.stat(root + line[3:].rstrip("\n")).st_ino
    except OSError:
        pass
    return 0


def _listen_backlogs() -> dict:
    """inode -> backlog and (family, ip, port) -> backlog of TCP listeners.

    The backlog is not in /proc/net/tcp; the kernel's sock_diag interface
    gives it (idiag_wqueue of a listener is sk_max_ack_backlog, what `ss`
    shows as Send-Q).  Empty when sock_diag is not there (no inet_diag).
    """
    out: dict = {}
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            msgs = _sock_diag(family, socket.IPPROTO_TCP, 1 << _TCP_LISTEN)
        except OSError:
            continue
        for raw in msgs:
            _fam, _state, _t, _r, sport, _dport, src, _dst, _e, _rq, wq, _uid, inode = (
                _DIAG_MSG.unpack_from(raw)
            )
            ip = socket.inet_ntop(family, src[: 4 if family == socket.AF_INET else 16])
            out[inode] = wq
            out[(family, ip, int.from_bytes(sport, "big"))] = wq
    return out


def _sock_diag(family: int, protocol: int, states: int) -> list[bytes]:
    """One SOCK_DIAG_BY_FAMILY dump: the inet_diag_msg payloads."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_SOCK_DIAG) as nl:
        req = _DIAG_REQ.pack(family, protocol, 0, 0, states)
        hdr = _NLMSG.pack(
            _NLMSG.size + len(req), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST | _NLM_F_DUMP, 1, 0
        )
        nl.send(hdr + req)
        out = []
        while True:
            data = nl.recv(1 << 16)
            if not data:
                return out
            off = 0
            while off + _NLMSG.size <= len(data):
                length, mtype, _flags, _seq, _pid = _NLMSG.unpack_from(data, off)
                if mtype == _NLMSG_DONE:
                    return out
                if mtype == _NLMSG_ERROR:
                    raise OSError("sock_diag refused the request")
                out.append(data[off + _NLMSG.size : off + length])
                off += (length + 3) & ~3
