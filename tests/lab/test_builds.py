"""Builds, scenario names, machine choice, CLI wiring: no QEMU needed."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

import migcompat.lab as lab
from migcompat.cli import main
from migcompat.lab import LabError, QemuBuild
from migcompat.lab.builds import release_from_version, release_key
from migcompat.lab.qemu import newest_common_machine
from migcompat.lab.scenarios import parse_scenario


def test_public_surface():
    for name in ("QemuBuild", "installed_builds", "find_build", "LabError"):
        assert name in dir(lab)
    assert issubclass(LabError, lab.LabError.__mro__[1])  # MigcompatError


@pytest.mark.parametrize(
    ("text", "release"),
    [
        ("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)", "7.2"),
        ("QEMU emulator version 10.0.13 (Debian 1:10.0.13+ds-0+deb13u1)", "10.0"),
        ("QEMU emulator version 11.1.3 (Debian 1:11.1.3+ds-1)", "11.1"),
        ("QEMU emulator version 11.0.90 (v11.1.0-rc0-12-gdeadbeef)", "11.0"),
    ],
)
def test_release_from_version(text, release):
    assert release_from_version(text) == release


def test_release_from_version_rejects_garbage():
    with pytest.raises(LabError):
        release_from_version("not qemu")


def test_release_key_orders_numerically():
    assert sorted(["11.1", "7.2", "10.0", "5.2"], key=release_key) == ["5.2", "7.2", "10.0", "11.1"]


def test_argv_of_a_user_build_is_the_binary():
    b = QemuBuild(release="9.9", version_text="QEMU emulator version 9.9.0", binary="/x/qemu")
    assert b.argv("-machine", "none") == ["/x/qemu", "-machine", "none"]


def test_argv_of_a_root_execs_qemu_in_a_private_mount_namespace(tmp_path, monkeypatch):
    monkeypatch.setenv("MIGCOMPAT_LAB_RUN_DIR", str(tmp_path / "run"))
    b = QemuBuild(release="7.2", version_text="v", suite="bookworm", root=tmp_path / "root")
    argv = b.argv("-S")
    assert argv[:5] == ["unshare", "--mount", "--propagation", "private", "--"]
    assert argv[-3:] == [str(tmp_path / "run"), "/usr/bin/qemu-system-x86_64", "-S"]
    assert "exec chroot" in argv[7]
    assert b.run_dir == tmp_path / "run" and b.run_dir.is_dir()


def _fake_qemu(tmp_path: Path, version: str) -> Path:
    exe = tmp_path / "qemu-system-x86_64"
    exe.write_text(f"#!/bin/sh\necho 'QEMU emulator version {version} (mine)'\n")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return exe


def test_user_build_registered_from_the_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("MIGCOMPAT_QEMU", raising=False)
    exe = _fake_qemu(tmp_path, "11.1.50")
    assert main(["lab", "provision", "--qemu", f"11.1+mine={exe}"]) == 0
    builds = lab.installed_builds()
    assert [(b.release, b.suite, b.binary) for b in builds] == [("11.1+mine", None, str(exe))]
    assert lab.find_build("11.1+mine") == builds[0]
    assert lab.find_build("7.2") is None
    assert main(["lab", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed[0]["version_text"] == "QEMU emulator version 11.1.50 (mine)"


def test_user_build_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("MIGCOMPAT_QEMU", f"9.2={_fake_qemu(tmp_path, '9.2.4')}")
    (b,) = lab.installed_builds()
    assert (b.release, b.version_text) == ("9.2", "QEMU emulator version 9.2.4 (mine)")
    assert lab.find_build("9") == b


def test_bad_qemu_option_is_a_user_error(capsys):
    assert main(["lab", "provision", "--qemu", "nopath"]) == 2
    assert "REL=PATH" in capsys.readouterr().err


def test_run_with_missing_build_is_a_user_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("MIGCOMPAT_QEMU", raising=False)
    assert main(["lab", "run", "--src", "7.2", "--dst", "7.2", "--scenario", "plain"]) == 2
    assert "no such build" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "kind", "idle", "frame", "trigger"),
    [
        ("plain", "plain", False, None, "postcopy"),
        ("plain-idle", "plain", True, None, "postcopy"),
        ("blackhole-idle", "blackhole", True, None, "postcopy"),
        ("cut", "cut", False, None, "postcopy"),
        ("recover", "recover", False, None, "postcopy"),
        ("inject:8", "inject", False, "00080000", "postcopy"),
        ("inject:7", "inject", False, "00070000", "postcopy"),
        ("inject:4:12", "inject", False, "0004000c" + "00" * 12, "postcopy"),
        ("inject:1:4:00000001@frames=3", "inject", False, "0001000400000001", "frames=3"),
        ("inject:0x8:2@t=1.5", "inject", False, "00080002" + "0000", "t=1.5"),
        ("inject:2:9:01", "inject", False, "0002000901", "postcopy"),  # a lying length
        ("inject:8-idle", "inject", True, "00080000", "postcopy"),
    ],
)
def test_parse_scenario(name, kind, idle, frame, trigger):
    sc = parse_scenario(name)
    assert (sc.kind, sc.idle, sc.trigger) == (kind, idle, trigger)
    assert (sc.frame.hex() if sc.frame is not None else None) == frame


@pytest.mark.parametrize("name", ["nope", "inject", "inject:x", "inject:70000", "plain:1"])
def test_parse_scenario_rejects(name):
    with pytest.raises(LabError):
        parse_scenario(name)


def test_newest_common_machine():
    a = [{"name": n} for n in ("pc-q35-7.1", "pc-q35-7.2", "pc-i440fx-7.2", "q35", "none")]
    b = [{"name": n} for n in ("pc-q35-7.2", "pc-q35-10.0", "pc-i440fx-10.0")]
    assert newest_common_machine(a, b) == "pc-q35-7.2"
    assert newest_common_machine(b) == "pc-q35-10.0"
    c = [{"name": "pc-i440fx-7.2"}]
    assert newest_common_machine(a, c) == "pc-i440fx-7.2"
    with pytest.raises(LabError):
        newest_common_machine([{"name": "pc-q35-1.0"}], [{"name": "pc-q35-2.0"}])


@pytest.mark.parametrize(
    ("name", "suite"),
    [("7.2", "bookworm"), ("10.0", "trixie"), ("11", "sid"), ("11.x", "sid"), ("11.1", "sid"),
     ("5.2", "bullseye"), ("sid", "sid"), ("bookworm", "bookworm")],
)  # fmt: skip
def test_suite_for(name, suite):
    from migcompat.lab.provision import suite_for

    assert suite_for(name) == suite


def test_suite_for_unknown_release_points_at_own_builds():
    from migcompat.lab.provision import suite_for

    with pytest.raises(LabError, match="--qemu REL=/path"):
        suite_for("9.2")


def test_pool_404_is_reported_as_such():
    from migcompat.lab.provision import _apt_failure

    tail = "Err:1 http://deb.debian.org/debian sid/main amd64 qemu-system-x86 1:11.1.3+ds-1\n"
    tail += "  404  Not Found"
    assert "404 Not Found" in str(_apt_failure("sid", tail))
    assert "404" not in _apt_failure("sid", "E: Unable to locate package").message


def test_marker_makes_a_root_count(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("MIGCOMPAT_QEMU", raising=False)
    root = tmp_path / "migcompat" / "roots" / "trixie"
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "usr" / "bin" / "qemu-system-x86_64").write_text("")
    assert lab.installed_builds() == []  # no marker yet: an unfinished root is never used
    version = "QEMU emulator version 10.0.13 (Debian 1:10.0.13+ds-0+deb13u1)"
    (root / ".migcompat-root.json").write_text(
        json.dumps({"suite": "trixie", "version_text": version})
    )
    (b,) = lab.installed_builds()
    assert (b.release, b.suite, b.root) == ("10.0", "trixie", root)


def test_a_stalled_run_is_torn_down_and_reported(monkeypatch, tmp_path):
    """The overall budget fires even when every step waits (a stalled proxy).

    It is a bug report, not a silent retry: the state is dumped, then the run torn down.
    """
    import asyncio

    import pytest

    from migcompat.lab import LabStalled, QemuBuild, runner

    async def stall(self):  # every step waits forever
        await asyncio.sleep(3600)

    monkeypatch.setenv("MIGCOMPAT_LAB_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setattr(runner._Run, "steps", stall)
    build = QemuBuild(release="10.0", version_text="QEMU emulator version 10.0.13", suite=None,
                      binary="/nonexistent", root=None, package_version=None)  # fmt: skip
    with pytest.raises(LabStalled, match="no result within") as info:
        asyncio.run(runner.run_scenario_async(build, build, "plain", timeout=-40, observe=-79.9,
                                              outdir=tmp_path / "out"))  # fmt: skip
    report = json.loads((tmp_path / "out" / "stall-report.json").read_text())
    assert str(tmp_path / "out" / "stall-report.json") in str(info.value)
    assert any("stall" in t["coro"] or "sleep" in " ".join(t["stack"]) for t in report["tasks"])
    record = json.loads((tmp_path / "out" / "record.json").read_text())  # torn down, recorded
    assert record["files"]["stall_report"] == str(tmp_path / "out" / "stall-report.json")
