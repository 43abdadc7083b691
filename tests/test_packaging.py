"""The distribution installs the folders under one ``migcompat`` namespace, data included.

Built as a real wheel and imported from it (not from the editable checkout),
so a package-dir mapping or a missing data file shows up here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"building the wheel failed:\n{proc.stdout}\n{proc.stderr}")
    (wheel,) = out.glob("qemu_migcompat-*.whl")
    target = out / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(target)
    return target


def test_wheel_has_the_namespace_and_data(wheel_dir: Path) -> None:
    names = {p.relative_to(wheel_dir).as_posix() for p in wheel_dir.rglob("*") if p.is_file()}
    assert "migcompat/__main__.py" in names
    assert "migcompat/protocol/_reader.py" in names
    assert "migcompat/protocol/data/catalog.json" in names
    assert "migcompat/compat/__init__.py" in names
    # nothing is installed under the generic top-level names
    assert not any(n.startswith(("protocol/", "compat/", "cli/")) for n in names)


def test_import_from_the_installed_wheel(wheel_dir: Path, tmp_path: Path) -> None:
    code = (
        "import migcompat, migcompat.protocol as p, migcompat.compat;"
        "print(migcompat.__file__);"
        "print(p.catalog('11.1+keepalive').max)"
    )
    env = {**os.environ, "PYTHONPATH": str(wheel_dir)}
    env.pop("MIGCOMPAT_CATALOG", None)
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    file_line, max_line = proc.stdout.split()
    assert Path(file_line).is_relative_to(wheel_dir)
    assert int(max_line) == 9
    proc = subprocess.run(
        [sys.executable, "-m", "migcompat", "catalog", "--release", "7.2", "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert '"max":7' in proc.stdout


def test_hypothesis_is_a_runtime_dependency_and_the_license_ships(wheel_dir: Path) -> None:
    """``migcompat fuzz`` and ``migcompat.protocol.strategies`` work after a plain install."""
    (meta,) = wheel_dir.glob("qemu_migcompat-*.dist-info/METADATA")
    requires = [
        line.split(":", 1)[1].strip()
        for line in meta.read_text().splitlines()
        if line.startswith("Requires-Dist:")
    ]
    runtime = [r for r in requires if "extra ==" not in r]
    assert any(r.startswith("hypothesis") for r in runtime), requires
    # the catalog's provenance names these package resources
    assert (wheel_dir / "migcompat/protocol/data/extracted/qemu-10.0.13.json").is_file()
    licenses = list(wheel_dir.glob("qemu_migcompat-*.dist-info/**/LICENSE*"))
    assert licenses and "MIT License" in licenses[0].read_text()
