"""ForwardReader properties (h11's fuzz rule): any bytes, any split, any gaps give only
events, NEED_DATA, STOPPED or a RemoteViolation; split points never change the events."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from migcompat.protocol import NEED_DATA, STOPPED, ForwardReader, RemoteViolation
from tests.test_forward import decode, stream

pytestmark = pytest.mark.property

BASE = stream()


def run(data: bytes, cuts: list[int], gaps: set[int], channel: str) -> list:
    r = ForwardReader("10.0", channel=channel)
    out: list = []
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    try:
        for i, (a, b) in enumerate(itertools.pairwise(points)):
            r.receive_data(data[a:b])
            if i in gaps:
                r.gap(1 + i)
            while (ev := r.next_event()) not in (NEED_DATA, STOPPED):
                out.append(ev)
        r.receive_data(b"")
        while (ev := r.next_event()) not in (NEED_DATA, STOPPED):
            out.append(ev)
    except RemoteViolation as exc:
        out.append(exc)
    return out


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(0, len(BASE)), max_size=12))
def test_split_points_do_not_matter(cuts: list[int]) -> None:
    assert run(BASE, cuts, set(), "main") == decode(BASE)


@settings(max_examples=150, deadline=None)
@given(
    st.binary(max_size=3000),
    st.lists(st.integers(0, 4000), max_size=8),
    st.sets(st.integers(0, 8), max_size=3),
    st.sampled_from(["main", "auto", "preempt"]),
)
def test_random_bytes_and_gaps(data: bytes, cuts: list[int], gaps: set[int], ch: str) -> None:
    run(data, cuts, gaps, ch)


@settings(max_examples=150, deadline=None)
@given(st.integers(0, len(BASE) - 1), st.integers(1, 255), st.lists(st.integers(0, 9000)))
def test_mutated_stream(at: int, xor: int, cuts: list[int]) -> None:
    data = bytearray(BASE)
    data[at] ^= xor
    run(bytes(data), cuts, set(), "main")
