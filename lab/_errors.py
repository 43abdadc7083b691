"""The lab's one error type (``LabError(exc=…)`` wraps the cause, so nothing is lost)."""

from __future__ import annotations

from migcompat.protocol import MigcompatError

__all__ = ["LabError", "LabInterrupted", "LabStalled"]


def __dir__() -> list[str]:
    return list(__all__)


class LabError(MigcompatError):
    """Something in the lab went wrong: provisioning, starting QEMU, QMP, the proxy.

    :param message: what failed, in our words.
    :param exc: the underlying exception, if any (kept so nothing is lost).
    :param qemu_error: QEMU's own error text, verbatim, when QEMU gave one.
    """

    def __init__(
        self, message: str, *, exc: BaseException | None = None, qemu_error: str | None = None
    ) -> None:
        super().__init__(message, exc, qemu_error)
        self.message = message
        self.exc = exc
        self.qemu_error = qemu_error

    def __str__(self) -> str:
        text = self.message
        if self.qemu_error:
            text += f": {self.qemu_error}"
        elif self.exc is not None:
            text += f": {type(self.exc).__name__}: {self.exc}"
        return text


class LabStalled(LabError):
    """A run produced no result within its overall budget and was torn down.

    A bug of the lab, not an outcome of QEMU's: the run's state (the proxy's included) is in
    ``stall-report.json`` next to the record. (The stall once seen about once in 60–130 runs
    was a dropped cancel in Python 3.11's ``asyncio.wait_for``; see docs/reliability.md.)
    """


class LabInterrupted(LabError, KeyboardInterrupt):
    """^C (SIGINT) stopped a run; its QEMUs were stopped first. Still a ``KeyboardInterrupt``."""

    exit_code = 130
