"""HalfStream: one TCP direction reassembled, holes with their offsets."""

from __future__ import annotations

import pytest

from migcompat.capture import Data, HalfStream, Hole
from migcompat.capture._tcp import MAX_OOO_BYTES


def feed(h: HalfStream, seq: int, data: bytes, wire: int | None = None, **kw: bool) -> list:
    return list(
        h.segment(
            seq % (1 << 32),
            syn=kw.get("syn", False),
            fin=kw.get("fin", False),
            payload=data,
            wire_len=len(data) if wire is None else wire,
            ts=0.0,
            packet=0,
        )
    )


def joined(pieces: list) -> bytes:
    return b"".join(p.data for p in pieces if isinstance(p, Data))


@pytest.mark.parametrize("isn", [1000, (1 << 32) - 3])  # the second wraps at once
def test_in_order_with_wraparound(isn: int) -> None:
    h = HalfStream()
    assert feed(h, isn, b"", syn=True) == []
    out = feed(h, isn + 1, b"abc") + feed(h, isn + 4, b"defg")
    assert joined(out) == b"abcdefg" and [p.offset for p in out] == [0, 3]


def test_out_of_order_retransmission_overlap() -> None:
    h = HalfStream()
    feed(h, 0, b"", syn=True)
    out = feed(h, 5, b"efg")  # ahead: waits
    assert out == [] and h.out_of_order == 1
    out += feed(h, 1, b"abcd")  # fills up to 5
    out += feed(h, 1, b"abcd")  # retransmission
    out += feed(h, 3, b"cdefghij")  # overlaps the front
    assert joined(out) == b"abcdefghij"
    assert h.retransmitted >= 1 and h.overlaps >= 1 and h.holes == 0


def test_snaplen_hole_has_the_wire_length() -> None:
    h = HalfStream()
    feed(h, 0, b"", syn=True)
    out = feed(h, 1, b"ab", wire=10) + feed(h, 11, b"xyz")
    assert out[1] == Hole(2, 8, 0.0, 0, "snaplen")
    assert isinstance(out[2], Data) and out[2].offset == 10


def test_lost_bytes_the_peer_acknowledged() -> None:
    h = HalfStream()
    feed(h, 0, b"", syn=True)
    feed(h, 1, b"abc")
    assert feed(h, 9, b"zz") == []  # 3..8 missing: maybe only late
    out = list(h.ack(11, 0.0, 1))  # the peer has everything up to 10
    assert out[0] == Hole(3, 5, 0.0, 1, "lost") and joined(out) == b"zz"


def test_fin_ack_is_not_a_hole() -> None:
    h = HalfStream()
    feed(h, 0, b"", syn=True)
    feed(h, 1, b"abc", fin=True)
    list(h.ack(5, 0.0, 1))  # data + FIN
    assert list(h.finish(0.0, 2)) == []


def test_capture_ending_behind_a_gap() -> None:
    h = HalfStream()
    feed(h, 0, b"", syn=True)
    feed(h, 1, b"ab")
    feed(h, 10, b"later")
    out = list(h.finish(1.0, 9))
    assert out[0] == Hole(2, 7, 1.0, 9, "lost") and joined(out) == b"later"


def test_out_of_order_buffer_is_bounded() -> None:
    h = HalfStream()
    feed(h, 0, b"", syn=True)
    chunk = b"x" * (1 << 20)
    out: list = []
    for i in range(MAX_OOO_BYTES // len(chunk) + 2):
        out += feed(h, 101 + i * len(chunk), chunk)  # bytes 0..99 never come
    assert isinstance(out[0], Hole) and out[0].offset == 0 and out[0].length == 100
    assert h._ooo_bytes <= MAX_OOO_BYTES


def test_capture_started_mid_stream() -> None:
    h = HalfStream()
    out = feed(h, 777, b"mid")
    assert h.mid_stream and joined(out) == b"mid"
