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
    from migcompat.compat import DEFAULT_RELEASES, predict_matrix

    marker = metafunc.definition.get_closest_marker("migcompat_matrix")
    kw: dict[str, Any] = dict(marker.kwargs) if marker else {}
    opt = metafunc.config.getoption
    releases = (
        _list(kw.get("releases")) or _list(opt("--migcompat-releases")) or list(DEFAULT_RELEASES)
    )
    scenarios = _list(kw.get("scenarios")) or _list(opt("--migcompat-scenarios"))
    preds = predict_matrix(releases, scenarios, machines=kw.get("machines", "newest"))
    metafunc.parametrize("migcompat_cell", preds, ids=[p.cell.id for p in preds])


@pytest.fixture
def migcompat_run(tmp_path: Path) -> Callable[..., Any]:
    """A function running a cell on the lab: ``migcompat_run(prediction, **kw) -> CellResult``.

    Skips the test (with the reason) when the cell is not predicted or a build is missing.
    """
    from migcompat.lab import run_cell

    def run(pred: Any, **kw: Any) -> Any:
        result = run_cell(pred, tmp_path / "matrix", **kw)
        if result.outcome == "skipped":
            pytest.skip("; ".join(result.reasons))
        return result

    return run
