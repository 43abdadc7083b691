"""The emitted GitLab CI pipeline, run as written by a real GitLab CI job runner.

``gitlab-ci-local`` (npm) reads ``.gitlab-ci.yml`` and runs its jobs with its shell executor,
expanding ``parallel: matrix``, ``extends``, caches, artifacts and the ``.post`` stage as GitLab
does. The test emits a four-cell pipeline (two matrix jobs, to cross the split
``--max-jobs`` makes), runs it in a copy of this checkout on the provisioned builds, merges the
jobs' artifacts with ``matrix merge`` and checks that the result is the report ``matrix run``
of the same cells writes on one machine: same cells, order, predictions and outcomes (what each
QEMU printed may differ where timing decides, as between any two runs).

The jobs reuse the provisioned roots: ``XDG_CACHE_HOME`` is pointed at the lab's cache (in
GitLab, the job's ``cache:`` under the project dir), so ``migcompat lab provision`` finds every
root finished and returns at once. ``.ci/run`` installs gitlab-ci-local; set
``MIGCOMPAT_GITLAB_CI_LOCAL`` to use another binary.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from migcompat.protocol import Release

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = "keepalive-proposal"  # a rejected frame: ~15 s a cell, an outcome per release


def _runner() -> tuple[list[str] | None, str]:
    binary = os.environ.get("MIGCOMPAT_GITLAB_CI_LOCAL") or shutil.which("gitlab-ci-local")
    if not binary:
        why = "gitlab-ci-local not installed (npm install -g gitlab-ci-local@4.70.1; .ci/run does)"
        return None, why if shutil.which("node") else "node is not installed (nor gitlab-ci-local)"
    if not shutil.which("rsync"):
        return None, "gitlab-ci-local needs rsync (apt-get install rsync)"
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"{binary} does not start: {exc}"
    if out.returncode != 0:
        last = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["?"]
        return None, f"{binary} --version failed (node too old for it?): {last[0][:200]}"
    return [binary], out.stdout.strip()


def _lines() -> list[str]:
    try:
        from migcompat.lab import installed_builds

        rels = {str(Release(b.release).line) for b in installed_builds()}
    except Exception:  # pragma: no cover - a broken lab reads as "not provisioned"
        return []
    return sorted(rels, key=Release)


def _project(dest: Path, pipeline: str) -> None:
    """A git checkout of this tree (tracked and new files) with ``pipeline`` as its CI file."""
    files = (
        subprocess.run(
            ["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard", "-z"],
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    (dest / ".gitlab-ci.yml").write_text(pipeline)
    git = ["git", "-C", str(dest), "-c", "user.name=t", "-c", "user.email=t@localhost"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "pipeline"], check=True)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "migcompat", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )


def _essence(report: dict) -> list[tuple]:
    """What two runs of the same cells must share: ids in order, predictions, outcomes."""
    return [(c["id"], c["outcome"], c["predicted"]) for c in report["cells"]]


def test_emitted_pipeline_runs_under_gitlab_ci_local_and_merges_to_the_one_machine_report(
    tmp_path: Path,
) -> None:
    runner, why = _runner()
    if runner is None:
        pytest.skip(why)
    lines = _lines()
    if len(lines) < 2:
        pytest.skip("needs two provisioned QEMU release lines: run `migcompat lab provision`")
    old, new = lines[0], lines[-1]
    selection = ["--releases", f"{old},{new}", "--scenarios", SCENARIO]
    emit = _cli("matrix", "emit", "gitlab-ci", *selection, "--max-jobs", "2", cwd=tmp_path)
    assert emit.returncode == 0, emit.stderr
    pipeline = emit.stdout
    assert pipeline.count("parallel:\n    matrix:") == 2
    assert pipeline.count("MIGCOMPAT_CELL:") == 4

    project = tmp_path / "project"
    _project(project, pipeline)
    from migcompat.lab.builds import cache_dir  # the lab's cache: ~/.cache/migcompat

    run_dir = Path(os.environ.get("MIGCOMPAT_LAB_RUN_DIR") or "/tmp/migcompat-lab") / "gcl"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CI_", "GITLAB_"))}
    env.pop("VIRTUAL_ENV", None)
    t0 = time.monotonic()
    ran = subprocess.run(
        [
            *runner,
            "--force-shell-executor",
            "--shell-isolation",
            "--concurrency",
            "2",
            "--no-color",
            "--variable",
            f"XDG_CACHE_HOME={cache_dir().parent}",
            "--variable",
            f"MIGCOMPAT_LAB_RUN_DIR={run_dir}",
        ],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
    )
    took = time.monotonic() - t0
    log = ran.stdout + ran.stderr
    (tmp_path / "gitlab-ci-local.log").write_text(log)
    print(f"gitlab-ci-local pipeline: {took:.0f} s")
    assert ran.returncode == 0, log[-6000:]
    state = project / ".gitlab-ci-local"
    for job in ("migcompat-matrix-1", "migcompat-matrix-2", "migcompat-matrix-merge"):
        assert f"PASS  {job}" in log, log[-6000:]

    # The jobs' artifacts: one record per cell, each job's under its own folder.
    jobs = sorted(p for p in (state / "artifacts").iterdir() if (p / "matrix-out").is_dir())
    records = sorted(state.glob("artifacts/*/matrix-out/*/matrix-cell.json"))
    assert len(records) == 4, records
    merged = _cli("matrix", "merge", *map(str, jobs), "--json", "-", cwd=tmp_path)
    assert merged.returncode == 0, merged.stderr
    merged_doc = json.loads(merged.stdout)

    # The pipeline's own merge job wrote the same report (paths apart: it saw matrix-out/).
    merge_art = state / "artifacts" / "migcompat-matrix-merge"
    in_ci = json.loads((merge_art / "matrix.json").read_text())
    assert _essence(in_ci) == _essence(merged_doc)
    suite = ET.parse(merge_art / "matrix.xml").getroot()
    assert suite.get("tests") == "4" and suite.get("failures") == suite.get("errors") == "0"
    assert (merge_art / "matrix.md").read_text().startswith(f"# Cross-version matrix: {old}, {new}")

    # The same cells on one machine.
    local = _cli(
        "matrix",
        "run",
        *selection,
        "--out",
        str(tmp_path / "local"),
        "--retries",
        "1",
        "--json",
        str(tmp_path / "local.json"),
        cwd=tmp_path,
    )
    assert local.returncode == 0, local.stderr[-3000:]
    local_doc = json.loads((tmp_path / "local.json").read_text())
    assert _essence(merged_doc) == _essence(local_doc)
    assert merged_doc["summary"] == local_doc["summary"]
    assert merged_doc["versions"] == local_doc["versions"]
