"""The source-parser model: every message of every release, three ways (h11's ``tr``)."""

from __future__ import annotations

import struct

import pytest

from migcompat.protocol import (
    NEED_DATA,
    STOPPED,
    EndOfStream,
    Keepalive,
    Pong,
    RamBlock,
    RawMessage,
    Reader,
    RecvBitmap,
    RemoteViolation,
    ReqPages,
    ReqPagesId,
    Shut,
    build_frame,
    catalog,
    known_releases,
)

RELEASES = [
    *known_releases(),
    *(r.with_overlay("keepalive") for r in known_releases() if catalog(r).max == 8),
]
ENDING = catalog("10.0").recv_bitmap_ending

# One example of every message a release may have, by QEMU's table name.
EXAMPLES = {
    "SHUT": {"sibling_error": 0},
    "PONG": {"value": 0x42},
    "REQ_PAGES": {"start": 0x7FF000, "len": 4096},
    "REQ_PAGES_ID": {"start": 0x1000, "len": 8192, "idstr": "pc.ram"},
    "RECV_BITMAP": {"block_name": "pc.ram", "bitmap": bytes(range(24))},
    "RESUME_ACK": {"value": 1},
    "SWITCHOVER_ACK": {},
    "KEEPALIVE": {},
}


def cases() -> list[tuple[object, str]]:
    return [(r, m.short_name) for r in RELEASES for m in catalog(r).messages if m.id]


def decode_all(release: object, data: bytes, *, eof: bool = True) -> list[object]:
    r = Reader(release)  # type: ignore[arg-type]
    r.receive_data(data)
    if eof:
        r.receive_data(b"")
    return list(r.events())


@pytest.mark.parametrize(("release", "table"), cases(), ids=lambda x: str(x))
def test_every_message_three_ways(release: object, table: str) -> None:
    fields = EXAMPLES[table]
    data = build_frame(release, table, **fields)  # type: ignore[arg-type]
    # 1. whole (an 11.1+ source takes a SWITCHOVER_ACK only when a device asked for one,
    # a REQ_PAGES only after a REQ_PAGES_ID named a block: req_pages_block)
    r = Reader(release, switchover_acks_requested=1, req_pages_block="pc.ram")  # type: ignore[arg-type]
    r.receive_data(data)
    ev = r.next_event()
    assert ev.name == "MIG_RP_MSG_" + table  # type: ignore[union-attr]
    assert (ev.offset, ev.size) == (0, len(data))  # type: ignore[union-attr]
    for k, v in fields.items():
        assert getattr(ev, k) == v
    # 2. byte by byte: NEED_DATA until the last byte
    r2 = Reader(release, switchover_acks_requested=1, req_pages_block="pc.ram")  # type: ignore[arg-type]
    for i, b in enumerate(data):
        r2.receive_data(bytes([b]))
        got = r2.next_event()
        if i < len(data) - 1:
            assert got is NEED_DATA
    assert got == ev
    # 3. with trailing bytes: they stay buffered, untouched
    r3 = Reader(release, switchover_acks_requested=1, req_pages_block="pc.ram")  # type: ignore[arg-type]
    r3.receive_data(data + b"\x00\x02")
    assert r3.next_event() == ev
    if table == "SHUT":
        assert r3.next_event() is STOPPED
    else:
        assert r3.next_event() is NEED_DATA
        assert r3.buffered == 2


@pytest.mark.parametrize("release", RELEASES, ids=str)
def test_max_and_zero_rejected_with_the_release_text(release: object) -> None:
    cat = catalog(release)
    for t in (0, cat.max, cat.max + 1, 0xFFFF):
        with pytest.raises(RemoteViolation) as exc:
            decode_all(release, struct.pack(">HH", t, 0))
        assert exc.value.qemu_error == cat.format_error("invalid_type", t, 0)
        assert exc.value.offset == 0
        assert exc.value.stopped_at == 4


def test_exact_texts_old_and_new_style() -> None:
    # error_report with "RP: " up to 8.1, error_setg without from 8.2 (QEMU sources).
    frame = bytes.fromhex("00080000")
    for rel, text in [
        ("7.2", "RP: Received invalid message 0x0008 length 0x0000"),
        ("10.0", "Received invalid message 0x0008 length 0x0000"),
        ("11.1", "Received invalid message 0x0008 length 0x0000"),
    ]:
        with pytest.raises(RemoteViolation) as exc:
            decode_all(rel, frame)
        assert exc.value.qemu_error == text
    assert decode_all("11.1+keepalive", frame)[0] == Keepalive(
        release=catalog("11.1+keepalive").release, offset=0, type_id=8, length=0, size=4
    )


