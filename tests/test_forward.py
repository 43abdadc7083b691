"""ForwardReader: the forward stream walked three ways, PACKAGED, gaps, per-release tables."""

from __future__ import annotations

import struct

import pytest

from migcompat.protocol import (
    NEED_DATA,
    STOPPED,
    ForwardCommand,
    ForwardEnd,
    ForwardReader,
    ForwardResync,
    ForwardStop,
    RamBlocks,
    RamPage,
    RemoteViolation,
    SectionHeader,
    StreamHeader,
    VmEof,
    known_releases,
    stream_catalog,
)
from tests.capture.builders import (
    command,
    device_full,
    header,
    packaged,
    ping,
    ram_pages,
    ram_start,
)

REL = "10.0"


def stream(rel: str = REL) -> bytes:
    return (
        header()
        + command(rel, "OPEN_RETURN_PATH")
        + ping(rel, 1)
        + command(rel, "POSTCOPY_ADVISE", struct.pack(">QQ", 4096, 4096))
        + ram_start()
        + ram_pages(range(0, 3 * 4096, 4096))
        + ping(rel, 2)
        + packaged(
            rel,
            command(rel, "POSTCOPY_LISTEN")
            + device_full(2, "timer")
            + device_full(3, "apic", b"\x7e\x00\x08" * 5)
            + ping(rel, 3)
            + command(rel, "POSTCOPY_RUN"),
        )
        + ping(rel, 4)
        + ram_pages([0x40000])
        + b"\x00"
    )


def drain(r: ForwardReader) -> list:
    out = []
    while True:
        ev = r.next_event()
        if ev is NEED_DATA or ev is STOPPED:
            return out
        out.append(ev)


def decode(data: bytes, step: int | None = None, **kw: object) -> list:
    r = ForwardReader(REL, **kw)  # type: ignore[arg-type]
    out: list = []
    if step is None:
        r.receive_data(data)
        out += drain(r)
    else:
        for i in range(0, len(data), step):
            r.receive_data(data[i : i + step])
            out += drain(r)
    r.receive_data(b"")
    out += drain(r)
    return out


def names(evs: list) -> list[str]:
    return [e.short_name for e in evs if isinstance(e, ForwardCommand)]


def test_whole_stream() -> None:
    evs = decode(stream())
    assert isinstance(evs[0], StreamHeader)
    assert evs[1] == SectionHeader(
        release=evs[1].release, offset=8, size=16, kind="CONFIGURATION", section_id=0,
        idstr="pc-q35-10.0",
    )  # fmt: skip
    assert names(evs) == [
        "OPEN_RETURN_PATH", "PING", "POSTCOPY_ADVISE", "PING", "PACKAGED",
        "POSTCOPY_LISTEN", "PING", "POSTCOPY_RUN", "PING",
    ]  # fmt: skip
    pings = [e.fields["value"] for e in evs if isinstance(e, ForwardCommand) and e.cmd == 2]
    assert pings == [1, 2, 3, 4]
    blocks = next(e for e in evs if isinstance(e, RamBlocks))
    assert dict(blocks.blocks) == {"pc.ram": 1 << 20, "pc.bios": 0x40000}
    pages = [e for e in evs if isinstance(e, RamPage)]
    assert [(p.block, p.addr) for p in pages] == [
        ("pc.ram", 0), ("pc.ram", 4096), ("pc.ram", 8192), ("pc.ram", 0x40000),
    ]  # fmt: skip
    stop = next(e for e in evs if isinstance(e, ForwardStop))
    assert not stop.final and stop.idstr == "timer"
    assert "cannot delimit device section 2 'timer'" in stop.reason
    located = [e for e in evs if isinstance(e, ForwardCommand) and "located" in e.fields]
    assert [e.short_name for e in located] == ["PING", "POSTCOPY_RUN"]
    assert all(e.depth == 1 for e in located)
    assert isinstance(evs[-1], VmEof)  # nothing is read after QEMU_VM_EOF


@pytest.mark.parametrize("step", [1, 7, 4096])
def test_split_points_give_the_same_events(step: int) -> None:
    assert decode(stream(), step) == decode(stream())


def test_skip_packaged() -> None:
    evs = decode(stream(), descend_packaged=False)
    assert names(evs) == [
        "OPEN_RETURN_PATH", "PING", "POSTCOPY_ADVISE", "PING", "PACKAGED", "PING",
    ]  # fmt: skip
    assert not any(isinstance(e, ForwardStop) for e in evs)


def test_device_section_at_top_level_ends_decoding_without_guessing() -> None:
    data = header() + ram_start() + device_full(5, "virtio-net") + ping(REL, 9)
    evs = decode(data)
    stop = [e for e in evs if isinstance(e, ForwardStop)]
    assert len(stop) == 1 and stop[0].final
    assert stop[0].reason == ("cannot delimit device section 5 'virtio-net' (FULL) without vmdesc")
    assert 9 not in [e.fields.get("value") for e in evs if isinstance(e, ForwardCommand)]


def test_truncated_stream() -> None:
    data = stream()[:-100]
    evs = decode(data)
    assert isinstance(evs[-1], ForwardEnd) and evs[-1].truncated


@pytest.mark.parametrize("cut", [1, 3, 7])
def test_truncated_header(cut: int) -> None:
    evs = decode(header()[:cut])
    assert evs == [ForwardEnd(release=evs[0].release, offset=0, truncated=True, reason="truncated")]


def test_unknown_command_is_rejected() -> None:
    r = ForwardReader(REL)
    r.receive_data(header() + b"\x08" + struct.pack(">HH", 0x4242, 0))
    with pytest.raises(RemoteViolation, match="MIG_CMD 0x4242 unknown"):
        drain(r)
    with pytest.raises(RemoteViolation):  # raised again: the reader stays in error
        r.next_event()


