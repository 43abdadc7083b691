"""The cross-version matrix: predict every cell, compare a lab run with its prediction.

A *cell* is (source release, destination release, machine type both support, scenario).
Its *prediction* comes from two pieces of data and nothing else:

* the protocol catalog of the source release (:func:`migcompat.protocol.catalog`), through
  the source-parser model (:class:`migcompat.protocol.Reader`), decides whether an injected
  frame is accepted and the exact error text otherwise; semantic rules in
  ``compat/data/matrix.json`` add what the frame parser cannot see (a well-formed message
  illegal in the current migration state, e.g. RECV_BITMAP outside postcopy-recover);
* the outcome rules of ``compat/data/matrix.json`` (per source release range and phase) say
  what each side then ends in: source status, error-desc, destination status *set* (where
  timing decides), both runstates. Every rule cites the lab records that ground it.

A guest running on both hosts at the end is **split brain**, flagged wherever it is possible.
Machine types come from the compat tables (:func:`migcompat.compat.compat_table`).
"""

from __future__ import annotations

import json
import re
import struct
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from migcompat.protocol import (
    InvalidRelease,
    RamBlock,
    Reader,
    Release,
    RemoteViolation,
    catalog,
)
from migcompat.protocol._errors import InputError, MigcompatError

from ._tables import UnknownMachine, compat_releases, compat_table

__all__ = [
    "DEFAULT_FAMILY",
    "DEFAULT_RELEASES",
    "Cell",
    "CellResult",
    "MatrixInterrupted",
    "Prediction",
    "build_versions",
    "capabilities",
    "cell_slug",
    "common_machines",
    "compare",
    "core_scenarios",
    "gitlab_ci",
    "known_scenarios",
    "machines_for",
    "matrix_cells",
    "observations_json",
    "observed_summary",
    "parse_cell_id",
    "predict",
    "predict_matrix",
    "predictions_markdown",
    "recorded_observations",
    "results_json",
    "results_junit",
    "results_markdown",
    "results_summary",
    "run_cell",
    "run_cells",
]


def __dir__() -> list[str]:
    return list(__all__)


#: Releases of the default matrix (the ones the lab provisions by default).
DEFAULT_RELEASES: tuple[str, ...] = ("7.2", "10.0", "11.1")
#: Machine family of the matrix (the lab's guest is x86 q35).
DEFAULT_FAMILY = "pc-q35"

_QEMU_PREFIX = re.compile(r"^qemu-system-[\w-]+: ")


@cache
def _model() -> Mapping[str, Any]:
    path = resources.files("migcompat.compat") / "data" / "matrix.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("schema") != 1:
        raise InputError(f"compat/data/matrix.json: schema {data.get('schema')!r} is not 1")
    return data


def _scenario_table() -> dict[str, Mapping[str, Any]]:
    return {s["name"]: s for s in _model()["scenarios"]}


def known_scenarios() -> tuple[str, ...]:
    """Named scenarios of the model (``inject:…`` specs are accepted too)."""
    return tuple(_scenario_table())


def core_scenarios() -> tuple[str, ...]:
    """The scenarios of the default matrix."""
    return tuple(n for n, s in _scenario_table().items() if s.get("core"))


def _lab_spec(scenario: str) -> str:
    s = _scenario_table().get(scenario)
    if s is not None:
        return str(s["lab"])
    if scenario.startswith("inject:"):
        return scenario
    known = ", ".join(known_scenarios())
    raise InputError(
        f"unknown matrix scenario {scenario!r}; known: {known}, inject:TYPE[:LEN[:HEX]]"
    )


# -- machine types -------------------------------------------------------------------


