"""The matrix's prediction logic, reports and CLI (no QEMU needed)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from migcompat.cli import main
from migcompat.cli._matrix_report import (
    gitlab_ci,
    predictions_markdown,
    results_junit,
    results_markdown,
)
from migcompat.compat import (
    DEFAULT_RELEASES,
    Cell,
    CellResult,
    common_machines,
    compare,
    core_scenarios,
    known_scenarios,
    machines_for,
    matrix_cells,
    observations,
    parse_cell_id,
    predict,
    predict_matrix,
    results_summary,
)
from migcompat.compat import matrix_model as _model
from migcompat.protocol import Release, catalog

ROOT = Path(__file__).resolve().parents[1]

releases = st.sampled_from(("5.2", *DEFAULT_RELEASES))  # 5.2: provisioned on request
named = st.sampled_from(known_scenarios())
inject = st.builds(
    lambda t, n: f"inject:{t}:{n}:{'00' * n}",
    st.integers(0, 40),
    st.integers(0, 16),
)


@st.composite
def cells(draw: st.DrawFn, scenario: st.SearchStrategy[str] = named | inject) -> Cell:
    a, b = draw(releases), draw(releases)
    machine = draw(st.sampled_from(common_machines(a, b)[-3:]))
    return Cell(a, b, machine, draw(scenario))


def _matching_observation(p):
    """An observation exactly as the prediction allows (first allowed member of each set)."""
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


@given(cells())
def test_predictions_are_total(cell: Cell) -> None:
    p = predict(cell)
    if p.unpredicted:
        assert p.unpredicted.strip()
        return
    assert p.src_status and p.dst_statuses and p.src_runstates and p.dst_runstates
    assert p.rule != "none" and p.basis


@given(cells())
def test_split_brain_flagged_iff_guest_may_execute_on_both(cell: Cell) -> None:
    # Split brain is measured guest progress on both sides (issue 16), no longer inferred
    # from both runstates saying running: a stalled destination reports running too.
    p = predict(cell)
    both = "running" in p.src_runstates and "running" in p.dst_runstates
    if p.guest:
        states = p.guest_states()
        assert (p.split_brain != "never") == ("split-brain" in states)
        assert (p.split_brain == "always") == (states == {"split-brain"})
        assert "split-brain" not in states or both  # executing implies reporting running
    else:
        assert (p.split_brain != "never") == both
        assert (p.split_brain == "always") == (p.src_runstates == p.dst_runstates == {"running"})
    if p.split_brain != "never":
        assert "SPLIT-BRAIN" in predictions_markdown([p])


@given(cells(inject))
def test_invalid_type_error_text_is_the_catalog_text(cell: Cell) -> None:
    p = predict(cell)
    _, t, n, _ = cell.scenario.split(":")
    cat = catalog(cell.source)
    if not cat.knows(int(t)):
        assert p.verdict == "rejected"
        assert p.src_error == cat.format_error("invalid_type", int(t), int(n))
        if not p.unpredicted:
            assert p.src_error in p.src_stderr
            assert p.error_channel in ("stderr", "error-desc")
            if p.error_channel == "error-desc":
                assert p.src_error_desc == p.src_error


@given(cells())
def test_a_matching_observation_passes_and_a_changed_one_does_not(cell: Cell) -> None:
    p = predict(cell)
    if p.unpredicted:
        return
    obs = _matching_observation(p)
    assert compare(p, obs) == []
    assert compare(p, {**obs, "src_status": "cancelled"})
    assert compare(p, {**obs, "dst_status": "no-such-status"})
    if p.split_brain == "never":
        assert any("SPLIT BRAIN" in r for r in compare(p, {**obs, "split_brain": True}))


@given(cells())
def test_cell_ids_round_trip(cell: Cell) -> None:
    assert parse_cell_id(cell.id) == cell


def test_cell_id_format() -> None:
    assert Cell("7.2", "11.1", "pc-q35-7.2", "plain").id == "7.2->11.1/pc-q35-7.2/plain"


def test_default_matrix_has_every_ordered_pair_and_core_scenario() -> None:
    cs = [c for c, _ in matrix_cells()]
    pairs = {(c.source, c.destination) for c in cs}
    assert pairs == {(a, b) for a in DEFAULT_RELEASES for b in DEFAULT_RELEASES}
    assert {c.scenario for c in cs} == set(core_scenarios())
    assert {"plain", "switchover-ack", "keepalive-proposal", "blackhole-idle", "recover"} <= set(
        core_scenarios()
    )
    for c in cs:  # the newest machine type both register
        assert c.machine == common_machines(c.source, c.destination)[-1]


def test_machines_come_from_the_compat_tables() -> None:
    names, why = machines_for("10.0")
    assert names[-1] == "pc-q35-10.0" and "compat" in why
    names, why = machines_for("11.1")  # no extracted table: inferred, and said so
    assert names[-1] == "pc-q35-11.1" and why.startswith("inferred")
    assert common_machines("7.2", "11.1")[-1] == "pc-q35-7.2"


def test_measured_outcomes_per_source_release() -> None:
    # The measured facts, as the model predicts them.
    p = predict(Cell("7.2", "7.2", "pc-q35-7.2", "keepalive-proposal"))
    assert (p.src_status, p.src_error_desc, p.split_brain) == ("postcopy-paused", None, "never")
    assert "Detected IO failure for postcopy. Migration paused." in p.src_stderr
    for rel in ("10.0", "11.1"):
        p = predict(Cell(rel, rel, f"pc-q35-{rel}", "keepalive-proposal"))
        assert p.src_status == "failed"
        assert p.src_error_desc == "Received invalid message 0x0008 length 0x0000"
        # measured (issue 16): split brain only where the destination got everything
        assert p.split_brain == "possible"
        assert p.guest_states("completed") == {"split-brain"}
        assert p.guest_states("postcopy-paused") == {"destination-stalled"}
        assert p.dst_statuses == {"postcopy-active", "completed", "postcopy-paused"}  # timing


def test_semantic_checks_beyond_the_frame_parser() -> None:
    p = predict(Cell("10.0", "10.0", "pc-q35-10.0", "recv-bitmap-outside-recovery"))
    assert p.verdict == "rejected"
    assert p.src_error == "Reload bitmap in incorrect state postcopy-active"
    p = predict(Cell("7.2", "7.2", "pc-q35-7.2", "recv-bitmap-outside-recovery"))
    assert p.src_error == "ram_dirty_bitmap_reload: incorrect state postcopy-active"
    p = predict(Cell("11.1", "11.1", "pc-q35-11.1", "resume-ack-outside-recovery"))
    assert (p.verdict, p.src_status) == ("accepted", "completed")
    p = predict(Cell("10.0", "10.0", "pc-q35-10.0", "inject:6:4:00000000"))
    assert p.src_error == "illegal resume_ack value 0"
    # switchover-ack: an unknown type for 7.2, a valid message from 8.1 on
    assert predict(Cell("7.2", "11.1", "pc-q35-7.2", "switchover-ack")).verdict == "rejected"
    assert predict(Cell("11.1", "7.2", "pc-q35-7.2", "switchover-ack")).verdict == "accepted"


def test_unobserved_phases_and_messages_are_not_guessed() -> None:
    p = predict(Cell("10.0", "10.0", "pc-q35-10.0", "inject:8@frames=1"))
    assert p.unpredicted
    p = predict(Cell("10.0", "10.0", "pc-q35-10.0", "inject:4:12"))
    assert p.unpredicted and "timing" in p.unpredicted


def _rules_with_evidence() -> list[tuple[dict, str]]:
    return [(r, e) for r in _model()["outcomes"] for e in r.get("evidence", ())]


@pytest.mark.parametrize(
    ("rule", "path"),
    _rules_with_evidence(),
    ids=[f"{r['id']}:{Path(e).parent.name}" for r, e in _rules_with_evidence()],
)
def test_every_rule_agrees_with_the_fixtures_it_cites(rule: dict, path: str) -> None:
    meta = json.loads((ROOT / path).read_text())
    statuses = {s: [x["status"] for x in meta["statuses"].get(s, [])] for s in ("src", "dst")}
    src_rel = Release(meta["src"]["release"])
    assert Release(rule["sources"]["from"]) <= src_rel.line <= Release(rule["sources"]["to"])
    assert statuses["src"][-1] == rule["src_status"]
    assert statuses["dst"][-1] in rule["dst_statuses"]
    assert meta["runstates"]["src"]["status"] in rule["src_runstates"]
    assert meta["runstates"]["dst"]["status"] in rule["dst_runstates"]
    # error-desc of the final query-migrate; the fixture's error_desc is the last non-empty one
    desc = meta.get("final_migrate", {}).get("src", {}).get("error-desc")
    last = meta.get("error_desc", {}).get("src")
    if rule.get("error_channel") == "stderr":
        assert not desc and not last
    elif rule.get("error_channel") is None:
        assert desc == rule.get("src_error_desc")
        seen = rule.get("src_error_desc_seen", [d for d in [rule.get("src_error_desc")] if d])
        assert last == (seen[-1] if seen else None)


def test_the_model_agrees_with_the_compat_observations() -> None:
    # compat/data/behaviour.json (the compat engineer's observations) and the matrix must agree.
    for o in observations():
        if o.trigger != "postcopy":
            continue
        cell = Cell(str(o.source.line), str(o.destination.line), o.machine,
                    f"inject:{o.type_id}:{o.length}")  # fmt: skip
        p = predict(cell)
        assert p.src_status == o.src_final, o.path
        assert o.dst_final in p.dst_statuses, o.path
        assert (p.src_error_desc or None) == (o.src_error_desc or None), o.path
        assert ("running" in p.src_runstates) == bool(o.src_running), o.path


def _result(p, outcome: str, **obs) -> CellResult:
    return CellResult(p, outcome, ["why"] if outcome != "pass" else [], obs, None, 1.0)


def test_reports() -> None:
    ps = predict_matrix(["7.2", "10.0"], ["plain", "keepalive-proposal"])
    results = [_result(ps[0], "pass", src_status="completed"),
               _result(ps[1], "mismatch", split_brain=True),
               _result(ps[2], "skipped"), _result(ps[3], "error")]  # fmt: skip
    s = results_summary(results)
    assert (s["pass"], s["mismatch"], s["skipped"], s["error"], s["split_brain"]) == (1, 1, 1, 1, 1)
    md = results_markdown(results, versions={"7.2": "QEMU emulator version 7.2.22"})
    assert "1 pass, 1 mismatch, 1 skipped, 1 error" in md and "**SPLIT-BRAIN**" in md
    assert "QEMU emulator version 7.2.22" in md
    suite = ET.fromstring(results_junit(results))
    assert suite.get("tests") == "4" and suite.get("failures") == "1"
    assert len(suite.findall("testcase/skipped")) == 1
    assert suite.find("testcase").get("name") == ps[0].cell.id


def test_gitlab_ci_has_one_job_per_cell() -> None:
    cells = [p.cell for p in predict_matrix(["7.2", "11.1"], ["plain", "recover"])]
    text = gitlab_ci(cells)
    assert "parallel:\n    matrix:" in text
    assert text.count("MIGCOMPAT_CELL:") == len(cells) == 8
    for c in cells:
        assert json.dumps(c.id) in text
    assert 'migcompat matrix run --cell "$MIGCOMPAT_CELL"' in text


def test_cli_predict_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["matrix", "predict", "--releases", "7.2,11.1", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc) == 4 * len(core_scenarios())
    ids = {d["id"] for d in doc}
    assert "7.2->11.1/pc-q35-7.2/keepalive-proposal" in ids


def test_cli_predict_markdown_and_emit(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["matrix", "predict", "--scenarios", "keepalive-proposal", "--markdown"]) == 0
    assert "SPLIT-BRAIN" in capsys.readouterr().out
    assert main(["matrix", "emit", "gitlab-ci", "--releases", "7.2"]) == 0
    assert "parallel:" in capsys.readouterr().out


def test_cli_run_bad_cell_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["matrix", "run", "--cell", "nonsense"]) == 2
    assert main(["matrix", "run", "--cell", "7.2->10.0/pc-q35-10.0/plain"]) == 2
    assert "not registered by both" in capsys.readouterr().err


def test_cli_run_dry_run(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["matrix", "run", "--dry-run", "--releases", "10.0"]) == 0
    assert capsys.readouterr().out.split() == [
        f"10.0->10.0/pc-q35-10.0/{s}" for s in core_scenarios()
    ]


def test_pytest_plugin_parametrizes_with_cell_ids(tmp_path: Path) -> None:
    (tmp_path / "test_x.py").write_text(
        textwrap.dedent("""
        import pytest

        @pytest.mark.migcompat_matrix(releases="7.2,11.1", scenarios=["plain"])
        def test_cell(migcompat_cell):
            assert migcompat_cell.cell.scenario == "plain"
    """)
    )
    from importlib.metadata import entry_points

    plugin = "migcompat.lab.pytest_plugin"
    registered = any(ep.value == plugin for ep in entry_points(group="pytest11"))
    load = [] if registered else ["-p", plugin]  # not installed: load by hand
    out = subprocess.run(
        [sys.executable, "-m", "pytest", *load, "--collect-only", "-q", "-p", "no:cacheprovider",
         str(tmp_path / "test_x.py")],
        capture_output=True, text=True, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "test_x.py::test_cell[7.2->11.1/pc-q35-7.2/plain]" in out.stdout
    assert out.stdout.count("test_x.py::test_cell[") == 4


def test_every_recorded_observation_is_predicted() -> None:
    # compat/data/matrix-observed.json: what real QEMU did in each cell of the last full run.
    from migcompat.compat import recorded_observations

    seen = recorded_observations()
    if not seen:
        pytest.skip("no compat/data/matrix-observed.json")
    problems = {}
    for cell_id, runs in seen.items():
        pred = predict(parse_cell_id(cell_id))
        for i, obs in enumerate(runs):
            why = compare(pred, obs)
            if why:
                problems[f"{cell_id}#{i}"] = why
    assert not problems


def test_final_error_desc_and_timeline_are_compared_apart() -> None:
    # issue 16: real 10.0/11.1 recover runs end with no error-desc; it was set while paused
    p = predict(Cell("10.0", "10.0", "pc-q35-10.0", "recover"))
    assert p.src_error_desc is None
    assert p.expected_seen() == ("Postcopy migration is paused by the user",)
    obs = {**_matching_observation(p), "src_error_desc_seen": list(p.expected_seen())}
    assert compare(p, obs) == []
    final_kept = {**obs, "src_error_desc": "Postcopy migration is paused by the user"}
    assert any("final error-desc" in r for r in compare(p, final_kept))
    assert any("timeline" in r for r in compare(p, {**obs, "src_error_desc_seen": []}))
    assert any("destination final" in r for r in compare(p, {**obs, "dst_error_desc": "x"}))
    # an observation from before finals were kept: its last non-empty error-desc
    old = {k: v for k, v in obs.items() if k not in ("src_error_desc", "src_error_desc_seen")}
    assert compare(p, {**old, "src_error_desc_last_nonempty": p.expected_seen()[-1]}) == []
    assert compare(p, {**old, "src_error_desc_last_nonempty": None})


def test_guest_state_is_compared_per_destination_status() -> None:
    p = predict(Cell("10.0", "10.0", "pc-q35-10.0", "keepalive-proposal"))
    obs = _matching_observation(p)
    prog = {"window": 3.0, "src": 20, "dst": 0}
    stalled = {**obs, "dst_status": "postcopy-paused", "guest": "destination-stalled",
               "guest_progress": prog, "split_brain": False}  # fmt: skip
    assert compare(p, stalled) == []
    wrong = {**stalled, "guest": "split-brain", "split_brain": True}
    assert any("guest split-brain" in r for r in compare(p, wrong))
    done = {**stalled, "dst_status": "completed", "guest": "split-brain", "split_brain": True}
    assert compare(p, done) == []
    assert "destination stalled" in results_markdown([_result(p, "pass", **stalled)])
    assert "20/0 in 3 s" in results_markdown([_result(p, "pass", **stalled)])


def test_new_kinds_are_predicted_on_every_provisioned_release() -> None:
    kinds = ("blackhole-active", "keepalive-precopy", "keepalive-then-recover",
             "two-switchover-acks", "switchover-ack-cap-off", "shut-0", "shut-1")  # fmt: skip
    for p in predict_matrix(("5.2", "7.2", "10.0", "11.1"), kinds):
        assert not p.unpredicted, (p.cell.id, p.unpredicted)
    p = predict(Cell("10.0", "10.0", "pc-q35-10.0", "keepalive-postcopy-start"))
    assert p.unpredicted and "timing" in p.unpredicted
    p = predict(Cell("9.2", "9.2", "pc-q35-9.2", "shut-0"))  # a line never run: no guess
    assert p.unpredicted
    # measured on 11.1.3: the machine type, not the capability, decides whether one ack passes
    for machine in ("pc-q35-11.0", "pc-q35-10.0"):
        p = predict(Cell("11.1", "11.1", machine, "switchover-ack-cap-off"))
        assert p.src_status == "completed"
        p = predict(Cell("11.1", "11.1", machine, "two-switchover-acks"))
        assert p.src_error_desc == "Switchover ack pending num underflowed"
    p = predict(Cell("11.1", "7.2", "pc-q35-7.2", "two-switchover-acks"))  # capability off
    assert p.src_error_desc == "Switchover ack pending num underflowed"
    p = predict(Cell("11.1", "11.1", "pc-q35-11.1", "switchover-ack-cap-off"))
    assert p.src_error_desc == "Switchover ack pending num underflowed"
