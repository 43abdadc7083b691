"""Patched destinations for real: each keepalive verdict reproduced by a run made now.

v1 (the posted patch) and v2 (v1 + the compat hunk the toolkit writes) are built by
``migcompat lab build`` or taken from its cache; the sources are the provisioned Debian
builds (a case whose source is not provisioned skips). Each run is judged like its committed
fixture (``tests/keepalive_cases.py``) and must end the same way.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from keepalive_cases import CASES, Case, builds, judge, run_case

pytestmark = pytest.mark.qemu

CAPTURES = Path(__file__).resolve().parents[2] / "fixtures/captures"


@pytest.fixture(scope="module")
def lab_builds():
    return builds()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_patched_destination_reproduces_the_verdict(case: Case, lab_builds, tmp_path) -> None:
    rec = run_case(case, lab_builds, tmp_path / "run")
    if rec is None:
        pytest.skip(f"no {case.src} build: run `migcompat lab provision {case.src}`")
    j = judge(tmp_path / "run")
    assert j["problems"] == [], json.dumps(j, indent=1, default=str)[:3000]
    fixture = CAPTURES / case.fixture
    if (fixture / "metadata.json").exists():
        f = judge(fixture)
        assert j["verdict"] == f["verdict"]
        assert j["final"]["src"] == f["final"]["src"]
        if case.idle:
            assert bool(j["evidence"]["from_qemu"]) == bool(f["evidence"]["from_qemu"])
