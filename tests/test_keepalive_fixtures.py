"""Every keepalive verdict, reproduced by a committed run of a really patched destination.

The fixtures (``fixtures/captures/keepalive-*``) come from ``tests/keepalive_cases.py``: a
QEMU 10.0.13 built by ``migcompat lab build`` with the posted patch (v1) or with it plus the
compat hunk (v2), period set on the destination or left to the machine type. No injection.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from keepalive_cases import CASES, PERIOD, Case, judge

CAPTURES = Path(__file__).resolve().parents[1] / "fixtures/captures"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_fixture_reproduces_its_verdict(case: Case) -> None:
    folder = CAPTURES / case.fixture
    if not (folder / "metadata.json").exists():
        pytest.skip(
            f"no fixture {case.fixture} (regenerate: python tests/keepalive_cases.py "
            "fixtures/captures)"
        )
    j = judge(folder)
    assert j["problems"] == []
    ev = j["evidence"]
    assert ev["injections"] == 0  # every type-8 frame below is QEMU's own
    if case.period is not None:
        assert ev["dst_period_ms"] == case.period
    if j["verdict"] == "safe" and j["period_model"] == 0:
        assert ev["frames"] == 0 and j["final"] == {"src": "completed", "dst": "completed"}
    if case.idle and j["sends_keepalive"]:
        # an idle destination requests no pages: its fault thread's poll times out
        assert ev["from_qemu"] >= 1
        assert 0.5 * PERIOD / 1000 < ev["first_after_postcopy_active_s"] < 1.5 * PERIOD / 1000
        assert all(abs(i - PERIOD / 1000) < 0.5 for i in ev["intervals_s"])


def test_the_cases_cover_both_verdicts_and_both_builds() -> None:
    assert {c.dst for c in CASES} == {"v1", "v2"}
    assert {c.idle for c in CASES} == {True, False}
    assert any(c.src == "v1" for c in CASES)  # a patched source


def test_doc_table_is_generated_from_the_fixtures() -> None:
    from keepalive_cases import markdown

    doc = (Path(__file__).resolve().parents[1] / "docs/keepalive.md").read_text()
    a, b = "<!-- table:start -->\n", "<!-- table:end -->"
    assert doc[doc.index(a) + len(a) : doc.index(b)] == markdown(CAPTURES), (
        "docs/keepalive.md is stale: python tests/keepalive_cases.py --markdown fixtures/captures"
    )
