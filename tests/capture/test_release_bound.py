"""The source release bounded from the wire, the postcopy-device pair and time order,
on every committed lab capture (real QEMU 5.2, 7.2, 10.0, 11.1), with and without the
lab's metadata beside the pcap."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from migcompat.capture import (
    CaptureOptions,
    PostcopyDevice,
    Record,
    RpUnread,
    SplitBrain,
    decode_capture,
)
from migcompat.protocol import Release

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures" / "captures"
NAMES = sorted(p.name for p in FIXTURES.glob("*") if (p / "metadata.json").exists())
pytestmark = pytest.mark.skipif(not NAMES, reason="no lab captures under fixtures/captures")


def _meta(name: str) -> dict:
    return json.loads((FIXTURES / name / "metadata.json").read_text())


def _decode(path: Path) -> tuple:
    recs: list[Record] = []
    rep = decode_capture(str(path), CaptureOptions(), recs.append)
    return rep, recs


@pytest.fixture(params=["with-metadata", "pcap-alone"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> object:
    def path(name: str) -> Path:
        if request.param == "with-metadata":
            return FIXTURES / name / "capture.pcap"
        alone = tmp_path / name
        alone.mkdir()
        shutil.copy(FIXTURES / name / "capture.pcap", alone / "capture.pcap")
        return alone / "capture.pcap"

    path.kind = request.param  # type: ignore[attr-defined]
    return path


@pytest.mark.parametrize("name", NAMES)
def test_bound_contains_the_true_release(name: str, where: object) -> None:
    meta = _meta(name)
    # a `migcompat lab build` source speaks its own source's release (10.0.13+keepalive)
    true = Release(meta["src"].get("protocol_release") or meta["src"]["release"])
    rep, _ = _decode(where(name))  # type: ignore[operator]
    b = rep.bound
    assert b is not None and b.contradiction is None
    assert b.low <= Release(true.line) <= b.high, (name, b.text())
    # The ceiling comes from page requests with no PONG 0x42 before them: an idle (-S)
    # destination requests no page, so its wire cannot tell a 7.2 source from an 11.1 one.
    if Release(true.line) in (Release("7.2"), Release("10.0")) and not meta["scenario"]["idle"]:
        assert b.high < Release("11.1"), (name, b.text(), [e.text() for e in b.evidence])
    if where.kind == "pcap-alone":  # type: ignore[attr-defined]
        # Read as the newest release inside the bound, with the evidence named.
        assert rep.source == b.high and rep.source_basis.startswith("stream: consistent with")
        assert b.evidence and "machine type" in rep.source_basis
    else:
        assert rep.source == true and rep.source_basis == "metadata.json"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kind", ["pcap", "raw"])
def test_records_in_time_order(name: str, kind: str) -> None:
    folder = FIXTURES / name
    _, recs = _decode(folder / "capture.pcap" if kind == "pcap" else folder)
    times = [r.t for r in recs]
    assert times == sorted(times)


@pytest.mark.parametrize("name", NAMES)
def test_postcopy_device_pair(name: str, where: object) -> None:
    meta = _meta(name)
    rep, recs = _decode(where(name))  # type: ignore[operator]
    marks = [r for r in recs if isinstance(r, PostcopyDevice)]
    (m,) = rep.migrations
    statuses = [s["status"] for s in meta["statuses"]["src"]] + [
        e["data"].get("status") for e in meta["events"]["src"] if e["event"] == "MIGRATION"
    ]
    if Release(meta["src"]["release"]) < Release("10.2"):
        assert marks == [] and m.device_pong_ts is None
        return
    # The lab's QMP saw the source in postcopy-device; the wire shows why it left it.
    assert "postcopy-device" in statuses
    (pong,) = [r for r in marks if r.name == "PONG 0x42"]
    assert m.device_pong_ts is not None and pong.dir == "rp"
    if meta["scenario"]["kind"] == "inject":
        # The injected frame is rejected: after PONG 0x42 (the source had read it), or
        # before it (PONG 0x42 is on the wire after the frame the source stopped at).
        (sb,) = [r for r in recs if isinstance(r, SplitBrain)]
        assert m.split_brain and meta["split_brain"] is True
        assert m.rejected is not None
        if m.device_pong_read:
            assert pong.t <= sb.t and sb.offset == m.rejected[1]
        else:
            assert any(isinstance(r, RpUnread) and r.offset == pong.offset for r in recs)
            assert pong.offset > m.rejected[1]
    else:
        assert not any(isinstance(r, SplitBrain) for r in recs)


def test_split_brain_on_inject_8_11_1() -> None:
    """The issue's case: a real 11.1 source rejects a frame after PONG 0x42."""
    name = "inject-8-11.1"
    if not (FIXTURES / name).exists():
        pytest.skip(f"no {name} fixture")
    rep, recs = _decode(FIXTURES / name / "capture.pcap")
    kinds = [(r.kind, r.name) for r in recs if r.dir == "rp"]
    i = kinds.index(("postcopy-device", "PONG 0x42"))
    j = kinds.index(("split-brain", "boundary"))
    assert kinds[i - 1] == ("rp-frame", "MIG_RP_MSG_PONG") and i < j
    assert kinds[j - 1][0] == "rp-violation"
    assert rep.rejected
