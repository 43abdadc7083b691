"""Scenario specs (``plain``, ``inject:8``, ``no-switchover-ack+inject:7+inject:7``…) parsed
into values, and raw frames.

A spec is one name without spaces or commas: parts joined by ``+``, applied in order::

    SPEC    := PART ( "+" PART )*
    PART    := CAP | MODE | ACTION [ "@" MOMENT ]
    CAP     := SIDE ":" NAME "=" ( "on" | "off" )        # e.g. src:switchover-ack=off
             | "no-" NAME                                  # both sides off
    SIDE    := "src" | "dst" | "both"
    MODE    := "idle" | "active"                           # destination -S, or a running guest
    ACTION  := "inject:" TYPE [":" LEN [":" HEX]]          # a raw return-path frame
             | "shut:" VALUE                               # MIG_RP_MSG_SHUT, be32 VALUE
             | "blackhole" | "cut" | "pause" | "recover" | "plain"
    MOMENT  := "precopy"            # the source is active, before migrate-start-postcopy
             | "postcopy-start"     # just after migrate-start-postcopy, before postcopy-active
             | "postcopy-device"    # the source reports postcopy-device (releases that have it)
             | "postcopy" | "postcopy-active"   # both sides postcopy-active (the default)
             | "frames=" N          # after N return-path frames
             | "t=" SECONDS         # SECONDS after ``migrate``
             | "status=" [SIDE ":"] STATUS       # a side (default src) reports STATUS

Today's names stay as shorthands: ``plain``, ``plain-idle``, ``blackhole-idle``,
``blackhole-active`` (= ``active+blackhole``), ``blackhole``, ``cut[-idle]``, ``recover``,
``inject:TYPE[:LEN[:HEX]][@MOMENT][-idle]``. A trailing ``-idle`` applies to the whole spec.

``+recover``: once both sides are ``postcopy-paused`` after the injection, try the recovery
(``migrate-recover`` on a new port through a new proxy port, ``migrate resume=true``), as
``recover`` does after its blackhole.

``LEN`` defaults to the payload's length; ``HEX`` defaults to ``LEN`` zero bytes, so
``inject:8`` is ``00 08 00 00`` (the never-merged KEEPALIVE proposal) and ``inject:4:12`` a
REQ_PAGES of zeroes. A ``LEN`` that disagrees with ``HEX`` writes a lying length on purpose.
``pause`` is ``migrate-pause`` on both sides (where they are not paused yet). ``recover`` alone
is the whole recovery (blackhole, ``pause``, then migrate-recover and ``migrate resume=true``);
after other steps it only resumes, once both sides are ``postcopy-paused`` (as
``inject:8+recover`` always did: nothing is attempted where the frame paused nothing), so
``inject:8+pause+recover`` pauses a source that did not.

Pure: the lab runs these specs, the matrix predicts them; both parse them here.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from ._errors import InputError

__all__ = ["MOMENTS", "SCENARIO_KINDS", "Scenario", "Step", "make_frame", "parse_scenario"]


def __dir__() -> list[str]:
    return list(__all__)


#: The actions the runner knows; ``inject`` takes parameters (``shut:V`` is an inject).
SCENARIO_KINDS = ("plain", "inject", "blackhole", "cut", "pause", "recover")
#: Named moments of an action (besides ``frames=N``, ``t=S`` and ``status=…``).
MOMENTS = ("precopy", "postcopy-start", "postcopy-device", "postcopy")

_NUM = r"(?:0x[0-9a-fA-F]+|\d+)"
_MOMENT = r"(?:precopy|postcopy-start|postcopy-device|postcopy(?:-active)?|frames=\d+" \
          r"|t=\d+(?:\.\d+)?|status=(?:(?:src|dst):)?[a-z-]+)"  # fmt: skip
_INJECT_RE = re.compile(
    rf"inject:(?P<type>{_NUM})(?::(?P<len>{_NUM})?(?::(?P<hex>[0-9a-fA-F]*))?)?"
    rf"(?:@(?P<trigger>{_MOMENT}))?"
)
_SHUT_RE = re.compile(rf"shut:(?P<value>{_NUM})(?:@(?P<trigger>{_MOMENT}))?")
_ACTION_RE = re.compile(rf"(?P<kind>plain|blackhole|cut|pause|recover)(?:@(?P<trigger>{_MOMENT}))?")
_CAP_RE = re.compile(r"(?P<side>src|dst|both):(?P<cap>[a-z][a-z0-9-]*)=(?P<state>on|off)")
_NO_CAP_RE = re.compile(r"no-(?P<cap>[a-z][a-z0-9-]*)")


def make_frame(type_id: int, payload: bytes = b"", length: int | None = None) -> bytes:
    """``be16 type, be16 length, payload`` (``length`` may lie, to build bad frames).

    >>> make_frame(8).hex()
    '00080000'
    """
    return struct.pack(">HH", type_id, len(payload) if length is None else length) + payload


@dataclass(frozen=True)
class Step:
    """One action of a scenario and the moment it happens.

    :param kind: one of :data:`SCENARIO_KINDS`.
    :param frame: the bytes to inject (``inject`` only).
    :param trigger: a :data:`MOMENTS` name, ``frames=N``, ``t=S`` or ``status=SIDE:STATUS``.
    """

    kind: str
    frame: bytes | None = None
    trigger: str = "postcopy"

    @property
    def phase(self) -> str | None:
        """The migration phase a named moment fixes (None: it depends on timing)."""
        if self.trigger in MOMENTS:
            return "postcopy-active" if self.trigger == "postcopy" else self.trigger
        return None

    def to_json(self) -> dict[str, object]:
        """JSON-able form."""
        return {
            "kind": self.kind,
            "frame_hex": self.frame.hex() if self.frame is not None else None,
            "trigger": self.trigger,
        }


@dataclass(frozen=True)
class Scenario:
    """What the runner does between "migration started" and "collect the outcome".

    :param name: the canonical name (goes into records and fixture metadata).
    :param kind: the first action's kind (:data:`SCENARIO_KINDS`).
    :param idle: destination started with ``-S`` and never continued (no page requests).
    :param frame: bytes the first action injects (``inject`` only).
    :param trigger: the first action's moment (see the module docstring).
    :param steps: every action in order (one for today's names; ``()`` is read as the
        single step ``kind``/``frame``/``trigger``, for callers that build one by hand).
    :param capabilities: ``(side, capability, on)`` overrides of the lab's defaults, in order.
    """

    name: str
    kind: str
    idle: bool = False
    frame: bytes | None = None
    trigger: str = "postcopy"
    steps: tuple[Step, ...] = ()
    capabilities: tuple[tuple[str, str, bool], ...] = ()

    @property
    def actions(self) -> tuple[Step, ...]:
        """The steps to run (a hand-built scenario without ``steps`` has one)."""
        return self.steps or (Step(self.kind, self.frame, self.trigger),)

    @property
    def then_recover(self) -> bool:
        """A ``recover`` step after other steps (resume once both sides paused)."""
        acts = self.actions
        return len(acts) > 1 and any(s.kind == "recover" for s in acts[1:])

    def capability_overrides(self, side: str) -> dict[str, bool]:
        """Capability -> on/off set by the spec for ``side`` (``src``/``dst``)."""
        out: dict[str, bool] = {}
        for s, cap, on in self.capabilities:
            if s in (side, "both"):
                out[cap] = on
        return out

    def to_json(self) -> dict[str, object]:
        """JSON-able form for the run record."""
        return {
            "name": self.name,
            "kind": self.kind,
            "idle": self.idle,
            "frame_hex": self.frame.hex() if self.frame is not None else None,
            "trigger": self.trigger,
            "then_recover": self.then_recover,
            "steps": [s.to_json() for s in self.actions],
            "capabilities": [
                {"side": s, "capability": c, "state": on} for s, c, on in self.capabilities
            ],
        }


def _moment(trigger: str | None) -> str:
    return "postcopy" if trigger in (None, "postcopy-active") else str(trigger)


def _step(part: str, name: str) -> Step | None:
    m = _INJECT_RE.fullmatch(part)
    if m:
        type_id = int(m["type"], 0)
        payload = bytes.fromhex(m["hex"]) if m["hex"] else None
        length = int(m["len"], 0) if m["len"] else None
        if payload is None:
            payload = bytes(length or 0)
        if type_id > 0xFFFF or (length is not None and length > 0xFFFF):
            raise InputError(f"scenario {name!r}: type and length are be16")
        return Step("inject", make_frame(type_id, payload, length), _moment(m["trigger"]))
    m = _SHUT_RE.fullmatch(part)
    if m:
        value = int(m["value"], 0)
        if value > 0xFFFFFFFF:
            raise InputError(f"scenario {name!r}: a SHUT value is be32")
        return Step("inject", make_frame(1, struct.pack(">I", value)), _moment(m["trigger"]))
    m = _ACTION_RE.fullmatch(part)
    if m:
        return Step(m["kind"], None, _moment(m["trigger"]))
    return None


def _unknown(name: str) -> InputError:
    return InputError(
        f"unknown scenario {name!r}; known: plain, plain-idle, inject:TYPE[:LEN[:HEX]][@MOMENT], "
        "shut:VALUE, blackhole-idle, blackhole-active, cut, pause, recover, joined by '+' with "
        "capabilities (src:switchover-ack=off, no-switchover-ack) and idle/active "
        "(see `migcompat lab run --help`)"
    )


def parse_scenario(name: str, *, idle: bool = False) -> Scenario:
    """Parse a scenario spec (see the module docstring).

    >>> parse_scenario("inject:8").frame.hex()
    '00080000'
    >>> parse_scenario("blackhole-idle").idle
    True
    >>> [s.frame.hex() for s in parse_scenario("no-switchover-ack+inject:7+inject:7").steps]
    ['00070000', '00070000']

    :raises InputError: an unknown name, with the list of known ones.
    """
    base = name
    if base.endswith("-idle"):
        base, idle = base.removesuffix("-idle"), True
    if base == "blackhole-active":
        base = "active+blackhole"
    steps: list[Step] = []
    caps: list[tuple[str, str, bool]] = []
    parts = base.split("+")
    for part in parts:
        if not part:
            raise _unknown(name)
        if part in ("idle", "active"):
            idle = part == "idle"
            continue
        m = _CAP_RE.fullmatch(part)
        if m:
            caps.append((m["side"], m["cap"], m["state"] == "on"))
            continue
        m = _NO_CAP_RE.fullmatch(part)
        if m and _step(part, name) is None:
            caps.append(("both", m["cap"], False))
            continue
        step = _step(part, name)
        if step is None:
            raise _unknown(name)
        steps.append(step)
    if not steps:
        steps.append(Step("plain"))
    if len(parts) == 1 and steps[0].kind != "inject":
        canonical = steps[0].kind + ("-idle" if idle else "")
        if steps[0].trigger != "postcopy":
            canonical = f"{steps[0].kind}@{steps[0].trigger}" + ("-idle" if idle else "")
    elif len(parts) == 1:
        canonical = base + ("-idle" if idle else "")
    else:
        canonical = name
    first = steps[0]
    return Scenario(
        name=canonical,
        kind=first.kind,
        idle=idle,
        frame=first.frame,
        trigger=first.trigger,
        steps=tuple(steps),
        capabilities=tuple(caps),
    )
