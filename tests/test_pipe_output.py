"""Output that survives a pipe (issue 14): the README's commands with stdout a pipe and
``COLUMNS=60`` keep every QEMU text, URI, cell id, property and driver name on one line,
whole, and print no table borders.

Each command runs as a user runs it (``python -m migcompat`` in a subprocess, stdout a pipe);
the tokens are ones the output is known to hold, longer than 60 columns where possible.
``lab provision|run``, ``matrix run`` and ``capture`` are left out: they need real QEMU or
are another module's (``capture``); ``lab list`` is in (it may list no build).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RP = str(ROOT / "fixtures" / "captures" / "inject-8-10.0" / "rp.bin")

CASES = [
    (
        ["check", RP, "--against", "all"],
        [
            "RP: Received invalid message 0x0008 length 0x0000",
            "Received invalid message 0x0008 length 0x0000",
        ],
    ),
    (
        ["check", RP, "--against", "7.2,10.0,11.1", "--no-record"],
        [
            "RP: Received invalid message 0x0007 length 0x0000",
            "Switchover ack pending num underflowed",
            "--machine pc-q35-11.0 --capabilities switchover-ack",
        ],
    ),
    (["decode", RP, "--source", "7.2"], ["RP: Received invalid message 0x0007 length 0x0000"]),
    (["decode", RP, "--source", "11.1+keepalive", "--json"], ['"name":"MIG_RP_MSG_KEEPALIVE"']),
    (
        ["catalog", "--release", "7.2", "--errors"],
        [
            "RP: Received '%s' message (0x%04x) withincorrect length %d expecting %zu",
            "ram_dirty_bitmap_reload: read bitmap failed for ramblock '%s': %d "
            "(size 0x%lx, got: 0x%lx)",
        ],
    ),
    (
        ["catalog", "--diff", "7.2", "11.1+keepalive"],
        ["'MIG_RP_MSG_REQ_PAGES request overrun, start=%lx len=%lx blocklen=%lx'"],
    ),
    (["catalog", "--commands"], ["MIG_CMD_POSTCOPY_RAM_DISCARD"]),
    (
        ["release", "QEMU emulator version 11.1.3 (Debian 1:11.1.3+ds-1)"],
        ["'QEMU emulator version 11.1.3 (Debian 1:11.1.3+ds-1)'"],
    ),
    (
        [
            "keepalive",
            "--source",
            "10.0",
            "--destination",
            "11.1",
            "--machine",
            "pc-q35-10.0",
            "--proposal",
            "keepalive",
        ],
        [
            "tcp:0.0.0.0:4444,keep-alive=on,keep-alive-idle=5,keep-alive-interval=2,"
            "keep-alive-count=3",
            "postcopy-rp-keepalive-period",
        ],
    ),
    (
        ["machine", "show", "pc-q35-7.2", "--release", "10.0", "--driver", "migration"],
        ["multifd-clean-tls-termination", "multifd-flush-after-each-section"],
    ),
    (
        ["machine", "diff", "pc-q35-9.2", "pc-q35-10.0", "--release", "10.0"],
        [
            "backcompat-pauth-default-use-qarma5",
            "virtio-balloon-pci-non-transitional",
            "multifd-clean-tls-termination",
        ],
    ),
    (["machine", "list", "--release", "10.0"], ["hw/i386/pc_q35.c"]),
    (
        ["matrix", "predict", "--releases", "7.2,10.0,11.1"],
        [
            "7.2->11.1/pc-q35-7.2/keepalive-proposal",
            "10.0->10.0/pc-q35-10.0/switchover-ack",
            "Received invalid message 0x0008 length 0x0000",
        ],
    ),
    (
        ["matrix", "predict", "--releases", "7.2,10.0,11.1", "--markdown"],
        ["7.2->11.1/pc-q35-7.2/keepalive-proposal"],
    ),
    (
        ["partition", "--source", "10.0", "--destination", "11.1", "--strategy", "tcp:5,2,3"],
        ["keep-alive 5 s idle + 3 probes × 2 s = 11 s after the last segment received"],
    ),
    (["lab", "list"], ["QEMU builds for the lab"]),
    (
        ["fuzz", "--source", "11.1", "--overlay", "keepalive", "--examples", "5", "--seed", "1"],
        ["fuzzing the 11.1+keepalive source model (seed 1)", "predicted-streams"],
    ),
]

BORDERS = set("┏┓┗┛┃━│─┼┡┩╇╈")


@pytest.mark.parametrize(("argv", "tokens"), CASES, ids=lambda v: " ".join(v)[:50])
def test_readme_command_survives_a_pipe(argv: list[str], tokens: list[str], tmp_path: Path) -> None:
    env = {**os.environ, "COLUMNS": "60", "XDG_CACHE_HOME": os.environ.get("XDG_CACHE_HOME", "")}
    if argv[0] == "fuzz":
        argv = [*argv, "--fixtures", str(tmp_path / "fuzz")]
        env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    if not env["XDG_CACHE_HOME"]:
        env.pop("XDG_CACHE_HOME")
    proc = subprocess.run(
        [sys.executable, "-m", "migcompat", *argv],
        capture_output=True, text=True, env=env, cwd=tmp_path, check=False, timeout=600,
    )  # fmt: skip
    assert proc.returncode in (0, 1), proc.stderr
    lines = proc.stdout.splitlines()
    for token in tokens:
        assert any(token in line for line in lines), f"{token!r} not whole on one line"
    assert not BORDERS & set(proc.stdout), "a table was drawn into a pipe"
    assert not any(line.rstrip().endswith("…") for line in lines), "a cell was cut"
    assert not list(tmp_path.glob(".hypothesis")), "hypothesis wrote into the cwd"


def test_format_table_on_request_keeps_whole_cells(tmp_path: Path) -> None:
    """``--format table`` in a pipe: a table, as wide as its unwrappable cells need."""
    proc = subprocess.run(
        [sys.executable, "-m", "migcompat", "machine", "diff", "pc-q35-9.2", "pc-q35-10.0",
         "--release", "10.0", "--format", "table"],
        capture_output=True, text=True, env={**os.environ, "COLUMNS": "60"}, check=True,
    )  # fmt: skip
    assert "┃" in proc.stdout
    line = next(x for x in proc.stdout.splitlines() if "virtio-balloon-pci-non-transitional" in x)
    assert "backcompat-pauth-default-use-qarma5" in proc.stdout
    assert len(line) > 60