def test_variable_length_over_buffer_prints_size_t_minus_one() -> None:
    with pytest.raises(RemoteViolation) as exc:
        decode_all("10.0", struct.pack(">HH", 3, 513))
    assert exc.value.qemu_error == (
        "Received 'REQ_PAGES_ID' message (0x0003) withincorrect length 513 "
        "expecting 18446744073709551615"
    )


def test_wrong_fixed_length() -> None:
    with pytest.raises(RemoteViolation) as exc:
        decode_all("7.2", struct.pack(">HH", 2, 5) + bytes(5))
    assert exc.value.qemu_error == (
        "RP: Received 'PONG' message (0x0002) withincorrect length 5 expecting 4"
    )


def test_violation_is_sticky_and_nothing_after_it_is_read() -> None:
    r = Reader("10.0")
    good = build_frame("10.0", "PONG", value=1)
    r.receive_data(good + bytes.fromhex("00090000") + good)
    assert isinstance(r.next_event(), Pong)
    with pytest.raises(RemoteViolation) as first:
        r.next_event()
    with pytest.raises(RemoteViolation) as again:
        r.next_event()
    assert again.value is first.value
    assert first.value.offset == 8 and first.value.stopped_at == 12


def test_shut_stops_the_thread() -> None:
    data = build_frame("7.2", "SHUT", sibling_error=1) + build_frame("7.2", "PONG", value=3)
    r = Reader("7.2")
    r.receive_data(data)
    ev = r.next_event()
    assert isinstance(ev, Shut) and ev.sibling_error == 1
    assert r.next_event() is STOPPED
    assert r.offset == 8  # the PONG after it is never read
    assert catalog("7.2").format_error("shut_error", 1) == "RP: Sibling indicated error 1"


@pytest.mark.parametrize(
    ("length", "idlen", "expected"),
    [
        (0, None, 13),
        (12, None, 13),
        (13, 0, None),
        (13, 1, 14),
        (19, 6, None),
        (19, 5, 18),
        (268, 255, None),
    ],
)
def test_req_pages_id_length_rule(length: int, idlen: int | None, expected: int | None) -> None:
    payload = bytearray(length)
    if idlen is not None:
        payload[12] = idlen
    data = struct.pack(">HH", 3, length) + bytes(payload)
    if expected is None:
        (ev,) = [e for e in decode_all("10.0", data) if not isinstance(e, EndOfStream)]
        assert isinstance(ev, ReqPagesId) and len(ev.idstr) == idlen
    else:
        with pytest.raises(RemoteViolation) as exc:
            decode_all("10.0", data)
        assert exc.value.qemu_error == f"Req_Page_id with length {length} expecting {expected}"


def test_recv_bitmap_reads_stale_stack_bytes_like_qemu() -> None:
    # A REQ_PAGES_ID leaves "pc.ram" at buf[13..]; a RECV_BITMAP of length 1 whose
    # name byte says 20 makes QEMU read its name from those stale bytes.
    first = build_frame("10.0", "REQ_PAGES_ID", start=0, len=4096, idstr="pc.ram")
    lying = (
        struct.pack(">HHB", 5, 1, 20) + struct.pack(">Q", 8) + bytes(8) + struct.pack(">Q", ENDING)
    )
    evs = decode_all("10.0", first + lying)
    bm = evs[1]
    assert isinstance(bm, RecvBitmap)
    # buf = [20, <rest of first frame's payload>]; name = buf[1:21] up to the first NUL.
    stale = (bytes([20]) + first[5:])[1:21].split(b"\0")[0].decode("latin-1")
    assert bm.block_name == stale


def test_recv_bitmap_blob_and_end_mark() -> None:
    data = build_frame("10.0", "RECV_BITMAP", block_name="pc.ram", bitmap=bytes(16))
    assert decode_all("10.0", data)[0].bitmap_size == 16  # type: ignore[union-attr]
    bad = data[:-8] + struct.pack(">Q", 1)
    with pytest.raises(RemoteViolation) as exc:
        decode_all("10.0", bad)
    assert exc.value.qemu_error == catalog("10.0").format_error("recv_bitmap_end_mark", "pc.ram", 1)
    with pytest.raises(RemoteViolation) as exc:
        decode_all("10.0", struct.pack(">HH", 5, 0))
    assert exc.value.qemu_error == catalog("10.0").format_error("recv_bitmap_no_name")


