"""The relay under load, byte for byte (``benchmarks/proxy_load.py`` at smaller sizes).

The benchmark pushes 1 GiB forward and 10 MiB of return-path frames back; here the big case
pushes 128 MiB forward (1 GiB takes minutes on two shared cores) and the full 10 MiB back,
and the back-pressure / close cases use a few MiB each. Loopback only.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import proxy_load


def _run(load: proxy_load.Load, tmp_path: Path) -> proxy_load.Outcome:
    return asyncio.run(proxy_load.exchange(load, tmp_path / "relay"))


def test_128_mib_forward_and_10_mib_of_frames_back_byte_exact(tmp_path):
    load = proxy_load.Load(fwd_bytes=128 << 20, rp_bytes=10 << 20, seed=7, injections=20,
                           after_bitmap=5)  # fmt: skip
    out = _run(load, tmp_path)
    assert out.problems == []
    assert not out.stalled
    assert sum(1 for _ in out.injections) >= 5  # the five after RECV_BITMAP blobs at least


@pytest.mark.parametrize("release", [None, "11.1"])
@pytest.mark.parametrize("slow", ["", "src", "dst"])
@pytest.mark.parametrize("close", ["fin", "rst-src", "rst-dst"])
def test_byte_exact_with_back_pressure_and_each_close(tmp_path, close, slow, release):
    load = proxy_load.Load(fwd_bytes=3 << 20, rp_bytes=1 << 20, seed=11, close=close, slow=slow,
                           injections=5, after_bitmap=3, release=release)  # fmt: skip
    out = _run(load, tmp_path)
    assert out.problems == []
    assert len(out.injections) >= 3


def test_injection_right_after_a_recv_bitmap_blob_lands_at_its_end(tmp_path):
    import random

    load = proxy_load.Load(fwd_bytes=0, rp_bytes=200_000, seed=3, injections=0, after_bitmap=4)
    _rp, _ends, bitmap_ends = proxy_load.rp_stream(random.Random(3), 200_000, load.bitmap_max)
    out = _run(load, tmp_path)
    assert out.problems == []
    assert len(out.injections) == 4
    assert {i["dst_boundary"] for i in out.injections} <= set(bitmap_ends)


def test_the_check_catches_a_misplaced_or_changed_byte():
    """The verifier itself can fail: one byte off, or an injection off its boundary."""
    rp = proxy_load.make_frame(2, b"abcd") * 3
    inj = {"src_offset": 8, "dst_boundary": 8, "hex": proxy_load.KEEPALIVE.hex()}
    good = rp[:8] + proxy_load.KEEPALIVE + rp[8:]
    assert proxy_load._check_rp(rp, {0, 8, 16, 24}, good, [inj]) == []
    bad = bytearray(good)
    bad[-1] ^= 1
    assert proxy_load._check_rp(rp, {0, 8, 16, 24}, bad, [inj])
    off = dict(inj, src_offset=5, dst_boundary=5)
    moved = rp[:5] + proxy_load.KEEPALIVE + rp[5:]
    assert any(
        "not a frame boundary" in p for p in proxy_load._check_rp(rp, {0, 8, 16, 24}, moved, [off])
    )


def test_soak_short_no_stall(tmp_path):
    """CI's short soak (the benchmark runs 10 000 connections)."""
    res = asyncio.run(proxy_load.soak(300, 16, seed=5, quiet=True))
    assert res["stalls"] == 0
    assert res["failures"] == 0, res["first_failures"]
    assert res["injections"] > 100
