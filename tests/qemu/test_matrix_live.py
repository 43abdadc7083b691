"""A small live slice of the matrix (marker ``qemu``): three cells, predicted = observed.

Picks the oldest and the newest provisioned release (CI provisions 7.2 and a 10.x/11.x):
``old->new`` plain, ``new->old`` keepalive-proposal (source fails or pauses, per release),
``old->old`` switchover-ack. Each cell takes 10-30 s.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from migcompat.compat import Cell, common_machines, predict
from migcompat.lab import provision_hint, run_cells
from migcompat.protocol import Release, known_releases

pytestmark = pytest.mark.qemu


def _lines() -> list[str]:
    try:
        from migcompat.lab import installed_builds

        builds = installed_builds()
    except Exception:  # pragma: no cover - a broken lab install reads as "not provisioned"
        return []
    lines = {str(Release(b.release).line) for b in builds}
    return sorted((x for x in lines if Release(x) in known_releases()), key=Release)


def _cells() -> list[Cell]:
    lines = _lines()
    if not lines:
        return []
    old, new = lines[0], lines[-1]
    out = []
    for a, b, scenario in ((old, new, "plain"), (new, old, "keepalive-proposal"),
                           (old, old, "switchover-ack")):  # fmt: skip
        out.append(Cell(a, b, common_machines(a, b)[-1], scenario))
    return out


CELLS = _cells()


@pytest.mark.skipif(not CELLS, reason=f"no QEMU provisioned: {provision_hint()}")
@pytest.mark.parametrize("cell", CELLS or [None], ids=[c.id for c in CELLS] or ["none"])
def test_cell_matches_prediction(cell: Cell, tmp_path: Path) -> None:
    pred = predict(cell)
    # A lab run that never returns is no observation: run_cells re-runs it (--retries).
    (result,) = run_cells([pred], tmp_path, timeout=60.0, retries=2)
    if result.outcome == "skipped":
        pytest.skip("; ".join(result.reasons))
    assert result.outcome == "pass", (result.reasons, result.record, result.observed)
    if pred.split_brain == "always":
        assert result.observed["split_brain"]