@cache
def machines_for(release: str, family: str = DEFAULT_FAMILY) -> tuple[tuple[str, ...], str]:
    """Registered versioned machine types of ``family`` in ``release``, oldest first, and why.

    From the compat table of that release; for a release whose sources were not extracted,
    from the newest older table, dropping what the versioned-machine lifecycle deletes and
    adding the release lines in between (QEMU registers its own ``X.Y`` every release).
    """
    rel = Release(release).line
    tables = [r for r in compat_releases() if r.line <= rel]
    if not tables:
        raise InvalidRelease(release, "no compat table at or below this release")
    base = compat_table(tables[-1])
    names = [m.name for m in base.registered(family)]
    if tables[-1].line == rel:
        return tuple(names), f"compat table {base.filename}"
    kept = [
        n for n in names
        if base.lifecycle_state(Release(n.rsplit("-", 1)[1]), rel) != "deleted"
    ]  # fmt: skip
    from migcompat.protocol import known_releases

    newer = [r for r in known_releases() if tables[-1].line < r <= rel]
    kept += [f"{family}-{r}" for r in newer if f"{family}-{r}" not in kept]
    why = (f"inferred: no compat table for {rel}; {base.filename} minus lifecycle deletions "
           f"plus {', '.join(str(r) for r in newer)}")  # fmt: skip
    return tuple(kept), why


def _version_key(machine: str) -> tuple[int, ...]:
    return tuple(int(x) for x in machine.rsplit("-", 1)[1].split("."))


def common_machines(src: str, dst: str, family: str = DEFAULT_FAMILY) -> tuple[str, ...]:
    """Machine types both releases register, oldest first."""
    a, _ = machines_for(src, family)
    b, _ = machines_for(dst, family)
    return tuple(sorted(set(a) & set(b), key=_version_key))


# -- cells and predictions ---------------------------------------------------------


@dataclass(frozen=True, slots=True, order=True)
class Cell:
    """One cell of the matrix."""

    source: str
    destination: str
    machine: str
    scenario: str

    @property
    def id(self) -> str:
        """``7.2->11.1/pc-q35-7.2/plain`` (the pytest id and ``--cell`` argument)."""
        return f"{self.source}->{self.destination}/{self.machine}/{self.scenario}"

    @property
    def lab_scenario(self) -> str:
        """The lab's scenario spec (``migcompat lab run --scenario``)."""
        return _lab_spec(self.scenario)


def parse_cell_id(text: str) -> Cell:
    """Inverse of :attr:`Cell.id`.

    :raises InputError: not ``SRC->DST/MACHINE/SCENARIO``.
    """
    m = re.fullmatch(r"([^/>-]+)->([^/]+)/([^/]+)/(.+)", text.strip())
    if not m:
        raise InputError(f"{text!r} is not a cell id (expected SRC->DST/MACHINE/SCENARIO)")
    cell = Cell(m[1], m[2], m[3], m[4])
    _lab_spec(cell.scenario)
    return cell


@dataclass(frozen=True, slots=True)
class Prediction:
    """What a cell must show: both sides' final statuses and runstates, and the error text."""

    cell: Cell
    #: ``completes`` | ``rp-error`` | ``blackhole`` | ``cut`` | ``recover``.
    event: str
    #: Phase the scenario acts in (``postcopy-active``, ``postcopy-recover``, or None).
    phase: str | None
    #: ``accepted`` / ``rejected`` for injections, None otherwise.
    verdict: str | None
    src_status: str | None
    #: Exact text of the source's return-path error (from the catalog), if any.
    src_error: str | None
    #: Where QEMU shows it: ``error-desc`` (and stderr) or ``stderr`` only.
    error_channel: str | None
    #: Exact expected ``error-desc`` of the source (None: must be empty).
    src_error_desc: str | None
    #: Lines (without the ``qemu-system-x86_64:`` prefix) the source's stderr must contain.
    src_stderr: tuple[str, ...]
    dst_statuses: frozenset[str]
    src_runstates: frozenset[str]
    dst_runstates: frozenset[str]
    rule: str
    evidence: tuple[str, ...]
    basis: str
    machine_basis: str = ""
    timing: str | None = None
    #: Other error-desc texts allowed where timing decides which failure is seen first.
    error_desc_alternatives: tuple[str, ...] = ()
    #: Why the cell cannot be predicted (then it is skipped), or None.
    unpredicted: str | None = None
    notes: tuple[str, ...] = ()

    @property
    def split_brain(self) -> str:
        """``always`` / ``possible`` / ``never``: the guest running on both hosts."""
        s, d = "running" in self.src_runstates, "running" in self.dst_runstates
        if not (s and d):
            return "never"
        if self.src_runstates == {"running"} and self.dst_runstates == {"running"}:
            return "always"
        return "possible"

    def to_json(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "id": self.cell.id,
            "source": self.cell.source,
            "destination": self.cell.destination,
            "machine": self.cell.machine,
            "scenario": self.cell.scenario,
            "lab_scenario": self.cell.lab_scenario,
            "event": self.event,
            "phase": self.phase,
            "verdict": self.verdict,
            "src_status": self.src_status,
            "src_error": self.src_error,
            "error_channel": self.error_channel,
            "src_error_desc": self.src_error_desc,
            "error_desc_alternatives": list(self.error_desc_alternatives),
            "src_stderr": list(self.src_stderr),
            "dst_statuses": sorted(self.dst_statuses),
            "src_runstates": sorted(self.src_runstates),
            "dst_runstates": sorted(self.dst_runstates),
            "split_brain": self.split_brain,
            "timing": self.timing,
            "rule": self.rule,
            "evidence": list(self.evidence),
            "basis": self.basis,
            "machine_basis": self.machine_basis,
            "unpredicted": self.unpredicted,
            "notes": list(self.notes),
        }