def test_huge_bitmap_size_is_refused_without_allocating() -> None:
    data = struct.pack(">HHB", 5, 7, 6) + b"pc.ram" + struct.pack(">Q", 2**63)
    r = Reader("10.0")
    r.receive_data(data)
    with pytest.raises(RemoteViolation):
        r.next_event()
    assert r.buffered == 0 or r.buffered < 64


def test_resume_ack_value() -> None:
    with pytest.raises(RemoteViolation) as exc:
        decode_all("10.0", struct.pack(">HHI", 6, 4, 2))
    assert exc.value.qemu_error == "illegal resume_ack value 2"


def test_eof_new_releases_is_a_channel_error_not_a_protocol_message() -> None:
    (end,) = decode_all("10.0", b"")
    assert end == EndOfStream(release=catalog("10.0").release, offset=0, truncated=False)
    (end,) = decode_all("10.0", b"\x00")
    assert isinstance(end, EndOfStream) and end.truncated and end.qemu_error is None


def test_eof_old_releases_read_zeros() -> None:
    (end,) = decode_all("2.11", b"")
    assert isinstance(end, EndOfStream)
    assert end.qemu_error == "RP: Received invalid message 0x0000 length 0x0000"


def test_short_payload_at_eof() -> None:
    data = build_frame("10.0", "REQ_PAGES", start=0, len=4096)[:-3]
    (end,) = decode_all("10.0", data)
    assert isinstance(end, EndOfStream) and end.truncated
    assert end.qemu_error == "Failed reading data for message 0x0004 read 9 expected 12"


def test_ram_aware_checks() -> None:
    blocks = {"pc.ram": RamBlock("pc.ram", 128 << 20)}
    r = Reader("10.0", ram_blocks=blocks)
    r.receive_data(build_frame("10.0", "REQ_PAGES", start=0, len=4096))
    with pytest.raises(RemoteViolation) as exc:
        r.next_event()
    assert exc.value.qemu_error == catalog("10.0").format_error("req_pages_no_previous_block")
    r = Reader("10.0", ram_blocks=blocks)
    r.receive_data(build_frame("10.0", "REQ_PAGES_ID", start=0, len=4096, idstr="vga.vram"))
    with pytest.raises(RemoteViolation) as exc:
        r.next_event()
    assert "vga.vram" in (exc.value.qemu_error or "")
    r = Reader("10.0", ram_blocks=blocks)
    r.receive_data(
        build_frame("10.0", "REQ_PAGES_ID", start=0, len=4096, idstr="pc.ram")
        + build_frame("10.0", "REQ_PAGES", start=8192, len=4096)
    )
    assert isinstance(list(r.events())[-1], ReqPages)


def test_catalog_messages_without_layout_decode_raw(monkeypatch: pytest.MonkeyPatch) -> None:
    from migcompat.protocol import _layouts

    layouts = dict(_layouts.PAYLOAD_LAYOUTS)
    del layouts["PONG"]
    monkeypatch.setattr("migcompat.protocol._reader.PAYLOAD_LAYOUTS", layouts)
    (ev, _) = decode_all("10.0", struct.pack(">HHI", 2, 4, 7))
    assert isinstance(ev, RawMessage) and ev.payload == struct.pack(">I", 7)
    assert ev.name == "MIG_RP_MSG_PONG"


def test_fed_one_byte_at_a_time_stays_linear() -> None:
    data = build_frame("10.0", "REQ_PAGES", start=0, len=4096) * 20000
    r = Reader("10.0", req_pages_block="pc.ram")
    n = 0
    for i in range(0, len(data), 7):
        r.receive_data(data[i : i + 7])
        n += sum(1 for _ in r.events())
    assert n == 20000
    assert r.buffered == 0


