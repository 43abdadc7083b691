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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

from migcompat.protocol import (
    InputError,
    InvalidRelease,
    RamBlock,
    Reader,
    Release,
    RemoteViolation,
    Scenario,
    build_frame,
    catalog,
    known_releases,
    legacy_switchover_ack,
    machine_version,
    parse_scenario,
)

from ._tables import MachineType, UnknownMachine, compat_releases, compat_table

__all__ = [
    "DEFAULT_FAMILY",
    "DEFAULT_RELEASES",
    "GUEST_STATES",
    "Cell",
    "CellResult",
    "Prediction",
    "capabilities",
    "common_machines",
    "compare",
    "core_scenarios",
    "known_scenarios",
    "machines_for",
    "matrix_cells",
    "matrix_model",
    "observed_runs_per_rule",
    "parse_cell_id",
    "predict",
    "predict_cells",
    "predict_matrix",
    "recorded_observations",
    "results_summary",
]


def __dir__() -> list[str]:
    return list(__all__)


#: Releases of the default matrix (the ones the lab provisions by default).
DEFAULT_RELEASES: tuple[str, ...] = ("7.2", "10.0", "11.1")
#: Machine family of the matrix (the lab's guest is x86 q35).
DEFAULT_FAMILY = "pc-q35"


@cache
def _model() -> Mapping[str, Any]:
    path = resources.files("migcompat.compat") / "data" / "matrix.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("schema") != 1:
        raise InputError(f"compat/data/matrix.json: schema {data.get('schema')!r} is not 1")
    return data


def matrix_model() -> Mapping[str, Any]:
    """``compat/data/matrix.json``: scenarios, semantic rules and outcome rules (read-only)."""
    return _model()


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
    try:  # any lab spec is a matrix scenario too (inject:8, no-switchover-ack+inject:7…)
        parse_scenario(scenario)
    except InputError:
        known = ", ".join(known_scenarios())
        raise InputError(
            f"unknown matrix scenario {scenario!r}; known: {known}, or a lab spec "
            "(inject:TYPE[:LEN[:HEX]], parts joined by '+': see `migcompat lab run --help`)"
        ) from None
    return scenario


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
    kept = [n for n in names if base.lifecycle_state(MachineType(n).version, rel) != "deleted"]
    newer = [r for r in known_releases() if tables[-1].line < r <= rel]
    kept += [f"{family}-{r}" for r in newer if f"{family}-{r}" not in kept]
    why = (
        f"inferred: no compat table for {rel}; {base.filename} minus lifecycle deletions "
        f"plus {', '.join(str(r) for r in newer)}"
    )
    return tuple(kept), why


def common_machines(src: str, dst: str, family: str = DEFAULT_FAMILY) -> tuple[str, ...]:
    """Machine types both releases register, oldest first."""
    a, _ = machines_for(src, family)
    b, _ = machines_for(dst, family)
    return tuple(sorted(set(a) & set(b), key=lambda n: MachineType(n).version))


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
    #: Exact ``error-desc`` of the source's *final* ``query-migrate`` (None: absent or empty).
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
    #: The *timeline*: every distinct non-empty error-desc the source shows during the run,
    #: in order (None: just the final one, if any — or one of its alternatives).
    src_error_desc_seen: tuple[str, ...] | None = None
    #: Exact error-desc of the destination's final ``query-migrate``.
    dst_error_desc: str | None = None
    #: Measured guest state allowed per final destination status (``(status, (states…))``;
    #: states as :data:`GUEST_STATES`), or empty where no rule says it.
    guest: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def guest_states(self, dst_status: str | None = None) -> frozenset[str]:
        """Guest states allowed when the destination ends in ``dst_status`` (None: any)."""
        return frozenset(g for st, states in self.guest if dst_status in (None, st) for g in states)

    def expected_seen(self, final: str | None = None) -> tuple[str, ...]:
        """The predicted timeline of error-descs (``final``: the observed final one, standing
        in for the prediction where alternatives are allowed)."""
        if self.src_error_desc_seen is not None:
            return self.src_error_desc_seen
        if final is not None and final in self.error_desc_alternatives:
            return (final,)
        return (self.src_error_desc,) if self.src_error_desc else ()

    @property
    def split_brain(self) -> str:
        """``always`` / ``possible`` / ``never``: the guest *executing* on both hosts.

        From the measured guest states where the rule has them; else, from the runstates
        (both ``running``), which is only an upper bound: a destination whose vCPUs wait on
        page faults nobody serves reports ``running`` too.
        """
        if self.guest:
            states = self.guest_states()
            if states == {"split-brain"}:
                return "always"
            return "possible" if "split-brain" in states else "never"
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
            "src_error_desc_seen": list(self.expected_seen()),
            "dst_error_desc": self.dst_error_desc,
            "src_stderr": list(self.src_stderr),
            "dst_statuses": sorted(self.dst_statuses),
            "src_runstates": sorted(self.src_runstates),
            "dst_runstates": sorted(self.dst_runstates),
            "split_brain": self.split_brain,
            "guest": {st: list(states) for st, states in self.guest},
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