def _in_range(release: Release, rng: Mapping[str, str]) -> bool:
    return Release(rng["from"]) <= release.line <= Release(rng["to"])


def _outcome_rule(event: str, phase: str | None, source: Release) -> Mapping[str, Any] | None:
    for rule in _model()["outcomes"]:
        if rule["event"] != event or not _in_range(source, rule["sources"]):
            continue
        if rule.get("phase") not in (None, phase):
            continue
        return rule
    return None


def capabilities(source: str, destination: str) -> frozenset[str]:
    """Capabilities the lab turns on for a pair (``switchover-ack`` only when both >= 8.1)."""
    caps = {"events", "postcopy-ram", "return-path"}
    if min(Release(source).line, Release(destination).line) >= Release("8.1"):
        caps.add("switchover-ack")
    return frozenset(caps)


def _rule_applies(rule: Mapping[str, Any], source: str, destination: str, phase: str) -> bool:
    if rule.get("unless_phase") == phase:
        return False
    if "sources" in rule and not _in_range(Release(source), rule["sources"]):
        return False
    cap = rule.get("requires_capability")
    return not (cap and cap not in capabilities(source, destination))


def _frame_verdict(
    source: str, frame: bytes, phase: str, destination: str | None = None
) -> tuple[str, str | None, str | None, str]:
    """``(verdict, error text, unmodelled reason, why)`` of one injected frame at ``phase``.

    Error texts come from the source's catalog; a semantic rule whose text the catalog
    lacks carries the text verbatim (``error_text``, with its provenance) until it does.
    """
    destination = destination or source
    cat = catalog(source)
    type_id, _length = struct.unpack_from(">HH", frame.ljust(4, b"\0"))
    spec = cat.by_id.get(type_id) if cat.knows(type_id) else None
    name = spec.short_name if spec else None
    blocks = _model()["ram_blocks"]
    ram = {k: RamBlock(k, v) for k, v in blocks.items() if isinstance(v, int)}
    # Observed (matrix runs 11.1->7.2 and 11.1->5.2): with the capability off an 11.1
    # source does not count acks, whatever the machine type; with it on it does, old
    # machine types included (11.1->11.1 on pc-q35-5.2/7.2/10.0: the destination's own
    # legacy ACK came first).
    capability = "switchover-ack" in capabilities(source, destination)
    reader = Reader(
        source,
        ram_blocks=ram if name == "RECV_BITMAP" else None,
        switchover_ack_capability=capability,
    )
    reader.receive_data(frame)
    try:
        list(reader.events())
    except RemoteViolation as exc:
        return "rejected", exc.qemu_error, None, f"frame parser of {cat.line}: {exc}"
    for rule in _model()["semantic_rules"]:
        if rule["message"] != name or not _rule_applies(rule, source, destination, phase):
            continue
        if rule["verdict"] == "rejected":
            args = [phase if a == "$phase" else a for a in rule.get("args", [])]
            if rule["error"] in cat.errors:
                text = cat.format_error(rule["error"], *args)
            else:
                text = rule["error_text"]
            return "rejected", text, None, f"semantic rule {rule['id']}"
        return "accepted", None, None, f"semantic rule {rule['id']}: {rule.get('effect', '')}"
    if name in _model()["unmodelled_messages"]:
        return "accepted", None, _model()["unmodelled_messages"][name], "not modelled"
    return "accepted", None, None, f"{name} is a message {cat.line} dispatches"


