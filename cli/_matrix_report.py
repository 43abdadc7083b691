"""Matrix reports: the cross-version matrix as Markdown, JUnit XML, JSON, GitLab CI YAML and
rich terminal output.

One concept, the presentation of :mod:`migcompat.compat`'s predictions and of the results
:func:`migcompat.lab.run_cells` returns; nothing here predicts or runs.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from migcompat.compat import (
    GITLAB_MATRIX_JOBS,
    Cell,
    CellResult,
    MergedMatrix,
    Prediction,
    Selection,
    matrix_model,
    observed_runs_per_rule,
    results_summary,
)
from migcompat.protocol import InputError, Release

from ._io import print_rows

__all__ = [
    "gitlab_ci",
    "merged_reports",
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
    if observed and "guest" in observed:
        return _guest(observed)
    if observed and observed.get("split_brain"):
        return "**SPLIT-BRAIN**"
    return {"always": "**SPLIT-BRAIN**", "possible": "**SPLIT-BRAIN possible**"}.get(
        pred.split_brain, "no"
    )


def _guest(o: Mapping[str, Any]) -> str:
    """The measured guest state with its progress marks (Markdown)."""
    prog = o.get("guest_progress") or {}
    marks = f"{prog.get('src')}/{prog.get('dst')} in {prog.get('window', 0):.0f} s"
    label = {
        "split-brain": "**SPLIT-BRAIN**",
        "destination-stalled": "**destination stalled** (reports running: do not resume)",
    }.get(o["guest"], o["guest"])
    return f"{label} ({marks})"


def _guest_prediction(p: Prediction) -> str:
    if not p.guest:
        return _sb(p)
    parts = []
    for status, states in p.guest:
        names = " or ".join("**SPLIT-BRAIN**" if g == "split-brain" else g for g in states)
        parts.append(names if len(p.guest) == 1 else f"{status}: {names}")
    return "; ".join(parts)


def _runstates(p: Prediction, sep: str) -> str:
    return f"{'/'.join(sorted(p.src_runstates))}{sep}{'/'.join(sorted(p.dst_runstates))}"


def predictions_markdown(preds: Sequence[Prediction]) -> str:
    """A Markdown table of predictions."""
    rows = [
        "| cell | source status | source error (exact) | destination status | runstates src / dst "
        "| guest (measured state) | rule |",
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
            f"| {_runstates(p, ' / ')} | {_guest_prediction(p)} | {p.rule} |"
        )
    return "\n".join(rows) + "\n"


def results_markdown(
    results: Sequence[CellResult],
    *,
    versions: Mapping[str, str] | None = None,
    title: str = "",
    command: str = "",
    missing: Sequence[str] = (),
    conflicts: Mapping[str, Sequence[tuple[str, str]]] | None = None,
) -> str:
    """The Markdown report of a run (summary, binary versions, one row per cell; cells
    missing from a merge and cells whose repeats disagree, when there are any)."""
    s = results_summary(results)
    lines = [f"# {title or 'Cross-version matrix'}", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    observed = (
        f" {s['observed']} cells had no prediction and were only observed." if s["observed"] else ""
    )
    lines.append(
        f"**{s['pass']} pass, {s['mismatch']} mismatch, {s['skipped']} skipped, "
        f"{s['error']} error** of {s['total']} cells; split brain (both guests executing, "
        f"measured) in {s['split_brain']} cells; a destination that reports running with "
        f"its vCPUs stalled in {s['stalled']}." + observed
    )
    lines.append("")
    if missing:
        lines += [f"**Missing:** {len(missing)} cells have no record: "
                  + ", ".join(f"`{c}`" for c in missing), ""]  # fmt: skip
    for cid, runs in (conflicts or {}).items():
        seen = ", ".join(f"{o} (`{_md(w)}`)" for o, w in runs)
        lines += [f"**Ran {len(runs)} times with different outcomes:** `{cid}`: {seen}", ""]
    if versions:
        lines += ["| release | `--version` |", "|---|---|"]
        lines += [
            f"| {k} | `{_md(v)}` |"
            for k, v in sorted(versions.items(), key=lambda kv: Release(kv[0]))
        ]
        lines.append("")
    lines += [
        "| cell | result | source status (pred → seen) | source error | final error-desc "
        "(timeline) | destination (allowed → seen) | runstates src / dst | guest (progress "
        "marks src/dst) | why |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        p, o = r.prediction, r.observed
        err = f"`{_md(p.src_error)}`" if p.src_error else "—"
        if r.outcome == "observed" and o.get("src_error_desc"):
            err = f"seen: `{_md(o['src_error_desc'])}`"
        if r.outcome == "skipped":
            lines.append(f"| `{p.cell.id}` | skipped | | | | | | | {_md('; '.join(r.reasons))} |")
            continue
        final = o.get("src_error_desc")
        timeline = o.get("src_error_desc_seen") or []
        desc = f"`{_md(final)}`" if final else "—"
        if timeline and timeline != [final]:
            desc += " (" + ", then ".join(f"`{_md(t)}`" for t in timeline) + ")"
        lines.append(
            f"| `{p.cell.id}` | {r.outcome} | {p.src_status} → {o.get('src_status')} | {err} "
            f"| {desc} "
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
        if "guest" in r.observed:
            ET.SubElement(props, "property", name="guest_observed", value=r.observed["guest"])
        out = [f"record: {r.record}"] if r.record else []
        if r.observed.get("split_brain"):
            out.insert(0, "SPLIT-BRAIN: the guest runs on both hosts")
        if out:
            ET.SubElement(case, "system-out").text = "\n".join(out)
    return ET.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"


def results_json(
    results: Sequence[CellResult],
    versions: Mapping[str, str] | None = None,
    *,
    missing: Sequence[str] = (),
    conflicts: Mapping[str, Sequence[tuple[str, str]]] | None = None,
) -> str:
    """The JSON report of a run (``missing`` / ``conflicts`` only when there are any)."""
    doc: dict[str, Any] = {
        "summary": results_summary(results),
        "versions": dict(versions or {}),
        "cells": [r.to_json() for r in results],
    }
    if missing:
        doc["missing"] = list(missing)
    if conflicts:
        doc["conflicts"] = {k: [{"outcome": o, "where": w} for o, w in v]
                            for k, v in conflicts.items()}  # fmt: skip
    return json.dumps(doc, indent=2) + "\n"


def merged_reports(merged: MergedMatrix, *, command: str | None = None) -> dict[str, str]:
    """``{"markdown", "junit", "json"}`` of a merged matrix: the one report path of both
    ``matrix run`` (its own records) and ``matrix merge`` (many runs' records)."""
    title = "Cross-version matrix: " + ", ".join(merged.releases)
    missing, conflicts = merged.missing, merged.conflicts
    return {
        "markdown": results_markdown(
            merged.results,
            versions=merged.versions,
            title=title,
            command=command if command is not None else merged.command(),
            missing=missing,
            conflicts=conflicts,
        ),
        "junit": results_junit(merged.results),
        "json": results_json(merged.results, merged.versions, missing=missing, conflicts=conflicts),
    }


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "default"


def _plain(text: str) -> str:
    """``text`` as a YAML scalar: plain where that reads the same, else single-quoted."""
    if re.fullmatch(r"[A-Za-z0-9_./$-][^#:'\n]*", text) and not text.endswith(" "):
        return text
    return "'" + text.replace("'", "''") + "'"


#: Debian packages a lab job needs (a merge job needs only python3-venv).
_LAB_APT = "python3-venv debootstrap tcpdump binutils util-linux iproute2 nftables"


def gitlab_ci(
    jobs: Sequence[Cell] | Sequence[Sequence[Cell]],
    *,
    selection: Selection | None = None,
    matrix_jobs: Sequence[range] | None = None,
    job: str = "migcompat-matrix",
    stage: str = "test",
    image: str = "debian:trixie",
    install: str = ".",
    tags: Sequence[str] = (),
    retries: int = 1,
) -> str:
    """A GitLab CI pipeline: ``parallel: matrix`` jobs over the cells and a merge job.

    :param jobs: the cells of each job (a flat list: one cell per job). One cell per job
        runs ``matrix run --cell``; several run ``matrix run --shard K/N``, the shards
        :func:`migcompat.compat.shard` cuts from ``selection`` (so they must be those).
    :param selection: the matrix the cells come from (default: the cells themselves); the
        jobs' records name it, so that the merge job finds missing cells.
    :param matrix_jobs: 1-based job numbers of each ``parallel: matrix`` job (default:
        chunks of GitLab's 200).
    :param install: what ``pip install`` installs: ``.`` (the pipeline's checkout), a wheel,
        a URL, a requirement.
    """
    groups = [[j] if isinstance(j, Cell) else list(j) for j in jobs]
    cells = [c for g in groups for c in g]
    sel = selection or Selection.of(cells=[c.id for c in cells])
    per_cell = all(len(g) == 1 for g in groups)
    ranges = list(matrix_jobs or [
        range(i + 1, min(i + GITLAB_MATRIX_JOBS, len(groups)) + 1)
        for i in range(0, len(groups), GITLAB_MATRIX_JOBS)
    ])  # fmt: skip
    for r in ranges:
        if len(r) > GITLAB_MATRIX_JOBS:
            raise InputError(
                f"GitLab allows at most {GITLAB_MATRIX_JOBS} jobs per parallel:matrix, got {len(r)}"
            )
    releases = sorted({r for c in cells for r in (c.source, c.destination)}, key=Release)
    sel_args = " ".join(_plain(a) for a in sel.args())
    run = "migcompat matrix run"
    if per_cell:
        run += ' --cell "$MIGCOMPAT_CELL"'
        if not sel.cells:
            run += f" {sel_args}"
    else:
        run += f' {sel_args} --shard "$MIGCOMPAT_SHARD"'
    run += f" --out matrix-out --retries {retries}"
    minutes = 30 + 5 * max(len(g) for g in groups) if groups else 30
    q = json.dumps
    image_slug = _slug(image)
    lines = [
        f"# generated by `migcompat matrix emit gitlab-ci`: {len(cells)} cells in {len(groups)} "
        f"jobs ({len(ranges)} parallel:matrix job(s) of at most {GITLAB_MATRIX_JOBS}),",
        f"# then {job}-merge (stage .post) merges their records into one report.",
        f"# cells: {sel.command()}",
        f"# releases: {', '.join(releases)}",
        "#",
        "# Runner needs: every lab job runs two real QEMUs from Debian roots, so it needs",
        "#   - root in the job: debootstrap builds the roots and chroot enters them (a shell",
        "#     executor on a dedicated VM, or a docker executor with privileged = true);",
        "#   - unshare --mount (each QEMU gets a private mount namespace for its bind mounts)",
        "#     and /dev/userfaultfd (postcopy);",
        "#   - tcpdump for the captures; network namespaces (ip netns) and nftables only for",
        "#     partition cells (`migcompat partition`);",
        "#   - a Debian mirror the first time a suite is provisioned; then the cache below.",
        "# Tag such runners and emit with --tag. The cache (per job image and pair of builds,",
        "# under the project dir: GitLab caches nothing else) keeps the lab's Debian roots and",
        "# its patched builds (`lab build`, build-roots/); the roots' /dev nodes are not needed",
        "# (the lab bind-mounts the host's /dev).",
        f".{job}-setup:",
        f"  image: {_plain(image)}",
        *([f"  tags: [{', '.join(q(t) for t in tags)}]"] if tags else []),
        "  variables:",
        "    # GitLab caches only paths inside the project dir",
        '    XDG_CACHE_HOME: "$CI_PROJECT_DIR/.cache"',
        '    PIP_DISABLE_PIP_VERSION_CHECK: "1"',
        f"    MIGCOMPAT_INSTALL: {q(install)}",
        f"    MIGCOMPAT_APT: {q(_LAB_APT)}",
        "  before_script:",
        "    - missing=$(for p in $MIGCOMPAT_APT; do dpkg-query -W -f='${db:Status-Status}\\n'"
        ' "$p" 2>/dev/null | grep -qx installed || echo "$p"; done)',
        '    - if [ -n "$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive'
        " apt-get install -y -qq --no-install-recommends $missing; fi",
        "    - python3 -m venv .venv && . .venv/bin/activate",
        '    - python -m pip install -q "$MIGCOMPAT_INSTALL"',
    ]
    for n, r in enumerate(ranges, 1):
        name = job if len(ranges) == 1 else f"{job}-{n}"
        lines += [
            f"{name}:",
            f"  extends: .{job}-setup",
            f"  stage: {_plain(stage)}",
            f"  timeout: {minutes}m",
            "  cache:",
            f'    key: "migcompat-$MIGCOMPAT_BUILDS-{image_slug}"',
            "    paths: [.cache/migcompat/, .cache/pip/]",
            "  script:",
            "    - migcompat lab provision $(echo \"$MIGCOMPAT_BUILDS\" | tr - ' ')",
            f"    - {run}",
            "  artifacts:",
            "    when: always",
            "    expire_in: 1 week",
            "    paths: [matrix-out/]",
            "  parallel:",
            "    matrix:",
        ]
        for i in r:
            g = groups[i - 1]
            rels = sorted({x for c in g for x in (c.source, c.destination)}, key=Release)
            first = (
                f"      - MIGCOMPAT_CELL: {q(g[0].id)}"
                if per_cell
                else f"      - MIGCOMPAT_SHARD: {q(f'{i}/{len(groups)}')}"
            )
            lines += [first, f"        MIGCOMPAT_BUILDS: {q('-'.join(rels))}"]
            if not per_cell:
                lines += [f"        # {c.id}" for c in g]
    lines += [
        f"{job}-merge:",
        f"  extends: .{job}-setup",
        "  stage: .post",
        "  when: always",
        "  variables:",
        '    MIGCOMPAT_APT: "python3-venv"',
        "  script:",
        "    - migcompat matrix merge matrix-out --markdown matrix.md --junit matrix.xml"
        " --json matrix.json",
        "  artifacts:",
        "    when: always",
        "    paths: [matrix.md, matrix.xml, matrix.json]",
        "    reports:",
        "      junit: matrix.xml",
    ]
    return "\n".join(lines) + "\n"


# -- the terminal -----------------------------------------------------------------------


def print_predictions(preds: Sequence[Prediction], fmt: str = "table") -> None:
    """The predictions as rows: a table on a terminal, plain lines otherwise (cell ids,
    QEMU texts and statuses whole, whatever the width)."""
    rows: list[tuple[str, ...]] = []
    for p in preds:
        if p.unpredicted:
            rows.append((p.cell.id, "not predicted", p.unpredicted, "", "", ""))
            continue
        sb = {"always": "SPLIT-BRAIN", "possible": "possible"}.get(p.split_brain, "no")
        if p.guest:
            sb = _guest_prediction(p).replace("**", "")
        rows.append((
            p.cell.id,
            p.src_status or "",
            p.src_error or "—",
            " | ".join(sorted(p.dst_statuses)),
            _runstates(p, " ; "),
            sb,
        ))  # fmt: skip
    print_rows(
        ("cell", "source", "source error (exact)", "destination", "runstates s/d", "guest"),
        rows,
        fmt=fmt,
        title=f"predicted matrix ({len(preds)} cells)",
        styles={
            "guest": lambda v: "bold red" if "SPLIT-BRAIN" in v else None,
            "source": lambda v: "dim" if v == "not predicted" else None,
        },
    )


@contextmanager
def run_progress(
    total: int,
) -> Iterator[tuple[Callable[[Prediction], None], Callable[[CellResult], None]]]:
    """One line per finished cell on stderr, and a progress bar there when it is a terminal;
    yields the ``on_start`` / ``on_done`` hooks of ``run_cells``."""
    import sys

    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    running: set[str] = set()

    def line(r: CellResult) -> str:
        colour = {"pass": "green", "mismatch": "red", "error": "red"}.get(r.outcome, "yellow")
        sb = " [bold red]SPLIT-BRAIN[/]" if r.observed.get("split_brain") else ""
        if r.observed.get("guest") == "destination-stalled":
            sb = " [yellow]destination stalled[/]"
        why = f" — {escape('; '.join(r.reasons))}" if r.reasons else ""
        return f"[{colour}]{r.outcome:8}[/] {escape(r.prediction.cell.id)}{sb}{why}"

    console = Console(stderr=True, soft_wrap=True, highlight=False)
    if not sys.stderr.isatty():
        yield (lambda p: None), (lambda r: console.print(line(r)))
        return
    columns = (TextColumn("[bold]matrix"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(
        *columns,
        TextColumn("{task.description}"),
        console=console,
        transient=False,
    ) as bar:
        task = bar.add_task("", total=total)

        def started(p: Prediction) -> None:
            running.add(p.cell.id)
            bar.update(task, description=", ".join(sorted(running)))

        def done(r: CellResult) -> None:
            running.discard(r.prediction.cell.id)
            bar.console.print(line(r))
            bar.update(task, advance=1, description=", ".join(sorted(running)))

        yield started, done


def summary_line(
    results: Sequence[CellResult], out: Path | str, *, where: str = "runs under"
) -> str:
    """The closing line of ``matrix run`` / ``matrix merge`` (rich markup)."""
    s = results_summary(results)
    return (
        f"[bold]{s['pass']} pass, {s['mismatch']} mismatch, {s['skipped']} skipped, "
        f"{s['error']} error, {s['observed']} observed without prediction[/] of {s['total']}; "
        f"split brain measured in {s['split_brain']}, destination stalled in {s['stalled']}; "
        f"{where} {out}"
    )
