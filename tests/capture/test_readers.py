"""The pcap walk over the mmap (struct) against dpkt's reader + the generic TCP slicer."""

from __future__ import annotations

import os
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from migcompat.capture import decode_tcp, iter_packets
from migcompat.capture._readers import segments

from .builders import packets, write_pcap
from .test_capture import migration

pytestmark = pytest.mark.property


def _norm(seg: tuple) -> tuple:
    return (*seg[:9], bytes(seg[9]), seg[10])


def _dpkt_segments(path: str) -> list[tuple]:
    out = []
    for pkt in iter_packets(path, problems=[]):
        seg = decode_tcp(pkt)
        if seg is not None and not isinstance(seg, str):
            out.append((seg.index, seg.ts, seg.src, seg.sport, seg.dst, seg.dport, seg.seq,
                        seg.ack, seg.flags, bytes(seg.payload), seg.wire_len))  # fmt: skip
    return out


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    linktype=st.sampled_from([1, 0, 101, 113, 276]),
    cuts=st.lists(st.tuples(st.integers(0, 200), st.integers(0, 1500)), max_size=12),
)
def test_mmap_walk_equals_dpkt(linktype: int, cuts: list[tuple[int, int]]) -> None:
    c = migration()
    for i, caplen in cuts:  # snaplen-cut packets (wire length kept from the IP header)
        seg = c.segs[i % len(c.segs)]
        if seg.data:
            seg.caplen = min(caplen, len(seg.data))
    with tempfile.TemporaryDirectory() as d:
        path = write_pcap(os.path.join(d, "m.pcap"), packets(c), linktype)
        problems: list[str] = []
        fast = [_norm(s) for s in segments(path, "pcap", problems)]
        assert problems == []
        assert fast == _dpkt_segments(path)


def test_release_bound_rules() -> None:
    """The bound's rules, sans-IO: floors, the postcopy-device ceiling, contradictions."""
    from migcompat.capture import ReleaseBound
    from migcompat.protocol import Release

    b = ReleaseBound()
    assert (b.low, b.high) == (b.lines[0], b.lines[-1]) and not b.exact
    assert b.machine(0.0, "q35") is None  # unversioned: no evidence
    assert b.machine(0.1, "pc-i440fx-7.2") is not None and b.low == Release("7.2")
    assert b.command(0.2, "MIG_CMD_PING") is None  # as old as the catalog
    assert b.command(0.3, "MIG_CMD_SWITCHOVER_START") is not None and b.low == Release("10.0")
    assert b.no_device_ping(0.4) is not None and b.high == Release("10.1")
    assert b.text() == "source ≥ 10.0 and ≤ 10.1"
    assert b.device_ping(0.5, "PONG") is None and b.contradiction  # ≥ 10.2 contradicts ≤ 10.1
    assert (b.low, b.high) == (Release("10.0"), Release("10.1"))
    assert b.basis().startswith("stream: consistent with 10.0 … 10.1 (machine type pc-i440fx")
    c = ReleaseBound()
    c.device_ping(0.0, "PING")
    assert c.candidates() == tuple(r for r in c.lines if r >= Release("10.2"))
