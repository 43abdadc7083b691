"""A real postcopy package (QEMU 10.0, pc-q35-10.0): every device section named and delimited.

``fixtures/forward/postcopy-packaged-10.0``: the ``MIG_CMD_PACKAGED`` unit of a lab run's
forward stream (no vmdesc in postcopy) and ``-dump-vmstate`` of the source binary.
"""

from __future__ import annotations

import gzip
import itertools
import json
from pathlib import Path

from migcompat.protocol import (
    DeviceState,
    ForwardCommand,
    ForwardReader,
    ForwardStop,
    parse_dump_vmstate,
)

FIX = Path(__file__).resolve().parent.parent / "fixtures" / "forward" / "postcopy-packaged-10.0"


def _decode(**kw: object) -> list:
    meta = json.loads((FIX / "metadata.json").read_text())
    reader = ForwardReader("10.0", **kw)  # type: ignore[arg-type]
    reader.receive_data((FIX / "fwd-packaged.bin").read_bytes())
    reader.receive_data(b"")
    evs = list(reader.events())
    assert evs[0].offset == 0 and meta["machine"] == "pc-q35-10.0"
    return evs


def test_every_packaged_device_section_delimited_with_the_dump() -> None:
    dump = parse_dump_vmstate(gzip.decompress((FIX / "dump-vmstate.json.gz").read_bytes()))
    evs = _decode(dump=dump)
    assert not [e for e in evs if isinstance(e, ForwardStop)]
    dev = [e for e in evs if isinstance(e, DeviceState)]
    assert len(dev) == 30 and {d.delimited_by for d in dev} == {"footer"}
    assert [d.idstr for d in dev[:3]] == ["timer", "cpu_common", "cpu"]
    assert dev[-1].idstr == "globalstate"
    # Sections of qdev devices carry their -dump-vmstate type; timer, cpu … are not qdev.
    typed = {d.idstr: d.device_type for d in dev if d.device_type}
    assert typed["0000:00:1f.2/ich9_ahci"] == "ich9-ahci" and typed["serial"] == "isa-serial"
    untyped = [d.idstr for d in dev if not d.device_type]
    assert untyped == [
        "timer", "cpu_common", "cpu", "apic", "PCIBUS", "i2c_bus", "acpi_build", "globalstate",
    ]  # fmt: skip
    # Units tile the body: each device's data ends at its footer, the next unit follows.
    for a, b in itertools.pairwise(dev):
        assert a.offset + a.size < b.offset
    cmds = [
        (e.short_name, e.depth, "located" in e.fields) for e in evs if isinstance(e, ForwardCommand)
    ]
    assert cmds == [
        ("PACKAGED", 0, False), ("POSTCOPY_LISTEN", 1, False), ("PING", 1, False),
        ("POSTCOPY_RUN", 1, False),
    ]  # fmt: skip


def test_without_the_dump_the_package_stops_at_its_first_device() -> None:
    evs = _decode()
    stop = [e for e in evs if isinstance(e, ForwardStop)]
    assert len(stop) == 1 and not stop[0].final and stop[0].idstr == "timer"
    assert not [e for e in evs if isinstance(e, DeviceState)]
    located = [e.short_name for e in evs if isinstance(e, ForwardCommand) and "located" in e.fields]
    assert located == ["PING", "POSTCOPY_RUN"]
