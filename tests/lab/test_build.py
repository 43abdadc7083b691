"""``migcompat lab build``: the failing paths, the cache and the registry (no real build).

The steps that need a Debian root and a compiler (build root, ``apt-get source``,
``dpkg-source -x``, configure, ninja) are replaced by small functions on a tiny tree; what is
checked is the build's own logic: inputs refused before anything runs, a patch that does not
apply named with its hunk, nothing registered when a build fails or is interrupted, a cached
build not rebuilt, lab builds found by name (not by suite) and listed with their patches.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import migcompat.lab.build as lb
from migcompat.__main__ import main
from migcompat.lab import find_build, installed_builds
from migcompat.lab.build import PatchError, apply_patches, build_name, read_patch
from migcompat.lab.builds import lab_builds_file

TREE = {"migration/migration.c": "int a;\nint b;\nint c;\n", "README": "qemu\n"}

GOOD = """\
diff --git a/migration/migration.c b/migration/migration.c
--- a/migration/migration.c
+++ b/migration/migration.c
@@ -1,3 +1,4 @@ static int x
 int a;
 int b;
+int keepalive;
 int c;
"""

BAD = """\
diff --git a/migration/migration.c b/migration/migration.c
--- a/migration/migration.c
+++ b/migration/migration.c
@@ -1,3 +1,4 @@ static int x
 int a;
 int b;
+int keepalive;
 int c;
@@ -40,3 +41,4 @@ void migrate_send_rp_message(void)
 nothing
 like
+this
 here
