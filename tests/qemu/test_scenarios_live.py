"""Issue 16's claims on real QEMU (marker ``qemu``): final error-desc after a recovery, split
brain measured from guest progress, composed scenarios, switchover-ack off on 11.1.

Each cell takes 15-60 s; every test skips with a reason when its builds are not provisioned.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from migcompat.compat import Cell, predict
from migcompat.lab import run_cells

pytestmark = pytest.mark.qemu


def _have(*releases: str) -> bool:
    try:
        from migcompat.lab import find_build
    except ImportError:  # pragma: no cover
        return False
    return all(find_build(r) is not None for r in releases)


def _run(cell: Cell, tmp_path: Path) -> dict:
    if not _have(cell.source, cell.destination):
        pytest.skip(f"needs {cell.source} and {cell.destination}: `migcompat lab provision`")
    pred = predict(cell)
    assert not pred.unpredicted, pred.unpredicted
    (result,) = run_cells([pred], tmp_path, timeout=60.0, retries=2)
    assert result.outcome == "pass", (result.reasons, result.record)
    return result.observed


@pytest.mark.parametrize("rel", ["10.0", "11.1"])
def test_recover_ends_without_error_desc(rel: str, tmp_path: Path) -> None:
    obs = _run(Cell(rel, rel, f"pc-q35-{rel}", "recover"), tmp_path)
    assert obs["src_error_desc"] is None  # the final query-migrate
    assert obs["src_error_desc_seen"] == ["Postcopy migration is paused by the user"]


def test_stalled_destination_is_not_split_brain(tmp_path: Path) -> None:
    obs = _run(Cell("10.0", "10.0", "pc-q35-10.0", "blackhole-active"), tmp_path)
    assert obs["dst_runstate"] == "running" and obs["guest"] == "destination-stalled"
    assert obs["guest_progress"]["dst"] == 0 and not obs["split_brain"]


def test_plain_destination_executes(tmp_path: Path) -> None:
    obs = _run(Cell("10.0", "10.0", "pc-q35-10.0", "plain"), tmp_path)
    assert obs["guest"] == "destination-only" and obs["guest_progress"]["dst"] > 0


@pytest.mark.parametrize(("machine", "fails"), [("pc-q35-11.1", True), ("pc-q35-10.0", False)])
def test_switchover_ack_off_on_11_1(machine: str, fails: bool, tmp_path: Path) -> None:
    obs = _run(Cell("11.1", "11.1", machine, "switchover-ack-cap-off"), tmp_path)
    assert (obs["src_status"] == "failed") == fails
    if fails:
        assert obs["src_error_desc"] == "Switchover ack pending num underflowed"


def test_shut_0_mid_postcopy_completes_a_10_0_source(tmp_path: Path) -> None:
    obs = _run(Cell("10.0", "10.0", "pc-q35-10.0", "shut-0"), tmp_path)
    assert (obs["src_status"], obs["dst_status"]) == ("completed", "postcopy-paused")
