"""The matrix across machines without QEMU: shards, job plans, records, merge, the pipeline."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from migcompat.cli import main
from migcompat.compat import (
    GITLAB_MATRIX_JOBS,
    GITLAB_PIPELINE_JOBS,
    CellResult,
    Selection,
    canonical_order,
    cell_record,
    known_scenarios,
    merge_records,
    parse_shard,
    plan_jobs,
    predict_matrix,
    runnable,
    shard,
)
from migcompat.lab import RECORD_NAME, SUITES, read_cell_records, write_cell_record
from migcompat.protocol import InputError, Release

PREDS = predict_matrix(["5.2", "7.2", "10.0", "11.1"], list(known_scenarios()))


def _observed(p):  # type: ignore[no-untyped-def]
    """An observation the prediction allows (see tests/test_matrix.py)."""
    return {
        "machine": p.cell.machine,
        "src_status": p.src_status,
        "dst_status": sorted(p.dst_statuses)[0],
        "src_error_desc": p.src_error_desc,
        "src_stderr": list(p.src_stderr),
        "src_runstate": sorted(p.src_runstates)[0],
        "dst_runstate": sorted(p.dst_runstates)[0],
        "split_brain": p.split_brain == "always",
    }


@given(st.integers(0, len(PREDS)), st.integers(1, 40), st.randoms(use_true_random=False))
def test_shards_partition_the_cells_whatever_their_order(n: int, total: int, rnd) -> None:  # type: ignore[no-untyped-def]
    preds = PREDS[:n]
    shuffled = list(preds)
    rnd.shuffle(shuffled)
    parts = [shard(preds, k, total) for k in range(1, total + 1)]
    assert [shard(shuffled, k, total) for k in range(1, total + 1)] == parts
    ids = [p.cell.id for part in parts for p in part]
    assert sorted(ids) == sorted(p.cell.id for p in preds) and len(set(ids)) == len(ids)
    sizes = [len(part) for part in parts]
    assert max(sizes) - min(sizes) <= 1


def test_canonical_order_compares_versions_as_numbers() -> None:
    order = [p.cell.source for p in canonical_order(PREDS)]
    assert sorted(set(order), key=order.index) == ["5.2", "7.2", "10.0", "11.1"]


@pytest.mark.parametrize("bad", ["", "3", "0/4", "5/4", "a/b", "1/0", "-1/2"])
def test_bad_shard_specs(bad: str) -> None:
    with pytest.raises(InputError):
        parse_shard(bad)
    assert parse_shard(" 2 / 8 ") == (2, 8)


def test_selection_is_normalised_and_round_trips() -> None:
    a = Selection.of(["10.0", "7.2", "7.2"], ["all"])
    b = Selection.of(["7.2", "10.0"], list(known_scenarios()))
    assert a == b and a.releases == ("7.2", "10.0")
    assert Selection.from_json(json.loads(json.dumps(a.to_json()))) == a
    assert a.command().startswith("migcompat matrix run --releases 7.2,10.0 --scenarios plain,")
    cells = Selection.of(cells=["7.2->10.0/pc-q35-7.2/plain"])
    assert cells.command() == "migcompat matrix run --cell '7.2->10.0/pc-q35-7.2/plain'"
    assert [p.cell.id for p in cells.predictions()] == ["7.2->10.0/pc-q35-7.2/plain"]


@pytest.mark.parametrize(
    ("cells", "k", "shards", "k_seen", "matrix_jobs"),
    [
        (128, None, 128, 1, [128]),
        (499, None, 499, 1, [200, 200, 99]),
        (500, None, 250, 2, [200, 50]),
        (1200, None, 400, 3, [200, 200]),
        (10, 3, 4, 3, [4]),
        (0, None, 0, 1, []),
    ],
)
def test_job_plans_stay_within_gitlab_limits(cells, k, shards, k_seen, matrix_jobs) -> None:  # type: ignore[no-untyped-def]
    plan = plan_jobs(cells, cells_per_job=k)
    assert (plan.shards, plan.cells_per_job) == (shards, k_seen)
    assert [len(r) for r in plan.matrix_jobs] == matrix_jobs
    assert [i for r in plan.matrix_jobs for i in r] == list(range(1, shards + 1))
    assert plan.jobs <= GITLAB_PIPELINE_JOBS


def test_job_plan_errors() -> None:
    with pytest.raises(InputError, match="GitLab allows 1 to 200"):
        plan_jobs(10, max_jobs=201)
    with pytest.raises(InputError, match="--cells-per-job 3 or more"):
        plan_jobs(1200, cells_per_job=2)
    with pytest.raises(InputError):
        plan_jobs(10, cells_per_job=0)


def _provisionable_lines() -> list[str]:
    """Every release line the lab provisions (sid's 11 is the newest catalogued 11.x)."""
    from migcompat.protocol import known_releases

    out = []
    for rel in SUITES.values():
        line = max(
            (
                r
                for r in known_releases()
                if str(r).split(".")[0] == rel.split(".")[0]
                and (rel.count(".") == 0 or str(r) == rel)
            ),
            key=Release,
        )
        out.append(str(line))
    return sorted(set(out), key=Release)


@pytest.mark.parametrize("machines", ["newest", "all"])
def test_full_matrix_emit_stays_within_gitlab_job_limits(
    machines: str, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = _provisionable_lines()
    assert len(lines) >= 4
    args = [
        "matrix",
        "emit",
        "gitlab-ci",
        "--releases",
        ",".join(lines),
        "--scenarios",
        "all",
        "--machines",
        machines,
    ]
    assert main(args) == 0
    text = capsys.readouterr().out
    cells = runnable(Selection.of(lines, ["all"], machines).predictions())
    blocks = text.split("  parallel:\n    matrix:\n")[1:]
    per_matrix = [len(re.findall(r"^      - MIGCOMPAT_", b, re.M)) for b in blocks]
    assert per_matrix and max(per_matrix) <= GITLAB_MATRIX_JOBS
    assert sum(per_matrix) + 1 <= GITLAB_PIPELINE_JOBS  # + the merge job
    if machines == "newest":
        assert sum(per_matrix) == len(cells)  # one cell per job: every cell named once
        named = re.findall(r'MIGCOMPAT_CELL: "([^"]+)"', text)
        assert sorted(named) == sorted(p.cell.id for p in cells)
    else:
        assert len(cells) > GITLAB_PIPELINE_JOBS  # so the plan groups cells
        plan = plan_jobs(len(cells))
        assert sum(per_matrix) == plan.shards and len(per_matrix) == len(plan.matrix_jobs)
        shards = re.findall(r'MIGCOMPAT_SHARD: "(\d+)/(\d+)"', text)
        assert [int(k) for k, _ in shards] == list(range(1, plan.shards + 1))
        assert '--shard "$MIGCOMPAT_SHARD"' in text
        # each job's comment lines list exactly its shard's cells
        listed = re.findall(r"^        # (\S+)$", text, re.M)
        assert listed == [p.cell.id for p in canonical_order(cells)]
    assert text.count("stage: .post") == 1


def test_emitted_pipeline_installs_the_checkout_or_what_is_named(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["matrix", "emit", "gitlab-ci", "--releases", "7.2"]) == 0
    text = capsys.readouterr().out
    assert 'MIGCOMPAT_INSTALL: "."' in text and 'pip install -q "$MIGCOMPAT_INSTALL"' in text
    assert "qemu-migcompat" not in text.replace("# generated", "")  # no index serves that name
    assert 'XDG_CACHE_HOME: "$CI_PROJECT_DIR/.cache"' in text
    assert "paths: [.cache/migcompat/, .cache/pip/]" in text
    assert 'key: "migcompat-$MIGCOMPAT_BUILDS-debian-trixie"' in text
    for need in (
        "root",
        "debootstrap",
        "chroot",
        "unshare --mount",
        "/dev/userfaultfd",
        "network namespaces",
    ):
        assert need in text, need
    assert (
        main(
            [
                "matrix",
                "emit",
                "gitlab-ci",
                "--releases",
                "7.2",
                "--install",
                "https://example.org/qemu_migcompat-0.1.0-py3-none-any.whl",
            ]
        )
        == 0
    )
    assert 'MIGCOMPAT_INSTALL: "https://example.org/qemu_migcompat' in capsys.readouterr().out
    assert main(["matrix", "emit", "gitlab-ci", "--max-jobs", "500"]) == 2
    assert main(["matrix", "emit", "gitlab-ci", "--install", "pip install qemu-migcompat"]) == 2
    assert "not a command" in capsys.readouterr().err


# -- records and merge ---------------------------------------------------------------


def _write(out: Path, sel: Selection, outcomes: dict[str, str] | None = None) -> list:  # type: ignore[type-arg]
    """Records as a run leaves them (passing observations unless ``outcomes`` says else)."""
    results = []
    for p in sel.predictions():
        outcome = (outcomes or {}).get(p.cell.id, "pass")
        if outcome == "skip-record":
            continue
        obs = _observed(p)
        if outcome == "mismatch":
            obs["src_status"] = "nonsense"
        reasons = [] if outcome == "pass" else ["why"]
        r = CellResult(
            p,
            "error" if outcome == "error" else outcome,
            reasons,
            {} if outcome == "error" else obs,
            None,
            1.25,
        )
        write_cell_record(r, out, selection=sel)
        results.append(r)
    return results


SEL = Selection.of(["7.2", "10.0"], ["plain", "keepalive-proposal"])


def test_a_record_says_what_it_is(tmp_path: Path) -> None:
    _write(tmp_path, SEL)
    files = sorted(tmp_path.rglob(RECORD_NAME))
    assert len(files) == 8 and not list(tmp_path.rglob("*.tmp"))
    doc = json.loads(files[0].read_text())
    assert doc["kind"] == "migcompat-matrix-cell" and doc["schema"] == 1
    assert Selection.from_json(doc["selection"]) == SEL
    assert doc["cell"] == doc["result"]["id"] == doc["predicted"]["id"]
    assert {"host", "written", "versions", "retried_after"} <= doc.keys()


def test_merge_recompares_and_finds_missing_and_conflicting_cells(tmp_path: Path) -> None:
    ids = [p.cell.id for p in SEL.predictions()]
    _write(tmp_path / "a", SEL, {ids[0]: "skip-record", ids[1]: "mismatch"})
    _write(tmp_path / "b", SEL, {ids[0]: "skip-record", ids[2]: "error"})
    merged = merge_records(read_cell_records([tmp_path / "a", tmp_path / "b"]))
    assert [r.prediction.cell.id for r in merged.results] == ids
    assert merged.missing == [ids[0]]
    assert set(merged.conflicts) == {ids[1], ids[2]}  # mismatch/error in one, pass in the other
    by = {r.prediction.cell.id: r for r in merged.results}
    assert by[ids[0]].outcome == "error" and "missing" in by[ids[0]].reasons[0]
    # ids[1]: the worst outcome is shown, compared again with the prediction
    assert by[ids[1]].outcome == "mismatch" and "source status 'nonsense'" in by[ids[1]].reasons[0]
    assert [o for o, _ in merged.conflicts[ids[1]]] == ["mismatch", "pass"]
    assert by[ids[2]].outcome == "error" and "different outcomes" in by[ids[2]].reasons[-1]
    assert merged.failed
    assert len(merged.all_runs) == 14  # 7 cells recorded twice
    clean = merge_records(read_cell_records([tmp_path / "a"]))
    assert clean.missing == [ids[0]] and not clean.conflicts


def test_a_record_claiming_pass_for_a_wrong_observation_is_a_mismatch(tmp_path: Path) -> None:
    (p,) = Selection.of(cells=["10.0->10.0/pc-q35-10.0/plain"]).predictions()
    obs = _observed(p) | {"dst_status": "failed"}
    doc = cell_record(CellResult(p, "pass", [], obs, None, 1.0))
    (r,) = merge_records([("x", doc)]).results
    assert r.outcome == "mismatch" and "destination status 'failed'" in r.reasons[0]


def test_cli_merge_reports_and_exit_codes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write(tmp_path / "ok", SEL)
    assert (
        main(
            [
                "matrix",
                "merge",
                str(tmp_path / "ok"),
                "--json",
                str(tmp_path / "m.json"),
                "--junit",
                str(tmp_path / "m.xml"),
                "--markdown",
                str(tmp_path / "m.md"),
            ]
        )
        == 0
    )
    doc = json.loads((tmp_path / "m.json").read_text())
    assert doc["summary"]["pass"] == 8 and "missing" not in doc
    md = (tmp_path / "m.md").read_text()
    assert f"Command: `{SEL.command()}`" in md and "8 pass, 0 mismatch" in md
    capsys.readouterr()
    ids = [p.cell.id for p in SEL.predictions()]
    _write(tmp_path / "gap", SEL, {ids[3]: "skip-record"})
    assert main(["matrix", "merge", str(tmp_path / "gap")]) == 1
    cap = capsys.readouterr()
    assert f"**Missing:** 1 cells have no record: `{ids[3]}`" in cap.out  # Markdown on stdout
    assert "missing 1 cells" in cap.err
    assert main(["matrix", "merge", str(tmp_path / "nothing-here")]) == 2
    (tmp_path / "empty").mkdir()
    assert main(["matrix", "merge", str(tmp_path / "empty")]) == 2
    bad = tmp_path / "bad" / "x" / RECORD_NAME
    bad.parent.mkdir(parents=True)
    bad.write_text("{not json")
    assert main(["matrix", "merge", str(tmp_path / "bad")]) == 2
    assert "cannot read a matrix cell record" in capsys.readouterr().err


def test_merged_report_of_shards_equals_the_whole(tmp_path: Path) -> None:
    """Records of shard runs merge into the report of the unsharded run, byte for byte."""
    from migcompat.cli._matrix_report import merged_reports

    whole = _write(tmp_path / "whole", SEL)
    del whole
    one = merged_reports(merge_records(read_cell_records([tmp_path / "whole"])))
    preds = SEL.predictions()
    for k in (1, 2, 3):
        part = {p.cell.id for p in shard(runnable(preds), k, 3)}
        skip = {p.cell.id: "skip-record" for p in preds if p.cell.id not in part}
        _write(tmp_path / "shards" / str(k), SEL, skip)
    many = merged_reports(merge_records(read_cell_records(sorted((tmp_path / "shards").iterdir()))))
    assert many["markdown"] == one["markdown"]
    strip = re.compile(r'"record": [^,\n]*|record: \S+')
    assert strip.sub("", many["json"]) == strip.sub("", one["json"])
    assert strip.sub("", many["junit"]) == strip.sub("", one["junit"])


def test_cli_run_shard_and_cell_within_a_selection(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["matrix", "run", "--dry-run", "--releases", "7.2,10.0", "--scenarios", "plain"]
    seen = []
    for k in (1, 2, 3):
        assert main([*base, "--shard", f"{k}/3"]) == 0
        seen += capsys.readouterr().out.split()
    assert sorted(seen) == sorted(
        p.cell.id for p in Selection.of(["7.2", "10.0"], ["plain"]).predictions()
    )
    assert main([*base, "--cell", "7.2->10.0/pc-q35-7.2/plain 10.0->7.2/pc-q35-7.2/plain"]) == 0
    assert capsys.readouterr().out.split() == [
        "7.2->10.0/pc-q35-7.2/plain",
        "10.0->7.2/pc-q35-7.2/plain",
    ]
    assert main([*base, "--cell", "5.2->5.2/pc-q35-5.2/plain"]) == 2
    assert "not a cell of this selection" in capsys.readouterr().err


def test_gitlab_ci_local_reads_a_sharded_pipeline_as_gitlab_would(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Several cells per job and a split matrix, parsed by a real GitLab CI runner (no QEMU:
    ``--list-json`` expands ``parallel: matrix`` and ``extends`` without running a job)."""
    import shutil
    import subprocess

    binary = shutil.which("gitlab-ci-local")
    if not binary:
        pytest.skip("gitlab-ci-local not installed (npm install -g gitlab-ci-local@4.70.1)")
    args = [
        "matrix",
        "emit",
        "gitlab-ci",
        "--releases",
        "7.2,10.0",
        "--scenarios",
        "plain,keepalive-proposal",
        "--cells-per-job",
        "3",
        "--max-jobs",
        "2",
    ]
    assert main(args) == 0
    (tmp_path / ".gitlab-ci.yml").write_text(capsys.readouterr().out)
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@localhost"]
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "x"]):
        subprocess.run([*git, *cmd], check=True)
    out = subprocess.run(
        [binary, "--list-json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if out.returncode != 0 and "Node.js" in out.stderr:
        pytest.skip(f"gitlab-ci-local does not run on this node: {out.stderr[-200:]}")
    assert out.returncode == 0, out.stderr
    jobs = [(j["name"], j["stage"]) for j in json.loads(out.stdout)]
    assert jobs == [
        ("migcompat-matrix-1: [1/3,7.2-10.0]", "test"),
        ("migcompat-matrix-1: [2/3,7.2-10.0]", "test"),
        ("migcompat-matrix-2: [3/3,10.0]", "test"),
        ("migcompat-matrix-merge", ".post"),
    ]
    shards = [shard(runnable(SEL.predictions()), k, 3) for k in (1, 2, 3)]
    assert [len(s) for s in shards] == [3, 3, 2]
    assert {c for p in shards[2] for c in (p.cell.source, p.cell.destination)} == {"10.0"}
