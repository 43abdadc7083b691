"""Scenario specs (``plain``, ``inject:8``, ``recover``…) parsed into values, and raw frames.

Grammar (one name, no spaces)::

    plain | plain-idle | blackhole-idle | blackhole | cut[-idle] | recover
    inject:TYPE[:LEN[:HEX]][@TRIGGER][+recover][-idle]
    TRIGGER := postcopy | frames=N | t=SECONDS      (default: postcopy)

``+recover``: once both sides are ``postcopy-paused`` after the injection, try the recovery
(``migrate-recover`` on a new port through a new proxy port, ``migrate resume=true``), as
``recover`` does after its blackhole.

``LEN`` defaults to the payload's length; ``HEX`` defaults to ``LEN`` zero bytes, so
``inject:8`` is ``00 08 00 00`` (the never-merged KEEPALIVE proposal) and ``inject:4:12`` a
REQ_PAGES of zeroes. A ``LEN`` that disagrees with ``HEX`` writes a lying length on purpose.

Pure: the lab runs these specs, the matrix predicts them; both parse them here.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from ._errors import InputError

__all__ = ["SCENARIO_KINDS", "Scenario", "make_frame", "parse_scenario"]


def __dir__() -> list[str]:
    return list(__all__)


#: The kinds the runner knows; ``inject`` takes parameters.
SCENARIO_KINDS = ("plain", "inject", "blackhole", "cut", "recover")

_INJECT_RE = re.compile(
    r"inject:(?P<type>0x[0-9a-fA-F]+|\d+)"
    r"(?::(?P<len>0x[0-9a-fA-F]+|\d+)?(?::(?P<hex>[0-9a-fA-F]*))?)?"
    r"(?:@(?P<trigger>postcopy|frames=\d+|t=\d+(?:\.\d+)?))?"
)


def make_frame(type_id: int, payload: bytes = b"", length: int | None = None) -> bytes:
    """``be16 type, be16 length, payload`` (``length`` may lie, to build bad frames).

    >>> make_frame(8).hex()
    '00080000'
    """
    return struct.pack(">HH", type_id, len(payload) if length is None else length) + payload


@dataclass(frozen=True)
class Scenario:
    """What the runner does between "migration started" and "collect the outcome".

    :param name: the canonical name (goes into records and fixture metadata).
    :param kind: one of :data:`SCENARIO_KINDS`.
    :param idle: destination started with ``-S`` and never continued (no page requests).
    :param frame: bytes to inject (``inject`` only).
    :param trigger: ``postcopy`` (source reports postcopy-active), ``frames=N`` (after N
        return-path frames) or ``t=S`` (S seconds after ``migrate``).
    """

    name: str
    kind: str
    idle: bool = False
    frame: bytes | None = None
    trigger: str = "postcopy"
    #: ``inject`` only: attempt postcopy recovery once both sides paused after the frame.
    then_recover: bool = False

    def to_json(self) -> dict[str, object]:
        """JSON-able form for the run record."""
        return {
            "name": self.name,
            "kind": self.kind,
            "idle": self.idle,
            "frame_hex": self.frame.hex() if self.frame is not None else None,
            "trigger": self.trigger,
            "then_recover": self.then_recover,
        }


def parse_scenario(name: str, *, idle: bool = False) -> Scenario:
    """Parse a scenario name (see the module docstring).

    >>> parse_scenario("inject:8").frame.hex()
    '00080000'
    >>> parse_scenario("blackhole-idle").idle
    True

    :raises InputError: an unknown name, with the list of known ones.
    """
    base = name
    if base.endswith("-idle"):
        base, idle = base.removesuffix("-idle"), True
    if base in ("plain", "blackhole", "cut", "recover"):
        return Scenario(name=base + ("-idle" if idle else ""), kind=base, idle=idle)
    then_recover = base.endswith("+recover")
    m = _INJECT_RE.fullmatch(base.removesuffix("+recover"))
    if m:
        type_id = int(m["type"], 0)
        payload = bytes.fromhex(m["hex"]) if m["hex"] else None
        length = int(m["len"], 0) if m["len"] else None
        if payload is None:
            payload = bytes(length or 0)
        if type_id > 0xFFFF or (length is not None and length > 0xFFFF):
            raise InputError(f"scenario {name!r}: type and length are be16")
        frame = make_frame(type_id, payload, length)
        return Scenario(
            name=base + ("-idle" if idle else ""),
            kind="inject",
            idle=idle,
            frame=frame,
            trigger=m["trigger"] or "postcopy",
            then_recover=then_recover,
        )
    raise InputError(
        f"unknown scenario {name!r}; known: plain, plain-idle, "
        "inject:TYPE[:LEN[:HEX]][@TRIGGER][+recover], "
        "blackhole-idle, cut, recover (see `migcompat lab run --help`)"
    )
