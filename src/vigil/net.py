"""Socket fields of network records, made readable once, after decode.

Every network record carries `struct vigil_sockaddrs` (bpf/net.h): family,
protocol, ports, and 16-byte address arrays.  `finish_sockaddrs` turns them
into the fields users read: `ip` (4 or 6), `proto` ("tcp"...), `laddr` and
`raddr` as text.
"""

from __future__ import annotations

import socket

_PROTOCOLS = {socket.IPPROTO_TCP: "tcp", socket.IPPROTO_UDP: "udp", 132: "sctp", 262: "mptcp"}
_TCP_STATES = (
    "",
    "ESTABLISHED",
    "SYN_SENT",
    "SYN_RECV",
    "FIN_WAIT1",
    "FIN_WAIT2",
    "TIME_WAIT",
    "CLOSE",
    "CLOSE_WAIT",
    "LAST_ACK",
    "LISTEN",
    "CLOSING",
    "NEW_SYN_RECV",
)  # include/net/tcp_states.h: UAPI-stable numbering


def address(family: int, raw: bytes) -> str:
    """Text form of a 16-byte address array (inet_ntop: the C fast path)."""
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    if family == socket.AF_INET6:
        return socket.inet_ntop(socket.AF_INET6, raw[:16])
    return ""


def tcp_state(n: int) -> str:
    return _TCP_STATES[n] if 0 < n < len(_TCP_STATES) else str(n)


# address text by family and raw bytes: a busy host's flows repeat their
# addresses, and a dict hit is a few times cheaper than inet_ntop
_TEXTS: dict[int, dict[bytes, str]] = {socket.AF_INET: {}, socket.AF_INET6: {}}
_IP_VERSION = {socket.AF_INET: 4, socket.AF_INET6: 6}
_MAX_TEXTS = 65536


def _remember(texts: dict[bytes, str], family: int, raw: bytes) -> str:
    if len(texts) >= _MAX_TEXTS:
        texts.clear()
    text = texts[raw] = address(family, raw)
    return text


def finish_sockaddrs(ev: dict) -> None:
    family = ev.pop("family")
    ev["ip"] = _IP_VERSION.get(family, 0)
    ev["proto"] = _PROTOCOLS.get(ev.pop("protocol"), "other")
    texts = _TEXTS.get(family)
    if texts is None:  # no address family: ""
        ev["laddr"] = address(family, ev["laddr"])
        ev["raddr"] = address(family, ev["raddr"])
        return
    laddr, raddr = ev["laddr"], ev["raddr"]
    ev["laddr"] = texts.get(laddr) or _remember(texts, family, laddr)
    ev["raddr"] = texts.get(raddr) or _remember(texts, family, raddr)
