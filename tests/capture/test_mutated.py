"""Mutated pcaps: a decode with problems reported, or InputError — never a traceback."""

from __future__ import annotations

import os
import tempfile
from functools import cache

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from migcompat.capture import CaptureOptions, decode_capture
from migcompat.protocol import InputError, parse_release

from .builders import packets, write_pcap
from .test_capture import migration

pytestmark = pytest.mark.property


@cache
def base_pcap() -> bytes:
    with tempfile.TemporaryDirectory() as d:
        path = write_pcap(os.path.join(d, "m.pcap"), packets(migration()))
        with open(path, "rb") as f:
            return f.read()


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 1 << 20), st.integers(1, 255)),
    st.tuples(st.just("cut"), st.integers(0, 1 << 20), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 1 << 20), st.integers(0, 255)),
    st.tuples(st.just("delete"), st.integers(0, 1 << 20), st.integers(1, 64)),
)


def mutate(data: bytes, ops: list[tuple[str, int, int]]) -> bytes:
    buf = bytearray(data)
    for op, where, arg in ops:
        if not buf:
            break
        i = where % len(buf)
        if op == "flip":
            buf[i] ^= arg
        elif op == "cut":
            del buf[i:]
        elif op == "insert":
            buf[i:i] = bytes([arg]) * 3
        else:
            del buf[i : i + arg]
    return bytes(buf)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(mutation, min_size=1, max_size=6), auto=st.booleans())
def test_mutated_pcap_never_crashes(ops: list[tuple[str, int, int]], auto: bool) -> None:
    data = mutate(base_pcap(), ops)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "x.pcap")
        with open(path, "wb") as f:
            f.write(data)
        source = None if auto else parse_release("10.0")
        try:
            rep = decode_capture(path, CaptureOptions(source=source), lambda r: None)
        except InputError as exc:
            assert str(exc)
            return
        assert rep.packets >= 0