def _scenario_event(lab: str) -> tuple[str, str | None]:
    if lab.startswith("inject:"):
        return "inject", "postcopy-active"
    if lab.startswith("blackhole"):
        return "blackhole", "postcopy-active"
    if lab.startswith("cut"):
        return "cut", "postcopy-active"
    if lab == "recover":
        return "recover", "postcopy-recover"
    return "completes", None


def predict(cell: Cell, *, machine_basis: str = "") -> Prediction:
    """The prediction of one cell (never raises for a well-formed cell: unknowns say why)."""
    from migcompat.lab import parse_scenario

    src = Release(cell.source)
    lab = cell.lab_scenario
    kind, phase = _scenario_event(lab)
    verdict = error = unmodelled = None
    why = ""
    notes: list[str] = []
    if kind == "inject":
        sc = parse_scenario(lab)
        if sc.trigger != "postcopy":
            unmodelled = f"trigger {sc.trigger!r}: the phase the frame lands in is not fixed"
        assert sc.frame is not None
        verdict, error, reason, why = _frame_verdict(
            cell.source, sc.frame, phase or "", cell.destination
        )
        unmodelled = unmodelled or reason
        notes.append(why)
        event = "rp-error" if verdict == "rejected" else "completes"
    else:
        event = kind
    rule = _outcome_rule(event, phase, src)
    base: dict[str, Any] = {
        "cell": cell, "event": event, "phase": phase, "verdict": verdict, "src_error": error,
        "machine_basis": machine_basis, "notes": tuple(notes),
    }  # fmt: skip
    if rule is None or "unobserved" in (rule or {}) or unmodelled:
        reason = unmodelled or (rule or {}).get("unobserved") or (
            f"no observed outcome rule for event {event!r} at {phase or 'any phase'} "
            f"on a {src.line} source")  # fmt: skip
        return Prediction(
            **base, src_status=None, error_channel=None, src_error_desc=None, src_stderr=(),
            dst_statuses=frozenset(), src_runstates=frozenset(), dst_runstates=frozenset(),
            rule=(rule or {}).get("id", "none"), evidence=tuple((rule or {}).get("evidence", ())),
            basis=(rule or {}).get("basis", ""), unpredicted=reason,
        )  # fmt: skip
    channel = rule.get("error_channel") if error else None
    if error and channel == "error-desc":
        desc: str | None = error
    else:
        desc = rule.get("src_error_desc")
    stderr = ((error,) if error else ()) + tuple(rule.get("src_stderr_after", ()) if error else ())
    return Prediction(
        **base,
        src_status=rule["src_status"],
        error_channel=channel,
        src_error_desc=desc,
        src_stderr=stderr,
        dst_statuses=frozenset(rule["dst_statuses"]),
        src_runstates=frozenset(rule["src_runstates"]),
        dst_runstates=frozenset(rule["dst_runstates"]),
        rule=rule["id"],
        evidence=tuple(rule.get("evidence", ())),
        basis=rule.get("basis", ""),
        timing=rule.get("timing"),
        error_desc_alternatives=tuple(rule.get("src_error_desc_alternatives", ())),
    )