def test_bad_fixed_length_is_rejected() -> None:
    r = ForwardReader(REL)
    r.receive_data(header() + command(REL, "PING", b"\x00\x01"))
    with pytest.raises(RemoteViolation, match=r"MIG_CMD_PING with length 2, 10\.0 expects 4"):
        drain(r)


def test_bad_magic() -> None:
    r = ForwardReader(REL)
    r.receive_data(b"XXXXXXXX")
    with pytest.raises(RemoteViolation, match="QEVM magic"):
        drain(r)


def test_command_table_follows_the_catalog() -> None:
    """SWITCHOVER_START exists from 10.0: a 9.2 reader rejects it (no hand-kept ids)."""
    sw = stream_catalog("10.0").by_id
    switch = next(i for i, m in sw.items() if m.short_name == "SWITCHOVER_START")
    data = header() + b"\x08" + struct.pack(">HH", switch, 0)
    assert names(decode(data)) == ["SWITCHOVER_START"]
    r = ForwardReader("9.2")
    r.receive_data(data)
    with pytest.raises(RemoteViolation, match="unknown"):
        drain(r)
    for rel in known_releases():
        cat = stream_catalog(rel)
        assert cat.magic == 0x5145564D


def test_resumed_stream_without_header() -> None:
    rel = REL
    data = (
        command(rel, "RECV_BITMAP", b"\x06pc.ram")
        + command(rel, "POSTCOPY_RESUME")
        + ram_pages([0x2000])
    )
    evs = decode(data, sections={1: "ram"})
    assert names(evs) == ["RECV_BITMAP", "POSTCOPY_RESUME"]
    assert evs[0].fields["block_name"] == "pc.ram"
    assert [e.addr for e in evs if isinstance(e, RamPage)] == [0x2000]
    # Without knowing section 1, its data must validate as page records (as after a gap)…
    assert decode(data) == evs
    # …else it stops with a note rather than guessing.
    other = command(rel, "POSTCOPY_RESUME") + b"\x02" + struct.pack(">I", 4) + bytes(range(64))
    evs = decode(other)
    assert isinstance(evs[-1], ForwardStop) and "earlier connection" in evs[-1].reason


def test_gap_resyncs_on_page_records() -> None:
    pages = ram_pages(range(0, 40 * 4096, 4096))
    data = header() + ram_start() + pages + ping(REL, 7) + b"\x00"
    cut = len(header() + ram_start()) + 3 * 4104 + 100
    r = ForwardReader(REL)
    r.receive_data(data[:cut])
    evs = drain(r)
    r.gap(5000)
    r.receive_data(data[cut + 5000 :])
    r.receive_data(b"")
    evs += drain(r)
    resync = [e for e in evs if isinstance(e, ForwardResync)]
    assert len(resync) == 1 and resync[0].section_id == 1
    after = [e for e in evs if isinstance(e, RamPage) and e.offset >= resync[0].offset]
    # Every page after the resync point is a real one, at its real offset.
    real = {header_off: addr for header_off, addr in _page_offsets(data)}
    assert after and all(real[p.offset] == p.addr for p in after)
    assert all(p.block == "pc.ram" for p in after)  # CONTINUE pages: only pc.ram fits
    assert [e.fields["value"] for e in evs if isinstance(e, ForwardCommand)] == [7]
    assert isinstance(evs[-1], VmEof)


def _page_offsets(data: bytes) -> list[tuple[int, int]]:
    r = ForwardReader(REL)
    r.receive_data(data)
    r.receive_data(b"")
    return [(e.offset, e.addr) for e in drain(r) if isinstance(e, RamPage)]


def test_gap_before_any_ram_section() -> None:
    """A capture that begins mid-stream: the RAM section is learnt from its footer."""
    r = ForwardReader(REL)
    r.receive_data(header())
    drain(r)
    r.gap(10)
    r.receive_data(b"\x00" * 100)
    r.receive_data(b"")
    evs = drain(r)
    assert isinstance(evs[-1], ForwardStop) and evs[-1].final
    data = ram_pages(range(0, 20 * 4096, 4096), section_id=7) + ping(REL, 5)
    data += ram_pages([0x1000], section_id=7)
    r = ForwardReader(REL)
    r.gap(0)
    r.receive_data(data[3000:])
    r.receive_data(b"")
    evs = drain(r)
    assert isinstance(evs[0], ForwardResync) and evs[0].section_id is None
    assert [e.fields["value"] for e in evs if isinstance(e, ForwardCommand)] == [5]
    assert [e.addr for e in evs if isinstance(e, RamPage)][-1] == 0x1000
    assert r.sections == {7: "ram"}


def test_gap_with_no_resync_point() -> None:
    r = ForwardReader(REL)
    r.receive_data(header() + ram_start())
    drain(r)
    r.gap(10)
    r.receive_data(bytes(range(256)) * 300)
    r.receive_data(b"")
    evs = drain(r)
    assert isinstance(evs[-1], ForwardStop) and "no re-sync point" in evs[-1].reason


def test_preempt_channel() -> None:
    body = struct.pack(">Q", 0x3000 | 0x08) + b"\x06pc.ram" + b"\x01" * 4096
    body += struct.pack(">Q", 0x4000 | 0x28) + b"\x02" * 4096 + struct.pack(">Q", 0x10)
    evs = decode(body, channel="preempt")
    assert [(e.block, e.addr) for e in evs if isinstance(e, RamPage)] == [
        ("pc.ram", 0x3000), ("pc.ram", 0x4000),
    ]  # fmt: skip
