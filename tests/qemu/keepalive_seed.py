"""Where the posted keepalive patch is, and the lab builds made from it (for qemu tests).

The patch is QEMU's code, never part of the repository: ``MIGCOMPAT_KEEPALIVE_PATCH``, else
``../shared/seeds/keepalive-v1.patch`` next to the repository root when that exists.
Tests skip with the reason when it is absent or the trixie root is not provisioned.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEFAULT_PATCH = REPO.parent / "shared/seeds/keepalive-v1.patch"


def keepalive_patch() -> Path | None:
    env = os.environ.get("MIGCOMPAT_KEEPALIVE_PATCH")
    if env:
        return Path(env) if Path(env).is_file() else None
    return DEFAULT_PATCH if DEFAULT_PATCH.is_file() else None


def require_patch() -> Path:
    p = keepalive_patch()
    if p is None:
        pytest.skip(
            "no keepalive patch: set MIGCOMPAT_KEEPALIVE_PATCH or put it at "
            f"{DEFAULT_PATCH} (it is QEMU's code, never in this repository)"
        )
    return p


def patch_default_period(patch: Path) -> int:
    """``DEFAULT_MIGRATE_POSTCOPY_RP_KEEPALIVE_PERIOD`` as the patch defines it."""
    m = re.search(
        r"^\+#define DEFAULT_MIGRATE_POSTCOPY_RP_KEEPALIVE_PERIOD\s+(\d+)", patch.read_text(), re.M
    )
    assert m, f"{patch} defines no DEFAULT_MIGRATE_POSTCOPY_RP_KEEPALIVE_PERIOD"
    return int(m.group(1))


def require_build_env() -> None:
    """Skip unless the lab can build here (root, a provisioned trixie)."""
    from migcompat.lab.builds import roots_dir

    if os.geteuid() != 0:
        pytest.skip("lab build needs root (chroot)")
    if not (roots_dir() / "trixie/.migcompat-root.json").exists():
        pytest.skip("trixie is not provisioned: run `migcompat lab provision trixie`")


def v1_build():
    """The v1 lab build (built now, ~2.5 min, or taken from the cache)."""
    from migcompat.lab.build import build_qemu

    require_build_env()
    build, _built = build_qemu("trixie", [require_patch()])
    return build


def v2_build():
    """v1 + the compat hunk, written as ``migcompat keepalive --compat-patch --release 10.0``
    writes it (from the lab's fetched trixie source), then built (or taken from the cache)."""
    import tempfile

    from migcompat.compat import MACHINE_C, compat_patch
    from migcompat.lab.build import build_qemu, source_tree

    v1 = v1_build()
    tree = source_tree("trixie")
    hunk = compat_patch((tree / MACHINE_C).read_text(), "10.0")
    out = Path(tempfile.mkdtemp(prefix="mc-v2-")) / "keepalive-v2-compat.patch"
    out.write_text(hunk)
    build, _built = build_qemu(
        "trixie", [require_patch(), out], name=f"{v1.release.split('+')[0]}+keepalive-v2"
    )
    return build
