"""``migcompat fuzz``: the model's fuzzing properties as a command, and differential fuzzing
against a real source (``--real``).

Model mode runs the oracles of :mod:`migcompat.protocol.strategies` with hypothesis for one
source release (or overlay): the MAX rule, predicted verdicts over whole streams (every
invalid-frame class, exact text, offsets), grammar == reader on mutated streams, the stop
position, and chunking. A counterexample is shrunk and written to ``fixtures/fuzz/`` as a
JSON file that ``tests/test_fuzz_regressions.py`` replays.

``--real`` draws frames of the classes a live source can be tested with, injects them into
the return path of a real migration from a lab build of that release (several accepted
frames share one migration; each rejected frame needs its own), and compares what the real
source did — final status, exact error text in ``error-desc`` or stderr — with the model's
verdict on the return path as the source received it (``rp.bin``, read with the guest's
RAM). An injected SHUT ends the return path without a rejection; what the migration does
next is not the reader's to predict, so only texts are compared for it (see
:func:`model_verdict`). Names are compared as a UTF-8 reader sees QEMU's raw bytes. Every
disagreement is saved (capture, record, case) under ``fixtures/fuzz/real/`` and fails the
run; a lab failure or hang is "inconclusive", not a disagreement.

Exit 0: no counterexample / disagreement; 1: found one; 2: bad input or no lab.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from migcompat._io import console, print_json
from migcompat.protocol import (
    InputError,
    Message,
    Reader,
    Release,
    RemoteViolation,
    Shut,
    build_frame,
    catalog,
    parse_release,
)

__all__ = [
    "REAL_RAM",
    "Property",
    "PropertyResult",
    "default_fixture_dir",
    "model_verdict",
    "properties",
    "real_outcome",
    "register",
    "replay",
    "run_property",
]


def __dir__() -> list[str]:
    return list(__all__)


#: Examples per property when ``--examples`` is not given (2 shared cores: modest).
DEFAULT_EXAMPLES = 100
#: Frames per ``--real`` run when ``--examples`` is not given (each migration is ~10 s).
DEFAULT_REAL_EXAMPLES = 8
#: Accepted frames injected together ahead of one frame in a single migration.
REAL_BATCH = 4
#: Wall-clock limit of one real migration (the lab's own timeout is 60 s after migrate).
REAL_CASE_TIMEOUT = 150.0

#: The RAM the lab's guest has that return-path frames can name (``lab/runner.py``: 128 MiB,
#: q35; page requests only ever name ``pc.ram``). Other blocks (ROMs, BIOS) are left out:
#: generated names are random, so they never hit one by chance.
REAL_RAM: Mapping[str, int] = {"pc.ram": 128 << 20}


# -- properties -------------------------------------------------------------------------


@dataclass(frozen=True)
class Property:
    """One fuzzing property: a strategy per release, the oracle, and a JSON form of inputs."""

    name: str
    doc: str
    strategy: Callable[[Release], Any]
    check: Callable[[Release, Any], None]
    encode: Callable[[Any], dict[str, Any]]
    decode: Callable[[Release, Mapping[str, Any]], Any]


def _ram(obj: Mapping[str, Any]) -> dict[str, int] | None:
    ram = obj.get("ram")
    return {str(k): int(v) for k, v in ram.items()} if ram is not None else None


def _properties() -> dict[str, Property]:
    from hypothesis import strategies as st

    from migcompat.protocol import strategies as rps

    with_ram = rps.ram_blocks()

    def streams_with_and_without_ram(rel: Release) -> Any:
        return st.one_of(
            rps.streams(rel),
            with_ram.flatmap(lambda ram: rps.streams(rel, ram=ram, max_frames=6)),
        )

    def mutated_maybe_ram(rel: Release) -> Any:
        return st.one_of(
            rps.mutated_streams(rel).map(lambda d: (d, None)),
            with_ram.flatmap(lambda ram: rps.mutated_streams(rel, ram=ram).map(lambda d: (d, ram))),
        )

    props = [
        Property(
            "max-rule",
            "type 0 and every type >= MIG_RP_MSG_MAX rejected where the header starts, exact text",
            rps.max_rule_cases,
            lambda rel, v: rps.check_max_rule(rel, *v),
            lambda v: {"prefix": v[0].hex(), "type": v[1], "length": v[2]},
            lambda rel, o: (bytes.fromhex(o["prefix"]), int(o["type"]), int(o["length"])),
        ),
        Property(
            "predicted-streams",
            "streams ending in every invalid class: verdict, exact text, offset, stop position",
            streams_with_and_without_ram,
            lambda rel, s: rps.check_sample(s),
            lambda s: s.to_json(),
            lambda rel, o: rps.FrameSample.from_json(o),
        ),
        Property(
            "grammar-vs-model",
            "construct grammar == reader, frame by frame, on mutated streams and blobs",
            rps.mutated_streams,
            lambda rel, d: rps.check_grammar_agrees(rel, d),
            lambda d: {"data": d.hex()},
            lambda rel, o: bytes.fromhex(o["data"]),
        ),
        Property(
            "stop-position",
            "the first rejection's offset and stopped_at are where the source stops reading",
            mutated_maybe_ram,
            lambda rel, v: rps.check_stop_position(rel, v[0], v[1]),
            lambda v: {"data": v[0].hex(), "ram": v[1]},
            lambda rel, o: (bytes.fromhex(o["data"]), _ram(o)),
        ),
        Property(
            "chunking",
            "any split of a mutated stream gives the same events and verdict",
            lambda rel: st.tuples(
                rps.mutated_streams(rel), st.lists(st.integers(0, 4096), max_size=6)
            ),
            lambda rel, v: rps.check_chunking(rel, v[0], v[1]),
            lambda v: {"data": v[0].hex(), "cuts": v[1]},
            lambda rel, o: (bytes.fromhex(o["data"]), [int(c) for c in o["cuts"]]),
        ),
    ]
    return {p.name: p for p in props}


@cache
def properties() -> dict[str, Property]:
    """Property name → :class:`Property` (built on first use: importing hypothesis is not free)."""
    return _properties()


_PROPERTY_NAMES = ("max-rule", "predicted-streams", "grammar-vs-model", "stop-position", "chunking")


@dataclass
class PropertyResult:
    """What one property run found."""

    name: str
    release: Release
    examples: int = 0
    seconds: float = 0.0
    failure: dict[str, Any] | None = None
    fixture: str | None = None

    @property
    def rate(self) -> float:
        """Examples per second."""
        return self.examples / self.seconds if self.seconds else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "property": self.name,
            "source": str(self.release),
            "examples": self.examples,
            "seconds": round(self.seconds, 3),
            "examples_per_second": round(self.rate, 1),
            "result": "counterexample" if self.failure else "passed",
            "counterexample": self.failure,
            "fixture": self.fixture,
        }


def run_property(
    prop: Property,
    release: Release,
    *,
    examples: int,
    seed: int,
    on_example: Callable[[], None] | None = None,
) -> PropertyResult:
    """Run ``prop`` for ``release`` with hypothesis: ``examples`` examples from ``seed``.

    The failure (if any) is the shrunk counterexample, encoded with ``prop.encode``.
    """
    from hypothesis import HealthCheck, Phase, Verbosity, given, settings
    from hypothesis import seed as hseed

    result = PropertyResult(prop.name, release)
    last_failure: list[tuple[Any, BaseException]] = []

    def body(value: Any) -> None:
        result.examples += 1
        if on_example is not None:
            on_example()
        try:
            prop.check(release, value)
        except Exception as exc:
            last_failure[:] = [(value, exc)]
            raise

    test = hseed(seed)(
        settings(
            max_examples=examples,
            database=None,
            deadline=None,
            derandomize=False,
            report_multiple_bugs=False,
            suppress_health_check=list(HealthCheck),
            verbosity=Verbosity.quiet,
            phases=(Phase.explicit, Phase.generate, Phase.shrink),
            print_blob=False,
        )(given(prop.strategy(release))(body))
    )
    start = time.perf_counter()
    try:
        test()
    except Exception as exc:
        if not last_failure:
            raise  # hypothesis itself failed (e.g. an unsatisfiable strategy): a bug
        value, err = last_failure[0]
        result.failure = {
            "input": prop.encode(value),
            "error": f"{type(err).__name__}: {err}",
            "hypothesis": type(exc).__name__,
        }
    result.seconds = time.perf_counter() - start
    return result


def replay(record: Mapping[str, Any]) -> None:
    """Re-run the property of a saved counterexample (raises as the property does)."""
    prop = properties()[record["property"]]
    rel = parse_release(record["release"])
    prop.check(rel, prop.decode(rel, record["input"]))


def default_fixture_dir() -> Path:
    """``fixtures/fuzz`` of the source checkout when running from one, else of the cwd."""
    here = Path(__file__).resolve().parent.parent
    if (here / "pyproject.toml").exists() and (here / "fixtures").is_dir():
        return here / "fixtures" / "fuzz"
    return Path.cwd() / "fixtures" / "fuzz"


def _save_counterexample(out: Path, res: PropertyResult, seed: int, examples: int) -> Path:
    assert res.failure is not None
    body = json.dumps(res.failure["input"], sort_keys=True)
    digest = hashlib.sha256(f"{res.name}{res.release}{body}".encode()).hexdigest()[:10]
    path = out / f"{res.name}-{res.release}-{digest}.json"
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "schema": 1,
        "property": res.name,
        "release": str(res.release),
        "input": res.failure["input"],
        "error": res.failure["error"],
        "found_by": f"migcompat fuzz --source {res.release} --seed {seed} --examples {examples}",
        "found_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "replay": "pytest tests/test_fuzz_regressions.py -k " + path.stem,
    }
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


# -- the command ---------------------------------------------------------------------------


def register(sub: Any) -> None:
    p = sub.add_parser(
        "fuzz",
        help="fuzz the source-parser model (or, with --real, a real source) for one release",
        description=(
            "Run the return-path model's fuzzing properties with hypothesis for one source "
            "release: the MIG_RP_MSG_MAX rule with QEMU's exact text, predicted verdicts for "
            "every class of invalid frame, grammar == model on mutated streams, stop position, "
            "chunking. Counterexamples are shrunk and written to fixtures/fuzz/ as regression "
            "files (tests/test_fuzz_regressions.py replays them). With --real, frames are "
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
        choices=_PROPERTY_NAMES,
        metavar="NAME",
        help=f"only this property (repeatable): {', '.join(_PROPERTY_NAMES)}",
    )
    p.add_argument("--fixtures", metavar="DIR", help="where counterexamples go (fixtures/fuzz)")
    p.add_argument("--real", action="store_true", help="compare with a real source (the lab)")
    p.add_argument("--json", action="store_true", help="one JSON object per property / frame")
    p.set_defaults(func=run)


def _release(args: argparse.Namespace) -> Release:
    lab_build = _lab_build(args.source) if args.real else None
    if lab_build is not None:  # a `migcompat lab build` name: model it by its own catalog
        args.lab_build = lab_build
        return catalog(lab_build.protocol_release).release
    rel = parse_release(args.source)
    if args.overlay:
        if rel.overlay and rel.overlay != args.overlay:
            raise InputError(f"--source {rel} already has overlay {rel.overlay!r}")
        rel = rel.with_overlay(args.overlay)
    return catalog(rel).release  # resolves now: a bad release or overlay exits 2


def run(args: argparse.Namespace) -> int:
    release = _release(args)
    if args.examples is not None and args.examples < 1:
        raise InputError("--examples must be at least 1")
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "big")
    out = Path(args.fixtures) if args.fixtures else default_fixture_dir()
    if args.real:
        return _run_real(args, release, seed, out)
    examples = args.examples or DEFAULT_EXAMPLES
    names = args.property or list(_PROPERTY_NAMES)
    show = not args.json and sys.stderr.isatty()
    results: list[PropertyResult] = []
    if show:
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
            for name in names:
                task = progress.add_task(name, total=examples, rate="")
                t0 = time.perf_counter()
                done = [0]

                def tick(task: Any = task, t0: float = t0, done: list[int] = done) -> None:
                    done[0] += 1
                    dt = time.perf_counter() - t0
                    progress.update(
                        task,
                        completed=min(done[0], examples),
                        rate=f"{done[0] / dt:.0f}" if dt else "",
                    )

                results.append(
                    run_property(
                        properties()[name], release, examples=examples, seed=seed, on_example=tick
                    )
                )
    else:
        for name in names:
            results.append(run_property(properties()[name], release, examples=examples, seed=seed))
    for res in results:
        if res.failure is not None:
            res.fixture = str(_save_counterexample(out, res, seed, examples))
    _report(args, release, seed, results)
    return 1 if any(r.failure for r in results) else 0


def _report(
    args: argparse.Namespace, release: Release, seed: int, results: Sequence[PropertyResult]
) -> None:
    if args.json:
        for res in results:
            print_json({**res.to_json(), "seed": seed})
        return
    from rich.table import Table

    c = console()
    table = Table(title=f"fuzzing the {release} source model (seed {seed})", title_justify="left")
    for col in ("property", "examples", "seconds", "ex/s", "result"):
        table.add_column(col, justify="right" if col in ("examples", "seconds", "ex/s") else "left")
    for res in results:
        table.add_row(
            res.name,
            str(res.examples),
            f"{res.seconds:.1f}",
            f"{res.rate:.0f}",
            "[bold red]counterexample[/]" if res.failure else "[green]passed[/]",
        )
    c.print(table)
    for res in results:
        if res.failure:
            c.print(f"[bold red]{res.name}[/]: {res.failure['error']}", markup=True)
            c.print(f"  input: {json.dumps(res.failure['input'])[:400]}", markup=False)
            c.print(f"  saved: {res.fixture}", markup=False)
            stem = Path(res.fixture or "").stem
            c.print(f"  replay: pytest tests/test_fuzz_regressions.py -k {stem}", markup=False)


# -- --real: differential fuzzing against a real source -------------------------------------

#: Invalid kinds a live source in postcopy-active cannot be compared on, and why.
REAL_EXCLUDED = {
    "truncated": "a live return path keeps delivering the destination's bytes behind the cut",
    "recv-bitmap-bad-size": "names a real block: the source first checks it is in "
    "postcopy-recover ('Reload bitmap in incorrect state'), which the Reader does not model",
    "recv-bitmap-bad-end-mark": "same: a real block name hits the migration-state check first",
}


@dataclass(frozen=True)
class _Sample:
    kind: str
    data: bytes


@dataclass
class RealCase:
    """Frames injected in one real migration, and what the model and QEMU made of them."""

    frames: list[tuple[str, bytes]]
    model: dict[str, Any] = field(default_factory=dict)
    real: dict[str, Any] = field(default_factory=dict)
    agree: bool | None = None
    why: str = ""
    outdir: str = ""

    @property
    def blob(self) -> bytes:
        return b"".join(d for _, d in self.frames)

    def to_json(self) -> dict[str, Any]:
        return {
            "frames": [{"kind": k, "hex": d.hex()} for k, d in self.frames],
            "model": self.model,
            "real": self.real,
            "agree": self.agree,
            "why": self.why,
        }


def model_verdict(
    release: Release | str,
    rp: bytes,
    ram: Mapping[str, int] | None,
    injected: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """The Reader's verdict on a whole return path as the source received it.

    ``rejected`` (with QEMU's text), ``accepted``, or ``stopped``: a SHUT inside the
    ``injected`` range ended the return path early. What the migration does after that is
    the migration thread's business, not the reader's (7.2 pauses postcopy with "Detected
    IO failure", 10.0+ completes), so only texts are compared for it; a non-zero
    ``sibling_error`` makes QEMU print the catalog's ``shut_error`` text.
    """
    cat = catalog(release)
    r = Reader(release, ram_blocks=ram)
    if rp:
        r.receive_data(rp)
    r.receive_data(b"")
    frames = 0
    last: Message | None = None
    try:
        for ev in r.events():
            if isinstance(ev, Message):
                frames += 1
                last = ev
    except RemoteViolation as exc:
        return {
            "verdict": "rejected",
            "error": exc.qemu_error,
            "offset": exc.offset,
            "type": exc.message_type,
            "frames": frames,
        }
    out: dict[str, Any] = {
        "verdict": "accepted", "error": None, "offset": None, "type": None, "frames": frames,
    }  # fmt: skip
    if isinstance(last, Shut) and injected and injected[0] <= last.offset < injected[1]:
        out.update(verdict="stopped", offset=last.offset, type=last.type_id)
        if last.sibling_error and "shut_error" in cat.errors:
            out["error"] = cat.format_error("shut_error", last.sibling_error)
    return out


def _text_patterns(release: Release | str) -> list[re.Pattern[str]]:
    """Every error text of the release's return-path reader, as a regex (C conversions: any)."""
    spec = re.compile(r"%[-+ 0#]*\d*(?:\.\d+)?(?:hh|h|ll|l|z|j|t|L)?[diouxXsc]")
    out = []
    for fmt in catalog(release).errors.values():
        parts = spec.split(fmt)
        out.append(re.compile(".*?".join(re.escape(x) for x in parts), re.DOTALL))
    return out


def real_outcome(rec: Any) -> dict[str, Any]:
    """What the real source did in a lab run: final status, its error texts, verdict."""
    statuses = rec.status_sequence("src")
    final = (rec.final_migrate.get("src") or {}).get("status") or (
        statuses[-1] if statuses else None
    )
    texts = []
    for line in rec.stderr_lines("src"):
        _, sep, rest = line.partition(": ")
        texts.append(rest if sep and line.split(":")[0].startswith("qemu-system") else line)
    desc = rec.error_desc.get("src")
    if final in ("failed", "postcopy-paused"):
        verdict = "rejected"
    elif final == "completed":
        verdict = "accepted"
    else:
        verdict = "undecided"
    return {
        "verdict": verdict,
        "status": final,
        "statuses": statuses,
        "error_desc": desc,
        "stderr": texts,
        "version": rec.src.get("version_text"),
    }


def _as_seen(text: str | None) -> str | None:
    """QEMU prints a block name's raw bytes; the lab reads stderr (and QMP) as UTF-8."""
    if text is None:
        return None
    return text.encode("latin-1", errors="replace").decode("utf-8", errors="replace")


def _compare(
    model: Mapping[str, Any], real: Mapping[str, Any], release: Release | str
) -> tuple[bool | None, str]:
    texts = [t for t in [real.get("error_desc"), *real.get("stderr", [])] if t]
    model = {**model, "error": _as_seen(model.get("error"))}
    if model["verdict"] == "stopped":
        if model["error"] is not None and model["error"] not in texts:
            return False, f"SHUT: expected {model['error']!r}, the source said {texts!r}"
        pats = _text_patterns(release)
        other = [t for t in texts if t != model["error"] and any(p.fullmatch(t) for p in pats)]
        if other:
            return False, f"SHUT ended the return path, yet the source rejected: {other!r}"
        return True, ""
    if real["verdict"] == "undecided":
        return None, f"the real source did not settle (status {real['status']})"
    if model["verdict"] != real["verdict"]:
        said = "; ".join(texts) or "nothing"
        return False, f"model {model['verdict']}, real source {real['verdict']} (said: {said})"
    if model["verdict"] == "rejected" and model["error"] is not None:
        if model["error"] not in texts:
            return False, (
                f"both reject, but the model's text {model['error']!r} is neither error-desc "
                f"{real['error_desc']!r} nor a stderr line {real['stderr']!r}"
            )
    return True, ""


def _real_pools(release: Release, per_kind: int, seed: int) -> dict[str, list[tuple[str, bytes]]]:
    """Frames per class, drawn with hypothesis (generation only: no real run is shrunk)."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed
    from hypothesis import strategies as st

    from migcompat.protocol import strategies as rps

    ram = dict(REAL_RAM)
    classes: dict[str, Any] = {
        # RECV_BITMAP naming a real block needs postcopy-recover (see REAL_EXCLUDED).
        "valid": rps.valid_frames(release, shut=False, ram=ram).filter(
            lambda s: s.kind != "valid:RECV_BITMAP"
        ),
        "shut": st.one_of(st.just(0), st.integers(0, 2**32 - 1)).map(
            lambda v: _Sample("valid:SHUT", build_frame(release, "SHUT", sibling_error=v))
        ),
    }
    for kind in rps.kinds_for(release):
        if kind not in REAL_EXCLUDED:
            classes[kind] = rps.invalid_frames(release, kind, ram=ram)
    pools: dict[str, list[tuple[str, bytes]]] = {}
    for name, strategy in classes.items():
        got: list[tuple[str, bytes]] = []
        hseed(seed)(
            settings(
                max_examples=per_kind * 3,
                database=None,
                deadline=None,
                phases=(Phase.generate,),
                suppress_health_check=list(HealthCheck),
            )(given(strategy)(_collector(got, per_kind, None if name == "valid" else name)))
        )()
        pools[name] = got
    return pools


def _collector(
    got: list[tuple[str, bytes]], limit: int, label: str | None
) -> Callable[[Any], None]:
    def collect(sample: Any) -> None:
        if len(got) < limit and all(d != sample.data for _, d in got):
            got.append((label or sample.kind, sample.data))

    return collect


def _plan(pools: dict[str, list[tuple[str, bytes]]], n: int) -> list[RealCase]:
    """``n`` frames in migrations: each rejected (or SHUT) frame last in its own migration,
    accepted ones batched ahead of them, classes round-robin so every class is covered."""
    order = [k for k in pools if k != "valid"]
    tails: list[tuple[str, bytes]] = []
    valid = list(pools.get("valid", []))
    i = 0
    budget = n
    while budget > 0 and any(pools[k] for k in order):
        k = order[i % len(order)]
        i += 1
        if pools[k]:
            tails.append(pools[k].pop(0))
            budget -= 1
        if budget > 0 and valid and i % 2 == 0:
            budget -= 1
            tails.append(valid.pop(0))
    cases: list[RealCase] = []
    pending: list[tuple[str, bytes]] = []
    for kind, data in tails:
        if kind.startswith("valid:"):
            pending.append((kind, data))
            if len(pending) >= REAL_BATCH:
                cases.append(RealCase(pending))
                pending = []
            continue
        cases.append(RealCase([*pending, (kind, data)]))
        pending = []
    if pending:
        cases.append(RealCase(pending))
    return cases


async def _one_run(runner: Any, build: Any, sc: Any, outdir: Path) -> Any:
    """One lab run, cancelled (the lab tears its QEMUs down) if it outlives its own timeout."""
    return await asyncio.wait_for(
        runner(build, build, sc, outdir=outdir, timeout=60.0, observe=4.0), REAL_CASE_TIMEOUT
    )


def _print_case(
    args: argparse.Namespace, c: Any, release: Release, n: int, total: int, case: RealCase
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
    try:
        from migcompat.lab import (
            LabError,
            Scenario,
            find_build,
            installed_builds,
            run_scenario_async,
            save_fixture,
        )
    except ImportError as exc:  # pragma: no cover - the lab is part of this package
        raise InputError(
            f"--real needs the lab (migcompat.lab), which is not usable: {exc}"
        ) from None
    build = getattr(args, "lab_build", None) or find_build(str(release))
    if build is None:
        have = ", ".join(b.release for b in installed_builds()) or "none"
        hint = (
            f"register a patched build: `migcompat lab provision --qemu {release}=/path/to/"
            "qemu-system-x86_64`"
            if release.overlay
            else f"run `migcompat lab provision {release.line}`"
        )
        raise InputError(f"--real: no lab build of QEMU {release} (provisioned: {have}); {hint}")
    n = args.examples or DEFAULT_REAL_EXAMPLES
    from migcompat.protocol import strategies as rps

    kinds = [k for k in rps.kinds_for(release) if k not in REAL_EXCLUDED]
    per_kind = max(1, -(-n // (len(kinds) + 1))) + 1
    cases = _plan(_real_pools(release, per_kind, seed), n)
    c = console()
    if not args.json:
        c.print(
            f"--real: {sum(len(k.frames) for k in cases)} frames in {len(cases)} real migrations "
            f"from {build.version_text} (seed {seed})",
            markup=False,
        )
        for kind, why in REAL_EXCLUDED.items():
            c.print(f"  [dim]not injected: {kind} ({why})[/]")
    disagreements = inconclusive = 0
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="migcompat-fuzz-") as tmp:
        for n_case, case in enumerate(cases):
            outdir = Path(tmp) / f"case{n_case}"
            sc = Scenario(name=f"fuzz:{case.blob[:8].hex()}", kind="inject", frame=case.blob)
            rec, lab_error = None, ""
            for attempt in range(2):  # a lab hiccup (QEMU not starting) is retried once
                try:
                    rec = asyncio.run(_one_run(run_scenario_async, build, sc, outdir))
                    break
                except LabError as exc:
                    lab_error = f"{exc}" + (" (after a retry)" if attempt else "")
                except TimeoutError:
                    lab_error = f"the lab run hung for {REAL_CASE_TIMEOUT:.0f} s and was cancelled"
                    break
            if rec is None:
                case.agree, case.why = None, f"the lab failed: {lab_error}"
                case.real = {"verdict": "undecided"}
                inconclusive += 1
                _print_case(args, c, release, n_case, len(cases), case)
                continue
            rp_path = Path(rec.files.get("rp_bin", outdir / "rp.bin"))
            rp = rp_path.read_bytes() if rp_path.exists() else b""
            inj = rec.proxy.get("injections", [])
            if (
                not inj
                or rp[inj[0]["src_offset"] : inj[0]["src_offset"] + len(case.blob)] != case.blob
            ):
                case.agree, case.why = None, "the frames were not injected (see record.json)"
                case.real = {"verdict": "undecided", "step_errors": rec.step_errors}
            else:
                at = inj[0]["src_offset"]
                case.model = model_verdict(release, rp, REAL_RAM, (at, at + len(case.blob)))
                case.real = real_outcome(rec)
                case.agree, case.why = _compare(case.model, case.real, release)
            if case.agree is False:
                disagreements += 1
                digest = hashlib.sha256(case.blob).hexdigest()[:10]
                fdir = out / "real" / f"{release}-{digest}"
                save_fixture(outdir, fdir)
                (fdir / "case.json").write_text(
                    json.dumps({"schema": 1, "release": str(release), "ram": dict(REAL_RAM),
                                "injected": [at, at + len(case.blob)], **case.to_json()},
                               indent=2) + "\n"
                )  # fmt: skip
                case.outdir = str(fdir)
            elif case.agree is None:
                inconclusive += 1
            _print_case(args, c, release, n_case, len(cases), case)
    dt = time.perf_counter() - t0
    frames = sum(len(k.frames) for k in cases)
    summary = {
        "source": str(release),
        "build": build.version_text,
        "seed": seed,
        "frames": frames,
        "migrations": len(cases),
        "disagreements": disagreements,
        "inconclusive": inconclusive,
        "seconds": round(dt, 1),
        "frames_per_second": round(frames / dt, 3) if dt else 0,
    }
    if args.json:
        print_json({"summary": summary})
    else:
        c.print(
            f"{frames} frames, {len(cases)} migrations, {dt:.0f} s "
            f"({frames / dt if dt else 0:.2f} frames/s): {disagreements} disagreement(s), "
            f"{inconclusive} inconclusive",
            markup=False,
        )
    return 1 if disagreements else 0