def matrix_cells(
    releases: Sequence[str] = DEFAULT_RELEASES,
    scenarios: Sequence[str] | None = None,
    *,
    machines: str = "newest",
    family: str = DEFAULT_FAMILY,
) -> list[tuple[Cell, str]]:
    """Every (cell, machine basis): all ordered pairs incl. same-version, each scenario.

    :param machines: ``newest`` (newest common type), ``all`` (every common one) or a
        comma-separated list of machine types (kept where both sides register them).
    """
    scen = list(scenarios) if scenarios else list(core_scenarios())
    for s in scen:
        _lab_spec(s)
    out: list[tuple[Cell, str]] = []
    for a in releases:
        for b in releases:
            common = common_machines(a, b, family)
            if not common:
                raise UnknownMachine(f"{a} and {b} register no common {family} machine type")
            why = f"{machines_for(a, family)[1]}; {machines_for(b, family)[1]}"
            if machines == "newest":
                chosen: Iterable[str] = (common[-1],)
            elif machines == "all":
                chosen = common
            else:
                chosen = [m for m in machines.split(",") if m in common]
            for m in chosen:
                for s in scen:
                    out.append((Cell(a, b, m, s), why))
    return out


def predict_matrix(
    releases: Sequence[str] = DEFAULT_RELEASES,
    scenarios: Sequence[str] | None = None,
    *,
    machines: str = "newest",
) -> list[Prediction]:
    """Predictions of every cell of :func:`matrix_cells`."""
    return [
        predict(c, machine_basis=w) for c, w in matrix_cells(releases, scenarios, machines=machines)
    ]


# -- comparing with a lab record ------------------------------------------------------


@dataclass
class CellResult:
    """A cell after a run: ``pass`` / ``mismatch`` / ``skipped`` / ``error``.

    ``observed``: a cell without a prediction that was run anyway (``run_unpredicted``).
    """

    prediction: Prediction
    outcome: str
    reasons: list[str] = field(default_factory=list)
    observed: dict[str, Any] = field(default_factory=dict)
    record: str | None = None
    duration: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "id": self.prediction.cell.id,
            "outcome": self.outcome,
            "reasons": self.reasons,
            "predicted": self.prediction.to_json(),
            "observed": self.observed,
            "record": self.record,
            "duration": round(self.duration, 2),
        }


def _strip(line: str) -> str:
    return _QEMU_PREFIX.sub("", line)


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
        out[f"{side}_error_desc"] = rec.error_desc.get(side)
        out[f"{side}_stderr"] = [_strip(x) for x in rec.stderr_lines(side)]
    out["split_brain"] = bool(rec.split_brain)
    out["versions"] = {"src": rec.src.get("version_text"), "dst": rec.dst.get("version_text")}
    out["machine"] = rec.machine
    out["timed_out"] = rec.timed_out
    out["step_errors"] = [e.get("qemu_error") or e.get("error") for e in rec.step_errors]
    return out


def compare(pred: Prediction, obs: Mapping[str, Any]) -> list[str]:
    """Every way ``obs`` (from :func:`observed_summary`) differs from ``pred`` (empty: pass)."""
    why: list[str] = []
    if obs.get("machine") and obs["machine"] != pred.cell.machine:
        why.append(f"machine {obs['machine']} instead of {pred.cell.machine}")
    if obs.get("src_status") != pred.src_status:
        why.append(f"source status {obs.get('src_status')!r}, predicted {pred.src_status!r}")
    if obs.get("dst_status") not in pred.dst_statuses:
        why.append(f"destination status {obs.get('dst_status')!r} not in "
                   f"{sorted(pred.dst_statuses)}")  # fmt: skip
    desc = obs.get("src_error_desc") or None
    if desc != pred.src_error_desc and desc not in pred.error_desc_alternatives:
        why.append(f"source error-desc {desc!r}, predicted {pred.src_error_desc!r}")
    stderr = obs.get("src_stderr") or []
    for line in pred.src_stderr:
        if line not in stderr:
            why.append(f"source stderr lacks {line!r}")
    for side, allowed in (("src", pred.src_runstates), ("dst", pred.dst_runstates)):
        if obs.get(f"{side}_runstate") not in allowed:
            why.append(f"{side} runstate {obs.get(f'{side}_runstate')!r} not in {sorted(allowed)}")
    if obs.get("split_brain") and pred.split_brain == "never":
        why.append("SPLIT BRAIN observed where the model rules it out")
    if not obs.get("split_brain") and pred.split_brain == "always":
        why.append("no split brain although the model says always")
    return why


