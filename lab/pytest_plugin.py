"""pytest plugin (entry point ``pytest11``): parametrize another project's suite over matrix cells.

Usage in a test suite (the plugin loads itself once ``qemu-migcompat`` is installed)::

    import pytest

    @pytest.mark.migcompat_matrix(releases="7.2,11.1", scenarios=["plain", "keepalive-proposal"])
    def test_outcome(migcompat_cell, migcompat_run):
        print(migcompat_cell.cell.id, migcompat_cell.src_status, migcompat_cell.split_brain)
        result = migcompat_run(migcompat_cell)      # runs it on the lab; skips if not provisioned
        assert result.outcome == "pass", result.reasons

``migcompat_cell`` is a :class:`migcompat.compat.Prediction` (``.cell`` is the cell); test ids
are cell ids such as ``7.2->11.1/pc-q35-7.2/plain``. Without the marker a test that asks for
``migcompat_cell`` runs over the default matrix (``--migcompat-releases`` /
``--migcompat-scenarios`` override the defaults on the command line).

Every cell ``migcompat_run`` runs leaves the record ``matrix run`` leaves
(``<cell>/matrix-cell.json``, naming the marker's selection); with ``--migcompat-out DIR`` they
go to DIR, so that ``pytest -n 4 --migcompat-out mx`` (pytest-xdist) runs cells in parallel on
one host and ``migcompat matrix merge mx`` makes the matrix report of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

__all__ = [
    "migcompat_run",
    "pytest_addoption",
    "pytest_configure",
    "pytest_generate_tests",
]


def __dir__() -> list[str]:
    return list(__all__)


def _list(value: str | Sequence[str] | None) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [x.strip() for x in value.split(",") if x.strip()]
    return list(value)


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--migcompat-releases`` / ``--migcompat-scenarios``: defaults for unmarked tests."""
    group = parser.getgroup("migcompat", "QEMU migration cross-version matrix")
    group.addoption("--migcompat-releases", default=None, metavar="R,R",
                    help="release lines of the matrix (default 7.2,10.0,11.1)")  # fmt: skip
    group.addoption("--migcompat-scenarios", default=None, metavar="S,S",
                    help="matrix scenarios (default: the core ones)")  # fmt: skip
    group.addoption("--migcompat-out", default=None, metavar="DIR",
                    help="write the cells' run folders and records (matrix-cell.json) to DIR, "
                    "for `migcompat matrix merge DIR` (default: each test's tmp_path)")  # fmt: skip


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker."""
    config.addinivalue_line(
        "markers",
        "migcompat_matrix(releases=None, scenarios=None, machines='newest'): parametrize "
        "`migcompat_cell` over the QEMU migration cross-version matrix",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize ``migcompat_cell`` over the cells the marker (or the options) select."""
    if "migcompat_cell" not in metafunc.fixturenames:
        return
    preds = _selection(metafunc.definition, metafunc.config).predictions()
    metafunc.parametrize("migcompat_cell", preds, ids=[p.cell.id for p in preds])


def _selection(node: pytest.Item, config: pytest.Config) -> Any:
    """The matrix a test is parametrized over (its marker, else the options)."""
    from migcompat.compat import Selection

    marker = node.get_closest_marker("migcompat_matrix")
    kw: dict[str, Any] = dict(marker.kwargs) if marker else {}
    opt = config.getoption
    releases = _list(kw.get("releases")) or _list(opt("--migcompat-releases"))
    scenarios = _list(kw.get("scenarios")) or _list(opt("--migcompat-scenarios"))
    return Selection.of(releases, scenarios, kw.get("machines", "newest"))


@pytest.fixture
def migcompat_run(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., Any]:
    """A function running a cell on the lab: ``migcompat_run(prediction, **kw) -> CellResult``.

    Skips the test (with the reason) when the cell is not predicted or a build is missing.
    The cell's record goes to ``--migcompat-out`` (else under ``tmp_path``).
    """
    from migcompat.lab import run_cell

    out = request.config.getoption("--migcompat-out")
    folder = Path(out) if out else tmp_path / "matrix"
    selection = _selection(request.node, request.config)

    def run(pred: Any, **kw: Any) -> Any:
        kw.setdefault("selection", selection)
        result = run_cell(pred, folder, **kw)
        if result.outcome == "skipped":
            pytest.skip("; ".join(result.reasons))
        return result

    return run
