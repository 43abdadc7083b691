"""The lab's scenario names: the grammar is :func:`migcompat.protocol.parse_scenario`.

The lab raises its own error type for a name it cannot run (``LabError``, exit status 2).
"""

from __future__ import annotations

from migcompat.lab._errors import LabError
from migcompat.protocol import SCENARIO_KINDS, InputError, Scenario, Step
from migcompat.protocol import parse_scenario as _parse

__all__ = ["SCENARIO_KINDS", "Scenario", "Step", "parse_scenario"]


def __dir__() -> list[str]:
    return list(__all__)


def parse_scenario(name: str, *, idle: bool = False) -> Scenario:
    """Parse a scenario name (grammar: :mod:`migcompat.protocol`'s ``parse_scenario``).

    >>> parse_scenario("inject:8").frame.hex()
    '00080000'

    :raises LabError: an unknown name, with the list of known ones.
    """
    try:
        return _parse(name, idle=idle)
    except InputError as exc:
        raise LabError(str(exc)) from None
