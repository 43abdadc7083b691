"""Link, IP and TCP headers of one captured packet, sliced down to its TCP segment.

The file formats are read in :mod:`._readers`; the link, IP and TCP headers are sliced here with
``struct`` so that truncated packets (``caplen < len``: a snaplen, or a
shrunk fixture) keep their *wire* payload length from the IP header, which
the reassembly needs to report the missing bytes as a hole of known size.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

__all__ = [
    "LINKTYPES",
    "Packet",
    "TcpSegment",
    "addr_text",
    "decode_tcp",
]


def __dir__() -> list[str]:
    return list(__all__)


#: Link types we slice (DLT_* / LINKTYPE_* numbers from pcap-linktype(7)).
LINKTYPES = {
    0: "NULL",  # BSD loopback, host-order address family
    1: "EN10MB",  # Ethernet (Linux `tcpdump -i lo` too)
    12: "RAW",  # raw IP (OpenBSD's DLT_RAW number)
    14: "RAW",
    101: "RAW",  # LINKTYPE_RAW
    108: "LOOP",  # OpenBSD loopback, network-order family
    113: "LINUX_SLL",  # `tcpdump -i any`
    228: "IPV4",
    229: "IPV6",
    276: "LINUX_SLL2",  # `tcpdump -i any` since libpcap 1.10
}


_BE16 = struct.Struct(">H")
_TCP = struct.Struct(">HHIIBB")


@dataclass(slots=True)
class Packet:
    """One captured record: its index (from 0), timestamp, link type and bytes."""

    index: int
    ts: float
    linktype: int
    data: bytes


@dataclass(slots=True)
class TcpSegment:
    """The TCP part of a packet; ``payload`` as captured, ``wire_len`` as sent."""

    index: int
    ts: float
    src: bytes
    sport: int
    dst: bytes
    dport: int
    seq: int
    ack: int
    flags: int
    payload: bytes
    wire_len: int

    @property
    def syn(self) -> bool:
        return bool(self.flags & 0x02)

    @property
    def fin(self) -> bool:
        return bool(self.flags & 0x01)

    @property
    def rst(self) -> bool:
        return bool(self.flags & 0x04)

    @property
    def has_ack(self) -> bool:
        return bool(self.flags & 0x10)


def _network(linktype: int, buf: bytes) -> tuple[int, int] | None:
    """(IP version, offset of the IP header) or ``None`` when not IP."""
    if linktype == 1:
        if len(buf) < 14:
            return None
        et = _BE16.unpack_from(buf, 12)[0]
        off = 14
        while et in (0x8100, 0x88A8, 0x9100) and len(buf) >= off + 4:
            et = _BE16.unpack_from(buf, off + 2)[0]
            off += 4
    elif linktype in (0, 108):
        if len(buf) < 4:
            return None
        le = int.from_bytes(buf[:4], "little")
        be = int.from_bytes(buf[:4], "big")
        fam = be if linktype == 108 else (le if le < 256 else be)
        if fam == 2:
            return 4, 4
        if fam in (10, 24, 28, 30):
            return 6, 4
        return None
    elif linktype in (12, 14, 101, 228, 229):
        if not buf:
            return None
        v = buf[0] >> 4
        return (v, 0) if v in (4, 6) else None
    elif linktype == 113:
        if len(buf) < 16:
            return None
        et, off = _BE16.unpack_from(buf, 14)[0], 16
    elif linktype == 276:
        if len(buf) < 20:
            return None
        et, off = _BE16.unpack_from(buf, 0)[0], 20
    else:
        return None
    if et == 0x0800:
        return 4, off
    if et == 0x86DD:
        return 6, off
    return None


def decode_tcp(pkt: Packet) -> TcpSegment | str | None:
    """The TCP segment in a packet; a string says why a TCP packet was unusable; else ``None``."""
    buf = pkt.data
    net = _network(pkt.linktype, buf)
    if net is None:
        return None
    version, ip = net
    if version == 4:
        if len(buf) < ip + 20:
            return f"packet {pkt.index}: IPv4 header cut short"
        ihl = (buf[ip] & 0x0F) * 4
        total = _BE16.unpack_from(buf, ip + 2)[0]
        if buf[ip + 9] != 6:
            return None
        frag = _BE16.unpack_from(buf, ip + 6)[0]
        if frag & 0x3FFF:
            return f"packet {pkt.index}: IPv4 fragment (not reassembled)"
        src, dst = buf[ip + 12 : ip + 16], buf[ip + 16 : ip + 20]
        tcp = ip + ihl
        end = ip + total if total else len(buf)
        if total and total < ihl:
            return f"packet {pkt.index}: IPv4 total length {total} < header"
    else:
        if len(buf) < ip + 40:
            return f"packet {pkt.index}: IPv6 header cut short"
        nxt = buf[ip + 6]
        plen = _BE16.unpack_from(buf, ip + 4)[0]
        src, dst = buf[ip + 8 : ip + 24], buf[ip + 24 : ip + 40]
        tcp = ip + 40
        end = tcp + plen if plen else len(buf)
        # Hop-by-hop, routing, destination options: skip; fragments are not reassembled.
        while nxt in (0, 43, 60) and len(buf) >= tcp + 8:
            nxt, hlen = buf[tcp], (buf[tcp + 1] + 1) * 8
            tcp += hlen
        if nxt != 6:
            return None
    if len(buf) < tcp + 20:
        return f"packet {pkt.index}: TCP header cut short"
    sport, dport, seq, ack, off, flags = _TCP.unpack_from(buf, tcp)
    doff = (off >> 4) * 4
    if doff < 20:
        return f"packet {pkt.index}: TCP data offset {doff} < 20"
    start = tcp + doff
    wire_len = max(0, end - start)
    payload = buf[start : min(end, len(buf))] if start <= len(buf) else b""
    return TcpSegment(pkt.index, pkt.ts, src, sport, dst, dport, seq, ack, flags, payload, wire_len)


def addr_text(addr: bytes, port: int) -> str:
    """``127.0.0.1:4444`` or ``[::1]:4444``."""
    if len(addr) == 4:
        return f"{socket.inet_ntop(socket.AF_INET, addr)}:{port}"
    return f"[{socket.inet_ntop(socket.AF_INET6, addr)}]:{port}"