def _outcome_rule(
    event: str, phase: str | None, source: Release, idle: bool = False
) -> Mapping[str, Any] | None:
    """The rule for ``event`` at ``phase`` on ``source``; a rule holds for the guest mode it
    was observed with (``idle``: destination -S; default: a running guest)."""
    for rule in _model()["outcomes"]:
        if rule["event"] != event or not _in_range(source, rule["sources"]):
            continue
        if "lines" in rule and str(source.line) not in rule["lines"]:
            continue  # observed on exactly these lines; the others in the range are not
        if rule.get("phase") not in (None, phase):
            continue
        if "unobserved" not in rule and bool(rule.get("idle", False)) != idle:
            continue
        return rule
    return None


def capabilities(source: str, destination: str) -> frozenset[str]:
    """Capabilities the lab turns on for a pair (``switchover-ack`` only when both >= 8.1)."""
    caps = {"events", "postcopy-ram", "return-path"}
    if min(Release(source).line, Release(destination).line) >= Release("8.1"):
        caps.add("switchover-ack")
    return frozenset(caps)


def _effective_caps(
    source: str, destination: str, sc: Scenario | None
) -> dict[str, frozenset[str]]:
    """Capabilities on each side: the lab's defaults, then the scenario's overrides."""
    out = {}
    for side in ("src", "dst"):
        caps = set(capabilities(source, destination))
        for cap, on in (sc.capability_overrides(side) if sc else {}).items():
            (caps.add if on else caps.discard)(cap)
        out[side] = frozenset(caps)
    return out


def _rule_applies(
    rule: Mapping[str, Any],
    source: str,
    destination: str,
    phase: str,
    caps: Mapping[str, frozenset[str]],
    machine: str | None,
) -> bool:
    if rule.get("unless_phase") == phase:
        return False
    if "sources" in rule and not _in_range(Release(source), rule["sources"]):
        return False
    if "machines" in rule:
        version = machine_version(machine) if machine else None
        if version is None or not _in_range(version, rule["machines"]):
            return False
    cap = rule.get("requires_capability")
    if cap and cap not in caps["src"]:
        return False
    off = rule.get("requires_capability_off")
    return not (off and off in caps["src"])


def _source_reader(
    source: str,
    destination: str,
    caps: Mapping[str, frozenset[str]],
    machine: str | None,
    frames: Sequence[bytes] = (),
    phase: str | None = None,
) -> Reader:
    """The source-parser model one cell's injected frames go through, in order.

    A source that counts SWITCHOVER_ACKs (11.1) counts them whatever the capability: the
    machine type decides how many it allows (legacy machine types: one). Measured on 11.1.3
    (issue 16): with switchover-ack off, one ack is accepted on pc-q35-10.0, pc-q35-7.2 and
    pc-q35-5.2 and a second one underflows; on pc-q35-11.1 the first one does. With the
    capability on both sides the destination sends its own ack during precopy, before ours
    (where its machine type expects one), so the first injected ack underflows.
    """
    cat = catalog(source)
    blocks = _model()["ram_blocks"]
    ram = {k: RamBlock(k, v) for k, v in blocks.items() if isinstance(v, int)}
    recv_bitmap = any(f[:2] == b"\x00\x05" for f in frames)
    counted = cat.switchover_ack_accounting == "counted"

    def make() -> Reader:
        return Reader(
            source,
            ram_blocks=ram if recv_bitmap else None,
            switchover_ack_capability=True if counted else "switchover-ack" in caps["src"],
            machine=machine if counted else None,
            # injected mid-postcopy: the destination's page requests have named a block
            req_pages_block="pc.ram" if phase == "postcopy-active" else None,
        )

    reader = make()
    both = "switchover-ack" in caps["src"] and "switchover-ack" in caps["dst"]
    if both and legacy_switchover_ack(source, machine):  # the legacy mechanism: one ack
        reader.receive_data(build_frame(source, "SWITCHOVER_ACK"))
        list(reader.events())
    return reader


