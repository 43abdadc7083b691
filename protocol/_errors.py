"""One exception hierarchy for the whole toolkit.

``MigcompatError`` roots everything a user can cause; the CLI catches only it.
Any other exception escaping the toolkit is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = [
    "CatalogError",
    "InputError",
    "InvalidRelease",
    "LocalViolation",
    "MigcompatError",
    "ProtocolViolation",
    "RemoteViolation",
]


def __dir__() -> list[str]:
    return list(__all__)


class MigcompatError(Exception):
    """Root of every error the toolkit raises on purpose.

    ``exit_code`` is what the CLI exits with when this error ends a command
    (2 = bad input or usage, by the convention of every subcommand).
    """

    exit_code: int = 2


class InputError(MigcompatError):
    """The user's input (a path, a file's contents, an option) cannot be used."""


class InvalidRelease(MigcompatError, ValueError):
    """A string does not name a QEMU release line, build, package version or overlay."""

    def __init__(self, text: object, reason: str = "") -> None:
        super().__init__(text, reason)
        self.text = text
        self.reason = reason

    def __str__(self) -> str:
        msg = f"Invalid QEMU release: {self.text!r}"
        return f"{msg} ({self.reason})" if self.reason else msg


class CatalogError(MigcompatError):
    """The committed catalog or compat data is inconsistent (a packaging bug or a bad edit)."""


class ProtocolViolation(MigcompatError):
    """Bytes that break the return-path protocol as a given QEMU release reads it.

    Abstract: raise :class:`RemoteViolation` (the peer sent them) or
    :class:`LocalViolation` (we were asked to build them).

    :param message: what is wrong, in our words.
    :param offset: stream offset of the offending frame's first byte.
    :param release: the release whose reader rejects the bytes (a ``Release``).
    :param message_type: the be16 type of the frame, when the header was read.
    :param qemu_error: the exact text that release's source prints, if it prints one.
    :param data: the bytes of the frame as far as they were read, for the hex caret.
    :param caret: index into ``data`` of the offending field.
    :param stopped_at: stream position up to which the source had read when it gave up.
    """

    def __init__(
        self,
        message: str,
        *,
        offset: int = 0,
        release: object = None,
        message_type: int | None = None,
        qemu_error: str | None = None,
        data: bytes = b"",
        caret: int = 0,
        stopped_at: int | None = None,
    ) -> None:
        if type(self) is ProtocolViolation:
            raise TypeError("raise LocalViolation or RemoteViolation, not ProtocolViolation")
        super().__init__(
            message, offset, release, message_type, qemu_error, data, caret, stopped_at
        )
        self.message = message
        self.offset = offset
        self.release = release
        self.message_type = message_type
        self.qemu_error = qemu_error
        self.data = data
        self.caret = caret
        #: Stream position up to which the source had read when it gave up.
        self.stopped_at = offset if stopped_at is None else stopped_at

    def __str__(self) -> str:
        head = f"{self.message} at offset {self.offset}"
        if self.release is not None:
            head += f" (source {self.release})"
        if self.qemu_error:
            head += f"\n  QEMU says: {self.qemu_error}"
        if self.data:
            shown = self.data[:24]
            hexed = " ".join(f"{b:02x}" for b in shown)
            caret = min(self.caret, len(shown) - 1) if shown else 0
            head += f"\n  {hexed}{' ...' if len(self.data) > 24 else ''}\n  {'   ' * caret}^^"
        return head


class RemoteViolation(ProtocolViolation):
    """The peer (the destination, on the return path) sent bytes the source rejects."""


class LocalViolation(ProtocolViolation):
    """We were asked to build bytes that the given release would reject."""
