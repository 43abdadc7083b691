"""The lab's QMP driver keeps the whole exchange with times (marker ``qemu``)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from migcompat.lab import LabError, QemuInstance, installed_builds

pytestmark = pytest.mark.qemu


def test_qmp_log_has_greeting_commands_replies_errors_in_order(tmp_path: Path) -> None:
    builds = installed_builds()
    if not builds:
        pytest.skip("no QEMU provisioned: run `migcompat lab provision` (see README)")
    build = builds[-1]
    workdir = build.run_dir / f"qmplog-{tmp_path.name[-12:]}"
    workdir.mkdir(parents=True, exist_ok=True)

    async def go() -> QemuInstance:
        inst = QemuInstance(
            build, "qmplog", workdir, ["-machine", "none", "-nodefaults", "-display", "none", "-S"]
        )
        await inst.start()
        try:
            await inst.execute("query-version")
            with pytest.raises(LabError):
                await inst.execute(
                    "migrate-set-capabilities",
                    {"capabilities": [{"capability": "no-such", "state": True}]},
                )
        finally:
            await inst.stop()
        return inst

    inst = asyncio.run(go())
    log = inst.qmp_log
    json.dumps(log)  # JSON-able as recorded
    assert "greeting" in log[0] and log[0]["greeting"]["QMP"]["version"]["qemu"]["major"] >= 5
    sends = [e["execute"] for e in log if e["dir"] == "send"]
    assert sends == ["query-version", "migrate-set-capabilities", "quit"]
    version = next(e for e in log if e.get("execute") == "query-version" and e["dir"] == "recv")
    assert (
        version["return"]["qemu"]["major"] == log[0]["greeting"]["QMP"]["version"]["qemu"]["major"]
    )
    err = next(
        e for e in log if e.get("execute") == "migrate-set-capabilities" and e["dir"] == "recv"
    )
    assert err["error"]["class"] == "GenericError" and "no-such" in err["error"]["desc"]
    times = [e["t"] for e in log]
    assert times == sorted(times)
    assert "-qmp" in inst.qemu_args and inst.argv[-len(inst.qemu_args) :] == inst.qemu_args
