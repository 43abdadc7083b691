"""QEMU releases as version values (after packaging's ``Version``).

A *release line* is ``X.Y`` (``7.2``); a *build* is ``X.Y.Z`` (``7.2.22``); an
*overlay* is a never-merged proposal applied to a line (``11.1+keepalive``) and
never equals a plain release. What users actually have resolves too: Debian
package versions (``1:10.0.13+ds-0+deb13u1``) and the first line of
``qemu-system-x86_64 --version``.

QEMU numbers development trees ``X.Y.50`` and release candidates ``X.Y.9N``
(e.g. ``7.2.50`` is the development tree that becomes ``8.0``); such builds
speak the protocol of the *next* line, which :func:`migcompat.protocol.catalog`
resolves with the catalog's list of lines.

>>> Release("7.2.22").line
Release('7.2')
>>> Release("1:10.0.13+ds-0+deb13u1")
Release('10.0.13')
>>> Release("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18)")
Release('7.2.22')
>>> Release("11.1+keepalive") == Release("11.1")
False
>>> sorted([Release("10.0"), Release("7.2"), Release("7.2.5"), Release("10.0+keepalive")])
[Release('7.2'), Release('7.2.5'), Release('10.0'), Release('10.0+keepalive')]
"""

from __future__ import annotations

import re
from functools import total_ordering

from packaging.version import InvalidVersion, Version

from ._errors import InvalidRelease

__all__ = ["DEV_MICRO", "Release", "parse_release"]


def __dir__() -> list[str]:
    return list(__all__)


#: QEMU's development trees carry micro 50 (``8.0.50``), release candidates 90+
#: (``8.0.90`` is 8.1.0-rc0): both already speak the next line's protocol.
DEV_MICRO = 50

_OVERLAY = r"(?:\+(?P<overlay>[a-z][a-z0-9-]*))?"
_PLAIN_RE = re.compile(r"(?P<ver>\d+\.\d+(?:\.\d+)?)" + _OVERLAY)
# `QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18)`
_BANNER_RE = re.compile(r"QEMU emulator version (?P<ver>\d+\.\d+(?:\.\d+)?)\b.*", re.DOTALL)
# Debian/Ubuntu/Fedora package versions: `1:10.0.13+ds-0+deb13u1`, `7.2+dfsg-7`,
# `10.1.0-1.fc43`; the upstream part is what matters.
_PACKAGE_RE = re.compile(
    r"(?:\d+:)?(?P<ver>\d+\.\d+(?:\.\d+)?)(?:[~+][A-Za-z0-9.~+]+)?(?:-[A-Za-z0-9.~+]+)?"
)


@total_ordering
class Release:
    """An immutable QEMU release line, build or overlay.

    Ordering goes through a comparison key ``(major, minor, micro, overlay)``:
    a line sorts before its builds (micro ``-1``), a plain release before any
    overlay on it, overlays among themselves by name.
    """

    __slots__ = ("_hash", "major", "micro", "minor", "overlay")

    major: int
    minor: int
    micro: int | None
    overlay: str | None
    _hash: int

    def __init__(self, text: object) -> None:
        if isinstance(text, Release):
            major, minor, micro, overlay = text.major, text.minor, text.micro, text.overlay
        else:
            major, minor, micro, overlay = _parse(text)
        object.__setattr__(self, "major", major)
        object.__setattr__(self, "minor", minor)
        object.__setattr__(self, "micro", micro)
        object.__setattr__(self, "overlay", overlay)
        object.__setattr__(self, "_hash", hash(self._key()))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Release is immutable")

    @classmethod
    def from_parts(
        cls, major: int, minor: int, micro: int | None = None, overlay: str | None = None
    ) -> Release:
        text = f"{major}.{minor}" + (f".{micro}" if micro is not None else "")
        return cls(text + (f"+{overlay}" if overlay else ""))

    # -- derived values ---------------------------------------------------------
    @property
    def line(self) -> Release:
        """The ``X.Y`` release line this is (or, for an overlay, is applied to)."""
        return Release.from_parts(self.major, self.minor)

    @property
    def is_line(self) -> bool:
        return self.micro is None and self.overlay is None

    @property
    def is_development(self) -> bool:
        """A ``X.Y.50`` development tree or ``X.Y.9N`` release candidate."""
        return self.micro is not None and self.micro >= DEV_MICRO

    @property
    def base(self) -> Release:
        """This release without its overlay."""
        return Release.from_parts(self.major, self.minor, self.micro)

    def with_overlay(self, overlay: str | None) -> Release:
        return Release.from_parts(self.major, self.minor, self.micro, overlay)

    # -- value semantics --------------------------------------------------------
    def _key(self) -> tuple[int, int, int, str]:
        return (
            self.major,
            self.minor,
            -1 if self.micro is None else self.micro,
            self.overlay or "",
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Release):
            return NotImplemented
        return self._key() == other._key()

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Release):
            return NotImplemented
        return self._key() < other._key()

    def __hash__(self) -> int:
        return self._hash

    def __str__(self) -> str:
        text = f"{self.major}.{self.minor}"
        if self.micro is not None:
            text += f".{self.micro}"
        if self.overlay:
            text += f"+{self.overlay}"
        return text

    def __repr__(self) -> str:
        return f"Release({str(self)!r})"

    def __reduce__(self) -> tuple[type[Release], tuple[str]]:
        return (Release, (str(self),))


def parse_release(text: object) -> Release:
    """Alias for :class:`Release` (``packaging.version.parse`` style)."""
    return Release(text)


#: ``X.Y+a+b``: more than one overlay (a package version has a ``-`` Debian revision).
_OVERLAYS_RE = re.compile(r"\d+\.\d+(?:\.\d+)?((?:\+[A-Za-z0-9][A-Za-z0-9.~]*){2,})")


def _check_overlays(text: object, first_line: str) -> None:
    """A release takes one overlay: repeated or several are an error, never dropped."""
    m = _OVERLAYS_RE.fullmatch(first_line)
    if m is None:
        return
    names = m.group(1).split("+")[1:]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        reason = f"overlay {repeated[0]!r} given twice"
    else:
        reason = f"more than one overlay ({', '.join(names)}): a release takes one"
    raise InvalidRelease(text, reason) from None


def _parse(text: object) -> tuple[int, int, int | None, str | None]:
    if not isinstance(text, str):
        raise InvalidRelease(text, "not a string") from None
    stripped = text.strip()
    if not stripped:
        raise InvalidRelease(text, "empty") from None
    first_line = stripped.splitlines()[0].strip()
    _check_overlays(text, first_line)
    for regex in (_PLAIN_RE, _BANNER_RE, _PACKAGE_RE):
        m = regex.fullmatch(first_line)
        if m:
            break
    else:
        raise InvalidRelease(
            text,
            "expected X.Y, X.Y.Z, X.Y+overlay, a Debian package version "
            "or a `qemu-system-* --version` line",
        ) from None
    try:
        version = Version(m.group("ver"))
    except InvalidVersion:  # pragma: no cover - the regexes only admit digits and dots
        raise InvalidRelease(text) from None
    release = version.release
    micro = release[2] if len(release) > 2 else None
    overlay = m.groupdict().get("overlay")
    if release[0] > 99 or release[1] > 99:
        raise InvalidRelease(text, "not a QEMU version number") from None
    return release[0], release[1], micro, overlay