# -- reports ---------------------------------------------------------------------


def results_summary(results: Sequence[CellResult]) -> dict[str, int]:
    """Counts per outcome plus observed split-brain cells."""
    out = {"total": len(results), "pass": 0, "mismatch": 0, "skipped": 0, "error": 0,
           "observed": 0}  # fmt: skip
    for r in results:
        out[r.outcome] = out.get(r.outcome, 0) + 1
    out["split_brain"] = sum(1 for r in results if r.observed.get("split_brain"))
    return out


def _md(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _sb(pred: Prediction, observed: Mapping[str, Any] | None = None) -> str:
    if observed and observed.get("split_brain"):
        return "**SPLIT-BRAIN**"
    return {"always": "**SPLIT-BRAIN**", "possible": "**SPLIT-BRAIN possible**"}.get(
        pred.split_brain, "no"
    )


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
            f"| {'/'.join(sorted(p.src_runstates))} / {'/'.join(sorted(p.dst_runstates))} "
            f"| {_sb(p)} | {p.rule} |"
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
    lines.append(
        f"**{s['pass']} pass, {s['mismatch']} mismatch, {s['skipped']} skipped, "
        f"{s['error']} error** of {s['total']} cells; split brain observed in "
        f"{s['split_brain']} cells."
        + (f" {s['observed']} cells had no prediction and were only observed." if s["observed"]
           else "")
    )  # fmt: skip
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
    out = ["## Scenarios", "", "| scenario | lab spec | what |", "|---|---|---|"]
    for sc in _model()["scenarios"]:
        out.append(f"| `{sc['name']}` | `{sc['lab']}` | {_md(sc['doc'])} |")
    out += ["", "## Outcome rules (compat/data/matrix.json)", ""]
    out += ["| rule | sources | phase | basis | evidence |", "|---|---|---|---|---|"]
    for r in _model()["outcomes"]:
        rng = f"{r['sources']['from']}–{r['sources']['to']}"
        if r.get("unobserved"):
            basis = f"not observed: {r['unobserved']}"
        else:
            basis = r.get("basis", "")
        ev = ", ".join(f"`{Path(e).parent.name}`" for e in r.get("evidence", ()))
        seen = sum(
            len(runs)
            for cell_id, runs in recorded_observations().items()
            if predict(parse_cell_id(cell_id)).rule == r["id"]
        )
        if seen:
            ev += (", " if ev else "") + f"{seen} runs in `matrix-observed.json`"
        ev = ev or "—"
        out.append(f"| `{r['id']}` | {rng} | {r.get('phase') or '—'} | {_md(basis)} | {ev} |")
    return out


def results_junit(results: Sequence[CellResult], *, name: str = "migcompat-matrix") -> str:
    """JUnit XML (one testcase per cell; mismatch = failure, error = error)."""
    s = results_summary(results)
    suite = ET.Element(
        "testsuite", name=name, tests=str(s["total"]), failures=str(s["mismatch"]),
        errors=str(s["error"]), skipped=str(s["skipped"] + s["observed"]),
        time=f"{sum(r.duration for r in results):.2f}",
    )  # fmt: skip
    for r in results:
        c = r.prediction.cell
        case = ET.SubElement(
            suite, "testcase", classname=f"matrix.{c.source}->{c.destination}", name=c.id,
            time=f"{r.duration:.2f}",
        )  # fmt: skip
        text = "\n".join(r.reasons)
        if r.outcome == "mismatch":
            ET.SubElement(case, "failure", message=r.reasons[0] if r.reasons else "").text = text
        elif r.outcome == "error":
            ET.SubElement(case, "error", message=r.reasons[0] if r.reasons else "").text = text
        elif r.outcome in ("skipped", "observed"):
            ET.SubElement(case, "skipped", message="; ".join(r.reasons))
        props = ET.SubElement(case, "properties")
        ET.SubElement(props, "property", name="split_brain_predicted",
                      value=r.prediction.split_brain)  # fmt: skip
        ET.SubElement(props, "property", name="split_brain_observed",
                      value=str(bool(r.observed.get("split_brain"))).lower())  # fmt: skip
        out = [f"record: {r.record}"] if r.record else []
        if r.observed.get("split_brain"):
            out.insert(0, "SPLIT-BRAIN: the guest runs on both hosts")
        if out:
            ET.SubElement(case, "system-out").text = "\n".join(out)
    return ET.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"


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


# -- running cells on the lab -------------------------------------------------------


def cell_slug(cell: Cell) -> str:
    """A file-name-safe form of the cell id."""
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", cell.id.replace("->", "-to-"))


def build_versions(releases: Iterable[str]) -> dict[str, str]:
    """``--version`` text of each provisioned build (missing ones are left out)."""
    from migcompat.lab import find_build

    out = {}
    for r in releases:
        b = find_build(r)
        if b is not None:
            out[r] = b.version_text
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
    stop: Any = None,
) -> CellResult:
    """Run one cell on the lab (:func:`migcompat.lab.run_scenario`) and compare.

    The run happens in a child process that leads its own process group, so that a run
    which never returns is ended after ``hard_timeout`` (default ``timeout + observe + 60`` s) with
    everything it started (its QEMUs, its tcpdump) and reported as an error.
    A passing cell keeps only its ``record.json`` (unless ``keep``); a mismatch or an
    error keeps the whole run directory (capture, streams, record).
    """
    import shutil
    import time

    from migcompat.lab import RunRecord, find_build

    cell = pred.cell
    if pred.unpredicted and not run_unpredicted:
        return CellResult(pred, "skipped", [f"not predicted: {pred.unpredicted}"])
    for rel in (cell.source, cell.destination):
        if find_build(rel) is None:
            return CellResult(
                pred, "skipped", [f"no QEMU build for {rel}: run `migcompat lab provision {rel}`"]
            )
    cell_dir = Path(outdir) / cell_slug(cell)
    cell_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    status, payload = _run_isolated(cell, cell_dir, timeout, observe, hard_timeout, stop)
    if status == "stalled":  # a lab bug with its state dumped: reported, never retried
        return CellResult(pred, "error", [f"lab stall (not retried): {payload}"],
                          record=str(cell_dir), duration=time.monotonic() - t0)  # fmt: skip
    if status != "ok":
        return CellResult(pred, "error", [f"lab error: {payload}"], record=str(cell_dir),
                          duration=time.monotonic() - t0)  # fmt: skip
    rec = RunRecord(**payload)
    obs = observed_summary(rec)
    if pred.unpredicted:  # observe first, model afterwards: kept whole, never a mismatch
        return CellResult(pred, "observed", [f"not predicted: {pred.unpredicted}"], obs,
                          rec.files.get("record"), time.monotonic() - t0)  # fmt: skip
    reasons = compare(pred, obs)
    if rec.timed_out:
        obs["note"] = "the lab's settle timeout expired"
    record = rec.files.get("record") or str(cell_dir / "record.json")
    if not reasons and not keep:
        for p in cell_dir.iterdir():
            if p.name != "record.json":
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
    return CellResult(pred, "mismatch" if reasons else "pass", reasons, obs, record,
                      time.monotonic() - t0)  # fmt: skip


