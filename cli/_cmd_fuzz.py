"""``migcompat fuzz``: the model's fuzzing properties as a command, and differential fuzzing
against a real source (``--real``).

Model mode runs the properties of :mod:`migcompat.protocol.fuzzing` with hypothesis for one
source release (or overlay): the MAX rule, predicted verdicts over whole streams (every
invalid-frame class, exact text, offsets), grammar == reader on mutated streams, the stop
position, and chunking. A counterexample is shrunk and written as a JSON file to
``--fixtures DIR``, by default ``${XDG_CACHE_HOME:-~/.cache}/migcompat/fuzz`` (never the
installed package, the checkout or the current directory; the output names the file). Copied
into a checkout's ``fixtures/fuzz/``, ``tests/test_fuzz_regressions.py`` replays it.
hypothesis keeps its own cache under ``${XDG_CACHE_HOME:-~/.cache}/migcompat/hypothesis``,
not in ``.hypothesis/`` of the current directory.

``--real`` (:mod:`migcompat.lab.fuzz_real`) injects frames into real migrations from a lab
build of the release and compares what the real source did with the model's verdict
(:func:`migcompat.protocol.fuzzing.compare`). Every disagreement is saved (capture, record,
case) under ``real/`` of that directory and fails the run; a lab failure or hang is
"inconclusive", not a disagreement.

Exit 0: no counterexample / disagreement; 1: found one; 2: bad input or no lab.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from migcompat.protocol import InputError, Release, catalog, parse_release
from migcompat.protocol.fuzzing import (
    DEFAULT_EXAMPLES,
    PROPERTY_NAMES,
    PropertyResult,
    counterexample,
    run_properties,
)

from ._io import (
    add_format_argument,
    console,
    output_format,
    print_json,
    print_rows,
    progress_wanted,
)

__all__ = ["default_fixture_dir", "register"]

#: ``--examples`` default of ``--real`` (``migcompat.lab.fuzz_real.DEFAULT_REAL_EXAMPLES``;
#: written here too so that ``--help`` does not import the lab).
DEFAULT_REAL_EXAMPLES = 8


def __dir__() -> list[str]:
    return list(__all__)


def _cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "migcompat"


def default_fixture_dir() -> Path:
    """Where counterexamples go without ``--fixtures``: ``${XDG_CACHE_HOME:-~/.cache}/
    migcompat/fuzz``, a directory of the user's, never the package, checkout or cwd."""
    return _cache() / "fuzz"


def _keep_hypothesis_out_of_the_cwd() -> None:
    """hypothesis caches (e.g. its unicode tables) under ``.hypothesis/`` of the current
    directory unless told otherwise; the example database is off already."""
    from hypothesis.configuration import set_hypothesis_home_dir

    set_hypothesis_home_dir(_cache() / "hypothesis")


def _save_counterexample(out: Path, res: PropertyResult, seed: int, examples: int) -> Path:
    found_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    stem, record = counterexample(res, seed=seed, examples=examples, found_at=found_at)
    path = out / f"{stem}.json"
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def register(sub: Any) -> None:
    p = sub.add_parser(
        "fuzz",
        help="fuzz the source-parser model (or, with --real, a real source) for one release",
        description=(
            "Run the return-path model's fuzzing properties with hypothesis for one source "
            "release: the MIG_RP_MSG_MAX rule with QEMU's exact text, predicted verdicts for "
            "every class of invalid frame, grammar == model on mutated streams, stop position, "
            "chunking. Counterexamples are shrunk and written to --fixtures DIR (default "
            "~/.cache/migcompat/fuzz) as regression files that a checkout's "
            "tests/test_fuzz_regressions.py replays from fixtures/fuzz/. With --real, frames are "
            "injected into real migrations from a lab build of the release and the real "
            "source's outcome is compared with the model's. Exit 0: none found; 1: "
            "counterexample or disagreement; 2: bad input, or no lab for --real."
        ),
    )
    p.add_argument("--source", required=True, metavar="REL", help="source release, e.g. 10.0")
    p.add_argument("--overlay", metavar="NAME", help="apply an unmerged proposal, e.g. keepalive")
    p.add_argument(
        "--examples",
        type=int,
        metavar="N",
        help=f"examples per property (default {DEFAULT_EXAMPLES}); "
        f"with --real, frames in all (default {DEFAULT_REAL_EXAMPLES})",
    )
    p.add_argument("--seed", type=int, metavar="S", help="hypothesis seed (default: random)")
    p.add_argument(
        "--property",
        action="append",
        choices=PROPERTY_NAMES,
        metavar="NAME",
        help=f"only this property (repeatable): {', '.join(PROPERTY_NAMES)}",
    )
    p.add_argument(
        "--fixtures",
        metavar="DIR",
        help="where counterexamples go (default: ${XDG_CACHE_HOME:-~/.cache}/migcompat/fuzz; "
        "a checkout's fixtures/fuzz to keep them as regression tests)",
    )
    p.add_argument("--real", action="store_true", help="compare with a real source (the lab)")
    p.add_argument("--json", action="store_true", help="one JSON object per property / frame")
    add_format_argument(p)
    p.set_defaults(func=run)


def _release(args: argparse.Namespace) -> Release:
    lab_build = _lab_build(args.source) if args.real else None
    if lab_build is not None:  # a `migcompat lab build` name: model it by its own catalog
        args.lab_build = lab_build
        return catalog(lab_build.protocol_release).release
    rel = parse_release(args.source)
    if args.overlay:
        if rel.overlay:  # repeated or conflicting: a release takes one overlay
            raise InputError(
                f"--source {rel} already has overlay {rel.overlay!r}; "
                f"--overlay {args.overlay} would be a second one"
            )
        rel = rel.with_overlay(args.overlay)
    return catalog(rel).release  # resolves now: a bad release or overlay exits 2


