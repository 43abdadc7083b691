"""The lab stall (about 1 run in 60–130 never returned), pinned at its cause.

Cause: Python 3.11's ``asyncio.wait_for`` drops a cancellation that arrives after the awaited
call finished but before the caller resumed (cpython gh-86296, fixed in 3.12). The runner's
status poller calls ``query-migrate`` through ``wait_for`` ten times a second; when the run
ended, ``poller.cancel()`` landed in that window about once in a hundred runs, the poller went
on polling, and ``run()`` waited for it forever before tearing anything down (the proxy idle,
both QEMUs alive). The lab now bounds awaits with ``asyncio.timeout`` (which counts cancels)
and stops its background loops by a flag as well as by ``cancel()``.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from migcompat.lab.builds import QemuBuild
from migcompat.lab.qemu import LabState, QemuInstance
from migcompat.lab.runner import QmpPair


class _FakeQMP:
    """Stands in for ``qemu.qmp.QMPClient``: each ``execute`` waits for the test to answer."""

    def __init__(self) -> None:
        self.pending: list[asyncio.Future[Any]] = []

    async def execute(self, cmd: str, args: Any = None) -> Any:
        fut = asyncio.get_running_loop().create_future()
        self.pending.append(fut)
        return await fut

    async def disconnect(self) -> None:
        pass


class _Rec:
    def __init__(self) -> None:
        self.statuses: dict[str, list[dict[str, Any]]] = {}
        self.error_desc: dict[str, str] = {}
        self.steps: list[dict[str, Any]] = []


def _pair(tmp_path: Path) -> tuple[QmpPair, _FakeQMP]:
    build = QemuBuild(release="10.0", version_text="QEMU emulator version 10.0.0", binary="/x")
    qmp = _FakeQMP()
    pair = QmpPair()
    insts = []
    for name in ("src", "dst"):
        inst = QemuInstance(build, name, tmp_path, [])
        inst._qmp = qmp  # type: ignore[assignment]
        inst.state = LabState.RUNNING
        insts.append(inst)
    pair.src, pair.dst = insts
    pair.rec, pair.status, pair.clock = _Rec(), None, time.monotonic()
    pair.last = {"src": None, "dst": None}
    return pair, qmp


@pytest.mark.parametrize("ticks", range(8))
def test_the_status_poller_stops_when_cancelled_just_as_a_reply_lands(tmp_path, ticks):
    """The reproduction: answer a poll's QMP call, let ``ticks`` loop steps pass, cancel.

    Before the fix, ``ticks`` 1 and 2 fell in ``wait_for``'s window: the cancel was dropped
    and the poller polled on (this test then failed on its 1 s bound).
    """

    async def main() -> bool:
        pair, qmp = _pair(tmp_path)
        poller = asyncio.create_task(pair.poll())
        while not qmp.pending:
            await asyncio.sleep(0)
        qmp.pending[-1].set_result({"status": "active"})
        for _ in range(ticks):
            await asyncio.sleep(0)
        poller.cancel()
        done, _ = await asyncio.wait({poller}, timeout=1.0)
        if not done:  # the old behaviour: still polling; end it for good and report
            pair.stop_polling()
            for fut in qmp.pending:
                if not fut.done():
                    fut.set_result({})
            await asyncio.wait({poller}, timeout=1.0)
        return bool(done)

    assert asyncio.run(main()), f"the poller ignored a cancel {ticks} loop steps after a reply"


def test_the_poller_also_stops_by_its_flag(tmp_path):
    async def main() -> list[str]:
        pair, qmp = _pair(tmp_path)
        poller = asyncio.create_task(pair.poll())
        answered = 0
        while answered < 6:
            if qmp.pending and not qmp.pending[-1].done():
                qmp.pending[-1].set_result({"status": "completed"})
                answered += 1
            await asyncio.sleep(0.01)
        pair.stop_polling()
        for fut in qmp.pending:
            if not fut.done():
                fut.set_result({"status": "completed"})
        await asyncio.wait_for(poller, 2)
        return [s["status"] for s in pair.rec.statuses.get("src", [])]

    assert asyncio.run(main()) == ["completed"]


def test_try_execute_passes_an_outer_cancel_on(tmp_path):
    """A cancel that arrives as the reply lands is raised, never turned into a result."""

    async def main() -> list[str]:
        pair, qmp = _pair(tmp_path)
        outcomes = []
        for ticks in range(6):
            task = asyncio.create_task(pair.src.try_execute("query-status"))
            while not qmp.pending or qmp.pending[-1].done():
                await asyncio.sleep(0)
            qmp.pending[-1].set_result({"status": "running"})
            for _ in range(ticks):
                await asyncio.sleep(0)
            task.cancel()
            await asyncio.wait({task}, timeout=1)
            outcomes.append("cancelled" if task.cancelled() else f"result {task.result()}")
        return outcomes

    outcomes = asyncio.run(main())
    # either the call finished before the cancel (a result) or the cancel won: never both
    assert outcomes[0] == "cancelled"
    assert all(o in ("cancelled", "result {'status': 'running'}") for o in outcomes)