def _child(
    conn: Any, cell: Cell, cell_dir: str, timeout: float, observe: float, budget: float
) -> None:
    """Child process body: new process group, one lab run, the record back through ``conn``."""
    import os

    os.setsid()
    from migcompat.lab import LabError, LabStalled, run_scenario

    try:
        rec = run_scenario(cell.source, cell.destination, cell.lab_scenario, cell.machine,
                           Path(cell_dir), timeout=timeout, observe=observe,
                           budget=budget)  # fmt: skip
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
    cell: Cell, cell_dir: Path, timeout: float, observe: float, hard_timeout: float | None,
    stop: Any = None,
) -> tuple[str, Any]:
    """One cell in a child process; ``stop`` (a ``threading.Event``) set = ^C: the child gets
    SIGINT and tears its run down (its QEMUs first), with 30 s before its group is killed."""
    import contextlib
    import multiprocessing
    import os
    import signal
    import time

    limit = hard_timeout if hard_timeout is not None else timeout + observe + 60.0
    # the run's own budget fires first, so that a stall is dumped, not just killed
    budget = max(1.0, limit - 15.0)
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, cell, str(cell_dir), timeout, observe, budget),
                       daemon=False)  # fmt: skip
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
                os.kill(proc.pid, signal.SIGINT)
            end = min(end, time.monotonic() + 30)
    if interrupted and result[0] == "error" and "no result" in str(result[1]):
        result = ("error", "interrupted (SIGINT)")
    proc.join(10)
    if proc.is_alive() or result[0] != "ok":
        # Its process group holds only what this run started (QEMUs, tcpdump): end it by id.
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
    on_start: Any = None,
    on_done: Any = None,
) -> list[CellResult]:
    """Run cells, at most ``jobs`` at a time (each in its own process); results in order.

    A cell whose lab run fails (``error``: QEMU did not start) is run again up to ``retries``
    times; a mismatch never is, nor a lab stall (a bug report, with the run's state dumped).

    :raises MatrixInterrupted: ^C: the cells running were stopped (their QEMUs first);
        it carries the finished cells' results and the ids of the cells that did not run.
    """
    import threading
    from concurrent.futures import ThreadPoolExecutor

    stop = threading.Event()

    def one(p: Prediction) -> CellResult | None:
        if stop.is_set():
            return None
        if on_start:
            on_start(p)
        errors: list[str] = []
        for _attempt in range(1 + max(0, retries)):
            r = run_cell(
                p, outdir, timeout=timeout, observe=observe, keep=keep,
                run_unpredicted=run_unpredicted, stop=stop,
            )  # fmt: skip
            if stop.is_set() and r.outcome == "error":
                return None  # stopped half-way: no result
            if r.outcome != "error" or r.reasons[0].startswith("lab stall"):
                break
            errors += r.reasons  # a lab failure is no observation: run the cell again
        if errors and r.outcome != "error":
            r.reasons.append(f"retried after: {'; '.join(errors)}")
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


