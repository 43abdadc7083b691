"""`migcompat capture` text through a pipe at 60 columns: names and lists are never cut."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

FIXTURE = Path(__file__).parents[1].parent / "fixtures" / "captures" / "inject-8-11.1"


def test_timeline_keeps_ram_blocks_and_qemu_texts_whole() -> None:
    env = {**os.environ, "COLUMNS": "60"}
    proc = subprocess.run(
        [sys.executable, "-m", "migcompat", "capture", str(FIXTURE / "capture.pcap")],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr  # the source rejected the injected frame
    lines = proc.stdout.splitlines()
    ram = [ln for ln in lines if "RAM blocks" in ln]
    assert ram and all("…" not in ln for ln in ram)
    # every RAMBlock of the lab's q35 guest, the last one included
    assert "'/rom@etc/acpi/rsdp': 4096}" in ram[0]
    assert any("Received invalid message 0x0008 length 0x0000" in ln for ln in lines)
