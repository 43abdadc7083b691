"""``migcompat fuzz`` (issue 7): exit codes, counterexample files, the ``--real`` plumbing
(:mod:`migcompat.protocol.fuzzing`, :mod:`migcompat.lab.fuzz_real`)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from migcompat.cli import main
from migcompat.lab import fuzz_real
from migcompat.protocol import fuzzing as fz
from migcompat.protocol import parse_release

CAPTURES = Path(__file__).resolve().parent.parent / "fixtures" / "captures"


def test_model_fuzz_passes_and_reports_rates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(
        [
            "fuzz",
            "--source",
            "10.0",
            "--examples",
            "15",
            "--seed",
            "3",
            "--json",
            "--fixtures",
            str(tmp_path),
        ]
    )
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert rc == 0
    assert [x["property"] for x in lines] == list(fz.PROPERTY_NAMES)
    assert all(x["result"] == "passed" and x["examples"] >= 1 for x in lines)
    assert all(x["examples_per_second"] > 0 and x["seed"] == 3 for x in lines)


def test_overlay_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(
        ["fuzz", "--source", "11.1", "--overlay", "keepalive", "--examples", "5",
         "--property", "max-rule", "--fixtures", str(tmp_path), "--json"]
    )  # fmt: skip
    (line,) = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert rc == 0 and line["source"] == "11.1+keepalive"


@pytest.mark.parametrize(
    "argv",
    [
        ["--source", "99.9"],
        ["--source", "7.2", "--overlay", "keepalive"],  # MAX 7: the proposal needs 8
        ["--source", "10.0", "--overlay", "nosuch"],
        ["--source", "10.0", "--examples", "0"],
    ],
)
def test_bad_input_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fuzz", *argv]) == 2
    assert "migcompat fuzz: error:" in capsys.readouterr().err


def test_counterexample_is_shrunk_saved_and_replayable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = fz.properties()["grammar-vs-model"]

    def fussy(rel: Any, data: bytes) -> None:
        assert b"\x07" not in data, "a 0x07 byte"

    broken = dataclasses.replace(real, check=fussy)
    monkeypatch.setattr(fz, "properties", lambda: {**fz._properties(), real.name: broken})
    rc = main(
        ["fuzz", "--source", "7.2", "--examples", "200", "--seed", "1",
         "--property", "grammar-vs-model", "--fixtures", str(tmp_path), "--json"]
    )  # fmt: skip
    (line,) = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert rc == 1 and line["result"] == "counterexample"
    (saved,) = tmp_path.glob("grammar-vs-model-7.2-*.json")
    record = json.loads(saved.read_text())
    data = bytes.fromhex(record["input"]["data"])
    assert b"\x07" in data and len(data) <= 4  # shrunk (to "07" or a header holding it)
    assert "--seed 1" in record["found_by"] and saved.stem in record["replay"]
    with pytest.raises(AssertionError, match="0x07"):
        fz.replay(record)
    monkeypatch.undo()
    fz.replay(record)  # the unbroken property passes on it


def test_real_without_a_build_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import migcompat.lab

    monkeypatch.setattr(migcompat.lab, "find_build", lambda rel: None)
    assert main(["fuzz", "--source", "11.1+keepalive", "--real"]) == 2
    err = capsys.readouterr().err
    assert "no lab build of QEMU 11.1+keepalive" in err and "--qemu 11.1+keepalive=" in err


def test_real_plan_covers_every_class_and_batches_accepted_frames() -> None:
    pools = fuzz_real.real_pools(parse_release("10.0"), 2, seed=5)
    assert set(pools) >= {"valid", "shut", "type-max", "type-zero", "req-pages-no-block"}
    assert not set(pools) & set(fuzz_real.REAL_EXCLUDED)
    n = sum(len(v) for v in pools.values())
    cases = fuzz_real.plan_cases({k: list(v) for k, v in pools.items()}, n)
    kinds = [k for c in cases for k, _ in c.frames]
    assert set(pools) - {"valid"} <= set(kinds)
    for c in cases:  # at most one frame that ends the return path, and it comes last
        enders = [k for k, _ in c.frames if not k.startswith("valid:")]
        assert len(enders) <= 1 and (not enders or c.frames[-1][0] == enders[0])
        assert len(c.frames) <= fuzz_real.REAL_BATCH + 1


def _record(meta: dict[str, Any]) -> Any:
    from migcompat.lab import RunRecord

    names = {f.name for f in dataclasses.fields(RunRecord)}
    rec = RunRecord(**{k: v for k, v in meta.items() if k in names})
    # Fixtures keep stderr as plain lines (lab/fixtures.py); runs as {"stream", "line"}.
    rec.stderr = {
        side: [x if isinstance(x, dict) else {"stream": "stderr", "line": x} for x in lines]
        for side, lines in meta.get("stderr", {}).items()
    }
    return rec


@pytest.mark.parametrize(
    "capture",
    sorted(
        p.name for p in CAPTURES.iterdir() if p.name.startswith(("plain", "inject"))
    ) if CAPTURES.is_dir() else [],
)  # fmt: skip
def test_model_verdict_matches_every_recorded_real_run(capture: str) -> None:
    """The --real comparison on the lab's committed runs: all of them agree."""
    if not (CAPTURES / capture / "rp.bin").exists():
        pytest.skip("capture being regenerated")
    meta = json.loads((CAPTURES / capture / "metadata.json").read_text())
    rp = (CAPTURES / capture / "rp.bin").read_bytes()
    real = fuzz_real.real_outcome(_record(meta))
    rel = parse_release(meta["src"]["release"])
    inj = [i for i in meta.get("return_path", {}).get("injections", [])] or [
        s for s in meta.get("steps", []) if s.get("step") == "inject"
    ]
    injected = None
    if inj:
        at = inj[0]["src_offset"]
        injected = (at, at + len(bytes.fromhex(inj[0]["hex"])))
    model = fz.model_verdict(rel, rp, fuzz_real.REAL_RAM, injected)
    agree, why = fz.compare(model, real, rel)
    assert agree, why
