"""The lab's run directory is private: no shared, predictable path another user can plant in."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from migcompat.lab import LabError, installed_builds
from migcompat.lab.builds import check_socket_path, new_run_dir, run_dir
from migcompat.lab.kernel import guest_kernel
from migcompat.lab.qemu import QemuInstance

OTHER_UID = 65534  # nobody

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@needs_root
def test_a_dir_planted_by_another_user_is_refused_and_nothing_goes_through_it(
    tmp_path, monkeypatch
):
    planted = tmp_path / "run"
    planted.mkdir(mode=0o755)
    victim = tmp_path / "victim"
    victim.mkdir()
    (planted / "guest").symlink_to(victim)  # the kernel cache, redirected
    (planted / "src.serial").symlink_to(victim / "passwd")  # a serial target, redirected
    os.chown(planted, OTHER_UID, OTHER_UID)
    monkeypatch.setenv("MIGCOMPAT_LAB_RUN_DIR", str(planted))

    for attempt in (run_dir, lambda: new_run_dir("r"), guest_kernel):
        with pytest.raises(LabError, match=r"owned by uid 65534.*refusing it"):
            attempt()
    assert list(victim.iterdir()) == []
    assert sorted(p.name for p in planted.iterdir()) == ["guest", "src.serial"]


def test_a_symlink_as_the_run_dir_is_refused(tmp_path, monkeypatch):
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    monkeypatch.setenv("MIGCOMPAT_LAB_RUN_DIR", str(tmp_path / "link"))
    with pytest.raises(LabError, match="is a symlink"):
        new_run_dir("r")
    assert list(real.iterdir()) == []


@pytest.mark.parametrize("mode", [0o775, 0o757, 0o777, 0o1777])
def test_a_dir_others_can_write_is_refused(tmp_path, monkeypatch, mode):
    d = tmp_path / "run"
    d.mkdir()
    d.chmod(mode)
    monkeypatch.setenv("MIGCOMPAT_LAB_RUN_DIR", str(d))
    with pytest.raises(LabError, match=f"writable by group or others \\(mode {mode:04o}\\)"):
        run_dir()


def test_a_missing_configured_dir_is_made_0700_and_runs_get_fresh_0700_dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("MIGCOMPAT_LAB_RUN_DIR", str(tmp_path / "run"))
    base = run_dir()
    assert base == tmp_path / "run" and _mode(base) == 0o700
    a, b = new_run_dir("r"), new_run_dir("r")
    assert a != b and a.parent == b.parent == base
    assert _mode(a) == _mode(b) == 0o700
    assert os.stat(a).st_uid == os.geteuid()


def test_a_relative_configured_dir_is_refused(monkeypatch):
    monkeypatch.setenv("MIGCOMPAT_LAB_RUN_DIR", "mc-run")
    with pytest.raises(LabError, match="absolute path"):
        run_dir()


def test_the_default_is_a_fresh_private_dir_per_process_not_a_fixed_path(tmp_path):
    """Two processes get two different 0700 dirs; neither is the old /tmp/migcompat-lab."""
    code = (
        "import os, stat; from migcompat.lab.builds import run_dir, new_run_dir;"
        "b = run_dir(); r = new_run_dir('r');"
        "print(b, oct(stat.S_IMODE(os.stat(b).st_mode)), oct(stat.S_IMODE(os.stat(r).st_mode)))"
    )
    env = {k: v for k, v in os.environ.items() if k != "MIGCOMPAT_LAB_RUN_DIR"}
    outs = [
        subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       check=True).stdout.split()
        for _ in range(2)
    ]  # fmt: skip
    assert outs[0][0] != outs[1][0]
    for base, base_mode, run_mode in outs:
        assert base != "/tmp/migcompat-lab"
        assert base_mode == run_mode == "0o700"
        assert not Path(base).exists()  # tidied at exit (nothing was kept in it)


def test_socket_paths_over_the_unix_limit_are_refused_up_front(tmp_path):
    check_socket_path(Path("/tmp/mc-abcdefgh/rabcdefgh/probe-1234567-0.qmp"))
    with pytest.raises(LabError, match="over the 107-byte limit"):
        check_socket_path(tmp_path / ("x" * 120) / "src.qmp")


@pytest.mark.qemu
def test_a_running_qemu_has_a_0700_dir_and_a_0600_socket_and_serial(tmp_path, monkeypatch):
    """Checked on every provisioned build: the chroot runner bind-mounts the private dir."""
    builds = installed_builds()
    if not builds:
        pytest.skip("no QEMU provisioned: run `migcompat lab provision` (see README)")
    monkeypatch.setenv("MIGCOMPAT_LAB_RUN_DIR", str(tmp_path / "run"))

    async def one(build) -> tuple[int, int, int, str]:
        work = new_run_dir("r")
        inst = QemuInstance(
            build, "src", work,
            ["-machine", "none", "-nodefaults", "-display", "none", "-S",
             "-serial", f"file:{work}/src.serial"],
        )  # fmt: skip
        await inst.start(timeout=30)
        try:
            status = await inst.execute("query-status")
            modes = (_mode(work), _mode(inst.qmp_path), _mode(work / "src.serial"))
            assert stat.S_ISSOCK(os.lstat(inst.qmp_path).st_mode)
        finally:
            await inst.stop(grace=2)
        return (*modes, status["status"])

    for build in builds:
        assert asyncio.run(one(build)) == (0o700, 0o600, 0o600, "prelaunch"), build.label
