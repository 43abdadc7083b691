"""Machine types, compat properties and the keepalive decision, derived from QEMU's sources.

Everything in ``__all__`` is the public API; the implementation lives in private modules
(``_tables``, ``_properties``, ``_keepalive``, ``_behaviour``).
"""

from ._behaviour import Observation, observations, observed_rejection
from ._keepalive import (
    Fact,
    KeepaliveDecision,
    PeriodRefused,
    TcpKeepaliveAdvice,
    decide_keepalive,
    tcp_keepalive,
)
from ._properties import (
    EffectiveProperty,
    MachineDiff,
    diff_machines,
    effective_properties,
    rule_arrays,
    versioned_array,
)
from ._tables import (
    CompatEntry,
    CompatTable,
    MachineInfo,
    MachineType,
    UnknownMachine,
    compat_releases,
    compat_table,
    parse_machine,
)

__all__ = [
    "CompatEntry",
    "CompatTable",
    "EffectiveProperty",
    "Fact",
    "KeepaliveDecision",
    "MachineDiff",
    "MachineInfo",
    "MachineType",
    "Observation",
    "PeriodRefused",
    "TcpKeepaliveAdvice",
    "UnknownMachine",
    "compat_releases",
    "compat_table",
    "decide_keepalive",
    "diff_machines",
    "effective_properties",
    "observations",
    "observed_rejection",
    "parse_machine",
    "rule_arrays",
    "tcp_keepalive",
    "versioned_array",
]


def __dir__() -> list[str]:
    return list(__all__)
