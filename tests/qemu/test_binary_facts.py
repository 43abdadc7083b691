"""The catalog against the real QEMU binaries the lab provisioned.

A compiled QEMU carries its error formats as C strings (``PRIx64`` already
expanded to ``lx``), so every format the catalog assigns to a release — also
those of release lines derived from history rather than extracted from a tree,
such as 11.1 — must occur byte for byte in a binary of that release.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from migcompat.protocol import catalog, overlays, parse_release

pytestmark = pytest.mark.qemu

try:
    from migcompat.lab import installed_builds, provision_hint
except ImportError:  # pragma: no cover - the lab is part of the distribution
    installed_builds = None  # type: ignore[assignment]

    def provision_hint(release: str | None = None) -> str:  # type: ignore[misc]
        return "run `migcompat lab provision`"


def _builds() -> list[object]:
    return list(installed_builds()) if installed_builds else []


BUILDS = _builds()
NO_QEMU = f"no QEMU provisioned: {provision_hint()}"


def binary_bytes(build: object) -> bytes:
    root = getattr(build, "root", None)
    binary = build.binary
    path = Path(root) / str(binary).lstrip("/") if root else Path(str(binary))
    return path.read_bytes()


@pytest.fixture(
    scope="module", params=BUILDS or [None], ids=lambda b: getattr(b, "release", "none")
)
def build_and_bytes(request: pytest.FixtureRequest) -> tuple[object, bytes]:
    if request.param is None:
        pytest.skip(NO_QEMU)
    return request.param, binary_bytes(request.param)


_FUNC_PREFIX = re.compile(r"^[a-z_][a-z0-9_]*(?=: | )")


def test_every_error_format_is_in_the_binary(build_and_bytes: tuple[object, bytes]) -> None:
    build, data = build_and_bytes
    cat = catalog(parse_release(build.version_text))  # type: ignore[attr-defined]
    missing = []
    for key, fmt in cat.errors.items():
        # Up to 7.2 some texts are `error_report("%s: …", __func__)`: the binary
        # holds the "%s" form, the catalog the resolved function name.
        variants = {fmt, _FUNC_PREFIX.sub("%s", fmt, count=1)}
        if not any(v.encode() in data for v in variants):
            missing.append((key, fmt))
    assert missing == [], f"{build.version_text}: formats not in the binary"  # type: ignore[attr-defined]


def test_table_names_are_in_the_binary(build_and_bytes: tuple[object, bytes]) -> None:
    build, data = build_and_bytes
    cat = catalog(parse_release(build.version_text))  # type: ignore[attr-defined]
    for m in cat.messages:
        if m.table_name:
            assert b"\0" + m.table_name.encode() + b"\0" in data or m.table_name.encode() in data


def test_the_keepalive_proposal_is_not_in_any_release(
    build_and_bytes: tuple[object, bytes],
) -> None:
    build, data = build_and_bytes
    name = overlays()["keepalive"].parameter["name"]
    if getattr(build, "is_lab_build", False) and "+keepalive" in build.protocol_release:  # type: ignore[attr-defined]
        # not a release: a `migcompat lab build` with the patch, whose source says it has it
        assert name.encode() in data
        return
    assert name.encode() not in data


def test_other_releases_texts_are_not_in_the_binary(build_and_bytes: tuple[object, bytes]) -> None:
    """The binary tells the error styles apart (``RP: `` prefix up to 8.1, none after)."""
    from migcompat.protocol import known_releases

    build, data = build_and_bytes
    own = catalog(parse_release(build.version_text)).errors["invalid_type"]  # type: ignore[attr-defined]
    others = {catalog(r).errors["invalid_type"] for r in known_releases()} - {own}
    for fmt in others:
        if fmt not in own:  # a suffix of our own text is found inside it
            assert fmt.encode() not in data, fmt
