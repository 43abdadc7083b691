"""The real-QEMU lab: provisioned builds, a qemu.qmp driver, a recording proxy, scenarios.

Public API (stable; other parts of the project depend on it):

* builds — :class:`QemuBuild` (``release``, ``version_text``, ``suite``, ``argv(*args)``,
  ``run_dir``), :func:`installed_builds`, :func:`find_build`, :func:`register_user_build`;
* provisioning — :func:`provision`, :func:`suite_for`, :data:`SUITES`, :data:`DEFAULT_SUITES`;
* driving — :class:`QemuInstance` with its :class:`LabState`;
* the relay — :class:`Proxy`;
* scenarios — :func:`run_scenario` returning a :class:`RunRecord`, :func:`parse_scenario`,
  :func:`save_fixture`;
* the matrix — :func:`run_cell` / :func:`run_cells` (a predicted cell run and compared),
  per-cell records (:func:`write_cell_record`, :func:`read_cell_records`,
  :func:`cell_record_path`, :data:`RECORD_NAME`), :func:`build_versions`,
  :func:`observations_json` / :func:`record_observations`;
* the host — :func:`read_tcp_sysctls` (the TCP sysctls that compat's predictions take);
* :class:`LabError`, the one error type (a ``MigcompatError``).
"""

from migcompat.lab._errors import LabError, LabInterrupted, LabStalled
from migcompat.lab.builds import (
    QemuBuild,
    find_build,
    installed_builds,
    provision_hint,
    register_user_build,
)
from migcompat.lab.fixtures import save_fixture
from migcompat.lab.host import read_tcp_sysctls
from migcompat.lab.matrix import (
    RECORD_NAME,
    MatrixInterrupted,
    build_versions,
    cell_record_path,
    observations_json,
    read_cell_records,
    record_observations,
    run_cell,
    run_cells,
    write_cell_record,
)
from migcompat.lab.provision import DEFAULT_SUITES, SUITES, provision, suite_for
from migcompat.lab.proxy import Proxy
from migcompat.lab.qemu import LabState, QemuInstance
from migcompat.lab.runner import RunRecord, run_scenario, run_scenario_async
from migcompat.lab.scenarios import Scenario, parse_scenario

__all__ = [
    "DEFAULT_SUITES",
    "RECORD_NAME",
    "SUITES",
    "LabError",
    "LabInterrupted",
    "LabStalled",
    "LabState",
    "MatrixInterrupted",
    "Proxy",
    "QemuBuild",
    "QemuInstance",
    "RunRecord",
    "Scenario",
    "build_versions",
    "cell_record_path",
    "find_build",
    "installed_builds",
    "observations_json",
    "parse_scenario",
    "provision",
    "provision_hint",
    "read_cell_records",
    "read_tcp_sysctls",
    "record_observations",
    "register_user_build",
    "run_cell",
    "run_cells",
    "run_scenario",
    "run_scenario_async",
    "save_fixture",
    "suite_for",
    "write_cell_record",
]


def __dir__() -> list[str]:
    return list(__all__)
