"""``migcompat lab build`` for real: the posted keepalive patch on trixie's 10.0.13 source.

Builds it (~2.5 min on 2 cores) or takes it from the cache, then checks that the binary runs
and that QEMU itself reports the parameter the patch adds, with the patch's own default.
"""

from __future__ import annotations

import asyncio
import subprocess
import uuid

import pytest
from keepalive_seed import patch_default_period, require_patch, v1_build

from migcompat.lab import QemuInstance
from migcompat.lab.builds import find_build, run_dir

pytestmark = pytest.mark.qemu


@pytest.fixture(scope="module")
def v1():
    return v1_build()


def test_v1_is_registered_with_its_patch(v1):
    assert v1.release.endswith("+keepalive-v1")
    assert find_build(v1.release) == v1
    assert [p["name"] for p in v1.patches] == ["keepalive-v1"]
    assert v1.package_version == "1:10.0.13+ds-0+deb13u1"


def test_v1_binary_runs(v1):
    out = subprocess.run(v1.argv("--version"), capture_output=True, text=True, check=True)
    assert out.stdout.startswith("QEMU emulator version 10.0.13")


async def _migrate_parameters(build, machine: str) -> dict:
    work = run_dir() / f"lb-{uuid.uuid4().hex[:8]}"
    work.mkdir(parents=True)
    inst = QemuInstance(
        build,
        "dst",
        work,
        [
            "-machine",
            machine,
            "-accel",
            "tcg",
            "-S",
            "-nodefaults",
            "-display",
            "none",
            "-incoming",
            "defer",
        ],
    )
    await inst.start()
    try:
        return await inst.execute("query-migrate-parameters")
    finally:
        await inst.stop()


def test_v1_reports_the_period_with_the_patch_default(v1):
    default = patch_default_period(require_patch())
    assert default == 60000
    params = asyncio.run(_migrate_parameters(v1, "pc-q35-10.0"))
    assert params["postcopy-rp-keepalive-period"] == default
    # v1 has no compat entry: an old machine type gets the default too
    old = asyncio.run(_migrate_parameters(v1, "pc-q35-7.2"))
    assert old["postcopy-rp-keepalive-period"] == default


def test_unpatched_twin_has_no_such_parameter():
    twin = find_build("trixie")
    if twin is None:
        pytest.skip("trixie is not provisioned")
    params = asyncio.run(_migrate_parameters(twin, "pc-q35-10.0"))
    assert "postcopy-rp-keepalive-period" not in params


# -- the build speaks what its own source says (tools/extract_* on the patched tree) --------


def _tools():
    import importlib
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    return importlib.import_module("tools.extract_catalog"), importlib.import_module(
        "tools.extract_compat"
    )


def test_v1_extracted_catalog_is_the_keepalive_overlay(v1):
    from migcompat.protocol import catalog

    ec, _ = _tools()
    got = ec.extract(v1.tree_path, f"lab build {v1.release}", None)
    want = catalog("10.0.13+keepalive")
    assert got["rp"]["max"] == want.max == 9
    assert [(m["id"], m["name"], m["table_name"], m["length"]) for m in got["rp"]["messages"]] == [
        (m.id, m.name, m.table_name, m.length) for m in sorted(want.messages, key=lambda m: m.id)
    ]
    # the reader's error texts are the unpatched 10.0's (the patch adds no check)
    assert {k: v["format"] for k, v in got["rp"]["errors"].items()} == dict(want.errors)
    assert v1.protocol_release == "10.0.13+keepalive"


def test_v1_extracted_parameter_is_the_overlays_and_it_has_no_compat_entry(v1):
    from migcompat.protocol import overlays

    _, ex = _tools()
    table = ex.extract(v1.tree_path)
    param = overlays()["keepalive"].parameter
    got = table["migration_properties"][param["name"]]
    assert (got["type"], got["default"]) == (param["type"], param["default"])
    entries = [
        e
        for a in table["compat_arrays"].values()
        for e in a["entries"]
        if e["property"] == param["name"]
    ]
    assert entries == []  # v1 as posted: no compat property, the reviewers' point
    assert v1.model is None


def test_v2_compat_entry_covers_old_machine_types_only():
    from keepalive_seed import v2_build

    v2 = v2_build()
    assert [p["name"] for p in v2.patches] == ["keepalive-v1", "keepalive-v2-compat"]
    assert v2.model == "10.0.13+keepalive"  # return path and compat entry = the overlay
    default = patch_default_period(require_patch())
    assert asyncio.run(_migrate_parameters(v2, "pc-q35-9.2"))["postcopy-rp-keepalive-period"] == 0
    assert asyncio.run(_migrate_parameters(v2, "pc-q35-7.2"))["postcopy-rp-keepalive-period"] == 0
    # a backport: the release's own machine type keeps the default
    new = asyncio.run(_migrate_parameters(v2, "pc-q35-10.0"))
    assert new["postcopy-rp-keepalive-period"] == default


def test_v2_extracted_compat_entry_is_the_overlays():
    from keepalive_seed import v2_build

    from migcompat.compat import overlay_compat_entries

    v2 = v2_build()
    _, ex = _tools()
    table = ex.extract(v2.tree_path)
    (want,) = overlay_compat_entries("10.0.13+keepalive")
    got = [
        (name, e["driver"], e["property"], e["value"])
        for name, a in table["compat_arrays"].items()
        for e in a["entries"]
        if e["property"] == want.property
    ]
    assert got == [(want.array, want.driver, want.property, want.value)]