"""


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private cache with a provisioned-looking trixie marker (no QEMU in it)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("MIGCOMPAT_QEMU", raising=False)
    root = tmp_path / "cache/migcompat/roots/trixie"
    root.mkdir(parents=True)
    (root / ".migcompat-root.json").write_text(
        json.dumps(
            {
                "suite": "trixie",
                "version_text": "QEMU emulator version 10.0.13 (Debian x)",
                "package_version": "1:10.0.13+ds-0+deb13u1",
            }
        )
    )
    return tmp_path / "cache/migcompat"


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def _tree(base: Path) -> Path:
    for rel, text in TREE.items():
        (base / rel).parent.mkdir(parents=True, exist_ok=True)
        (base / rel).write_text(text)
    return base


@pytest.fixture
def fake_steps(cache, tmp_path, monkeypatch):
    """Replace the root/compiler steps: the 'root' is a temp dir, the 'source' a tiny tree,
    configure+ninja write a shell script that prints a QEMU banner."""
    root = tmp_path / "buildroot"
    root.mkdir()
    calls: list[str] = []

    def build_root(suite, mirror, progress):
        calls.append("build_root")
        return root

    def fetch(r, pkgver, log, progress):
        calls.append("fetch")
        return Path("/src/qemu_10.0.13+ds-0+deb13u1.dsc")

    def extract(r, dsc, dest, log, progress):
        calls.append("extract")
        _tree(r / dest.relative_to("/"))

    def run(cmd, log, progress, prefix, keep=lambda _l: True):
        calls.append(prefix)
        if prefix == "ninja":
            bdir = root / cmd[cmd.index("-C") + 1].lstrip("/")
            exe = bdir / "qemu-system-x86_64"
            exe.write_text("#!/bin/sh\necho 'QEMU emulator version 10.0.13 (patched)'\n")
            exe.chmod(0o755)
        elif prefix == "configure":
            work = cmd[-1].split("&&")[0].split()[-1]  # mkdir -p …/src/b
            (root / work.lstrip("/")).mkdir(parents=True, exist_ok=True)
        return 0, ""

    def probe(r, binary):
        return "QEMU emulator version 10.0.13 (patched)"

    monkeypatch.setattr(lb, "_build_root", build_root)
    monkeypatch.setattr(lb, "_fetch_source", fetch)
    monkeypatch.setattr(lb, "_extract_source", extract)
    monkeypatch.setattr(lb, "_run", run)
    monkeypatch.setattr(lb, "_probe", probe)
    return root, calls


# -- inputs refused before anything runs ------------------------------------------------


def test_unknown_suite_is_exit_2_and_registers_nothing(cache, capsys):
    assert main(["lab", "build", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert "nosuch" in err and "trixie" in err and "Traceback" not in err
    assert not lab_builds_file().exists()


def test_unprovisioned_suite_is_a_clear_error(cache, capsys):
    assert main(["lab", "build", "bookworm"]) == 2
    assert "migcompat lab provision bookworm" in capsys.readouterr().err
    assert not lab_builds_file().exists()


def test_missing_patch_is_exit_2_naming_the_path(cache, tmp_path, capsys):
    missing = tmp_path / "no-such.patch"
    assert main(["lab", "build", "trixie", "--patch", str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "cannot read" in err
    assert not lab_builds_file().exists()


def test_a_file_that_is_not_a_patch_is_refused(cache, tmp_path, capsys):
    notes = _write(tmp_path, "notes.patch", "just some text\n")
    assert main(["lab", "build", "trixie", "--patch", str(notes)]) == 2
    assert "not a unified diff" in capsys.readouterr().err


def test_bad_name_is_refused(cache, capsys):
    assert main(["lab", "build", "trixie", "--name", "a b/c"]) == 2
    assert "--name" in capsys.readouterr().err


# -- patches -------------------------------------------------------------------------------


def test_read_patch_lists_files_and_hunks(tmp_path):
    p = read_patch(_write(tmp_path, "keepalive-v1.patch", BAD))
    assert p.name == "keepalive-v1"
    assert p.files[0][0] == "migration/migration.c"
    assert p.hunk("migration/migration.c", 2).startswith("@@ -40,3 +41,4 @@")
    assert len(p.sha256) == 64


def test_build_name_from_version_and_patches(tmp_path):
    v1 = read_patch(_write(tmp_path, "keepalive-v1.patch", GOOD))
    v2 = read_patch(_write(tmp_path, "compat.diff", GOOD))
    assert build_name("1:10.0.13+ds-0+deb13u1", [v1]) == "10.0.13+keepalive-v1"
    assert build_name("1:10.0.13+ds-0+deb13u1", [v1, v2]) == "10.0.13+keepalive-v1+compat"


def test_apply_patches_in_order(tmp_path):
    tree = _tree(tmp_path / "tree")
    good = read_patch(_write(tmp_path, "good.patch", GOOD))
    apply_patches(tree, [good])
    assert "int keepalive;" in (tree / "migration/migration.c").read_text()


def test_a_patch_that_does_not_apply_names_file_and_hunk_and_leaves_the_tree(tmp_path):
    tree = _tree(tmp_path / "tree")
    bad = read_patch(_write(tmp_path, "bad.patch", BAD))
    with pytest.raises(PatchError) as info:
        apply_patches(tree, [bad], "qemu 1:10.0.13")
    msg = str(info.value)
    assert str(bad.path) in msg
    assert "migration/migration.c: hunk #2 (@@ -40,3 +41,4 @@" in msg
    assert "FAILED" in msg and "qemu 1:10.0.13" in msg
    # --dry-run first: hunk #1 was not applied, no .rej/.orig left behind
    assert (tree / "migration/migration.c").read_text() == TREE["migration/migration.c"]
    assert sorted(p.name for p in (tree / "migration").iterdir()) == ["migration.c"]


def test_a_second_patch_applying_twice_is_refused(tmp_path):
    tree = _tree(tmp_path / "tree")
    good = read_patch(_write(tmp_path, "good.patch", GOOD))
    with pytest.raises(PatchError, match="already applied"):
        apply_patches(tree, [good, good])


# -- the build's registry --------------------------------------------------------------


def test_failing_patch_exits_2_and_registers_nothing(fake_steps, tmp_path, capsys):
    root, calls = fake_steps
    bad = _write(tmp_path, "bad.patch", BAD)
    assert main(["lab", "build", "trixie", "--patch", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.patch" in err and "hunk #2" in err
    assert not lab_builds_file().exists()
    assert "configure" not in calls and "ninja" not in calls
    assert list((root / "build").iterdir()) == []  # the work dir is gone


def test_interrupted_build_registers_nothing(fake_steps, tmp_path, monkeypatch):
    root, _calls = fake_steps
    good = _write(tmp_path, "keepalive-v1.patch", GOOD)
    real_run = lb._run

    def interrupted(cmd, log, progress, prefix, keep=lambda _l: True):
        if prefix == "ninja":
            raise KeyboardInterrupt
        return real_run(cmd, log, progress, prefix, keep)

    monkeypatch.setattr(lb, "_run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        lb.build_qemu("trixie", [good])
    assert not lab_builds_file().exists()
    assert list((root / "build").iterdir()) == []
    assert not (root / "opt").exists()
    assert [b for b in installed_builds() if b.is_lab_build] == []


def test_build_registers_then_is_cached(fake_steps, tmp_path, capsys):
    root, calls = fake_steps
    good = _write(tmp_path, "keepalive-v1.patch", GOOD)
    assert main(["lab", "build", "trixie", "--patch", str(good), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["release"] == "10.0.13+keepalive-v1" and out["built"] is True
    assert out["patches"][0]["name"] == "keepalive-v1"
    b = find_build("10.0.13+keepalive-v1")
    assert b is not None and b.is_lab_build and b.suite == "trixie"
    assert (root / b.binary.lstrip("/")).exists()
    assert "int keepalive;" in (b.tree_path / "migration/migration.c").read_text()
    n = calls.count("ninja")
    # unchanged: not rebuilt
    assert main(["lab", "build", "trixie", "--patch", str(good), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["built"] is False
    assert calls.count("ninja") == n
    # the same contents under another file name: the same build (cache key = contents)
    other = _write(tmp_path, "other.patch", GOOD)
    assert main(["lab", "build", "trixie", "--patch", str(other), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["built"] is False
    # a changed patch is rebuilt
    good.write_text(GOOD.replace("keepalive", "keepalive2"))
    assert main(["lab", "build", "trixie", "--patch", str(good), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["built"] is True
    assert calls.count("ninja") == n + 1


def test_lab_builds_are_found_by_name_not_by_suite_or_major(
    fake_steps, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps table cells at 80 columns otherwise
    good = _write(tmp_path, "keepalive-v1.patch", GOOD)
    lb.build_qemu("trixie", [good])
    assert find_build("10.0.13+keepalive-v1") is not None
    assert find_build("trixie") is None  # no provisioned trixie binary in this cache
    assert find_build("10") is None
    assert main(["lab", "list"]) == 0
    out = capsys.readouterr().out
    assert "10.0.13+keepalive-v1" in out and "keepalive-v1" in out and "built" in out
    assert main(["lab", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [p["name"] for p in listed[-1]["patches"]] == ["keepalive-v1"]


_ENUM = """\
enum mig_rp_message_type {
    MIG_RP_MSG_INVALID = 0,  /* Must be 0 */
    MIG_RP_MSG_SHUT,         /* sibling will not send any more RP messages */
    MIG_RP_MSG_PONG,
    MIG_RP_MSG_REQ_PAGES_ID,
    MIG_RP_MSG_REQ_PAGES,
    MIG_RP_MSG_RECV_BITMAP,
    MIG_RP_MSG_RESUME_ACK,
    MIG_RP_MSG_SWITCHOVER_ACK,
%s
    MIG_RP_MSG_MAX
};
"""


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("", "10.0.13"),
        ("    MIG_RP_MSG_KEEPALIVE, /* new */\n", "10.0.13+keepalive"),
        ("    MIG_RP_MSG_SOMETHING_ELSE,\n", None),
    ],
)
def test_identify_protocol_from_the_trees_enum(tmp_path, extra, expected):
    (tmp_path / "migration").mkdir()
    (tmp_path / "migration/migration.c").write_text(_ENUM % extra)
    rel, why = lb.identify_protocol(tmp_path, "10.0.13")
    assert rel == expected
    assert ("MIG_RP_MSG_SOMETHING_ELSE" in why) if expected is None else ("MAX" in why)


def test_identify_protocol_without_a_tree(tmp_path):
    assert lb.identify_protocol(tmp_path, "10.0.13")[0] is None


_MACHINE_C = """\
GlobalProperty hw_compat_9_2[] = {
    { "migration", "send-switchover-start", "off"},
%s};
const size_t hw_compat_9_2_len = G_N_ELEMENTS(hw_compat_9_2);
"""


def test_identify_model_needs_the_overlays_compat_entry(tmp_path):
    (tmp_path / "hw/core").mkdir(parents=True)
    (tmp_path / "hw/core/machine.c").write_text(_MACHINE_C % "")
    model, why = lb.identify_model(tmp_path, "10.0.13+keepalive")
    assert model is None and "hw_compat_9_2" in why and "postcopy-rp-keepalive-period" in why
    entry = '    { "migration", "postcopy-rp-keepalive-period", "0" },\n'
    (tmp_path / "hw/core/machine.c").write_text(_MACHINE_C % entry)
    assert lb.identify_model(tmp_path, "10.0.13+keepalive")[0] == "10.0.13+keepalive"
    assert lb.identify_model(tmp_path, "10.0.13")[0] == "10.0.13"
    assert lb.identify_model(tmp_path, None)[0] is None


def test_matrix_predicts_a_lab_build_by_its_model(fake_steps, tmp_path, monkeypatch, capsys):
    """v2-like tree (KEEPALIVE in the enum, the compat entry in hw_compat_9_2): predicted as
    10.0.13+keepalive and found by that name; a v1-like tree (no entry) is refused."""
    entry = '    { "migration", "postcopy-rp-keepalive-period", "0" },\n'

    def extract(r, dsc, dest, log, progress, with_entry=True):
        base = r / dest.relative_to("/")
        (base / "migration").mkdir(parents=True)
        (base / "migration/migration.c").write_text(_ENUM % "    MIG_RP_MSG_KEEPALIVE,\n")
        (base / "hw/core").mkdir(parents=True)
        (base / "hw/core/machine.c").write_text(_MACHINE_C % (entry if with_entry else ""))
        (base / "README").write_text("qemu\n")

    monkeypatch.setattr(lb, "_extract_source", extract)
    good = _write(
        tmp_path, "keepalive-v2.patch", "--- a/README\n+++ b/README\n@@ -1 +1,2 @@\n qemu\n+more\n"
    )
    b, _ = lb.build_qemu("trixie", [good], name="10.0.13+keepalive-v2")
    assert (b.protocol_release, b.model) == ("10.0.13+keepalive", "10.0.13+keepalive")
    assert find_build("10.0.13+keepalive") == b  # the one build that models it
    assert (
        main(
            [
                "matrix",
                "predict",
                "--releases",
                "7.2,10.0.13+keepalive-v2",
                "--scenarios",
                "plain",
                "--json",
            ]
        )
        == 0
    )
    ids = {p["id"] for p in json.loads(capsys.readouterr().out)}
    assert "10.0.13+keepalive->7.2/pc-q35-7.2/plain" in ids

    monkeypatch.setattr(lb, "_extract_source", lambda *a, **k: extract(*a, **k, with_entry=False))
    lb.build_qemu("trixie", [good], name="10.0.13+keepalive-v1", rebuild=True)
    assert main(["matrix", "predict", "--releases", "7.2,10.0.13+keepalive-v1"]) == 2
    assert "lacks that overlay's compat entries" in capsys.readouterr().err