def run(args: argparse.Namespace) -> int:
    release = _release(args)
    if args.examples is not None and args.examples < 1:
        raise InputError("--examples must be at least 1")
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "big")
    out = Path(args.fixtures) if args.fixtures else default_fixture_dir()
    _keep_hypothesis_out_of_the_cwd()
    if args.real:
        return _run_real(args, release, seed, out)
    examples = args.examples or DEFAULT_EXAMPLES
    names = args.property or list(PROPERTY_NAMES)
    if not args.json and progress_wanted():
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        with Progress(
            TextColumn("{task.description:<20}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:>8} ex/s"),
            console=Console(stderr=True),
            transient=True,
        ) as progress:
            tasks: dict[str, Any] = {}

            def tick(name: str) -> None:
                if name not in tasks:
                    tasks[name] = [progress.add_task(name, total=examples, rate=""), 0,
                                   time.perf_counter()]  # fmt: skip
                task = tasks[name]
                task[1] += 1
                dt = time.perf_counter() - task[2]
                progress.update(
                    task[0],
                    completed=min(task[1], examples),
                    rate=f"{task[1] / dt:.0f}" if dt else "",
                )

            results = run_properties(
                release, names, examples=examples, seed=seed, clock=time.perf_counter,
                on_example=tick,
            )  # fmt: skip
    else:
        results = run_properties(
            release, names, examples=examples, seed=seed, clock=time.perf_counter
        )
    for res in results:
        if res.failure is not None:
            res.fixture = str(_save_counterexample(out, res, seed, examples))
    _report(args, release, seed, results, out)
    return 1 if any(r.failure for r in results) else 0


def _report(
    args: argparse.Namespace,
    release: Release,
    seed: int,
    results: Sequence[PropertyResult],
    out: Path,
) -> None:
    fmt = output_format(args)
    if fmt == "json":
        for res in results:
            print_json({**res.to_json(), "seed": seed})
        return
    print_rows(
        ("property", "examples", "seconds", "ex/s", "result"),
        [
            (res.name, res.examples, f"{res.seconds:.1f}", f"{res.rate:.0f}",
             "counterexample" if res.failure else "passed")
            for res in results
        ],
        fmt=fmt,
        title=f"fuzzing the {release} source model (seed {seed})",
        styles={"result": lambda v: "bold red" if v == "counterexample" else "green"},
    )  # fmt: skip
    found = [res for res in results if res.failure]
    for res in found:
        assert res.failure is not None
        print(f"{res.name}: {res.failure['error']}")
        print(f"  input: {json.dumps(res.failure['input'])}")
        print(f"  saved: {res.fixture}")
        stem = Path(res.fixture or "").stem
        print(
            "  replay: copy it into a checkout's fixtures/fuzz/, then "
            f"pytest tests/test_fuzz_regressions.py -k {stem}"
        )
    if not found:
        print(f"counterexamples would be saved under {out}")


# -- --real: differential fuzzing against a real source -------------------------------------


def _print_case(
    args: argparse.Namespace, c: Any, release: Release, n: int, total: int, case: Any
) -> None:
    if args.json:
        print_json(
            {"source": str(release), "case": n, **case.to_json(), "fixture": case.outdir or None}
        )
        return
    mark = {True: "[green]agree[/]", False: "[bold red]DISAGREE[/]", None: "[yellow]?[/]"}
    kinds = ", ".join(k for k, _ in case.frames)
    text = (
        f"{n + 1:>3}/{total} {mark[case.agree]} {kinds}: model "
        f"{case.model.get('verdict', '?')}, real {case.real.get('verdict', '?')} "
        f"({case.real.get('status')})"
    )
    c.print(text, markup=True, highlight=False)
    if case.why:
        c.print(f"      {case.why}", markup=False, highlight=False)
    if case.outdir:
        c.print(f"      saved: {case.outdir}", markup=False, highlight=False)
    sys.stdout.flush()


def _lab_build(name: str) -> Any:
    """The ``migcompat lab build`` registered as ``name``, if any."""
    try:
        from migcompat.lab import find_build
    except ImportError:  # pragma: no cover - the lab is part of this package
        return None
    b = find_build(name)
    return b if b is not None and b.is_lab_build else None


def _run_real(args: argparse.Namespace, release: Release, seed: int, out: Path) -> int:
    from migcompat.lab.fuzz_real import REAL_EXCLUDED, run_real

    c = console()
    total: list[int] = []

    def start(build: str, cases: list[Any]) -> None:
        total.append(len(cases))
        if args.json:
            return
        c.print(
            f"--real: {sum(len(k.frames) for k in cases)} frames in {len(cases)} real migrations "
            f"from {build} (seed {seed})",
            markup=False,
        )
        for kind, why in REAL_EXCLUDED.items():
            c.print(f"  [dim]not injected: {kind} ({why})[/]")

    def done(n: int, case: Any) -> None:
        _print_case(args, c, release, n, total[0], case)

    summary = run_real(
        release,
        examples=args.examples,
        seed=seed,
        out=out,
        on_start=start,
        on_case=done,
        build=getattr(args, "lab_build", None),
    )
    frames, dt = summary["frames"], summary["seconds"]
    disagreements, inconclusive = summary["disagreements"], summary["inconclusive"]
    if args.json:
        print_json({"summary": summary})
    else:
        c.print(
            f"{frames} frames, {summary['migrations']} migrations, {dt:.0f} s "
            f"({frames / dt if dt else 0:.2f} frames/s): {disagreements} disagreement(s), "
            f"{inconclusive} inconclusive",
            markup=False,
        )
    return 1 if disagreements else 0