def _frame_verdict(
    source: str,
    frame: bytes,
    phase: str,
    destination: str | None = None,
    caps: Mapping[str, frozenset[str]] | None = None,
    machine: str | None = None,
    reader: Reader | None = None,
) -> tuple[str, str | None, str | None, str]:
    """``(verdict, error text, unmodelled reason, why)`` of one injected frame at ``phase``
    (``reader``: the model that already read the cell's earlier frames).

    Error texts come from the source's catalog; a semantic rule whose text the catalog
    lacks carries the text verbatim (``error_text``, with its provenance) until it does.
    """
    destination = destination or source
    cat = catalog(source)
    type_id, _length = struct.unpack_from(">HH", frame.ljust(4, b"\0"))
    spec = cat.by_id.get(type_id) if cat.knows(type_id) else None
    name = spec.short_name if spec else None
    caps = caps or _effective_caps(source, destination, None)
    for rule in _model()["semantic_rules"]:
        if (
            rule["message"] == name
            and rule["verdict"] == "unobserved"
            and _rule_applies(rule, source, destination, phase, caps, machine)
        ):
            reason = f"{rule['unobserved']} on a {Release(source).line} source"
            return "accepted", None, reason, reason
    reader = reader or _source_reader(source, destination, caps, machine, [frame], phase)
    reader.receive_data(frame)
    try:
        list(reader.events())
    except RemoteViolation as exc:
        return "rejected", exc.qemu_error, None, f"frame parser of {cat.line}: {exc}"
    for rule in _model()["semantic_rules"]:
        if rule["message"] != name or not _rule_applies(
            rule, source, destination, phase, caps, machine
        ):
            continue
        value = struct.unpack_from(">I", frame, 4)[0] if len(frame) >= 8 else None
        if "when_value" in rule and (value == 0) != (rule["when_value"] == "zero"):
            continue
        seen_on = rule.get("observed_sources")
        if seen_on and not _in_range(Release(source), seen_on):
            what = f"{name} {value}" if value is not None else name
            reason = f"no observation of {what} on {Release(source).line}"
            return rule["verdict"], None, reason, reason
        if rule["verdict"] == "unobserved":
            continue  # checked before the frame parser
        if rule["verdict"] == "ends":
            return "ends", None, None, f"semantic rule {rule['id']}: {rule.get('effect', '')}"
        if rule["verdict"] == "rejected":
            subst = {"$phase": phase, "$value": value}
            args = [subst.get(a, a) for a in rule.get("args", [])]
            if rule["error"] in cat.errors:
                text = cat.format_error(rule["error"], *args)
            else:
                text = rule["error_text"]
            return "rejected", text, None, f"semantic rule {rule['id']}"
        return "accepted", None, None, f"semantic rule {rule['id']}: {rule.get('effect', '')}"
    if name in _model()["unmodelled_messages"]:
        what = name if len(frame) <= 4 else f"{name} {frame[4:].hex()}"
        if name == "SHUT" and len(frame) == 8:
            what = f"SHUT {struct.unpack_from('>I', frame, 4)[0]}"
        reason = f"no observation of {what} on {Release(source).line}"
        return "accepted", None, f"{reason} ({_model()['unmodelled_messages'][name]})", reason
    return "accepted", None, None, f"{name} is a message {cat.line} dispatches"


def _observed_capabilities(sc: Scenario, source: Release) -> str | None:
    """Why the scenario's capability overrides have no observation on ``source`` (or None)."""
    if not sc.capabilities:
        return None
    want = sorted(f"{s}:{c}={'on' if on else 'off'}" for s, c, on in sc.capabilities)
    for entry in _model().get("observed_capabilities", []):
        if sorted(entry["set"]) != want or not _in_range(source, entry["sources"]):
            continue
        if str(source.line) in entry.get("lines", [str(source.line)]):
            return None
    return f"no observation with {'+'.join(want)} on a {source.line} source"


