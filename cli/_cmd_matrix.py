"""``migcompat matrix``: predict the cross-version matrix, run it on real QEMU, emit it for CI."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from migcompat.compat import (
    DEFAULT_RELEASES,
    GITLAB_MATRIX_JOBS,
    GITLAB_PIPELINE_JOBS,
    Prediction,
    Selection,
    merge_records,
    parse_shard,
    plan_jobs,
    runnable,
    shard,
)
from migcompat.lab import (
    MatrixInterrupted,
    cell_record_path,
    observations_json,
    read_cell_records,
    record_observations,
    run_cells,
)
from migcompat.protocol import InputError

from ._io import output_format
from ._matrix_report import (
    gitlab_ci,
    merged_reports,
    predictions_markdown,
    print_predictions,
    run_progress,
    summary_line,
)

__all__ = ["register"]


def __dir__() -> list[str]:
    return list(__all__)


_EPILOG = """\
examples:
  migcompat matrix predict                                  # 7.2, 10.0, 11.1, core scenarios
  migcompat matrix predict --releases 7.2,11.1 --scenarios plain,keepalive-proposal --markdown
  migcompat matrix run --jobs 2 --markdown docs/matrix.md --junit matrix.xml
  migcompat matrix run --cell '7.2->11.1/pc-q35-7.2/keepalive-proposal'
  migcompat matrix run --scenarios all --shard 3/8 --out mx/3      # one of 8 hosts
  migcompat matrix merge mx/* --markdown matrix.md --junit matrix.xml
  migcompat matrix emit gitlab-ci --scenarios all > .gitlab-ci-matrix.yml

scenarios: plain, switchover-ack (inject 00 07 00 00 once postcopy is active),
keepalive-proposal (inject 00 08 00 00), blackhole-idle, recover,
resume-ack-outside-recovery, recv-bitmap-outside-recovery, blackhole-active,
keepalive-precopy, keepalive-postcopy-start, keepalive-then-recover, keepalive-pause-recover,
two-switchover-acks, switchover-ack-cap-off, shut-0, shut-1 ('all': every named one), or any
lab spec (parts joined by '+': no-switchover-ack+inject:7, inject:8@precopy, shut:0; see
`migcompat lab run --help`). A cell without a rule says which observation is missing.
A cell id is SRC->DST/MACHINE/SCENARIO. Every cell run leaves a record,
OUT/<cell>/matrix-cell.json, which `matrix merge` combines across runs and machines.
Exit status of `run` and `merge`: 0 all pass (or skipped; for `run` with --require-run, or
CI=true, every cell skipped is 1), 1 any mismatch or lab error (merge: or a missing cell, or
repeats that disagree), 2 bad input.
"""


def _csv(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _selection(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--releases",
        type=_csv,
        default=None,
        metavar="R,R,…",
        help=f"release lines (all ordered pairs, incl. same-version; default "
        f"{','.join(DEFAULT_RELEASES)})",
    )
    p.add_argument(
        "--scenarios",
        type=_csv,
        default=None,
        metavar="S,S,…",
        help="scenarios (default: the core ones); 'all' for every named one",
    )
    p.add_argument(
        "--machines",
        default=None,
        metavar="newest|all|M,M",
        help="machine types per pair: the newest both register (default), all, or a list",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``matrix`` and its subcommands."""
    m = subparsers.add_parser(
        "matrix",
        help="cross-version matrix: predict every cell, run it on real QEMU, emit it for CI",
        description=(
            "Every (source release, destination release, machine type, scenario): what the "
            "source and the destination must end in, predicted from the catalog and the lab's "
            "observations; run on the lab and compared; emitted as a GitLab CI matrix."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = m.add_subparsers(dest="matrix_command", metavar="SUBCOMMAND")

    p = sub.add_parser("predict", help="print the predicted outcome of every cell")
    _selection(p)
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="JSON output")
    fmt.add_argument("--markdown", action="store_true", help="Markdown table")
    fmt.add_argument(
        "--format",
        choices=("table", "plain", "json", "markdown"),
        help="table (the default on a terminal), plain lines (the default in a pipe), json "
        "(as --json) or markdown (as --markdown)",
    )
    p.set_defaults(func=_predict)

    p = sub.add_parser("run", help="run cells on the lab and compare with the prediction")
    _selection(p)
    p.add_argument(
        "--cell",
        action="append",
        default=[],
        metavar="ID",
        help="run only this cell (SRC->DST/MACHINE/SCENARIO; several separated by spaces); "
        "repeatable. With --releases/--scenarios/--machines the cells must be of that "
        "selection, and their records name it (so `matrix merge` sees what is missing)",
    )
    p.add_argument(
        "--shard",
        metavar="K/N",
        help="run only the K-th of N equal slices of the cells that run (1-based, the same "
        "slices on every machine): one engine job or host per shard, then `matrix merge`",
    )
    p.add_argument("--jobs", type=int, default=1, help="cells at a time (default 1; 2 cores: ≤ 2)")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="run directories and per-cell records (default ./matrix-runs/<time>)",
    )
    p.add_argument("--keep", action="store_true", help="keep captures of passing cells too")
    p.add_argument("--json", metavar="FILE", help="write the JSON report ('-' = stdout)")
    p.add_argument("--markdown", metavar="FILE", help="write the Markdown report ('-' = stdout)")
    p.add_argument("--junit", metavar="FILE", help="write JUnit XML")
    p.add_argument(
        "--record-observations",
        metavar="FILE",
        help="merge what each cell showed into FILE (compat/data/matrix-observed.json)",
    )
    p.add_argument("--timeout", type=float, default=60.0, help="per-cell outcome timeout (s)")
    p.add_argument(
        "--observe", type=float, default=5.0, help="seconds to watch after the source settles"
    )
    p.add_argument("--dry-run", action="store_true", help="list the cells that would run")
    p.add_argument(
        "--retries",
        type=int,
        default=1,
        help="re-run a cell whose lab run failed (not a mismatch) up to N times",
    )
    p.add_argument(
        "--run-unpredicted",
        action="store_true",
        help="run cells the model cannot predict yet, to observe them (reported as 'observed')",
    )
    req = p.add_mutually_exclusive_group()
    req.add_argument(
        "--require-run",
        dest="require_run",
        action="store_true",
        default=None,
        help="fail (exit 1) when no cell ran, e.g. no lab build is there: every cell "
        "skipped. The default when the environment has CI=true",
    )
    req.add_argument(
        "--allow-nothing-run",
        dest="require_run",
        action="store_false",
        help="exit 0 even when every cell was skipped (the default outside CI)",
    )
    p.set_defaults(func=_run)

    p = sub.add_parser(
        "merge",
        help="merge the cell records of many runs (CI jobs, shards, hosts) into one report",
        description="Combine the per-cell records (matrix-cell.json) that `matrix run` and "
        "the pytest plugin write under their --out folders, from any number of jobs or "
        "machines, into the report `matrix run` writes on one machine: every cell compared "
        "again with the prediction; cells the records' selection expects but no record has "
        "are missing; a cell recorded twice with different outcomes is a conflict.",
    )
    p.add_argument("dirs", nargs="+", metavar="DIR", help="folders (searched recursively) or "
                   "record files")  # fmt: skip
    p.add_argument("--json", metavar="FILE", help="write the JSON report ('-' = stdout)")
    p.add_argument("--markdown", metavar="FILE", help="write the Markdown report ('-' = stdout; "
                   "the default when no report is named)")  # fmt: skip
    p.add_argument("--junit", metavar="FILE", help="write JUnit XML ('-' = stdout)")
    p.add_argument(
        "--record-observations",
        metavar="FILE",
        help="merge what every run of each cell showed into FILE (matrix-observed.json)",
    )
    p.set_defaults(func=_merge)

    p = sub.add_parser("emit", help="emit the matrix for another tool")
    p.add_argument("target", choices=["gitlab-ci"], help="gitlab-ci: parallel:matrix jobs and a "
                   "merge job")  # fmt: skip
    _selection(p)
    p.add_argument("--job", default="migcompat-matrix", help="job name (prefix)")
    p.add_argument("--stage", default="test", help="stage of the lab jobs (merge: .post)")
    p.add_argument("--image", default="debian:trixie", help="container image")
    p.add_argument(
        "--install",
        default=".",
        metavar="SPEC",
        help="what the jobs `pip install`: . (the pipeline's checkout, default), a wheel, a "
        "URL or a requirement",
    )
    p.add_argument("--tag", action="append", default=[], help="runner tag (repeatable)")
    p.add_argument(
        "--max-jobs",
        type=int,
        default=GITLAB_MATRIX_JOBS,
        metavar="N",
        help=f"jobs per parallel:matrix (GitLab allows {GITLAB_MATRIX_JOBS}); more cells make "
        "several matrix jobs",
    )
    p.add_argument(
        "--cells-per-job",
        type=int,
        default=None,
        metavar="K",
        help="cells per job (default 1, or the fewest that fit --max-pipeline-jobs); K > 1 "
        "runs `matrix run --shard`",
    )
    p.add_argument(
        "--max-pipeline-jobs",
        type=int,
        default=GITLAB_PIPELINE_JOBS,
        metavar="N",
        help=f"jobs per pipeline, merge job included (default {GITLAB_PIPELINE_JOBS}: "
        "GitLab.com Free; instances may allow more)",
    )
    p.add_argument("--retries", type=int, default=1, help="`matrix run --retries` in each job")
    p.set_defaults(func=_emit)
    m.set_defaults(func=lambda args: (m.print_help(sys.stderr), 2)[1])


def _cell_ids(values: list[str]) -> list[str]:
    return [c for v in values for c in v.split()]


def _selection_of(args: argparse.Namespace) -> tuple[Selection, list[Prediction]]:
    """The selection the arguments name and the predictions of the cells to consider."""
    run_unpredicted = bool(getattr(args, "run_unpredicted", False))
    ids = _cell_ids(getattr(args, "cell", None) or [])
    chosen = args.releases or args.scenarios or args.machines
    if ids and not chosen:
        sel = Selection.of(cells=ids, run_unpredicted=run_unpredicted)
        return sel, sel.predictions()
    releases = _modelled(args.releases) if args.releases else args.releases
    sel = Selection.of(releases, args.scenarios, args.machines,
                       run_unpredicted=run_unpredicted)  # fmt: skip
    preds = sel.predictions()
    if ids:
        by_id = {p.cell.id: p for p in preds}
        unknown = [c for c in ids if c not in by_id]
        if unknown:
            raise InputError(f"not a cell of this selection: {', '.join(unknown)}")
        preds = [by_id[c] for c in dict.fromkeys(ids)]
    return sel, preds


def _predictions(args: argparse.Namespace) -> list[Prediction]:
    return _selection_of(args)[1]


def _modelled(releases: list[str]) -> list[str]:
    """Lab build names (``10.0.13+keepalive-v2``) as the release their tables model."""
    from migcompat.lab import find_build

    out = []
    for r in releases:
        b = find_build(r)
        if b is None or not b.is_lab_build or b.release != r:
            out.append(r)
            continue
        if b.model is None:
            raise InputError(
                f"lab build {r} cannot be predicted: its return path is "
                f"{b.protocol_release}, but its source lacks that overlay's compat "
                "entries, so no release's tables model it"
            )
        print(
            f"matrix: lab build {r} predicted as {b.model} (its own source's tables)",
            file=sys.stderr,
        )
        out.append(b.model)
    return out


def _predict(args: argparse.Namespace) -> int:
    preds = _predictions(args)
    fmt = args.format or (
        "json" if args.json else "markdown" if args.markdown else output_format(args)
    )
    if fmt == "json":
        print(json.dumps([p.to_json() for p in preds], indent=2))
    elif fmt == "markdown":
        sys.stdout.write(predictions_markdown(preds))
    else:
        print_predictions(preds, fmt)
    return 0


def _require_run(args: argparse.Namespace) -> bool:
    """``--require-run``, ``--allow-nothing-run``, else on in CI (``CI=true``, as GitLab,
    GitHub and most CI systems set it)."""
    if args.require_run is not None:
        return bool(args.require_run)
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _write(target: str, text: str) -> None:
    if target == "-":
        sys.stdout.write(text)
    else:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        Path(target).write_text(text, encoding="utf-8")


def _run(args: argparse.Namespace) -> int:
    from rich.console import Console

    if not 1 <= args.jobs <= 8:
        raise InputError("--jobs must be between 1 and 8 (2 is sensible on 2 cores)")
    sel, preds = _selection_of(args)
    more: list[str] = []
    if getattr(args, "cell", None) and not sel.cells:
        more = [w for c in dict.fromkeys(_cell_ids(args.cell)) for w in ("--cell", c)]
    shard_spec = None
    if args.shard:
        k, n = parse_shard(args.shard)
        shard_spec = f"{k}/{n}"
        preds = shard(runnable(preds, run_unpredicted=sel.run_unpredicted), k, n)
        more += ["--shard", shard_spec]
    if args.dry_run:
        for p in preds:
            print(p.cell.id + (f"  (skipped: {p.unpredicted})" if p.unpredicted else ""))
        return 0
    out = args.out or Path("matrix-runs") / time.strftime("%Y%m%d-%H%M%S")
    interrupted: MatrixInterrupted | None = None
    with run_progress(len(preds)) as (started, done):
        try:
            results = run_cells(
                preds,
                out,
                jobs=args.jobs,
                timeout=args.timeout,
                observe=args.observe,
                keep=args.keep,
                run_unpredicted=args.run_unpredicted,
                retries=args.retries,
                on_start=started,
                on_done=done,
                selection=sel,
                shard_spec=shard_spec,
            )
        except MatrixInterrupted as exc:  # ^C: report the finished cells, name the rest
            interrupted, results = exc, exc.results
    finished = [p for p in preds if interrupted is None or p.cell.id not in interrupted.not_run]
    # The report comes from the records just written, through `matrix merge`'s path.
    records = read_cell_records(cell_record_path(out, p.cell) for p in finished)
    merged = merge_records(records, expected=preds)
    _reports(args, merged_reports(merged, command=sel.command(*more)))
    if args.record_observations == "-":
        sys.stdout.write(observations_json(results))
    elif args.record_observations:
        record_observations(results, Path(args.record_observations))
    Console(stderr=True, soft_wrap=True).print(summary_line(merged.results, out))
    if interrupted is not None:
        Console(stderr=True, soft_wrap=True).print(f"[bold red]{interrupted}[/]", highlight=False)
        return 130
    if merged.failed:
        return 1
    ran = [r for r in results if r.outcome != "skipped"]
    if not ran and _require_run(args):
        why = sorted({reason for r in results for reason in r.reasons})
        print(
            f"migcompat matrix run: nothing ran ({len(results)} cell(s) skipped"
            + (f": {'; '.join(why[:3])}" if why else "")
            + "); failing because "
            + ("--require-run was given" if args.require_run else "CI=true")
            + " (--allow-nothing-run to accept it)",
            file=sys.stderr,
        )
        return 1
    return 0


def _reports(args: argparse.Namespace, reports: dict[str, str]) -> None:
    for fmt in ("json", "markdown", "junit"):
        target = getattr(args, fmt, None)
        if target:
            _write(target, reports[fmt])


def _merge(args: argparse.Namespace) -> int:
    from rich.console import Console

    records = read_cell_records(args.dirs)
    merged = merge_records(records)
    if not (args.json or args.markdown or args.junit):
        args.markdown = "-"
    _reports(args, merged_reports(merged))
    if args.record_observations:
        record_observations(merged.all_runs, Path(args.record_observations))
    err = Console(stderr=True)
    if not merged.selections:
        err.print("[yellow]no record names its selection: missing cells cannot be told[/]")
    if merged.missing:
        err.print(f"[red]missing {len(merged.missing)} cells:[/] " + ", ".join(merged.missing),
                  highlight=False)  # fmt: skip
    for cid, runs in merged.conflicts.items():
        seen = ", ".join(f"{o} ({w})" for o, w in runs)
        err.print(f"[red]different outcomes[/] {cid}: {seen}", highlight=False)
    where = f"{len(records)} records from"
    err.print(summary_line(merged.results, " ".join(args.dirs), where=where))
    return 1 if merged.failed else 0


def _emit(args: argparse.Namespace) -> int:
    if not args.install.strip() or " " in args.install.strip():
        raise InputError(
            f"--install {args.install!r}: give what `pip install` installs (., a wheel, a URL "
            "or a requirement), not a command"
        )
    sel, preds = _selection_of(args)
    cells = runnable(preds)
    if not cells:
        raise InputError("no cell of this selection has a prediction: nothing to emit")
    plan = plan_jobs(
        len(cells),
        cells_per_job=args.cells_per_job,
        max_jobs=args.max_jobs,
        max_pipeline_jobs=args.max_pipeline_jobs,
    )
    jobs = [[p.cell for p in shard(cells, i, plan.shards)] for i in range(1, plan.shards + 1)]
    sys.stdout.write(
        gitlab_ci(
            jobs,
            selection=sel,
            matrix_jobs=plan.matrix_jobs,
            job=args.job,
            stage=args.stage,
            image=args.image,
            install=args.install,
            tags=args.tag,
            retries=args.retries,
        )
    )
    return 0
