"""Payload layouts (from QEMU's handlers) against the catalog (from QEMU's tables)."""

from __future__ import annotations

import doctest

import pytest

from migcompat.protocol import _cformat, _grammar, _layouts, _releases, catalog, known_releases
from migcompat.protocol._layouts import PAYLOAD_LAYOUTS, fixed_size


@pytest.mark.parametrize("release", known_releases(), ids=str)
def test_fixed_layouts_match_rp_cmd_args(release: object) -> None:
    for m in catalog(release).messages:
        if m.id == 0 or m.short_name not in PAYLOAD_LAYOUTS:
            continue
        size = fixed_size(m.short_name)
        # A layout without a variable part has exactly the table's length; one with
        # a pstr8 (idstr) is variable (-1) in QEMU's table.
        assert size == m.length, (release, m)


def test_every_catalog_message_has_a_layout() -> None:
    names = {m.short_name for r in known_releases() for m in catalog(r).messages if m.id}
    names |= {m.short_name for m in catalog("11.1+keepalive").messages if m.id}
    assert names <= set(PAYLOAD_LAYOUTS)


@pytest.mark.parametrize("module", [_cformat, _grammar, _layouts, _releases])
def test_doctests(module: object) -> None:
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)  # type: ignore[arg-type]
    assert result.failed == 0
