"""Matrix reports: the cross-version matrix as Markdown, JUnit XML, JSON, GitLab CI YAML and
rich terminal output.

One concept, the presentation of :mod:`migcompat.compat`'s predictions and of the results
:func:`migcompat.lab.run_cells` returns; nothing here predicts or runs.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from migcompat.compat import (
    Cell,
    CellResult,
    Prediction,
    matrix_model,
    observed_runs_per_rule,
    results_summary,
)
from migcompat.protocol import InputError, Release

__all__ = [
    "gitlab_ci",
    "model_legend",
    "predictions_markdown",
    "print_predictions",
    "results_json",
    "results_junit",
    "results_markdown",
    "run_progress",
    "summary_line",
]


def __dir__() -> list[str]:
    return list(__all__)


def _md(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _sb(pred: Prediction, observed: Mapping[str, Any] | None = None) -> str:
    if observed and observed.get("split_brain"):
        return "**SPLIT-BRAIN**"
    return {"always": "**SPLIT-BRAIN**", "possible": "**SPLIT-BRAIN possible**"}.get(
        pred.split_brain, "no"
    )


def _runstates(p: Prediction, sep: str) -> str:
    return f"{'/'.join(sorted(p.src_runstates))}{sep}{'/'.join(sorted(p.dst_runstates))}"


def predictions_markdown(preds: Sequence[Prediction]) -> str:
    """A Markdown table of predictions."""
    rows = [
        "| cell | source status | source error (exact) | destination status | runstates src / dst "
        "| split brain | rule |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in preds:
        if p.unpredicted:
            rows.append(
                f"| `{p.cell.id}` | — | — | — | — | — | not predicted: {_md(p.unpredicted)} |"
            )
            continue
        err = f"`{_md(p.src_error)}` ({p.error_channel})" if p.src_error else "—"
        rows.append(
            f"| `{p.cell.id}` | {p.src_status} | {err} | {' / '.join(sorted(p.dst_statuses))} "
            f"| {_runstates(p, ' / ')} | {_sb(p)} | {p.rule} |"
        )
    return "\n".join(rows) + "\n"


def results_markdown(
    results: Sequence[CellResult],
    *,
    versions: Mapping[str, str] | None = None,
    title: str = "",
    command: str = "",
) -> str:
    """The Markdown report of a run (summary, binary versions, one row per cell)."""
    s = results_summary(results)
    lines = [f"# {title or 'Cross-version matrix'}", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    observed = (
        f" {s['observed']} cells had no prediction and were only observed." if s["observed"] else ""
    )
    lines.append(
        f"**{s['pass']} pass, {s['mismatch']} mismatch, {s['skipped']} skipped, "
        f"{s['error']} error** of {s['total']} cells; split brain observed in "
        f"{s['split_brain']} cells." + observed
    )
    lines.append("")
    if versions:
        lines += ["| release | `--version` |", "|---|---|"]
        lines += [
            f"| {k} | `{_md(v)}` |"
            for k, v in sorted(versions.items(), key=lambda kv: Release(kv[0]))
        ]
        lines.append("")
    lines += [
        "| cell | result | source status (pred → seen) | source error | destination (allowed → "
        "seen) | runstates src / dst | split brain | why |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        p, o = r.prediction, r.observed
        err = f"`{_md(p.src_error)}`" if p.src_error else "—"
        if r.outcome == "observed" and o.get("src_error_desc"):
            err = f"seen: `{_md(o['src_error_desc'])}`"
        if r.outcome == "skipped":
            lines.append(f"| `{p.cell.id}` | skipped | | | | | | {_md('; '.join(r.reasons))} |")
            continue
        lines.append(
            f"| `{p.cell.id}` | {r.outcome} | {p.src_status} → {o.get('src_status')} | {err} "
            f"| {'/'.join(sorted(p.dst_statuses))} → {o.get('dst_status')} "
            f"| {o.get('src_runstate')} / {o.get('dst_runstate')} | {_sb(p, o)} "
            f"| {_md('; '.join(r.reasons)) or p.rule} |"
        )
    lines += ["", *model_legend()]
    return "\n".join(lines) + "\n"


def model_legend() -> list[str]:
    """Markdown lines: the scenarios and the outcome rules with the evidence they rest on."""
    model = matrix_model()
    out = ["## Scenarios", "", "| scenario | lab spec | what |", "|---|---|---|"]
    for sc in model["scenarios"]:
        out.append(f"| `{sc['name']}` | `{sc['lab']}` | {_md(sc['doc'])} |")
    out += ["", "## Outcome rules (compat/data/matrix.json)", ""]
    out += ["| rule | sources | phase | basis | evidence |", "|---|---|---|---|---|"]
    seen_per_rule = observed_runs_per_rule()
    for r in model["outcomes"]:
        rng = f"{r['sources']['from']}–{r['sources']['to']}"
        if r.get("unobserved"):
            basis = f"not observed: {r['unobserved']}"
        else:
            basis = r.get("basis", "")
        ev = ", ".join(f"`{Path(e).parent.name}`" for e in r.get("evidence", ()))
        seen = seen_per_rule.get(r["id"], 0)
        if seen:
            ev += (", " if ev else "") + f"{seen} runs in `matrix-observed.json`"
        ev = ev or "—"
        out.append(f"| `{r['id']}` | {rng} | {r.get('phase') or '—'} | {_md(basis)} | {ev} |")
    return out


def results_junit(results: Sequence[CellResult], *, name: str = "migcompat-matrix") -> str:
    """JUnit XML (one testcase per cell; mismatch = failure, error = error)."""
    s = results_summary(results)
    suite = ET.Element(
        "testsuite",
        name=name,
        tests=str(s["total"]),
        failures=str(s["mismatch"]),
        errors=str(s["error"]),
        skipped=str(s["skipped"] + s["observed"]),
        time=f"{sum(r.duration for r in results):.2f}",
    )
    for r in results:
        c = r.prediction.cell
        case = ET.SubElement(
            suite,
            "testcase",
            classname=f"matrix.{c.source}->{c.destination}",
            name=c.id,
            time=f"{r.duration:.2f}",
        )
        text = "\n".join(r.reasons)
        if r.outcome in ("mismatch", "error"):
            tag = "failure" if r.outcome == "mismatch" else "error"
            ET.SubElement(case, tag, message=r.reasons[0] if r.reasons else "").text = text
        elif r.outcome in ("skipped", "observed"):
            ET.SubElement(case, "skipped", message="; ".join(r.reasons))
        props = ET.SubElement(case, "properties")
        predicted = r.prediction.split_brain
        observed = str(bool(r.observed.get("split_brain"))).lower()
        ET.SubElement(props, "property", name="split_brain_predicted", value=predicted)
        ET.SubElement(props, "property", name="split_brain_observed", value=observed)
        out = [f"record: {r.record}"] if r.record else []
        if r.observed.get("split_brain"):
            out.insert(0, "SPLIT-BRAIN: the guest runs on both hosts")
        if out:
            ET.SubElement(case, "system-out").text = "\n".join(out)
    return ET.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"


def results_json(results: Sequence[CellResult], versions: Mapping[str, str] | None = None) -> str:
    """The JSON report of a run."""
    doc = {
        "summary": results_summary(results),
        "versions": dict(versions or {}),
        "cells": [r.to_json() for r in results],
    }
    return json.dumps(doc, indent=2) + "\n"


def gitlab_ci(
    cells: Sequence[Cell],
    *,
    job: str = "migcompat-matrix",
    stage: str = "test",
    image: str = "debian:trixie",
    install: str = "python3 -m pip install qemu-migcompat",
    tags: Sequence[str] = (),
) -> str:
    """A GitLab CI job: ``parallel: matrix:`` over the cells, one ``matrix run --cell`` each.

    The job provisions the two builds of its cell; it needs a runner that may
    ``unshare --mount`` and open ``/dev/userfaultfd`` (privileged, or a shell executor).
    """

    def q(s: str) -> str:
        return json.dumps(s)

    releases = sorted({r for c in cells for r in (c.source, c.destination)}, key=Release)
    lines = [
        f"# generated by `migcompat matrix emit gitlab-ci` ({len(cells)} cells)",
        f"{job}:",
        f"  stage: {stage}",
        f"  image: {image}",
        *([f"  tags: [{', '.join(q(t) for t in tags)}]"] if tags else []),
        "  timeout: 20m",
        "  # needs unshare --mount and /dev/userfaultfd: a privileged runner",
        "  before_script:",
        "    - apt-get update && apt-get install -y --no-install-recommends python3-pip "
        "python3-venv debootstrap tcpdump gcc",
        "    - python3 -m venv /opt/venv && export PATH=/opt/venv/bin:$PATH",
        f"    - {install}",
        "    - migcompat lab provision $MIGCOMPAT_SRC $MIGCOMPAT_DST",
        "  script:",
        '    - migcompat matrix run --cell "$MIGCOMPAT_CELL" --junit "matrix-$CI_JOB_ID.xml" '
        '--out "matrix-out"',
        "  artifacts:",
        "    when: always",
        "    paths: [matrix-out/]",
        "    reports:",
        '      junit: "matrix-*.xml"',
        "  parallel:",
        "    matrix:",
    ]
    if len(cells) > 200:
        raise InputError(f"GitLab allows at most 200 jobs per parallel:matrix, got {len(cells)}")
    for c in cells:
        lines += [
            f"      - MIGCOMPAT_CELL: {q(c.id)}",
            f"        MIGCOMPAT_SRC: {q(c.source)}",
            f"        MIGCOMPAT_DST: {q(c.destination)}",
        ]
    lines.append(f"# releases: {', '.join(releases)}")
    return "\n".join(lines) + "\n"


# -- the terminal -----------------------------------------------------------------------


def print_predictions(preds: Sequence[Prediction]) -> None:
    """The predictions as a rich table on stdout."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"predicted matrix ({len(preds)} cells)")
    columns = ("cell", "source", "source error (exact)", "destination", "runstates s/d")
    for col in (*columns, "split brain"):
        t.add_column(col, overflow="fold")
    for p in preds:
        if p.unpredicted:
            t.add_row(p.cell.id, "[dim]not predicted[/]", p.unpredicted, "", "", "")
            continue
        sb = {"always": "[bold red]SPLIT-BRAIN[/]", "possible": "[red]possible[/]"}.get(
            p.split_brain, "no"
        )
        t.add_row(
            p.cell.id,
            p.src_status or "",
            p.src_error or "—",
            " | ".join(sorted(p.dst_statuses)),
            _runstates(p, " ; "),
            sb,
        )
    Console().print(t)


