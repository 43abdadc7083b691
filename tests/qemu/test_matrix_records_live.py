"""Per-cell records on real QEMU: ``matrix merge`` of a run's records is that run's report,
byte for byte, and the pytest plugin under ``pytest -n`` (pytest-xdist) leaves the same records.

Two cells of the newest provisioned release (plain, keepalive-proposal; ~15 s each).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from migcompat.protocol import Release

pytestmark = pytest.mark.qemu


def _newest() -> str | None:
    try:
        from migcompat.lab import installed_builds

        lines = {str(Release(b.release).line) for b in installed_builds()}
    except Exception:  # pragma: no cover - a broken lab reads as "not provisioned"
        return None
    return max(lines, key=Release) if lines else None


NEWEST = _newest()
needs_qemu = pytest.mark.skipif(
    NEWEST is None, reason="no QEMU provisioned: run `migcompat lab provision`"
)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "migcompat", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )


@needs_qemu
def test_merge_of_a_run_is_its_report_and_xdist_runs_leave_the_same_records(
    tmp_path: Path,
) -> None:
    assert NEWEST is not None
    sel = ["--releases", NEWEST, "--scenarios", "plain,keepalive-proposal"]
    run = _cli(
        "matrix",
        "run",
        *sel,
        "--out",
        "out",
        "--retries",
        "2",
        "--json",
        "run.json",
        "--markdown",
        "run.md",
        "--junit",
        "run.xml",
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    merge = _cli(
        "matrix",
        "merge",
        "out",
        "--json",
        "m.json",
        "--markdown",
        "m.md",
        "--junit",
        "m.xml",
        cwd=tmp_path,
    )
    assert merge.returncode == 0, merge.stderr
    for ext in ("json", "md", "xml"):
        assert (tmp_path / f"m.{ext}").read_bytes() == (tmp_path / f"run.{ext}").read_bytes(), ext
    cells = [c["id"] for c in json.loads((tmp_path / "run.json").read_text())["cells"]]
    assert len(cells) == 2

    # The same selection through the pytest plugin, two cells at once (pytest-xdist).
    pytest.importorskip("xdist", reason="pytest-xdist not installed (the test extra has it)")
    (tmp_path / "test_cells.py").write_text(
        textwrap.dedent(f"""
        import pytest

        @pytest.mark.migcompat_matrix(releases="{NEWEST}",
                                      scenarios=["plain", "keepalive-proposal"])
        def test_cell(migcompat_cell, migcompat_run):
            result = migcompat_run(migcompat_cell)
            assert result.outcome == "pass", result.reasons
    """)
    )
    xd = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-n",
            "2",
            "-p",
            "no:cacheprovider",
            "--migcompat-out",
            "plugin",
            "test_cells.py",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert xd.returncode == 0, xd.stdout[-3000:] + xd.stderr[-2000:]
    assert "2 passed" in xd.stdout
    plugin = _cli("matrix", "merge", "plugin", "--json", "-", cwd=tmp_path)
    assert plugin.returncode == 0, plugin.stderr
    doc = json.loads(plugin.stdout)
    assert [c["id"] for c in doc["cells"]] == cells  # same selection, same cells, same order
    assert doc["summary"]["pass"] == 2 and "missing" not in doc
    both = _cli("matrix", "merge", "out", "plugin", "--json", "-", cwd=tmp_path)
    assert both.returncode == 0, both.stderr  # each cell twice, no conflict
    assert "conflicts" not in json.loads(both.stdout)
