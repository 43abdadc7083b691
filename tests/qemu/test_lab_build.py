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
    inst = QemuInstance(build, "dst", work, ["-machine", machine, "-accel", "tcg", "-S",
                                              "-nodefaults", "-display", "none",
                                              "-incoming", "defer"])
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
