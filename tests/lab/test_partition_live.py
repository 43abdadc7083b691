"""A real silent partition during postcopy (markers ``qemu`` and ``netns``), about 35 s.

An idle 10.1+ destination (``-S``) with TCP keep-alive ``tcp:2,1,2`` on its listening socket
must report ``postcopy-paused`` within the model's bound (2 + 2 × 1 = 4 s after the cut),
while the source, which still has pages to push, does not notice within the window
(retransmission give-up: 924.6 s with Linux's defaults).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from migcompat.compat import predict_partition
from migcompat.lab import installed_builds, provision_hint
from migcompat.lab.builds import release_key
from migcompat.lab.netns import netns_unavailable
from migcompat.lab.partition import TOLERANCE_S, run_partition

pytestmark = [pytest.mark.qemu, pytest.mark.netns]


def test_keepalive_destination_notices_within_bound(tmp_path: Path):
    builds = [b for b in installed_builds() if release_key(b.release) >= (10, 1)]
    if not builds:
        pytest.skip("no QEMU >= 10.1 provisioned (keep-alive on listening sockets): "
                    + provision_hint("11.1"))  # fmt: skip
    why = netns_unavailable()
    if why:
        pytest.skip(f"cannot make network namespaces here: {why}")
    b = max(builds, key=lambda b: release_key(b.release))
    rec = run_partition(b, b, "partition-idle", strategy="tcp:2,1,2", window=20, outdir=tmp_path)
    settings = rec.sysctls["dst"]
    bound = predict_partition(b.release, b.release, "tcp:2,1,2", settings=settings).destination
    assert bound.detect_s == 4.0 and bound.mechanism == "keepalive"
    assert rec.detected["dst"] is not None, rec.statuses
    assert rec.detected["dst"] <= bound.detect_s + TOLERANCE_S
    assert rec.detected_status["dst"] == "postcopy-paused"
    # Three probes' worth of evidence: the socket really had idle=2, interval=1.
    probes = rec.keepalive_seen["dst"]["probe_times_after_cut"]
    assert probes and 1.5 <= probes[0] <= 2.8, probes
    assert rec.detected["src"] is None  # still retransmitting at the end of the window
    assert rec.checks["src"]["verdict"] == rec.checks["dst"]["verdict"] == "agrees"
    assert rec.after_cut["icmp"] == 0 and rec.after_cut["src"]["rst"] == 0
