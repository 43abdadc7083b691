"""Machine types, compat properties and the keepalive decision, derived from QEMU's sources.

Everything in ``__all__`` is the public API; the implementation lives in private modules
(``_tables``, ``_properties``, ``_keepalive``, ``_behaviour``, ``_matrix``).
"""

from ._behaviour import Observation, observations, observed_rejection
from ._compat_patch import MACHINE_C, compat_patch
from ._keepalive import (
    Fact,
    KeepaliveDecision,
    PeriodRefused,
    TcpKeepaliveAdvice,
    decide_keepalive,
    tcp_keepalive,
)
from ._matrix import (
    Cell,
    CellResult,
    Prediction,
    compare,
    gitlab_ci,
    matrix_cells,
    parse_cell_id,
    predict,
    predict_matrix,
    run_cell,
    run_cells,
)
from ._partition import (
    PartitionPrediction,
    SidePrediction,
    Strategy,
    StrategyError,
    TcpSettings,
    keepalive_timeout_s,
    predict_partition,
    retransmission_schedule_s,
    retransmission_timeout_s,
)
from ._properties import (
    EffectiveProperty,
    MachineDiff,
    diff_machines,
    effective_properties,
    overlay_compat_entries,
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
    "MACHINE_C",
    "Cell",
    "CellResult",
    "CompatEntry",
    "CompatTable",
    "EffectiveProperty",
    "Fact",
    "KeepaliveDecision",
    "MachineDiff",
    "MachineInfo",
    "MachineType",
    "Observation",
    "PartitionPrediction",
    "PeriodRefused",
    "Prediction",
    "SidePrediction",
    "Strategy",
    "StrategyError",
    "TcpKeepaliveAdvice",
    "TcpSettings",
    "UnknownMachine",
    "compare",
    "compat_patch",
    "compat_releases",
    "compat_table",
    "decide_keepalive",
    "diff_machines",
    "effective_properties",
    "gitlab_ci",
    "keepalive_timeout_s",
    "matrix_cells",
    "observations",
    "observed_rejection",
    "overlay_compat_entries",
    "parse_cell_id",
    "parse_machine",
    "predict",
    "predict_matrix",
    "predict_partition",
    "retransmission_schedule_s",
    "retransmission_timeout_s",
    "rule_arrays",
    "run_cell",
    "run_cells",
    "tcp_keepalive",
    "versioned_array",
]


def __dir__() -> list[str]:
    return list(__all__)
