"""The distribution installs the folders under one ``migcompat`` namespace, data included.

Built as a real wheel and imported from it (not from the editable checkout),
so a package-dir mapping or a missing data file shows up here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
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
    assert "migcompat/cli/__init__.py" in names and "migcompat/cli/_cmd_check.py" in names
    assert "migcompat/lab/pytest_plugin.py" in names
    assert "migcompat/protocol/fuzzing.py" in names and "migcompat/lab/fuzz_real.py" in names
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


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_installed_module_is_a_file_of_the_checkout(wheel_dir: Path) -> None:
    """A traceback from an installed module names a path a reader finds in the repository:
    ``migcompat/cli/_cmd_fuzz.py`` is ``cli/_cmd_fuzz.py``, ``migcompat/__init__.py`` is
    ``migcompat/__init__.py`` (the package-dir mapping, longest name first)."""
    mapping = _pyproject()["tool"]["setuptools"]["package-dir"]
    modules = sorted(p.relative_to(wheel_dir) for p in wheel_dir.rglob("*.py"))
    assert modules
    for rel in modules:
        parts = rel.with_suffix("").parts
        for n in range(len(parts), 0, -1):
            name = ".".join(parts[:n])
            if name in mapping:
                repo_path = ROOT / mapping[name] / Path(*rel.parts[n:])
                break
        else:
            pytest.fail(f"{rel}: no package-dir maps it")
        assert repo_path.is_file(), f"{rel} is installed, yet {repo_path} does not exist"


def test_version_and_entry_points_from_the_installed_wheel(wheel_dir: Path, tmp_path: Path) -> None:
    """The version is written once (pyproject.toml) and read from the installed metadata."""
    project = _pyproject()["project"]
    env = {**os.environ, "PYTHONPATH": str(wheel_dir)}
    for argv in (["-m", "migcompat", "--version"], ["-m", "migcompat.cli", "--version"]):
        proc = subprocess.run(
            [sys.executable, *argv], cwd=tmp_path, env=env, capture_output=True, text=True,
            check=True,
        )  # fmt: skip
        assert proc.stdout.strip() == f"migcompat {project['version']}"
    code = (
        "import sys, migcompat; from importlib.metadata import entry_points as e;"
        "print(migcompat.__version__, migcompat.__file__);"
        "print(*sorted(x.value for x in e(group='console_scripts') if x.name == 'migcompat'));"
        "print(*sorted(x.value for x in e(group='pytest11') if x.name == 'migcompat'));"
        "print(sorted(m for m in sys.modules if m.startswith('migcompat.')))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
        check=True,
    )  # fmt: skip
    version_line, script, plugin, loaded = proc.stdout.splitlines()
    version, file = version_line.split()
    assert version == project["version"] and Path(file).is_relative_to(wheel_dir)
    assert script == project["scripts"]["migcompat"] == "migcompat.cli:main"
    assert plugin == project["entry-points"]["pytest11"]["migcompat"]
    assert plugin == "migcompat.lab.pytest_plugin"
    assert loaded == "[]"  # the root package imports no layer


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