def predict(cell: Cell, *, machine_basis: str = "") -> Prediction:
    """The prediction of one cell (never raises for a well-formed cell: unknowns say why).

    A scenario's steps compose: the injected frames go through one source-parser model in
    order (the first rejected one decides), then the outcome rule of the event sequence.
    """
    src = Release(cell.source)
    sc = parse_scenario(cell.lab_scenario)
    caps = _effective_caps(cell.source, cell.destination, sc)
    verdict = error = None
    unmodelled = _observed_capabilities(sc, src)
    notes: list[str] = []
    events: list[str] = []
    phase: str | None = None
    rejected = False
    frames = [st.frame for st in sc.actions if st.frame is not None]
    first = next((st.phase for st in sc.actions if st.frame is not None), None)
    reader = _source_reader(cell.source, cell.destination, caps, cell.machine, frames, first)
    for step in sc.actions:
        if step.kind == "plain":
            continue
        step_phase = step.phase
        if step_phase is None:
            unmodelled = unmodelled or (
                f"moment {step.trigger!r}: the phase the step lands in is not fixed"
            )
        if step.kind == "inject":
            if rejected:
                notes.append("after the first rejected frame: what follows does not decide")
                continue
            assert step.frame is not None
            v, e, reason, why = _frame_verdict(
                cell.source, step.frame, step_phase or "", cell.destination, caps, cell.machine,
                reader,
            )  # fmt: skip
            notes.append(why)
            unmodelled = unmodelled or reason
            verdict = "rejected" if v == "rejected" else (verdict or v)
            if v in ("rejected", "ends"):  # the return-path thread ends here
                rejected, error = True, e
                events.append("rp-error" if v == "rejected" else "rp-shut")
                phase = step_phase
            continue
        events.append(step.kind)
        if phase is None or step.kind != "recover":
            phase = "postcopy-recover" if step.kind == "recover" else step_phase
    if not events:
        events.append("completes")
        phase = None if verdict is None else phase
    event = "+".join(events)
    rule = _outcome_rule(event, phase, src, sc.idle)
    base: dict[str, Any] = {
        "cell": cell,
        "event": event,
        "phase": phase,
        "verdict": verdict,
        "src_error": error,
        "machine_basis": machine_basis,
        "notes": tuple(notes),
    }
    if rule is None or "unobserved" in rule or unmodelled:
        known = rule or {}
        reason = (
            unmodelled
            or known.get("unobserved")
            or (
                f"no observed outcome rule for event {event!r} at {phase or 'any phase'} "
                f"on a {src.line} source"
            )
        )
        empty: frozenset[str] = frozenset()
        return Prediction(
            **base,
            src_status=None,
            error_channel=None,
            src_error_desc=None,
            src_stderr=(),
            dst_statuses=empty,
            src_runstates=empty,
            dst_runstates=empty,
            rule=known.get("id", "none"),
            evidence=tuple(known.get("evidence", ())),
            basis=known.get("basis", ""),
            unpredicted=reason,
        )
    channel = rule.get("error_channel") if error else None
    seen = tuple(rule["src_error_desc_seen"]) if "src_error_desc_seen" in rule else None
    if error and channel == "error-desc":
        desc: str | None = error
    elif error and channel == "error-desc-cleared":
        # set in error-desc while it lasts, gone from the final query-migrate (recovered)
        desc, seen = None, (error,)
    else:
        desc = rule.get("src_error_desc")
    shown = error and channel != "error-desc-cleared"
    stderr = ((error,) if shown else ()) + tuple(rule.get("src_stderr_after", ()) if error else ())
    stderr += tuple(rule.get("src_stderr", ()))
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
        src_error_desc_seen=seen,
        dst_error_desc=rule.get("dst_error_desc"),
        guest=_guest_rule(rule),
    )


#: The measured guest states (``migcompat.lab.guest_state``).
GUEST_STATES = (
    "split-brain", "destination-stalled", "source-stalled", "source-only",
    "destination-only", "neither",
)  # fmt: skip


