"""Build migration byte streams and pcap files for the capture tests (dpkt writes them)."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

import dpkt

from migcompat.protocol import build_frame, stream_catalog

PAGE = 4096
BLOCKS = (("pc.ram", 1 << 20), ("pc.bios", 0x40000))


def cmd_id(release: str, short: str) -> int:
    return next(m.id for m in stream_catalog(release).commands if m.short_name == short)


def command(release: str, short: str, payload: bytes = b"") -> bytes:
    return b"\x08" + struct.pack(">HH", cmd_id(release, short), len(payload)) + payload


def header(machine: str = "pc-q35-10.0") -> bytes:
    return (
        struct.pack(">II", 0x5145564D, 3)
        + b"\x07"
        + struct.pack(">I", len(machine))
        + (machine.encode())
    )


def pstr(s: str) -> bytes:
    return bytes([len(s)]) + s.encode()


def ram_start(section_id: int = 1) -> bytes:
    total = sum(n for _, n in BLOCKS)
    out = b"\x01" + struct.pack(">I", section_id) + pstr("ram") + struct.pack(">II", 0, 4)
    out += struct.pack(">Q", total | 0x04)
    for name, size in BLOCKS:
        out += pstr(name) + struct.pack(">Q", size)
    out += struct.pack(">Q", 0x10) + b"\x7e" + struct.pack(">I", section_id)
    return out


def ram_pages(
    addrs: Iterable[int], block: str = "pc.ram", section_id: int = 1, fill: int = 0xAB
) -> bytes:
    """A SECTION_PART of the ram section carrying whole pages at ``addrs``."""
    out = b"\x02" + struct.pack(">I", section_id)
    first = True
    for a in addrs:
        if first:
            out += struct.pack(">Q", a | 0x08) + pstr(block)
            first = False
        else:
            out += struct.pack(">Q", a | 0x28)
        out += bytes([fill]) * PAGE
    out += struct.pack(">Q", 0x10) + b"\x7e" + struct.pack(">I", section_id)
    return out


def device_full(section_id: int, idstr: str, body: bytes = b"\x00" * 24) -> bytes:
    return (
        b"\x04"
        + struct.pack(">I", section_id)
        + pstr(idstr)
        + struct.pack(">II", 0, 1)
        + body
        + b"\x7e"
        + struct.pack(">I", section_id)
    )


def packaged(release: str, body: bytes) -> bytes:
    return command(release, "PACKAGED", struct.pack(">I", len(body))) + body


def ping(release: str, value: int) -> bytes:
    return command(release, "PING", struct.pack(">I", value))


def rp(release: str, name: str, **fields: object) -> bytes:
    return build_frame(release, name, **fields)


# -- TCP / pcap -----------------------------------------------------------------------------
@dataclass
class Seg:
    """One packet to write: direction, stream offset, bytes, time; and how to mangle it."""

    c2s: bool
    offset: int
    data: bytes
    ts: float
    flags: int = dpkt.tcp.TH_ACK | dpkt.tcp.TH_PUSH
    #: Bytes of payload actually captured (snaplen); None = all.
    caplen: int | None = None
    #: The peer's stream offset acknowledged (what the sender had received then).
    ack: int = 0


@dataclass
class Conn:
    """A TCP connection between a client (the source) and a server (the destination)."""

    cport: int = 40000
    sport: int = 4444
    cisn: int = 1000
    sisn: int = 5000_000
    segs: list[Seg] = field(default_factory=list)
    t: float = 1.0

    def handshake(self) -> Conn:
        self.segs.append(Seg(True, -1, b"", self.t, dpkt.tcp.TH_SYN))
        self.segs.append(Seg(False, -1, b"", self.t, dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK))
        self.segs.append(Seg(True, 0, b"", self.t, dpkt.tcp.TH_ACK))
        self._nc = self._ns = 0
        return self

    def send(self, c2s: bool, data: bytes, mss: int = 1400, dt: float = 0.001) -> Conn:
        """Append ``data`` in order, cut into ``mss`` segments."""
        off = self._next(c2s)
        for i in range(0, len(data), mss):
            self.t += dt
            self.segs.append(Seg(c2s, off + i, data[i : i + mss], self.t, ack=self._next(not c2s)))
        self._set_next(c2s, off + len(data))
        return self

    def fin(self) -> Conn:
        for c2s in (True, False):
            self.t += 0.001
            self.segs.append(
                Seg(
                    c2s,
                    self._next(c2s),
                    b"",
                    self.t,
                    dpkt.tcp.TH_FIN | dpkt.tcp.TH_ACK,
                    ack=self._next(not c2s),
                )
            )
        return self

    _nc: int = 0
    _ns: int = 0

    def _next(self, c2s: bool) -> int:
        return self._nc if c2s else self._ns

    def _set_next(self, c2s: bool, v: int) -> None:
        if c2s:
            self._nc = v
        else:
            self._ns = v


def _ip(a: str) -> bytes:
    return socket.inet_aton(a)


def packets(conn: Conn, client: str = "127.0.0.1", server: str = "127.0.0.2") -> list[tuple]:
    """(ts, ethernet frame bytes, captured length) for every segment of ``conn``."""
    out = []
    for s in conn.segs:
        src, dst = (client, server) if s.c2s else (server, client)
        sport, dport = (conn.cport, conn.sport) if s.c2s else (conn.sport, conn.cport)
        isn = conn.cisn if s.c2s else conn.sisn
        peer_isn = conn.sisn if s.c2s else conn.cisn
        seq = isn if s.flags & dpkt.tcp.TH_SYN else (isn + 1 + s.offset) % (1 << 32)
        ack = (peer_isn + 1 + s.ack) % (1 << 32)
        flags = s.flags
        if flags == dpkt.tcp.TH_SYN:
            ack = 0
        tcp = dpkt.tcp.TCP(sport=sport, dport=dport, seq=seq, ack=ack, flags=flags, data=s.data)
        tcp.off = 5
        ip = dpkt.ip.IP(src=_ip(src), dst=_ip(dst), p=dpkt.ip.IP_PROTO_TCP, data=tcp, ttl=64)
        ip.len = 20 + len(bytes(tcp))
        eth = dpkt.ethernet.Ethernet(
            src=b"\x00" * 6, dst=b"\x00" * 6, type=dpkt.ethernet.ETH_TYPE_IP, data=ip
        )
        raw = bytes(eth)
        cut = len(raw) if s.caplen is None else len(raw) - len(s.data) + s.caplen
        out.append((s.ts, raw, cut))
    return out


def write_pcap(path: str, frames: list[tuple], linktype: int = 1, fmt: str = "pcap") -> str:
    """Write (ts, ethernet bytes, caplen) frames, re-framed for ``linktype``."""
    with open(path, "wb") as f:
        if fmt == "pcapng":
            w = dpkt.pcapng.Writer(f, linktype=linktype)
        else:
            w = dpkt.pcap.Writer(f, linktype=linktype, snaplen=262144)
        for ts, raw, cut in frames:
            w.writepkt(relink(raw, linktype)[: cut - 14 + _link_len(linktype)], ts=ts)
    if fmt == "pcap":
        _fix_orig_len(path, frames, linktype)
    return path


def _link_len(linktype: int) -> int:
    return {0: 4, 1: 14, 101: 0, 113: 16, 276: 20}[linktype]


def relink(eth: bytes, linktype: int) -> bytes:
    ip = eth[14:]
    if linktype == 1:
        return eth
    if linktype == 0:
        return struct.pack("<I", 2) + ip
    if linktype == 101:
        return ip
    if linktype == 113:
        return struct.pack(">HHH8sH", 0, 772, 6, b"\x00" * 8, 0x0800) + ip
    if linktype == 276:
        return struct.pack(">HHIHBB8s", 0x0800, 0, 1, 772, 0, 6, b"\x00" * 8) + ip
    raise ValueError(linktype)


def _fix_orig_len(path: str, frames: list[tuple], linktype: int) -> None:
    """dpkt writes caplen as the original length; put each packet's wire length back."""
    data = bytearray(open(path, "rb").read())
    pos = 24
    for _ts, raw, _cut in frames:
        incl = struct.unpack_from("<I", data, pos + 8)[0]
        struct.pack_into("<I", data, pos + 12, len(raw) - 14 + _link_len(linktype))
        pos += 16 + incl
    open(path, "wb").write(bytes(data))
