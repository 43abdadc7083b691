"""TCP reassembly of one direction of a connection, streaming, with holes reported.

Strategy: keep the next expected stream offset. A segment at that offset is
delivered at once; one behind it is a retransmission (dropped) or an overlap
(trimmed); one ahead of it waits in a small out-of-order buffer. Bytes that a
capture never got become a :class:`Hole` with their stream offset and length:

* ``snaplen``: the packet was cut (``caplen < len``) — its wire length is known;
* ``lost``: the peer acknowledged data the capture never showed (kernel drops),
  the out-of-order buffer outgrew its bound, or the capture ended with data
  still waiting behind a gap.

Nothing is kept once delivered, so memory stays bounded by the out-of-order
buffer (:data:`MAX_OOO_BYTES`) whatever the capture's size.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["MAX_OOO_BYTES", "Data", "HalfStream", "Hole"]


def __dir__() -> list[str]:
    return list(__all__)


#: Out-of-order bytes kept waiting for a gap to fill before it is declared a hole.
#: 16 MiB is above any Linux loopback receive window (tcp_rmem max 6 MiB by default).
MAX_OOO_BYTES = 16 << 20
_MAX_OOO_SEGMENTS = 4096

_MOD = 1 << 32
_HALF = 1 << 31


@dataclass(slots=True)
class Data:
    """Bytes of the stream at ``offset`` (0 = first byte after the SYN)."""

    offset: int
    data: bytes
    ts: float
    packet: int


@dataclass(slots=True)
class Hole:
    """``length`` bytes at ``offset`` that the capture does not have (``reason`` says why)."""

    offset: int
    length: int
    ts: float
    packet: int
    reason: str


class HalfStream:
    """One direction of a TCP connection: feed segments, get :class:`Data` and :class:`Hole`."""

    def __init__(self) -> None:
        self.isn: int | None = None
        #: True when the capture began after this direction's SYN.
        self.mid_stream = False
        self.next = 0
        self.peer_ack = 0
        #: The latest raw acknowledgement number not yet taken into ``peer_ack`` (the
        #: hot path stores it; every other entry point settles it first).
        self.raw_ack: int | None = None
        self.fin_at: int | None = None
        self._ooo: dict[int, tuple[bytes, int, float, int]] = {}
        self._ooo_bytes = 0
        self.retransmitted = 0
        self.out_of_order = 0
        self.overlaps = 0
        self.overlap_conflicts = 0
        self.hole_bytes = 0
        self.holes = 0
        self.delivered = 0
        self.last_ts: float | None = None
        self.first_ts: float | None = None
        self._last_chunk = b""  # tail of the last delivered bytes, to compare overlaps

    def _off(self, seq: int) -> int:
        assert self.isn is not None
        rel = (seq - self.isn) % _MOD
        return self.next + ((rel - self.next + _HALF) % _MOD - _HALF)

    def segment(
        self,
        seq: int,
        *,
        syn: bool,
        fin: bool,
        payload: bytes,
        wire_len: int,
        ts: float,
        packet: int,
    ) -> Iterator[Data | Hole]:
        """Take one segment; yield what becomes deliverable."""
        if self.raw_ack is not None:
            self._settle()
        if self.first_ts is None:
            self.first_ts = ts
        self.last_ts = ts
        if syn:
            if self.isn is None or (self.mid_stream and not self.delivered):
                self.isn = (seq + 1) % _MOD
                self.mid_stream = False
                self.next = 0
            return
        if self.isn is None:
            if not wire_len:
                return
            self.isn = seq
            self.mid_stream = True
        off = self._off(seq)
        if fin:
            self.fin_at = off + wire_len
        if not wire_len:
            return
        yield from self._place(off, payload, wire_len, ts, packet)
        yield from self._check_ack(ts, packet)

    def ack(self, ackno: int, ts: float, packet: int) -> Iterator[Data | Hole]:
        """The reverse direction acknowledged ``ackno`` (for this direction's bytes)."""
        if self.raw_ack is not None:
            self._settle()
        if self.isn is None:
            return
        off = self._off(ackno)
        if off > self.peer_ack and off - self.next < _HALF:
            self.peer_ack = off
            yield from self._check_ack(ts, packet)

    def in_order(self, seq: int, payload: bytes, ts: float, packet: int) -> Data | None:
        """The common case in one call: a whole segment at the next expected offset with
        nothing waiting behind a gap is delivered at once (``None``: use :meth:`segment`)."""
        if self.isn is None or self._ooo:
            return None
        rel = (seq - self.isn) % _MOD
        if rel != self.next % _MOD or not payload:
            return None
        off = self.next
        self.last_ts = ts
        n = len(payload)
        self.next = off + n
        self.delivered += n
        return Data(off, payload, ts, packet)

    def ack_only(self, ackno: int) -> bool:
        """:meth:`ack` without a generator: True when pieces became deliverable (then
        :meth:`ack` must be iterated with the same number)."""
        if self.raw_ack is not None:
            self._settle()
        if self.isn is None:
            return False
        off = self._off(ackno)
        if off > self.peer_ack and off - self.next < _HALF:
            if self._ooo and off > self.next and off >= min(self._ooo):
                return True
            self.peer_ack = off
        return False

    def finish(self, ts: float, packet: int) -> Iterator[Data | Hole]:
        """The capture ended: whatever still waits behind a gap is delivered after a hole."""
        if self.raw_ack is not None:
            self._settle()
        while self._ooo:
            first = min(self._ooo)
            yield from self._hole(first - self.next, ts, packet, "lost")
            yield from self._drain()
        acked = self.peer_ack
        if self.fin_at is not None:
            acked = min(acked, self.fin_at)  # the FIN takes a sequence number, not a byte
        if acked > self.next:
            yield from self._hole(acked - self.next, ts, packet, "lost")

    # -- machinery ----------------------------------------------------------------
    def _settle(self) -> None:
        ackno, self.raw_ack = self.raw_ack, None
        if self.isn is None or ackno is None:
            return
        off = self._off(ackno)
        if off > self.peer_ack and off - self.next < _HALF:
            self.peer_ack = off

    def _place(
        self, off: int, payload: bytes, wire_len: int, ts: float, packet: int
    ) -> Iterator[Data | Hole]:
        end = off + wire_len
        if end <= self.next:
            self.retransmitted += 1
            return
        if off < self.next:
            cut = self.next - off
            self.overlaps += 1
            payload = payload[cut:]
            wire_len -= cut
            off = self.next
        if off > self.next:
            self.out_of_order += 1
            old = self._ooo.get(off)
            if old is None or old[1] < wire_len:
                if old is not None:
                    self._ooo_bytes -= len(old[0])
                self._ooo[off] = (payload, wire_len, ts, packet)
                self._ooo_bytes += len(payload)
            if self._ooo_bytes > MAX_OOO_BYTES or len(self._ooo) > _MAX_OOO_SEGMENTS:
                first = min(self._ooo)
                yield from self._hole(first - self.next, ts, packet, "lost")
                yield from self._drain()
            return
        yield from self._deliver(payload, wire_len, ts, packet)
        yield from self._drain()

    def _deliver(
        self, payload: bytes, wire_len: int, ts: float, packet: int
    ) -> Iterator[Data | Hole]:
        if payload:
            yield Data(self.next, payload, ts, packet)
            self.next += len(payload)
            self.delivered += len(payload)
        if wire_len > len(payload):
            yield from self._hole(wire_len - len(payload), ts, packet, "snaplen")

    def _hole(self, length: int, ts: float, packet: int, reason: str) -> Iterator[Hole]:
        if length <= 0:
            return
        yield Hole(self.next, length, ts, packet, reason)
        self.next += length
        self.holes += 1
        self.hole_bytes += length

    def _drain(self) -> Iterator[Data | Hole]:
        while self._ooo:
            first = min(self._ooo)
            if first > self.next:
                return
            payload, wire_len, ts, packet = self._ooo.pop(first)
            self._ooo_bytes -= len(payload)
            end = first + wire_len
            if end <= self.next:
                self.retransmitted += 1
                continue
            if first < self.next:
                cut = self.next - first
                self.overlaps += 1
                payload, wire_len = payload[cut:], wire_len - cut
            yield from self._deliver(payload, wire_len, ts, packet)

    def _check_ack(self, ts: float, packet: int) -> Iterator[Data | Hole]:
        # The peer has bytes the capture lacks: they will not come again.
        if self._ooo and self.peer_ack > self.next:
            first = min(self._ooo)
            if self.peer_ack >= first:
                yield from self._hole(first - self.next, ts, packet, "lost")
                yield from self._drain()
