"""Release parsing and ordering (packaging-style: one ordered list drives the cases)."""

from __future__ import annotations

import itertools
import pickle

import pytest

from migcompat.protocol import InvalidRelease, Release, known_releases, parse_release, resolve_line

# Must be in the correct sorting order.
VERSIONS = [
    "2.5",
    "2.5.0",
    "2.5.1",
    "2.12",
    "3.0",
    "7.2",
    "7.2.22",
    "7.2.50",
    "8.0",
    "10.0",
    # an overlay applies to a line: after the line, before its builds
    "10.0+keepalive",
    "10.0.13",
    "11.1",
    "11.1+keepalive",
]


@pytest.mark.parametrize("i", range(len(VERSIONS)))
@pytest.mark.parametrize("j", range(len(VERSIONS)))
def test_ordering_follows_the_list(i: int, j: int) -> None:
    a, b = Release(VERSIONS[i]), Release(VERSIONS[j])
    assert (a < b) == (i < j)
    assert (a == b) == (i == j)
    assert (a >= b) == (i >= j)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7.2.22", "7.2.22"),
        ("1:10.0.13+ds-0+deb13u1", "10.0.13"),
        ("1:7.2+dfsg-7+deb12u18", "7.2"),
        ("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18)", "7.2.22"),
        (
            "QEMU emulator version 10.0.13 (Debian 1:10.0.13+ds-0+deb13u1)\n"
            "Copyright (c) 2003-2025 Fabrice Bellard and the QEMU Project developers",
            "10.0.13",
        ),
        ("10.1.0-1.fc43", "10.1.0"),
        ("  11.1  ", "11.1"),
        ("11.1+keepalive", "11.1+keepalive"),
    ],
)
def test_what_users_have_parses(text: str, expected: str) -> None:
    assert str(parse_release(text)) == expected


@pytest.mark.parametrize(
    "text",
    ["", "   ", "seven", "7", "7.", "1.2.3.4", "7.2+", "7.2+Keep alive", "v7.2", "100.0"],
)
def test_invalid_strings_raise_invalid_release(text: str) -> None:
    with pytest.raises(InvalidRelease) as exc:
        Release(text)
    assert str(exc.value).startswith("Invalid QEMU release: ")


@pytest.mark.parametrize("value", [None, 7.2, 7, b"7.2", ["7.2"]])
def test_non_strings_raise_invalid_release(value: object) -> None:
    with pytest.raises(InvalidRelease):
        Release(value)


def test_invalid_release_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        Release("nope")


def test_foreign_types_are_not_comparable() -> None:
    assert Release("7.2").__eq__("7.2") is NotImplemented
    assert Release("7.2").__lt__(7.2) is NotImplemented
    with pytest.raises(TypeError):
        _ = Release("7.2") < "8.0"


def test_overlay_never_equals_plain_release() -> None:
    assert Release("11.1+keepalive") != Release("11.1")
    assert Release("11.1+keepalive").base == Release("11.1")
    assert Release("11.1+keepalive").line == Release("11.1")


def test_immutable_hashable_picklable() -> None:
    r = Release("7.2.22")
    with pytest.raises(AttributeError):
        r.major = 8
    assert {r: 1}[Release("7.2.22")] == 1
    assert pickle.loads(pickle.dumps(r)) == r


def test_lines_resolve() -> None:
    assert resolve_line("7.2.22") == Release("7.2")
    assert resolve_line("QEMU emulator version 10.0.13 (Debian 1:10.0.13+ds-0+deb13u1)") == Release(
        "10.0"
    )


def test_development_trees_speak_the_next_line() -> None:
    lines = known_releases()
    for older, newer in itertools.pairwise(lines):
        assert resolve_line(f"{older}.50") == newer
        assert resolve_line(f"{older}.90") == newer


@pytest.mark.parametrize("text", ["2.4", "1.0.0", "99.0"])
def test_releases_outside_the_catalog_are_explained(text: str) -> None:
    with pytest.raises(InvalidRelease) as exc:
        resolve_line(text)
    assert "return path only from" in str(exc.value) or "newest line" in str(exc.value)


def test_catalog_covers_every_line_from_2_5_to_11_1() -> None:
    lines = [str(x) for x in known_releases()]
    assert lines[0] == "2.5"
    assert "11.1" in lines
    # No gaps: 2.5 … 2.12, 3.0, 3.1, 4.0 … each major's minors contiguous from 0 (2.x from 5).
    by_major: dict[int, list[int]] = {}
    for x in known_releases():
        by_major.setdefault(x.major, []).append(x.minor)
    for major, minors in by_major.items():
        first = 5 if major == 2 else 0
        assert minors == list(range(first, first + len(minors))), (major, minors)