def test_switchover_ack_counted_from_11_1() -> None:
    """11.1 counts ACKs its devices requested; 8.1 … 11.0 only set a flag (lab: 11.1.3)."""
    ack = bytes.fromhex("00070000")
    assert len(decode_all("10.0", ack * 3)) == 4  # three ACKs + end of stream
    with pytest.raises(RemoteViolation) as exc:
        decode_all("11.1", ack)
    assert exc.value.qemu_error == "Switchover ack pending num underflowed"
    r = Reader("11.1", switchover_acks_requested=2)
    r.receive_data(ack * 3)
    assert r.next_event().name == "MIG_RP_MSG_SWITCHOVER_ACK"  # type: ignore[union-attr]
    assert r.next_event().name == "MIG_RP_MSG_SWITCHOVER_ACK"  # type: ignore[union-attr]
    with pytest.raises(RemoteViolation):
        r.next_event()
    # lab: 11.1.3 -> 7.2, -> 5.2 and 11.1.3 -> 11.1.3 with switchover-ack off, on machine
    # types older than 11.1: one ACK is taken, a second one underflows
    # (tests/qemu/test_switchover_ack_context.py, tests/qemu/test_scenarios_live.py);
    # on pc-q35-11.1 the first one already does
    off = Reader("11.1", switchover_ack_capability=False, machine="pc-q35-7.2")
    off.receive_data(ack * 2)
    assert off.next_event().name == "MIG_RP_MSG_SWITCHOVER_ACK"  # type: ignore[union-attr]
    with pytest.raises(RemoteViolation) as exc:
        off.next_event()
    assert exc.value.qemu_error == "Switchover ack pending num underflowed"
    off_newest = Reader("11.1", switchover_ack_capability=False, machine="pc-q35-11.1")
    off_newest.receive_data(ack)
    with pytest.raises(RemoteViolation) as exc:
        off_newest.next_event()
    assert exc.value.qemu_error == "Switchover ack pending num underflowed"
    legacy = Reader("11.1", machine="pc-q35-10.0")  # one ACK for all devices, then no more
    legacy.receive_data(ack * 2)
    assert legacy.next_event().name == "MIG_RP_MSG_SWITCHOVER_ACK"  # type: ignore[union-attr]
    with pytest.raises(RemoteViolation):
        legacy.next_event()
    newest = Reader("11.1", machine="pc-q35-11.1")
    newest.receive_data(ack)
    with pytest.raises(RemoteViolation):
        newest.next_event()


def test_recv_bitmap_outside_recovery_when_the_state_is_known() -> None:
    frame = build_frame("10.0", "RECV_BITMAP", block_name="pc.ram", bitmap=bytes(4096))
    ram = {"pc.ram": RamBlock("pc.ram", 128 << 20)}
    r = Reader("10.0", ram_blocks=ram, migration_state="postcopy-active")
    r.receive_data(frame)
    with pytest.raises(RemoteViolation) as exc:
        r.next_event()
    assert exc.value.qemu_error == "Reload bitmap in incorrect state postcopy-active"
    r = Reader("10.0", ram_blocks=ram, migration_state="postcopy-recover")
    r.receive_data(frame)
    assert isinstance(r.next_event(), RecvBitmap)


def test_req_pages_without_a_previous_block_is_rejected_ram_known_or_not() -> None:
    """ram_save_queue_pages: REQ_PAGES reuses ``last_req_rb``, unset until a REQ_PAGES_ID."""
    lone = build_frame("10.0", "REQ_PAGES", start=0x1000, len=4096)
    for ram in (None, {"pc.ram": 128 << 20}):
        r = Reader("10.0", ram_blocks=ram)
        r.receive_data(lone)
        with pytest.raises(RemoteViolation) as exc:
            r.next_event()
        assert exc.value.qemu_error == "MIG_RP_MSG_REQ_PAGES has no previous block"
        assert "whole return path" in exc.value.message  # the assumption, said
    # QEMU checks the alignment first: a misaligned lone request says so
    r = Reader("10.0")
    r.receive_data(build_frame("10.0", "REQ_PAGES", start=0x1001, len=4096))
    with pytest.raises(RemoteViolation) as exc:
        r.next_event()
    assert "Misaligned page request" in (exc.value.qemu_error or "")
    # a stream resumed after recovery continues the source's last block
    r = Reader("10.0", req_pages_block="pc.ram")
    r.receive_data(lone)
    assert r.next_event().name == "MIG_RP_MSG_REQ_PAGES"  # type: ignore[union-attr]
    named = build_frame("10.0", "REQ_PAGES_ID", start=0, len=4096, idstr="pc.ram")
    r = Reader("10.0")
    r.receive_data(named + lone)
    assert [e.name for e in r.events()][-1] == "MIG_RP_MSG_REQ_PAGES"  # type: ignore[union-attr]
