"""``migcompat keepalive --compat-patch``: the one-hunk compat patch, from a tree's text."""

from __future__ import annotations

import subprocess

import pytest

from migcompat.__main__ import main
from migcompat.compat import compat_patch
from migcompat.protocol import InputError

# A machine.c shaped like QEMU's (our own text: arrays, entries, the _len lines).
MACHINE_C = """\
#include "qemu/osdep.h"

GlobalProperty hw_compat_10_0[] = {
  { "x-dev", "x-prop", "on" },
};
const size_t hw_compat_10_0_len = G_N_ELEMENTS(hw_compat_10_0);

GlobalProperty hw_compat_9_2[] = {
    { "migration", "send-switchover-start", "off"},
    { "virtio-net", "x", "off" },
};
const size_t hw_compat_9_2_len = G_N_ELEMENTS(hw_compat_9_2);
"""

ENTRY = '{ "migration", "postcopy-rp-keepalive-period", "0" },'


def test_one_hunk_in_the_array_before_the_release():
    text = compat_patch(MACHINE_C, "10.0.13")
    assert text.count("\n@@ ") == 1
    added = [ln for ln in text.splitlines() if ln.startswith("+") and not ln.startswith("+++")]
    assert added == [f"+    {ENTRY}"]  # the array's own indentation
    # 11.1: hw_compat_11_0 is not in this text
    with pytest.raises(InputError, match="hw_compat_11_0"):
        compat_patch(MACHINE_C, "11.1")
    # 10.1 goes in hw_compat_10_0 with that array's 2-space indentation
    assert f"+  {ENTRY}" in compat_patch(MACHINE_C, "10.1")


def test_the_patch_applies_and_puts_the_entry_inside_the_array(tmp_path):
    (tmp_path / "hw/core").mkdir(parents=True)
    (tmp_path / "hw/core/machine.c").write_text(MACHINE_C)
    (tmp_path / "p.patch").write_text(compat_patch(MACHINE_C, "10.0"))
    subprocess.run(
        ["patch", "-p1", "-i", str(tmp_path / "p.patch"), "-d", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    body = (tmp_path / "hw/core/machine.c").read_text()
    array = body.split("hw_compat_9_2[] = {", 1)[1].split("};", 1)[0]
    assert ENTRY in array
    with pytest.raises(InputError, match="already has"):
        compat_patch(body, "10.0")


def test_cli_writes_the_patch_from_a_source_tree(tmp_path, capsys):
    (tmp_path / "hw/core").mkdir(parents=True)
    (tmp_path / "hw/core/machine.c").write_text(MACHINE_C)
    args = ["keepalive", "--compat-patch", "--release", "10.0", "--source-tree", str(tmp_path)]
    assert main(args) == 0
    assert capsys.readouterr().out == compat_patch(MACHINE_C, "10.0")
    assert (
        main(
            [
                "keepalive",
                "--compat-patch",
                "--release",
                "10.0",
                "--source-tree",
                str(tmp_path / "nope"),
            ]
        )
        == 2
    )
    assert "cannot read" in capsys.readouterr().err
    assert main(["keepalive", "--compat-patch"]) == 2
    assert "--release" in capsys.readouterr().err
