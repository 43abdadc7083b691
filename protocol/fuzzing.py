"""Fuzzing the return-path model: the properties, their runner, regression replay, and the
oracle that compares the model with what a real source did (public).

Used by ``migcompat fuzz`` and by the tests (``tests/test_fuzz_regressions.py`` replays the
saved counterexamples with :func:`replay`); the real-QEMU side of the differential, which
starts migrations, is :mod:`migcompat.lab.fuzz_real`.

A :class:`Property` is a hypothesis strategy per release (from
:mod:`migcompat.protocol.strategies`) and an oracle: the MAX rule, predicted verdicts over whole
streams (every invalid-frame class, exact text, offsets), grammar == reader on mutated
streams, the stop position, and chunking. :func:`run_property` runs one and shrinks a
failure to a JSON-encodable counterexample; :func:`counterexample` makes the record
``migcompat fuzz`` saves and :func:`replay` re-runs. :func:`model_verdict` is the reader's
verdict on a whole return path as a real source received it, and :func:`compare` says
whether a real source's outcome agrees with it.

Sans-IO like the rest of the package: hypothesis is imported on first use (it is a test
dependency), and time comes in as a ``clock`` argument.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from ._catalog import catalog
from ._errors import RemoteViolation
from ._events import Message, Shut
from ._reader import Reader
from ._releases import Release, parse_release

__all__ = [
    "DEFAULT_EXAMPLES",
    "PROPERTY_NAMES",
    "Property",
    "PropertyResult",
    "compare",
    "counterexample",
    "model_verdict",
    "properties",
    "replay",
    "run_properties",
    "run_property",
]


def __dir__() -> list[str]:
    return list(__all__)


#: Examples per property when ``--examples`` is not given (2 shared cores: modest).
DEFAULT_EXAMPLES = 100


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

    from . import strategies as rps

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


#: Every property, in the order ``migcompat fuzz`` runs and reports them.
PROPERTY_NAMES = ("max-rule", "predicted-streams", "grammar-vs-model", "stop-position", "chunking")


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
    clock: Callable[[], float],
    on_example: Callable[[], None] | None = None,
) -> PropertyResult:
    """Run ``prop`` for ``release`` with hypothesis: ``examples`` examples from ``seed``.

    The failure (if any) is the shrunk counterexample, encoded with ``prop.encode``;
    ``clock`` (e.g. ``time.perf_counter``) times the run.
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

    # given() returns a decorator whose signature hypothesis leaves untyped.
    drawn: Callable[[Callable[[Any], None]], Callable[[], None]] = given(prop.strategy(release))
    test: Callable[[], None] = hseed(seed)(
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
        )(drawn(body))
    )
    start = clock()
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
    result.seconds = clock() - start
    return result


def replay(record: Mapping[str, Any]) -> None:
    """Re-run the property of a saved counterexample (raises as the property does)."""
    prop = properties()[record["property"]]
    rel = parse_release(record["release"])
    prop.check(rel, prop.decode(rel, record["input"]))


def run_properties(
    release: Release,
    names: Sequence[str],
    *,
    examples: int,
    seed: int,
    clock: Callable[[], float],
    on_example: Callable[[str], None] | None = None,
) -> list[PropertyResult]:
    """Run the named properties in order (``on_example(name)`` after each example)."""
    results = []
    for name in names:
        tick = (lambda name=name: on_example(name)) if on_example is not None else None
        results.append(
            run_property(
                properties()[name],
                release,
                examples=examples,
                seed=seed,
                clock=clock,
                on_example=tick,
            )
        )
    return results


def counterexample(
    res: PropertyResult, *, seed: int, examples: int, found_at: str
) -> tuple[str, dict[str, Any]]:
    """A failed run as a regression record: ``(file stem, record)`` for :func:`replay`."""
    assert res.failure is not None
    body = json.dumps(res.failure["input"], sort_keys=True)
    digest = hashlib.sha256(f"{res.name}{res.release}{body}".encode()).hexdigest()[:10]
    stem = f"{res.name}-{res.release}-{digest}"
    record = {
        "schema": 1,
        "property": res.name,
        "release": str(res.release),
        "input": res.failure["input"],
        "error": res.failure["error"],
        "found_by": f"migcompat fuzz --source {res.release} --seed {seed} --examples {examples}",
        "found_at": found_at,
        "replay": "in a checkout, under fixtures/fuzz/: pytest tests/test_fuzz_regressions.py -k "
        + stem,
    }
    return stem, record


# -- the model against a real source ---------------------------------------------------------


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
        "verdict": "accepted",
        "error": None,
        "offset": None,
        "type": None,
        "frames": frames,
    }
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


def _as_seen(text: str | None) -> str | None:
    """QEMU prints a block name's raw bytes; the lab reads stderr (and QMP) as UTF-8."""
    if text is None:
        return None
    return text.encode("latin-1", errors="replace").decode("utf-8", errors="replace")


def compare(
    model: Mapping[str, Any], real: Mapping[str, Any], release: Release | str
) -> tuple[bool | None, str]:
    """Does a real source's outcome (``lab.fuzz_real.real_outcome``) agree with the model's
    verdict (:func:`model_verdict`)? ``(True, "")``, ``(False, why)``, or ``(None, why)``
    when the real source did not settle."""
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
