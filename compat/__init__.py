"""Machine types, compat properties, the keepalive decision, the partition model and the
cross-version matrix's predictions, derived from QEMU's sources and the lab's observations.

Pure: no I/O beyond this package's own data files, no host reads (the host's TCP sysctls
come in as arguments). Everything in ``__all__`` is the public API; the implementation
lives in private modules (``_tables``, ``_properties``, ``_keepalive``, ``_behaviour``,
``_partition``, ``_matrix``).
"""

from ._behaviour import Observation, observations, observed_rejection
from ._keepalive import (
    LINUX_TCP_DEFAULTS,
    Fact,
    KeepaliveDecision,
    PeriodRefused,
    TcpKeepaliveAdvice,
    decide_keepalive,
    tcp_keepalive,
)
from ._matrix import (
    DEFAULT_FAMILY,
    DEFAULT_RELEASES,
    Cell,
    CellResult,
    Prediction,
    capabilities,
    common_machines,
    compare,
    core_scenarios,
    known_scenarios,
    machines_for,
    matrix_cells,
    matrix_model,
    observed_runs_per_rule,
    parse_cell_id,
    predict,
    predict_cells,
    predict_matrix,
    recorded_observations,
    results_summary,
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
    "DEFAULT_FAMILY",
    "DEFAULT_RELEASES",
    "LINUX_TCP_DEFAULTS",
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
    "capabilities",
    "common_machines",
    "compare",
    "compat_releases",
    "compat_table",
    "core_scenarios",
    "decide_keepalive",
    "diff_machines",
    "effective_properties",
    "keepalive_timeout_s",
    "known_scenarios",
    "machines_for",
    "matrix_cells",
    "matrix_model",
    "observations",
    "observed_rejection",
    "observed_runs_per_rule",
    "overlay_compat_entries",
    "parse_cell_id",
    "parse_machine",
    "predict",
    "predict_cells",
    "predict_matrix",
    "predict_partition",
    "recorded_observations",
    "results_summary",
    "retransmission_schedule_s",
    "retransmission_timeout_s",
    "rule_arrays",
    "tcp_keepalive",
    "versioned_array",
]


def __dir__() -> list[str]:
    return list(__all__)
