"""Running matrix cells on the lab and storing what they showed.

The prediction and the comparison are :mod:`migcompat.compat`'s (pure); this module runs a
cell's scenario on real QEMU (:func:`migcompat.lab.run_scenario`) in a child process of
its own, turns the run record into the facts :func:`migcompat.compat.compare` reads, writes
each cell's self-describing record (``<out>/<cell>/matrix-cell.json``, the artifact that
``matrix merge`` reads back, from any number of machines) and merges those facts into
``compat/data/matrix-observed.json``.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import platform
import re
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from migcompat.compat import (
    RECORD_KIND,
    Cell,
    CellResult,
    Prediction,
    Selection,
    cell_record,
    compare,
)
from migcompat.lab._errors import LabError, LabInterrupted, LabStalled
from migcompat.lab.builds import find_build, provision_hint
from migcompat.lab.runner import RunRecord, run_scenario
from migcompat.protocol import InputError

__all__ = [
    "RECORD_NAME",
    "MatrixInterrupted",
    "build_versions",
    "cell_record_path",
    "cell_slug",
    "observations_json",
    "observed_summary",
    "read_cell_records",
    "record_observations",
    "run_cell",
    "run_cells",
    "write_cell_record",
]


def __dir__() -> list[str]:
    return list(__all__)


_QEMU_PREFIX = re.compile(r"^qemu-system-[\w-]+: ")

#: File name of a cell's record in its run directory.
RECORD_NAME = "matrix-cell.json"


def cell_slug(cell: Cell) -> str:
    """A file-name-safe form of the cell id."""
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", cell.id.replace("->", "-to-"))


def build_versions(releases: Iterable[str]) -> dict[str, str]:
    """``--version`` text of each provisioned build (missing ones are left out)."""
    out = {}
    for r in releases:
        b = find_build(r)
        if b is not None:
            out[r] = b.version_text
    return out


def observed_summary(rec: Any) -> dict[str, Any]:
    """The facts of a lab ``RunRecord`` the matrix compares (final status, runstates…)."""
    out: dict[str, Any] = {}
    for side in ("src", "dst"):
        seq = rec.status_sequence(side)
        final = rec.final_migrate.get(side, {}).get("status") or (seq[-1] if seq else None)
        out[f"{side}_statuses"] = seq
        out[f"{side}_status"] = final
        rs = rec.runstates.get(side) or {}
        # No answer to query-status at the end: QMP was blocked (the lab then kills it).
        out[f"{side}_runstate"] = rs.get("status") or "unresponsive"
        out[f"{side}_running"] = rs.get("running")
        answers = rec.final.get(side)
        if answers is not None:  # the final query-migrate, exactly (None: no error-desc key)
            out[f"{side}_error_desc"] = answers.get("error-desc")
        else:  # a record from before finals were kept: its last non-empty error-desc
            out[f"{side}_error_desc_last_nonempty"] = rec.error_desc.get(side)
        seen: list[str] = []
        for change in rec.timeline.get(side, []):
            desc = change.get("error-desc")
            if desc and desc not in seen:
                seen.append(desc)
        if rec.timeline.get(side):
            out[f"{side}_error_desc_seen"] = seen
        out[f"{side}_stderr"] = [_QEMU_PREFIX.sub("", x) for x in rec.stderr_lines(side)]
    out["runstates_both_running"] = bool(rec.split_brain)
    g = getattr(rec, "guest", None)
    if g:  # measured: split brain is both guests executing, not both runstates running
        out["guest"] = g["state"]
        out["guest_progress"] = {
            "window": g["window"], "src": g["src"]["dots"], "dst": g["dst"]["dots"]
        }  # fmt: skip
        out["split_brain"] = g["state"] == "split-brain"
    out["versions"] = {"src": rec.src.get("version_text"), "dst": rec.dst.get("version_text")}
    out["machine"] = rec.machine
    out["timed_out"] = rec.timed_out
    out["step_errors"] = [e.get("qemu_error") or e.get("error") for e in rec.step_errors]
    return out


def run_cell(
    pred: Prediction,
    outdir: Path,
    *,
    timeout: float = 60.0,
    observe: float = 5.0,
    keep: bool = False,
    hard_timeout: float | None = None,
    run_unpredicted: bool = False,
    selection: Selection | None = None,
    shard_spec: str | None = None,
    stop: threading.Event | None = None,
) -> CellResult:
    """Run one cell on the lab (:func:`migcompat.lab.run_scenario`), compare, and write the
    cell's record (:func:`write_cell_record`, with ``selection`` and ``shard_spec``).

    The run happens in a child process that leads its own process group, so that a run
    which never returns is ended after ``hard_timeout`` (default ``timeout + observe + 60`` s)
    with everything it started (its QEMUs, its tcpdump) and reported as an error.
    A passing cell keeps only its ``record.json`` (unless ``keep``); a mismatch or an
    error keeps the whole run directory (capture, streams, record).
    """
    result = _run_cell(pred, outdir, timeout, observe, keep, hard_timeout, run_unpredicted, stop)
    if stop is not None and stop.is_set() and result.outcome == "error":
        return result  # stopped by ^C half-way: no record (the cell did not run)
    write_cell_record(result, outdir, selection=selection, shard_spec=shard_spec)
    return result


def _run_cell(
    pred: Prediction,
    outdir: Path,
    timeout: float,
    observe: float,
    keep: bool,
    hard_timeout: float | None,
    run_unpredicted: bool,
    stop: threading.Event | None = None,
) -> CellResult:
    cell = pred.cell
    if pred.unpredicted and not run_unpredicted:
        return CellResult(pred, "skipped", [f"not predicted: {pred.unpredicted}"])
    for rel in (cell.source, cell.destination):
        if find_build(rel) is None:
            return CellResult(pred, "skipped", [f"no QEMU build for {rel}: {provision_hint(rel)}"])
    cell_dir = Path(outdir) / cell_slug(cell)
    cell_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    status, payload = _run_isolated(cell, cell_dir, timeout, observe, hard_timeout, stop)
    if status == "stalled":  # a lab bug with its state dumped: reported, never retried
        return CellResult(pred, "error", [f"lab stall (not retried): {payload}"],
                          record=str(cell_dir), duration=time.monotonic() - t0)  # fmt: skip
    if status != "ok":
        return CellResult(
            pred,
            "error",
            [f"lab error: {payload}"],
            record=str(cell_dir),
            duration=time.monotonic() - t0,
        )
    rec = RunRecord(**payload)
    obs = observed_summary(rec)
    if pred.unpredicted:  # observe first, model afterwards: kept whole, never a mismatch
        reasons = [f"not predicted: {pred.unpredicted}"]
        record = rec.files.get("record")
        return CellResult(pred, "observed", reasons, obs, record, time.monotonic() - t0)
    reasons = compare(pred, obs)
    if rec.timed_out:
        obs["note"] = "the lab's settle timeout expired"
    record = rec.files.get("record") or str(cell_dir / "record.json")
    if not reasons and not keep:
        for p in cell_dir.iterdir():
            if p.name not in ("record.json", RECORD_NAME):
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
    outcome = "mismatch" if reasons else "pass"
    return CellResult(pred, outcome, reasons, obs, record, time.monotonic() - t0)


def _child(
    conn: Any, cell: Cell, cell_dir: str, timeout: float, observe: float, budget: float
) -> None:
    """Child process body: new process group, one lab run, the record back through ``conn``."""
    os.setsid()
    try:
        rec = run_scenario(
            cell.source,
            cell.destination,
            cell.lab_scenario,
            cell.machine,
            Path(cell_dir),
            timeout=timeout,
            observe=observe,
            budget=budget,
        )
        conn.send(("ok", rec.to_json()))
    except LabStalled as exc:
        conn.send(("stalled", str(exc)))
    except LabError as exc:
        conn.send(("error", str(exc)))
    except Exception as exc:  # report, not lose, a lab bug
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def _run_isolated(
    cell: Cell,
    cell_dir: Path,
    timeout: float,
    observe: float,
    hard_timeout: float | None,
    stop: threading.Event | None = None,
) -> tuple[str, Any]:
    """One cell in a child process; ``stop`` set (^C): the child gets SIGINT and tears its run
    down (its QEMUs first), with 30 s before its process group is killed."""
    limit = hard_timeout if hard_timeout is not None else timeout + observe + 60.0
    # the run's own budget fires first, so that a stall is dumped, not just killed
    budget = max(1.0, limit - 15.0)
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    args = (child, cell, str(cell_dir), timeout, observe, budget)
    proc = ctx.Process(target=_child, args=args, daemon=False)
    proc.start()
    child.close()
    result: tuple[str, Any] = ("error", f"no result within {limit:.0f} s: run ended")
    end = time.monotonic() + limit
    interrupted = False
    while time.monotonic() < end:
        if parent.poll(0.2):
            try:
                result = parent.recv()
            except EOFError:
                result = ("error", f"the run's process died (exit {proc.exitcode})")
            break
        if stop is not None and stop.is_set() and not interrupted:
            interrupted = True
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGINT)  # type: ignore[arg-type]
            end = min(end, time.monotonic() + 30)
    if interrupted and result[0] == "error" and "no result" in str(result[1]):
        result = ("error", "interrupted (SIGINT)")
    proc.join(10)
    if proc.is_alive() or result[0] != "ok":
        # Its process group holds only what this run started (QEMUs, tcpdump): end it by id.
        assert proc.pid is not None  # started above
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.join(5)
    parent.close()
    return result


def run_cells(
    preds: Sequence[Prediction],
    outdir: Path,
    *,
    jobs: int = 1,
    timeout: float = 60.0,
    observe: float = 5.0,
    keep: bool = False,
    run_unpredicted: bool = False,
    retries: int = 1,
    on_start: Callable[[Prediction], object] | None = None,
    on_done: Callable[[CellResult], object] | None = None,
    selection: Selection | None = None,
    shard_spec: str | None = None,
) -> list[CellResult]:
    """Run cells, at most ``jobs`` at a time (each in its own process); results in order.

    A cell whose lab run fails (``error``: QEMU did not start) is run again up to ``retries``
    times; a mismatch never is, nor a lab stall (a bug report, with the run's state dumped).
    Each cell's record (:func:`write_cell_record`) names ``selection`` and ``shard_spec``, so
    that ``matrix merge`` knows which cells belong together and which are missing.

    :raises MatrixInterrupted: ^C: the cells running were stopped (their QEMUs first);
        it carries the finished cells' results and the ids of the cells that did not run.
    """
    stop = threading.Event()

    def one(p: Prediction) -> CellResult | None:
        if stop.is_set():
            return None
        if on_start:
            on_start(p)
        errors: list[str] = []
        for _attempt in range(1 + max(0, retries)):
            r = run_cell(
                p,
                outdir,
                timeout=timeout,
                observe=observe,
                keep=keep,
                run_unpredicted=run_unpredicted,
                selection=selection,
                shard_spec=shard_spec,
                stop=stop,
            )
            if stop.is_set() and r.outcome == "error":
                return None  # stopped half-way: no result
            if r.outcome != "error" or r.reasons[0].startswith("lab stall"):
                break
            errors += r.reasons  # a lab failure is no observation: run the cell again
        if errors and r.outcome != "error":
            r.retried_after = errors
            r.reasons.append(f"retried after: {'; '.join(errors)}")
            write_cell_record(r, outdir, selection=selection, shard_spec=shard_spec)
        if on_done:
            on_done(r)
        return r

    pool = ThreadPoolExecutor(max_workers=max(1, jobs))
    futures = [pool.submit(one, p) for p in preds]
    try:
        results = [f.result() for f in futures]
    except KeyboardInterrupt:
        stop.set()
        for f in futures:
            f.cancel()
        pool.shutdown(wait=True)  # the running cells end their runs (SIGINT to each child)
        got = [None if f.cancelled() or f.exception() else f.result() for f in futures]
        raise MatrixInterrupted(
            [r for r in got if r is not None],
            [p.cell.id for p, r in zip(preds, got, strict=True) if r is None],
        ) from None
    pool.shutdown()
    return [r for r in results if r is not None]


class MatrixInterrupted(LabInterrupted):
    """^C during :func:`run_cells`: ``results`` (finished cells), ``not_run`` (cell ids)."""

    def __init__(self, results: list[CellResult], not_run: list[str]) -> None:
        super().__init__(
            f"interrupted (SIGINT): {len(results)} cell(s) finished, {len(not_run)} did not "
            f"run: {', '.join(not_run) or 'none'}"
        )
        self.results = results
        self.not_run = not_run


def observations_json(
    results: Sequence[CellResult], previous: Mapping[str, Any] | None = None
) -> str:
    """``compat/data/matrix-observed.json``: what real QEMU did per cell, every run kept.

    Only cells that ran (pass or mismatch) are added, with the facts
    :func:`migcompat.compat.compare` reads and the binaries' ``--version`` texts; identical
    observations are kept once. Several runs of one cell show where timing decides.
    """
    cells: dict[str, list[Any]] = {k: list(v) for k, v in (previous or {}).get("cells", {}).items()}
    for r in results:
        if r.outcome not in ("pass", "mismatch", "observed"):
            continue
        keep = {k: v for k, v in r.observed.items() if k not in ("step_errors", "note")}
        runs = cells.setdefault(r.prediction.cell.id, [])
        if keep not in runs:
            runs.append(keep)
    doc = {
        "schema": 3,
        "about": "Observed outcome of matrix cells on real QEMU, one entry per distinct run, "
        "merged by `migcompat matrix run --record-observations`; the model (matrix.json) must "
        "predict every entry (tests/test_matrix.py). Schema 3: `*_error_desc` is the final "
        "query-migrate's error-desc, `*_error_desc_seen` every distinct one of the run's "
        "timeline, `guest` the measured guest progress; entries recorded before schema 3 "
        "carry `*_error_desc_last_nonempty` (the last non-empty error-desc seen, which is all "
        "the lab kept then) instead.",
        "cells": dict(sorted(cells.items())),
    }
    return json.dumps(doc, indent=1, ensure_ascii=False) + "\n"


def record_observations(results: Sequence[CellResult], path: Path) -> None:
    """Merge the observations of ``results`` into the file at ``path`` (created if missing)."""
    path = Path(path)
    previous = json.loads(path.read_text()) if path.exists() else None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(observations_json(results, previous), encoding="utf-8")


def cell_record_path(outdir: Path, cell: Cell) -> Path:
    """Where :func:`write_cell_record` puts a cell's record under ``outdir``."""
    return Path(outdir) / cell_slug(cell) / RECORD_NAME


def write_cell_record(
    result: CellResult,
    outdir: Path,
    *,
    selection: Selection | None = None,
    shard_spec: str | None = None,
) -> Path:
    """Write ``<outdir>/<cell>/matrix-cell.json`` atomically (a reader never sees half a file).

    The record (:func:`migcompat.compat.cell_record`) holds the result, the selection and
    shard it belongs to, the builds' ``--version`` texts, the host and the time; the run
    record's path is stored relative to the cell's folder, so that artifacts can move.
    """
    cell = result.prediction.cell
    path = cell_record_path(outdir, cell)
    path.parent.mkdir(parents=True, exist_ok=True)
    rec = result.record
    if rec is not None and Path(rec).resolve().is_relative_to(path.parent.resolve()):
        rec = Path(os.path.relpath(Path(rec).resolve(), path.parent.resolve())).as_posix()
    extra = {
        "host": platform.node(),
        "written": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    doc = cell_record(
        result,
        selection=selection,
        shard_spec=shard_spec,
        versions=build_versions(sorted({cell.source, cell.destination})),
        record=rec,
        extra=extra,
    )
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_cell_records(paths: Iterable[Path | str]) -> list[tuple[str, dict[str, Any]]]:
    """``(folder, record)`` of every ``matrix-cell.json`` in ``paths`` (folders searched
    recursively, files taken as they are), in path order. ``folder`` is the record's folder
    as the caller named it, for :func:`migcompat.compat.merge_records`.

    :raises InputError: a path that does not exist, holds no record, or an unreadable one.
    """
    out: list[tuple[str, dict[str, Any]]] = []
    for given in paths:
        base = Path(given)
        if base.is_dir():
            files = sorted(base.rglob(RECORD_NAME))
            if not files:
                raise InputError(f"{given}: no matrix cell records ({RECORD_NAME}) in it")
        elif base.is_file():
            files = [base]
        else:
            raise InputError(f"{given}: no such file or directory")
        for f in files:
            try:
                doc = json.loads(f.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise InputError(f"{f}: cannot read a matrix cell record: {exc}") from None
            if not isinstance(doc, dict) or doc.get("kind") != RECORD_KIND:
                raise InputError(f"{f}: not a matrix cell record (kind {RECORD_KIND!r})")
            out.append((str(f.parent), doc))
    return out
