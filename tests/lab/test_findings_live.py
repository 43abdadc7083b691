"""Each committed finding's repro.py, run against the provisioned builds (marker ``qemu``).

For every row of a bundle's ``evidence/runs.json`` (source → destination release, and whether
that pair showed the finding in the lab) the bundle's own repro.py runs with those builds and
must agree: exit 1 where the finding was seen, 0 where it was not. The day a release fixes the
behaviour this test fails for that row: re-run the lab for it and regenerate the bundle with
`migcompat lab report` (the row then says "no" — the finding is marked fixed there, not
deleted).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from migcompat.lab import QemuBuild, find_build, installed_builds

pytestmark = pytest.mark.qemu

FINDINGS_DIR = Path(__file__).resolve().parents[2] / "docs" / "findings"


def _cases() -> list[tuple[Path, dict]]:
    cases = []
    for runs in sorted(FINDINGS_DIR.glob("*/evidence/runs.json")):
        bundle = runs.parent.parent
        seen = set()
        for row in json.loads(runs.read_text())["runs"]:
            key = (row["src"], row["dst"])
            if key not in seen:
                seen.add(key)
                cases.append((bundle, row))
    return cases


def _side_args(side: str, build: QemuBuild) -> list[str]:
    """How repro.py is told to run a build: its Debian root, or a user build's binary."""
    if build.root is not None:
        return [f"--{side}-root", str(build.root), f"--{side}", build.binary]
    return [f"--{side}", build.binary]


def _build(release: str, version: str) -> QemuBuild:
    if not installed_builds():
        pytest.skip("no QEMU provisioned: run `migcompat lab provision` (see README)")
    b = find_build(release)
    if b is None:
        pytest.skip(f"QEMU {release} not provisioned: run `migcompat lab provision {release}`")
    if b.version_text != version:
        pytest.skip(
            f"{release} here is {b.version_text!r}, the finding was recorded on {version!r}"
        )
    return b


@pytest.mark.parametrize(
    ("bundle", "row"),
    _cases(),
    ids=[f"{b.name}:{r['src']}->{r['dst']}" for b, r in _cases()],
)
def test_repro_agrees_with_the_lab(bundle: Path, row: dict, tmp_path: Path) -> None:
    src = _build(row["src"], row["src_version"])
    dst = _build(row["dst"], row["dst_version"])
    # The workdir sits in the build's run dir: the lab's roots already see it at that path.
    workdir = src.run_dir / f"repro-{tmp_path.name}"
    cmd = [
        sys.executable,
        str(bundle / "repro.py"),
        *_side_args("src", src),
        *_side_args("dst", dst),
        "--workdir",
        str(workdir),
        "--json",
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    want = 1 if row["shows"] else 0
    tail = "\n".join(proc.stderr.splitlines()[-8:])
    assert proc.returncode in (0, 1), f"repro.py could not run:\n{tail}"
    got = json.loads(proc.stdout)
    assert proc.returncode == want, (
        f"{row['src']} → {row['dst']}: the lab saw {'it' if row['shows'] else 'no finding'} "
        f"({row['observed']}); repro.py now says reproduces={got['reproduces']}:\n{tail}\n"
        "If a release changed its behaviour, re-run the lab and regenerate the bundle "
        "(`migcompat lab report`): mark it fixed there, do not delete the finding."
    )