class MatrixInterrupted(MigcompatError, KeyboardInterrupt):
    """^C during :func:`run_cells`: ``results`` (finished cells), ``not_run`` (cell ids)."""

    exit_code = 130

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

    Only cells that ran (pass or mismatch) are added, with the facts :func:`compare` reads
    and the binaries' ``--version`` texts; identical observations are kept once. Several
    runs of one cell show where timing decides.
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
        "schema": 2,
        "about": "Observed outcome of matrix cells on real QEMU, one entry per distinct run, "
        "merged by `migcompat matrix run --record-observations`; the model (matrix.json) must "
        "predict every entry (tests/test_matrix.py).",
        "cells": dict(sorted(cells.items())),
    }
    return json.dumps(doc, indent=1, ensure_ascii=False) + "\n"


@cache
def recorded_observations() -> Mapping[str, tuple[Mapping[str, Any], ...]]:
    """The committed per-cell observations (``compat/data/matrix-observed.json``)."""
    path = resources.files("migcompat.compat") / "data" / "matrix-observed.json"
    try:
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    except FileNotFoundError:
        return {}
    return {k: tuple(v) for k, v in cells.items()}


def results_json(results: Sequence[CellResult], versions: Mapping[str, str] | None = None) -> str:
    """The JSON report of a run."""
    doc = {
        "summary": results_summary(results),
        "versions": dict(versions or {}),
        "cells": [r.to_json() for r in results],
    }
    return json.dumps(doc, indent=2) + "\n"
