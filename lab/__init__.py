"""The real-QEMU lab: provisioned builds, a qemu.qmp driver, a recording proxy, scenarios.

Public API (stable; other parts of the project depend on it): :class:`QemuBuild`,
:func:`installed_builds`, :func:`find_build`, :class:`LabError`, plus the driver
(:class:`QemuInstance`, :class:`LabState`), the proxy (:class:`Proxy`) and the scenario runner
(:func:`run_scenario`, :class:`RunRecord`).
"""

from migcompat.lab._errors import LabError
from migcompat.lab.builds import QemuBuild, find_build, installed_builds, register_user_build
from migcompat.lab.provision import DEFAULT_SUITES, SUITES, provision, suite_for

__all__ = [
    "DEFAULT_SUITES",
    "SUITES",
    "LabError",
    "QemuBuild",
    "find_build",
    "installed_builds",
    "provision",
    "register_user_build",
    "suite_for",
]


def __dir__() -> list[str]:
    return list(__all__)