@contextmanager
def run_progress(
    total: int,
) -> Iterator[tuple[Callable[[Prediction], None], Callable[[CellResult], None]]]:
    """A progress bar on stderr; yields the ``on_start`` / ``on_done`` hooks of ``run_cells``."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    running: set[str] = set()
    columns = (TextColumn("[bold]matrix"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(
        *columns,
        TextColumn("{task.description}"),
        console=Console(stderr=True),
        transient=False,
    ) as bar:
        task = bar.add_task("", total=total)

        def started(p: Prediction) -> None:
            running.add(p.cell.id)
            bar.update(task, description=", ".join(sorted(running)))

        def done(r: CellResult) -> None:
            running.discard(r.prediction.cell.id)
            colour = {"pass": "green", "mismatch": "red", "error": "red"}.get(r.outcome, "yellow")
            sb = " [bold red]SPLIT-BRAIN[/]" if r.observed.get("split_brain") else ""
            why = f" — {'; '.join(r.reasons)}" if r.reasons else ""
            line = f"[{colour}]{r.outcome:8}[/] {r.prediction.cell.id}{sb}{why}"
            bar.console.print(line, highlight=False, markup=True)
            bar.update(task, advance=1, description=", ".join(sorted(running)))

        yield started, done


def summary_line(results: Sequence[CellResult], out: Path) -> str:
    """The closing line of ``matrix run`` (rich markup)."""
    s = results_summary(results)
    return (
        f"[bold]{s['pass']} pass, {s['mismatch']} mismatch, {s['skipped']} skipped, "
        f"{s['error']} error, {s['observed']} observed without prediction[/] of {s['total']}; "
        f"split brain observed in {s['split_brain']}; "
        f"runs under {out}"
    )
