"""Replay every saved fuzzing find under ``fixtures/fuzz/`` (issue 7).

* ``fixtures/fuzz/*.json`` — counterexamples written by ``migcompat fuzz``: the property
  is re-run on the recorded input. A record may carry ``"xfail": "<reason>"`` while the
  bug it shows is open (strict: the test flips to a failure once it is fixed).
* ``fixtures/fuzz/crashes/*`` and ``fixtures/fuzz/corpus/*`` — inputs of the
  coverage-guided target (``benchmarks/fuzz_decoders.py``): the decoders may only raise
  the typed decode error on them, with bounded allocation. A ``<crash>.xfail`` file
  beside a crash says which open bug it shows (strict xfail).
* ``fixtures/fuzz/real/*/case.json`` — disagreements between the model and a real source
  (``migcompat fuzz --real``): the model's verdict on the recorded ``rp.bin`` must equal
  what the real source did.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from migcompat.protocol import parse_release
from migcompat.protocol.fuzzing import compare, model_verdict, replay

ROOT = Path(__file__).resolve().parent.parent
FUZZ = ROOT / "fixtures" / "fuzz"


def _load_target() -> Any:
    spec = importlib.util.spec_from_file_location(
        "fuzz_decoders", ROOT / "benchmarks" / "fuzz_decoders.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("fuzz_decoders", mod)
    spec.loader.exec_module(mod)
    return mod


def _records() -> list[Any]:
    out = []
    for path in sorted(FUZZ.glob("*.json")):
        rec = json.loads(path.read_text())
        marks = [pytest.mark.xfail(reason=rec["xfail"], strict=True)] if rec.get("xfail") else []
        out.append(pytest.param(rec, id=path.stem, marks=marks))
    if not out:  # say so, rather than pytest's bare "got empty parameter set"
        why = f"no saved counterexample under {FUZZ}/*.json (`migcompat fuzz --fixtures DIR`)"
        out.append(pytest.param(None, id="none", marks=pytest.mark.skip(reason=why)))
    return out


def _inputs() -> list[Any]:
    """Corpus and crash inputs; ``<crash>.xfail`` beside a crash holds the open bug's reason."""
    paths = sorted((FUZZ / "crashes").glob("*")) + sorted((FUZZ / "corpus").glob("*"))
    out = []
    for p in paths:
        if not p.is_file() or p.suffix == ".xfail":
            continue
        note = p.with_name(p.name + ".xfail")
        marks = (
            [pytest.mark.xfail(reason=note.read_text().strip(), strict=True)]
            if note.exists()
            else []
        )
        out.append(pytest.param(p, id=f"{p.parent.name}/{p.name}", marks=marks))
    return out


def _real_cases() -> list[Any]:
    out = []
    for path in sorted((FUZZ / "real").glob("*/case.json")):
        case = json.loads(path.read_text())
        marks = [pytest.mark.xfail(reason=case["xfail"], strict=True)] if case.get("xfail") else []
        out.append(pytest.param(path.parent, id=path.parent.name, marks=marks))
    return out


@pytest.mark.parametrize("record", _records())
def test_counterexample(record: dict[str, Any]) -> None:
    replay(record)


@pytest.mark.parametrize("path", _inputs())
def test_decoder_input(path: Path) -> None:
    target = _load_target()
    target.check_input(path.read_bytes(), check_alloc=True)


@pytest.mark.parametrize("case_dir", _real_cases())
def test_model_agrees_with_the_real_source(case_dir: Path) -> None:
    case = json.loads((case_dir / "case.json").read_text())
    rp = (case_dir / "rp.bin").read_bytes()
    rel = parse_release(case["release"])
    injected = tuple(case["injected"]) if case.get("injected") else None
    model = model_verdict(rel, rp, case.get("ram"), injected)
    agree, why = compare(model, case["real"], rel)
    assert agree, why


def test_there_is_something_to_replay() -> None:
    """The committed corpus is not empty (a missing checkout path would skip everything)."""
    assert _inputs(), f"no corpus under {FUZZ}"
