"""``migcompat fuzz --real`` on a small N against real QEMU (issue 7's CI run).

Three frames (three migrations) each for 7.2 and the newest 10.x/11.x build: a SHUT, a
type == MAX and an accepted frame (fixed seed, so CI draws the same frames every time).
About a minute per release; skips with a reason when the lab has no build.
"""

from __future__ import annotations

import json

import pytest

from migcompat.cli import main

pytestmark = [pytest.mark.qemu, pytest.mark.slow]


def _build(release: str) -> str | None:
    from migcompat.lab import find_build

    b = find_build(release)
    return None if b is None else b.release


@pytest.mark.parametrize("release", ["7.2", "11", "10"])
def test_real_source_agrees_with_the_model(
    release: str, capsys: pytest.CaptureFixture[str], tmp_path: object
) -> None:
    rel = _build(release)
    if rel is None:
        from migcompat.lab import provision_hint

        pytest.skip(f"no lab build for {release}: {provision_hint(release)}")
    if release == "10" and _build("11") is not None:
        pytest.skip("one 10.x/11.x release is enough: 11.x is provisioned")
    rc = main(
        ["fuzz", "--source", rel, "--real", "--examples", "3", "--seed", "2026",
         "--json", "--fixtures", str(tmp_path)]
    )  # fmt: skip
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    summary = lines[-1]["summary"]
    cases = lines[:-1]
    assert summary["frames"] == 3 and summary["migrations"] == 3
    if summary["inconclusive"] == len(cases):
        pytest.skip(f"the lab could not run a migration: {cases[0]['why']}")
    assert rc == 0, [c["why"] for c in cases if c["agree"] is False]
