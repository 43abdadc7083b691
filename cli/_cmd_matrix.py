"""``migcompat matrix``: predict the cross-version matrix, run it on real QEMU, emit it for CI."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from migcompat.compat import (
    DEFAULT_RELEASES,
    Prediction,
    known_scenarios,
    predict_cells,
    predict_matrix,
)
from migcompat.lab import build_versions, observations_json, record_observations, run_cells
from migcompat.protocol import InputError, Release

from ._matrix_report import (
    gitlab_ci,
    predictions_markdown,
    print_predictions,
    results_json,
    results_junit,
    results_markdown,
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
  migcompat matrix emit gitlab-ci > .gitlab-ci-matrix.yml

scenarios: plain, switchover-ack (inject 00 07 00 00 once postcopy is active),
keepalive-proposal (inject 00 08 00 00), blackhole-idle, recover,
resume-ack-outside-recovery, recv-bitmap-outside-recovery, or any lab spec inject:TYPE[:LEN[:HEX]].
A cell id is SRC->DST/MACHINE/SCENARIO. Exit status of `run`: 0 all pass (or skipped),
1 any mismatch or lab error, 2 bad input.
"""


def _csv(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _selection(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--releases",
        type=_csv,
        default=list(DEFAULT_RELEASES),
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
        default="newest",
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
    p.set_defaults(func=_predict)

    p = sub.add_parser("run", help="run cells on the lab and compare with the prediction")
    _selection(p)
    p.add_argument(
        "--cell",
        action="append",
        default=[],
        metavar="ID",
        help="run only this cell (SRC->DST/MACHINE/SCENARIO); repeatable",
    )
    p.add_argument("--jobs", type=int, default=1, help="cells at a time (default 1; 2 cores: ≤ 2)")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="run directories (default ./matrix-runs/<time>)",
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
    p.set_defaults(func=_run)

    p = sub.add_parser("emit", help="emit the matrix for another tool")
    p.add_argument("target", choices=["gitlab-ci"], help="gitlab-ci: a parallel:matrix job")
    _selection(p)
    p.add_argument("--job", default="migcompat-matrix", help="job name")
    p.add_argument("--stage", default="test", help="stage")
    p.add_argument("--image", default="debian:trixie", help="container image")
    p.add_argument(
        "--install",
        default="python3 -m pip install qemu-migcompat",
        help="command that installs this toolkit in the job",
    )
    p.add_argument("--tag", action="append", default=[], help="runner tag (repeatable)")
    p.set_defaults(func=_emit)
    m.set_defaults(func=lambda args: (m.print_help(sys.stderr), 2)[1])


def _predictions(args: argparse.Namespace) -> list[Prediction]:
    if getattr(args, "cell", None):
        return predict_cells(args.cell)
    scenarios = list(known_scenarios()) if args.scenarios == ["all"] else args.scenarios
    return predict_matrix(args.releases, scenarios, machines=args.machines)


def _predict(args: argparse.Namespace) -> int:
    preds = _predictions(args)
    if args.json:
        print(json.dumps([p.to_json() for p in preds], indent=2))
    elif args.markdown:
        sys.stdout.write(predictions_markdown(preds))
    else:
        print_predictions(preds)
    return 0


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
    preds = _predictions(args)
    if args.dry_run:
        for p in preds:
            print(p.cell.id + (f"  (skipped: {p.unpredicted})" if p.unpredicted else ""))
        return 0
    out = args.out or Path("matrix-runs") / time.strftime("%Y%m%d-%H%M%S")
    rels = sorted({r for p in preds for r in (p.cell.source, p.cell.destination)}, key=Release)
    versions = build_versions(rels)
    with run_progress(len(preds)) as (started, done):
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
        )
    if args.json:
        _write(args.json, results_json(results, versions))
    if args.markdown:
        title = "Cross-version matrix: " + ", ".join(rels)
        command = "migcompat " + " ".join(sys.argv[1:])
        _write(
            args.markdown,
            results_markdown(results, versions=versions, title=title, command=command),
        )
    if args.junit:
        _write(args.junit, results_junit(results))
    if args.record_observations == "-":
        sys.stdout.write(observations_json(results))
    elif args.record_observations:
        record_observations(results, Path(args.record_observations))
    Console(stderr=True).print(summary_line(results, out))
    return 1 if any(r.outcome in ("mismatch", "error") for r in results) else 0


def _emit(args: argparse.Namespace) -> int:
    preds = _predictions(args)
    cells = [p.cell for p in preds if not p.unpredicted]
    sys.stdout.write(
        gitlab_ci(
            cells,
            job=args.job,
            stage=args.stage,
            image=args.image,
            install=args.install,
            tags=args.tag,
        )
    )
    return 0
