"""The matrix across machines: which cells a shard or a CI job runs, and one result per cell
from the records of many runs.

Pure functions of the cell list. ``matrix run --shard``, ``matrix emit --max-jobs /
--cells-per-job`` and ``matrix merge`` rest on them, so that every engine (GitLab CI, a GitHub
Actions matrix, a loop over hosts, xargs) splits a selection the same way and merges it back
into the report that one machine writes.

A *record* is the self-describing JSON document a run writes per cell (:func:`cell_record`):
the result, the selection and shard it belonged to, the builds' ``--version`` texts. Merging
records (:func:`merge_records`) re-derives every prediction from the selection and compares it
again with what the run observed, so a merged report and a one-machine report are one thing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from migcompat.protocol import InputError, Release

from ._matrix import (
    DEFAULT_RELEASES,
    CellResult,
    Prediction,
    compare,
    core_scenarios,
    known_scenarios,
    parse_cell_id,
    predict,
    predict_cells,
    predict_matrix,
)

__all__ = [
    "GITLAB_MATRIX_JOBS",
    "GITLAB_PIPELINE_JOBS",
    "RECORD_KIND",
    "JobPlan",
    "MergedMatrix",
    "Selection",
    "canonical_order",
    "cell_record",
    "merge_records",
    "parse_shard",
    "plan_jobs",
    "runnable",
    "shard",
]


def __dir__() -> list[str]:
    return list(__all__)


#: GitLab's cap on the jobs one ``parallel: matrix`` makes (fixed in GitLab's code).
GITLAB_MATRIX_JOBS = 200
#: Jobs in one pipeline on GitLab.com's Free plan (``pipeline_size`` limit; an instance's
#: administrator may set another).
GITLAB_PIPELINE_JOBS = 500
#: ``kind`` of a per-cell record (``matrix-cell.json``).
RECORD_KIND = "migcompat-matrix-cell"
_RECORD_SCHEMA = 1


@dataclass(frozen=True, slots=True)
class Selection:
    """Which cells a matrix run is about: a cross product, or cells named by id.

    Normalised (releases in release order, scenarios expanded), so that two hosts given the
    same matrix in different words agree on it, and a record says it in full.
    """

    releases: tuple[str, ...] = DEFAULT_RELEASES
    scenarios: tuple[str, ...] = ()
    machines: str = "newest"
    #: Cell ids, when the run names its cells (then the other fields are unused).
    cells: tuple[str, ...] = ()
    #: Cells without a prediction run too (reported ``observed``) instead of being skipped.
    run_unpredicted: bool = False

    @classmethod
    def of(
        cls,
        releases: Sequence[str] | None = None,
        scenarios: Sequence[str] | None = None,
        machines: str | None = None,
        cells: Sequence[str] = (),
        *,
        run_unpredicted: bool = False,
    ) -> Selection:
        """Normalise: ``scenarios`` ``None`` = the core ones, ``["all"]`` = every named one."""
        if cells:
            ids = tuple(dict.fromkeys(parse_cell_id(c).id for c in cells))
            return cls((), (), "newest", ids, run_unpredicted)
        rels = tuple(sorted(dict.fromkeys(releases or DEFAULT_RELEASES), key=Release))
        if not scenarios:
            scen: tuple[str, ...] = core_scenarios()
        elif list(scenarios) == ["all"]:
            scen = known_scenarios()
        else:
            scen = tuple(dict.fromkeys(scenarios))
        return cls(rels, scen, machines or "newest", (), run_unpredicted)

    def predictions(self) -> list[Prediction]:
        """Every cell's prediction, in report order."""
        if self.cells:
            return predict_cells(self.cells)
        return predict_matrix(self.releases, self.scenarios, machines=self.machines)

    def args(self) -> list[str]:
        """``matrix run`` arguments that select these cells (unquoted words)."""
        if self.cells:
            words = [w for c in self.cells for w in ("--cell", c)]
        else:
            words = ["--releases", ",".join(self.releases), "--scenarios", ",".join(self.scenarios)]
            if self.machines != "newest":
                words += ["--machines", self.machines]
        if self.run_unpredicted:
            words.append("--run-unpredicted")
        return words

    def command(self, *more: str) -> str:
        """The ``migcompat matrix run`` command line of this selection (for reports)."""
        words = [*self.args(), *more]
        quoted = [w if re.fullmatch(r"[\w.,:/+=-]+", w) else f"'{w}'" for w in words]
        return "migcompat matrix run " + " ".join(quoted)

    def to_json(self) -> dict[str, Any]:
        """JSON-able form (what a record stores)."""
        return {
            "releases": list(self.releases),
            "scenarios": list(self.scenarios),
            "machines": self.machines,
            "cells": list(self.cells),
            "run_unpredicted": self.run_unpredicted,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Selection:
        """Inverse of :meth:`to_json`."""
        return cls(
            tuple(doc.get("releases") or ()),
            tuple(doc.get("scenarios") or ()),
            str(doc.get("machines") or "newest"),
            tuple(doc.get("cells") or ()),
            bool(doc.get("run_unpredicted")),
        )


# -- shards --------------------------------------------------------------------------


def _natural(text: str) -> tuple[Any, ...]:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", text))


def canonical_order(preds: Iterable[Prediction]) -> list[Prediction]:
    """Predictions in a fixed order (source, destination, machine, scenario; numbers compared
    as numbers), one per cell: the order shards are cut from, whatever order the cells came in.
    """
    by_id = {p.cell.id: p for p in preds}
    return sorted(
        by_id.values(),
        key=lambda p: (
            _natural(p.cell.source),
            _natural(p.cell.destination),
            _natural(p.cell.machine),
            p.cell.scenario,
        ),
    )


def runnable(preds: Iterable[Prediction], *, run_unpredicted: bool = False) -> list[Prediction]:
    """The cells a run actually starts; the others are skipped without a lab run."""
    return [p for p in preds if run_unpredicted or not p.unpredicted]


def parse_shard(text: str) -> tuple[int, int]:
    """``K/N`` (1 <= K <= N) to ``(K, N)``.

    :raises InputError: anything else.
    """
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not m or not 1 <= int(m[1]) <= int(m[2]):
        raise InputError(f"--shard {text!r}: expected K/N with 1 <= K <= N, e.g. 2/8")
    return int(m[1]), int(m[2])


def shard(preds: Sequence[Prediction], index: int, total: int) -> list[Prediction]:
    """Shard ``index`` of ``total`` (1-based): a contiguous slice of :func:`canonical_order`.

    Shard sizes differ by at most one; every cell is in exactly one shard. Contiguous slices
    keep a shard's cells on few release pairs (fewer builds to provision per host).
    """
    if not 1 <= index <= total:
        raise InputError(f"shard {index}/{total}: expected 1 <= K <= N")
    ordered = canonical_order(preds)
    q, r = divmod(len(ordered), total)
    start = (index - 1) * q + min(index - 1, r)
    return ordered[start : start + q + (1 if index <= r else 0)]


@dataclass(frozen=True, slots=True)
class JobPlan:
    """How cells become CI jobs: ``shards`` jobs of at most ``cells_per_job`` cells, cut into
    ``parallel: matrix`` jobs (each a range of 1-based shard numbers)."""

    cells: int
    shards: int
    cells_per_job: int
    matrix_jobs: tuple[range, ...]

    @property
    def jobs(self) -> int:
        """Jobs of the pipeline, the merge job included."""
        return self.shards + 1


def plan_jobs(
    cells: int,
    *,
    cells_per_job: int | None = None,
    max_jobs: int = GITLAB_MATRIX_JOBS,
    max_pipeline_jobs: int = GITLAB_PIPELINE_JOBS,
) -> JobPlan:
    """Split ``cells`` runnable cells into jobs within GitLab's limits.

    ``cells_per_job`` ``None``: one cell per job if that fits in ``max_pipeline_jobs`` (the
    merge job counted), else the fewest cells per job that fit.

    :raises InputError: limits out of range, or an explicit ``cells_per_job`` that needs more
        jobs than ``max_pipeline_jobs``.
    """
    if not 1 <= max_jobs <= GITLAB_MATRIX_JOBS:
        raise InputError(
            f"--max-jobs {max_jobs}: GitLab allows 1 to {GITLAB_MATRIX_JOBS} jobs per "
            "parallel:matrix"
        )
    if max_pipeline_jobs < 2:
        raise InputError("--max-pipeline-jobs must be at least 2 (one job and the merge job)")
    if cells_per_job is not None and cells_per_job < 1:
        raise InputError("--cells-per-job must be at least 1")
    budget = max_pipeline_jobs - 1
    k = cells_per_job or max(1, -(-cells // budget))
    shards = -(-cells // k) if cells else 0
    if shards > budget:
        raise InputError(
            f"{cells} cells at {k} per job make {shards} jobs, more than the {budget} that fit "
            f"in a pipeline of {max_pipeline_jobs} jobs; use --cells-per-job "
            f"{-(-cells // budget)} or more"
        )
    ranges = tuple(
        range(start + 1, min(start + max_jobs, shards) + 1) for start in range(0, shards, max_jobs)
    )
    return JobPlan(cells, shards, k, ranges)


# -- records and merging ------------------------------------------------------------


def cell_record(
    result: CellResult,
    *,
    selection: Selection | None = None,
    shard_spec: str | None = None,
    versions: Mapping[str, str] | None = None,
    record: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The self-describing record of one cell's run (what ``matrix-cell.json`` holds).

    :param record: the run's record path as the record file names it (relative to the
        record file's folder when it lies beneath it); defaults to ``result.record``.
    :param extra: facts for people (host, time, tool version); merging ignores them.
    """
    doc = result.to_json()
    doc.pop("predicted", None)
    doc["record"] = record if record is not None else result.record
    return {
        "kind": RECORD_KIND,
        "schema": _RECORD_SCHEMA,
        "cell": result.prediction.cell.id,
        "selection": selection.to_json() if selection else None,
        "shard": shard_spec,
        "versions": dict(versions or {}),
        "retried_after": list(result.retried_after),
        "result": doc,
        "predicted": result.prediction.to_json(),
        **dict(extra or {}),
    }


def _check_record(where: str, doc: Any) -> Mapping[str, Any]:
    if not isinstance(doc, Mapping) or doc.get("kind") != RECORD_KIND:
        raise InputError(f"{where}: not a migcompat matrix cell record")
    if doc.get("schema") != _RECORD_SCHEMA:
        raise InputError(f"{where}: record schema {doc.get('schema')!r}, this tool reads 1")
    if not isinstance(doc.get("result"), Mapping) or "outcome" not in doc["result"]:
        raise InputError(f"{where}: record without a result")
    return doc


@dataclass
class MergedMatrix:
    """One result per expected cell, and what did not add up."""

    results: list[CellResult]
    #: Cells a selection expects that no record has.
    missing: list[str] = field(default_factory=list)
    #: Cell id -> ``(outcome, where)`` of each run, for cells run more than once with
    #: different outcomes.
    conflicts: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    #: Release -> ``--version`` text(s) of the builds the records ran on.
    versions: dict[str, str] = field(default_factory=dict)
    selections: list[Selection] = field(default_factory=list)
    #: Every run of every cell (duplicates kept), for ``--record-observations``.
    all_runs: list[CellResult] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        """Any mismatch, lab error, missing cell or conflicting repeat."""
        return (
            any(r.outcome in ("mismatch", "error") for r in self.results)
            or bool(self.missing)
            or bool(self.conflicts)
        )

    @property
    def releases(self) -> list[str]:
        """Release lines of the merged cells."""
        rels = {
            r
            for x in self.results
            for r in (x.prediction.cell.source, x.prediction.cell.destination)
        }
        return sorted(rels, key=Release)

    def command(self) -> str:
        """The one-machine command whose report this is."""
        return " + ".join(s.command() for s in self.selections)


_SEVERITY = ("error", "mismatch", "observed", "pass", "skipped")


def _result_from(pred: Prediction, doc: Mapping[str, Any], where: str) -> CellResult:
    res = doc["result"]
    observed = dict(res.get("observed") or {})
    retried = [str(x) for x in doc.get("retried_after") or ()]
    outcome = str(res["outcome"])
    reasons = [str(x) for x in res.get("reasons") or ()]
    if outcome in ("pass", "mismatch", "observed") and observed:
        # Compare again: the prediction is the current model's, like a run on one machine.
        if pred.unpredicted:
            outcome, reasons = "observed", [f"not predicted: {pred.unpredicted}"]
        else:
            reasons = compare(pred, observed)
            outcome = "mismatch" if reasons else "pass"
        if retried:
            reasons.append(f"retried after: {'; '.join(retried)}")
    rec = res.get("record")
    if rec is not None:
        rec = _join(where, str(rec))
    return CellResult(
        pred,
        outcome,
        reasons,
        observed,
        rec,
        float(res.get("duration") or 0.0),
        retried_after=retried,
    )


def _join(folder: str, path: str) -> str:
    if path.startswith("/") or not folder:
        return path
    if path in (".", ""):
        return folder
    return f"{folder.rstrip('/')}/{path}"


def merge_records(
    records: Sequence[tuple[str, Mapping[str, Any]]],
    expected: Sequence[Prediction] | None = None,
) -> MergedMatrix:
    """One result per cell from ``(folder, record)`` pairs (``folder``: where the record
    file lies, as the user named it; record paths inside are resolved against it).

    ``expected``: the cells the report is about; default: every cell of the records'
    selections (cells without a prediction that no record has are reported skipped, as a
    run skips them), then any other recorded cell. A cell recorded several times is
    reported once; different outcomes make it a conflict (the worst one is shown).

    :raises InputError: a record that is not one.
    """
    docs = [(where, _check_record(where, doc)) for where, doc in records]
    selections: list[Selection] = []
    for _, doc in docs:
        if doc.get("selection"):
            sel = Selection.from_json(doc["selection"])
            if sel not in selections:
                selections.append(sel)
    preds: dict[str, Prediction] = {}
    skip_ok: set[str] = set()
    if expected is not None:
        for p in expected:
            preds.setdefault(p.cell.id, p)
    else:
        for sel in sorted(selections, key=lambda s: repr(s.to_json())):
            for p in sel.predictions():
                preds.setdefault(p.cell.id, p)
                if p.unpredicted and not sel.run_unpredicted:
                    skip_ok.add(p.cell.id)
    if expected is None and len(selections) > 1:
        preds = {p.cell.id: p for p in canonical_order(preds.values())}
    runs: dict[str, list[tuple[str, CellResult]]] = {}
    for where, doc in sorted(docs, key=lambda d: d[0]):
        cid = str(doc["cell"])
        if cid not in preds:
            preds[cid] = predict(parse_cell_id(cid))
        runs.setdefault(cid, []).append((where, _result_from(preds[cid], doc, where)))
    merged = MergedMatrix(results=[], selections=selections)
    for cid, pred in preds.items():
        seen = runs.get(cid)
        if not seen:
            if cid in skip_ok:
                merged.results.append(
                    CellResult(pred, "skipped", [f"not predicted: {pred.unpredicted}"])
                )
                continue
            merged.missing.append(cid)
            merged.results.append(
                CellResult(pred, "error", ["missing: no record of this cell was merged"])
            )
            continue
        merged.all_runs += [r for _, r in seen]
        outcomes = {r.outcome for _, r in seen}
        chosen = min(seen, key=lambda wr: _SEVERITY.index(wr[1].outcome))[1]
        if len(outcomes) > 1:
            merged.conflicts[cid] = [(r.outcome, w) for w, r in seen]
            listed = ", ".join(f"{r.outcome} ({w})" for w, r in seen)
            chosen.reasons.append(f"ran {len(seen)} times with different outcomes: {listed}")
        merged.results.append(chosen)
    versions: dict[str, list[str]] = {}
    for _, doc in sorted(docs, key=lambda d: d[0]):
        for rel, text in (doc.get("versions") or {}).items():
            if text not in versions.setdefault(rel, []):
                versions[rel].append(text)
    merged.versions = {k: " | ".join(versions[k]) for k in sorted(versions, key=_natural)}
    return merged
