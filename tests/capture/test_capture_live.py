"""The release bound and the postcopy-device pair on fresh real-QEMU captures (marker ``qemu``).

Each run is a lab ``plain`` postcopy migration (10–20 s) whose full loopback pcap is decoded
alone (the lab's record moved away): the bound from the wire must contain the source's
release; a pre-10.2 source must be bounded below 11.1; an 11.1.3 source sends PING 0x42
inside the package just before POSTCOPY_RUN whatever the machine type (here an older one,
pc-q35-10.0: the ceiling rule "page requests without PONG 0x42 ⇒ ≤ 10.1" depends on it).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from migcompat.capture import CaptureOptions, PostcopyDevice, Record, decode_capture
from migcompat.lab import LabStalled, find_build
from migcompat.lab.runner import run_scenario
from migcompat.protocol import Release

pytestmark = pytest.mark.qemu


def _run(release: str, machine: str | None, tmp_path: Path) -> tuple:
    build = find_build(release)
    if build is None:
        pytest.skip(f"QEMU {release} not provisioned: run `migcompat lab provision {release}`")
    out = tmp_path / "run"
    try:
        run_scenario(build, build, "plain", machine=machine, outdir=out)
    except LabStalled:
        run_scenario(build, build, "plain", machine=machine, outdir=out)
    alone = tmp_path / "alone"
    alone.mkdir()
    pcap = alone / "capture.pcap"
    (out / "capture.pcap").rename(pcap)
    recs: list[Record] = []
    rep = decode_capture(str(pcap), CaptureOptions(), recs.append)
    return Release(build.release), rep, recs


@pytest.mark.parametrize(("release", "machine"), [("11.1", "pc-q35-10.0"), ("10.0", None)])
def test_bound_and_postcopy_device_live(release: str, machine: str | None, tmp_path: Path):
    true, rep, recs = _run(release, machine, tmp_path)
    b = rep.bound
    assert b is not None and b.low <= true <= b.high, b.basis()
    (m,) = rep.migrations
    assert m.done and rep.connections["c0"].rp_verdict == "accepted"
    fwd = [(r.kind, r.name, r.fields.get("value")) for r in recs if r.dir == "fwd"]
    run = fwd.index(("command", "MIG_CMD_POSTCOPY_RUN", None))
    if true >= Release("10.2"):
        assert b.low >= Release("10.2")
        # PING 3, PING 0x42, POSTCOPY_RUN at the end of the package.
        assert fwd[run - 1] == ("command", "MIG_CMD_PING", 0x42)
        marks = [r for r in recs if isinstance(r, PostcopyDevice)]
        assert [r.name for r in marks] == ["PING 0x42", "PONG 0x42"]
        first_req = next(r for r in recs if r.kind == "rp-frame" and "REQ_PAGES" in r.name)
        assert marks[1].t <= first_req.t and m.device_pong_read
    else:
        assert b.high < Release("11.1") and m.device_ping_ts is None
        assert fwd[run - 1] == ("command", "MIG_CMD_PING", 3)
