"""An 11.1 source's SWITCHOVER_ACK count depends on the capability and the machine type (real QEMU).

Measured on Debian's 11.1.3 (11.1 → 11.1, one SWITCHOVER_ACK injected once postcopy is
active): with ``switchover-ack`` off, ``pc-q35-11.1`` still counts (the injected ACK
underflows) while ``pc-q35-10.0`` and ``pc-q35-7.2`` do not (the migration completes);
with it on, ``pc-q35-10.0`` takes the destination's own legacy ACK and fails on the
injected one. Each case also checks that the model, given the same context
(``switchover_acks_expected``), reads the recorded ``rp.bin`` the same way.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from migcompat.lab import LabStalled, find_build, provision_hint
from migcompat.lab.runner import run_scenario
from migcompat.protocol import Reader, RemoteViolation

pytestmark = pytest.mark.qemu

UNDERFLOW = "Switchover ack pending num underflowed"

CASES = [
    # machine, capability on, what the 11.1.3 source did
    ("pc-q35-11.1", False, "failed"),
    ("pc-q35-10.0", False, "completed"),
    ("pc-q35-7.2", False, "completed"),
    ("pc-q35-10.0", True, "failed"),
    ("pc-q35-11.1", True, "failed"),
]


def _build_11_1():
    b = find_build("11.1")
    if b is None:
        pytest.skip(f"QEMU 11.1 not provisioned: {provision_hint('11.1')}")
    return b


@pytest.mark.parametrize(("machine", "capability", "status"), CASES, ids=str)
def test_11_1_counts_acks_by_capability_and_machine(
    tmp_path: Path, machine: str, capability: bool, status: str
) -> None:
    build = _build_11_1()
    without = frozenset() if capability else frozenset({"switchover-ack"})
    kw = {"machine": machine, "outdir": tmp_path, "without_capabilities": without}
    try:
        rec = run_scenario(build, build, "inject:7", **kw)
    except LabStalled:
        rec = run_scenario(build, build, "inject:7", **kw)
    assert rec.machine == machine
    assert ("switchover-ack" in rec.capabilities) is capability
    assert rec.proxy["injections"], "the frame was not injected"
    assert rec.status_sequence("src")[-1] == status
    if status == "failed":
        assert rec.error_desc.get("src") == UNDERFLOW
    # The model, told the same context, reads the recorded return path the same way.
    reader = Reader("11.1", machine=machine, switchover_ack_capability=capability)
    reader.receive_data((tmp_path / "rp.bin").read_bytes())
    reader.receive_data(b"")
    try:
        list(reader.events())
    except RemoteViolation as exc:
        assert status == "failed" and exc.qemu_error == UNDERFLOW
        assert exc.offset == rec.proxy["injections"][0]["src_offset"]
    else:
        assert status == "completed"