def _guest_rule(rule: Mapping[str, Any]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """A rule's ``guest``: one state (or list) for every destination status, or a mapping
    from destination status to state(s)."""
    g = rule.get("guest")
    if g is None:
        return ()
    per = g if isinstance(g, dict) else dict.fromkeys(rule["dst_statuses"], g)
    out = []
    for st in sorted(per):
        states = (per[st],) if isinstance(per[st], str) else tuple(per[st])
        bad = [x for x in states if x not in GUEST_STATES]
        if bad:
            raise InputError(f"compat/data/matrix.json rule {rule['id']}: guest state {bad}")
        out.append((st, states))
    return tuple(out)


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


def predict_cells(cell_ids: Iterable[str]) -> list[Prediction]:
    """Predictions of cells named by id (``SRC->DST/MACHINE/SCENARIO``).

    :raises InputError: a malformed id, or a machine type one of the two releases lacks.
    """
    out = []
    for text in cell_ids:
        cell = parse_cell_id(text)
        family = cell.machine.rsplit("-", 1)[0]
        if cell.machine not in common_machines(cell.source, cell.destination, family):
            raise InputError(
                f"{cell.machine} is not registered by both {cell.source} and {cell.destination}"
            )
        out.append(predict(cell))
    return out


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
    #: Why earlier attempts of this cell failed (lab errors), when the run was retried.
    retried_after: list[str] = field(default_factory=list)

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


def compare(pred: Prediction, obs: Mapping[str, Any]) -> list[str]:
    """Every way ``obs`` (from :func:`observed_summary`) differs from ``pred`` (empty: pass)."""
    why: list[str] = []
    if obs.get("machine") and obs["machine"] != pred.cell.machine:
        why.append(f"machine {obs['machine']} instead of {pred.cell.machine}")
    if obs.get("src_status") != pred.src_status:
        why.append(f"source status {obs.get('src_status')!r}, predicted {pred.src_status!r}")
    if obs.get("dst_status") not in pred.dst_statuses:
        why.append(
            f"destination status {obs.get('dst_status')!r} not in {sorted(pred.dst_statuses)}"
        )
    allowed_desc = (pred.src_error_desc, *pred.error_desc_alternatives)
    if "src_error_desc" in obs:  # the final query-migrate's error-desc
        desc = obs.get("src_error_desc") or None
        if desc not in allowed_desc:
            why.append(f"source final error-desc {desc!r}, predicted {pred.src_error_desc!r}")
    elif "src_error_desc_last_nonempty" in obs:  # observed before finals were recorded
        desc = obs.get("src_error_desc_last_nonempty") or None
        seen = pred.expected_seen(desc)
        if desc != (seen[-1] if seen else None):
            why.append(f"source last error-desc {desc!r}, predicted {(seen or [None])[-1]!r}")
    if "src_error_desc_seen" in obs:
        seen_obs = tuple(obs["src_error_desc_seen"])
        final = obs.get("src_error_desc") or None
        if seen_obs != pred.expected_seen(final):
            why.append(
                f"source error-desc timeline {list(seen_obs)}, "
                f"predicted {list(pred.expected_seen(final))}"
            )
    if "dst_error_desc" in obs and (obs["dst_error_desc"] or None) != pred.dst_error_desc:
        why.append(
            f"destination final error-desc {obs['dst_error_desc']!r}, "
            f"predicted {pred.dst_error_desc!r}"
        )
    stderr = obs.get("src_stderr") or []
    for line in pred.src_stderr:
        if line not in stderr:
            why.append(f"source stderr lacks {line!r}")
    for side, allowed in (("src", pred.src_runstates), ("dst", pred.dst_runstates)):
        if obs.get(f"{side}_runstate") not in allowed:
            why.append(f"{side} runstate {obs.get(f'{side}_runstate')!r} not in {sorted(allowed)}")
    if "guest" in obs and pred.guest:
        allowed_g = pred.guest_states(obs.get("dst_status"))
        if obs["guest"] not in allowed_g:
            prog = obs.get("guest_progress") or {}
            why.append(
                f"guest {obs['guest']} (progress marks src {prog.get('src')}, dst "
                f"{prog.get('dst')} in {prog.get('window')} s), predicted {sorted(allowed_g)}"
            )
    if obs.get("split_brain") and pred.split_brain == "never":
        why.append("SPLIT BRAIN observed where the model rules it out")
    if "split_brain" in obs and not obs["split_brain"] and pred.split_brain == "always":
        why.append("no split brain although the model says always")
    return why


# -- results ---------------------------------------------------------------------

_OUTCOMES = ("pass", "mismatch", "skipped", "error", "observed")


def results_summary(results: Sequence[CellResult]) -> dict[str, int]:
    """Counts per outcome plus split-brain and stalled-destination cells (measured)."""
    out = {"total": len(results), **dict.fromkeys(_OUTCOMES, 0)}
    for r in results:
        out[r.outcome] = out.get(r.outcome, 0) + 1
    out["split_brain"] = sum(1 for r in results if r.observed.get("split_brain"))
    out["stalled"] = sum(1 for r in results if r.observed.get("guest") == "destination-stalled")
    return out


@cache
def recorded_observations() -> Mapping[str, tuple[Mapping[str, Any], ...]]:
    """The committed per-cell observations (``compat/data/matrix-observed.json``)."""
    path = resources.files("migcompat.compat") / "data" / "matrix-observed.json"
    try:
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    except FileNotFoundError:
        return {}
    return {k: tuple(v) for k, v in cells.items()}


def observed_runs_per_rule() -> dict[str, int]:
    """Outcome rule id -> how many committed observations (:func:`recorded_observations`)
    it predicts."""
    out: dict[str, int] = {}
    for cell_id, runs in recorded_observations().items():
        rule = predict(parse_cell_id(cell_id)).rule
        out[rule] = out.get(rule, 0) + len(runs)
    return out
