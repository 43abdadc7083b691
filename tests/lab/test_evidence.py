"""Who sent a run's type-8 frames: QEMU or the proxy's injection (committed fixtures)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from migcompat.lab import LabError
from migcompat.lab.evidence import keepalive_evidence, rp_frames

CAPTURES = Path(__file__).resolve().parents[2] / "fixtures/captures"


def test_an_injected_keepalive_is_not_counted_as_qemus():
    ev = keepalive_evidence(CAPTURES / "inject-8-7.2")
    assert ev["frames"] == 1 and ev["injections"] == 1 and ev["from_qemu"] == 0
    assert ev["first_t"] is None


def test_a_frame_nobody_injected_is_qemus_and_timed(tmp_path):
    # the same bytes without the injection record and chunk: the frame is QEMU's
    run = tmp_path / "run"
    shutil.copytree(CAPTURES / "inject-8-7.2", run)
    meta = json.loads((run / "metadata.json").read_text())
    inj = meta["return_path"]["injections"][0]
    meta["return_path"]["injections"] = []
    (run / "metadata.json").write_text(json.dumps(meta))
    chunks = (run / "chunks.jsonl").read_text().replace('"dir": "inject"', '"dir": "rp"')
    (run / "chunks.jsonl").write_text(chunks)
    ev = keepalive_evidence(run)
    assert ev["from_qemu"] == 1
    frame = next(f for f in rp_frames(run) if f["type_id"] == 8)
    assert frame["offset"] == inj["src_offset"]
    assert ev["first_t"] == frame["t"] and ev["first_t"] >= ev["dst_postcopy_active_t"]
    assert ev["first_after_postcopy_active_s"] == round(
        ev["first_t"] - ev["dst_postcopy_active_t"], 3
    )


def test_plain_run_has_no_keepalive():
    ev = keepalive_evidence(CAPTURES / "plain-7.2")
    assert ev["frames"] == 0 and ev["rp_frames"] > 0


def test_not_a_run_folder(tmp_path):
    with pytest.raises(LabError, match=r"no record\.json"):
        keepalive_evidence(tmp_path)
